//! Observation: every actor owns a [`Probe`] in a shared [`Registry`]; the admin tree, health,
//! metrics and tests read snapshots from it.
//!
//! A probe outlives the incarnations of its actor, so restart counts and the last error survive
//! restarts. Progress is recorded as records or bytes advanced, which is what stuck detection
//! reads: a worker that holds work and stops advancing is stuck, a busy one is not.
//!
//! The probe an incarnation is started with is bound to it: once its supervisor starts the next
//! incarnation, the old handle (held by a task that outlived its actor) records nothing, so a
//! late release or progress report cannot change what the new incarnation holds.
//!
//! Observation knows no supervisor: supervisors are reached by path through
//! [`Supervisors`](crate::supervisor::Supervisors), which whoever runs the tree holds.

mod probe;
mod registry;
mod snapshot;

use std::time::SystemTime;

use serde::Serialize;

pub use probe::Probe;
pub use registry::Registry;
pub use snapshot::{ActorSnapshot, LastError, TreeNode};

/// Lifecycle of an actor as the admin tree shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Status {
    Starting = 0,
    Running = 1,
    /// Failed and waiting for its restart (backoff or cool-down).
    Failed = 2,
    Stopping = 3,
    Stopped = 4,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Starting,
            1 => Status::Running,
            2 => Status::Failed,
            3 => Status::Stopping,
            _ => Status::Stopped,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Failed => "failed",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Supervisor,
    Worker,
}

/// `t` as RFC 3339 in UTC with millisecond precision, e.g. `2025-11-19T16:12:34.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_763_568_754_123);
        assert_eq!(rfc3339(t), "2025-11-19T16:12:34.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
