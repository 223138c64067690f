//! `RedisDlq`: writes dead letters to `<stream><suffix>` (`<stream>:dlq` by default) and acks
//! them to their source once Redis holds them.
//!
//! A dead-letter entry keeps every field of the original entry and adds `error` (class and
//! message, cut at [`actord_actors::record::MAX_ERROR_BYTES`]), `error_class`, `stage` (`decode`, `sink` or `source` for the delivery limit),
//! `retry_count`, `original_id` and `failed_at` (RFC 3339, UTC); an original field of the same
//! name as one of these is left out.
//!
//! Guarantees: letters are written one at a time in arrival order; a failed XADD is retried
//! with backoff, at most `MAX_ATTEMPTS` times, then the writer fails so its path restarts and
//! the entry, still pending, is read again. A letter whose ack was lost may be written twice,
//! unless the path counts batches: then the letter, the entry's XACK and its count are one
//! script that writes nothing for an entry acknowledged already (see [`super::drain`]).

use std::time::Duration;

use actord_actors::record::{DeadLetter, DlqMsg};
use actord_actors::{Backoff, Probe};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use redis::aio::MultiplexedConnection;
use tracing::{error, info, warn};

use super::drain::{self, DrainCounting};
use super::{describe, RedisConnection};
use crate::telemetry::names;

/// Attempts per letter, the first included.
const MAX_ATTEMPTS: u32 = 6;

const RETRY_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(8),
    factor: 2.0,
};

/// Fields a dead-letter entry adds to the original's.
pub const ADDED_FIELDS: [&str; 6] = [
    "error",
    "error_class",
    "stage",
    "retry_count",
    "original_id",
    "failed_at",
];

pub struct RedisDlq;

pub struct DlqArgs {
    pub probe: Probe,
    pub connection: RedisConnection,
    /// Appended to the source stream: `:dlq` by default.
    pub suffix: String,
    /// The source's group, and its batch counting (the letter then acks its entry itself).
    pub group: String,
    pub counting: Option<DrainCounting>,
}

pub struct DlqState {
    probe: Probe,
    path: String,
    connection: RedisConnection,
    addr: String,
    conn: Option<MultiplexedConnection>,
    suffix: String,
    group: String,
    counting: Option<DrainCounting>,
}

/// The id of the stream entry a letter is about (the record's key).
fn entry_id(letter: &DeadLetter) -> String {
    letter
        .source
        .key
        .as_deref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default()
}

/// The fields of the dead-letter entry for `letter`, at `now`.
pub fn fields(letter: &DeadLetter, now: chrono::DateTime<chrono::Utc>) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = letter
        .source
        .headers
        .iter()
        .filter(|(k, _)| !ADDED_FIELDS.contains(&k.as_str()) && k != "x-delivery-count")
        .cloned()
        .collect();
    let added = [
        letter.poison.bounded_text(),
        letter.poison.class.clone(),
        letter.stage.to_owned(),
        letter.retry_count.to_string(),
        entry_id(letter),
        now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    ];
    for (k, v) in ADDED_FIELDS.iter().zip(added) {
        out.push(((*k).to_owned(), v.into_bytes()));
    }
    out
}

impl DlqState {
    /// Writes the letter of `letter` to `stream`; false when the path counts batches and the
    /// entry had been acknowledged already, so nothing was written.
    async fn write(
        &mut self,
        stream: &str,
        letter: &DeadLetter,
        fields: &[(String, Vec<u8>)],
    ) -> Result<bool, String> {
        if self.conn.is_none() {
            self.conn = Some(self.connection.connect(Duration::from_secs(5)).await?);
        }
        let conn = self.conn.as_mut().expect("connected");
        let written: Result<bool, _> = match &self.counting {
            Some(counting) => {
                let id = entry_id(letter);
                let batch = letter
                    .source
                    .headers
                    .iter()
                    .find(|(k, _)| *k == counting.field)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                drain::dead_letter(
                    conn,
                    letter.source.origin.topic.as_str(),
                    &self.group,
                    stream,
                    &id,
                    batch.as_deref(),
                    counting.ttl,
                    fields,
                )
                .await
            }
            None => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(stream).arg("*");
                for (k, v) in fields {
                    cmd.arg(k).arg(v.as_slice());
                }
                let added: Result<String, _> = cmd.query_async(conn).await;
                added.map(|_| true)
            }
        };
        written.map_err(|e| {
            self.conn = None;
            describe(&self.addr, &e)
        })
    }
}

impl Actor for RedisDlq {
    type Msg = DlqMsg;
    type State = DlqState;
    type Arguments = DlqArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: DlqArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.connection.client()?;
        let path = args.probe.path().to_string();
        // Present at 0 from the start, for the dashboards.
        metrics::counter!(names::DLQ_ERRORS_TOTAL, "path" => path.clone()).increment(0);
        info!(path = %path, suffix = %args.suffix, "dead-letter stream writer started");
        Ok(DlqState {
            probe: args.probe,
            path,
            addr: args.connection.addr(),
            connection: args.connection,
            conn: None,
            suffix: args.suffix,
            group: args.group,
            counting: args.counting,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (letter, done) = match message {
            DlqMsg::Send(letter, done) => (letter, done),
            DlqMsg::Failed(reason) => return Err(reason.into()),
        };
        let stream = format!("{}{}", letter.source.origin.topic, state.suffix);
        let body = fields(&letter, chrono::Utc::now());
        // Held until Redis answers, so a writer that cannot deliver looks stuck.
        state.probe.hold(1);
        let mut attempt = 1;
        let outcome = loop {
            match state.write(&stream, &letter, &body).await {
                Ok(written) => break Ok(written),
                Err(e) if attempt >= MAX_ATTEMPTS => break Err(e),
                Err(e) => {
                    metrics::counter!(names::DLQ_ERRORS_TOTAL, "path" => state.path.clone())
                        .increment(1);
                    let delay = RETRY_BACKOFF.delay(attempt - 1);
                    warn!(path = %state.path, stream = %stream, attempt, delay = ?delay, error = %e, "dead-letter write failed, retrying");
                    state.probe.set_unhealthy(Some(e));
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        };
        state.probe.release(1);
        match outcome {
            Ok(written) => {
                state.probe.set_unhealthy(None);
                if written {
                    metrics::counter!(names::DLQ_RECORDS_TOTAL, "path" => state.path.clone(), "topic" => letter.source.origin.topic.to_string()).increment(1);
                } else {
                    info!(path = %state.path, stream = %stream, "entry acknowledged already, no dead letter written");
                }
                state.probe.progress(1, letter.source.size() as u64);
                letter.acker.ack(vec![letter.source.origin]);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                Ok(())
            }
            Err(e) => {
                error!(path = %state.path, stream = %stream, error = %e, "dead-letter writer giving up, restarting its path");
                Err(
                    format!("dead letter for {stream} not written after {attempt} attempts: {e}")
                        .into(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use actord_actors::record::{Acker, Origin, Poison, SourceRecord, Topic, MAX_ERROR_BYTES};

    use super::*;

    /// A decoder's message may quote a whole entry: the letter carries at most the cap of it.
    #[test]
    fn a_long_error_is_cut_to_the_cap() {
        let letter = DeadLetter {
            source: SourceRecord {
                origin: Origin {
                    topic: Topic::intern("jobs"),
                    partition: 0,
                    offset: 0,
                    epoch: 1,
                },
                key: Some(b"1-0".to_vec()),
                payload: Some(b"{}".to_vec()),
                timestamp_ms: None,
                headers: vec![("data".into(), b"{}".to_vec())],
            },
            acker: Acker::new(|_| {}),
            poison: Poison::new("JsonError", "é".repeat(100_000)),
            stage: "decode",
            retry_count: 0,
        };
        let fields = fields(&letter, chrono::Utc::now());
        let error = &fields.iter().find(|(k, _)| k == "error").unwrap().1;
        let error = std::str::from_utf8(error).unwrap();
        assert!(error.starts_with("JsonError: é"), "{error:.40}");
        assert!(error.len() < MAX_ERROR_BYTES + 64, "{} bytes", error.len());
        assert!(
            error.ends_with("more bytes)"),
            "{}",
            &error[error.len() - 40..]
        );
    }
}
