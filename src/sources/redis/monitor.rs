//! The state of a stream and its group as `XLEN`, `XINFO GROUPS` and `XINFO CONSUMERS` show it:
//! what the seed's StreamMonitor printed, read for metrics, the admin tree and drain checks.

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply};
use redis::RedisError;
use serde::Serialize;

use crate::telemetry::names;

/// One stream and one of its groups.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StreamStatus {
    /// Entries in the stream (XLEN; acknowledged entries stay until trimmed).
    pub length: u64,
    /// Entries delivered to the group and not acknowledged.
    pub pending: u64,
    /// Entries not delivered to the group yet, when the server can tell (Redis 7).
    pub lag: Option<u64>,
    /// Consumers the group knows, live or not.
    pub consumers: u64,
    /// Consumers that were seen within the last minute.
    pub active_consumers: u64,
    pub last_delivered_id: Option<String>,
    /// False when the group does not exist (yet).
    pub group_exists: bool,
}

impl StreamStatus {
    /// The seed's pipeline status of one stage: `idle` (nothing waiting or pending),
    /// `processing` (consumers hold entries or take them), `stalled` (work waits and no
    /// consumer was seen lately).
    pub fn state(&self) -> &'static str {
        let waiting = self.pending + self.lag.unwrap_or(0);
        if waiting == 0 {
            "idle"
        } else if self.active_consumers > 0 {
            "processing"
        } else {
            "stalled"
        }
    }

    /// Publishes the status as gauges labelled with `path` and the stream.
    pub fn publish(&self, path: &str, stream: &str) {
        let labels = [("path", path.to_owned()), ("topic", stream.to_owned())];
        metrics::gauge!(names::REDIS_STREAM_LENGTH, &labels).set(self.length as f64);
        metrics::gauge!(names::REDIS_STREAM_PENDING, &labels).set(self.pending as f64);
        metrics::gauge!(names::REDIS_STREAM_LAG, &labels).set(self.lag.unwrap_or(0) as f64);
        metrics::gauge!(names::REDIS_STREAM_CONSUMERS, &labels).set(self.consumers as f64);
    }
}

/// How recently a consumer must have been seen to count as active.
const ACTIVE_MS: usize = 60_000;

/// Reads the status of `stream` for `group`.
pub async fn read(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Result<StreamStatus, RedisError> {
    let length: u64 = redis::cmd("XLEN").arg(stream).query_async(conn).await?;
    let mut status = StreamStatus {
        length,
        ..StreamStatus::default()
    };
    if length == 0 {
        // XINFO on a missing key is an error; an empty stream made by MKSTREAM is not.
        let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(conn).await?;
        if !exists {
            return Ok(status);
        }
    }
    let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    let Some(g) = groups.groups.into_iter().find(|g| g.name == group) else {
        return Ok(status);
    };
    status.group_exists = true;
    status.pending = g.pending as u64;
    status.lag = g.lag.map(|l| l as u64);
    status.consumers = g.consumers as u64;
    status.last_delivered_id = Some(g.last_delivered_id);
    if g.consumers > 0 {
        let consumers: StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg(group)
            .query_async(conn)
            .await?;
        status.active_consumers = consumers
            .consumers
            .iter()
            .filter(|c| c.idle < ACTIVE_MS)
            .count() as u64;
    }
    Ok(status)
}
