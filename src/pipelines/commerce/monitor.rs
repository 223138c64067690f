//! `CacheMonitor`: reads Redis every `monitor_interval` and shows the caches as metrics, as
//! counters of `/commerce/cache-monitor` in `/api/tree`, and as one log line per refresh:
//!
//! ```text
//! [11:45:35] [15/50s ######--------------] | MEM: 2.25M | OPS/s: 1 | HIT: 100.0% | CACHE: users=1000, products=1000 | refreshes: 1
//! ```

use std::time::Duration;

use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use redis::aio::MultiplexedConnection;
use tracing::{info, warn};

use super::names;
use crate::sources::redis::RedisConnection;

pub struct CacheMonitor;

pub struct CacheMonitorArgs {
    pub probe: Probe,
    pub redis: RedisConnection,
    pub users_key: String,
    pub products_key: String,
    pub meta_key: String,
    pub interval: Duration,
    /// The cache worker's interval, for the progress bar.
    pub refresh_interval: Duration,
}

pub enum CacheMonitorMsg {
    Tick,
}

pub struct CacheMonitorState {
    args: CacheMonitorArgs,
    conn: Option<MultiplexedConnection>,
    refreshes: Option<i64>,
}

/// What one look at Redis found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub memory_bytes: u64,
    pub ops_per_sec: u64,
    pub hits: u64,
    pub misses: u64,
    pub users: u64,
    pub products: u64,
    pub refreshes: i64,
    pub refreshed_at_ms: Option<i64>,
}

impl Reading {
    /// Hits over hits and misses; 1 when nothing was looked up yet.
    pub fn hit_ratio(&self) -> f64 {
        if self.hits + self.misses == 0 {
            1.0
        } else {
            self.hits as f64 / (self.hits + self.misses) as f64
        }
    }

    /// The seed's progress line.
    pub fn line(&self, now_ms: i64, interval: Duration) -> String {
        let total = interval.as_secs().max(1);
        let since = self
            .refreshed_at_ms
            .map(|t| ((now_ms - t).max(0) / 1000) as u64)
            .unwrap_or(0)
            .min(total);
        let filled = (since * 20 / total) as usize;
        let clock = chrono::DateTime::from_timestamp_millis(now_ms)
            .map(|t| {
                t.with_timezone(&actord_actors::scheduler::DEFAULT_TIME_ZONE)
                    .format("%H:%M:%S")
                    .to_string()
            })
            .unwrap_or_default();
        format!(
            "[{clock}] [{since}/{total}s {}{}] | MEM: {:.2}M | OPS/s: {} | HIT: {:.1}% | CACHE: users={}, products={} | refreshes: {}",
            "#".repeat(filled),
            "-".repeat(20 - filled),
            self.memory_bytes as f64 / (1024.0 * 1024.0),
            self.ops_per_sec,
            self.hit_ratio() * 100.0,
            self.users,
            self.products,
            self.refreshes
        )
    }
}

/// A field of `INFO`'s `name:value` lines.
fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads memory, ops/s, hits, cache sizes and the refresh count.
pub async fn read(
    conn: &mut MultiplexedConnection,
    users_key: &str,
    products_key: &str,
    meta_key: &str,
) -> Result<Reading, redis::RedisError> {
    let memory: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    let stats: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    let (users, products, refreshes, at): (u64, u64, Option<i64>, Option<i64>) = redis::pipe()
        .cmd("HLEN")
        .arg(users_key)
        .cmd("HLEN")
        .arg(products_key)
        .cmd("HGET")
        .arg(meta_key)
        .arg("refreshes")
        .cmd("HGET")
        .arg(meta_key)
        .arg("refreshed_at_ms")
        .query_async(conn)
        .await?;
    Ok(Reading {
        memory_bytes: info_field(&memory, "used_memory"),
        ops_per_sec: info_field(&stats, "instantaneous_ops_per_sec"),
        hits: info_field(&stats, "keyspace_hits"),
        misses: info_field(&stats, "keyspace_misses"),
        users,
        products,
        refreshes: refreshes.unwrap_or(0),
        refreshed_at_ms: at,
    })
}

impl CacheMonitorState {
    async fn look(&mut self) -> Result<Reading, String> {
        let a = &self.args;
        if self.conn.is_none() {
            self.conn = Some(a.redis.connect(Duration::from_secs(5)).await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        match read(conn, &a.users_key, &a.products_key, &a.meta_key).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.conn = None;
                Err(crate::sources::redis::describe(&a.redis.addr(), &e))
            }
        }
    }
}

impl Actor for CacheMonitor {
    type Msg = CacheMonitorMsg;
    type State = CacheMonitorState;
    type Arguments = CacheMonitorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        for cache in ["users", "products"] {
            metrics::gauge!(names::COMMERCE_CACHE_ENTRIES, "cache" => cache).set(0.0);
        }
        metrics::gauge!(names::COMMERCE_REDIS_MEMORY_BYTES).set(0.0);
        metrics::gauge!(names::COMMERCE_REDIS_OPS_PER_SECOND).set(0.0);
        metrics::gauge!(names::COMMERCE_REDIS_HIT_RATIO).set(0.0);
        let _ = myself.cast(CacheMonitorMsg::Tick);
        Ok(CacheMonitorState {
            args,
            conn: None,
            refreshes: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let CacheMonitorMsg::Tick = message;
        match state.look().await {
            Ok(r) => {
                let probe = &state.args.probe;
                probe.set_counter("redis_memory_bytes", r.memory_bytes);
                probe.set_counter("redis_ops_per_sec", r.ops_per_sec);
                probe.set_counter("redis_hit_ratio_permille", (r.hit_ratio() * 1000.0) as u64);
                probe.set_counter("cache_users", r.users);
                probe.set_counter("cache_products", r.products);
                probe.set_counter("cache_refreshes", r.refreshes.max(0) as u64);
                probe.progress(1, 0);
                metrics::gauge!(names::COMMERCE_CACHE_ENTRIES, "cache" => "users")
                    .set(r.users as f64);
                metrics::gauge!(names::COMMERCE_CACHE_ENTRIES, "cache" => "products")
                    .set(r.products as f64);
                metrics::gauge!(names::COMMERCE_REDIS_MEMORY_BYTES).set(r.memory_bytes as f64);
                metrics::gauge!(names::COMMERCE_REDIS_OPS_PER_SECOND).set(r.ops_per_sec as f64);
                metrics::gauge!(names::COMMERCE_REDIS_HIT_RATIO).set(r.hit_ratio());
                if state.refreshes != Some(r.refreshes) {
                    if r.refreshes > 0 {
                        let now = chrono::Utc::now().timestamp_millis();
                        info!(
                            pipeline = "commerce",
                            "{}",
                            r.line(now, state.args.refresh_interval)
                        );
                    }
                    state.refreshes = Some(r.refreshes);
                }
            }
            Err(e) => {
                warn!(pipeline = "commerce", error = %e, "cache monitor cannot read redis");
                state.args.probe.set_error(e);
            }
        }
        myself.send_after(state.args.interval, || CacheMonitorMsg::Tick);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_like_the_seeds() {
        let r = Reading {
            memory_bytes: 2_359_296,
            ops_per_sec: 1,
            hits: 3,
            misses: 1,
            users: 1000,
            products: 1000,
            refreshes: 1,
            refreshed_at_ms: Some(0),
        };
        // 15 s after the refresh, at 00:00:15 UTC (09:00:15 in Seoul).
        assert_eq!(
            r.line(15_000, Duration::from_secs(50)),
            "[09:00:15] [15/50s ######--------------] | MEM: 2.25M | OPS/s: 1 | HIT: 75.0% | CACHE: users=1000, products=1000 | refreshes: 1"
        );
        assert_eq!(
            info_field(
                "# Memory\r\nused_memory:123\r\nused_memory_human:1K\r\n",
                "used_memory"
            ),
            123
        );
    }
}
