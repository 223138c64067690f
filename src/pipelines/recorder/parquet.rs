//! The recorder's Parquet objects, written by the shared object sink: ticks under
//! `<prefix>/tick/`, order books under `<prefix>/orderbook/`, hourly partitions in UTC
//! (`year=/month=/day=/hour=`), with the seed's columns exactly: ticks `timestamp` INT64 (ns
//! since the epoch), `symbol` STRING, `price` DOUBLE, `volume` INT64, `change` DOUBLE,
//! `change_rate` DOUBLE; order books `timestamp` INT64 (ns), `symbol` STRING, `bids` STRING
//! (JSON), `asks` STRING (JSON). Snappy compression.

use std::sync::Arc;

use actord_actors::record::Envelope;
use actord_actors::scheduler::Tz;
use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};

use super::model::{Level, Market};
use crate::sinks::objects::keys::{Granularity, Layout};
use crate::sinks::objects::parquet::ParquetFormat;
use crate::sinks::objects::sink::{self, Settings, Target};

/// The recorder's sink: the shared Parquet object sink with the market format.
pub type Objects = sink::Objects<MarketParquet>;
/// One writer of the recorder's Parquet path.
pub type ParquetSink = sink::ParquetSink<MarketParquet>;

impl Objects {
    /// The recorder's objects under `prefix` in its layout (see [`layout`]).
    pub fn new(
        target: Target,
        prefix: impl Into<String>,
        row_group_rows: usize,
        path: impl Into<String>,
        replay_since: Option<DateTime<Utc>>,
    ) -> Arc<Self> {
        sink::Objects::open(
            target,
            MarketParquet,
            layout(prefix),
            Settings {
                row_group_rows,
                path: path.into(),
                replay_since,
            },
        )
    }
}

/// `<prefix>/<tick|orderbook>/year=/month=/day=/hour=/`, in UTC.
pub fn layout(prefix: impl Into<String>) -> Layout {
    Layout::new(prefix, Tz::UTC, Granularity::Hour)
}

/// The two kinds of market data, each a stream of its own under the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Tick,
    OrderBook,
}

impl Kind {
    pub fn of(m: &Market) -> Kind {
        match m {
            Market::Tick(_) => Kind::Tick,
            Market::OrderBook(_) => Kind::OrderBook,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tick => "tick",
            Kind::OrderBook => "orderbook",
        }
    }
}

/// The stream's name, as the object ledger takes it.
impl AsRef<str> for Kind {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Ticks and order books with the seed's fixed columns.
pub struct MarketParquet;

impl ParquetFormat for MarketParquet {
    type Record = Market;

    fn stream<'a>(&'a self, record: &'a Market) -> &'a str {
        Kind::of(record).as_str()
    }

    fn time(&self, record: &Market) -> DateTime<Utc> {
        record.time()
    }

    fn schema(&self, records: &[&Envelope<Market>]) -> Result<SchemaRef, ArrowError> {
        Ok(schema(Kind::of(&records[0].record)))
    }

    fn encode(
        &self,
        _schema: &SchemaRef,
        records: &[&Envelope<Market>],
    ) -> Result<RecordBatch, ArrowError> {
        batch(Kind::of(&records[0].record), records)
    }
}

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
            vec![
                Arc::new(Int64Array::from_iter_values(books.iter().map(|(n, _)| *n))),
                Arc::new(StringArray::from_iter_values(
                    books.iter().map(|(_, o)| o.symbol.as_str()),
                )),
                levels_json(books.iter().map(|(_, o)| &o.bids)),
                levels_json(books.iter().map(|(_, o)| &o.asks)),
            ]
        }
    };
    RecordBatch::try_new(schema(kind), columns)
}

/// A column of order-book sides as JSON text, each serialized once straight into the column's
/// buffer (one scratch buffer for the column, no string per row).
fn levels_json<'a>(sides: impl ExactSizeIterator<Item = &'a Vec<Level>>) -> ArrayRef {
    let mut column = StringBuilder::with_capacity(sides.len(), sides.len() * 64);
    let mut scratch: Vec<u8> = Vec::with_capacity(256);
    for levels in sides {
        scratch.clear();
        // Levels are two numbers each: writing them into memory cannot fail.
        match serde_json::to_writer(&mut scratch, levels)
            .ok()
            .and_then(|()| std::str::from_utf8(&scratch).ok())
        {
            Some(text) => column.append_value(text),
            None => column.append_value("[]"),
        }
    }
    Arc::new(column.finish())
}

#[cfg(test)]
mod tests {
    use super::super::model::{OrderBook, Tick};
    use super::*;
    use crate::sinks::objects::parquet::properties;
    use actord_actors::record::{Acker, Origin, SourceRecord, Topic};
    use arrow_array::Array;
    use chrono::{DateTime, Utc};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;

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

    #[test]
    fn keys_follow_the_seed_layout() {
        let t = time("2025-11-19T16:12:34.567Z");
        assert_eq!(
            layout("market-data").key(Kind::Tick.as_str(), t, 2, 1234, 7),
            "market-data/tick/year=2025/month=11/day=19/hour=16/data_20251119161234_2_1234.g7.parquet"
        );
        assert_eq!(
            layout("market-data").dir(Kind::OrderBook.as_str(), t),
            "market-data/orderbook/year=2025/month=11/day=19/hour=16/"
        );
    }
}
