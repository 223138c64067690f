//! Metric names recorded by the actors in this crate (the binary declares its own beside them).

/// Counter: restarts of the actor at `path` (supervised and operator restarts).
pub const ACTOR_RESTARTS_TOTAL: &str = "actord_actor_restarts_total";
/// Gauge: 1 while the actor at `path` runs, else 0.
pub const ACTOR_UP: &str = "actord_actor_up";
/// Counter: times the supervisor at `path` exhausted its restart budget.
pub const SUPERVISOR_BUDGET_EXHAUSTED_TOTAL: &str = "actord_supervisor_budget_exhausted_total";
/// Counter: workers restarted because they held work without progress.
pub const ACTOR_STUCK_TOTAL: &str = "actord_actor_stuck_total";

/// Counter: items pushed into a buffer.
pub const BUFFER_PUSHED_RECORDS_TOTAL: &str = "actord_buffer_pushed_records_total";
/// Counter: bytes pushed into a buffer.
pub const BUFFER_PUSHED_BYTES_TOTAL: &str = "actord_buffer_pushed_bytes_total";
/// Counter: items flushed from a buffer to its writer.
pub const BUFFER_FLUSHED_RECORDS_TOTAL: &str = "actord_buffer_flushed_records_total";
/// Counter: bytes flushed from a buffer to its writer.
pub const BUFFER_FLUSHED_BYTES_TOTAL: &str = "actord_buffer_flushed_bytes_total";
/// Counter: flushes by reason (size, age, forced, shutdown).
pub const BUFFER_FLUSHES_TOTAL: &str = "actord_buffer_flushes_total";
/// Gauge: items waiting in a buffer.
pub const BUFFER_RECORDS: &str = "actord_buffer_records";
/// Histogram: time one sink write took.
pub const FLUSH_DURATION_SECONDS: &str = "actord_flush_duration_seconds";
/// Counter: sink write retries by error kind.
pub const SINK_RETRIES_TOTAL: &str = "actord_sink_retries_total";
/// Counter: records a sink made durable.
pub const RECORDS_WRITTEN_TOTAL: &str = "actord_records_written_total";
/// Counter: records found poison (undecodable or rejected by a sink).
pub const RECORDS_POISON_TOTAL: &str = "actord_records_poison_total";
/// Counter: poison records acknowledged without a DLQ record (another path owns the DLQ).
pub const RECORDS_SKIPPED_TOTAL: &str = "actord_records_skipped_total";
