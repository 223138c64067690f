//! Throughput of the delivery core: consume → decode → buffer → null sink, beside the raw
//! consume rate of `kcat` on the same topic of the same embedded broker, in one run.
//!
//! `cargo bench --bench delivery [-- RECORDS]` (default 1,000,000 records).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actord::config::{self, Sources};
use actord::sources::kafka::embedded::EmbeddedKafka;
use actord::sources::kafka::path::KafkaPath;
use actord::sources::kafka::{KafkaConnection, SourceSettings};
use actord_actors::buffer::BufferLimits;
use actord_actors::observe::{ActorKind, Registry};
use actord_actors::record::{Envelope, Poison, SourceRecord};
use actord_actors::sink::{Sink, SinkError};
use actord_actors::writer::RetryPolicy;
use actord_actors::{ActorPath, Supervisor, SupervisorArgs, SupervisorSpec};
use ractor::Actor;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
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

struct NullSink(Arc<AtomicU64>);

impl Sink<Tick> for NullSink {
    async fn write(&mut self, records: &[Envelope<Tick>]) -> Result<(), SinkError> {
        self.0.fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn produce(bootstrap: &str, n: u64) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for i in 0..n {
        let payload = format!(
            r#"{{"symbol":"{:06}","price":{}.5,"volume":{}}}"#,
            i % 2000,
            50_000 + i % 1000,
            i % 97
        );
        let key = (i % 10_007).to_string();
        let mut record = BaseRecord::to(TOPIC).payload(&payload).key(&key);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

fn kcat(bootstrap: &str, n: u64) -> Option<f64> {
    let start = Instant::now();
    let status = Command::new("kcat")
        .args([
            "-C",
            "-b",
            bootstrap,
            "-t",
            TOPIC,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%s\n",
        ])
        // The same fetch tuning actord's consumer uses, so the baseline is the real limit.
        .args([
            "-X",
            "fetch.queue.backoff.ms=20",
            "-X",
            "queued.max.messages.kbytes=16384",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status
        .success()
        .then(|| n as f64 / start.elapsed().as_secs_f64())
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
    produce(kafka.bootstrap(), n);
    println!(
        "produced {n} records in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let raw = kcat(kafka.bootstrap(), n);

    let written = Arc::new(AtomicU64::new(0));
    let mut source = SourceSettings::new(vec![TOPIC.into()], "bench-group");
    source.max_in_flight_records = 200_000;
    source.max_in_flight_bytes = 256 << 20;
    source.session_timeout = Duration::from_secs(6);
    let counter = written.clone();
    let path = KafkaPath::<Tick, NullSink> {
        id: "path".into(),
        connection: KafkaConnection::new(kafka.bootstrap()),
        source,
        decode: Arc::new(decode),
        sink: Arc::new(move || {
            let c = counter.clone();
            Box::pin(async move { Ok(NullSink(c)) })
        }),
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
    let probe = registry.probe(&root, ActorKind::Supervisor);
    let consumer = registry.probe(&root.child("path").child("consumer-0"), ActorKind::Worker);
    let (sup, _) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec: SupervisorSpec::default(),
            children: vec![spec],
            probe,
        },
    )
    .await
    .unwrap();
    // Time from the first record read (after the group join) to the last one written.
    while consumer.counter("records") == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = Instant::now();
    let mut tick = Instant::now();
    while written.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if std::env::var_os("BENCH_TRACE").is_some() && tick.elapsed() > Duration::from_millis(500)
        {
            tick = Instant::now();
            eprintln!(
                "t={:.1}s consumed={} in_flight={} written={}",
                first.elapsed().as_secs_f64(),
                consumer.counter("records"),
                consumer.counter("in_flight"),
                written.load(Ordering::Relaxed)
            );
        }
    }
    let ours = n as f64 / first.elapsed().as_secs_f64();
    sup.stop_and_wait(None, Some(Duration::from_secs(30)))
        .await
        .unwrap();

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
