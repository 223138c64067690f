//! Shared by the benchmarks: producing test data and timing a consumer path.

use std::time::{Duration, Instant};

use actord::config::{self, Sources};
use actord::sources::kafka::path::KafkaPath;
use actord_actors::observe::{ActorKind, Registry};
use actord_actors::sink::Sink;
use actord_actors::{
    ActorPath, ChildSpec, Supervisor, SupervisorArgs, SupervisorSpec, Supervisors,
};
use ractor::Actor;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

/// A market tick as the recorder reads it (JSON, millisecond `timestamp`), the `i`-th of a
/// stream over 2,000 symbols.
#[allow(dead_code)]
pub fn tick(i: u64) -> String {
    let ts = 1_763_568_754_000u64 + i;
    format!(
        r#"{{"symbol":"{:06}","price":{},"volume":{i},"change":{},"change_rate":{},"timestamp":{ts}}}"#,
        i % 2000,
        50_000.0 + (i % 1000) as f64 / 4.0,
        (i % 300) as f64 / 8.0,
        (i % 100) as f64 / 100.0
    )
}

/// [`tick`] as a CSV line of `tick_data (time, symbol, price, volume, change, change_rate)`.
#[allow(dead_code)]
pub fn tick_csv(i: u64) -> String {
    let time = chrono::DateTime::from_timestamp_millis(1_763_568_754_000 + i as i64)
        .unwrap()
        .to_rfc3339();
    format!(
        "{time},{:06},{},{i},{},{}\n",
        i % 2000,
        50_000.0 + (i % 1000) as f64 / 4.0,
        (i % 300) as f64 / 8.0,
        (i % 100) as f64 / 100.0
    )
}

/// A sensor reading as the backfill seed's devices send it: one every 250 ms, so 1,000,000
/// span about three Seoul days.
#[allow(dead_code)]
pub fn reading(i: u64) -> String {
    let time = chrono::DateTime::from_timestamp_millis(1_763_510_400_000 + i as i64 * 250)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"sensor_id":"fms-{:02}","temperature":{},"humidity":{},"battery":{},"timestamp":"{time}"}}"#,
        i % 40,
        18.0 + (i % 120) as f64 / 8.0,
        35 + i % 30,
        100 - i % 50
    )
}

/// Produces `n` records (`payload(i)`, keys spread over partitions), lz4, and waits for them.
pub fn produce(bootstrap: &str, topic: &str, n: u64, payload: impl Fn(u64) -> String) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for i in 0..n {
        let value = payload(i);
        let key = (i % 10_007).to_string();
        let mut record = BaseRecord::to(topic).payload(&value).key(&key);
        while let Err((_, r)) = producer.send(record) {
            record = r;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// The raw consume rate: `kcat` reads the `n` records of `topic` once, with the fetch tuning
/// actord's consumer uses, so the baseline is the real limit. A kcat linked to a librdkafka
/// older than 2.1 has no `fetch.queue.backoff.ms` (nor the one-second wait it shortens) and
/// runs without it. `None` when kcat is missing.
#[allow(dead_code)]
pub fn kcat(bootstrap: &str, topic: &str, n: u64) -> Option<f64> {
    for tuning in [
        &[
            "fetch.queue.backoff.ms=20",
            "queued.max.messages.kbytes=16384",
        ][..],
        &["queued.max.messages.kbytes=16384"][..],
    ] {
        let start = Instant::now();
        let mut cmd = std::process::Command::new("kcat");
        cmd.args([
            "-C",
            "-b",
            bootstrap,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args(["-f", "%s\n"]);
        for property in tuning {
            cmd.args(["-X", property]);
        }
        let status = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        if status.success() {
            return Some(n as f64 / start.elapsed().as_secs_f64());
        }
    }
    None
}

/// Runs `path` under a root supervisor at `/bench` until its writers wrote `n` records and
/// returns the rate from its first record read (after the group join) to its last written.
// The FTP bench builds its path with its own writer stage and times it with the function below.
#[allow(dead_code)]
pub async fn records_per_second<R, S>(path: KafkaPath<R, S>, n: u64) -> f64
where
    R: Send + Sync + 'static,
    S: Sink<R>,
{
    let (id, lanes) = (path.id.clone(), path.lanes);
    let supervision = config::load(&Sources::default()).unwrap().supervision;
    let root = ActorPath::parse("/bench").unwrap();
    let spec = path.child_spec(&root, &supervision);
    spec_records_per_second(&id, lanes, spec, n).await
}

/// [`records_per_second`] for a path already built as `/bench/<id>` with `lanes` writers.
pub async fn spec_records_per_second(id: &str, lanes: usize, spec: ChildSpec, n: u64) -> f64 {
    let registry = Registry::new();
    let root = ActorPath::parse("/bench").unwrap();
    let base = root.child(id);
    let consumer = registry.probe(&base.child("consumer-0"), ActorKind::Worker);
    let writers: Vec<_> = (0..lanes)
        .map(|i| registry.probe(&base.child(&format!("writer-{i}")), ActorKind::Worker))
        .collect();
    let (sup, _) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec: SupervisorSpec::default(),
            children: vec![spec],
            probe: registry.probe(&root, ActorKind::Supervisor),
            supervisors: Supervisors::default(),
        },
    )
    .await
    .unwrap();
    while consumer.counter("records") == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = Instant::now();
    while writers.iter().map(|w| w.counter("records")).sum::<u64>() < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / first.elapsed().as_secs_f64();
    sup.stop_and_wait(None, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    rate
}
