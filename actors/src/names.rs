//! Metric names recorded by the actors in this crate, each declared once with its help text,
//! and [`declare_metrics!`](crate::declare_metrics) with which the binary declares its own.

/// Declares metric names, each with its kind, help text and optional unit, and a `describe()`
/// that hands every help text to the installed recorder:
///
/// ```
/// actord_actors::declare_metrics! {
///     counter BEATS_TOTAL = "actord_beats_total": "Beats read back.";
///     histogram RUN_SECONDS = "actord_run_seconds" in Seconds: "Duration of one run.";
/// }
/// assert_eq!(BEATS_TOTAL, "actord_beats_total");
/// describe();
/// ```
#[macro_export]
macro_rules! declare_metrics {
    ($($kind:ident $name:ident = $metric:literal $(in $unit:ident)? : $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $name: &str = $metric;
        )*

        /// Gives the installed recorder the help text (and unit) of every metric declared here.
        pub fn describe() {
            $($crate::declare_metrics!(@describe $kind $name $($unit)? $help);)*
        }
    };
    (@describe counter $name:ident $help:literal) => {
        ::metrics::describe_counter!($name, $help)
    };
    (@describe counter $name:ident $unit:ident $help:literal) => {
        ::metrics::describe_counter!($name, ::metrics::Unit::$unit, $help)
    };
    (@describe gauge $name:ident $help:literal) => {
        ::metrics::describe_gauge!($name, $help)
    };
    (@describe gauge $name:ident $unit:ident $help:literal) => {
        ::metrics::describe_gauge!($name, ::metrics::Unit::$unit, $help)
    };
    (@describe histogram $name:ident $help:literal) => {
        ::metrics::describe_histogram!($name, $help)
    };
    (@describe histogram $name:ident $unit:ident $help:literal) => {
        ::metrics::describe_histogram!($name, ::metrics::Unit::$unit, $help)
    };
}

crate::declare_metrics! {
    gauge ACTOR_UP = "actord_actor_up":
        "Whether the actor at the path is running (1) or not (0).";
    counter ACTOR_RESTARTS_TOTAL = "actord_actor_restarts_total":
        "Restarts of the actor at the path.";
    counter ACTOR_STUCK_TOTAL = "actord_actor_stuck_total":
        "Restarts of the worker at the path because it held work without progress.";
    counter ACTOR_START_TIMEOUTS_TOTAL = "actord_actor_start_timeouts_total":
        "Starts of the actor at the path abandoned after its start timeout.";
    counter ACTOR_KILL_FAILED_TOTAL = "actord_actor_kill_failed_total":
        "Kills of the actor at the path that did not end it in time: a handler blocked in synchronous code.";
    counter SUPERVISOR_BUDGET_EXHAUSTED_TOTAL = "actord_supervisor_budget_exhausted_total":
        "Times the supervisor at the path exhausted its restart budget.";

    counter BUFFER_PUSHED_RECORDS_TOTAL = "actord_buffer_pushed_records_total":
        "Records pushed into a buffer.";
    counter BUFFER_PUSHED_BYTES_TOTAL = "actord_buffer_pushed_bytes_total":
        "Bytes pushed into a buffer.";
    counter BUFFER_FLUSHED_RECORDS_TOTAL = "actord_buffer_flushed_records_total":
        "Records flushed from a buffer to its writer.";
    counter BUFFER_FLUSHED_BYTES_TOTAL = "actord_buffer_flushed_bytes_total":
        "Bytes flushed from a buffer to its writer.";
    counter BUFFER_FLUSHES_TOTAL = "actord_buffer_flushes_total":
        "Buffer flushes by reason (size, age, forced, shutdown).";
    gauge BUFFER_RECORDS = "actord_buffer_records":
        "Records waiting in a buffer.";
    gauge BUFFER_FILL_RATIO = "actord_buffer_fill_ratio":
        "How full the buffer's current batch is against its record and byte limits (1 flushes it).";
    histogram FLUSH_DURATION_SECONDS = "actord_flush_duration_seconds" in Seconds:
        "Time one sink write took.";
    counter WRITER_GROUPED_BATCHES_TOTAL = "actord_writer_grouped_batches_total":
        "Batches a writer wrote together with others in one sink write (group commit).";
    counter SINK_RETRIES_TOTAL = "actord_sink_retries_total":
        "Sink write retries by error kind.";
    counter RECORDS_WRITTEN_TOTAL = "actord_records_written_total":
        "Records a sink made durable.";
    counter RECORDS_POISON_TOTAL = "actord_records_poison_total":
        "Records found poison (undecodable or rejected by a sink).";
    counter RECORDS_SKIPPED_TOTAL = "actord_records_skipped_total":
        "Poison records acknowledged without a DLQ record (another path owns the DLQ).";

    counter SCHEDULE_RUNS_STARTED_TOTAL = "actord_schedule_runs_started_total":
        "Scheduled runs started, by pipeline and entry.";
    counter SCHEDULE_RUNS_SUCCEEDED_TOTAL = "actord_schedule_runs_succeeded_total":
        "Scheduled runs that succeeded, by pipeline and entry.";
    counter SCHEDULE_RUNS_FAILED_TOTAL = "actord_schedule_runs_failed_total":
        "Scheduled runs that failed, panicked or were interrupted, by pipeline and entry.";
    counter SCHEDULE_RUNS_SKIPPED_TOTAL = "actord_schedule_runs_skipped_total":
        "Due times that did not run, by pipeline, entry and reason (run_active, lease_held, lease_unavailable, ran_elsewhere).";
    gauge SCHEDULE_LAST_SUCCESS_TIMESTAMP_SECONDS = "actord_schedule_last_success_timestamp_seconds" in Seconds:
        "Unix time at which the entry's last successful run ended.";
    histogram SCHEDULE_RUN_DURATION_SECONDS = "actord_schedule_run_duration_seconds" in Seconds:
        "Duration of scheduled runs, by pipeline and entry.";
}
