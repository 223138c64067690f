//! The core's metric names (runtime, Kafka and Redis sources, DLQ, sinks), each declared once with its
//! help text; the actors' names come from `actord_actors::names`, and each pipeline declares
//! its own in its folder (`names.rs`). Labels come from bounded sets only: pipeline, path,
//! sink, topic, error_kind.

pub use actord_actors::names::*;

pub mod core_metrics {
    actord_actors::declare_metrics! {
        gauge BUILD_INFO = "actord_build_info":
            "Build information; the value is always 1.";
        gauge ACTOR_STATE = "actord_actor_state":
            "1 for the actor's current state, 0 for the others: starting, running, backing_off (failed, restart scheduled), stuck (holding work without progress past its threshold), failed, stopping, stopped.";
        gauge ACTOR_PENDING = "actord_actor_pending_work":
            "Units of work the worker holds and has not finished.";
        gauge ACTOR_PROGRESS_AGE_SECONDS = "actord_actor_progress_age_seconds" in Seconds:
            "Seconds since the worker last recorded progress.";
        gauge KAFKA_PARTITION_LAG = "actord_kafka_partition_consumer_lag":
            "Consumer lag of one assigned partition (kafka.lag_per_partition = true).";
        gauge PIPELINE_UP = "actord_pipeline_up":
            "Whether the pipeline's supervisor and every actor below it are running (1) or not (0): a pipeline whose workers fail or back off is not up.";
        gauge PIPELINE_PAUSED = "actord_pipeline_paused":
            "1 while an operator has paused the pipeline (POST /api/pipelines/<name>/pause): its consumers read nothing new and its scheduled runs are skipped.";
        counter CONFIG_RELOADS_TOTAL = "actord_config_reloads_total":
            "Configuration reloads (SIGHUP or POST /api/config/reload), by outcome: applied, unchanged, refused (invalid, nothing changed) or failed (a pipeline did not start).";

        counter RECORDS_CONSUMED_TOTAL = "actord_records_consumed_total":
            "Records read from Kafka or a Redis stream.";
        counter RECORDS_ACKED_TOTAL = "actord_records_acked_total":
            "Records acknowledged by their sink path.";
        counter OFFSETS_COMMITTED_TOTAL = "actord_offsets_committed_total":
            "Partition offsets committed to Kafka.";
        gauge KAFKA_IN_FLIGHT_RECORDS = "actord_kafka_in_flight_records":
            "Records handed downstream and not yet committable.";
        gauge KAFKA_IN_FLIGHT_BYTES = "actord_kafka_in_flight_bytes":
            "Memory held by the records in flight, as the in-flight bytes bound counts it (bytes plus a fixed cost per record).";
        gauge KAFKA_PAUSED_PARTITIONS = "actord_kafka_paused_partitions":
            "Partitions paused by backpressure or by an operator pause of the pipeline.";
        counter KAFKA_PAUSES_TOTAL = "actord_kafka_pauses_total":
            "Times a consumer paused its partitions, by reason: backpressure (its in-flight bound held) or operator.";
        gauge KAFKA_CONSUMER_LAG = "actord_kafka_consumer_lag":
            "Consumer lag summed over the topic's assigned partitions.";
        counter KAFKA_CONSUME_ERRORS_TOTAL = "actord_kafka_consume_errors_total":
            "Errors returned by the Kafka consumer.";
        counter DLQ_RECORDS_TOTAL = "actord_dlq_records_total":
            "Records written to a dead-letter topic, by source topic.";
        counter DLQ_ERRORS_TOTAL = "actord_dlq_errors_total":
            "Failed dead-letter writes; each is retried.";
        counter RECORDS_PRODUCED_TOTAL = "actord_records_produced_total":
            "Records published by a pipeline.";

        gauge REDIS_IN_FLIGHT_RECORDS = "actord_redis_in_flight_records":
            "Stream entries handed downstream and not yet acknowledged.";
        gauge REDIS_IN_FLIGHT_BYTES = "actord_redis_in_flight_bytes":
            "Memory held by the entries in flight, as the in-flight bytes bound counts it (bytes plus a fixed cost per entry).";
        counter REDIS_ERRORS_TOTAL = "actord_redis_errors_total":
            "Failed rounds of a Redis consumer (Redis unreachable or failing); each is retried.";
        counter REDIS_CLAIMED_TOTAL = "actord_redis_claimed_total":
            "Stream entries taken over from a consumer that left them idle.";
        gauge REDIS_STREAM_LENGTH = "actord_redis_stream_length":
            "Entries in the stream (XLEN).";
        gauge REDIS_STREAM_PENDING = "actord_redis_stream_pending":
            "Entries delivered to the group and not acknowledged.";
        gauge REDIS_STREAM_LAG = "actord_redis_stream_lag":
            "Entries not yet delivered to the group.";
        gauge REDIS_STREAM_CONSUMERS = "actord_redis_stream_consumers":
            "Consumers the group knows.";

        counter TIMESCALE_INSERTS_TOTAL = "actord_timescale_inserts_total":
            "Rows written to TimescaleDB.";
        counter TIMESCALE_ERRORS_TOTAL = "actord_timescale_errors_total":
            "Failed TimescaleDB writes by error kind.";
        counter TIMESCALE_OFFSET_REGRESSIONS_TOTAL = "actord_timescale_offset_regressions_total":
            "Stored offsets found behind what this process wrote: the database lost commits.";
        counter TIMESCALE_REJECTION_BREAKER_TRIPS_TOTAL = "actord_timescale_rejection_breaker_trips_total":
            "Times the rejection breaker stopped the TimescaleDB path.";
        counter S3_UPLOADS_TOTAL = "actord_s3_uploads_total":
            "Parquet objects uploaded.";
        counter S3_UPLOAD_ERRORS_TOTAL = "actord_s3_upload_errors_total":
            "Failed object-store writes; each is retried.";
        counter S3_UPLOADED_BYTES_TOTAL = "actord_s3_uploaded_bytes_total":
            "Bytes of Parquet objects uploaded.";
        counter S3_OBJECTS_REPLACED_TOTAL = "actord_s3_objects_replaced_total":
            "Objects of uncommitted batches removed before their records were rewritten.";
        counter S3_FENCED_TOTAL = "actord_s3_fenced_total":
            "Object writes given up because a newer owner of the partition exists in the store.";
    }
}

pub use self::core_metrics::*;

/// Gives the recorder the help text of every metric actord can export: the actors', the
/// core's and every registered pipeline's, enabled or not.
pub fn describe() {
    actord_actors::names::describe();
    self::core_metrics::describe();
    crate::pipelines::describe_metrics();
}
