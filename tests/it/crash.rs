//! Crash runs: a pipeline killed with SIGKILL at random (seeded) moments while it drains a
//! backlog, restarted each time, on a broker that expires killed members.
//! - the recorder (`actord embedded-broker`): every tick exactly one row in PostgreSQL and in
//!   exactly one Parquet object;
//! - a backfill run (`actord backfill --mode incremental`), rerun until one completes: every
//!   record in exactly one object, by the objects' `kafka_partition` / `kafka_offset`;
//! - commerce (`actord embedded-broker`): every order exactly once in `orders`, and each
//!   product's `order_count` the number of its orders.
//!
//! CI runs the short forms. The long forms of the reliability suite:
//! `ACTORD_CRASH_MESSAGES=1000000 ACTORD_CRASH_KILLS=20 cargo test --test it crash::<name> -- --nocapture`
//! (`ACTORD_CRASH_SEED` picks other kill moments).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::RecordBatch;
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

/// Waits until `progress` passes `before` (this run has written something; or it is at
/// `total`, nothing left to write), then a random
/// moment more, then kills `p` with SIGKILL: every kill lands mid-run. Returns the exit status
/// instead when the process finished on its own first.
async fn kill_mid_run<F, Fut>(
    p: &mut Process,
    moments: &mut Moments,
    high_ms: u64,
    before: i64,
    total: i64,
    progress: F,
) -> Option<std::process::ExitStatus>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = progress().await;
        if now > before || now >= total {
            break;
        }
        if let Some(status) = p.child.try_wait().unwrap() {
            return Some(status);
        }
        assert!(
            Instant::now() < deadline,
            "no progress past {before}; log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(moments.next_ms(0, high_ms))).await;
    if let Some(status) = p.child.try_wait().unwrap() {
        return Some(status);
    }
    p.signal("KILL");
    p.wait_exit(Duration::from_secs(10));
    None
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
    assert_eq!(
        crate::recorder::tick_rows(&schema).await,
        (n, n),
        "rows at each kill: {at_kill:?}"
    );
    assert_every_tick_once(&objects(&store).await, n);
    eprintln!(
        "crash run: {n} ticks, {kills} SIGKILLs (rows at each: {at_kill:?}), exactly once in \
         PostgreSQL and Parquet after {:.1}s",
        elapsed.as_secs_f64()
    );
    drop(last);
    drop_schema(&schema).await;
}

/// Every sent record's (partition, offset) in exactly one object, and nothing else there.
fn assert_each_record_once(
    objects: &BTreeMap<String, Vec<RecordBatch>>,
    sent: &[crate::backfill::Sent],
) {
    let mut seen: BTreeMap<(i32, i64), Vec<&str>> = BTreeMap::new();
    for (key, batches) in objects {
        for b in batches {
            let partition = b
                .column_by_name("kafka_partition")
                .unwrap()
                .as_primitive::<Int32Type>();
            let offset = b
                .column_by_name("kafka_offset")
                .unwrap()
                .as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                seen.entry((partition.value(i), offset.value(i)))
                    .or_default()
                    .push(key);
            }
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, keys)| keys.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} records in two objects, first {:?}",
        twice.len(),
        twice.first()
    );
    let want: Vec<(i32, i64)> = {
        let mut w: Vec<_> = sent.iter().map(|s| (s.partition, s.offset)).collect();
        w.sort();
        w
    };
    let got: Vec<(i32, i64)> = seen.keys().copied().collect();
    let missing = want.iter().filter(|k| !seen.contains_key(k)).count();
    assert_eq!(
        got.len(),
        want.len(),
        "{missing} of {} records missing",
        want.len()
    );
    assert_eq!(got, want, "records archived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_run_killed_again_and_again_archives_every_record_exactly_once() {
    let n = setting("ACTORD_CRASH_MESSAGES", 60_000) as i64;
    let kills = setting("ACTORD_CRASH_KILLS", 3);
    let mut moments = Moments(setting("ACTORD_CRASH_SEED", 7));
    let s = crate::backfill::Setup::new();
    let mut sent = Vec::new();
    let mut from = 0;
    while from < n {
        let chunk = (n - from).min(5_000);
        sent.extend(
            crate::backfill::produce(
                s.bootstrap(),
                &s.topic,
                &crate::backfill::readings(from, chunk, "2025-11-17T01:00:00Z"),
            )
            .await,
        );
        from += chunk;
    }
    let store = s.store();
    let started = Instant::now();
    let mut at_kill = Vec::new();
    let mut completed_early = 0;
    for _ in 0..kills {
        let mut p = s.start(&["--mode", "incremental"], 400);
        // Anywhere from before the first object to well into the run.
        tokio::time::sleep(Duration::from_millis(moments.next_ms(300, 3000))).await;
        if let Some(status) = p.child.try_wait().unwrap() {
            // The run finished before its kill: nothing is left to kill it in.
            assert!(status.success(), "{}", p.log());
            completed_early += 1;
            break;
        }
        p.signal("KILL");
        p.wait_exit(Duration::from_secs(10));
        at_kill.push(crate::backfill::objects(&store).await.len());
    }
    // Reruns until one completes: the last resumes from the last commit.
    let out = s.ok(&["--mode", "incremental"], 700).await;
    assert!(out.starts_with("incremental: "), "{out}");
    let elapsed = started.elapsed();
    assert_each_record_once(&crate::backfill::objects(&store).await, &sent);
    assert_eq!(
        crate::kafka::committed(
            s.bootstrap(),
            &s.group,
            &s.topic,
            crate::backfill::PARTITIONS
        ),
        crate::kafka::end_offsets(s.bootstrap(), &s.topic, crate::backfill::PARTITIONS)
    );
    eprintln!(
        "crash run: backfill of {n} readings, {} SIGKILLs (objects at each: {at_kill:?}), {} run \
         finished before its kill, every record in exactly one object after {:.1}s",
        at_kill.len(),
        completed_early,
        elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn commerce_killed_again_and_again_counts_every_order_exactly_once() {
    use crate::commerce::{counters, order, product, scalar, shop_config, t0, user};
    let n = setting("ACTORD_CRASH_MESSAGES", 30_000) as i64;
    let kills = setting("ACTORD_CRASH_KILLS", 3);
    let mut moments = Moments(setting("ACTORD_CRASH_SEED", 7));
    let broker = MockBroker::start(&[
        ("users", 3),
        ("products", 3),
        ("orders", 6),
        ("users-dlq", 1),
        ("products-dlq", 1),
        ("orders-dlq", 1),
    ]);
    let bootstrap = broker.bootstrap().to_owned();
    let schema = crate::commerce::fresh_schema();
    let at = t0();
    let (users, products) = (40, 15);
    crate::recorder::produce(
        &bootstrap,
        "users",
        (0..users).map(|i| user(&format!("U{i}"), at)).collect(),
    )
    .await;
    crate::recorder::produce(
        &bootstrap,
        "products",
        (0..products)
            .map(|i| product(&format!("P{i}"), 1_000 + i, at))
            .collect(),
    )
    .await;
    let mut from = 0;
    while from < n {
        let end = (from + 50_000).min(n);
        let orders: Vec<String> = (from..end)
            .map(|i| {
                order(
                    &format!("O{i}"),
                    &format!("U{}", i % users),
                    &format!("P{}", i % products),
                    1,
                    1_000 + i % products,
                    at + chrono::Duration::seconds(i),
                )
            })
            .collect();
        crate::recorder::produce(&bootstrap, "orders", orders).await;
        from = end;
    }
    let toml = shop_config(&schema, "batch_size = 100");
    let env = [("KAFKA_BROKERS", bootstrap.as_str())];
    let started = Instant::now();
    let mut at_kill = Vec::new();
    for _ in 0..kills {
        let mut p = Process::start(&toml, &[], &env);
        wait_ready(&p.base).await;
        let before = at_kill.last().copied().unwrap_or(0);
        kill_mid_run(&mut p, &mut moments, 500, before, n, || async {
            counters(&schema).await.0
        })
        .await;
        at_kill.push(counters(&schema).await.0);
    }
    let last = Process::start(&toml, &[], &env);
    let deadline = Instant::now() + Duration::from_secs(600);
    while counters(&schema).await.0 < n {
        assert!(
            Instant::now() < deadline,
            "{:?} of {n} after {kills} kills (orders at each: {at_kill:?}); log:\n{}",
            counters(&schema).await,
            last.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    // A moment more: nothing beyond n may arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = format!("\"{schema}\"");
    assert_eq!(
        counters(&schema).await,
        (n, n, 0),
        "orders at each kill: {at_kill:?}"
    );
    assert_eq!(
        scalar(&format!("SELECT count(DISTINCT order_id) FROM {s}.orders")).await,
        n
    );
    assert_eq!(
        scalar(&format!(
            "SELECT count(*) FROM {s}.products p WHERE p.order_count IS DISTINCT FROM \
             (SELECT count(*) FROM {s}.orders o WHERE o.product_id = p.product_id)"
        ))
        .await,
        0,
        "products whose order_count is not the number of their orders"
    );
    assert_eq!(
        scalar(&format!("SELECT count(*) FROM {s}.products")).await,
        products
    );
    eprintln!(
        "crash run: commerce, {n} orders, {kills} SIGKILLs (orders at each: {at_kill:?}), every \
         order exactly once and every product's order_count exact after {:.1}s",
        elapsed.as_secs_f64()
    );
    drop(last);
    drop(broker);
    crate::recorder::drop_schema(&schema).await;
    crate::commerce::drop_keys(&format!("{schema}:")).await;
}
