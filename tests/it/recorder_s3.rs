//! The recorder's Parquet path, run as the actord binary against a real S3-compatible server
//! (s3s-fs), real PostgreSQL and Kafka brokers. Objects are read back with an S3 client and a
//! Parquet reader, as an analytics job would.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use chrono::{DateTime, Datelike, Timelike, Utc};
use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaDataReader;
use serde_json::json;

use crate::kafka::end_offsets;
use crate::recorder::{
    book, bootstrap_of, count, drop_schema, fresh_schema, produce, recorder_config, tick, BASE,
};
use crate::support::{get, until, wait_ready, Process, S3Server, Tansu};

/// One Parquet row, as read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Row {
    Tick {
        nanos: i64,
        symbol: String,
        price: f64,
        volume: i64,
        change: f64,
        change_rate: f64,
    },
    Book {
        nanos: i64,
        symbol: String,
        bids: serde_json::Value,
        asks: serde_json::Value,
    },
}

impl Row {
    fn nanos(&self) -> i64 {
        match self {
            Row::Tick { nanos, .. } | Row::Book { nanos, .. } => *nanos,
        }
    }
}

/// Every object under `market-data/`: key → rows in file order.
pub(crate) async fn objects(store: &Arc<dyn ObjectStore>) -> BTreeMap<String, Vec<Row>> {
    let listing: Vec<_> = store
        .list(Some(&"market-data".into()))
        .try_collect()
        .await
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    // The ownership ledger lives under `market-data/_fence/`; queries read `*.parquet`.
    for meta in listing
        .into_iter()
        .filter(|m| m.location.as_ref().ends_with(".parquet"))
    {
        let Ok(got) = store.get(&meta.location).await else {
            continue; // replaced between the listing and the read
        };
        let Ok(bytes) = got.bytes().await else {
            continue;
        };
        let key = meta.location.to_string();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap_or_else(|e| panic!("{key} is not Parquet: {e}"))
            .build()
            .unwrap();
        let mut rows = Vec::new();
        for batch in reader {
            rows.extend(decode_rows(&key, &batch.unwrap()));
        }
        out.insert(key, rows);
    }
    out
}

/// Counts the objects under `market-data/` and their rows from the Parquet footers: a listing,
/// and two ranged reads at most for an object not seen before (by key, size and modification
/// time). Cheap enough to poll while thousands of objects pile up; [`objects`] reads them whole.
#[derive(Default)]
pub(crate) struct FooterRows {
    known: HashMap<(String, u64, DateTime<Utc>), u64>,
}

impl FooterRows {
    /// The Parquet objects now and the rows they hold. An object whose footer cannot be read
    /// yet (removed after the listing, or not complete) is not counted.
    pub(crate) async fn count(&mut self, store: &Arc<dyn ObjectStore>) -> (usize, u64) {
        let listing: Vec<ObjectMeta> = store
            .list(Some(&"market-data".into()))
            .try_collect()
            .await
            .unwrap_or_default();
        let mut now = HashMap::new();
        for meta in listing
            .into_iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
        {
            let id = (meta.location.to_string(), meta.size, meta.last_modified);
            let rows = match self.known.get(&id) {
                Some(rows) => *rows,
                None => match footer_rows(store, &meta).await {
                    Some(rows) => rows,
                    None => continue,
                },
            };
            now.insert(id, rows);
        }
        self.known = now;
        (self.known.len(), self.known.values().sum())
    }
}

/// The row count in an object's Parquet footer.
async fn footer_rows(store: &Arc<dyn ObjectStore>, meta: &ObjectMeta) -> Option<u64> {
    let size = meta.size;
    if size < 12 {
        return None;
    }
    // One read usually holds the whole footer.
    let tail = store
        .get_range(&meta.location, size.saturating_sub(64 << 10)..size)
        .await
        .ok()?;
    let t = tail.len();
    if &tail[t - 4..] != b"PAR1" {
        return None;
    }
    let len = u32::from_le_bytes(tail[t - 8..t - 4].try_into().unwrap()) as usize;
    let footer = if len + 8 <= t {
        tail.slice(t - 8 - len..t - 8)
    } else if (len + 8) as u64 <= size {
        store
            .get_range(&meta.location, size - 8 - len as u64..size - 8)
            .await
            .ok()?
    } else {
        return None;
    };
    let parsed = ParquetMetaDataReader::decode_metadata(&footer).ok()?;
    Some(parsed.file_metadata().num_rows() as u64)
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("type of column {name}"))
}

fn decode_rows(key: &str, b: &RecordBatch) -> Vec<Row> {
    let names: Vec<String> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let ts = col::<Int64Array>(b, "timestamp");
    let symbol = col::<StringArray>(b, "symbol");
    if key.contains("/tick/") {
        assert_eq!(
            names,
            [
                "timestamp",
                "symbol",
                "price",
                "volume",
                "change",
                "change_rate"
            ]
        );
        let (price, volume) = (
            col::<Float64Array>(b, "price"),
            col::<Int64Array>(b, "volume"),
        );
        let (change, rate) = (
            col::<Float64Array>(b, "change"),
            col::<Float64Array>(b, "change_rate"),
        );
        (0..b.num_rows())
            .map(|i| Row::Tick {
                nanos: ts.value(i),
                symbol: symbol.value(i).to_owned(),
                price: price.value(i),
                volume: volume.value(i),
                change: change.value(i),
                change_rate: rate.value(i),
            })
            .collect()
    } else {
        assert_eq!(names, ["timestamp", "symbol", "bids", "asks"]);
        let (bids, asks) = (col::<StringArray>(b, "bids"), col::<StringArray>(b, "asks"));
        assert_eq!(bids.null_count() + asks.null_count(), 0);
        (0..b.num_rows())
            .map(|i| Row::Book {
                nanos: ts.value(i),
                symbol: symbol.value(i).to_owned(),
                bids: serde_json::from_str(bids.value(i)).unwrap(),
                asks: serde_json::from_str(asks.value(i)).unwrap(),
            })
            .collect()
    }
}

pub(crate) fn total_rows(objects: &BTreeMap<String, Vec<Row>>) -> usize {
    objects.values().map(Vec::len).sum()
}

/// Tick volumes are their indices: every index in `0..n` must appear exactly once.
pub(crate) fn assert_every_tick_once(objects: &BTreeMap<String, Vec<Row>>, n: i64) {
    let mut seen: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for (key, rows) in objects {
        for row in rows {
            if let Row::Tick { volume, .. } = row {
                seen.entry(*volume).or_default().push(key);
            }
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, keys)| keys.len() > 1).collect();
    assert!(twice.is_empty(), "records in two objects: {twice:?}");
    let missing: Vec<i64> = (0..n).filter(|i| !seen.contains_key(i)).collect();
    assert!(missing.is_empty(), "records in no object: {missing:?}");
    assert_eq!(seen.len() as i64, n);
}

/// Keys follow the seed's layout: the hour directory is the hour of every record inside, and
/// the name carries the first record's time, its partition and its offset, then the writer's
/// ownership generation (`data_<time>_<partition>_<offset>.g<generation>.parquet`).
pub(crate) fn assert_key_layout(objects: &BTreeMap<String, Vec<Row>>) {
    for (key, rows) in objects {
        let first = DateTime::<Utc>::from_timestamp_nanos(rows[0].nanos());
        let kind = if key.contains("/tick/") {
            "tick"
        } else {
            "orderbook"
        };
        let dir = format!(
            "market-data/{kind}/year={:04}/month={:02}/day={:02}/hour={:02}/data_{}_",
            first.year(),
            first.month(),
            first.day(),
            first.hour(),
            first.format("%Y%m%d%H%M%S")
        );
        assert!(key.starts_with(&dir), "{key} does not start with {dir}");
        let tail = key[dir.len()..].strip_suffix(".parquet").unwrap();
        let (tail, generation) = tail.rsplit_once(".g").unwrap();
        let (partition, offset) = tail.split_once('_').unwrap();
        assert!(
            partition.parse::<i32>().is_ok()
                && offset.parse::<i64>().is_ok()
                && generation.parse::<u64>().is_ok_and(|g| g > 0),
            "{key}"
        );
        for row in rows {
            let t = DateTime::<Utc>::from_timestamp_nanos(row.nanos());
            assert_eq!(
                (t.date_naive(), t.hour()),
                (first.date_naive(), first.hour()),
                "{key}"
            );
        }
    }
}

pub(crate) fn env_of<'a>(owned: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    owned.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// 16:58:00 on the day of BASE: a minute-spaced run of records crosses into the next hour.
const NEAR_HOUR_END: i64 = BASE + 2_726_000;

#[tokio::test]
async fn parquet_objects_hold_every_record_once_field_by_field() {
    let s3 = S3Server::start("lake");
    let schema = fresh_schema();
    let mut env = s3.env();
    env.push(("S3_BATCH_SIZE", "150".into()));
    env.push(("S3_BATCH_TIMEOUT_SEC", "1".into()));
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &env_of(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    let mut ticks: Vec<String> = (0..500).map(|i| tick(i, NEAR_HOUR_END)).collect();
    ticks.insert(17, "{not json".into());
    ticks.insert(300, json!({"symbol": "X", "price": "high"}).to_string());
    produce(&bootstrap, "market.tick", ticks).await;
    produce(
        &bootstrap,
        "market.orderbook",
        (0..200).map(|i| book(i, NEAR_HOUR_END)).collect(),
    )
    .await;
    let store = s3.client();
    until(Duration::from_secs(60), "700 Parquet rows", || async {
        total_rows(&objects(&store).await) == 700
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let objects = objects(&store).await;
    assert_eq!(total_rows(&objects), 700);
    assert_every_tick_once(&objects, 500);
    assert_key_layout(&objects);
    assert!(
        objects.keys().any(|k| k.contains("/hour=16/"))
            && objects.keys().any(|k| k.contains("/hour=17/")),
        "the records span two hours: {:?}",
        objects.keys().collect::<Vec<_>>()
    );

    let mut ticks: Vec<Row> = objects
        .values()
        .flatten()
        .filter(|r| matches!(r, Row::Tick { .. }))
        .cloned()
        .collect();
    ticks.sort_by_key(|r| match r {
        Row::Tick { volume, .. } => *volume,
        _ => unreachable!(),
    });
    for (i, row) in ticks.iter().enumerate() {
        let i = i as i64;
        assert_eq!(
            row,
            &Row::Tick {
                nanos: (NEAR_HOUR_END + i * 1000) * 1_000_000,
                symbol: format!("S{:03}", i % 7),
                price: 1000.0 + i as f64 / 4.0,
                volume: i,
                change: i as f64 / 8.0,
                change_rate: -(i as f64) / 100.0,
            }
        );
    }
    let mut books: Vec<Row> = objects
        .values()
        .flatten()
        .filter(|r| matches!(r, Row::Book { .. }))
        .cloned()
        .collect();
    books.sort_by_key(Row::nanos);
    assert_eq!(books.len(), 200);
    for (i, row) in books.iter().enumerate() {
        let i = i as i64;
        assert_eq!(
            row,
            &Row::Book {
                nanos: (NEAR_HOUR_END + i * 1000) * 1_000_000,
                symbol: format!("S{:03}", i % 7),
                bids: json!([{"price": 999.0, "quantity": i as f64}]),
                asks: json!([{"price": 1001.0, "quantity": (i + 1) as f64}]),
            }
        );
    }

    // The TimescaleDB path owns the DLQ: the two poison messages are dead-lettered once.
    until(
        Duration::from_secs(30),
        "the ticks in TimescaleDB",
        || async { count(&schema, "tick_data").await == 500 },
    )
    .await;
    let dlq: i64 = end_offsets(&bootstrap, "market.tick-dlq", 1).values().sum();
    assert_eq!(dlq, 2);

    assert_eq!(
        get(&p.base, "/health/recorder").await.1,
        "OK\nconsumer: healthy\ntimescaledb: healthy\ns3: healthy\n"
    );
    let health = get(&p.base, "/health").await.1;
    assert!(
        health.contains(&format!(
            "# s3: Parquet under s3://lake ({})/market-data",
            s3.endpoint()
        )),
        "{health}"
    );
    let metrics = get(&p.base, "/metrics").await.1;
    let uploads = format!(
        "actord_s3_uploads_total{{path=\"/recorder/s3\"}} {}",
        objects.len()
    );
    assert!(metrics.contains(&uploads), "{uploads} not in\n{metrics}");
    let mut bytes = 0;
    for key in objects.keys() {
        bytes += store.head(&key.as_str().into()).await.unwrap().size;
    }
    let uploaded = format!("actord_s3_uploaded_bytes_total{{path=\"/recorder/s3\"}} {bytes}");
    assert!(metrics.contains(&uploaded), "{uploaded} not in\n{metrics}");
    drop(p);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn an_s3_outage_is_survived_and_the_database_path_keeps_going() {
    let mut s3 = S3Server::start("outage");
    let schema = fresh_schema();
    let mut env = s3.env();
    env.push(("S3_BATCH_SIZE", "100".into()));
    env.push(("S3_BATCH_TIMEOUT_SEC", "1".into()));
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &env_of(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    let store = s3.client();
    produce(
        &bootstrap,
        "market.tick",
        (0..300).map(|i| tick(i, BASE)).collect(),
    )
    .await;
    until(Duration::from_secs(60), "the first objects", || async {
        total_rows(&objects(&store).await) == 300
    })
    .await;

    s3.stop();
    produce(
        &bootstrap,
        "market.tick",
        (300..800).map(|i| tick(i, BASE)).collect(),
    )
    .await;
    until(Duration::from_secs(60), "the outage on /health", || async {
        let (status, body) = get(&p.base, "/health").await;
        status == 503 && body.contains("recorder.s3: unhealthy")
    })
    .await;
    // Only the S3 path is held up: the database path has every record meanwhile.
    until(
        Duration::from_secs(60),
        "every tick in the database",
        || async { count(&schema, "tick_data").await == 800 },
    )
    .await;
    let health = get(&p.base, "/health").await.1;
    assert!(health.contains("recorder.timescaledb: healthy"), "{health}");
    tokio::time::sleep(Duration::from_secs(5)).await;

    s3.resume();
    until(
        Duration::from_secs(120),
        "every tick in Parquet after the outage",
        || async { total_rows(&objects(&store).await) == 800 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let objects = objects(&store).await;
    assert_every_tick_once(&objects, 800);
    until(Duration::from_secs(30), "healthy again", || async {
        get(&p.base, "/health").await.0 == 200
    })
    .await;
    let metrics = get(&p.base, "/metrics").await.1;
    assert!(
        metrics.contains("actord_s3_upload_errors_total{path=\"/recorder/s3\"}"),
        "{metrics}"
    );
    // The DLQ series exist from the start, at 0.
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("actord_dlq_records_total{"))
            .all(|l| l.ends_with(" 0")),
        "an outage sent records to the DLQ: {metrics}"
    );
    drop(p);
    drop_schema(&schema).await;
}

/// A Kafka broker in its own process with the recorder's topics.
fn broker() -> Tansu {
    let broker = Tansu::start();
    for (topic, partitions) in [
        ("market.tick", 3),
        ("market.orderbook", 3),
        ("market.tick-dlq", 1),
        ("market.orderbook-dlq", 1),
    ] {
        broker.create_topic(topic, partitions);
    }
    broker
}

#[tokio::test]
async fn a_sigkill_mid_batch_loses_and_duplicates_nothing_in_either_sink() {
    let s3 = S3Server::start("crash");
    let schema = fresh_schema();
    let broker = broker();
    let n = 4000i64;
    produce(
        broker.bootstrap(),
        "market.tick",
        (0..n).map(|i| tick(i, BASE)).collect(),
    )
    .await;
    let mut env = s3.env();
    env.push(("KAFKA_BROKERS", broker.bootstrap().to_owned()));
    env.push(("S3_BATCH_SIZE", "300".into()));
    env.push(("S3_BATCH_TIMEOUT_SEC", "1".into()));
    let toml = recorder_config(&schema, 5432, "");
    let store = s3.client();
    let mut first = Process::start(&toml, &[], &env_of(&env));
    until(
        Duration::from_secs(120),
        "rows and objects, not all",
        || async { count(&schema, "tick_data").await > 0 && !objects(&store).await.is_empty() },
    )
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    // Let the broker expire the killed members (session timeout 10 s): tansu 0.6 sometimes
    // completes a rebalance with a dead member still in the group and assigns it everything,
    // leaving the restarted member idle and stalling the other group's fetches with it.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let at_kill = (
        count(&schema, "tick_data").await,
        total_rows(&objects(&store).await),
    );

    // The second run reads in different cuts (a smaller batch), so the objects of the first
    // run's uncommitted batches must be replaced, not kept beside the new ones.
    env.retain(|(k, _)| *k != "S3_BATCH_SIZE");
    env.push(("S3_BATCH_SIZE", "170".into()));
    let second = Process::start(&toml, &[], &env_of(&env));
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let (rows, parquet) = (
            count(&schema, "tick_data").await,
            total_rows(&objects(&store).await),
        );
        if rows >= n && parquet >= n as usize {
            break;
        }
        if std::time::Instant::now() > deadline {
            let log = second.log();
            let _ = std::fs::write(std::env::temp_dir().join("actord-sigkill-second.log"), &log);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "after the restart: {rows} rows, {parquet} Parquet rows of {n} (killed at {at_kill:?})\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        crate::recorder::tick_rows(&schema).await,
        (n, n),
        "killed at {at_kill:?}"
    );
    let objects = objects(&store).await;
    assert_every_tick_once(&objects, n);
    assert_key_layout(&objects);
    drop(second);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn a_rerun_in_other_cuts_replaces_objects_instead_of_duplicating() {
    // A second group reads the same records again from the start and cuts them differently:
    // afterwards every record is still in exactly one object.
    let s3 = S3Server::start("rerun");
    let broker = broker();
    let n = 1000i64;
    produce(
        broker.bootstrap(),
        "market.tick",
        (0..n).map(|i| tick(i, BASE)).collect(),
    )
    .await;
    let store = s3.client();
    let mut replaced = 0;
    for (run, batch) in [("one", "100"), ("two", "70")] {
        let schema = fresh_schema();
        let mut env = s3.env();
        env.push(("KAFKA_BROKERS", broker.bootstrap().to_owned()));
        env.push(("KAFKA_GROUP_ID", format!("rerun-{run}")));
        env.push(("S3_BATCH_SIZE", batch.into()));
        env.push(("S3_BATCH_TIMEOUT_SEC", "1".into()));
        let mut p = Process::start(&recorder_config(&schema, 5432, ""), &[], &env_of(&env));
        wait_ready(&p.base).await;
        until(
            Duration::from_secs(120),
            "the run's records acknowledged",
            || async {
                let m = get(&p.base, "/metrics").await.1;
                m.lines()
                    .filter(|l| {
                        l.starts_with("actord_records_acked_total{") && l.contains("/recorder/s3")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
                    >= n as f64
            },
        )
        .await;
        let metrics = get(&p.base, "/metrics").await.1;
        replaced = metrics
            .lines()
            .find(|l| l.starts_with("actord_s3_objects_replaced_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .unwrap_or(0);
        p.signal("TERM");
        assert_eq!(
            p.wait_exit(Duration::from_secs(30)).code(),
            Some(0),
            "{}",
            p.log()
        );
        drop_schema(&schema).await;
    }
    let objects = objects(&store).await;
    assert_every_tick_once(&objects, n);
    assert!(replaced > 0, "the second run replaced no object");
    assert!(objects.keys().all(|k| k.contains("/hour=16/")));
}

/// A team moving from the recorder seed: its complete `.env`, the shipped configuration and
/// `--enable recorder,ftp-sync` against a real broker write exactly the produced ticks into
/// `public.tick_data` and the bucket, with no synthetic record beside them.
#[tokio::test]
async fn the_recorder_seed_env_writes_exactly_the_produced_ticks_into_public() {
    let database = fresh_schema();
    crate::support::pg()
        .await
        .batch_execute(&format!("CREATE DATABASE \"{database}\""))
        .await
        .unwrap();
    let s3 = S3Server::start("aipx-data-lake");
    let broker = broker();
    broker.create_topic("file-transfer-jobs", 1);
    broker.create_topic("file-transfer-jobs-dlq", 1);
    let n = 600i64;
    produce(
        broker.bootstrap(),
        "market.tick",
        (0..n).map(|i| tick(i, BASE)).collect(),
    )
    .await;
    let group = fresh_schema();
    let mut env = s3.env();
    env.retain(|(k, _)| *k != "S3_BUCKET");
    env.extend([
        ("KAFKA_BROKERS", broker.bootstrap().to_owned()),
        ("KAFKA_GROUP_ID", group),
        ("KAFKA_TOPICS", "market.tick,market.orderbook".into()),
        ("TIMESCALEDB_HOST", "127.0.0.1".into()),
        ("TIMESCALEDB_PORT", "5432".into()),
        ("TIMESCALEDB_USER", "postgres".into()),
        ("TIMESCALEDB_PASSWORD", "unused-with-trust-auth".into()),
        ("TIMESCALEDB_DB", database.clone()),
        ("S3_BUCKET", "aipx-data-lake".into()),
        ("S3_REGION", "us-east-1".into()),
        ("S3_WRITE_ENABLED", "true".into()),
        ("BATCH_SIZE", "1000".into()),
        ("BATCH_TIMEOUT_MS", "5000".into()),
        ("S3_BATCH_SIZE", "100000".into()),
        ("S3_BATCH_TIMEOUT_SEC", "3600".into()),
    ]);
    let mut p = Process::start(
        include_str!("../../supervision.toml"),
        &["--enable", "recorder,ftp-sync"],
        &env_of(&env),
    );
    wait_ready(&p.base).await;
    let db = {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port=5432 user=postgres dbname={database}"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        client
    };
    let rows = || async {
        db.query_one("SELECT count(*) FROM public.tick_data", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    until(
        Duration::from_secs(90),
        "the produced ticks in public.tick_data",
        || async { rows().await >= n },
    )
    .await;
    // Two more batch timeouts: a demo generator would have added rows by now.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let r = db
        .query_one(
            "SELECT count(*), count(DISTINCT volume), min(volume), max(volume) FROM tick_data",
            &[],
        )
        .await
        .unwrap();
    let got: (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!(got, (n, n, 0, n - 1), "exactly the produced ticks");
    let log = p.log();
    assert!(
        log.contains("demo generator off") && !log.contains("/recorder/demo"),
        "{log}"
    );
    // The seed's own queries answer.
    db.query_one("SELECT count(*) FROM tick_1min", &[])
        .await
        .expect("the seed's aggregate is where its queries look");
    // The hour-long S3 batch closes on a graceful stop: every tick in exactly one object.
    p.signal("TERM");
    assert!(
        p.wait_exit(Duration::from_secs(40)).success(),
        "{}",
        p.log()
    );
    let objects = objects(&s3.client()).await;
    assert_every_tick_once(&objects, n);
    drop(db);
    let _ = crate::support::pg()
        .await
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
        ))
        .await;
}

/// A container credentials endpoint on a loopback port, as the EKS Pod Identity agent (or an
/// ECS agent) serves it: answers a GET carrying the expected `Authorization` token with
/// temporary credentials, and counts the answers.
async fn credentials_endpoint(
    token: &str,
    key: &str,
    secret: &str,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (token, count) = (token.to_owned(), served.clone());
    let body = json!({
        "AccessKeyId": key,
        "SecretAccessKey": secret,
        "Token": "session-token-from-the-endpoint",
        "Expiration": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
    })
    .to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (token, count, body) = (token.clone(), count.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let request = String::from_utf8_lossy(&buf[..got]).to_string();
                let authorized = request.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        k.eq_ignore_ascii_case("authorization") && v.trim() == token
                    })
                });
                let reply = if request.starts_with("GET /creds ") && authorized {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, served)
}

/// No keys in the environment: the S3 connection takes its credentials from the container
/// credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI` with the token of
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`) and writes the objects with them.
#[tokio::test]
async fn container_credentials_sign_the_uploads_when_no_keys_are_set() {
    let s3 = S3Server::start("podidentity");
    let schema = fresh_schema();
    let (port, served) = credentials_endpoint(
        "pod-identity-token",
        crate::support::S3_ACCESS_KEY,
        crate::support::S3_SECRET_KEY,
    )
    .await;
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "pod-identity-token").unwrap();
    let mut env: Vec<(&'static str, String)> = s3
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET"))
        .collect();
    env.push((
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        format!("http://127.0.0.1:{port}/creds"),
    ));
    env.push((
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        token_file.display().to_string(),
    ));
    env.push(("S3_BATCH_SIZE", "50".into()));
    env.push(("S3_BATCH_TIMEOUT_SEC", "1".into()));
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &env_of(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce(
        &bootstrap,
        "market.tick",
        (0..100).map(|i| tick(i, BASE)).collect(),
    )
    .await;
    let store = s3.client();
    until(Duration::from_secs(60), "100 Parquet rows", || async {
        total_rows(&objects(&store).await) == 100
    })
    .await;
    assert_every_tick_once(&objects(&store).await, 100);
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    drop(p);
    drop_schema(&schema).await;
}

/// Two processes in one group while partitions move between them (a second member joins
/// mid-run, then the first leaves): afterwards every record is in exactly one object, whoever
/// wrote it, and no object of a newer owner was removed by an older one.
#[tokio::test]
async fn two_processes_with_moving_partitions_write_every_record_once() {
    let s3 = S3Server::start("group");
    let schema = fresh_schema();
    let broker = broker();
    let n = 3000i64;
    let part = |k: i64| {
        (k * n / 3..(k + 1) * n / 3)
            .map(|i| tick(i, BASE))
            .collect()
    };
    produce(broker.bootstrap(), "market.tick", part(0)).await;
    let mut env = s3.env();
    env.push(("KAFKA_BROKERS", broker.bootstrap().to_owned()));
    env.push(("S3_BATCH_SIZE", "97".into()));
    env.push(("S3_BATCH_TIMEOUT_SEC", "1".into()));
    let toml = recorder_config(&schema, 5432, "");
    let store = s3.client();
    let mut first = Process::start(&toml, &[], &env_of(&env));
    until(Duration::from_secs(60), "the first objects", || async {
        !objects(&store).await.is_empty()
    })
    .await;
    let second = Process::start(&toml, &[], &env_of(&env));
    wait_ready(&second.base).await;
    produce(broker.bootstrap(), "market.tick", part(1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.signal("TERM");
    assert_eq!(
        first.wait_exit(Duration::from_secs(40)).code(),
        Some(0),
        "{}",
        first.log()
    );
    produce(broker.bootstrap(), "market.tick", part(2)).await;
    let distinct = |o: &BTreeMap<String, Vec<Row>>| {
        o.values()
            .flatten()
            .filter_map(|r| match r {
                Row::Tick { volume, .. } => Some(*volume),
                Row::Book { .. } => None,
            })
            .collect::<std::collections::BTreeSet<i64>>()
            .len()
    };
    until(
        Duration::from_secs(90),
        "every record in an object",
        || async { distinct(&objects(&store).await) == n as usize },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let objects = objects(&store).await;
    assert_every_tick_once(&objects, n);
    assert_key_layout(&objects);
    // The partitions did change hands: some were written under more than one generation.
    let generations: std::collections::BTreeSet<&str> = objects
        .keys()
        .filter_map(|k| k.rsplit_once(".g")?.1.strip_suffix(".parquet"))
        .collect();
    assert!(generations.len() > 1, "{:?}", objects.keys());
    drop(second);
    drop_schema(&schema).await;
}
