//! `BeatSink`: counts beats read back from Kafka.

use std::sync::Arc;

use actord_actors::record::Envelope;
use actord_actors::sink::{Sink, SinkError, SinkFactory};

use super::Beat;
use crate::telemetry::names;

pub struct BeatSink;

impl BeatSink {
    pub fn factory() -> SinkFactory<BeatSink> {
        Arc::new(|| Box::pin(async { Ok(BeatSink) }))
    }
}

impl Sink<Beat> for BeatSink {
    async fn write(&mut self, records: &[Envelope<Beat>]) -> Result<(), SinkError> {
        metrics::counter!(names::HEARTBEAT_BEATS_TOTAL).increment(records.len() as u64);
        Ok(())
    }
}
