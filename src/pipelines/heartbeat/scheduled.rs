//! The heartbeat's optional scheduled entry `beat`: each run publishes one beat marked `"scheduled": true` and waits until the broker holds it.

use std::time::Duration;

use actord_actors::observe::rfc3339;
use actord_actors::scheduler::{Job, RunSummary};
use ractor::rpc::CallResult;

use crate::sources::kafka::producer::{Publication, PublisherMsg, PublisherSlot};

/// The entry's name: its lease key is `heartbeat/beat`.
pub const ENTRY: &str = "beat";

/// Publishes a scheduled beat through the running publisher, then holds the run for `hold`.
pub fn job(slot: PublisherSlot, topic: String, hold: Duration) -> Job {
    Job::new(move |ctx| {
        let publisher = slot.get();
        let topic = topic.clone();
        async move {
            let publisher = publisher.map_err(|e| e.to_string())?;
            let payload = serde_json::json!({
                "seq": ctx.run_id.0,
                "at": rfc3339(std::time::SystemTime::now()),
                "scheduled": true,
            });
            let payload = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
            let bytes = payload.len() as u64;
            let publication = Publication {
                topic,
                key: None,
                payload,
                headers: Vec::new(),
            };
            let delivered = publisher
                .call(
                    |reply| PublisherMsg::Publish(publication, Some(reply)),
                    Some(Duration::from_secs(30)),
                )
                .await
                .map_err(|e| format!("the publisher is gone: {e}"))?;
            let (partition, offset) = match delivered {
                CallResult::Success(Ok(at)) => at,
                CallResult::Success(Err(e)) => return Err(format!("publishing failed: {e}")),
                CallResult::Timeout => return Err("no delivery report within 30s".to_owned()),
                CallResult::SenderError => return Err("the publisher stopped".to_owned()),
            };
            ctx.progress(1, bytes);
            if !hold.is_zero() {
                // A stop request ends the hold early; the beat is delivered already.
                tokio::select! {
                    () = tokio::time::sleep(hold) => {}
                    () = ctx.stopped() => {}
                }
            }
            Ok(RunSummary {
                records: 1,
                bytes,
                note: Some(format!("beat at partition {partition} offset {offset}")),
            })
        }
    })
}
