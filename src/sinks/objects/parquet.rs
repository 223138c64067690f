//! Parquet encoding of ticks and order books, with the seed's columns exactly:
//! ticks `timestamp` INT64 (ns since the epoch), `symbol` STRING, `price` DOUBLE, `volume` INT64,
//! `change` DOUBLE, `change_rate` DOUBLE; order books `timestamp` INT64 (ns), `symbol` STRING,
//! `bids` STRING (JSON), `asks` STRING (JSON). Snappy compression.

use std::sync::Arc;

use actord_actors::record::Envelope;
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::keys::Kind;
use crate::pipelines::recorder::model::Market;

pub fn schema(kind: Kind) -> SchemaRef {
    let fields = match kind {
        Kind::Tick => vec![
            Field::new("timestamp", DataType::Int64, false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("price", DataType::Float64, false),
            Field::new("volume", DataType::Int64, false),
            Field::new("change", DataType::Float64, false),
            Field::new("change_rate", DataType::Float64, false),
        ],
        Kind::OrderBook => vec![
            Field::new("timestamp", DataType::Int64, false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("bids", DataType::Utf8, false),
            Field::new("asks", DataType::Utf8, false),
        ],
    };
    Arc::new(Schema::new(fields))
}

/// Snappy, with row groups of at most `row_group_rows` rows (which bounds writer memory).
pub fn properties(row_group_rows: usize) -> WriterProperties {
    properties_with(row_group_rows, Vec::new())
}

/// [`properties`] with key-value metadata in the file footer.
pub fn properties_with(row_group_rows: usize, metadata: Vec<KeyValue>) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_key_value_metadata((!metadata.is_empty()).then_some(metadata))
        .build()
}

/// Nanoseconds since the epoch; decoding already refused times outside that range.
fn nanos(m: &Market) -> i64 {
    m.time().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// One Arrow batch of records that are all of `kind`; records of the other kind are skipped.
pub fn batch(kind: Kind, records: &[&Envelope<Market>]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = match kind {
        Kind::Tick => {
            let ticks: Vec<_> = records
                .iter()
                .filter_map(|e| match &e.record {
                    Market::Tick(t) => Some((nanos(&e.record), t)),
                    Market::OrderBook(_) => None,
                })
                .collect();
            vec![
                Arc::new(Int64Array::from_iter_values(ticks.iter().map(|(n, _)| *n))),
                Arc::new(StringArray::from_iter_values(
                    ticks.iter().map(|(_, t)| t.symbol.as_str()),
                )),
                Arc::new(Float64Array::from_iter_values(
                    ticks.iter().map(|(_, t)| t.price),
                )),
                Arc::new(Int64Array::from_iter_values(
                    ticks.iter().map(|(_, t)| t.volume),
                )),
                Arc::new(Float64Array::from_iter_values(
                    ticks.iter().map(|(_, t)| t.change),
                )),
                Arc::new(Float64Array::from_iter_values(
                    ticks.iter().map(|(_, t)| t.change_rate),
                )),
            ]
        }
        Kind::OrderBook => {
            let books: Vec<_> = records
                .iter()
                .filter_map(|e| match &e.record {
                    Market::OrderBook(o) => Some((nanos(&e.record), o)),
                    Market::Tick(_) => None,
                })
                .collect();
            let json = |levels: &Vec<crate::pipelines::recorder::model::Level>| {
                serde_json::to_string(levels).unwrap_or_else(|_| "[]".to_owned())
            };
            vec![
                Arc::new(Int64Array::from_iter_values(books.iter().map(|(n, _)| *n))),
                Arc::new(StringArray::from_iter_values(
                    books.iter().map(|(_, o)| o.symbol.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    books.iter().map(|(_, o)| json(&o.bids)),
                )),
                Arc::new(StringArray::from_iter_values(
                    books.iter().map(|(_, o)| json(&o.asks)),
                )),
            ]
        }
    };
    RecordBatch::try_new(schema(kind), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::recorder::model::{Level, OrderBook, Tick};
    use actord_actors::record::{Acker, Origin, SourceRecord, Topic};
    use arrow_array::Array;
    use chrono::{DateTime, Utc};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;

    fn envelope(record: Market, offset: i64) -> Envelope<Market> {
        Envelope {
            record,
            source: SourceRecord {
                origin: Origin {
                    topic: Topic::intern("market.tick"),
                    partition: 0,
                    offset,
                    epoch: 1,
                },
                key: None,
                payload: None,
                timestamp_ms: None,
                headers: Vec::new(),
            },
            acker: Acker::new(|_| {}),
            bytes: 0,
        }
    }

    fn time(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn roundtrip(
        kind: Kind,
        records: &[Envelope<Market>],
    ) -> (RecordBatch, parquet::file::metadata::ParquetMetaData) {
        let refs: Vec<&Envelope<Market>> = records.iter().collect();
        let batch = batch(kind, &refs).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        let mut w = ArrowWriter::try_new(&mut file, schema(kind), Some(properties(1000))).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let meta = reader.metadata().as_ref().clone();
        let back = reader.build().unwrap().next().unwrap().unwrap();
        (back, meta)
    }

    #[test]
    fn ticks_keep_the_seed_columns_and_values() {
        let records = vec![
            envelope(
                Market::Tick(Tick {
                    time: time("2025-11-19T16:12:34.123456789Z"),
                    symbol: "005930".into(),
                    price: 71000.5,
                    volume: 10,
                    change: 500.0,
                    change_rate: 0.71,
                }),
                0,
            ),
            envelope(
                Market::Tick(Tick {
                    time: time("2025-11-19T16:12:35Z"),
                    symbol: "000660".into(),
                    price: 180000.0,
                    volume: 3,
                    change: -100.0,
                    change_rate: -0.05,
                }),
                1,
            ),
        ];
        let (back, meta) = roundtrip(Kind::Tick, &records);
        let schema = back.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
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
        let ts = back
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ts.value(0), 1_763_568_754_123_456_789);
        let sym = back
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!((sym.value(0), sym.value(1)), ("005930", "000660"));
        let vol = back
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(vol.values().to_vec(), vec![10, 3]);
        let rate = back
            .column(5)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(rate.value(1), -0.05);
        let col = meta.row_group(0).column(0);
        assert_eq!(col.compression(), Compression::SNAPPY);
        assert_eq!(col.column_type(), parquet::basic::Type::INT64);
    }

    #[test]
    fn order_books_store_levels_as_json_text() {
        let records = vec![envelope(
            Market::OrderBook(OrderBook {
                time: time("2025-11-19T16:12:34Z"),
                symbol: "005930".into(),
                bids: vec![Level {
                    price: 70900.0,
                    quantity: 3.0,
                }],
                asks: vec![],
            }),
            0,
        )];
        let (back, _) = roundtrip(Kind::OrderBook, &records);
        let schema = back.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["timestamp", "symbol", "bids", "asks"]);
        let bids = back
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(bids.value(0)).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([{"price": 70900.0, "quantity": 3.0}])
        );
        let asks = back
            .column(3)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(asks.value(0), "[]");
        assert_eq!(back.num_rows(), 1);
        assert_eq!(back.column(0).null_count(), 0);
    }
}
