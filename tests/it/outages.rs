//! Outages: a service one pipeline depends on is stopped for 30 s in the middle of a run while
//! another pipeline runs beside it. Nothing is lost, nothing is dead-lettered because of the
//! outage, only the affected pipeline's subtree restarts, and the other pipeline's throughput
//! during the outage is printed beside its throughput before. Each test stops a server of its
//! own (`PgServer`, `RedisServer`), never the machine's shared services.
//!
//! `cargo test --test it outages:: -- --nocapture`

use std::time::{Duration, Instant};

use crate::kafka::end_offsets;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::recorder::{recorder_config, tick, BASE};
use crate::support::{flatten, get, tree, until, wait_ready, PgServer, Process};

/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(30);

/// The sum of a counter's series in a scrape.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Restarts of every actor under `prefix` (the pipeline supervisor included), by path.
fn restarts_under(t: &serde_json::Value, prefix: &str) -> Vec<(String, u64)> {
    flatten(t)
        .into_iter()
        .filter_map(|a| {
            let path = a["path"].as_str()?.to_owned();
            (path == prefix || path.starts_with(&format!("{prefix}/")))
                .then(|| (path, a["restarts"].as_u64().unwrap_or(0)))
        })
        .collect()
}

/// A rate over a window of a counter read through the admin port.
struct Rate {
    name: &'static str,
    value: f64,
    at: Instant,
}

impl Rate {
    async fn mark(base: &str, name: &'static str) -> Rate {
        let value = counter(&get(base, "/metrics").await.1, name);
        Rate {
            name,
            value,
            at: Instant::now(),
        }
    }

    /// Units per second since the mark, and a new mark.
    async fn since(self, base: &str) -> (f64, Rate) {
        let now = Rate::mark(base, self.name).await;
        let rate = (now.value - self.value) / now.at.duration_since(self.at).as_secs_f64();
        (rate, now)
    }
}

async fn rows(db: &PgServer, schema: &str) -> (i64, i64) {
    let row = db
        .client()
        .await
        .query_one(
            &format!("SELECT count(*), count(DISTINCT volume) FROM \"{schema}\".tick_data"),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The recorder writes ticks into a PostgreSQL of the test's own, the heartbeat runs beside it
/// on the same embedded broker. Ticks arrive at a steady rate; PostgreSQL is stopped for 30 s
/// mid-run and started again. Every tick is exactly one row, the tick DLQ is empty, and no
/// heartbeat actor restarted; the beats per second before and during the outage are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_loses_no_tick_and_leaves_the_heartbeat_alone() {
    let mut db = PgServer::start();
    let schema = crate::recorder::fresh_schema();
    let toml = recorder_config(&schema, db.port, "").replace(
        "enable = [\"recorder\"]",
        "enable = [\"recorder\", \"heartbeat\"]",
    ) + "[pipelines.heartbeat]\ninterval = \"20ms\"\n";
    let p = Process::start(&toml, &[], &[("S3_WRITE_ENABLED", "false")]);
    wait_ready(&p.base).await;
    let bootstrap = crate::recorder::bootstrap_of(&p).await;

    // 12,000 ticks at 200 a second: a minute of input, the outage in its middle.
    let n: i64 = 12_000;
    let producer = {
        let bootstrap = bootstrap.clone();
        tokio::spawn(async move {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "5")
                .create()
                .unwrap();
            let started = tokio::time::Instant::now();
            for (k, start) in (0..n).step_by(50).enumerate() {
                let mut waits = Vec::new();
                for i in start..start + 50 {
                    let (payload, key) = (tick(i, BASE), (i % 13).to_string());
                    let record = FutureRecord::to("market.tick").payload(&payload).key(&key);
                    waits.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
                }
                for w in waits {
                    w.await.unwrap().map_err(|(e, _)| e).unwrap();
                }
                tokio::time::sleep_until(started + Duration::from_millis(250 * (k as u64 + 1)))
                    .await;
            }
        })
    };

    until(Duration::from_secs(60), "the first beats", || async {
        counter(
            &get(&p.base, "/metrics").await.1,
            "actord_heartbeat_beats_total",
        ) > 0.0
    })
    .await;
    let mark = Rate::mark(&p.base, "actord_heartbeat_beats_total").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (before, mark) = mark.since(&p.base).await;
    let (at_stop, _) = rows(&db, &schema).await;
    assert!(at_stop < n, "the outage falls in the middle of the run");

    db.stop();
    tokio::time::sleep(OUTAGE).await;
    let (during, _) = mark.since(&p.base).await;
    db.resume();

    producer.await.unwrap();
    let caught_up = Instant::now();
    let deadline = caught_up + Duration::from_secs(120);
    loop {
        let (count, _) = rows(&db, &schema).await;
        if count >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{count} rows of {n}; actord log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let catch_up = caught_up.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows(&db, &schema).await, (n, n), "exactly one row per tick");
    let dead: i64 = end_offsets(&bootstrap, "market.tick-dlq", 1).values().sum();
    assert_eq!(dead, 0, "no tick dead-lettered for the outage");

    let t = tree(&p.base).await;
    let heartbeat = restarts_under(&t, "/heartbeat");
    assert!(!heartbeat.is_empty(), "{t:#}");
    assert!(
        heartbeat.iter().all(|(_, r)| *r == 0),
        "the heartbeat's actors restarted: {heartbeat:?}"
    );
    let recorder: u64 = restarts_under(&t, "/recorder").iter().map(|(_, r)| r).sum();
    eprintln!(
        "postgres outage: {n} ticks at 200/s, PostgreSQL down {}s with {at_stop} rows written; \
         every tick one row, 0 dead letters, {recorder} restarts under /recorder, 0 under \
         /heartbeat; heartbeat {before:.1} beats/s before, {during:.1} during; all rows {:.1}s \
         after the last tick was produced",
        OUTAGE.as_secs(),
        catch_up.as_secs_f64()
    );
}
