//! What a pipeline tells the Parquet object sink about its records ([`ParquetFormat`]), and
//! the writer properties every object shares (snappy, bounded row groups, footer metadata).
//!
//! The sink asks the format, per object, for one schema given all the object's records, then
//! for one Arrow batch per row group of that schema. A fixed schema ignores the records; a
//! schema inferred from the records (JSON input) is decided once per object, so all row groups
//! of one file agree, while two objects (two partitions, two periods, two batches) may differ.

use actord_actors::record::Envelope;
use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};
use chrono::{DateTime, Utc};
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

/// How a pipeline's records become Parquet objects: which stream and time each record has,
/// and the schema and rows of an object. No I/O; the sink calls it on its async workers
/// (Arrow batches) and encodes them to Parquet on a blocking thread.
pub trait ParquetFormat: Send + Sync + 'static {
    type Record: Send + Sync + 'static;

    /// The stream a record belongs to: a directory level under the prefix (`tick`,
    /// `orderbook`), or `""` for a pipeline with one kind of record (no level). Records of two
    /// streams never share an object, and each stream has its own ownership ledger.
    fn stream<'a>(&'a self, record: &'a Self::Record) -> &'a str;

    /// The record's time: it picks the partition directory (in the layout's time zone), names
    /// the object after its first record, and marks its last record in the footer.
    fn time(&self, record: &Self::Record) -> DateTime<Utc>;

    /// The schema of one object, given all its records (one stream and partition, in offset
    /// order, never empty) before any of them is encoded.
    fn schema(&self, records: &[&Envelope<Self::Record>]) -> Result<SchemaRef, ArrowError>;

    /// One row group: a run of the object's records (in offset order, never empty) as a batch
    /// of `schema`, the schema [`ParquetFormat::schema`] gave for the object.
    fn encode(
        &self,
        schema: &SchemaRef,
        records: &[&Envelope<Self::Record>],
    ) -> Result<RecordBatch, ArrowError>;
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

/// A format for the sink's own tests: sensor readings whose `note` column exists only in
/// objects where some reading has a note (a schema inferred per object).
#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use actord_actors::record::{Acker, Origin, SourceRecord, Topic};
    use arrow_array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    pub struct Reading {
        pub time: DateTime<Utc>,
        pub value: f64,
        pub note: Option<String>,
    }

    #[derive(Default)]
    pub struct Readings;

    impl ParquetFormat for Readings {
        type Record = Reading;

        fn stream<'a>(&'a self, _: &'a Reading) -> &'a str {
            ""
        }

        fn time(&self, r: &Reading) -> DateTime<Utc> {
            r.time
        }

        fn schema(&self, records: &[&Envelope<Reading>]) -> Result<SchemaRef, ArrowError> {
            let mut fields = vec![
                Field::new("time_ns", DataType::Int64, false),
                Field::new("value", DataType::Float64, false),
            ];
            if records.iter().any(|e| e.record.note.is_some()) {
                fields.push(Field::new("note", DataType::Utf8, true));
            }
            Ok(Arc::new(Schema::new(fields)))
        }

        fn encode(
            &self,
            schema: &SchemaRef,
            records: &[&Envelope<Reading>],
        ) -> Result<RecordBatch, ArrowError> {
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(records.iter().map(|e| {
                    e.record.time.timestamp_nanos_opt().unwrap_or(i64::MAX)
                }))),
                Arc::new(Float64Array::from_iter_values(
                    records.iter().map(|e| e.record.value),
                )),
            ];
            if schema.fields().len() > 2 {
                columns.push(Arc::new(StringArray::from_iter(
                    records.iter().map(|e| e.record.note.as_deref()),
                )));
            }
            RecordBatch::try_new(schema.clone(), columns)
        }
    }

    /// A reading at `offset` of `partition` (topic `readings`, epoch 1).
    pub fn reading(partition: i32, offset: i64, time: &str, value: f64) -> Envelope<Reading> {
        Envelope {
            record: Reading {
                time: DateTime::parse_from_rfc3339(time)
                    .unwrap()
                    .with_timezone(&Utc),
                value,
                note: None,
            },
            source: SourceRecord {
                origin: Origin {
                    topic: Topic::intern("readings"),
                    partition,
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
}
