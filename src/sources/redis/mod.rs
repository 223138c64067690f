//! Redis Streams: a consumer-group source (blocking reads, acks after the sink, reclaiming what
//! a dead consumer held, a delivery limit), its dead-letter stream, and the wiring of a path.
//!
//! A stream entry becomes a [`SourceRecord`](actord_actors::record::SourceRecord): its fields
//! are the record's headers, the configured payload field (e.g. `data`) its payload, and the
//! millisecond part of its id its timestamp. Entries are acknowledged (XACK) one by one once
//! the path made them durable, so unlike a Kafka offset nothing waits for an earlier entry.

pub mod consumer;
pub mod dlq;
pub mod drain;
pub mod monitor;
pub mod path;
pub mod trim;

use std::time::Duration;

use actord_actors::Backoff;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct RedisConnection {
    /// `redis://[:password@]host[:port][/db]` (REDIS_URL).
    pub url: String,
}

impl RedisConnection {
    pub fn new(url: impl Into<String>) -> Self {
        RedisConnection { url: url.into() }
    }

    pub fn client(&self) -> Result<Client, String> {
        Client::open(self.url.as_str()).map_err(|e| format!("invalid redis url: {e}"))
    }

    /// `host:port` for logs and health: the URL may carry a password.
    pub fn addr(&self) -> String {
        self.client()
            .map(|c| c.get_connection_info().addr().to_string())
            .unwrap_or_else(|_| "<invalid url>".to_owned())
    }

    /// A new connection whose replies may take `response` (a blocking read waits that long).
    pub async fn connect(&self, response: Duration) -> Result<MultiplexedConnection, String> {
        let client = self.client()?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(response));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| describe(&self.addr(), &e))
    }
}

/// One Redis error as a line for logs and health, naming the server but never its password.
pub fn describe(addr: &str, e: &RedisError) -> String {
    format!("redis {addr}: {e}")
}

/// True when a reply says the group (or its stream) is gone, e.g. after a restart of a Redis
/// that keeps nothing: the group is created again.
pub fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// One consumer-group path's source settings.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub stream: String,
    pub group: String,
    /// The consumer name as `XINFO CONSUMERS` shows it; consumer `i` of a path with several
    /// adds `-i`. Keep it stable across restarts of a process so its pending entries are
    /// taken up again at once (see [`consumer_name`]).
    pub consumer: String,
    /// Consumers of the group within this process.
    pub consumers: usize,
    /// The consumer name is shared configuration (WORKER_NAME), so several processes may be
    /// given the same one: each consumer then leases a name of its own, `<consumer>-<n>` with
    /// the lowest free `n`, in the key `<stream>:consumer:<group>:<name>` (held while it runs,
    /// expiring `claim_idle` after its process dies). Without it the name is unique already
    /// (`<name>-<host>-<pid>`).
    pub lease_name: bool,
    /// Where a newly created group starts: `0` (the whole stream, as the seed) or `$`.
    pub start_id: String,
    /// Entries per read (BATCH_COUNT).
    pub count: usize,
    /// How long a read blocks when nothing is waiting.
    pub block: Duration,
    /// Entries of another consumer idle this long are taken over (XAUTOCLAIM): that consumer
    /// died or hangs. Entries this consumer holds are touched well before, so a slow job is
    /// never taken away from a live consumer.
    pub claim_idle: Duration,
    /// How often the group is looked at for entries to take over.
    pub claim_interval: Duration,
    /// An entry delivered more often than this without an ack (each delivery ended by its
    /// consumer dying) goes to the dead-letter stream instead of being processed again. Only
    /// with a path that owns its dead letters.
    pub max_deliveries: u32,
    /// Field whose value is the record's payload; `None` makes the payload a JSON object of
    /// every field.
    pub payload_field: Option<String>,
    /// Entries handed downstream and not yet acknowledged, per consumer.
    pub max_in_flight_records: usize,
    /// What those entries may hold in memory, per consumer (each counted with
    /// [`actord_actors::record::SourceRecord::in_flight_size`]).
    pub max_in_flight_bytes: usize,
    /// How long a stopping consumer waits for in-flight entries to be acknowledged.
    pub drain_timeout: Duration,
    /// Waits between attempts to reach Redis again.
    pub reconnect: Backoff,
    /// How often stream length, pending entries and consumers are read for metrics and the
    /// tree (by consumer 0).
    pub monitor_interval: Duration,
    /// Count acknowledged and dead-lettered entries per batch in Redis (see [`drain`]).
    pub drain_counting: Option<drain::DrainCounting>,
}

impl StreamSettings {
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Self {
        StreamSettings {
            stream: stream.into(),
            group: group.into(),
            consumer: consumer_name("actord", None),
            consumers: 1,
            lease_name: false,
            start_id: "0".to_owned(),
            count: 10,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(5),
            max_deliveries: 3,
            payload_field: None,
            max_in_flight_records: 1_000,
            max_in_flight_bytes: 64 << 20,
            drain_timeout: Duration::from_secs(8),
            reconnect: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(10),
                factor: 2.0,
            },
            monitor_interval: Duration::from_secs(5),
            drain_counting: None,
        }
    }

    /// The name of consumer `i` of this path.
    pub fn consumer_of(&self, i: usize) -> String {
        if self.consumers <= 1 {
            self.consumer.clone()
        } else {
            format!("{}-{i}", self.consumer)
        }
    }

    /// The dead-letter stream: `<stream><suffix>`.
    pub fn dlq_stream(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.stream)
    }
}

/// A consumer name as the seed makes them: WORKER_NAME when given, else
/// `<name>-<host>-<pid>`.
pub fn consumer_name(name: &str, worker_name: Option<&str>) -> String {
    if let Some(w) = worker_name.filter(|w| !w.trim().is_empty()) {
        return w.trim().to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{name}-{host}-{}", std::process::id())
}

/// The millisecond part of a stream id.
pub fn id_millis(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

/// Stream ids compare by (milliseconds, sequence).
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_follow_the_seed() {
        assert_eq!(consumer_name("sales", Some("w-1")), "w-1");
        let n = consumer_name("sales", None);
        assert!(n.starts_with("sales-"), "{n}");
        assert!(
            n.ends_with(&format!("-{}", std::process::id())),
            "{n} ends with the pid"
        );
        let mut s = StreamSettings::new("q", "g");
        s.consumer = "w".into();
        assert_eq!(s.consumer_of(0), "w");
        s.consumers = 3;
        assert_eq!(s.consumer_of(2), "w-2");
        assert_eq!(s.dlq_stream(":dlq"), "q:dlq");
    }

    #[test]
    fn stream_ids_parse() {
        assert_eq!(id_millis("1700000000000-3"), Some(1_700_000_000_000));
        assert_eq!(parse_id("5-2"), Some((5, 2)));
        assert_eq!(parse_id("7"), Some((7, 0)));
        assert!(parse_id("5-2") < parse_id("10-0"));
        assert_eq!(parse_id("x-1"), None);
    }
}
