//! Error kinds shared by every connector: they decide between retry, DLQ and escalation.

use serde::Serialize;

/// What a failure means for the record or batch that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The dependency is unavailable or busy: retry with backoff, never dead-letter.
    Transient,
    /// This input can never succeed: dead-letter it with context and move on.
    Poison,
    /// A bug, a schema mismatch or bad configuration: stop and escalate.
    Fatal,
}

impl ErrorKind {
    /// The bounded label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Poison => "poison",
            ErrorKind::Fatal => "fatal",
        }
    }
}
