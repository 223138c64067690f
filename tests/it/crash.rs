//! Crash runs: the recorder killed with SIGKILL at random moments while it drains a backlog,
//! restarted each time, on a broker that expires killed members (`actord embedded-broker`).
//! Afterwards every tick is exactly one row in PostgreSQL and in exactly one Parquet object.
//!
//! CI runs the short form. The long form of the reliability suite:
//! `ACTORD_CRASH_MESSAGES=1000000 ACTORD_CRASH_KILLS=20 cargo test --test it crash:: -- --nocapture`

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::object_group::distinct;
use crate::recorder::{count, drop_schema, fresh_schema, recorder_config, tick, BASE};
use crate::recorder_s3::{assert_every_tick_once, env_of, objects};
use crate::support::{wait_ready, MockBroker, Process, S3Server};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Publishes ticks `0..n` with lz4 (the mock cluster keeps 5 MiB per partition), checking
/// every delivery report.
async fn publish(bootstrap: &str, n: i64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "5000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut start = 0;
    while start < n {
        let end = (start + 50_000).min(n);
        let mut waits = Vec::new();
        for i in start..end {
            let payload = tick(i, BASE);
            let key = (i % 97).to_string();
            waits.push(
                producer
                    .send_result(FutureRecord::to("market.tick").payload(&payload).key(&key))
                    .map_err(|(e, _)| e)
                    .unwrap(),
            );
        }
        for w in waits {
            w.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
        start = end;
    }
}

/// A small deterministic generator for the kill moments (the run is reproducible by seed).
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (self.0 >> 33) % (high - low)
    }
}

#[tokio::test]
async fn the_recorder_killed_again_and_again_writes_every_tick_exactly_once() {
    let n = setting("ACTORD_CRASH_MESSAGES", 30_000) as i64;
    let kills = setting("ACTORD_CRASH_KILLS", 3);
    let mut moments = Moments(setting("ACTORD_CRASH_SEED", 7));
    let broker = MockBroker::start(&[
        ("market.tick", 24),
        ("market.orderbook", 4),
        ("market.tick-dlq", 1),
        ("market.orderbook-dlq", 1),
    ]);
    let s3 = S3Server::start("crash-runs");
    let schema = fresh_schema();
    let toml = recorder_config(&schema, 5432, "");
    let mut env = s3.env();
    env.push(("KAFKA_BROKERS", broker.bootstrap().to_owned()));
    env.push(("S3_BATCH_SIZE", "2000".into()));
    env.push(("S3_BATCH_TIMEOUT_SEC", "1".into()));
    publish(broker.bootstrap(), n).await;
    let started = Instant::now();

    let mut at_kill = Vec::new();
    for _ in 0..kills {
        let mut p = Process::start(&toml, &[], &env_of(&env));
        wait_ready(&p.base).await;
        // Anywhere from the first batches to well into the backlog.
        tokio::time::sleep(Duration::from_millis(moments.next_ms(500, 6000))).await;
        p.signal("KILL");
        p.wait_exit(Duration::from_secs(10));
        at_kill.push(count(&schema, "tick_data").await);
    }

    let last = Process::start(&toml, &[], &env_of(&env));
    let store = s3.client();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let rows = count(&schema, "tick_data").await;
        if rows >= n && distinct(&objects(&store).await) == n as usize {
            break;
        }
        if Instant::now() > deadline {
            let log = last.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{rows} rows of {n} after {kills} kills (rows at each kill: {at_kill:?})\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let row = crate::support::pg()
        .await
        .query_one(
            &format!("SELECT count(*), count(DISTINCT volume) FROM \"{schema}\".tick_data"),
            &[],
        )
        .await
        .unwrap();
    let (rows, unique): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((rows, unique), (n, n), "rows at each kill: {at_kill:?}");
    assert_every_tick_once(&objects(&store).await, n);
    eprintln!(
        "crash run: {n} ticks, {kills} SIGKILLs (rows at each: {at_kill:?}), exactly once in \
         PostgreSQL and Parquet after {:.1}s",
        elapsed.as_secs_f64()
    );
    drop(last);
    drop_schema(&schema).await;
}
