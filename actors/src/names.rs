//! Metric names recorded by the actors in this crate (the binary declares its own beside them).

/// Counter: restarts of the actor at `path` (supervised and operator restarts).
pub const ACTOR_RESTARTS_TOTAL: &str = "actord_actor_restarts_total";
/// Gauge: 1 while the actor at `path` runs, else 0.
pub const ACTOR_UP: &str = "actord_actor_up";
/// Counter: times the supervisor at `path` exhausted its restart budget.
pub const SUPERVISOR_BUDGET_EXHAUSTED_TOTAL: &str = "actord_supervisor_budget_exhausted_total";
/// Counter: workers restarted because they held work without progress.
pub const ACTOR_STUCK_TOTAL: &str = "actord_actor_stuck_total";
/// Counter: starts of the actor at `path` abandoned after its start timeout.
pub const ACTOR_START_TIMEOUTS_TOTAL: &str = "actord_actor_start_timeouts_total";
/// Counter: kills of the actor at `path` that did not end it in time (a handler blocked in
/// synchronous code).
pub const ACTOR_KILL_FAILED_TOTAL: &str = "actord_actor_kill_failed_total";

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
/// Gauge: how full the buffer's current batch is against its record and byte limits (0..1).
pub const BUFFER_FILL_RATIO: &str = "actord_buffer_fill_ratio";
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

/// Counter: scheduled runs started (the lease was granted), by pipeline and entry.
pub const SCHEDULE_RUNS_STARTED_TOTAL: &str = "actord_schedule_runs_started_total";
/// Counter: scheduled runs that returned success, by pipeline and entry.
pub const SCHEDULE_RUNS_SUCCEEDED_TOTAL: &str = "actord_schedule_runs_succeeded_total";
/// Counter: scheduled runs that returned an error, panicked or were interrupted.
pub const SCHEDULE_RUNS_FAILED_TOTAL: &str = "actord_schedule_runs_failed_total";
/// Counter: due times that did not run, by pipeline, entry and reason (`run_active`,
/// `lease_held`, `lease_unavailable`, `ran_elsewhere`).
pub const SCHEDULE_RUNS_SKIPPED_TOTAL: &str = "actord_schedule_runs_skipped_total";
/// Gauge: Unix time of the end of the entry's last successful run.
pub const SCHEDULE_LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
    "actord_schedule_last_success_timestamp_seconds";
/// Histogram: how long a started run took, whatever its outcome.
pub const SCHEDULE_RUN_DURATION_SECONDS: &str = "actord_schedule_run_duration_seconds";

/// Declares the scheduler's metrics with their help text; the binary calls it once at start-up.
pub fn describe_scheduler() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        SCHEDULE_RUNS_STARTED_TOTAL,
        "Scheduled runs started, by pipeline and entry."
    );
    describe_counter!(
        SCHEDULE_RUNS_SUCCEEDED_TOTAL,
        "Scheduled runs that succeeded, by pipeline and entry."
    );
    describe_counter!(
        SCHEDULE_RUNS_FAILED_TOTAL,
        "Scheduled runs that failed, panicked or were interrupted, by pipeline and entry."
    );
    describe_counter!(
        SCHEDULE_RUNS_SKIPPED_TOTAL,
        "Due times that did not run, by pipeline, entry and reason (run_active, lease_held, lease_unavailable, ran_elsewhere)."
    );
    describe_gauge!(
        SCHEDULE_LAST_SUCCESS_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time at which the entry's last successful run ended."
    );
    describe_histogram!(
        SCHEDULE_RUN_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of scheduled runs, by pipeline and entry."
    );
}
