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

/// The mark of a failure that no restart can mend: a configuration fault found at run time
/// (a table whose columns do not take what the sink writes, a refused login). A supervisor
/// that sees it in a child's failure stops that child's siblings too and keeps them stopped,
/// reported unhealthy, until an operator restarts the subtree (see the supervisor).
pub const MISCONFIGURED: &str = "misconfigured: ";

/// `message` marked as a misconfiguration.
pub fn misconfigured(message: impl std::fmt::Display) -> String {
    format!("{MISCONFIGURED}{message}")
}

/// Whether a failure's reason carries the misconfiguration mark, anywhere in its chain.
pub fn is_misconfigured(reason: &str) -> bool {
    reason.contains(MISCONFIGURED)
}
