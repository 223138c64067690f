//! Overload: ticks arrive for a minute at more than ten times the rate the recorder's sink
//! manages (PostgreSQL behind a throttling proxy). The recorder runs at its shipped settings
//! (batches, `max_buffer_size`, the Kafka source's in-flight bytes and librdkafka prefetch);
//! actord's peak RSS stays below the bound README states (idle RSS plus the in-flight bytes,
//! librdkafka's prefetch queue and one fetch response on top, as held in memory, plus a quarter
//! for the allocator), the consumer's pauses show in `/metrics`, and once the sink is fast
//! again every tick lands exactly once.
//!
//! `cargo test --test it overload:: -- --nocapture` (with `ACTORD_OVERLOAD_TRACE=1` it prints
//! each second's RSS, records and bytes in flight, paused partitions and rows;
//! `ACTORD_OVERLOAD_MAX_BUFFER_SIZE=N` runs it with another `max_buffer_size` than the
//! recorder's 100,000).

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::kafka::end_offsets;
use crate::recorder::{count, drop_schema, fresh_schema, recorder_config, tick, BASE};
use crate::support::{get, wait_ready, MockBroker, Process, Proxy, S3Server};

use actord::sources::kafka::consumer::{
    FETCH_MAX_BYTES, PREFETCHED_RECORD_OVERHEAD, PREFETCH_RECORDS,
};

const MIB: u64 = 1 << 20;
/// The Kafka source's in-flight bound per consumer (`max_in_flight_bytes`), which counts each
/// record with what it holds in memory in flight.
const IN_FLIGHT_BYTES: u64 = 64 * MIB;
/// A tick as it travels, lz4-compressed in its batch: librdkafka's statistics counted 52.8 MB
/// received for 1,187,456 ticks fetched.
const TICK_COMPRESSED: u64 = 45;
/// What librdkafka holds for a prefetched tick: its queue operation, and its share of the
/// decompressed batch, whose buffer is four times the compressed batch (a tick decompresses to
/// about 119 bytes, less than that).
const PREFETCHED_TICK: u64 = PREFETCHED_RECORD_OVERHEAD as u64 + 4 * TICK_COMPRESSED;
/// librdkafka's prefetch queue per consumer: it stops at `queued.min.messages` records
/// (10,000 ticks are far below its `queued.max.messages.kbytes`).
const PREFETCH: u64 = PREFETCH_RECORDS as u64 * PREFETCHED_TICK;
/// One fetch response on top of a full queue: `fetch.max.bytes` of compressed ticks, each held
/// as a prefetched tick once it arrives.
const FETCH: u64 = FETCH_MAX_BYTES as u64 / TICK_COMPRESSED * PREFETCHED_TICK;
const PARTITIONS: i32 = 24;
/// Allocator slack: a quarter of the in-flight, prefetch and fetch terms.
const SLACK_DIVISOR: u64 = 4;
/// How long the input outruns the sink.
const OVERLOAD: Duration = Duration::from_secs(60);
/// Ticks a second during the overload.
const RATE: u64 = 12_000;
/// The throttled PostgreSQL connection, bytes a second each way.
const SLOW: u64 = 25_000;

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The sum of a metric's series whose line contains `filter`.
fn metric(metrics: &str, name: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Produces ticks `0..n` at `rate` a second (lz4-compressed, as a market feed sends them), a
/// tenth of a second's worth at a time.
fn produce_at(bootstrap: &str, rate: u64, n: i64) -> tokio::task::JoinHandle<()> {
    let bootstrap = bootstrap.to_owned();
    tokio::spawn(async move {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("compression.type", "lz4")
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        let step = (rate / 10) as i64;
        let started = tokio::time::Instant::now();
        for (k, start) in (0..n).step_by(step as usize).enumerate() {
            let mut waits = Vec::new();
            for i in start..(start + step).min(n) {
                let (payload, key) = (tick(i, BASE), (i % 97).to_string());
                let record = FutureRecord::to("market.tick").payload(&payload).key(&key);
                waits.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            }
            for w in waits {
                w.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
            tokio::time::sleep_until(started + Duration::from_millis(100 * (k as u64 + 1))).await;
        }
    })
}

/// Waits until the ticks `0..n` are rows, at most `within`, then checks each is exactly one row
/// and none was dead-lettered; returns how long they took.
async fn drain_into_rows(
    schema: &str,
    bootstrap: &str,
    n: i64,
    within: Duration,
    log: impl Fn() -> String,
) -> Duration {
    let drain = Instant::now();
    loop {
        let rows = count(schema, "tick_data").await;
        if rows >= n {
            break;
        }
        assert!(
            drain.elapsed() < within,
            "{rows} rows of {n}; actord log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let drained_in = drain.elapsed();
    // Anything written twice would land now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        crate::recorder::tick_rows(schema).await,
        (n, n),
        "exactly one row per tick"
    );
    let dead: i64 = end_offsets(bootstrap, "market.tick-dlq", 1).values().sum();
    assert_eq!(dead, 0, "no tick dead-lettered");
    drained_in
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_sink_rate_stays_under_the_memory_bound_and_loses_nothing() {
    let broker = MockBroker::start(&[
        ("market.tick", PARTITIONS),
        ("market.orderbook", 1),
        ("market.tick-dlq", 1),
        ("market.orderbook-dlq", 1),
    ]);
    let proxy = Proxy::start_throttled("127.0.0.1:5432", SLOW).await;
    let schema = fresh_schema();
    // One consumer, one path (PostgreSQL only): the bound's multiplier is 1.
    let (consumers, paths) = (1u64, 1u64);
    // The recorder's own batch size and age, not the quicker ones of the other tests.
    let tuned = recorder_config(&schema, proxy.port, "consumers = 1");
    let toml = tuned.replace("batch_size = 200\nbatch_timeout = \"200ms\"\n", "");
    assert_ne!(toml, tuned);
    // The recorder's own (100,000) unless asked otherwise.
    let max_buffer_size = match std::env::var("ACTORD_OVERLOAD_MAX_BUFFER_SIZE") {
        Ok(n) if n != "default" => Some(n),
        _ => None,
    };
    let mut env = vec![
        ("KAFKA_BROKERS", broker.bootstrap()),
        ("S3_WRITE_ENABLED", "false"),
    ];
    if let Some(n) = &max_buffer_size {
        env.push(("MAX_BUFFER_SIZE", n));
    }
    let p = Process::start(&toml, &[], &env);
    wait_ready(&p.base).await;
    let pid = p.child.id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle, _) = rss(pid);
    let in_flight = consumers * paths * (IN_FLIGHT_BYTES + PREFETCH + FETCH);
    let bound = idle + in_flight + in_flight / SLACK_DIVISOR;

    let n = (RATE * OVERLOAD.as_secs()) as i64;
    let producer = produce_at(broker.bootstrap(), RATE, n);

    // Sample RSS and the pause metrics every second while the input outruns the sink.
    let started = Instant::now();
    let (mut peak_rss, mut paused_max, mut samples) = (0u64, 0f64, 0);
    while !producer.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (now, hwm) = rss(pid);
        peak_rss = peak_rss.max(now).max(hwm);
        let scrape = get(&p.base, "/metrics").await.1;
        paused_max = paused_max.max(metric(
            &scrape,
            "actord_kafka_paused_partitions",
            "timescale",
        ));
        samples += 1;
        if std::env::var_os("ACTORD_OVERLOAD_TRACE").is_some() {
            eprintln!(
                "{samples:>3} s: RSS {:.1} MiB, in flight {} ({:.1} MiB), paused {}, rows {}",
                mib(now),
                metric(&scrape, "actord_kafka_in_flight_records", "timescale"),
                metric(&scrape, "actord_kafka_in_flight_bytes", "timescale") / MIB as f64,
                metric(&scrape, "actord_kafka_paused_partitions", "timescale"),
                count(&schema, "tick_data").await
            );
        }
        assert!(
            peak_rss < bound,
            "RSS {:.1} MiB at {samples} s reached the bound {:.1} MiB (idle {:.1} MiB)",
            mib(peak_rss),
            mib(bound),
            mib(idle)
        );
    }
    producer.await.unwrap();
    let produced_in = started.elapsed();
    let rows_during = count(&schema, "tick_data").await;
    let scrape = get(&p.base, "/metrics").await.1;
    let pauses = metric(
        &scrape,
        "actord_kafka_pauses_total",
        "reason=\"backpressure\"",
    );
    let (_, hwm) = rss(pid);
    peak_rss = peak_rss.max(hwm);

    // The sink at full speed again: the backlog drains, every tick exactly once.
    proxy.set_rate(u64::MAX / 2);
    let drained_in = drain_into_rows(
        &schema,
        broker.bootstrap(),
        n,
        Duration::from_secs(300),
        || p.log(),
    )
    .await;
    let (_, hwm) = rss(pid);
    peak_rss = peak_rss.max(hwm);

    assert!(
        paused_max > 0.0 && pauses >= 1.0,
        "the consumer never showed paused (paused partitions at most {paused_max}, \
         {pauses} backpressure pauses)"
    );
    assert!(
        peak_rss < bound,
        "peak RSS {:.1} MiB, bound {:.1} MiB (idle {:.1} MiB)",
        mib(peak_rss),
        mib(bound),
        mib(idle)
    );
    let sink_rate = rows_during as f64 / produced_in.as_secs_f64();
    eprintln!(
        "overload (max_buffer_size {}): {n} ticks at {:.0}/s for {:.0}s, the throttled sink at {sink_rate:.0} rows/s \
         ({:.1}x); idle RSS {:.1} MiB, peak RSS (VmHWM) {:.1} MiB, bound {:.1} MiB = idle + \
         {consumers} consumer x {paths} path x ({:.0} in flight + {:.1} prefetch + {:.1} fetch) \
         MiB + 1/{SLACK_DIVISOR} slack; {pauses} backpressure pauses, up to {paused_max} \
         partitions paused; drained in {:.1}s, every tick exactly once, 0 dead letters",
        max_buffer_size.as_deref().unwrap_or("default"),
        n as f64 / produced_in.as_secs_f64(),
        produced_in.as_secs_f64(),
        n as f64 / produced_in.as_secs_f64() / sink_rate.max(1.0),
        mib(idle),
        mib(peak_rss),
        mib(bound),
        mib(IN_FLIGHT_BYTES),
        mib(PREFETCH),
        mib(FETCH),
        drained_in.as_secs_f64()
    );
    drop(p);
    drop_schema(&schema).await;
}

/// An operator's own `max_in_flight_bytes` (here through its environment variable) is the bound
/// the consumer keeps: with the database unreachable the bytes in flight stop at it, passing it
/// by one record at most, far below `max_buffer_size`; the partitions pause; once the database
/// is back every tick lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_in_flight_bytes_bound_is_the_one_the_consumer_keeps() {
    const BOUND: u64 = 2 * MIB;
    let broker = MockBroker::start(&[
        ("market.tick", 4),
        ("market.orderbook", 1),
        ("market.tick-dlq", 1),
        ("market.orderbook-dlq", 1),
    ]);
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let schema = fresh_schema();
    let toml = recorder_config(&schema, proxy.port, "consumers = 1");
    let p = Process::start(
        &toml,
        &[],
        &[
            ("KAFKA_BROKERS", broker.bootstrap()),
            ("S3_WRITE_ENABLED", "false"),
            ("ACTORD_RECORDER_MAX_IN_FLIGHT_BYTES", "2MiB"),
        ],
    );
    wait_ready(&p.base).await;
    // The consumer starts its partitions from the offsets in the database: it runs before the
    // database goes away.
    let (first, n) = (1_000i64, 40_000i64);
    let produce = |range: std::ops::Range<i64>| {
        crate::recorder::produce_keyed(
            broker.bootstrap(),
            "market.tick",
            range.map(|i| tick(i, BASE)).collect(),
            |i| (i % 97).to_string(),
        )
    };
    produce(0..first).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&schema, "tick_data").await < first {
        assert!(Instant::now() < deadline, "log:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.down();
    produce(first..n).await;
    // Until the consumer has stopped taking more: partitions paused, nothing new in flight.
    let (mut max_bytes, mut max_records, mut paused, mut steady) = (0f64, 0f64, 0f64, 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = -1f64;
    while steady < 5 {
        assert!(
            Instant::now() < deadline,
            "the consumer did not settle (in flight {max_records} records, {max_bytes} bytes, \
             paused {paused}); log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let scrape = get(&p.base, "/metrics").await.1;
        let bytes = metric(&scrape, "actord_kafka_in_flight_bytes", "timescale");
        let records = metric(&scrape, "actord_kafka_in_flight_records", "timescale");
        paused = metric(&scrape, "actord_kafka_paused_partitions", "timescale");
        max_bytes = max_bytes.max(bytes);
        max_records = max_records.max(records);
        steady = if paused > 0.0 && records == last {
            steady + 1
        } else {
            0
        };
        last = records;
    }
    // One tick's charge, at most: its payload (about 110 bytes), key, fixed part and the
    // per-record overhead.
    let one_record = (2048 + actord_actors::record::IN_FLIGHT_OVERHEAD) as f64;
    assert!(
        max_bytes <= BOUND as f64 + one_record,
        "{max_bytes} bytes in flight, bound {BOUND} + one record ({one_record})"
    );
    assert!(
        max_bytes > BOUND as f64 - 4.0 * one_record,
        "the bytes bound is what stopped the consumer: {max_bytes} of {BOUND}"
    );
    assert!(
        max_records < (n / 2) as f64,
        "{max_records} records in flight of {n}: the bytes bound holds first"
    );
    proxy.up();
    drain_into_rows(
        &schema,
        broker.bootstrap(),
        n,
        Duration::from_secs(120),
        || p.log(),
    )
    .await;
    eprintln!(
        "configured in-flight bound {} MiB: at most {max_bytes:.0} bytes and {max_records} ticks \
         in flight with the database away, {paused} partitions paused; every tick exactly once",
        BOUND / MIB
    );
    drop(p);
    drop_schema(&schema).await;
}

/// The Parquet path as the slow sink: the object store behind a throttling proxy, PostgreSQL at
/// full speed. The encoder's columns and the objects being uploaded come on top of the records
/// in flight; the peak RSS still stays below the formula's bound for the recorder's two paths,
/// and once the store is fast again every tick is in exactly one object and one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parquet_path_ten_times_too_slow_stays_under_the_memory_bound() {
    const S3_RATE: u64 = 5_000;
    const S3_OVERLOAD: Duration = Duration::from_secs(30);
    let broker = MockBroker::start(&[
        ("market.tick", PARTITIONS),
        ("market.orderbook", 1),
        ("market.tick-dlq", 1),
        ("market.orderbook-dlq", 1),
    ]);
    let s3 = S3Server::start("overload");
    // A few hundred ticks a second in Parquet objects of a couple of thousand ticks (about 20
    // bytes a tick), over the uploads' connections, each paced on its own.
    let s3_proxy = Proxy::start_throttled(&format!("127.0.0.1:{}", s3.port), 2_000).await;
    let schema = fresh_schema();
    let (consumers, paths) = (1u64, 2u64);
    let tuned = recorder_config(&schema, 5432, "consumers = 1");
    let toml = tuned.replace("batch_size = 200\nbatch_timeout = \"200ms\"\n", "");
    assert_ne!(toml, tuned);
    // The recorder's own S3 batch size; the seed's hour of batch timeout would hold the last
    // partial batch back long after the overload.
    let mut env = crate::object_group::environment(&s3, &s3_proxy, &broker, 0);
    env.retain(|(k, _)| !k.starts_with("S3_BATCH_"));
    env.push(("S3_BATCH_TIMEOUT_SEC", "5".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let p = Process::start(&toml, &[], &env);
    wait_ready(&p.base).await;
    let pid = p.child.id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle, _) = rss(pid);
    let in_flight = consumers * paths * (IN_FLIGHT_BYTES + PREFETCH + FETCH);
    let bound = idle + in_flight + in_flight / SLACK_DIVISOR;

    let n = (S3_RATE * S3_OVERLOAD.as_secs()) as i64;
    let producer = produce_at(broker.bootstrap(), S3_RATE, n);
    let (mut peak_rss, mut paused_max, mut in_flight_max) = (0u64, 0f64, 0f64);
    while !producer.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (now, hwm) = rss(pid);
        peak_rss = peak_rss.max(now).max(hwm);
        let scrape = get(&p.base, "/metrics").await.1;
        paused_max = paused_max.max(metric(&scrape, "actord_kafka_paused_partitions", "/s3/"));
        in_flight_max = in_flight_max.max(metric(&scrape, "actord_kafka_in_flight_bytes", "/s3/"));
        assert!(
            peak_rss < bound,
            "RSS {:.1} MiB reached the bound {:.1} MiB (idle {:.1} MiB)",
            mib(peak_rss),
            mib(bound),
            mib(idle)
        );
    }
    producer.await.unwrap();
    let store = s3.client();
    let in_objects = crate::object_group::distinct(&crate::recorder_s3::objects(&store).await);
    let (_, hwm) = rss(pid);
    peak_rss = peak_rss.max(hwm);

    s3_proxy.set_rate(u64::MAX / 2);
    let drain = Instant::now();
    let objects = crate::object_group::assert_exactly_once(&s3, &schema, n, || p.log()).await;
    let drained_in = drain.elapsed();
    let dead: i64 = end_offsets(broker.bootstrap(), "market.tick-dlq", 1)
        .values()
        .sum();
    assert_eq!(dead, 0, "no tick dead-lettered");
    assert!(
        paused_max > 0.0,
        "the Parquet path's consumer never paused ({} ticks in objects during the overload)",
        in_objects
    );
    assert!(
        in_flight_max >= 0.9 * IN_FLIGHT_BYTES as f64,
        "the Parquet path's in-flight bytes reached only {:.1} MiB of {:.0}",
        in_flight_max / MIB as f64,
        mib(IN_FLIGHT_BYTES)
    );
    assert!(
        (in_objects as i64) < n / 5,
        "the store was not the slow sink: {in_objects} of {n} ticks in objects during the overload"
    );
    assert!(
        peak_rss < bound,
        "peak RSS {:.1} MiB, bound {:.1} MiB",
        mib(peak_rss),
        mib(bound)
    );
    eprintln!(
        "Parquet overload: {n} ticks at {S3_RATE}/s for {}s, {in_objects} in objects meanwhile; \
         idle RSS {:.1} MiB, peak (VmHWM) {:.1} MiB, bound {:.1} MiB = idle + {consumers} \
         consumer x {paths} paths x ({:.0} + {:.1} + {:.1}) MiB + 1/{SLACK_DIVISOR}; the Parquet \
         path's in-flight bytes at most {:.1} MiB, up to {paused_max} partitions paused; \
         drained in {:.1}s into {objects} object generations, every tick exactly once",
        S3_OVERLOAD.as_secs(),
        mib(idle),
        mib(peak_rss),
        mib(bound),
        mib(IN_FLIGHT_BYTES),
        mib(PREFETCH),
        mib(FETCH),
        in_flight_max / MIB as f64,
        drained_in.as_secs_f64()
    );
    drop(p);
    drop_schema(&schema).await;
}
