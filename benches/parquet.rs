//! Kafka → Parquet records/s beside the raw consume rate of `kcat` on the same topic of the
//! same embedded broker, in one run: once into a local directory and once into an S3-compatible
//! server (s3s-fs on a loopback port) through multipart uploads.
//!
//! `cargo bench --bench parquet [-- RECORDS]` (default 1,000,000 ticks).

#[path = "common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use actord::config::S3Config;
use actord::pipelines::recorder::model;
use actord::pipelines::recorder::parquet::{Objects, ParquetSink};
use actord::sinks::objects::sink::Target;
use actord::sinks::objects::store::{self, Location};
use actord::sources::kafka::embedded::EmbeddedKafka;
use actord::sources::kafka::path::KafkaPath;
use actord::sources::kafka::{KafkaConnection, SourceSettings};
use actord_actors::buffer::BufferLimits;
use actord_actors::writer::RetryPolicy;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

const TOPIC: &str = "market.tick";
const PARTITIONS: i32 = 8;

fn tick(i: u64) -> String {
    let ts = 1_763_568_754_000u64 + i;
    format!(
        r#"{{"symbol":"{:06}","price":{},"volume":{i},"change":{},"change_rate":{},"timestamp":{ts}}}"#,
        i % 2000,
        50_000.0 + (i % 1000) as f64 / 4.0,
        (i % 300) as f64 / 8.0,
        (i % 100) as f64 / 100.0
    )
}

async fn run(bootstrap: &str, target: Target, group: &str, n: u64) -> f64 {
    let store: Arc<dyn ObjectStore> = target.store.clone();
    let objects = Objects::new(target, "market-data", 65_536, "/bench/s3", None);
    let mut source = SourceSettings::new(vec![TOPIC.into()], group);
    source.max_in_flight_records = 200_000;
    source.max_in_flight_bytes = 256 << 20;
    source.session_timeout = Duration::from_secs(6);
    let path = KafkaPath::<model::Market, ParquetSink> {
        id: "s3".into(),
        connection: KafkaConnection::new(bootstrap),
        source,
        decode: Arc::new(model::decode),
        sink: objects.factory(),
        lanes: 2,
        buffer: BufferLimits {
            max_records: 100_000,
            max_bytes: 256 << 20,
            max_age: Duration::from_millis(200),
        },
        retry: RetryPolicy::default(),
        dlq_suffix: None,
    };
    let rate = common::records_per_second(path, n).await;
    let listing: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut rows = 0;
    for meta in listing
        .iter()
        .filter(|m| m.location.as_ref().ends_with(".parquet"))
    {
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let builder =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        rows += builder.metadata().file_metadata().num_rows() as u64;
    }
    assert_eq!(rows, n, "Parquet rows");
    rate
}

/// s3s-fs on a free loopback port over `dir`, with the bucket `bench`.
fn s3s(dir: &std::path::Path) -> Option<(Child, u16)> {
    std::fs::create_dir_all(dir.join("bench")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "bench", "--secret-key", "bench-secret"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let kafka = EmbeddedKafka::start().unwrap();
    kafka.create_topic(TOPIC, PARTITIONS).unwrap();
    common::produce(kafka.bootstrap(), TOPIC, n, tick);
    let raw = common::kcat(kafka.bootstrap(), TOPIC, n);

    let local_dir = tempfile::tempdir().unwrap();
    let local = store::open_target(
        &Location::Dir(local_dir.path().to_owned()),
        &S3Config::default(),
    )
    .unwrap();
    let to_dir = run(kafka.bootstrap(), local, "bench-local", n).await;

    let s3_dir = tempfile::tempdir().unwrap();
    let to_s3 = match s3s(s3_dir.path()) {
        Some((mut child, port)) => {
            let conn = S3Config {
                endpoint: Some(format!("http://127.0.0.1:{port}")),
                region: "us-east-1".into(),
                access_key_id: Some("bench".into()),
                secret_access_key: Some(actord::config::Secret::new("bench-secret")),
                session_token: None,
                allow_http: true,
                virtual_hosted: false,
            };
            let bucket = Location::Bucket {
                name: "bench".into(),
                region: None,
            };
            let rate = run(
                kafka.bootstrap(),
                store::open_target(&bucket, &conn).unwrap(),
                "bench-s3",
                n,
            )
            .await;
            let _ = child.kill();
            Some(rate)
        }
        None => None,
    };

    println!("records: {n} ticks (JSON), {PARTITIONS} partitions, embedded broker");
    match raw {
        Some(raw) => println!("kcat raw consume:                     {raw:>10.0} records/s"),
        None => println!("kcat raw consume:                     (kcat not installed)"),
    }
    println!("actord Kafka → Parquet, local dir:    {to_dir:>10.0} records/s");
    if let Some(to_s3) = to_s3 {
        println!("actord Kafka → Parquet, s3s-fs:       {to_s3:>10.0} records/s");
    }
    if let Some(raw) = raw {
        println!(
            "ratio (local dir):                    {:>10.2}",
            to_dir / raw
        );
        if let Some(to_s3) = to_s3 {
            println!(
                "ratio (s3s-fs):                       {:>10.2}",
                to_s3 / raw
            );
        }
    }
}
