//! Kafka → TimescaleDB rows/s beside a raw `psql \copy` of the same rows into the same table
//! layout, in one run against the local PostgreSQL.
//!
//! `cargo bench --bench timescale [-- ROWS]` (default 300,000 ticks).

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actord::config::{self, Sources};
use actord::pipelines::recorder::model;
use actord::sinks::timescale::{DbSettings, Shared, TimescaleSink};
use actord::sources::kafka::embedded::EmbeddedKafka;
use actord::sources::kafka::path::KafkaPath;
use actord::sources::kafka::{KafkaConnection, SourceSettings, StartFrom};
use actord_actors::buffer::BufferLimits;
use actord_actors::observe::{ActorKind, Registry};
use actord_actors::writer::RetryPolicy;
use actord_actors::{ActorPath, Supervisor, SupervisorArgs, SupervisorSpec};
use ractor::Actor;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

const TOPIC: &str = "market.tick";

fn row(i: u64) -> (String, String) {
    let ts = 1_763_568_754_000u64 + i;
    let symbol = format!("{:06}", i % 2000);
    let (price, change, rate) = (
        50_000.0 + (i % 1000) as f64 / 4.0,
        (i % 300) as f64 / 8.0,
        (i % 100) as f64 / 100.0,
    );
    let json = format!(
        r#"{{"symbol":"{symbol}","price":{price},"volume":{i},"change":{change},"change_rate":{rate},"timestamp":{ts}}}"#
    );
    let time = chrono::DateTime::from_timestamp_millis(ts as i64)
        .unwrap()
        .to_rfc3339();
    (
        json,
        format!("{time},{symbol},{price},{i},{change},{rate}\n"),
    )
}

fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql is installed");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300_000);
    let (raw_schema, our_schema) = ("bench_copy", "bench_actord");
    for s in [raw_schema, our_schema] {
        psql(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"));
    }

    // The raw limit: psql \copy of the same rows, as CSV, into the same table layout.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("ticks.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        for i in 0..n {
            f.write_all(row(i).1.as_bytes()).unwrap();
        }
    }
    psql(&format!("CREATE SCHEMA {raw_schema}"));
    psql(&format!(
        "CREATE TABLE {raw_schema}.tick_data (time TIMESTAMPTZ NOT NULL, symbol TEXT NOT NULL, price DOUBLE PRECISION, \
         volume BIGINT, change DOUBLE PRECISION, change_rate DOUBLE PRECISION); \
         CREATE INDEX ON {raw_schema}.tick_data (symbol, time DESC)"
    ));
    let started = Instant::now();
    psql(&format!(
        "\\copy {raw_schema}.tick_data FROM '{}' CSV",
        csv.display()
    ));
    let raw = n as f64 / started.elapsed().as_secs_f64();

    // actord: Kafka → decode → buffer → binary COPY with offsets, exactly once.
    let kafka = EmbeddedKafka::start().unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    kafka.create_topic(&format!("{TOPIC}-dlq"), 1).unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for i in 0..n {
        let (json, _) = row(i);
        let key = (i % 1009).to_string();
        let mut record = BaseRecord::to(TOPIC).payload(&json).key(&key);
        while let Err((_, r)) = producer.send(record) {
            record = r;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();

    let db = Shared::new(
        DbSettings {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            schema: our_schema.into(),
            pool_size: 3,
            forget_offsets: false,
        },
        "bench-timescale".into(),
    );
    let mut source = SourceSettings::new(vec![TOPIC.into()], "bench-timescale");
    source.max_in_flight_records = 100_000;
    source.start = StartFrom::Sink(db.clone());
    let path = KafkaPath::<model::Market, TimescaleSink> {
        id: "timescale".into(),
        connection: KafkaConnection::new(kafka.bootstrap()),
        source,
        decode: Arc::new(model::decode),
        sink: db.factory(),
        lanes: 2,
        buffer: BufferLimits {
            max_records: 10_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_millis(500),
        },
        retry: RetryPolicy::default(),
        dlq_suffix: Some("-dlq".into()),
    };
    let supervision = config::load(&Sources::default()).unwrap().supervision;
    let registry = Registry::new();
    let root = ActorPath::parse("/bench").unwrap();
    let spec = path.child_spec(&root, &supervision);
    let consumer = registry.probe(
        &root.child("timescale").child("consumer-0"),
        ActorKind::Worker,
    );
    let writers: Vec<_> = (0..2)
        .map(|i| {
            registry.probe(
                &root.child("timescale").child(&format!("writer-{i}")),
                ActorKind::Worker,
            )
        })
        .collect();
    let (sup, _) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec: SupervisorSpec::default(),
            children: vec![spec],
            probe: registry.probe(&root, ActorKind::Supervisor),
        },
    )
    .await
    .unwrap();
    while consumer.counter("records") == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = Instant::now();
    while writers.iter().map(|w| w.counter("records")).sum::<u64>() < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ours = n as f64 / first.elapsed().as_secs_f64();
    sup.stop_and_wait(None, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let rows: u64 = psql(&format!("SELECT count(*) FROM {our_schema}.tick_data"))
        .parse()
        .unwrap();
    assert_eq!(rows, n, "rows in the table");
    for s in [raw_schema, our_schema] {
        psql(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"));
    }
    println!("rows: {n}, local PostgreSQL 15 (plain tables + (symbol, time) index)");
    println!("psql \\copy (CSV):                            {raw:>10.0} rows/s");
    println!("actord Kafka → binary COPY + offsets:         {ours:>10.0} rows/s");
    println!(
        "ratio:                                        {:>10.2}",
        ours / raw
    );
}
