//! The sink contract: a writer hands a sink records and learns whether they are durable, or
//! what kind of failure stopped them.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::ErrorKind;
use crate::fence::Fence;
use crate::observe::Probe;
use crate::record::{DeadLetter, Envelope};

/// Why a write failed; the kind decides between retry, dead-lettering and escalation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} error: {message}", kind.as_str())]
pub struct SinkError {
    pub kind: ErrorKind,
    /// A short class for the DLQ (`exception.class.name`), e.g. `SqlState22P02`.
    pub class: String,
    pub message: String,
    /// With a poison error: the records the sink rejected, by index in the batch. Every other
    /// record of the batch is durable. Empty means "something in the batch is poison" and the
    /// writer isolates it by splitting.
    pub rejected: Vec<Rejection>,
}

/// One record a sink rejected while it wrote the rest of its batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub index: usize,
    pub class: String,
    pub message: String,
    /// Attempts the sink made before giving up on the record (the DLQ's `retry_count`).
    pub attempts: u32,
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, "Transient", message)
    }

    pub fn poison(class: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Poison, class, message)
    }

    /// The write was given up because a partition of its records was revoked.
    pub fn fenced(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, "Fenced", message)
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, "Fatal", message)
    }

    /// A fatal error that no restart can mend (see [`crate::error::MISCONFIGURED`]): the path
    /// stops and stays stopped until an operator restarts it.
    pub fn misconfigured(message: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::Fatal,
            "Misconfigured",
            crate::error::misconfigured(message),
        )
    }

    pub fn new(kind: ErrorKind, class: impl Into<String>, message: impl Into<String>) -> Self {
        SinkError {
            kind,
            class: class.into(),
            message: message.into(),
            rejected: Vec::new(),
        }
    }

    /// The batch is written except `rejected`, which can never be: they go to the DLQ.
    pub fn rejected(rejected: Vec<Rejection>) -> Self {
        let message = match rejected.first() {
            Some(r) => format!(
                "{} record(s) rejected, first: {}",
                rejected.len(),
                r.message
            ),
            None => "no record rejected".to_owned(),
        };
        SinkError {
            rejected,
            ..Self::new(ErrorKind::Poison, "Rejected", message)
        }
    }
}

/// A destination for records. `write` succeeds only once the records are durable; a poison
/// error means something in `records` can never be written (the writer isolates it by
/// splitting the batch).
pub trait Sink<R>: Send + 'static {
    fn write(
        &mut self,
        records: &[Envelope<R>],
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Hands the sink its writer's [`Progress`], once per incarnation before the first write. A
    /// sink whose writes can take long (a large COPY, a multipart upload) keeps it and reports
    /// as the write moves, so stuck detection restarts only a write that truly stopped.
    fn attach_progress(&mut self, _progress: Progress) {}

    /// Hands the sink its path's [`Fence`], once per incarnation before the first write. A sink
    /// whose writes cannot be rolled back after the fact (an object upload) checks it before it
    /// makes a write visible, and gives up the write with [`SinkError::fenced`] when a partition
    /// of the records was revoked meanwhile.
    fn attach_fence(&mut self, _fence: Fence) {}

    /// How many batches queued behind each other the writer may hand over in one `write` (a
    /// group commit: one transaction for several batches). Each batch is cut by the buffer's
    /// rules as always; only a writer that finds more already waiting groups them. 1 (the
    /// default) writes every batch on its own, which a sink whose output follows the batch
    /// cuts (an object per batch) keeps.
    fn group_batches(&self) -> usize {
        1
    }

    /// The writer is about to dead-letter `letters`, records of the batch that never reach the
    /// sink because they could not be decoded (on a path that does not own the DLQ, to skip
    /// them). A sink that judges how much of its input is refused (a rejection breaker) counts
    /// them here; an error fails the writer before any of them is dead-lettered or
    /// acknowledged.
    fn undecodable(&mut self, _letters: &[DeadLetter]) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Reports that a write in progress is moving (rows sent, bytes uploaded). Cheap to clone and
/// usable from any task; once its writer's incarnation is replaced it records nothing.
#[derive(Clone)]
pub struct Progress {
    probe: Option<Probe>,
}

impl Progress {
    pub fn new(probe: Probe) -> Self {
        Progress { probe: Some(probe) }
    }

    /// A handle that reports nowhere (a sink used outside a writer).
    pub fn none() -> Self {
        Progress { probe: None }
    }

    /// The write moved: `records` rows sent or `bytes` transferred since the last call. Only
    /// liveness is recorded here; the writer counts records and bytes once the write is durable.
    pub fn advanced(&self, records: u64, bytes: u64) {
        if records == 0 && bytes == 0 {
            return;
        }
        if let Some(probe) = &self.probe {
            probe.progress(0, 0);
        }
    }
}

/// Makes a sink for each incarnation of a writer (connects, prepares statements, …).
pub type SinkFactory<S> = Arc<dyn Fn() -> BoxFuture<'static, Result<S, SinkError>> + Send + Sync>;
