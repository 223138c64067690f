//! Crash runs: a pipeline killed with SIGKILL at random (seeded) moments while it drains a
//! backlog, restarted each time, on a broker that expires killed members.
//! - the recorder (`actord embedded-broker`), both sinks behind throttling proxies so that each
//!   kill lands while rows and objects are being written: every tick exactly one row in
//!   PostgreSQL and in exactly one Parquet object;
//! - ftp-sync (`actord embedded-broker`, two pyftpdlib servers, the destination's data
//!   connections throttled so that large files are in transit when a kill lands): every job's
//!   file byte-exact under its final name, every job committed, none dead-lettered;
//! - a backfill run (`actord backfill --mode incremental`), rerun until one completes: every
//!   record in exactly one object, by the objects' `kafka_partition` / `kafka_offset`;
//! - commerce (`actord embedded-broker`): every order exactly once in `orders`, and each
//!   product's `order_count` the number of its orders;
//! - adaptive-card's workers (`adaptive_card`: Redis Streams, no broker), both stages slowed
//!   (a T2A stand-in answering late, PostgreSQL behind a throttling proxy): every sales-org
//!   job's files byte-exact, every user's cards once, every job counted once in its run's drain
//!   counters, nothing dead-lettered or pending.
//!
//! CI runs the short forms. The long forms of the reliability suite:
//! `ACTORD_CRASH_MESSAGES=1000000 ACTORD_CRASH_KILLS=20 cargo test --test it crash::<name> -- --nocapture`
//! (`ACTORD_CRASH_SEED` picks other kill moments; for ftp-sync the messages are jobs, one file
//! each; for adaptive-card they are user jobs, with a tenth as many sales-org jobs; the backfill
//! run gives its topic a partition per 30,000 readings, its in-process broker keeping 5 MiB a
//! partition).

mod adaptive_card;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::RecordBatch;
use futures::TryStreamExt;
use object_store::ObjectStore;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::recorder::{count, drop_schema, fresh_schema, recorder_config, tick_every, BASE};
use crate::recorder_s3::{assert_every_tick_once, env_of, objects, FooterRows};
use crate::support::{wait_ready, FtpServer, MockBroker, Process, Proxy, S3Server};

pub(crate) fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Publishes the ticks of `range`, 10 ms apart (a million span under three hours, so objects
/// are cut by batch rather than by hour), with lz4 (the mock cluster keeps 5 MiB per
/// partition), checking every delivery report.
pub(crate) async fn publish(bootstrap: &str, range: std::ops::Range<i64>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "5000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut start = range.start;
    while start < range.end {
        let end = (start + 50_000).min(range.end);
        let mut waits = Vec::new();
        for i in start..end {
            let payload = tick_every(i, BASE, 10);
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
pub(crate) struct Moments(pub(crate) u64);

impl Moments {
    pub(crate) fn next_ms(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (self.0 >> 33) % (high - low)
    }
}

/// Waits until `landed` holds (this run has written something, or nothing is left to write),
/// then a random moment more, then kills `p` with SIGKILL: every kill lands mid-run. Returns
/// the exit status instead when the process finished on its own first.
async fn kill_mid_run<F, Fut>(
    p: &mut Process,
    moments: &mut Moments,
    high_ms: u64,
    landed: F,
) -> Option<std::process::ExitStatus>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    while !landed().await {
        if let Some(status) = p.child.try_wait().unwrap() {
            return Some(status);
        }
        assert!(
            Instant::now() < deadline,
            "this run wrote nothing; log:\n{}",
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

/// Keys of the Parquet objects under `market-data/`.
async fn parquet_keys(store: &Arc<dyn ObjectStore>) -> HashSet<String> {
    let listing: Vec<object_store::ObjectMeta> = store
        .list(Some(&"market-data".into()))
        .try_collect()
        .await
        .unwrap_or_default();
    listing
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|k| k.ends_with(".parquet"))
        .collect()
}

/// Bytes a tick costs on the wire to PostgreSQL: a binary COPY row with its share of the batch's
/// statements.
pub(crate) const PG_BYTES_PER_TICK: u64 = 80;
/// Bytes a tick costs on the wire to S3, measured with objects of 125 to 800 ticks: a Parquet
/// row with its share of an object's requests (the upload, the ownership ledger, listings).
pub(crate) const S3_BYTES_PER_TICK: u64 = 60;
/// A proxy rate that holds nothing back.
pub(crate) const UNTHROTTLED: u64 = u64::MAX / 2;

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
    // Both sinks behind throttling proxies while the kills happen, each slow enough that it
    // would take 20 s per kill and more to write the whole backlog (each connection is paced on
    // its own). A killed run then writes a small share of it
    // even when one path's group assigns its partitions a session timeout (10 s) before the
    // other's: every kill lands while both paths are writing, and most of the backlog is left
    // for the last run, unthrottled.
    let drain = 20 * (kills + 1);
    let pg_rate = (n as u64 * PG_BYTES_PER_TICK / drain / 2).max(4_096);
    // The S3 path uploads the objects of a batch four at a time, each on its own connection,
    // though not all four all the time (the ownership ledger's requests come one by one).
    let s3_rate = (n as u64 * S3_BYTES_PER_TICK / drain / 2).max(4_096);
    let pg_proxy = Proxy::start_throttled("127.0.0.1:5432", pg_rate).await;
    let s3_proxy = Proxy::start_throttled(&format!("127.0.0.1:{}", s3.port), s3_rate).await;
    let schema = fresh_schema();
    let toml = recorder_config(&schema, pg_proxy.port, "");
    // A batch becomes an object per partition (24) and hour: batches of a tenth of the backlog
    // (20,000 at most), so that objects hold 125 ticks in the short form and about 800 in the
    // long one, and the objects' own requests do not dominate the S3 path.
    let batch = (n / 10).clamp(2_000, 20_000);
    // A kill comes up to half a batch's upload time (throttled) after both paths wrote: some
    // runs complete and commit a batch of objects before their kill, others are cut inside one.
    let window_ms = (batch as u64 * drain * 500 / n as u64).clamp(1_000, 10_000);
    let env = crate::object_group::environment(&s3, &s3_proxy, &broker, batch);
    publish(broker.bootstrap(), 0..n).await;
    crate::kafka::assert_holds_all(broker.bootstrap(), "market.tick", 24, n);
    let store = s3.client();
    let mut footers = FooterRows::default();
    let started = Instant::now();

    // (rows, objects, ticks in objects) at each kill.
    let mut at_kill: Vec<(i64, usize, u64)> = Vec::new();
    for k in 1..=kills {
        let rows_before = count(&schema, "tick_data").await;
        let keys_before = parquet_keys(&store).await;
        let mut p = Process::start(&toml, &[], &env_of(&env));
        wait_ready(&p.base).await;
        // Both paths of this run have written: a row more, and an object of its own (a replay
        // writes under a new generation, so its objects have new keys).
        let ready = Instant::now();
        let first_row = std::cell::Cell::new(None);
        let first_object = std::cell::Cell::new(None);
        let landed = || async {
            let rows = count(&schema, "tick_data").await;
            if rows > rows_before && first_row.get().is_none() {
                first_row.set(Some(ready.elapsed()));
            }
            if first_object.get().is_none()
                && parquet_keys(&store)
                    .await
                    .iter()
                    .any(|key| !keys_before.contains(key))
            {
                first_object.set(Some(ready.elapsed()));
            }
            rows >= n || (first_row.get().is_some() && first_object.get().is_some())
        };
        let exited = kill_mid_run(&mut p, &mut moments, window_ms, landed).await;
        assert!(
            exited.is_none(),
            "actord exited on its own ({exited:?}); log:\n{}",
            p.log()
        );
        let killed = ready.elapsed();
        // What the killed process had sent still reaches the services through the proxies
        // (as it would from a dead process's socket buffers): the kill's state is once it has.
        let drained = Instant::now() + Duration::from_secs(60);
        while pg_proxy.open_connections() + s3_proxy.open_connections() > 0
            && Instant::now() < drained
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rows = count(&schema, "tick_data").await;
        let (objects, ticks) = footers.count(&store).await;
        let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
        eprintln!(
            "kill {k}: {rows} rows, {objects} objects holding {ticks} ticks (after ready: first \
             row {:.1}s, first object {:.1}s, killed {:.1}s)",
            secs(first_row.get()),
            secs(first_object.get()),
            killed.as_secs_f64()
        );
        at_kill.push((rows, objects, ticks));
    }
    let killed_for = started.elapsed();

    pg_proxy.set_rate(UNTHROTTLED);
    s3_proxy.set_rate(UNTHROTTLED);
    let last = Process::start(&toml, &[], &env_of(&env));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let rows = count(&schema, "tick_data").await;
        let (objects, ticks) = footers.count(&store).await;
        if rows >= n && ticks >= n as u64 {
            break;
        }
        if Instant::now() > deadline {
            let log = last.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{rows} rows and {ticks} ticks in {objects} objects of {n} after {kills} kills \
                 (rows, objects, ticks at each kill: {at_kill:?})\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        crate::recorder::tick_rows(&schema).await,
        (n, n),
        "rows, objects, ticks at each kill: {at_kill:?}"
    );
    let all = objects(&store).await;
    assert_every_tick_once(&all, n);
    // Every kill landed while both paths were writing: neither had nothing yet nor everything.
    for (k, (rows, _, ticks)) in at_kill.iter().enumerate() {
        assert!(
            (1..n).contains(rows) && (1..n as u64).contains(ticks),
            "kill {} did not land mid-write: {rows} rows, {ticks} ticks in objects of {n}",
            k + 1
        );
    }
    eprintln!(
        "crash run: {n} ticks, {kills} SIGKILLs in {:.1}s, PostgreSQL throttled to {pg_rate} \
         and S3 to {s3_rate} bytes/s a connection (rows, objects, ticks in objects at each: \
         {at_kill:?}); exactly once in PostgreSQL and in {} Parquet objects (batches of {batch}) \
         after {:.1}s",
        killed_for.as_secs_f64(),
        all.len(),
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
    let test_started = Instant::now();
    let n = setting("ACTORD_CRASH_MESSAGES", 60_000) as i64;
    let kills = setting("ACTORD_CRASH_KILLS", 3);
    let mut moments = Moments(setting("ACTORD_CRASH_SEED", 7));
    // The embedded broker keeps at most 100,000 records and 5 MiB of a partition (a reading
    // is about 130 bytes): enough partitions that it keeps them all.
    let partitions = ((n / 30_000) as i32).max(crate::backfill::PARTITIONS);
    // Objects are cut by partition and Seoul day, and each batch by partition: the readings
    // span about the short form's 43 Seoul days (60,000 a minute apart) and a batch holds the
    // short form's share of each partition, so that more readings make more objects of the same
    // size rather than more and smaller ones (a minute apart, a million over 33 partitions would
    // be 44 readings a partition and day, and batches of 700 about 21 a partition).
    let step = chrono::TimeDelta::seconds((3_600_000 / n.max(1)).clamp(1, 60));
    let scaled = |batch: u32| batch * partitions as u32 / crate::backfill::PARTITIONS as u32;
    let (killed_batch, last_batch) = (scaled(400), scaled(700));
    let s = crate::backfill::Setup::with_partitions(partitions);
    let mut sent = Vec::new();
    let mut from = 0;
    while from < n {
        let chunk = (n - from).min(5_000);
        sent.extend(
            crate::backfill::produce(
                s.bootstrap(),
                &s.topic,
                &crate::backfill::readings_over(
                    from,
                    chunk,
                    "2025-11-17T01:00:00Z",
                    partitions,
                    step,
                ),
            )
            .await,
        );
        from += chunk;
    }
    crate::kafka::assert_holds_all(s.bootstrap(), &s.topic, partitions, n);
    let store = s.store();
    let started = Instant::now();
    let mut at_kill = Vec::new();
    let mut completed_early = 0;
    for _ in 0..kills {
        let mut p = s.start(&["--mode", "incremental"], killed_batch);
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
        at_kill.push(crate::backfill::object_keys(&store).await.len());
    }
    // Reruns until one completes: the last resumes from the last commit.
    let out = s.ok(&["--mode", "incremental"], last_batch).await;
    assert!(out.starts_with("incremental: "), "{out}");
    let elapsed = started.elapsed();
    let all = crate::backfill::objects(&store).await;
    assert_each_record_once(&all, &sent);
    assert_eq!(
        crate::kafka::committed(s.bootstrap(), &s.group, &s.topic, partitions),
        crate::kafka::end_offsets(s.bootstrap(), &s.topic, partitions)
    );
    eprintln!(
        "crash run: backfill of {n} readings {}s apart over {partitions} partitions (batches of \
         {killed_batch}, the last run {last_batch}), {} SIGKILLs (objects at each: {at_kill:?}), \
         {} run finished before its kill, every record in exactly one of {} objects after {:.1}s \
         ({:.1}s for the test so far)",
        step.num_seconds(),
        at_kill.len(),
        completed_early,
        all.len(),
        elapsed.as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn commerce_killed_again_and_again_counts_every_order_exactly_once() {
    use crate::commerce::{counters, order, product, scalar, shop_config, t0, user};
    let n = setting("ACTORD_CRASH_MESSAGES", 30_000) as i64;
    let kills = setting("ACTORD_CRASH_KILLS", 3);
    let mut moments = Moments(setting("ACTORD_CRASH_SEED", 7));
    // The broker keeps at most 100,000 records and 5 MiB of a partition (an order is about 250
    // bytes): enough partitions that it keeps every order.
    let partitions = ((n / 20_000) as i32).max(6);
    let broker = MockBroker::start(&[
        ("users", 3),
        ("products", 3),
        ("orders", partitions),
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
        // Keyed by order: spread over every partition.
        crate::recorder::produce_keyed(&bootstrap, "orders", orders, |i| {
            format!("O{}", from as usize + i)
        })
        .await;
        from = end;
    }
    crate::kafka::assert_holds_all(&bootstrap, "orders", partitions, n);
    let toml = shop_config(&schema, "batch_size = 100");
    let env = [("KAFKA_BROKERS", bootstrap.as_str())];
    let started = Instant::now();
    let mut at_kill = Vec::new();
    for _ in 0..kills {
        let mut p = Process::start(&toml, &[], &env);
        wait_ready(&p.base).await;
        let before = at_kill.last().copied().unwrap_or(0);
        kill_mid_run(&mut p, &mut moments, 500, || async {
            let now = counters(&schema).await.0;
            now > before || now >= n
        })
        .await;
        at_kill.push(counters(&schema).await.0);
    }
    let last = Process::start(&toml, &[], &env);
    let deadline = Instant::now() + Duration::from_secs((n as u64 / 1_000).max(600));
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

/// Size of file `i` of the ftp-sync crash run: every 20th is 6 MiB, larger than the transfer's
/// pipe (256 KiB) and than loopback socket buffers, the others 1 to 64 KiB.
fn job_size(i: usize) -> usize {
    if i % 20 == 7 {
        6 << 20
    } else {
        1024 + (i * 7919) % (63 * 1024)
    }
}

/// Files under `root` by final name (not a hidden staging `.<name>.<tag>.part`), and the staged
/// uploads.
fn finals_and_staged(root: &std::path::Path) -> (BTreeSet<String>, BTreeSet<String>) {
    crate::ftp_sync::files(root).into_iter().partition(|f| {
        let name = f.rsplit('/').next().unwrap_or(f);
        !(name.starts_with('.') && name.ends_with(".part"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_sync_killed_again_and_again_completes_every_job_exactly_once() {
    use crate::ftp_sync::{content, env_refs, job};
    const TOPIC: &str = "mem-dft-img";
    const PARTITIONS: i32 = 4;
    const GROUP: &str = "etl-worker-group";
    let n = setting("ACTORD_CRASH_MESSAGES", 300) as usize;
    let kills = setting("ACTORD_CRASH_KILLS", 3);
    let mut moments = Moments(setting("ACTORD_CRASH_SEED", 7));
    let broker = MockBroker::start(&[(TOPIC, PARTITIONS), ("mem-dft-img-dlq", 1)]);
    let bootstrap = broker.bootstrap().to_owned();
    let src = FtpServer::start(true);
    // Uploads at 2 MiB/s a connection: a large file is in transit for 3 s.
    let dst = FtpServer::start_throttled(2 << 20);
    let final_name = |i: usize| format!("out/{}/{i}.bin", i % 10);
    for i in 0..n {
        let path = src.root().join(format!("in/{}/{i}.bin", i % 10));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content(job_size(i), i as u8)).unwrap();
    }
    let jobs: Vec<String> = (0..n)
        .map(|i| {
            job(
                &format!("crash-{i}"),
                ("SRC_FTP_SERVER1", &format!("/in/{}/{i}.bin", i % 10)),
                ("DST_FTP_SERVER1", &format!("/{}", final_name(i))),
            )
        })
        .collect();
    crate::recorder::produce(&bootstrap, TOPIC, jobs).await;
    let toml = format!(
        r#"[runtime]
enable = ["ftp-sync"]
cool_down = "1s"
[supervision]
backoff_initial = "100ms"
backoff_max = "2s"
max_restarts = 20
[pipelines.ftp-sync]
topics = ["{TOPIC}"]
group = "{GROUP}"
concurrency = 4
retry_backoff = "200ms"
retry_backoff_max = "1s"
"#
    );
    let mut env = src.env("SRC_FTP_SERVER1");
    env.extend(dst.env("DST_FTP_SERVER1"));
    env.push(("KAFKA_BROKERS".into(), bootstrap.clone()));
    let started = Instant::now();

    // (files in place, uploads cut short) at each kill.
    let mut at_kill: Vec<(usize, usize)> = Vec::new();
    for k in 1..=kills {
        let (before, staged_before) = finals_and_staged(&dst.root());
        let before = before.len();
        let mut p = Process::start(&toml, &[], &env_refs(&env));
        wait_ready(&p.base).await;
        // This run put a file in place that was not there (a replay first rewrites files that
        // are).
        let landed = || async {
            let now = finals_and_staged(&dst.root()).0.len();
            now > before || now >= n
        };
        // Small files land at up to 100 a second: a short moment keeps most jobs for later runs.
        let exited = kill_mid_run(&mut p, &mut moments, 500, landed).await;
        assert!(
            exited.is_none(),
            "actord exited on its own ({exited:?}); log:\n{}",
            p.log()
        );
        let (finals, staged) = finals_and_staged(&dst.root());
        let cut = staged.difference(&staged_before).count();
        eprintln!(
            "kill {k}: {} files in place, {cut} uploads cut short",
            finals.len()
        );
        at_kill.push((finals.len(), cut));
    }

    let last = Process::start(&toml, &[], &env_refs(&env));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = finals_and_staged(&dst.root()).0.len();
        let committed = crate::kafka::committed(&bootstrap, GROUP, TOPIC, PARTITIONS);
        let end = crate::kafka::end_offsets(&bootstrap, TOPIC, PARTITIONS);
        if done >= n && committed == end {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} files, committed {committed:?} of {end:?} after {kills} kills \
             (files, uploads cut at each: {at_kill:?}); log:\n{}",
            last.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    // A moment more: nothing else may arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (finals, staged) = finals_and_staged(&dst.root());
    let want: BTreeSet<String> = (0..n).map(final_name).collect();
    assert_eq!(finals, want, "files in place at the destination");
    for i in 0..n {
        let got = std::fs::read(dst.root().join(final_name(i))).unwrap();
        assert!(
            got == content(job_size(i), i as u8),
            "{} differs from its source ({} bytes of {})",
            final_name(i),
            got.len(),
            job_size(i)
        );
    }
    // What a kill left staged is a hidden name beside the file it was for, never a final name.
    for s in &staged {
        let (dir, name) = s.rsplit_once('/').unwrap();
        let of = name[1..].split(".bin.").next().unwrap();
        assert!(
            want.contains(&format!("{dir}/{of}.bin")),
            "staged upload {s} is not for a job's file"
        );
    }
    let dead: i64 = crate::kafka::end_offsets(&bootstrap, "mem-dft-img-dlq", 1)
        .values()
        .sum();
    assert_eq!(dead, 0, "no job dead-lettered");
    for (k, (done, _)) in at_kill.iter().enumerate() {
        assert!(
            (1..n).contains(done),
            "kill {} did not land mid-run: {done} files of {n} in place",
            k + 1
        );
    }
    // Jobs done again after a kill (a replay from the last commit rewrites the same file): the
    // destination's renames into each final name.
    let log = dst.log();
    let mut renames: BTreeMap<String, usize> = BTreeMap::new();
    for line in log
        .lines()
        .filter(|l| l.contains("RNTO ") && l.ends_with(" 250"))
    {
        let path = line.split("RNTO ").nth(1).unwrap().trim_end_matches(" 250");
        if let Some(name) = want.iter().find(|w| path.ends_with(&format!("/{w}"))) {
            *renames.entry(name.clone()).or_default() += 1;
        }
    }
    let replayed = renames.values().filter(|r| **r > 1).count();
    let large = (0..n).filter(|i| job_size(*i) > 1 << 20).count();
    eprintln!(
        "crash run: ftp-sync, {n} jobs ({large} files of 6 MiB), {kills} SIGKILLs (files in \
         place, uploads cut short at each: {at_kill:?}); every file byte-exact, every job \
         committed, 0 dead letters, {replayed} jobs done again after a kill ({} renames into \
         place in all), {} staged uploads left by the kills, after {:.1}s",
        renames.values().sum::<usize>(),
        staged.len(),
        elapsed.as_secs_f64()
    );
    drop(last);
}
