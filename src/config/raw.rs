//! `supervision.toml` as written: every field optional, checked later by validation.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The admin HTTP port.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Process-wide settings.
    #[serde(default)]
    pub runtime: RawRuntime,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// The shared Kafka connection.
    #[serde(default)]
    pub kafka: RawKafka,
    /// The shared S3 connection (endpoint, region, credentials) for pipelines that use buckets.
    #[serde(default)]
    pub s3: RawS3,
    /// Supervision defaults for every supervisor and worker.
    #[serde(default)]
    pub supervision: RawSupervision,
    /// Per-pipeline settings, one table per pipeline name.
    #[serde(default)]
    pub pipelines: RawPipelines,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address the admin port binds, e.g. "127.0.0.1:8080".
    pub listen: Option<String>,
    /// Bearer token required by mutating endpoints; empty or absent means none.
    pub token: Option<String>,
    /// Enables `POST /api/actors/fail` (fault injection).
    pub fault_injection: Option<bool>,
    /// Allows a non-loopback bind or fault injection without a token, on purpose.
    pub insecure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// Pipelines started when `--enable` is not given.
    // Resolved from the TOML tree before typing (env mappings depend on it); kept for the schema.
    #[allow(dead_code)]
    pub enable: Option<Vec<String>>,
    /// Exit non-zero when a pipeline exhausts its restart budget, instead of restarting it later.
    pub fail_fast: Option<bool>,
    /// How long a failed pipeline waits before the root restarts it, e.g. "30s".
    pub cool_down: Option<String>,
    /// How long a graceful shutdown may take in all, e.g. "30s".
    pub shutdown_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// "text" (human-readable) or "json".
    pub format: Option<String>,
    /// Default level filter ("info", "debug", or a tracing directive); RUST_LOG wins.
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// Bootstrap servers ("host:port,host:port") or "embedded" for the in-process broker.
    pub brokers: Option<String>,
    /// Extra librdkafka properties for every client, e.g. `"security.protocol" = "SSL"`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Also export the consumer lag of each partition (`actord_kafka_partition_consumer_lag`);
    /// off by default to keep the label set bounded.
    pub lag_per_partition: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3 {
    /// Endpoint URL for S3-compatible servers such as MinIO (AWS_ENDPOINT_URL); unset means AWS.
    pub endpoint: Option<String>,
    /// Region (AWS_REGION); default "us-east-1".
    pub region: Option<String>,
    /// Access key id (AWS_ACCESS_KEY_ID).
    pub access_key_id: Option<String>,
    /// Secret access key (AWS_SECRET_ACCESS_KEY); use "${VAR}" rather than writing it here.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials (AWS_SESSION_TOKEN).
    pub session_token: Option<String>,
    /// Allows a plain-http endpoint (AWS_ALLOW_HTTP).
    pub allow_http: Option<bool>,
    /// Virtual-hosted-style requests (bucket in the host name); false means path style.
    pub virtual_hosted: Option<bool>,
}

/// Supervision settings; every level (defaults, pipeline, path) uses the same keys.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupervision {
    /// "one_for_one", "one_for_all" or "rest_for_one".
    pub strategy: Option<String>,
    /// Restarts allowed within `within` before the supervisor gives up and fails upward.
    pub max_restarts: Option<u32>,
    /// The window of the restart budget, e.g. "60s".
    pub within: Option<String>,
    /// First delay before a restart, e.g. "500ms".
    pub backoff_initial: Option<String>,
    /// Largest delay before a restart, e.g. "30s".
    pub backoff_max: Option<String>,
    /// Growth of the delay per consecutive restart.
    pub backoff_factor: Option<f64>,
    /// "permanent", "transient" or "temporary": when this actor is restarted.
    pub restart: Option<String>,
    /// How long a graceful stop may take before the actor is killed, e.g. "10s"; for a
    /// supervisor (set in its own table), the time its whole subtree may take.
    pub shutdown_timeout: Option<String>,
    /// Restart a worker that holds work without progress for this long, e.g. "2m"; "off" disables.
    pub stuck_after: Option<String>,
    /// How long a start (the actor's set-up: connecting, migrating) may take before it counts
    /// as a failed start, e.g. "60s".
    pub start_timeout: Option<String>,
    /// Overrides for actors below this level, keyed by path relative to the pipeline
    /// ("timescale", "timescale/writer"); only valid under a pipeline.
    #[serde(default)]
    pub paths: BTreeMap<String, RawSupervision>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipelines {
    /// The built-in heartbeat pipeline (a ticker; a smoke test of the runtime).
    pub heartbeat: Option<RawHeartbeat>,
    /// Market ticks and order books into TimescaleDB.
    pub recorder: Option<RawRecorder>,
    /// File-transfer jobs from Kafka, between FTP/FTPS/S3/local servers.
    #[serde(rename = "ftp-sync")]
    pub ftp_sync: Option<RawFtpSync>,
    /// Sales-org and per-user Adaptive Card jobs through Redis Streams, on a cron.
    #[serde(rename = "adaptive-card")]
    pub adaptive_card: Option<crate::pipelines::adaptive_card::RawAdaptiveCard>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFtpSync {
    /// Topics carrying transfer jobs (ACTORD_FTP_SYNC_KAFKA_TOPICS).
    pub topics: Option<Vec<String>>,
    /// Consumer group shared by every process doing this work (ACTORD_FTP_SYNC_KAFKA_GROUP_ID).
    pub group: Option<String>,
    /// Transfers in flight in this process.
    pub concurrency: Option<u32>,
    /// Jobs read and not yet done (running, waiting for a retry or parked for a server) per
    /// process; reaching it pauses reading.
    pub max_in_flight: Option<u32>,
    /// Staged uploads (`.<name>.<tag>.part`) older than this are removed under each server's
    /// root at start, e.g. "24h"; "off" keeps them.
    pub sweep_stale_after: Option<String>,
    /// Where a consumer group without committed offsets starts: "earliest" (every job still
    /// in the topic) or "latest" (only jobs published from now on, as kafka-python's default).
    pub start_from: Option<String>,
    /// Suffix of the dead-letter topic of each input topic (DLQ_TOPIC_SUFFIX).
    pub dlq_suffix: Option<String>,
    /// Attempts for a job whose failures are not explained by a server outage.
    pub max_retries: Option<u32>,
    /// First delay between attempts of a job, e.g. "1s"; doubles up to `retry_backoff_max`.
    pub retry_backoff: Option<String>,
    /// Largest delay between attempts, e.g. "30s".
    pub retry_backoff_max: Option<String>,
    /// Consecutive failures on one server (across jobs) that open its circuit breaker.
    pub breaker_threshold: Option<u32>,
    /// "size" (always) or "sha256" (also hash the stream and re-read the destination).
    pub verify: Option<String>,
    /// Passive mode for FTP servers without their own setting (FTP_PASSIVE_MODE).
    pub passive: Option<bool>,
    /// Runs a generator of files and jobs between two local directories (for the demo).
    pub demo: Option<bool>,
    /// Demo jobs per second.
    pub demo_rate: Option<u32>,
    /// Servers by the hostname jobs use, e.g. `[pipelines.ftp-sync.servers.SRC_FTP_SERVER1]`.
    #[serde(default)]
    pub servers: BTreeMap<String, RawServer>,
    /// Supervision overrides for this pipeline and its paths.
    #[serde(default)]
    pub supervision: RawSupervision,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Dead-letter jobs parked for this server longer than this, e.g. "1h" (off by default:
    /// they wait for the server).
    pub dead_letter_after: Option<String>,
    /// Longest wait for any one network step (connect, banner, login, a reply, an idle read or
    /// write of the data), e.g. "30s".
    pub timeout: Option<String>,
    /// How uploads reach their final name: "rename" (a temporary name, verified, renamed) or
    /// "direct" (straight to the final name, for upload-only accounts).
    pub staging: Option<String>,
    /// Objects above this size are committed on an S3 server by streaming them into place
    /// instead of a server-side copy (S3 copies at most 5 GiB at once), e.g. "5GiB".
    pub copy_limit: Option<u64>,
    /// Where passive data connections go: "control" (the control connection's address, as
    /// Python's ftplib does; survives a server behind NAT) or "reply" (the PASV reply's).
    pub passive_address: Option<String>,
    /// "ftp", "ftps", "sftp", "s3" or "file" ({HOSTNAME}_TYPE).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Host name or address; the bucket for "s3"; unused for "file" ({HOSTNAME}_HOST).
    pub host: Option<String>,
    /// Port ({HOSTNAME}_PORT); 21 by default, 22 for "sftp".
    pub port: Option<u16>,
    /// User ({HOSTNAME}_USER).
    pub user: Option<String>,
    /// Password ({HOSTNAME}_PASS); use "${VAR}" rather than writing it here.
    pub pass: Option<String>,
    /// Directory jobs are confined to; the local directory itself for "file" ({HOSTNAME}_ROOT).
    pub root: Option<String>,
    /// Passive mode for this server; FTP_PASSIVE_MODE otherwise.
    pub passive: Option<bool>,
    /// Accept any TLS certificate ("ftps" against self-signed test servers only).
    pub insecure_tls: Option<bool>,
    /// Private key file for "sftp" ({HOSTNAME}_KEY); the password is used when unset.
    pub key_file: Option<String>,
    /// The "sftp" server's host key fingerprint, "SHA256:..." as `ssh-keygen -lf` prints it.
    pub host_key: Option<String>,
    /// Accept any "sftp" host key (test servers only).
    pub insecure_host_key: Option<bool>,
    /// Connections kept to this server at most; 2 x concurrency by default.
    pub max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecorder {
    /// Topics to read (KAFKA_TOPICS); a topic whose name mentions "orderbook" carries order books.
    pub topics: Option<Vec<String>>,
    /// Consumer group prefix (KAFKA_GROUP_ID); each sink path adds its own suffix.
    pub group: Option<String>,
    /// Group of the service this replaces: a path with no offsets of its own starts from its
    /// committed offsets. Defaults to `group` (the seed's group); "" turns it off.
    pub migrate_from_group: Option<String>,
    /// Consumers per path in this process (NUM_CONSUMERS).
    pub consumers: Option<u32>,
    /// Writer lanes of the TimescaleDB path (DB_WRITE_WORKERS).
    pub db_write_workers: Option<u32>,
    /// Rows per TimescaleDB batch (BATCH_SIZE).
    pub batch_size: Option<u32>,
    /// Age at which a partial TimescaleDB batch is written (BATCH_TIMEOUT_MS), e.g. "5s".
    pub batch_timeout: Option<String>,
    /// Records in flight per consumer before it pauses (MAX_BUFFER_SIZE).
    pub max_buffer_size: Option<u32>,
    /// Runs a synthetic market-data generator into the topics (for the demo).
    pub demo: Option<bool>,
    /// Synthetic records per second when `demo` is on.
    pub demo_rate: Option<u32>,
    /// The TimescaleDB / PostgreSQL connection.
    #[serde(default)]
    pub timescale: RawTimescale,
    /// The Parquet path into object storage.
    #[serde(default)]
    pub s3: RawRecorderS3,
    /// Supervision overrides for this pipeline and its paths.
    #[serde(default)]
    pub supervision: RawSupervision,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimescale {
    /// Host (TIMESCALEDB_HOST).
    pub host: Option<String>,
    /// Port (TIMESCALEDB_PORT).
    pub port: Option<u16>,
    /// User (TIMESCALEDB_USER).
    pub user: Option<String>,
    /// Password (TIMESCALEDB_PASSWORD); use "${VAR}" rather than writing it here.
    pub password: Option<String>,
    /// Database (TIMESCALEDB_DB).
    pub database: Option<String>,
    /// Schema holding tick_data, orderbook, the aggregates and actord_offsets.
    pub schema: Option<String>,
    /// How often plain-PostgreSQL aggregates are refreshed, e.g. "1m".
    pub refresh_interval: Option<String>,
    /// Longest wait for a lock before a statement fails and is retried, e.g. "30s"; "0s" waits
    /// without end.
    pub lock_timeout: Option<String>,
    /// Longest a write may run before it is cancelled and retried, e.g. "5m"; "0s" for none.
    pub statement_timeout: Option<String>,
    /// Records over which the share rejected by the database is measured; default 1000.
    pub rejection_window: Option<u32>,
    /// Share of `rejection_window` rejected as poison (0 < share <= 1) above which the path
    /// stops instead of dead-lettering on; default 0.5.
    pub rejection_share: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecorderS3 {
    /// Writes Parquet objects (S3_WRITE_ENABLED).
    pub enabled: Option<bool>,
    /// Bucket (S3_BUCKET); when unset, objects go to the local directory `dir`.
    pub bucket: Option<String>,
    /// Region of the bucket (S3_REGION); overrides `[s3] region`.
    pub region: Option<String>,
    /// Local directory used when no bucket is set.
    pub dir: Option<String>,
    /// Key prefix above the `tick/` and `orderbook/` trees.
    pub prefix: Option<String>,
    /// Records per object before it is written (S3_BATCH_SIZE).
    pub batch_size: Option<u32>,
    /// Age at which a partial batch is written (S3_BATCH_TIMEOUT_SEC), e.g. "1h".
    pub batch_timeout: Option<String>,
    /// Upload lanes; partitions are spread over them.
    pub writers: Option<u32>,
    /// Rows per Parquet row group; bounds the writer's memory.
    pub row_group_size: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeartbeat {
    /// Time between beats, e.g. "1s".
    pub interval: Option<String>,
    /// Topic the beats go through.
    pub topic: Option<String>,
    /// Consumer group reading the beats back.
    pub group: Option<String>,
    /// An optional scheduled entry `beat`: each run publishes one extra beat marked
    /// `"scheduled": true`. Absent by default.
    pub schedule: Option<super::schedule::RawSchedule>,
    /// How long a scheduled run lasts after its beat was delivered, e.g. "5s"; default "0s".
    /// Lets an operator watch an active run and the no-overlap rule.
    pub schedule_hold: Option<String>,
    /// Supervision overrides for this pipeline and its paths.
    #[serde(default)]
    pub supervision: RawSupervision,
}
