//! Sensor readings as one Arrow batch, the schema inferred from the batch itself.
//!
//! The rule, stable for a given batch whatever order its values come in:
//! - One column per top-level field of any message in the batch, in name order (bytewise, so
//!   the order does not depend on which message came first), then `timestamp_utc` and `timestamp_kst` (nanoseconds, time zones `UTC` and
//!   `Asia/Seoul`), `kafka_partition` (INT32) and `kafka_offset` (INT64). A message field with
//!   one of these four names is not copied (the record's own values win).
//! - A field's type follows its non-null values in the batch: all booleans → BOOLEAN; all
//!   integers within 64 bits → INT64; all numbers (integers and fractions mixed) → DOUBLE; all
//!   strings → STRING. Any other mix (a number in one message and a string in another), an
//!   object or array, or only nulls → STRING, where a value that is not a string is written as
//!   its JSON text (`21.5`, `true`, `{"a":1}`), so nothing of a message is lost.
//! - Every message column is nullable: a message without the field has null there.
//!
//! Two batches may therefore differ in schema (a new field, or a conflict in one of them);
//! each object is self-describing, and readers that merge schemas (pyarrow's dataset, Spark,
//! DuckDB's `union_by_name`) read them together.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use actord_actors::record::Envelope;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

use super::reading::{Fields, Name, Reading};

/// The columns every object has after the message's own.
pub const TIMESTAMP_UTC: &str = "timestamp_utc";
pub const TIMESTAMP_KST: &str = "timestamp_kst";
pub const KAFKA_PARTITION: &str = "kafka_partition";
pub const KAFKA_OFFSET: &str = "kafka_offset";
const RESERVED: [&str; 4] = [TIMESTAMP_UTC, TIMESTAMP_KST, KAFKA_PARTITION, KAFKA_OFFSET];

/// The type a field takes in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Text,
    /// Mixed kinds, objects or arrays: JSON text.
    Json,
}

impl Kind {
    fn of(v: &Value) -> Kind {
        match v {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_i64() => Kind::Int,
            Value::Number(_) => Kind::Float,
            Value::String(_) => Kind::Text,
            Value::Array(_) | Value::Object(_) => Kind::Json,
        }
    }

    /// The kind of a field holding values of kinds `self` and `other`.
    fn join(self, other: Kind) -> Kind {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Null, k) | (k, Kind::Null) => k,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            _ => Kind::Json,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Null | Kind::Text | Kind::Json => DataType::Utf8,
        }
    }
}

fn nanos_type(zone: &str) -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(zone.into()))
}

/// The previous reading's field names and their columns: the readings of one object mostly
/// have the same fields in the same order (the same shared names), and then need no look-up.
#[derive(Default)]
struct Layout {
    names: Vec<Name>,
    /// Per field of the reading, its column, or `None` for a reserved name.
    columns: Vec<Option<usize>>,
}

impl Layout {
    /// The columns of `fields`, from `lookup` when they are not the previous reading's names.
    fn of(
        &mut self,
        fields: &Fields,
        mut lookup: impl FnMut(&Name) -> Option<usize>,
    ) -> &[Option<usize>] {
        let same = fields.len() == self.names.len()
            && fields
                .iter()
                .zip(&self.names)
                .all(|((n, _), last)| Arc::ptr_eq(n, last));
        if !same {
            self.names.clear();
            self.columns.clear();
            for (n, _) in fields.iter() {
                self.names.push(n.clone());
                self.columns.push(lookup(n));
            }
        }
        &self.columns
    }
}

/// The inferred message columns of `readings`: (name, kind), in name order.
fn columns<'a>(readings: impl Iterator<Item = &'a Reading>) -> Vec<(Name, Kind)> {
    let mut out: Vec<(Name, Kind)> = Vec::new();
    let mut index: HashMap<Name, usize> = HashMap::new();
    let mut layout = Layout::default();
    for r in readings {
        let columns = layout.of(&r.fields, |name| {
            if RESERVED.contains(&&**name) {
                return None;
            }
            Some(*index.entry(name.clone()).or_insert_with(|| {
                out.push((name.clone(), Kind::Null));
                out.len() - 1
            }))
        });
        for ((_, value), column) in r.fields.iter().zip(columns) {
            if let Some(i) = *column {
                out[i].1 = out[i].1.join(Kind::of(value));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The schema of an object holding `records` (see the module documentation).
pub fn schema(records: &[&Envelope<Reading>]) -> SchemaRef {
    let mut fields: Vec<Field> = columns(records.iter().map(|e| &e.record))
        .into_iter()
        .map(|(name, kind)| Field::new(name.as_ref(), kind.data_type(), true))
        .collect();
    fields.extend([
        Field::new(TIMESTAMP_UTC, nanos_type("UTC"), false),
        Field::new(TIMESTAMP_KST, nanos_type("Asia/Seoul"), false),
        Field::new(KAFKA_PARTITION, DataType::Int32, false),
        Field::new(KAFKA_OFFSET, DataType::Int64, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// One message column being built.
enum Column {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    /// Strings, and any other value as its JSON text.
    Text(StringBuilder),
}

impl Column {
    fn new(data_type: &DataType, rows: usize) -> Column {
        match data_type {
            DataType::Boolean => Column::Bool(BooleanBuilder::with_capacity(rows)),
            DataType::Int64 => Column::Int(Int64Builder::with_capacity(rows)),
            DataType::Float64 => Column::Float(Float64Builder::with_capacity(rows)),
            _ => Column::Text(StringBuilder::with_capacity(rows, rows * 8)),
        }
    }

    fn push(&mut self, v: &Value) {
        match self {
            Column::Bool(b) => b.append_option(v.as_bool()),
            Column::Int(b) => b.append_option(v.as_i64()),
            Column::Float(b) => b.append_option(v.as_f64()),
            Column::Text(b) => match v {
                Value::Null => b.append_null(),
                Value::String(s) => b.append_value(s),
                other => {
                    // Straight into the column: the builder takes text until the row ends.
                    let _ = write!(b, "{other}");
                    b.append_value("");
                }
            },
        }
    }

    fn push_null(&mut self) {
        match self {
            Column::Bool(b) => b.append_null(),
            Column::Int(b) => b.append_null(),
            Column::Float(b) => b.append_null(),
            Column::Text(b) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Bool(mut b) => Arc::new(b.finish()),
            Column::Int(mut b) => Arc::new(b.finish()),
            Column::Float(mut b) => Arc::new(b.finish()),
            Column::Text(mut b) => Arc::new(b.finish()),
        }
    }
}

/// `records` (in their order) as a batch of `schema`, the schema [`schema`] gave for the
/// object they belong to. One pass over the records fills every message column.
pub fn encode(
    schema: &SchemaRef,
    records: &[&Envelope<Reading>],
) -> Result<RecordBatch, ArrowError> {
    let own = schema.fields().len().saturating_sub(RESERVED.len());
    let mut columns: Vec<Column> = schema
        .fields()
        .iter()
        .take(own)
        .map(|f| Column::new(f.data_type(), records.len()))
        .collect();
    let index: HashMap<&str, usize> = schema
        .fields()
        .iter()
        .take(own)
        .enumerate()
        .map(|(i, f)| (f.name().as_str(), i))
        .collect();
    // Rows each column holds; a column the reading did not fill gets a null.
    let mut filled = vec![0usize; own];
    let mut layout = Layout::default();
    for (row, e) in records.iter().enumerate() {
        let fields = &e.record.fields;
        let at = layout.of(fields, |name| {
            if RESERVED.contains(&&**name) {
                return None;
            }
            index.get(&**name).copied()
        });
        for ((_, value), column) in fields.iter().zip(at) {
            if let Some(i) = *column {
                columns[i].push(value);
                filled[i] = row + 1;
            }
        }
        for (i, column) in columns.iter_mut().enumerate() {
            if filled[i] <= row {
                column.push_null();
                filled[i] = row + 1;
            }
        }
    }
    let mut arrays: Vec<ArrayRef> = columns.into_iter().map(Column::finish).collect();
    // Decoding refused times outside the nanosecond range.
    let nanos: Vec<i64> = records
        .iter()
        .map(|e| e.record.time.timestamp_nanos_opt().unwrap_or(i64::MAX))
        .collect();
    arrays.push(Arc::new(
        TimestampNanosecondArray::from(nanos.clone()).with_timezone("UTC"),
    ));
    arrays.push(Arc::new(
        TimestampNanosecondArray::from(nanos).with_timezone("Asia/Seoul"),
    ));
    arrays.push(Arc::new(Int32Array::from_iter_values(
        records.iter().map(|e| e.source.origin.partition),
    )));
    arrays.push(Arc::new(Int64Array::from_iter_values(
        records.iter().map(|e| e.source.origin.offset),
    )));
    RecordBatch::try_new(schema.clone(), arrays)
}

/// One Arrow batch of `records` with the schema inferred from them.
pub fn batch(records: &[&Envelope<Reading>]) -> Result<RecordBatch, ArrowError> {
    encode(&schema(records), records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actord_actors::record::{Acker, Origin, SourceRecord, Topic};
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};
    use arrow_array::Array;
    use chrono::{DateTime, Utc};

    fn env(json: serde_json::Value, offset: i64) -> Envelope<Reading> {
        let serde_json::Value::Object(fields) = json else {
            panic!("object")
        };
        Envelope {
            record: Reading {
                fields: fields.into(),
                time: DateTime::parse_from_rfc3339("2025-11-19T15:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
            },
            source: SourceRecord {
                origin: Origin {
                    topic: Topic::intern("fms-temphum"),
                    partition: 2,
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

    fn types(b: &RecordBatch) -> Vec<(String, DataType)> {
        b.schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect()
    }

    #[test]
    fn scalar_fields_keep_their_types_and_the_fixed_columns_follow() {
        let records = [
            env(
                serde_json::json!({"device": "s1", "temperature": 21, "humidity": 40.5, "ok": true, "timestamp": 1}),
                7,
            ),
            env(
                serde_json::json!({"device": "s2", "temperature": 22, "humidity": 41, "ok": false, "timestamp": 2}),
                8,
            ),
        ];
        let refs: Vec<_> = records.iter().collect();
        let b = batch(&refs).unwrap();
        assert_eq!(
            types(&b),
            vec![
                ("device".into(), DataType::Utf8),
                ("humidity".into(), DataType::Float64),
                ("ok".into(), DataType::Boolean),
                ("temperature".into(), DataType::Int64),
                ("timestamp".into(), DataType::Int64),
                (TIMESTAMP_UTC.into(), nanos_type("UTC")),
                (TIMESTAMP_KST.into(), nanos_type("Asia/Seoul")),
                (KAFKA_PARTITION.into(), DataType::Int32),
                (KAFKA_OFFSET.into(), DataType::Int64),
            ]
        );
        assert_eq!(b.column(1).as_primitive::<Float64Type>().value(1), 41.0);
        assert_eq!(
            b.column(8).as_primitive::<Int64Type>().values().to_vec(),
            vec![7, 8]
        );
    }

    #[test]
    fn conflicts_become_json_text_and_new_fields_are_null_elsewhere() {
        let records = [
            env(serde_json::json!({"v": 1, "extra": null}), 0),
            env(serde_json::json!({"v": "high", "nested": {"a": 1}}), 1),
            env(serde_json::json!({"v": true, "late": 3}), 2),
        ];
        let refs: Vec<_> = records.iter().collect();
        let b = batch(&refs).unwrap();
        let names: Vec<String> = types(&b).into_iter().map(|(n, _)| n).collect();
        assert_eq!(&names[..4], ["extra", "late", "nested", "v"]);
        let v = b.column(3).as_string::<i32>();
        assert_eq!((v.value(0), v.value(1), v.value(2)), ("1", "high", "true"));
        let extra = b.column(0).as_string::<i32>();
        assert_eq!(extra.null_count(), 3);
        assert_eq!(b.column(2).as_string::<i32>().value(1), r#"{"a":1}"#);
        let late = b.column(1).as_primitive::<Int64Type>();
        assert!(late.is_null(0) && late.is_null(1));
        assert_eq!(late.value(2), 3);
    }

    #[test]
    fn the_schema_does_not_depend_on_the_order_of_conflicting_values() {
        let a = [
            env(serde_json::json!({"x": 1}), 0),
            env(serde_json::json!({"x": 2.5}), 1),
        ];
        let b = [
            env(serde_json::json!({"x": 2.5}), 0),
            env(serde_json::json!({"x": 1}), 1),
        ];
        let sa = schema(&a.iter().collect::<Vec<_>>());
        let sb = schema(&b.iter().collect::<Vec<_>>());
        assert_eq!(sa, sb);
        assert_eq!(sa.field(0).data_type(), &DataType::Float64);
    }

    #[test]
    fn reserved_names_in_a_message_are_not_copied() {
        let records = [env(serde_json::json!({"kafka_offset": "mine", "t": 1}), 5)];
        let refs: Vec<_> = records.iter().collect();
        let b = batch(&refs).unwrap();
        assert_eq!(b.num_columns(), 5);
        assert_eq!(
            b.column_by_name(KAFKA_OFFSET)
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            5
        );
    }
}
