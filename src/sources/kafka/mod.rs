//! Kafka: the consumer (manual offsets, rebalance-safe, bounded), the dead-letter producer, a
//! producer for pipelines that publish, the embedded broker, and the wiring of a consumer path.

pub mod consumer;
mod context;
pub mod dlq;
pub mod embedded;
pub mod path;
pub mod producer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;

/// How to reach the cluster: bootstrap servers and extra librdkafka properties.
#[derive(Clone, Debug)]
pub struct KafkaConnection {
    pub bootstrap: String,
    /// Extra librdkafka properties (`[kafka.properties]`), applied to every client.
    pub properties: BTreeMap<String, String>,
    /// True when `bootstrap` is the in-process mock cluster.
    pub embedded: bool,
    /// Consumers export each partition's lag as well as each topic's.
    pub lag_per_partition: bool,
}

impl KafkaConnection {
    pub fn new(bootstrap: impl Into<String>) -> Self {
        KafkaConnection {
            bootstrap: bootstrap.into(),
            properties: BTreeMap::new(),
            embedded: false,
            lag_per_partition: false,
        }
    }

    /// For the embedded broker: when this process first built a path on it. Its records and
    /// its offsets begin then, so an object sink treats older objects as another broker's
    /// (replaced on replay); every later build on the same broker (a restart, a reload) gets
    /// the same time and keeps what was written since.
    pub fn embedded_since(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static SINCE: OnceLock<Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>> =
            OnceLock::new();
        if !self.embedded {
            return None;
        }
        let mut since = SINCE
            .get_or_init(Default::default)
            .lock()
            .expect("embedded-since lock");
        Some(
            *since
                .entry(self.bootstrap.clone())
                .or_insert_with(chrono::Utc::now),
        )
    }

    /// A client config with the bootstrap servers and the extra properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Supplies the next offset to read per partition from the sink's own durable state; used by
/// exactly-once sinks that store offsets with the data.
pub trait OffsetSource: Send + Sync {
    /// The next offset of each partition (`None` where the sink has none), read when the
    /// partitions are assigned, inside the rebalance callback: it blocks the consumer until it
    /// answers. An error fails the consumer, which its path restarts, rather than starting a
    /// partition from a guess.
    fn next_offsets(&self, partitions: &[(&str, i32)]) -> Result<Vec<Option<i64>>, String>;
}

/// Where a newly assigned partition starts reading.
#[derive(Clone)]
pub enum StartFrom {
    /// The group's committed offset; without one, `auto.offset.reset` (earliest or latest).
    Committed { earliest: bool },
    /// The beginning of the partition, whatever was committed.
    Beginning,
    /// The first record at or after this time (ms since the epoch). Records older than it are
    /// skipped on the client too, so the result is right even on a broker that cannot look up
    /// offsets by time.
    Timestamp(i64),
    /// Offsets from the sink; where it has none, the committed offset, then `earliest`.
    Sink(Arc<dyn OffsetSource>),
}

impl std::fmt::Debug for StartFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFrom::Committed { earliest } => write!(f, "Committed {{ earliest: {earliest} }}"),
            StartFrom::Beginning => f.write_str("Beginning"),
            StartFrom::Timestamp(ms) => write!(f, "Timestamp({ms})"),
            StartFrom::Sink(_) => f.write_str("Sink"),
        }
    }
}

/// The in-flight bytes bound of a consumer path whose pipeline sets none.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// One consumer path's source settings.
#[derive(Clone, Debug)]
pub struct SourceSettings {
    pub topics: Vec<String>,
    pub group: String,
    pub start: StartFrom,
    /// Consumers in the group within this process.
    pub consumers: usize,
    /// In-flight bound per consumer: records handed downstream and not yet committable.
    pub max_in_flight_records: usize,
    pub max_in_flight_bytes: usize,
    /// How often acknowledged offsets are committed.
    pub commit_interval: Duration,
    pub session_timeout: Duration,
    /// Most records handed downstream in one message.
    pub chunk: usize,
    /// How long a stopping consumer waits for in-flight records to be acknowledged.
    pub drain_timeout: Duration,
    /// Another group whose committed offsets start a partition that neither the sink nor this
    /// path's own group has an offset for: the group of the service this path replaces, so a
    /// switch neither rewrites what that service wrote nor skips what it did not.
    pub migrate_from_group: Option<String>,
    /// How long a revoke waits for the writes in flight of the partitions it gives up before
    /// it commits and lets them go (see the consumer); at most a third of the session timeout.
    pub revoke_wait: Duration,
}

impl SourceSettings {
    pub fn new(topics: Vec<String>, group: impl Into<String>) -> Self {
        SourceSettings {
            topics,
            group: group.into(),
            start: StartFrom::Committed { earliest: true },
            consumers: 1,
            max_in_flight_records: 100_000,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            commit_interval: Duration::from_secs(1),
            session_timeout: Duration::from_secs(10),
            chunk: 2_000,
            drain_timeout: Duration::from_secs(8),
            migrate_from_group: None,
            revoke_wait: Duration::from_secs(10),
        }
    }
}

/// A batch must fit in the consumer's in-flight bound: reaching the bound forces a flush, but a
/// batch larger than the bound could never fill and the path would only move by age.
pub fn check_batch_fits(
    check: &mut crate::config::Check<'_>,
    batch_key: &str,
    batch: usize,
    bound_key: &str,
    bound: usize,
) {
    if batch > bound {
        check.problem(
            batch_key,
            format!(
                "{batch} exceeds {bound_key} ({bound}); a batch must fit in the in-flight bound"
            ),
        );
    }
}

/// The same for the bytes bound: a batch of even the smallest records (each counted at least
/// [`MIN_IN_FLIGHT_SIZE`](actord_actors::record::MIN_IN_FLIGHT_SIZE) in flight) must fit in it.
pub fn check_batch_fits_bytes(
    check: &mut crate::config::Check<'_>,
    batch_key: &str,
    batch: usize,
    bytes_key: &str,
    bytes: usize,
) {
    let least = batch.saturating_mul(actord_actors::record::MIN_IN_FLIGHT_SIZE);
    if least > bytes {
        check.problem(
            bytes_key,
            format!(
                "{bytes} bytes cannot hold a batch of {batch_key} ({batch}) records, each counted \
                 at least {} bytes in flight: expected {least} or more",
                actord_actors::record::MIN_IN_FLIGHT_SIZE
            ),
        );
    }
}
