//! How readings become objects of the shared Parquet sink: one stream, the record time, and
//! the schema inferred per object (see [`super::encode`]).

use actord_actors::record::Envelope;
use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};
use chrono::{DateTime, Utc};

use super::encode;
use super::reading::Reading;
use crate::sinks::objects::parquet::ParquetFormat;

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
        Ok(encode::schema(records))
    }

    fn encode(
        &self,
        schema: &SchemaRef,
        records: &[&Envelope<Reading>],
    ) -> Result<RecordBatch, ArrowError> {
        encode::encode(schema, records)
    }
}
