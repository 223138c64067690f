//! `BeatSink`: counts beats read back from Kafka, and among them the scheduled ones.

use std::sync::Arc;

use actord_actors::record::Envelope;
use actord_actors::sink::{Sink, SinkError, SinkFactory};

use super::names;
use super::Beat;

pub struct BeatSink;

impl BeatSink {
    pub fn factory() -> SinkFactory<BeatSink> {
        Arc::new(|| Box::pin(async { Ok(BeatSink) }))
    }
}

impl Sink<Beat> for BeatSink {
    async fn write(&mut self, records: &[Envelope<Beat>]) -> Result<(), SinkError> {
        metrics::counter!(names::HEARTBEAT_BEATS_TOTAL).increment(records.len() as u64);
        let scheduled = records.iter().filter(|r| r.record.scheduled).count();
        if scheduled > 0 {
            metrics::counter!(names::HEARTBEAT_SCHEDULED_BEATS_TOTAL).increment(scheduled as u64);
        }
        Ok(())
    }
}
