//! `DlqProducer`: writes dead letters to `<source topic><suffix>` and acknowledges them to
//! their source once Kafka holds them.
//!
//! The payload is the file-sync service's DLQ schema, `{"original_message", "error",
//! "timestamp", "retry_count"}` (`original_message` is the original JSON when it parses, else
//! a string). Headers follow Kafka Connect's `__connect.errors.*` names so existing DLQ tooling
//! reads them.
//!
//! Guarantees:
//! - Each letter is written by one task at a time, retried with backoff after a failed attempt
//!   only, at most `MAX_ATTEMPTS` times; then the producer fails, so its path restarts (the
//!   writers with it) and the letter is read again. Deliveries in flight are bounded; a retry
//!   never runs beside the attempt it repeats, and tasks of an ended incarnation stop retrying.
//! - The DLQ topics of the path's source topics are made sure of at start, and a missing one
//!   again before a letter is retried: created with the admin API (as many partitions as its
//!   source topic, the broker's replication) where the broker allows it, otherwise reported as
//!   a health error of this actor (the pipeline is not up) until it exists.
//! - A letter is at most the smaller of the producer's `message.max.bytes` and the DLQ topic's
//!   own `max.message.bytes`, read from the broker (describe configs) once the topic is known
//!   to exist; a broker that does not answer that leaves the producer's limit. Each letter
//!   goes in a produce batch of its own, since a broker checks that limit per batch.
//! - The source offset stays uncommitted until Kafka holds the letter, so nothing is lost while
//!   the DLQ is unreachable; a letter whose last attempt timed out may still land, so a letter
//!   is written at least once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actord_actors::record::{DeadLetter, DlqMsg, MAX_ERROR_BYTES};
use actord_actors::{Backoff, Probe};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, error, info, warn};

use super::KafkaConnection;
use crate::telemetry::names;

/// Attempts per letter, the first included.
const MAX_ATTEMPTS: u32 = 5;

/// How long one attempt may take (librdkafka's own retries included).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// The wait between attempts of one letter.
const RETRY_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(8),
    factor: 2.0,
};

/// Letters being written at once; more wait in the mailbox.
const MAX_IN_FLIGHT: usize = 256;

/// How long a metadata look-up or a topic creation may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DlqProducer;

pub struct DlqArgs {
    pub probe: Probe,
    pub connection: KafkaConnection,
    /// Appended to the source topic, `-dlq` by default (DLQ_TOPIC_SUFFIX).
    pub suffix: String,
    /// The source topics of the path: their DLQ topics are made sure of at start.
    pub topics: Vec<String>,
}

pub struct DlqState {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    /// Dropped with the state, however the incarnation ends: its tasks stop retrying.
    alive: watch::Sender<()>,
}

/// What the delivery tasks of one incarnation share.
struct Shared {
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    embedded: bool,
    suffix: String,
    probe: Probe,
    path: String,
    /// The path, for the `connector.name` header.
    connector: String,
    /// DLQ topics known to exist, and the problem of each one that does not.
    topics: Mutex<Topics>,
    /// How long a metadata look-up or a topic creation may take.
    admin_timeout: Duration,
    /// The producer's `message.max.bytes`: no letter is larger.
    max_message_bytes: usize,
}

#[derive(Default)]
struct Topics {
    ready: std::collections::BTreeSet<String>,
    problems: BTreeMap<String, String>,
    /// Each DLQ topic's own `max.message.bytes`, where the broker told it.
    limits: BTreeMap<String, usize>,
}

/// librdkafka's default `message.max.bytes`, the largest message the producer sends.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Kept free under `message.max.bytes` for the record's framing.
const FRAMING_BYTES: usize = 1024;

/// The DLQ payload for a dead letter, at `now` (RFC 3339, seconds, UTC).
pub fn payload(letter: &DeadLetter, now: chrono::DateTime<chrono::Utc>) -> Value {
    let original = match &letter.source.payload {
        None => Value::Null,
        Some(bytes) => serde_json::from_slice::<Value>(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
    };
    json!({
        "original_message": original,
        "error": letter.poison.bounded_text(),
        "timestamp": now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "retry_count": letter.retry_count,
    })
}

/// The letter's body, at most `max_message_bytes` with its headers. A record that fit the
/// source topic can outgrow that as a letter (bytes that are not UTF-8 grow when written as
/// text, control characters as escapes); then `original_message` keeps the first part of the
/// record as text, `original_truncated` is true and `original_bytes` is the record's size. The
/// record itself stays at its partition and offset, which the headers name.
pub fn body(
    letter: &DeadLetter,
    now: chrono::DateTime<chrono::Utc>,
    max_message_bytes: usize,
) -> Vec<u8> {
    let mut value = payload(letter, now);
    let whole = serde_json::to_vec(&value).expect("a JSON value serialises");
    let headers: usize = letter
        .source
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + 16)
        .sum::<usize>()
        + MAX_ERROR_BYTES
        + 1024
        + letter.source.key.as_ref().map_or(0, Vec::len);
    let budget = max_message_bytes.saturating_sub(headers + FRAMING_BYTES);
    if whole.len() <= budget {
        return whole;
    }
    let bytes = letter.source.payload.as_deref().unwrap_or_default();
    let text = String::from_utf8_lossy(bytes);
    let mut keep = budget.min(text.len());
    loop {
        let mut end = keep.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        value["original_message"] = Value::String(text[..end].to_owned());
        value["original_truncated"] = Value::Bool(true);
        value["original_bytes"] = json!(bytes.len());
        let out = serde_json::to_vec(&value).expect("a JSON value serialises");
        if out.len() <= budget || end == 0 {
            return out;
        }
        // Escapes make the text longer than its bytes: shrink by the overshoot and retry.
        keep = end.saturating_sub((out.len() - budget).max(end / 16));
    }
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
            letter.poison.bounded_message(),
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

/// The producer's `message.max.bytes`: the connection's setting, else librdkafka's default.
fn max_message_bytes(connection: &KafkaConnection) -> usize {
    connection
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

/// An idempotent producer: retries never duplicate or reorder within a partition.
pub fn idempotent_producer(
    connection: &KafkaConnection,
) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    producer_with(connection, &[])
}

fn producer_with(
    connection: &KafkaConnection,
    extra: &[(&str, &str)],
) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut c = connection.client_config();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    for (k, v) in &connection.properties {
        c.set(k, v);
    }
    c.create()
}

impl Shared {
    fn is_ready(&self, topic: &str) -> bool {
        self.embedded
            || self
                .topics
                .lock()
                .expect("topics lock")
                .ready
                .contains(topic)
    }

    fn forget(&self, topic: &str) {
        self.topics.lock().expect("topics lock").ready.remove(topic);
    }

    /// The largest letter `topic` takes: the producer's limit, or the topic's own if smaller.
    fn limit(&self, topic: &str) -> usize {
        let topics = self.topics.lock().expect("topics lock");
        topics
            .limits
            .get(topic)
            .map_or(self.max_message_bytes, |l| (*l).min(self.max_message_bytes))
    }

    /// Reads the topic's `max.message.bytes` from the broker and keeps it; a broker that does
    /// not describe topic configs (the embedded one) leaves the producer's limit.
    async fn learn_limit(&self, topic: &str) {
        let options = AdminOptions::new().request_timeout(Some(self.admin_timeout));
        let resource = ResourceSpecifier::Topic(topic);
        let described = tokio::time::timeout(
            self.admin_timeout * 2,
            self.admin.describe_configs([&resource], &options),
        )
        .await;
        let limit = match described {
            Ok(Ok(results)) => results.into_iter().find_map(|r| {
                r.ok()?
                    .get("max.message.bytes")?
                    .value
                    .as_deref()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            }),
            Ok(Err(e)) => {
                debug!(path = %self.path, topic = %topic, error = %e, "topic configs not described; letters sized by the producer's message.max.bytes");
                None
            }
            Err(_) => None,
        };
        if let Some(limit) = limit.filter(|l| *l > 0) {
            if limit < self.max_message_bytes {
                info!(path = %self.path, topic = %topic, max_message_bytes = limit, "dead letters sized by the topic's max.message.bytes");
            }
            self.topics
                .lock()
                .expect("topics lock")
                .limits
                .insert(topic.to_owned(), limit);
        }
    }

    /// Records the outcome for `topic` and reports the remaining problems on the probe.
    fn settle(&self, topic: &str, outcome: Result<(), String>) {
        let mut t = self.topics.lock().expect("topics lock");
        match outcome {
            Ok(()) => {
                t.ready.insert(topic.to_owned());
                t.problems.remove(topic);
            }
            Err(problem) => {
                t.ready.remove(topic);
                t.problems.insert(topic.to_owned(), problem);
            }
        }
        let report = (!t.problems.is_empty())
            .then(|| t.problems.values().cloned().collect::<Vec<_>>().join("; "));
        self.probe.set_unhealthy(report);
    }

    /// Makes sure the DLQ topic of `source` exists, creating it where the broker allows it.
    /// The embedded broker's topics are created with it.
    async fn ensure(&self, source: &str) -> Result<(), String> {
        let topic = format!("{source}{}", self.suffix);
        if self.is_ready(&topic) {
            return Ok(());
        }
        let outcome = self.make_sure(source, &topic).await;
        if let Err(e) = &outcome {
            warn!(path = %self.path, topic = %topic, error = %e, "dead-letter topic unavailable");
        }
        self.settle(&topic, outcome.clone());
        outcome
    }

    async fn make_sure(&self, source: &str, topic: &str) -> Result<(), String> {
        self.find_or_create(source, topic).await?;
        self.learn_limit(topic).await;
        Ok(())
    }

    async fn find_or_create(&self, source: &str, topic: &str) -> Result<(), String> {
        // A metadata look-up blocks its thread: it runs off the async workers.
        let (producer, admin_timeout) = (self.producer.clone(), self.admin_timeout);
        let names = (source.to_owned(), topic.to_owned());
        let (source_partitions, exists) = tokio::task::spawn_blocking(move || {
            let partitions = |name: &str| {
                producer
                    .client()
                    .fetch_metadata(Some(name), admin_timeout)
                    .ok()
                    .and_then(|m| {
                        m.topics()
                            .iter()
                            .find(|t| t.name() == name && t.error().is_none())
                            .map(|t| t.partitions().len())
                    })
                    .filter(|n| *n > 0)
            };
            (partitions(&names.0), partitions(&names.1).is_some())
        })
        .await
        .map_err(|e| format!("metadata look-up failed: {e}"))?;
        if exists {
            return Ok(());
        }
        let partitions = source_partitions.unwrap_or(1) as i32;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        let options = AdminOptions::new()
            .request_timeout(Some(self.admin_timeout))
            .operation_timeout(Some(self.admin_timeout));
        let created = tokio::time::timeout(
            self.admin_timeout * 2,
            self.admin.create_topics([&new], &options),
        )
        .await
        .map_err(|_| "the broker did not answer the request to create it".to_owned())?;
        match created.as_deref() {
            Ok([Ok(_)]) => {
                info!(path = %self.path, topic = %topic, partitions, "dead-letter topic created");
                Ok(())
            }
            Ok([Err((_, RDKafkaErrorCode::TopicAlreadyExists))]) => Ok(()),
            Ok([Err((_, code))]) => Err(format!(
                "dead-letter topic {topic} does not exist and the broker refused to create it: {code}"
            )),
            Ok(_) => Err(format!("unexpected answer creating dead-letter topic {topic}")),
            Err(e) => Err(format!(
                "dead-letter topic {topic} does not exist and cannot be created: {e}"
            )),
        }
    }

    /// Hands one attempt at `letter` to the producer's queue, sized for its topic as known now:
    /// what is enqueued in one order is written in that order.
    fn enqueue(&self, letter: &DeadLetter) -> Result<DeliveryFuture, String> {
        let topic = format!("{}{}", letter.source.origin.topic, self.suffix);
        let body = body(letter, chrono::Utc::now(), self.limit(&topic));
        let mut record = FutureRecord::to(&topic)
            .payload(&body)
            .headers(headers(letter, &self.connector));
        if let Some(key) = &letter.source.key {
            record = record.key(key);
        }
        self.producer
            .send_result(record)
            .map_err(|(e, _)| e.to_string())
    }

    /// Waits for the first attempt, then retries failed attempts with backoff; `Err` when it
    /// gave up.
    async fn deliver(
        &self,
        letter: &DeadLetter,
        first: Result<DeliveryFuture, String>,
        mut alive: watch::Receiver<()>,
    ) -> Result<(), String> {
        let source = letter.source.origin.topic.to_string();
        let topic = format!("{source}{}", self.suffix);
        let mut attempt = 1;
        let mut pending = Some(first);
        loop {
            let queued = match pending.take() {
                Some(queued) => queued,
                None => match self.ensure(&source).await {
                    Ok(()) => self.enqueue(letter),
                    Err(e) => Err(e),
                },
            };
            let result = match queued {
                Err(e) => Err(e),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer was dropped".to_owned()),
                },
            };
            let err = match result {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            // A topic removed or never there: look again before the next try.
            self.forget(&topic);
            metrics::counter!(names::DLQ_ERRORS_TOTAL, "path" => self.path.clone()).increment(1);
            if attempt >= MAX_ATTEMPTS {
                return Err(format!(
                    "dead letter for {topic} not written after {attempt} attempts: {err}"
                ));
            }
            let delay = RETRY_BACKOFF.delay(attempt - 1);
            warn!(path = %self.path, topic = %topic, attempt, delay = ?delay, error = %err, "DLQ write failed, retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = alive.changed() => return Err("the dead-letter producer stopped".to_owned()),
            }
            attempt += 1;
        }
    }
}

impl Actor for DlqProducer {
    type Msg = DlqMsg;
    type State = DlqState;
    type Arguments = DlqArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let timeout = ATTEMPT_TIMEOUT.as_millis().to_string();
        // One letter per produce batch: a broker checks a topic's `max.message.bytes` against
        // the whole batch, so letters each sized to fit could be refused together.
        let producer = producer_with(
            &args.connection,
            &[
                ("message.timeout.ms", &timeout),
                ("batch.num.messages", "1"),
            ],
        )
        .map_err(|e| format!("cannot create the DLQ producer: {e}"))?;
        let admin: AdminClient<DefaultClientContext> = args
            .connection
            .client_config()
            .create()
            .map_err(|e| format!("cannot create the DLQ admin client: {e}"))?;
        let path = args.probe.path().to_string();
        let connector = args
            .probe
            .path()
            .parent()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            producer,
            admin,
            embedded: args.connection.embedded,
            suffix: args.suffix,
            probe: args.probe,
            path: path.clone(),
            connector,
            topics: Mutex::new(Topics::default()),
            admin_timeout: ADMIN_TIMEOUT,
            max_message_bytes: max_message_bytes(&args.connection),
        });
        // Present at 0 from the start: a dashboard's DLQ panel and alert need the series before
        // the first letter.
        metrics::counter!(names::DLQ_ERRORS_TOTAL, "path" => path.clone()).increment(0);
        for source in &args.topics {
            metrics::counter!(names::DLQ_RECORDS_TOTAL, "path" => path.clone(), "topic" => source.clone())
                .increment(0);
        }
        // The DLQ topics are made sure of at once, not when the first letter needs them.
        let (early, topics) = (shared.clone(), args.topics);
        let me = myself.clone();
        tokio::spawn(async move {
            for source in topics {
                if me.get_status() >= ractor::ActorStatus::Stopping {
                    return;
                }
                let _ = early.ensure(&source).await;
            }
        });
        info!(path = %path, suffix = %shared.suffix, "dead-letter producer started");
        Ok(DlqState {
            shared,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            alive: watch::channel(()).0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Letters in flight land or fail within the stop budget; unacknowledged ones are read
        // again by the path.
        let wait = state
            .shared
            .probe
            .stop_deadline()
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        let all = MAX_IN_FLIGHT as u32;
        let _ = tokio::time::timeout(wait, state.permits.acquire_many(all)).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (letter, done) = match message {
            DlqMsg::Send(letter, done) => (letter, done),
            DlqMsg::Failed(reason) => return Err(reason.into()),
        };
        // Bounded: at the limit the handler waits, and new letters wait in the mailbox.
        let permit = state.permits.clone().acquire_owned().await?;
        let (shared, alive) = (state.shared.clone(), state.alive.subscribe());
        // Held until Kafka answers, so a DLQ that cannot deliver looks stuck.
        shared.probe.hold(1);
        // The first attempt is queued here, in arrival order; a missing topic is looked after
        // first (a failure is retried by the task).
        let source = letter.source.origin.topic.to_string();
        let first = match shared.ensure(&source).await {
            Ok(()) => shared.enqueue(&letter),
            Err(e) => Err(e),
        };
        tokio::spawn(async move {
            let outcome = shared.deliver(&letter, first, alive).await;
            shared.probe.release(1);
            drop(permit);
            match outcome {
                Ok(()) => {
                    metrics::counter!(names::DLQ_RECORDS_TOTAL, "path" => shared.path.clone(), "topic" => letter.source.origin.topic.to_string()).increment(1);
                    shared.probe.progress(1, letter.source.size() as u64);
                    letter.acker.ack(vec![letter.source.origin]);
                    reply(done);
                }
                Err(reason) => {
                    metrics::counter!(names::DLQ_ERRORS_TOTAL, "path" => shared.path.clone())
                        .increment(1);
                    error!(path = %shared.path, error = %reason, "dead-letter producer giving up, restarting its path");
                    let _ = myself.cast(DlqMsg::Failed(reason));
                }
            }
        });
        Ok(())
    }
}

fn reply(done: Option<RpcReplyPort<()>>) {
    if let Some(done) = done {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use actord_actors::{ActorKind, ActorPath, Registry};

    use super::*;

    /// Against a broker that does not answer, the DLQ topic can be neither found nor created:
    /// the producer says so as its health, which keeps its pipeline from being up.
    #[tokio::test]
    async fn a_dlq_topic_that_cannot_be_made_sure_of_is_a_health_error() {
        let registry = Registry::new();
        let pipeline = registry.probe(&ActorPath::parse("/p").unwrap(), ActorKind::Supervisor);
        pipeline.set_status(actord_actors::Status::Running);
        let path = ActorPath::parse("/p/path/dlq").unwrap();
        let probe = registry.probe(&path, ActorKind::Worker);
        probe.set_status(actord_actors::Status::Running);
        // A port nothing listens on: every request fails or times out.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let connection = KafkaConnection::new(format!("127.0.0.1:{port}"));
        let shared = Shared {
            producer: producer_with(&connection, &[]).unwrap(),
            admin: connection.client_config().create().unwrap(),
            embedded: false,
            suffix: "-dlq".into(),
            probe: probe.clone(),
            path: path.to_string(),
            connector: "/p/path".into(),
            topics: Mutex::new(Topics::default()),
            admin_timeout: Duration::from_millis(500),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        };
        let err = shared.ensure("src").await.unwrap_err();
        assert!(err.contains("src-dlq"), "{err}");
        let reason = probe.unhealthy().expect("reported");
        assert!(reason.contains("src-dlq"), "{reason}");
        let not_up = registry.not_up(&ActorPath::parse("/p").unwrap());
        assert!(
            not_up
                .iter()
                .any(|(p, why)| *p == path && why.starts_with("unhealthy")),
            "{not_up:?}"
        );
        // Once the topic is there the report goes away.
        shared.settle("src-dlq", Ok(()));
        assert_eq!(probe.unhealthy(), None);
    }

    fn letter(payload: Vec<u8>, message: String) -> DeadLetter {
        use actord_actors::record::{Acker, Origin, Poison, SourceRecord, Topic};
        DeadLetter {
            source: SourceRecord {
                origin: Origin {
                    topic: Topic::intern("market.tick"),
                    partition: 2,
                    offset: 7,
                    epoch: 1,
                },
                key: None,
                payload: Some(payload),
                timestamp_ms: None,
                headers: vec![("trace".into(), b"t1".to_vec())],
            },
            acker: Acker::new(|_| {}),
            poison: Poison::new("InvalidSymbol", message),
            stage: "decode",
            retry_count: 0,
        }
    }

    /// A record just under the broker's limit grows as a letter (bytes that are not UTF-8 become
    /// replacement characters, a quoting error message doubles it): the letter is cut to fit,
    /// says so, and keeps its error.
    #[test]
    fn a_letter_never_outgrows_the_producers_message_size() {
        let now = chrono::Utc::now();
        let binary: Vec<u8> = (0..990_000u32).map(|i| (i % 7 * 37 + 128) as u8).collect();
        let quoted = format!("{:?} is not a symbol", "A".repeat(900_000));
        for (payload, message) in [
            (
                binary.clone(),
                "expected value at line 1 column 1".to_owned(),
            ),
            (
                format!("{{\"symbol\": \"{}\"}}", "\\u0000".repeat(160_000)).into_bytes(),
                quoted,
            ),
        ] {
            let l = letter(payload.clone(), message);
            let out = body(&l, now, DEFAULT_MAX_MESSAGE_BYTES);
            assert!(
                out.len() < DEFAULT_MAX_MESSAGE_BYTES - MAX_ERROR_BYTES,
                "{}",
                out.len()
            );
            let v: Value = serde_json::from_slice(&out).unwrap();
            let error = v["error"].as_str().unwrap();
            assert!(error.starts_with("InvalidSymbol: ") && error.len() < MAX_ERROR_BYTES + 64);
            if v.get("original_truncated").is_none() {
                assert_eq!(
                    v["original_message"],
                    serde_json::from_slice::<Value>(&payload).unwrap()
                );
                continue;
            }
            assert_eq!(v["original_truncated"], true);
            assert_eq!(v["original_bytes"], payload.len());
            let kept = v["original_message"].as_str().unwrap();
            assert!(String::from_utf8_lossy(&payload).starts_with(kept));
            assert!(
                kept.len() > 100_000,
                "as much as fits is kept: {}",
                kept.len()
            );
        }
        let l = letter(binary, String::new());
        let v: Value = serde_json::from_slice(&body(&l, now, DEFAULT_MAX_MESSAGE_BYTES)).unwrap();
        assert_eq!(
            v["original_truncated"], true,
            "text three times the bytes does not fit"
        );
        // A letter that fits is the record as it came.
        let l = letter(
            b"{\"symbol\": \"\"}".to_vec(),
            "\"\" is not a symbol".into(),
        );
        let v: Value = serde_json::from_slice(&body(&l, now, DEFAULT_MAX_MESSAGE_BYTES)).unwrap();
        assert_eq!(v["original_message"], json!({"symbol": ""}));
        assert!(v.get("original_truncated").is_none());
        assert_eq!(v["error"], "InvalidSymbol: \"\" is not a symbol");
    }
}
