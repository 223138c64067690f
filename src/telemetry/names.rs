//! Every metric name actord exports, with its help text. Labels come from bounded sets only:
//! pipeline, path, sink, topic, error_kind.

pub use actord_actors::names::{
    ACTOR_KILL_FAILED_TOTAL, ACTOR_RESTARTS_TOTAL, ACTOR_START_TIMEOUTS_TOTAL, ACTOR_STUCK_TOTAL,
    ACTOR_UP, SUPERVISOR_BUDGET_EXHAUSTED_TOTAL,
};

/// Gauge, always 1, labelled with the version.
pub const BUILD_INFO: &str = "actord_build_info";
/// Gauge: 1 for the actor's current state, 0 for the others, by path and state (starting,
/// running, backing_off, stuck, failed, stopping, stopped).
pub const ACTOR_STATE: &str = "actord_actor_state";
/// Gauge: units of work a worker holds and has not finished (records buffered, transfers…).
pub const ACTOR_PENDING: &str = "actord_actor_pending_work";
/// Gauge: seconds since a worker last recorded progress (absent before its first).
pub const ACTOR_PROGRESS_AGE_SECONDS: &str = "actord_actor_progress_age_seconds";
/// Gauge: consumer lag of one partition (only with `kafka.lag_per_partition = true`).
pub const KAFKA_PARTITION_LAG: &str = "actord_kafka_partition_consumer_lag";
/// Gauge: 1 while the pipeline's supervisor and every actor below it run, else 0.
pub const PIPELINE_UP: &str = "actord_pipeline_up";
/// Counter: market messages decoded by the recorder, by kind (tick, orderbook).
pub const RECORDER_MESSAGES_TOTAL: &str = "actord_recorder_messages_total";
/// Counter: market messages the recorder could not decode.
pub const RECORDER_ERRORS_TOTAL: &str = "actord_recorder_errors_total";
/// Counter: rows written to TimescaleDB.
pub const TIMESCALE_INSERTS_TOTAL: &str = "actord_timescale_inserts_total";
/// Counter: failed TimescaleDB writes, by error kind.
pub const TIMESCALE_ERRORS_TOTAL: &str = "actord_timescale_errors_total";
/// Counter: stored offsets found behind what this process wrote (the database lost commits).
pub const TIMESCALE_OFFSET_REGRESSIONS_TOTAL: &str = "actord_timescale_offset_regressions_total";
/// Counter: times the rejection breaker stopped the TimescaleDB path.
pub const TIMESCALE_REJECTION_BREAKER_TRIPS_TOTAL: &str =
    "actord_timescale_rejection_breaker_trips_total";
/// Counter: Parquet objects uploaded, by path.
pub const S3_UPLOADS_TOTAL: &str = "actord_s3_uploads_total";
/// Counter: failed object-store writes (each is retried), by path.
pub const S3_UPLOAD_ERRORS_TOTAL: &str = "actord_s3_upload_errors_total";
/// Counter: bytes of Parquet objects uploaded, by path.
pub const S3_UPLOADED_BYTES_TOTAL: &str = "actord_s3_uploaded_bytes_total";
/// Counter: objects of uncommitted batches removed before their records were rewritten.
pub const S3_OBJECTS_REPLACED_TOTAL: &str = "actord_s3_objects_replaced_total";
/// Counter: object writes given up because a newer owner of the partition exists in the store.
pub const S3_FENCED_TOTAL: &str = "actord_s3_fenced_total";
/// Counter: transfer jobs by topic and outcome (done, failed attempt, dlq).
pub const FTP_JOBS_TOTAL: &str = "actord_ftp_jobs_total";
/// Counter: bytes transferred, by topic.
pub const FTP_BYTES_TOTAL: &str = "actord_ftp_bytes_total";
/// Histogram: duration of a successful transfer, by topic.
pub const FTP_TRANSFER_DURATION_SECONDS: &str = "actord_ftp_transfer_duration_seconds";
/// Gauge: transfers in flight.
pub const FTP_IN_FLIGHT: &str = "actord_ftp_in_flight_transfers";
/// Gauge: 1 while a server's circuit breaker is open, by server.
pub const FTP_CIRCUIT_OPEN: &str = "actord_ftp_circuit_open";
/// Gauge: 1 while a server is misconfigured (refused login, unverified key), by server.
pub const FTP_SERVER_MISCONFIGURED: &str = "actord_ftp_server_misconfigured";
/// Gauge: jobs parked because a server they need is unavailable.
pub const FTP_PARKED_JOBS: &str = "actord_ftp_parked_jobs";
/// Counter: beats of the heartbeat pipeline.
pub const HEARTBEAT_BEATS_TOTAL: &str = "actord_heartbeat_beats_total";
/// Counter: beats of the heartbeat's scheduled entry, read back.
pub const HEARTBEAT_SCHEDULED_BEATS_TOTAL: &str = "actord_heartbeat_scheduled_beats_total";

pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(BUILD_INFO, "Build information; the value is always 1.");
    describe_gauge!(
        PIPELINE_UP,
        "Whether the pipeline's supervisor and every actor below it are running (1) or not (0): a pipeline whose workers fail or back off is not up."
    );
    describe_gauge!(
        ACTOR_UP,
        "Whether the actor at the path is running (1) or not (0)."
    );
    describe_counter!(ACTOR_RESTARTS_TOTAL, "Restarts of the actor at the path.");
    describe_gauge!(
        ACTOR_STATE,
        "1 for the actor's current state, 0 for the others: starting, running, backing_off (failed, restart scheduled), stuck (holding work without progress past its threshold), failed, stopping, stopped."
    );
    describe_gauge!(
        ACTOR_PENDING,
        "Units of work the worker holds and has not finished."
    );
    describe_gauge!(
        ACTOR_PROGRESS_AGE_SECONDS,
        metrics::Unit::Seconds,
        "Seconds since the worker last recorded progress."
    );
    describe_gauge!(
        KAFKA_PARTITION_LAG,
        "Consumer lag of one assigned partition (kafka.lag_per_partition = true)."
    );
    describe_counter!(
        ACTOR_STUCK_TOTAL,
        "Restarts of the worker at the path because it held work without progress."
    );
    describe_counter!(
        ACTOR_START_TIMEOUTS_TOTAL,
        "Starts of the actor at the path abandoned after its start timeout."
    );
    describe_counter!(
        ACTOR_KILL_FAILED_TOTAL,
        "Kills of the actor at the path that did not end it in time: a handler blocked in synchronous code."
    );
    describe_counter!(
        SUPERVISOR_BUDGET_EXHAUSTED_TOTAL,
        "Times the supervisor at the path exhausted its restart budget."
    );
    describe_counter!(HEARTBEAT_BEATS_TOTAL, "Beats of the heartbeat pipeline.");
    describe_counter!(
        HEARTBEAT_SCHEDULED_BEATS_TOTAL,
        "Beats of the heartbeat's scheduled entry read back."
    );
    actord_actors::names::describe_scheduler();
    describe_counter!(
        RECORDS_CONSUMED_TOTAL,
        "Records read from Kafka or a Redis stream."
    );
    describe_counter!(
        RECORDER_MESSAGES_TOTAL,
        "Market messages decoded by the recorder, by kind."
    );
    describe_counter!(
        RECORDER_ERRORS_TOTAL,
        "Market messages the recorder could not decode."
    );
    describe_counter!(TIMESCALE_INSERTS_TOTAL, "Rows written to TimescaleDB.");
    describe_counter!(
        TIMESCALE_ERRORS_TOTAL,
        "Failed TimescaleDB writes by error kind."
    );
    describe_counter!(
        TIMESCALE_OFFSET_REGRESSIONS_TOTAL,
        "Stored offsets found behind what this process wrote: the database lost commits."
    );
    describe_counter!(
        TIMESCALE_REJECTION_BREAKER_TRIPS_TOTAL,
        "Times the rejection breaker stopped the TimescaleDB path."
    );
    describe_counter!(
        FTP_JOBS_TOTAL,
        "Transfer jobs by outcome: done, failed (an attempt), dlq."
    );
    describe_counter!(FTP_BYTES_TOTAL, "Bytes transferred.");
    metrics::describe_histogram!(
        FTP_TRANSFER_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of a successful transfer."
    );
    describe_gauge!(FTP_IN_FLIGHT, "Transfers in flight.");
    describe_gauge!(
        FTP_CIRCUIT_OPEN,
        "1 while the server's circuit breaker is open (jobs for it wait), else 0."
    );
    describe_gauge!(
        FTP_SERVER_MISCONFIGURED,
        "1 while the server refuses its configuration (login, host key, certificate), else 0."
    );
    describe_gauge!(
        FTP_PARKED_JOBS,
        "Jobs parked until a server they need is available again."
    );
    describe_counter!(S3_UPLOADS_TOTAL, "Parquet objects uploaded.");
    describe_counter!(
        S3_UPLOAD_ERRORS_TOTAL,
        "Failed object-store writes; each is retried."
    );
    describe_counter!(
        S3_UPLOADED_BYTES_TOTAL,
        "Bytes of Parquet objects uploaded."
    );
    describe_counter!(
        S3_OBJECTS_REPLACED_TOTAL,
        "Objects of uncommitted batches removed before their records were rewritten."
    );
    describe_counter!(
        S3_FENCED_TOTAL,
        "Object writes given up because a newer owner of the partition exists in the store."
    );
    describe_counter!(
        RECORDS_ACKED_TOTAL,
        "Records acknowledged by their sink path."
    );
    describe_counter!(
        OFFSETS_COMMITTED_TOTAL,
        "Partition offsets committed to Kafka."
    );
    describe_gauge!(
        KAFKA_IN_FLIGHT_RECORDS,
        "Records handed downstream and not yet committable."
    );
    describe_gauge!(
        KAFKA_PAUSED_PARTITIONS,
        "Partitions paused by backpressure."
    );
    describe_gauge!(
        KAFKA_CONSUMER_LAG,
        "Consumer lag summed over the topic's assigned partitions."
    );
    describe_counter!(
        KAFKA_CONSUME_ERRORS_TOTAL,
        "Errors returned by the Kafka consumer."
    );
    describe_counter!(
        DLQ_RECORDS_TOTAL,
        "Records written to a dead-letter topic, by source topic."
    );
    describe_counter!(
        DLQ_ERRORS_TOTAL,
        "Failed dead-letter writes; each is retried."
    );
    describe_counter!(RECORDS_PRODUCED_TOTAL, "Records published by a pipeline.");
    describe_gauge!(
        REDIS_IN_FLIGHT_RECORDS,
        "Stream entries handed downstream and not yet acknowledged."
    );
    describe_counter!(
        REDIS_ERRORS_TOTAL,
        "Failed rounds of a Redis consumer (Redis unreachable or failing); each is retried."
    );
    describe_counter!(
        REDIS_CLAIMED_TOTAL,
        "Stream entries taken over from a consumer that left them idle."
    );
    describe_gauge!(REDIS_STREAM_LENGTH, "Entries in the stream (XLEN).");
    describe_gauge!(
        REDIS_STREAM_PENDING,
        "Entries delivered to the group and not acknowledged."
    );
    describe_gauge!(REDIS_STREAM_LAG, "Entries not yet delivered to the group.");
    describe_gauge!(REDIS_STREAM_CONSUMERS, "Consumers the group knows.");
    describe_counter!(
        ADAPTIVE_CARD_JOBS_TOTAL,
        "Adaptive-card jobs by stage and outcome (done, failed attempt, unavailable)."
    );
    describe_counter!(ADAPTIVE_CARD_CARDS_TOTAL, "Adaptive Cards upserted.");
    describe_counter!(BUFFER_PUSHED_RECORDS_TOTAL, "Records pushed into a buffer.");
    describe_counter!(BUFFER_PUSHED_BYTES_TOTAL, "Bytes pushed into a buffer.");
    describe_counter!(
        BUFFER_FLUSHED_RECORDS_TOTAL,
        "Records flushed from a buffer to its writer."
    );
    describe_counter!(
        BUFFER_FLUSHED_BYTES_TOTAL,
        "Bytes flushed from a buffer to its writer."
    );
    describe_counter!(
        BUFFER_FLUSHES_TOTAL,
        "Buffer flushes by reason (size, age, forced, shutdown)."
    );
    describe_gauge!(BUFFER_RECORDS, "Records waiting in a buffer.");
    describe_gauge!(
        BUFFER_FILL_RATIO,
        "How full the buffer's current batch is against its record and byte limits (1 flushes it)."
    );
    metrics::describe_histogram!(
        FLUSH_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time one sink write took."
    );
    describe_counter!(SINK_RETRIES_TOTAL, "Sink write retries by error kind.");
    describe_counter!(RECORDS_WRITTEN_TOTAL, "Records a sink made durable.");
    describe_counter!(
        RECORDS_POISON_TOTAL,
        "Records found poison (undecodable or rejected by a sink)."
    );
    describe_counter!(
        RECORDS_SKIPPED_TOTAL,
        "Poison records acknowledged without a DLQ record (another path owns the DLQ)."
    );
}

pub use actord_actors::names::{
    BUFFER_FILL_RATIO, BUFFER_FLUSHED_BYTES_TOTAL, BUFFER_FLUSHED_RECORDS_TOTAL,
    BUFFER_FLUSHES_TOTAL, BUFFER_PUSHED_BYTES_TOTAL, BUFFER_PUSHED_RECORDS_TOTAL, BUFFER_RECORDS,
    FLUSH_DURATION_SECONDS, RECORDS_POISON_TOTAL, RECORDS_SKIPPED_TOTAL, RECORDS_WRITTEN_TOTAL,
    SINK_RETRIES_TOTAL,
};

/// Counter: records read from Kafka, by path and topic.
pub const RECORDS_CONSUMED_TOTAL: &str = "actord_records_consumed_total";
/// Counter: records acknowledged by their sink path.
pub const RECORDS_ACKED_TOTAL: &str = "actord_records_acked_total";
/// Counter: partition offsets committed.
pub const OFFSETS_COMMITTED_TOTAL: &str = "actord_offsets_committed_total";
/// Gauge: records handed downstream and not yet committable, per consumer.
pub const KAFKA_IN_FLIGHT_RECORDS: &str = "actord_kafka_in_flight_records";
/// Gauge: partitions paused by backpressure, per consumer.
pub const KAFKA_PAUSED_PARTITIONS: &str = "actord_kafka_paused_partitions";
/// Gauge: consumer lag summed over a topic's assigned partitions (from librdkafka statistics).
pub const KAFKA_CONSUMER_LAG: &str = "actord_kafka_consumer_lag";
/// Counter: errors returned by the Kafka consumer.
pub const KAFKA_CONSUME_ERRORS_TOTAL: &str = "actord_kafka_consume_errors_total";
/// Counter: records written to a dead-letter topic, by source topic.
pub const DLQ_RECORDS_TOTAL: &str = "actord_dlq_records_total";
/// Counter: failed dead-letter writes (each is retried).
pub const DLQ_ERRORS_TOTAL: &str = "actord_dlq_errors_total";
/// Counter: records published by a pipeline's producer.
pub const RECORDS_PRODUCED_TOTAL: &str = "actord_records_produced_total";
/// Gauge: stream entries handed downstream and not yet acknowledged, per Redis consumer.
pub const REDIS_IN_FLIGHT_RECORDS: &str = "actord_redis_in_flight_records";
/// Counter: failed rounds of a Redis consumer (Redis unreachable or failing); each is retried.
pub const REDIS_ERRORS_TOTAL: &str = "actord_redis_errors_total";
/// Counter: stream entries taken over from a consumer that left them idle.
pub const REDIS_CLAIMED_TOTAL: &str = "actord_redis_claimed_total";
/// Gauge: entries in a stream (XLEN), by path and stream.
pub const REDIS_STREAM_LENGTH: &str = "actord_redis_stream_length";
/// Gauge: entries delivered to the path's group and not acknowledged, by path and stream.
pub const REDIS_STREAM_PENDING: &str = "actord_redis_stream_pending";
/// Gauge: entries not yet delivered to the path's group, by path and stream.
pub const REDIS_STREAM_LAG: &str = "actord_redis_stream_lag";
/// Gauge: consumers the path's group knows, by path and stream.
pub const REDIS_STREAM_CONSUMERS: &str = "actord_redis_stream_consumers";
/// Counter: adaptive-card jobs by stage (sales_org, adaptive_card) and outcome (done, failed
/// attempt, unavailable).
pub const ADAPTIVE_CARD_JOBS_TOTAL: &str = "actord_adaptive_card_jobs_total";
/// Counter: Adaptive Cards upserted.
pub const ADAPTIVE_CARD_CARDS_TOTAL: &str = "actord_adaptive_card_cards_total";
