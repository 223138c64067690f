//! Kafka → TimescaleDB rows/s beside a raw `psql \copy` of the same rows into the same table
//! layout, in one run against the local PostgreSQL.
//!
//! `cargo bench --bench timescale [-- ROWS]` (default 300,000 ticks); `ACTORD_BENCH_BATCH` sets
//! the batch size (default 10,000; the recorder seed's BATCH_SIZE is 1,000).

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actord::pipelines::recorder::model;
use actord::pipelines::recorder::timescale::{MarketCopy, RecorderTables};
use actord::sinks::postgres::{Classifier, Database, DbSettings, PostgresSink};
use actord::sources::kafka::embedded::EmbeddedKafka;
use actord::sources::kafka::path::KafkaPath;
use actord::sources::kafka::{KafkaConnection, SourceSettings, StartFrom};
use actord_actors::buffer::BufferLimits;
use actord_actors::writer::RetryPolicy;

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
    let batch: usize = std::env::var("ACTORD_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(10_000);
    let (raw_schema, our_schema) = ("bench_copy", "bench_actord");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("ticks.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        for i in 0..n {
            f.write_all(row(i).1.as_bytes()).unwrap();
        }
    }
    let kafka = EmbeddedKafka::start().unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    kafka.create_topic(&format!("{TOPIC}-dlq"), 1).unwrap();
    common::produce(kafka.bootstrap(), TOPIC, n, |i| row(i).0);

    // Rounds alternate the raw COPY and actord, each after a checkpoint into a fresh schema,
    // so that PostgreSQL's background work falls on both alike; the medians are reported.
    let rounds = 3;
    let (mut raws, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for s in [raw_schema, our_schema] {
            psql(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"));
        }
        // The raw limit: psql \copy of the same rows, as CSV, into the same table layout.
        psql(&format!("CREATE SCHEMA {raw_schema}"));
        psql(&format!(
            "CREATE TABLE {raw_schema}.tick_data (time TIMESTAMPTZ NOT NULL, symbol TEXT NOT NULL, price DOUBLE PRECISION, \
             volume BIGINT, change DOUBLE PRECISION, change_rate DOUBLE PRECISION); \
             CREATE INDEX ON {raw_schema}.tick_data (symbol, time DESC)"
        ));
        psql("CHECKPOINT");
        let started = Instant::now();
        psql(&format!(
            "\\copy {raw_schema}.tick_data FROM '{}' CSV",
            csv.display()
        ));
        let raw = n as f64 / started.elapsed().as_secs_f64();

        // actord: Kafka → decode → buffer → binary COPY with offsets, exactly once.
        let group = format!("bench-timescale-{round}");
        let db = Database::kafka(
            DbSettings {
                host: "127.0.0.1".into(),
                port: 5432,
                user: "postgres".into(),
                password: None,
                database: "postgres".into(),
                schema: our_schema.into(),
                pool_size: 3,
                forget_offsets: None,
                ..DbSettings::default()
            },
            "timescaledb",
            Arc::new(RecorderTables::default()),
            Classifier::default(),
            group.clone(),
        );
        let mut source = SourceSettings::new(vec![TOPIC.into()], group);
        source.max_in_flight_records = 100_000;
        source.start = StartFrom::Sink(db.clone());
        let path = KafkaPath::<model::Market, PostgresSink<model::Market, MarketCopy>> {
            id: "timescale".into(),
            connection: KafkaConnection::new(kafka.bootstrap()),
            source,
            decode: Arc::new(model::decode),
            sink: db.factory(Arc::new(MarketCopy::default())),
            lanes: 1,
            buffer: BufferLimits {
                max_records: batch,
                max_bytes: 64 << 20,
                max_age: Duration::from_millis(500),
            },
            retry: RetryPolicy::default(),
            dlq_suffix: Some("-dlq".into()),
        };
        psql("CHECKPOINT");
        let our = common::records_per_second(path, n).await;
        let rows: u64 = psql(&format!("SELECT count(*) FROM {our_schema}.tick_data"))
            .parse()
            .unwrap();
        assert_eq!(rows, n, "rows in the table");
        println!(
            "round {round}: psql \\copy {raw:>8.0} rows/s, actord {our:>8.0} rows/s, ratio {:.2}",
            our / raw
        );
        raws.push(raw);
        ours.push(our);
        ratios.push(our / raw);
    }
    for s in [raw_schema, our_schema] {
        psql(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (raw, ours, ratio) = (median(&mut raws), median(&mut ours), median(&mut ratios));
    println!(
        "rows: {n}, batches of {batch}, local PostgreSQL 15 (plain tables + (symbol, time) index)"
    );
    println!("psql \\copy (CSV):                            {raw:>10.0} rows/s");
    println!("actord Kafka → binary COPY + offsets:         {ours:>10.0} rows/s");
    println!("median ratio over {rounds} rounds:                {ratio:>10.2}");
}
