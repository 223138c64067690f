//! Throughput of the delivery core: consume → decode → buffer → null sink, beside the raw
//! consume rate of `kcat` on the same topic of the same embedded broker, in one run.
//!
//! `cargo bench --bench delivery [-- RECORDS]` (default 1,000,000 records).

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actord::sources::kafka::embedded::EmbeddedKafka;
use actord::sources::kafka::path::KafkaPath;
use actord::sources::kafka::{KafkaConnection, SourceSettings};
use actord_actors::buffer::BufferLimits;
use actord_actors::record::{Envelope, Poison, SourceRecord};
use actord_actors::sink::{Sink, SinkError};
use actord_actors::writer::RetryPolicy;
use serde::Deserialize;

const TOPIC: &str = "bench";
const PARTITIONS: i32 = 8;

#[derive(Deserialize)]
#[allow(dead_code)]
struct Tick {
    symbol: String,
    price: f64,
    volume: i64,
}

fn decode(r: &SourceRecord) -> Result<Tick, Poison> {
    serde_json::from_slice(r.payload.as_deref().unwrap_or_default())
        .map_err(|e| Poison::new("JsonError", e.to_string()))
}

/// Accepts everything: the path is measured, not a sink.
struct NullSink;

impl Sink<Tick> for NullSink {
    async fn write(&mut self, _records: &[Envelope<Tick>]) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let kafka = EmbeddedKafka::start().unwrap();
    kafka.create_topic(TOPIC, PARTITIONS).unwrap();
    kafka.create_topic(&format!("{TOPIC}-dlq"), 1).unwrap();
    let started = Instant::now();
    common::produce(kafka.bootstrap(), TOPIC, n, |i| {
        format!(
            r#"{{"symbol":"{:06}","price":{}.5,"volume":{}}}"#,
            i % 2000,
            50_000 + i % 1000,
            i % 97
        )
    });
    println!(
        "produced {n} records in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let raw = common::kcat(kafka.bootstrap(), TOPIC, n);

    let mut source = SourceSettings::new(vec![TOPIC.into()], "bench-group");
    source.max_in_flight_records = 200_000;
    source.max_in_flight_bytes = 256 << 20;
    source.session_timeout = Duration::from_secs(6);
    let path = KafkaPath::<Tick, NullSink> {
        id: "path".into(),
        connection: KafkaConnection::new(kafka.bootstrap()),
        source,
        decode: Arc::new(decode),
        sink: Arc::new(|| Box::pin(async { Ok(NullSink) })),
        lanes: 2,
        buffer: BufferLimits {
            max_records: 10_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_millis(500),
        },
        retry: RetryPolicy::default(),
        dlq_suffix: Some("-dlq".into()),
    };
    let ours = common::records_per_second(path, n).await;

    println!("records: {n}, partitions: {PARTITIONS}, embedded broker (librdkafka mock cluster)");
    match raw {
        Some(raw) => {
            println!("kcat raw consume:                          {raw:>12.0} records/s");
            println!("actord consume→decode→buffer→null sink:    {ours:>12.0} records/s");
            println!(
                "ratio:                                     {:>12.2}",
                ours / raw
            );
        }
        None => {
            println!("kcat is not installed (Debian package kcat); no baseline");
            println!("actord consume→decode→buffer→null sink:    {ours:>12.0} records/s");
        }
    }
}
