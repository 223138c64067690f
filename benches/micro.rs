//! Micro-benchmarks of the decoders and encoders alone, so that a regression in one of them
//! shows without the noise of a broker, a database or an object store: each pipeline's message
//! decoder on the JSON its tests produce, the recorder's binary COPY rows, the Arrow batches and
//! the in-memory Parquet objects of the recorder and backfill, and a dead letter's body.
//!
//! `cargo bench --bench micro [-- FILTER]` (e.g. `-- decode/`); throughput is per record.

use std::collections::BTreeMap;
use std::hint::black_box;

use actord::pipelines::backfill::{encode, reading};
use actord::pipelines::commerce::model as commerce;
use actord::pipelines::recorder::copy::CopyRows;
use actord::pipelines::recorder::model::{self as market, Market};
use actord::pipelines::recorder::parquet::{self as market_parquet, Kind};
use actord::pipelines::{adaptive_card, ftp_sync, heartbeat};
use actord::sinks::objects::parquet::properties;
use actord::sources::kafka::dlq;
use actord_actors::record::{Acker, DeadLetter, Envelope, Origin, Poison, SourceRecord, Topic};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use chrono::{DateTime, SecondsFormat, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

// Only the generated sensor readings are used here.
#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;
use parquet::arrow::ArrowWriter;

/// Records per iteration of every benchmark but the Parquet ones.
const RECORDS: usize = 1_000;
/// Rows of one Parquet object (one row group).
const OBJECT_ROWS: usize = 10_000;

fn record(topic: &str, offset: usize, payload: String) -> SourceRecord {
    SourceRecord {
        origin: Origin {
            topic: Topic::intern(topic),
            partition: (offset % 8) as i32,
            offset: offset as i64,
            epoch: 1,
        },
        key: Some((offset % 13).to_string().into_bytes()),
        payload: Some(payload.into_bytes()),
        timestamp_ms: Some(1_763_568_754_000 + offset as i64),
        headers: Vec::new(),
    }
}

fn envelope<R>(record: R, source: SourceRecord) -> Envelope<R> {
    Envelope {
        record,
        source,
        acker: Acker::new(|_| {}),
        bytes: 0,
    }
}

fn millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

/// A tick as the recorder's integration tests produce it: seven symbols, a millisecond
/// `timestamp` one second apart.
fn tick(i: usize) -> String {
    let i = i as i64;
    serde_json::json!({
        "symbol": format!("S{:03}", i % 7), "price": 1000.0 + i as f64 / 4.0, "volume": i,
        "change": i as f64 / 8.0, "change_rate": -(i as f64) / 100.0,
        "timestamp": 1_763_568_754_000 + i * 1000,
    })
    .to_string()
}

/// An order book as the recorder's integration tests produce it (RFC 3339 `timestamp`), with
/// five levels a side as a real feed's top of book.
fn book(i: usize) -> String {
    let i = i as i64;
    let side = |from: f64, step: f64| {
        (0..5)
            .map(|l| serde_json::json!({"price": from + step * l as f64, "quantity": i + l}))
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "symbol": format!("S{:03}", i % 7),
        "timestamp": millis(1_763_568_754_000 + i * 1000).to_rfc3339(),
        "bids": side(999.0, -0.5), "asks": side(1001.0, 0.5),
    })
    .to_string()
}

fn order(i: usize) -> String {
    let (qty, price) = (1 + (i % 5) as i64, 1_000 * (1 + (i % 90) as i64));
    serde_json::json!({
        "order_id": format!("o{i:08}"), "user_id": format!("u{:05}", i % 5_000),
        "product_id": format!("p{:04}", i % 500), "quantity": qty, "unit_price": price,
        "total_amount": qty * price, "scenario": "popular_single",
        "created_at": millis(1_763_568_754_000 + i as i64 * 10).to_rfc3339(),
    })
    .to_string()
}

fn user(i: usize) -> String {
    let gender = ["M", "F"][i % 2];
    let grade = commerce::GRADES[i % commerce::GRADES.len()];
    serde_json::json!({
        "user_id": format!("u{i:05}"), "name": format!("user {i}"), "gender": gender,
        "age": 20 + i % 50, "address": "Seoul, Gangnam-gu", "grade": grade,
        "created_at": millis(1_763_568_754_000 + i as i64 * 1000).to_rfc3339(),
    })
    .to_string()
}

fn product(i: usize) -> String {
    let category = ["food", "fashion", "digital"][i % 3];
    serde_json::json!({
        "product_id": format!("p{i:04}"), "name": format!("product {i}"),
        "category": category, "price": 1_000 * (1 + i % 90),
        "created_at": millis(1_763_568_754_000 + i as i64 * 1000).to_rfc3339(),
    })
    .to_string()
}

fn transfer_job(i: usize) -> String {
    serde_json::json!({
        "job_id": format!("job-{i}"),
        "source": {"hostname": "SRC_FTP_SERVER1", "path": format!("/outgoing/{:03}/file-{i}.csv", i % 100)},
        "destination": {"hostname": "DST_FTP_SERVER1", "path": format!("/incoming/{:03}/file-{i}.csv", i % 100)},
    })
    .to_string()
}

fn records(topic: &str, payload: impl Fn(usize) -> String) -> Vec<SourceRecord> {
    (0..RECORDS).map(|i| record(topic, i, payload(i))).collect()
}

fn decoders(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(RECORDS as u64));
    let mut each =
        |name: &str, input: Vec<SourceRecord>, decode: &dyn Fn(&SourceRecord) -> bool| {
            // Every input must decode: a decoder that starts refusing them would otherwise be
            // measured on its error path.
            assert!(input.iter().all(decode), "{name}: every input decodes");
            g.bench_function(name, |b| {
                b.iter(|| {
                    for r in &input {
                        black_box(decode(black_box(r)));
                    }
                })
            });
        };
    each("tick", records("market.tick", tick), &|r| {
        market::decode(r).is_ok()
    });
    each("orderbook", records("market.orderbook", book), &|r| {
        market::decode(r).is_ok()
    });
    // Field names shared across messages, as a backfill run decodes.
    let names = std::cell::RefCell::new(reading::Names::default());
    each(
        "sensor_reading",
        records("fms-temphum", |i| common::reading(i as u64)),
        &|r| reading::decode_with(r, None, &mut names.borrow_mut()).is_ok(),
    );
    each("commerce_order", records("orders", order), &|r| {
        commerce::decode_order(r).is_ok()
    });
    each("commerce_user", records("users", user), &|r| {
        commerce::decode_user(r).is_ok()
    });
    each("commerce_product", records("products", product), &|r| {
        commerce::decode_product(r).is_ok()
    });
    let servers: ftp_sync::job::Roots = BTreeMap::from([
        ("SRC_FTP_SERVER1".to_owned(), Some("/outgoing".to_owned())),
        ("DST_FTP_SERVER1".to_owned(), None),
    ]);
    each(
        "transfer_job",
        records("file-transfer-jobs", transfer_job),
        &|r| ftp_sync::job::decode(r, &servers).is_ok(),
    );
    each(
        "sales_org_job",
        records("sales_org_queue", |i| {
            format!(
                r#"{{"run_id":1733450400000,"sales_org":"{}"}}"#,
                1000 + i % 40
            )
        }),
        &|r| adaptive_card::decode_sales_org_job(r).is_ok(),
    );
    each(
        "user_card_job",
        records("user_card_queue", |i| {
            format!(
                r#"{{"run_id":1733450400000,"user_id":"u{:05}","sales_org":"{}"}}"#,
                i,
                1000 + i % 40
            )
        }),
        &|r| adaptive_card::decode_user_job(r).is_ok(),
    );
    each(
        "heartbeat",
        records("actord-heartbeat", |i| {
            format!(
                r#"{{"seq":{i},"at":"{}"}}"#,
                millis(1_763_568_754_000 + i as i64 * 1000)
                    .to_rfc3339_opts(SecondsFormat::Millis, true)
            )
        }),
        &|r| heartbeat::decode(r).is_ok(),
    );
    g.finish();
}

fn decoded(topic: &str, payload: impl Fn(usize) -> String, n: usize) -> Vec<Envelope<Market>> {
    (0..n)
        .map(|i| {
            let source = record(topic, i, payload(i));
            envelope(market::decode(&source).unwrap(), source)
        })
        .collect()
}

fn copy_rows(c: &mut Criterion) {
    let mut g = c.benchmark_group("copy");
    g.throughput(Throughput::Elements(RECORDS as u64));
    for (name, input) in [
        ("tick", decoded("market.tick", tick, RECORDS)),
        ("orderbook", decoded("market.orderbook", book, RECORDS)),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut rows = CopyRows::new();
                let mut sent = 0;
                for e in &input {
                    match &e.record {
                        Market::Tick(t) => rows.tick(t).unwrap(),
                        Market::OrderBook(o) => rows.order_book(o).unwrap(),
                    }
                    // Taken in chunks as the writer sends them.
                    if rows.len() > 4096 {
                        sent += rows.take().len();
                    }
                }
                sent + rows.finish().len()
            })
        });
    }
    g.finish();
}

/// `batch` written as one Parquet object in memory, as the object sink encodes it.
fn object(schema: SchemaRef, batch: &RecordBatch) -> Vec<u8> {
    let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(properties(OBJECT_ROWS))).unwrap();
    w.write(batch).unwrap();
    w.into_inner().unwrap()
}

fn parquet_objects(c: &mut Criterion) {
    let mut g = c.benchmark_group("parquet");
    g.throughput(Throughput::Elements(OBJECT_ROWS as u64));
    for (name, kind, input) in [
        (
            "tick",
            Kind::Tick,
            decoded("market.tick", tick, OBJECT_ROWS),
        ),
        (
            "orderbook",
            Kind::OrderBook,
            decoded("market.orderbook", book, OBJECT_ROWS),
        ),
    ] {
        let refs: Vec<&Envelope<Market>> = input.iter().collect();
        g.bench_function(format!("{name}_batch"), |b| {
            b.iter(|| market_parquet::batch(kind, black_box(&refs)).unwrap())
        });
        let batch = market_parquet::batch(kind, &refs).unwrap();
        g.bench_function(format!("{name}_object"), |b| {
            b.iter(|| object(market_parquet::schema(kind), black_box(&batch)).len())
        });
    }
    let readings: Vec<Envelope<reading::Reading>> = (0..OBJECT_ROWS)
        .map(|i| {
            let source = record("fms-temphum", i, common::reading(i as u64));
            envelope(reading::decode(&source, None).unwrap(), source)
        })
        .collect();
    let refs: Vec<&Envelope<reading::Reading>> = readings.iter().collect();
    g.bench_function("sensor_reading_batch", |b| {
        b.iter(|| encode::batch(black_box(&refs)).unwrap())
    });
    let batch = encode::batch(&refs).unwrap();
    g.bench_function("sensor_reading_object", |b| {
        b.iter(|| object(batch.schema(), black_box(&batch)).len())
    });
    g.finish();
}

fn dead_letters(c: &mut Criterion) {
    let mut g = c.benchmark_group("dlq");
    g.throughput(Throughput::Elements(RECORDS as u64));
    let letters: Vec<DeadLetter> = (0..RECORDS)
        .map(|i| DeadLetter {
            source: record("file-transfer-jobs", i, transfer_job(i)),
            acker: Acker::new(|_| {}),
            poison: Poison::new(
                "UnknownHostname",
                "source.hostname \"SRC_FTP_SERVER9\" is not a configured server",
            ),
            stage: "decode",
            retry_count: 0,
        })
        .collect();
    let now = millis(1_763_568_754_000);
    g.bench_function("body", |b| {
        b.iter(|| {
            letters
                .iter()
                .map(|l| dlq::body(black_box(l), now, 1_000_000).len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(micro, decoders, copy_rows, parquet_objects, dead_letters);
criterion_main!(micro);
