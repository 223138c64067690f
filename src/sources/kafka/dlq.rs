//! `DlqProducer`: writes dead letters to `<source topic><suffix>` and acknowledges them to
//! their source once Kafka holds them.
//!
//! The payload is the file-sync service's DLQ schema, `{"original_message", "error",
//! "timestamp", "retry_count"}` (`original_message` is the original JSON when it parses, else
//! a string). Headers follow Kafka Connect's `__connect.errors.*` names so existing DLQ tooling
//! reads them. A write that fails is retried until it succeeds: the source offset stays
//! uncommitted meanwhile, so nothing is lost while the DLQ is unreachable.

use std::time::Duration;

use actord_actors::record::{DeadLetter, DlqMsg};
use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::KafkaConnection;
use crate::telemetry::names;

pub struct DlqProducer;

pub struct DlqArgs {
    pub probe: Probe,
    pub connection: KafkaConnection,
    /// Appended to the source topic, `-dlq` by default (DLQ_TOPIC_SUFFIX).
    pub suffix: String,
}

pub struct DlqState {
    producer: FutureProducer,
    suffix: String,
    probe: Probe,
    path: String,
}

/// The DLQ payload for a dead letter, at `now` (RFC 3339, seconds, UTC).
pub fn payload(letter: &DeadLetter, now: chrono::DateTime<chrono::Utc>) -> Value {
    let original = match &letter.source.payload {
        None => Value::Null,
        Some(bytes) => serde_json::from_slice::<Value>(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
    };
    json!({
        "original_message": original,
        "error": letter.poison.to_string(),
        "timestamp": now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "retry_count": letter.retry_count,
    })
}

/// Kafka Connect's error headers, after the record's own headers.
pub fn headers(letter: &DeadLetter, connector: &str) -> OwnedHeaders {
    let o = &letter.source.origin;
    let stage = match letter.stage {
        "decode" => "VALUE_CONVERTER",
        "sink" => "TASK_PUT",
        other => other,
    };
    let mut h = owned_headers(&letter.source.headers, 7);
    let fields = [
        ("__connect.errors.topic", o.topic.to_string()),
        ("__connect.errors.partition", o.partition.to_string()),
        ("__connect.errors.offset", o.offset.to_string()),
        ("__connect.errors.connector.name", connector.to_owned()),
        ("__connect.errors.stage", stage.to_owned()),
        (
            "__connect.errors.exception.class.name",
            letter.poison.class.clone(),
        ),
        (
            "__connect.errors.exception.message",
            letter.poison.message.clone(),
        ),
    ];
    for (k, v) in fields {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    h
}

/// Kafka headers from `(key, value)` pairs, with room for `extra` more.
pub fn owned_headers(pairs: &[(String, Vec<u8>)], extra: usize) -> OwnedHeaders {
    pairs.iter().fold(
        OwnedHeaders::new_with_capacity(pairs.len() + extra),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v),
            })
        },
    )
}

/// An idempotent producer: retries never duplicate or reorder within a partition.
pub fn idempotent_producer(
    connection: &KafkaConnection,
) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut c = connection.client_config();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5");
    for (k, v) in &connection.properties {
        c.set(k, v);
    }
    c.create()
}

impl Actor for DlqProducer {
    type Msg = DlqMsg;
    type State = DlqState;
    type Arguments = DlqArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let producer = idempotent_producer(&args.connection)
            .map_err(|e| format!("cannot create the DLQ producer: {e}"))?;
        let path = args.probe.path().to_string();
        info!(path = %path, suffix = %args.suffix, "dead-letter producer started");
        Ok(DlqState {
            producer,
            suffix: args.suffix,
            probe: args.probe,
            path,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let DlqMsg::Send(letter, done) = message;
        let topic = format!("{}{}", letter.source.origin.topic, state.suffix);
        let body = serde_json::to_vec(&payload(&letter, chrono::Utc::now()))?;
        let connector = state
            .probe
            .path()
            .parent()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let mut record = FutureRecord::to(&topic)
            .payload(&body)
            .headers(headers(&letter, &connector));
        if let Some(key) = &letter.source.key {
            record = record.key(key);
        }
        let retry =
            |myself: &ActorRef<DlqMsg>, letter: DeadLetter, done: Option<RpcReplyPort<()>>| {
                myself.send_after(Duration::from_secs(1), move || DlqMsg::Send(letter, done));
            };
        match state.producer.send_result(record) {
            Ok(delivery) => {
                state.probe.hold(1);
                let probe = state.probe.clone();
                let path = state.path.clone();
                tokio::spawn(async move {
                    let delivered = delivery.await;
                    // Held until Kafka answers, so a DLQ that cannot deliver looks stuck.
                    probe.release(1);
                    match delivered {
                        Ok(Ok(_)) => {
                            metrics::counter!(names::DLQ_RECORDS_TOTAL, "path" => path.clone(), "topic" => letter.source.origin.topic.to_string()).increment(1);
                            probe.progress(1, letter.source.size() as u64);
                            letter.acker.ack(vec![letter.source.origin]);
                            if let Some(done) = done {
                                let _ = done.send(());
                            }
                        }
                        Ok(Err((e, _))) => {
                            warn!(path = %path, error = %e, "DLQ write failed, retrying");
                            metrics::counter!(names::DLQ_ERRORS_TOTAL, "path" => path).increment(1);
                            retry(&myself, letter, done);
                        }
                        Err(_) => retry(&myself, letter, done),
                    }
                });
            }
            Err((e, _)) => {
                warn!(path = %state.path, error = %e, "DLQ producer refused the record, retrying");
                metrics::counter!(names::DLQ_ERRORS_TOTAL, "path" => state.path.clone())
                    .increment(1);
                retry(&myself, letter, done);
            }
        }
        Ok(())
    }
}
