//! `[pipelines.recorder]` as written, and how it is read into [`RecorderConfig`].

use serde::Deserialize;

use super::RecorderConfig;
use crate::config::{Check, PipelineConfig, RawSize, RawSupervision};

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
    /// Bytes in flight per consumer before it pauses, e.g. "64MiB" (the default) or a number
    /// of bytes.
    pub max_in_flight_bytes: Option<RawSize>,
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

impl PipelineConfig for RecorderConfig {
    type Raw = RawRecorder;

    fn supervision(raw: &RawRecorder) -> &RawSupervision {
        &raw.supervision
    }

    fn validate(raw: &RawRecorder, check: &mut Check<'_>) -> Self {
        RecorderConfig::validate(raw, check)
    }
}
