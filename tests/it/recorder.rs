//! The recorder pipeline, run as the actord binary against real PostgreSQL and Kafka brokers.

mod postgres;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

use crate::kafka::{end_offsets, read_until};
use crate::support::{get, pg, tree, unique, until, wait_ready, Process, Proxy};

/// A recorder-only configuration writing into its own schema.
pub(crate) fn recorder_config(schema: &str, db_port: u16, extra: &str) -> String {
    format!(
        r#"[runtime]
enable = ["recorder"]
cool_down = "1s"
[supervision]
backoff_initial = "100ms"
backoff_max = "2s"
max_restarts = 20
[pipelines.recorder]
batch_size = 200
batch_timeout = "200ms"
db_write_workers = 2
{extra}
[pipelines.recorder.timescale]
host = "127.0.0.1"
port = {db_port}
user = "postgres"
database = "postgres"
schema = "{schema}"
refresh_interval = "1s"
"#
    )
}

pub(crate) fn tick(i: i64, base: i64) -> String {
    tick_every(i, base, 1000)
}

/// Tick `i` at `base + i * step_ms` (ms since the epoch); its volume is `i`.
pub(crate) fn tick_every(i: i64, base: i64, step_ms: i64) -> String {
    json!({
        "symbol": format!("S{:03}", i % 7), "price": 1000.0 + i as f64 / 4.0, "volume": i,
        "change": i as f64 / 8.0, "change_rate": -(i as f64) / 100.0, "timestamp": base + i * step_ms,
    })
    .to_string()
}

pub(crate) fn book(i: i64, base: i64) -> String {
    json!({
        "symbol": format!("S{:03}", i % 7), "timestamp": format!("{}", DateTime::from_timestamp_millis(base + i * 1000).unwrap().to_rfc3339()),
        "bids": [{"price": 999.0, "quantity": i}], "asks": [{"price": 1001.0, "quantity": i + 1}],
    })
    .to_string()
}

pub(crate) async fn produce(bootstrap: &str, topic: &str, payloads: Vec<String>) {
    produce_keyed(bootstrap, topic, payloads, |i| (i % 13).to_string()).await
}

/// [`produce`] with the `i`th payload's key `key(i)`.
pub(crate) async fn produce_keyed(
    bootstrap: &str,
    topic: &str,
    payloads: Vec<String>,
    key: impl Fn(usize) -> String,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut waits = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let key = key(i);
        waits.push(
            producer
                .send_result(FutureRecord::to(topic).payload(p).key(&key))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for w in waits {
        w.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

pub(crate) async fn count(schema: &str, table: &str) -> i64 {
    pg().await
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".{table}"), &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

/// Rows in the schema's tick table and the distinct ticks among them (each tick carries its own
/// volume), on `client`'s database.
pub(crate) async fn tick_rows_on(client: &tokio_postgres::Client, schema: &str) -> (i64, i64) {
    let row = client
        .query_one(
            &format!("SELECT count(*), count(DISTINCT volume) FROM \"{schema}\".tick_data"),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// [`tick_rows_on`] the machine's PostgreSQL.
pub(crate) async fn tick_rows(schema: &str) -> (i64, i64) {
    tick_rows_on(&pg().await, schema).await
}

pub(crate) async fn drop_schema(schema: &str) {
    let _ = pg()
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
}

/// The first tick's time in every test (2025-11-19T16:12:34Z), one second apart.
pub(crate) const BASE: i64 = 1_763_568_754_000;

/// A fresh schema name for one test.
pub(crate) fn fresh_schema() -> String {
    unique("rec").replace('-', "_")
}

/// Starts actord with the recorder on the embedded broker, ready; returns it and the broker.
async fn start_recorder(schema: &str, db_port: u16) -> (Process, String) {
    let p = Process::start(&recorder_config(schema, db_port, ""), &[], &[]);
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    (p, bootstrap)
}

pub(crate) async fn bootstrap_of(p: &Process) -> String {
    let info: serde_json::Value = serde_json::from_str(&get(&p.base, "/api/info").await.1).unwrap();
    info["kafka"]["bootstrap"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn ticks_and_order_books_land_once_field_by_field() {
    let schema = fresh_schema();
    let (p, bootstrap) = start_recorder(&schema, 5432).await;
    let base = BASE;
    produce(
        &bootstrap,
        "market.tick",
        (0..500).map(|i| tick(i, base)).collect(),
    )
    .await;
    produce(
        &bootstrap,
        "market.orderbook",
        (0..200).map(|i| book(i, base)).collect(),
    )
    .await;
    until(
        Duration::from_secs(60),
        "500 ticks and 200 order books",
        || async {
            count(&schema, "tick_data").await == 500 && count(&schema, "orderbook").await == 200
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&schema, "tick_data").await, 500);
    assert_eq!(count(&schema, "orderbook").await, 200);

    let db = pg().await;
    let rows = db
        .query(&format!("SELECT time, symbol, price, volume, change, change_rate FROM \"{schema}\".tick_data ORDER BY volume"), &[])
        .await
        .unwrap();
    for (i, row) in rows.iter().enumerate() {
        let i = i as i64;
        let time: DateTime<Utc> = row.get(0);
        assert_eq!(time.timestamp_millis(), base + i * 1000);
        assert_eq!(row.get::<_, String>(1), format!("S{:03}", i % 7));
        assert_eq!(row.get::<_, f64>(2), 1000.0 + i as f64 / 4.0);
        assert_eq!(row.get::<_, i64>(3), i);
        assert_eq!(row.get::<_, f64>(4), i as f64 / 8.0);
        assert_eq!(row.get::<_, f64>(5), -(i as f64) / 100.0);
    }
    let books = db
        .query(
            &format!("SELECT time, symbol, bids, asks FROM \"{schema}\".orderbook ORDER BY time"),
            &[],
        )
        .await
        .unwrap();
    for (i, row) in books.iter().enumerate() {
        let i = i as i64;
        let time: DateTime<Utc> = row.get(0);
        assert_eq!(time.timestamp_millis(), base + i * 1000);
        assert_eq!(
            row.get::<_, serde_json::Value>(2),
            json!([{"price": 999.0, "quantity": i as f64}])
        );
        assert_eq!(
            row.get::<_, serde_json::Value>(3),
            json!([{"price": 1001.0, "quantity": (i + 1) as f64}])
        );
    }
    // The offsets table agrees with the topics' ends.
    let offsets: i64 = db
        .query_one(
            &format!("SELECT sum(next_offset)::BIGINT FROM \"{schema}\".actord_offsets WHERE consumer_group = 'data-recorder-group-timescale'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let ends: i64 = end_offsets(&bootstrap, "market.tick", 3)
        .values()
        .sum::<i64>()
        + end_offsets(&bootstrap, "market.orderbook", 3)
            .values()
            .sum::<i64>();
    assert_eq!(offsets, ends);
    // Plain PostgreSQL here: the aggregates are views refreshed on a schedule.
    until(Duration::from_secs(20), "the 1 min aggregate", || async {
        pg().await
            .query_one(
                &format!("SELECT coalesce(sum(volume), 0)::BIGINT FROM \"{schema}\".tick_1min"),
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == (0..500).sum::<i64>())
            .unwrap_or(false)
    })
    .await;
    let health = get(&p.base, "/health").await.1;
    assert!(
        health.starts_with("OK\nrecorder.consumer: healthy\nrecorder.timescaledb: healthy\n"),
        "{health}"
    );
    assert!(
        health.contains("# timescaledb: extension not available"),
        "{health}"
    );
    assert_eq!(
        get(&p.base, "/health/recorder").await.1,
        "OK\nconsumer: healthy\ntimescaledb: healthy\ns3: healthy\n"
    );
    let metrics = get(&p.base, "/metrics").await.1;
    assert!(
        metrics.contains("actord_recorder_messages_total{kind=\"tick\"} 500"),
        "{metrics}"
    );
    assert!(
        metrics.contains("actord_timescale_inserts_total 700"),
        "{metrics}"
    );
    drop(p);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn poison_reaches_the_dlq_while_good_rows_land() {
    let schema = fresh_schema();
    let (p, bootstrap) = start_recorder(&schema, 5432).await;
    let base = BASE;
    let mut payloads: Vec<String> = (0..20).map(|i| tick(i, base)).collect();
    payloads.insert(5, "{not json".into());
    payloads.insert(9, json!({"symbol": "X", "price": 1.0, "volume": 1, "change": 0, "change_rate": 0, "timestamp": "when"}).to_string());
    produce(&bootstrap, "market.tick", payloads).await;
    until(Duration::from_secs(60), "the 20 good ticks", || async {
        count(&schema, "tick_data").await == 20
    })
    .await;
    let dlq = read_until(&bootstrap, "market.tick-dlq", |r| r.len() >= 2);
    let errors: BTreeSet<String> = dlq
        .iter()
        .map(|(v, _)| {
            v["error"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        errors,
        BTreeSet::from(["InvalidTick".to_owned(), "InvalidTimestamp".to_owned()])
    );
    drop(p);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn a_database_outage_is_retried_and_nothing_is_lost_or_dead_lettered() {
    let schema = fresh_schema();
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let (p, bootstrap) = start_recorder(&schema, proxy.port).await;
    let base = BASE;
    produce(
        &bootstrap,
        "market.tick",
        (0..300).map(|i| tick(i, base)).collect(),
    )
    .await;
    until(Duration::from_secs(60), "the first ticks", || async {
        count(&schema, "tick_data").await == 300
    })
    .await;
    proxy.down();
    produce(
        &bootstrap,
        "market.tick",
        (300..800).map(|i| tick(i, base)).collect(),
    )
    .await;
    until(Duration::from_secs(30), "the outage on /health", || async {
        let (status, body) = get(&p.base, "/health").await;
        status == 503 && body.contains("recorder.timescaledb: unhealthy")
    })
    .await;
    // Keep it down long enough for retries and a path restart.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(count(&schema, "tick_data").await, 300);
    proxy.up();
    until(
        Duration::from_secs(120),
        "every tick after the outage",
        || async { count(&schema, "tick_data").await == 800 },
    )
    .await;
    let distinct: i64 = pg()
        .await
        .query_one(
            &format!("SELECT count(DISTINCT volume) FROM \"{schema}\".tick_data"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, 800);
    let metrics = get(&p.base, "/metrics").await.1;
    // The DLQ series exist from the start, at 0.
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("actord_dlq_records_total{path=\"/recorder/timescale/dlq\""))
            .all(|l| l.ends_with(" 0")),
        "an outage sent records to the DLQ: {metrics}"
    );
    until(Duration::from_secs(30), "healthy again", || async {
        get(&p.base, "/health").await.0 == 200
    })
    .await;
    let t = tree(&p.base).await;
    assert_eq!(crate::support::actor(&t, "/")["restarts"], 0);
    drop(p);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn a_new_embedded_broker_does_not_inherit_stored_offsets() {
    // The embedded broker starts empty on every run; offsets stored by an earlier run must not
    // make the recorder skip the new run's records.
    let schema = fresh_schema();
    let base = BASE;
    for (run, range) in [(1, 0..100), (2, 100..150)] {
        let (mut p, bootstrap) = start_recorder(&schema, 5432).await;
        produce(
            &bootstrap,
            "market.tick",
            range.clone().map(|i| tick(i, base)).collect(),
        )
        .await;
        until(Duration::from_secs(60), "the run's ticks", || async {
            count(&schema, "tick_data").await == range.end
        })
        .await;
        p.signal("TERM");
        assert_eq!(
            p.wait_exit(Duration::from_secs(30)).code(),
            Some(0),
            "run {run}"
        );
    }
    drop_schema(&schema).await;
}

#[tokio::test]
async fn a_second_signal_exits_at_once_while_shutdown_waits_for_a_sink() {
    // With the database unreachable the first signal's graceful stop waits for the writers;
    // the second one ends the process immediately.
    let schema = fresh_schema();
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let (mut p, bootstrap) = start_recorder(&schema, proxy.port).await;
    until(Duration::from_secs(30), "the schema", || async {
        get(&p.base, "/health").await.0 == 200
    })
    .await;
    // One tick written first: the path has its partitions and their start offsets, so the
    // outage below holds a writer's batch rather than the consumer's assignment.
    produce(&bootstrap, "market.tick", vec![tick(0, BASE)]).await;
    until(
        Duration::from_secs(30),
        "the first tick in the table",
        || async { count(&schema, "tick_data").await == 1 },
    )
    .await;
    proxy.down();
    produce(
        &bootstrap,
        "market.tick",
        (1..51).map(|i| tick(i, BASE)).collect(),
    )
    .await;
    until(Duration::from_secs(30), "the outage on /health", || async {
        get(&p.base, "/health").await.0 == 503
    })
    .await;
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "the graceful stop should still be waiting"
    );
    let second = std::time::Instant::now();
    p.signal("INT");
    let status = p.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "{}", p.log());
    assert!(second.elapsed() < Duration::from_secs(3));
    assert!(p.log().contains("second signal"), "{}", p.log());
    drop_schema(&schema).await;
}

/// A team switching from the seed: its service committed up to offset 600 under
/// `KAFKA_GROUP_ID`; actord, with the seed's variables and no offsets of its own, writes exactly
/// the 400 ticks the seed had not processed, in both sinks.
#[tokio::test]
async fn a_switch_from_the_seed_starts_where_the_seeds_group_committed() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let broker = crate::support::Tansu::start();
    for topic in [
        "market.tick",
        "market.orderbook",
        "market.tick-dlq",
        "market.orderbook-dlq",
    ] {
        broker.create_topic(topic, 1);
    }
    let n = 1000i64;
    produce(
        broker.bootstrap(),
        "market.tick",
        (0..n).map(|i| tick(i, BASE)).collect(),
    )
    .await;
    let seed_group = unique("data-recorder-group");
    {
        let seed: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("group.id", &seed_group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("market.tick", 0, rdkafka::Offset::Offset(600))
            .unwrap();
        seed.commit(&tpl, CommitMode::Sync).unwrap();
    }
    let schema = fresh_schema();
    let s3 = crate::support::S3Server::start("switch");
    let mut env: Vec<(&str, String)> = s3.env();
    env.extend([
        ("KAFKA_BROKERS", broker.bootstrap().to_owned()),
        ("KAFKA_GROUP_ID", seed_group.clone()),
        ("S3_BATCH_TIMEOUT_SEC", "1".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &env);
    wait_ready(&p.base).await;
    until(
        Duration::from_secs(90),
        "the ticks after the seed's commit",
        || async { count(&schema, "tick_data").await >= n - 600 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = pg()
        .await
        .query_one(
            &format!("SELECT count(*), min(volume), max(volume) FROM \"{schema}\".tick_data"),
            &[],
        )
        .await
        .unwrap();
    let got: (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(
        got,
        (400, 600, 999),
        "exactly what the seed had not written"
    );
    let log = p.log();
    assert!(
        log.contains("starting from the committed offset of the group it replaces"),
        "{log}"
    );
    drop(p);
    drop_schema(&schema).await;
}
