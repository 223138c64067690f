//! Kafka → Parquet records/s beside the raw consume rate of `kcat` on the same topic of the
//! same embedded broker, in one run: once into a local directory and once into an S3-compatible
//! server (s3s-fs on a loopback port) through multipart uploads. Two pipelines: the recorder's
//! Parquet path on market ticks, and a backfill run (`actord backfill --mode fresh`'s job: the
//! pipeline started alone, one run of its scheduled entry to the high watermarks, commit) on
//! JSON sensor readings. Every object is read back and its rows counted against the records
//! produced.
//!
//! `cargo bench --bench parquet [-- RECORDS]` (default 1,000,000 records per topic).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actord::config::{self, S3Config, Sources};
use actord::pipelines::backfill::foreground;
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
const SENSORS: &str = "fms-temphum";
const PARTITIONS: i32 = 8;

/// Rows of every Parquet object in `store`.
async fn rows(store: &Arc<dyn ObjectStore>) -> u64 {
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
    rows
}

/// One `actord backfill --mode fresh` run of `SENSORS` with `[pipelines.backfill]` extended by
/// `store` (TOML lines); returns records/s over the whole run (start-up, plan, read, write,
/// commit).
async fn backfill(bootstrap: &str, group: &str, store: &str, n: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("supervision.toml");
    std::fs::write(
        &path,
        format!(
            "[runtime]\nshutdown_timeout = \"30s\"\n[log]\nlevel = \"warn\"\n\
             [pipelines.backfill]\ntopic = \"{SENSORS}\"\ngroup = \"{group}\"\n{store}\n"
        ),
    )
    .unwrap();
    let mut env: BTreeMap<String, String> =
        foreground::overrides("fresh", None).into_iter().collect();
    env.insert("KAFKA_BROKERS".into(), bootstrap.to_owned());
    let config = config::load(&Sources {
        config_path: Some(path),
        env,
        enable: Some(vec!["backfill".into()]),
        ..Sources::default()
    })
    .unwrap();
    let started = Instant::now();
    let exit = foreground::run(config).await;
    let elapsed = started.elapsed();
    assert_eq!(exit, foreground::Exit::Done, "the backfill run failed");
    n as f64 / elapsed.as_secs_f64()
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
    assert_eq!(rows(&store).await, n, "Parquet rows");
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
    kafka.create_topic(SENSORS, PARTITIONS).unwrap();
    kafka.create_topic(&format!("{SENSORS}-dlq"), 1).unwrap();
    common::produce(kafka.bootstrap(), TOPIC, n, common::tick);
    common::produce(kafka.bootstrap(), SENSORS, n, common::reading);
    let raw = common::kcat(kafka.bootstrap(), TOPIC, n);
    let raw_sensors = common::kcat(kafka.bootstrap(), SENSORS, n);

    let local_dir = tempfile::tempdir().unwrap();
    let local = store::open_target(
        &Location::Dir(local_dir.path().to_owned()),
        &S3Config::default(),
    )
    .unwrap();
    let to_dir = run(kafka.bootstrap(), local, "bench-local", n).await;

    let backfill_dir = tempfile::tempdir().unwrap();
    let backfill_to_dir = backfill(
        kafka.bootstrap(),
        "bench-backfill-local",
        &format!("dir = \"{}\"", backfill_dir.path().display()),
        n,
    )
    .await;
    let local_store: Arc<dyn ObjectStore> = store::open_target(
        &Location::Dir(backfill_dir.path().join(SENSORS)),
        &S3Config::default(),
    )
    .unwrap()
    .store;
    assert_eq!(
        rows(&local_store).await,
        n,
        "backfill Parquet rows (local dir)"
    );

    let s3_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(s3_dir.path().join(SENSORS)).unwrap();
    let (to_s3, backfill_to_s3) = match s3s(s3_dir.path()) {
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
            let backfill_rate = backfill(
                kafka.bootstrap(),
                "bench-backfill-s3",
                &format!(
                    "bucket = \"{SENSORS}\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
                     access_key = \"bench\"\nsecret_key = \"bench-secret\""
                ),
                n,
            )
            .await;
            let sensors = Location::Bucket {
                name: SENSORS.into(),
                region: None,
            };
            let s3_store = store::open_target(&sensors, &conn).unwrap().store;
            assert_eq!(rows(&s3_store).await, n, "backfill Parquet rows (s3s-fs)");
            let _ = child.kill();
            (Some(rate), Some(backfill_rate))
        }
        None => (None, None),
    };

    let line = |what: &str, rate: Option<f64>, raw: Option<f64>| {
        let Some(rate) = rate else {
            println!("{what:<40} (s3s-fs not installed)");
            return;
        };
        match raw {
            Some(raw) => println!(
                "{what:<40} {rate:>10.0} records/s   ratio {:.2}",
                rate / raw
            ),
            None => println!("{what:<40} {rate:>10.0} records/s"),
        }
    };
    println!("records: {n} per topic, {PARTITIONS} partitions, lz4, embedded broker");
    println!("{TOPIC} (ticks, JSON):");
    match raw {
        Some(raw) => println!("{:<40} {raw:>10.0} records/s", "  kcat raw consume"),
        None => println!("{:<40} (kcat not installed)", "  kcat raw consume"),
    }
    line("  recorder Kafka → Parquet, local dir", Some(to_dir), raw);
    line("  recorder Kafka → Parquet, s3s-fs", to_s3, raw);
    println!("{SENSORS} (sensor readings, JSON):");
    match raw_sensors {
        Some(raw) => println!("{:<40} {raw:>10.0} records/s", "  kcat raw consume"),
        None => println!("{:<40} (kcat not installed)", "  kcat raw consume"),
    }
    line(
        "  backfill run, local dir",
        Some(backfill_to_dir),
        raw_sensors,
    );
    line("  backfill run, s3s-fs", backfill_to_s3, raw_sensors);
    println!("every object read back: rows = records produced, per target");
}
