//! The backfill pipeline's metric names. Records and bytes are counted as a run's objects
//! become visible, as the object sink counts them (the run's summary).

actord_actors::declare_metrics! {
    counter BACKFILL_RUNS_STARTED_TOTAL = "actord_backfill_runs_started_total":
        "Backfill runs started, by mode.";
    counter BACKFILL_RUNS_SUCCEEDED_TOTAL = "actord_backfill_runs_succeeded_total":
        "Backfill runs that archived everything up to the high watermarks and committed.";
    counter BACKFILL_RUNS_FAILED_TOTAL = "actord_backfill_runs_failed_total":
        "Backfill runs that ended with an error (nothing past the last durable batch committed).";
    counter BACKFILL_RECORDS_TOTAL = "actord_backfill_records_total":
        "Records a backfill run wrote into Parquet objects.";
    counter BACKFILL_BYTES_TOTAL = "actord_backfill_bytes_total" in Bytes:
        "Bytes of the Parquet objects a backfill run wrote.";
    counter BACKFILL_SKIPPED_TOTAL = "actord_backfill_skipped_total":
        "Records a continue run skipped for being older than its from-date.";
    counter BACKFILL_DEAD_LETTERS_TOTAL = "actord_backfill_dead_letters_total":
        "Messages without a usable timestamp (or not JSON objects) sent to the dead-letter topic.";
    gauge BACKFILL_LAST_SUCCESS = "actord_backfill_last_success_timestamp_seconds" in Seconds:
        "Unix time the last successful backfill run ended.";
    histogram BACKFILL_RUN_DURATION = "actord_backfill_run_duration_seconds" in Seconds:
        "Duration of backfill runs.";
}
