//! The backfill pipeline: `actord backfill --mode ...` run as the binary against a Kafka
//! broker (librdkafka's mock cluster in this process, which cannot look offsets up by time)
//! and a real S3-compatible server (s3s-fs) configured through the seed's MINIO_* names.
//! Objects are read back with an S3 client and a Parquet reader, as an analytics job would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::kafka::{committed, embedded, end_offsets, read_until};
use crate::support::{run_to_end, unique, S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};

pub(crate) const PARTITIONS: i32 = 3;

/// One produced message: where it landed and what it said.
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    value: Value,
}

/// Produces each `(partition, message)` and returns where each landed.
pub(crate) async fn produce(bootstrap: &str, topic: &str, messages: &[(i32, Value)]) -> Vec<Sent> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut waits = Vec::new();
    let bodies: Vec<String> = messages.iter().map(|(_, v)| v.to_string()).collect();
    for ((p, _), body) in messages.iter().zip(&bodies) {
        let rec = FutureRecord::<str, str>::to(topic)
            .payload(body)
            .partition(*p);
        waits.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
    }
    let mut out = Vec::new();
    for (w, (_, value)) in waits.into_iter().zip(messages) {
        let d = w.await.unwrap().map_err(|(e, _)| e).unwrap();
        let (partition, offset) = (d.partition, d.offset);
        out.push(Sent {
            partition,
            offset,
            value: value.clone(),
        });
    }
    out
}

/// A reading with sequence number `seq` at `time`.
fn reading(seq: i64, time: &str) -> Value {
    json!({"sensor_id": format!("fms-{:02}", seq % 4), "seq": seq, "temperature": 20.0 + (seq % 10) as f64 / 4.0, "humidity": 40 + seq % 7, "timestamp": time})
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// `n` readings a minute apart from `start`, spread over the partitions by sequence number.
pub(crate) fn readings(from_seq: i64, n: i64, start: &str) -> Vec<(i32, Value)> {
    readings_over(
        from_seq,
        n,
        start,
        PARTITIONS,
        chrono::TimeDelta::minutes(1),
    )
}

/// [`readings`] `step` apart, spread over `partitions`.
pub(crate) fn readings_over(
    from_seq: i64,
    n: i64,
    start: &str,
    partitions: i32,
    step: chrono::TimeDelta,
) -> Vec<(i32, Value)> {
    let start = at(start);
    (from_seq..from_seq + n)
        .map(|s| {
            let t = start + step * s as i32;
            (
                (s % partitions as i64) as i32,
                reading(s, &t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            )
        })
        .collect()
}

/// A backfill setup: a broker with the topic and its DLQ topic, a bucket on s3s-fs, a group.
pub(crate) struct Setup {
    kafka: actord::sources::kafka::embedded::EmbeddedKafka,
    s3: S3Server,
    pub(crate) topic: String,
    pub(crate) group: String,
}

impl Setup {
    pub(crate) fn new() -> Setup {
        Setup::with_partitions(PARTITIONS)
    }

    /// A setup whose topic has `partitions` (the embedded broker keeps at most 100,000
    /// records and 5 MiB of each partition).
    pub(crate) fn with_partitions(partitions: i32) -> Setup {
        let topic = unique("fms-temphum");
        let kafka = embedded(&topic, partitions);
        Setup {
            kafka,
            s3: S3Server::start(&unique("fms").to_lowercase().replace('_', "-")),
            topic,
            group: unique("backfill-loader"),
        }
    }

    pub(crate) fn bootstrap(&self) -> &str {
        self.kafka.bootstrap()
    }

    /// Runs `actord backfill <args>` with the seed's environment; returns (status, stdout,
    /// stderr).
    async fn backfill(&self, args: &[&str], batch_size: u32) -> (i32, String, String) {
        let toml = format!(
            "[runtime]\nshutdown_timeout = \"10s\"\n[pipelines.backfill]\nbatch_size = {batch_size}\nrow_group_size = 5\n"
        );
        let mut argv = vec!["backfill".to_owned()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let env: Vec<(String, String)> = vec![
            ("KAFKA_BROKERS".into(), self.bootstrap().to_owned()),
            ("KAFKA_TOPIC".into(), self.topic.clone()),
            ("KAFKA_GROUP_ID".into(), self.group.clone()),
            // host:port, as the seed allows.
            (
                "MINIO_ENDPOINT".into(),
                format!("127.0.0.1:{}", self.s3.port),
            ),
            ("MINIO_BUCKET".into(), self.s3.bucket.clone()),
            ("MINIO_ACCESS_KEY".into(), S3_ACCESS_KEY.into()),
            ("MINIO_SECRET_KEY".into(), S3_SECRET_KEY.into()),
        ];
        tokio::task::spawn_blocking(move || {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run_to_end(&argv, Some(&toml), &env)
        })
        .await
        .unwrap()
    }

    pub(crate) async fn ok(&self, args: &[&str], batch_size: u32) -> String {
        let (code, out, err) = self.backfill(args, batch_size).await;
        assert_eq!(code, 0, "backfill {args:?} failed:\n{out}\n{err}");
        out
    }

    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        self.s3.client()
    }
}

/// The keys of the bucket's data objects (a listing, nothing read).
pub(crate) async fn object_keys(store: &Arc<dyn ObjectStore>) -> Vec<String> {
    let listing: Vec<_> = store.list(None).try_collect().await.unwrap();
    listing
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|k| k.ends_with(".parquet"))
        .collect()
}

/// Every data object of the bucket: key → its batches. Read several at a time: s3s-fs answers
/// many GETs on a kept-alive connection about 40 ms late, which one by one add up to minutes
/// for a few thousand objects.
pub(crate) async fn objects(store: &Arc<dyn ObjectStore>) -> BTreeMap<String, Vec<RecordBatch>> {
    let keys = object_keys(store).await;
    futures::stream::iter(keys)
        .map(|key| async move {
            let bytes = store
                .get(&object_store::path::Path::from(key.as_str()))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap_or_else(|e| panic!("{key} is not Parquet: {e}"))
                .build()
                .unwrap();
            (key, reader.map(Result::unwrap).collect())
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// The `seq` values in each object.
fn seqs(objects: &BTreeMap<String, Vec<RecordBatch>>) -> BTreeMap<i64, Vec<String>> {
    let mut seen: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (key, batches) in objects {
        for b in batches {
            let seq = b.column_by_name("seq").unwrap().as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                seen.entry(seq.value(i)).or_default().push(key.clone());
            }
        }
    }
    seen
}

fn assert_each_once(objects: &BTreeMap<String, Vec<RecordBatch>>, want: impl Iterator<Item = i64>) {
    let seen = seqs(objects);
    let twice: Vec<_> = seen.iter().filter(|(_, keys)| keys.len() > 1).collect();
    assert!(twice.is_empty(), "records in two objects: {twice:?}");
    let want: Vec<i64> = want.collect();
    let got: Vec<i64> = seen.keys().copied().collect();
    assert_eq!(got, want, "records archived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_twice_writes_the_new_records_only_once() {
    let s = Setup::new();
    produce(
        s.bootstrap(),
        &s.topic,
        &readings(0, 30, "2025-11-19T01:00:00Z"),
    )
    .await;
    let first = s.ok(&["--mode", "incremental"], 1000).await;
    assert!(first.contains("incremental: 30 records"), "{first}");
    assert_each_once(&objects(&s.store()).await, 0..30);
    let end = end_offsets(s.bootstrap(), &s.topic, PARTITIONS);
    assert_eq!(
        committed(s.bootstrap(), &s.group, &s.topic, PARTITIONS),
        end
    );

    produce(
        s.bootstrap(),
        &s.topic,
        &readings(30, 20, "2025-11-19T01:00:00Z"),
    )
    .await;
    let second = s.ok(&["--mode", "incremental"], 1000).await;
    assert!(second.contains("incremental: 20 records"), "{second}");
    assert_each_once(&objects(&s.store()).await, 0..50);
    // Nothing new: a third run writes nothing and succeeds.
    let third = s.ok(&[], 1000).await;
    assert!(third.contains("incremental: 0 records"), "{third}");
    assert_eq!(
        committed(s.bootstrap(), &s.group, &s.topic, PARTITIONS),
        end_offsets(s.bootstrap(), &s.topic, PARTITIONS)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_after_incremental_leaves_each_record_in_exactly_one_object() {
    let s = Setup::new();
    produce(
        s.bootstrap(),
        &s.topic,
        &readings(0, 60, "2025-11-19T10:00:00Z"),
    )
    .await;
    // Small batches: many objects, cut at other offsets than the fresh run's.
    s.ok(&["--mode", "incremental"], 7).await;
    let before = objects(&s.store()).await;
    assert_each_once(&before, 0..60);
    assert!(before.len() > 9, "{} objects", before.len());

    produce(
        s.bootstrap(),
        &s.topic,
        &readings(60, 15, "2025-11-19T10:00:00Z"),
    )
    .await;
    let out = s.ok(&["--mode", "fresh"], 1000).await;
    assert!(out.contains("fresh: 75 records"), "{out}");
    let after = objects(&s.store()).await;
    assert_each_once(&after, 0..75);
    // One object per partition and Seoul day now (every reading falls on 2025-11-19 KST).
    assert_eq!(after.len(), PARTITIONS as usize, "{:?}", after.keys());
    // The group continues from the end: the next incremental run has nothing to do.
    let next = s.ok(&["--mode", "incremental"], 1000).await;
    assert!(next.contains("incremental: 0 records"), "{next}");
}

/// The figures of a summary line: records, objects, bytes, first and last record time.
fn summary_figures(line: &str) -> (u64, u64, u64, Option<String>, Option<String>) {
    let number = |before: &str| -> u64 {
        let end = line
            .find(before)
            .unwrap_or_else(|| panic!("no {before:?} in {line}"));
        let start = line[..end].rfind([' ', '(']).map_or(0, |i| i + 1);
        line[start..end].parse().unwrap()
    };
    let range = line.split_once(", records from ").map(|(_, r)| {
        let (first, rest) = r.split_once(" to ").unwrap();
        let last = rest.rsplit_once(", ").unwrap().0;
        (first.to_owned(), last.to_owned())
    });
    (
        number(" records"),
        number(" objects"),
        number(" bytes"),
        range.clone().map(|r| r.0),
        range.map(|r| r.1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_what_the_sink_wrote_not_what_the_run_read() {
    let s = Setup::new();
    // Readings of 20 kB into partition 0: the mock cluster keeps 5 MiB per partition, so the
    // second 150 move the log start into the first run's object.
    let pad = "x".repeat(20_000);
    let start = at("2025-11-19T01:00:00Z");
    let message = |seq: i64| {
        let t = (start + chrono::TimeDelta::seconds(seq))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        (
            0,
            json!({"seq": seq, "temperature": 21.0, "pad": pad, "timestamp": t}),
        )
    };
    produce(
        s.bootstrap(),
        &s.topic,
        &(0..150).map(message).collect::<Vec<_>>(),
    )
    .await;
    let first = s.ok(&["--mode", "incremental"], 1000).await;
    assert_eq!(summary_figures(&first).0, 150, "{first}");
    let before = objects(&s.store()).await;
    assert_eq!(before.len(), 1, "{:?}", before.keys());
    produce(
        s.bootstrap(),
        &s.topic,
        &(150..300).map(message).collect::<Vec<_>>(),
    )
    .await;
    let low = {
        let c: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", s.bootstrap())
            .create()
            .unwrap();
        rdkafka::consumer::Consumer::fetch_watermarks(&c, &s.topic, 0, Duration::from_secs(10))
            .unwrap()
            .0
    };
    assert!(low > 0 && low < 150, "log start {low}");
    // A fresh run reads 300 - low records; those up to 149 are in the first object already,
    // which it keeps (it starts below the log start) and does not write again.
    let (code, out, err) = s.backfill(&["--mode", "fresh"], 1000).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("lease is \"none\""),
        "no warning about the lease: {err}"
    );
    let after = objects(&s.store()).await;
    assert_each_once(&after, 0..300);
    let new: BTreeMap<&String, &Vec<RecordBatch>> = after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .collect();
    let rows: usize = new
        .values()
        .flat_map(|b| b.iter())
        .map(|b| b.num_rows())
        .sum();
    let listing: Vec<_> = s.store().list(None).try_collect().await.unwrap();
    let bytes: u64 = listing
        .iter()
        .filter(|m| new.contains_key(&m.location.to_string()))
        .map(|m| m.size)
        .sum();
    let kst = |seq: i64| {
        (start + chrono::TimeDelta::seconds(seq))
            .with_timezone(&actord::pipelines::backfill::mode::KST)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
    };
    assert_eq!(
        summary_figures(&out),
        (
            rows as u64,
            new.len() as u64,
            bytes,
            Some(kst(150)),
            Some(kst(299))
        ),
        "{out}"
    );
    assert_eq!((rows, new.len()), (150, 1), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_from_a_date_starts_at_its_first_record_in_seoul_time() {
    let s = Setup::new();
    // Hourly readings from 2025-11-18 12:00 UTC; 2025-11-19 00:00 KST is 2025-11-18 15:00 UTC.
    let start = at("2025-11-18T12:00:00Z");
    let messages: Vec<(i32, Value)> = (0..12)
        .map(|i| {
            let t = start + chrono::TimeDelta::hours(i);
            (
                (i % PARTITIONS as i64) as i32,
                reading(i, &t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            )
        })
        .collect();
    produce(s.bootstrap(), &s.topic, &messages).await;
    // The mock cluster answers every time look-up with the end: the client-side skip decides.
    let out = s
        .ok(&["--mode", "continue", "--from-date", "2025-11-19"], 1000)
        .await;
    assert!(out.contains("9 records"), "{out}");
    assert!(out.contains("3 skipped"), "{out}");
    assert_each_once(&objects(&s.store()).await, 3..12);
    // With an offset the date is read as written: 18:00 UTC is 03:00 KST.
    let s2 = Setup::new();
    produce(s2.bootstrap(), &s2.topic, &messages).await;
    s2.ok(
        &["--mode", "continue", "--from-date", "2025-11-18T18:00Z"],
        1000,
    )
    .await;
    assert_each_once(&objects(&s2.store()).await, 6..12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_read_back_matches_the_input_field_by_field_in_kst_day_partitions() {
    let s = Setup::new();
    // Around midnight in Seoul (15:00 UTC), in several timestamp forms, with a field that
    // appears late and one whose type conflicts.
    let messages = vec![
        (
            0,
            json!({"seq": 0, "sensor_id": "a", "temperature": 21.5, "humidity": 40, "ok": true, "timestamp": "2025-11-19T14:59:59.250Z"}),
        ),
        (
            0,
            json!({"seq": 1, "sensor_id": "b", "temperature": 22, "humidity": 41, "ok": false, "ts": 1763564400}),
        ),
        (
            0,
            json!({"seq": 2, "sensor_id": "c", "temperature": 23.25, "humidity": "high", "time": 1763564401000_i64, "battery": 97}),
        ),
        (
            1,
            json!({"seq": 3, "sensor_id": "d", "temperature": -1.5, "event_time": "2025-11-20T00:00:02+09:00"}),
        ),
    ];
    let sent = produce(s.bootstrap(), &s.topic, &messages).await;
    s.ok(&["--mode", "fresh"], 1000).await;
    let objs = objects(&s.store()).await;
    let keys: Vec<&String> = objs.keys().collect();
    // Seoul days: seq 0 is 23:59:59 on the 19th, the others just after midnight on the 20th.
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys[0].starts_with("year=2025/month=11/day=19/data_20251119235959_0_0"),
        "{keys:?}"
    );
    assert!(
        keys[1].starts_with("year=2025/month=11/day=20/data_20251120000000_0_1"),
        "{keys:?}"
    );
    assert!(
        keys[2].starts_with("year=2025/month=11/day=20/data_20251120000002_1_0"),
        "{keys:?}"
    );
    let want_times = [
        "2025-11-19T14:59:59.250Z",
        "2025-11-19T15:00:00Z",
        "2025-11-19T15:00:01Z",
        "2025-11-19T15:00:02Z",
    ];
    let mut rows = 0;
    for batches in objs.values() {
        for b in batches {
            let schema = b.schema();
            let dt = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
            assert_eq!(
                dt("timestamp_utc"),
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
            );
            assert_eq!(
                dt("timestamp_kst"),
                DataType::Timestamp(TimeUnit::Nanosecond, Some("Asia/Seoul".into()))
            );
            let seq = b.column_by_name("seq").unwrap().as_primitive::<Int64Type>();
            let utc = b
                .column_by_name("timestamp_utc")
                .unwrap()
                .as_primitive::<TimestampNanosecondType>();
            let kst = b
                .column_by_name("timestamp_kst")
                .unwrap()
                .as_primitive::<TimestampNanosecondType>();
            let part = b
                .column_by_name("kafka_partition")
                .unwrap()
                .as_primitive::<Int32Type>();
            let off = b
                .column_by_name("kafka_offset")
                .unwrap()
                .as_primitive::<Int64Type>();
            let temp = b
                .column_by_name("temperature")
                .unwrap()
                .as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                rows += 1;
                let n = seq.value(i) as usize;
                let input = &sent[n];
                assert_eq!(
                    (part.value(i), off.value(i)),
                    (input.partition, input.offset)
                );
                let want = at(want_times[n]).timestamp_nanos_opt().unwrap();
                assert_eq!((utc.value(i), kst.value(i)), (want, want), "seq {n}");
                assert_eq!(temp.value(i), input.value["temperature"].as_f64().unwrap());
                let sensor = b.column_by_name("sensor_id").unwrap().as_string::<i32>();
                assert_eq!(sensor.value(i), input.value["sensor_id"].as_str().unwrap());
                // A field absent from a message is null in its row.
                if let Some(h) = b.column_by_name("humidity") {
                    match &input.value.get("humidity") {
                        None => assert!(h.is_null(i)),
                        Some(v) => match h.data_type() {
                            DataType::Int64 => assert_eq!(
                                h.as_primitive::<Int64Type>().value(i),
                                v.as_i64().unwrap()
                            ),
                            DataType::Utf8 => assert_eq!(
                                h.as_string::<i32>().value(i),
                                v.as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| v.to_string())
                            ),
                            other => panic!("humidity as {other}"),
                        },
                    }
                }
                if let Some(ok) = b.column_by_name("ok") {
                    match input.value.get("ok") {
                        None => assert!(ok.is_null(i)),
                        Some(v) => assert_eq!(ok.as_boolean().value(i), v.as_bool().unwrap()),
                    }
                }
            }
        }
    }
    assert_eq!(rows, 4);
    // The object holding seqs 1 and 2 (partition 0 on the 20th) has a conflicting humidity
    // (41 and "high"): it is text there; the first object keeps it an integer.
    let day20 = &objs[keys[1]][0];
    assert_eq!(
        day20.column_by_name("humidity").unwrap().data_type(),
        &DataType::Utf8
    );
    assert_eq!(
        day20.column_by_name("battery").unwrap().data_type(),
        &DataType::Int64
    );
    let day19 = &objs[keys[0]][0];
    assert_eq!(
        day19.column_by_name("humidity").unwrap().data_type(),
        &DataType::Int64
    );
    assert!(day19.column_by_name("battery").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_a_usable_timestamp_go_to_the_dlq_and_the_run_moves_on() {
    let s = Setup::new();
    let mut messages = readings(0, 6, "2025-11-19T01:00:00Z");
    messages.insert(2, (0, json!({"seq": 100, "temperature": 20.0})));
    messages.insert(4, (1, json!({"seq": 101, "timestamp": "not a time"})));
    produce(s.bootstrap(), &s.topic, &messages).await;
    let out = s.ok(&["--mode", "incremental"], 1000).await;
    assert!(
        out.contains("6 records") && out.contains("2 dead letters"),
        "{out}"
    );
    assert_each_once(&objects(&s.store()).await, 0..6);
    let dlq = format!("{}-dlq", s.topic);
    let letters = tokio::task::spawn_blocking({
        let b = s.bootstrap().to_owned();
        move || read_until(&b, &dlq, |r| r.len() >= 2)
    })
    .await
    .unwrap();
    let mut originals: Vec<i64> = letters
        .iter()
        .map(|(v, _)| v["original_message"]["seq"].as_i64().unwrap())
        .collect();
    originals.sort();
    assert_eq!(originals, vec![100, 101]);
    assert!(letters
        .iter()
        .all(|(v, _)| v["error"].as_str().unwrap().contains("Timestamp")));
    assert_eq!(
        committed(s.bootstrap(), &s.group, &s.topic, PARTITIONS),
        end_offsets(s.bootstrap(), &s.topic, PARTITIONS)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_date_or_a_date_with_another_mode_is_a_configuration_error() {
    let s = Setup::new();
    let (code, _, err) = s
        .backfill(&["--mode", "continue", "--from-date", "19.11.2025"], 10)
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pipelines.backfill.from_date"), "{err}");
    let (code, _, err) = s
        .backfill(&["--mode", "fresh", "--from-date", "2025-11-19"], 10)
        .await;
    assert_eq!(code, 2, "{err}");
    drop(s);
}

/// Rows of every data file under `dir`, by `seq`.
fn local_seqs(dir: &std::path::Path) -> BTreeMap<i64, usize> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let mut seen = BTreeMap::new();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let seq = b.column_by_name("seq").unwrap().as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                *seen.entry(seq.value(i)).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// The backfill entry of `/api/schedules`.
async fn entry(base: &str) -> Value {
    let (status, body) = crate::support::get(base, "/api/schedules").await;
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    all["backfill"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_runs_at_start_and_on_request_and_the_tree_shows_the_runs() {
    let topic = unique("fms-temphum");
    let kafka = embedded(&topic, PARTITIONS);
    produce(
        kafka.bootstrap(),
        &topic,
        &readings(0, 25, "2025-11-19T01:00:00Z"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[runtime]\nenable = [\"backfill\"]\nshutdown_timeout = \"10s\"\n[kafka]\nbrokers = \"{}\"\n\
         [pipelines.backfill]\ntopic = \"{topic}\"\ngroup = \"{}\"\ndir = \"{}\"\n\
         [pipelines.backfill.schedule]\nevery = \"3d\"\n",
        kafka.bootstrap(),
        unique("backfill-loader"),
        dir.path().display()
    );
    let app = crate::support::InProcess::start(&toml).await;
    // RUN_ON_START defaults to true.
    crate::support::until(Duration::from_secs(60), "the run at start", || async {
        entry(&app.base).await["last_outcome"]["outcome"] == "succeeded"
    })
    .await;
    let e = entry(&app.base).await;
    assert_eq!(e["schedule"], "every 3d");
    assert_eq!(e["last_outcome"]["summary"]["records"], 25);
    let note = e["last_outcome"]["summary"]["note"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(note.starts_with("incremental: 25 records"), "{note}");
    let files = dir.path().join("fms-temphum");
    assert_eq!(local_seqs(&files), (0..25).map(|s| (s, 1)).collect());
    // Between runs the subtree is gone; the pipeline node carries the schedule.
    let tree = crate::support::tree(&app.base).await;
    let paths: Vec<String> = crate::support::flatten(&tree)
        .iter()
        .map(|a| a["path"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        paths.contains(&"/backfill/scheduler".to_owned()),
        "{paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.starts_with("/backfill/run")),
        "{paths:?}"
    );

    produce(
        kafka.bootstrap(),
        &topic,
        &readings(25, 10, "2025-11-19T01:00:00Z"),
    )
    .await;
    let (status, body) = crate::support::post(&app.base, "/api/pipelines/backfill/run", None).await;
    assert_eq!(status, 200, "{body}");
    crate::support::until(Duration::from_secs(60), "the requested run", || async {
        entry(&app.base).await["runs"]["succeeded"] == 2
    })
    .await;
    assert_eq!(
        entry(&app.base).await["last_outcome"]["summary"]["records"],
        10
    );
    assert_eq!(local_seqs(&files), (0..35).map(|s| (s, 1)).collect());
    let (_, metrics) = crate::support::get(&app.base, "/metrics").await;
    assert!(
        metrics.contains("actord_backfill_runs_succeeded_total{mode=\"incremental\"} 2"),
        "{metrics}"
    );
    app.shutdown().await;
}

impl Setup {
    /// `actord backfill <args>` as a running process, with the seed's environment.
    pub(crate) fn start(&self, args: &[&str], batch_size: u32) -> crate::support::Process {
        let toml = format!(
            "[runtime]\nshutdown_timeout = \"10s\"\n[pipelines.backfill]\nbatch_size = {batch_size}\n"
        );
        let mut argv = vec!["backfill"];
        argv.extend_from_slice(args);
        let endpoint = format!("127.0.0.1:{}", self.s3.port);
        let env = [
            ("KAFKA_BROKERS", self.bootstrap()),
            ("KAFKA_TOPIC", self.topic.as_str()),
            ("KAFKA_GROUP_ID", self.group.as_str()),
            ("MINIO_ENDPOINT", endpoint.as_str()),
            ("MINIO_BUCKET", self.s3.bucket.as_str()),
            ("MINIO_ACCESS_KEY", S3_ACCESS_KEY),
            ("MINIO_SECRET_KEY", S3_SECRET_KEY),
        ];
        crate::support::Process::start(&toml, &argv, &env)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_outage_during_a_run_is_retried_and_loses_nothing() {
    let mut s = Setup::new();
    produce(
        s.bootstrap(),
        &s.topic,
        &readings(0, 2_000, "2025-11-19T01:00:00Z"),
    )
    .await;
    // The store is down when the run reaches its first write: the writer retries.
    s.s3.stop();
    let mut p = s.start(&["--mode", "incremental"], 500);
    crate::support::until(Duration::from_secs(60), "a retried write", || async {
        p.log().contains("sink write failed, retrying")
    })
    .await;
    s.s3.resume();
    let status = p.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{}", p.log());
    assert_each_once(&objects(&s.store()).await, 0..2_000);
    assert_eq!(
        committed(s.bootstrap(), &s.group, &s.topic, PARTITIONS),
        end_offsets(s.bootstrap(), &s.topic, PARTITIONS)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_run_and_the_next_run_lose_and_duplicate_nothing() {
    let s = Setup::new();
    let n = 20_000;
    for chunk in (0..n).step_by(5_000) {
        produce(
            s.bootstrap(),
            &s.topic,
            &readings(chunk, 5_000, "2025-11-17T01:00:00Z"),
        )
        .await;
    }
    let mut p = s.start(&["--mode", "incremental"], 400);
    let store = s.store();
    crate::support::until(Duration::from_secs(120), "the first objects", || async {
        let listed: Vec<_> = store.list(None).try_collect().await.unwrap_or_default();
        listed
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .count()
            >= 6
    })
    .await;
    p.signal("KILL");
    let _ = p.wait_exit(Duration::from_secs(10));
    // The next run resumes from the last commit and replaces what the killed one left
    // uncommitted.
    let out = s.ok(&["--mode", "incremental"], 700).await;
    assert!(out.starts_with("incremental: "), "{out}");
    assert_each_once(&objects(&store).await, 0..n);
    assert_eq!(
        committed(s.bootstrap(), &s.group, &s.topic, PARTITIONS),
        end_offsets(s.bootstrap(), &s.topic, PARTITIONS)
    );
}
