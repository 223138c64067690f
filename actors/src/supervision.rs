//! What a supervisor tells observers about a child beyond its status: a restart it scheduled,
//! the threshold past which it counts the child stuck, and what is left of its own budget.
//!
//! The admin tree, the operator views and the status metric read it through
//! [`Probe::supervision_snapshot`]; nothing here decides anything.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::observe::{rfc3339, Probe, Status};

/// The supervisor's view of one actor, kept on its probe.
#[derive(Default)]
pub struct Supervision {
    /// When the scheduled restart is due: the monotonic instant and the wall-clock time.
    backoff_until: Option<(Instant, SystemTime)>,
    /// A worker holding work without progress this long is killed as stuck.
    stuck_after: Option<Duration>,
    /// The restart budget of a supervisor, and the restarts charged to it.
    budget: Option<BudgetWindow>,
}

struct BudgetWindow {
    max_restarts: u32,
    within: Duration,
    charged: VecDeque<Instant>,
}

/// An actor's lifecycle as operators and dashboards read it: [`Status`] refined with what the
/// supervisor knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    Running,
    /// Failed, with a restart scheduled after a backoff.
    BackingOff,
    /// Running, but holding work without progress for longer than its stuck threshold.
    Stuck,
    /// Failed and not (or not yet) scheduled to restart.
    Failed,
    Stopping,
    Stopped,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Starting,
        State::Running,
        State::BackingOff,
        State::Stuck,
        State::Failed,
        State::Stopping,
        State::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::BackingOff => "backing_off",
            State::Stuck => "stuck",
            State::Failed => "failed",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }
}

/// A supervisor's restart budget at one moment.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BudgetSnapshot {
    /// `None`: unlimited (the root without `fail_fast`).
    pub max_restarts: Option<u32>,
    pub within_seconds: f64,
    /// Restarts charged within the window.
    pub used: u64,
    /// Restarts still allowed within the window; `None` when unlimited.
    pub left: Option<u64>,
}

/// The live fields of one actor's snapshot that come from its supervisor and the clock.
#[derive(Clone, Debug, Serialize)]
pub struct SupervisionSnapshot {
    pub state: State,
    /// RFC 3339 time at which a scheduled restart is due, while the actor backs off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_off_until: Option<String>,
    /// Seconds since the last recorded progress.
    pub progress_age_seconds: Option<f64>,
    /// Seconds the actor has held work without progress, while it holds any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stuck_after_seconds: Option<f64>,
    /// A supervisor's own restart budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_budget: Option<BudgetSnapshot>,
}

impl Probe {
    /// Records that the actor restarts after `delay` (its supervisor scheduled it).
    pub(crate) fn set_backoff(&self, delay: Duration) {
        self.supervision().backoff_until =
            Some((Instant::now() + delay, SystemTime::now() + delay));
    }

    pub(crate) fn set_stuck_after(&self, stuck_after: Option<Duration>) {
        self.supervision().stuck_after = stuck_after;
    }

    /// Records the restarts a supervisor charged to its budget within the window.
    pub(crate) fn set_budget(
        &self,
        max_restarts: u32,
        within: Duration,
        charged: &VecDeque<Instant>,
    ) {
        self.supervision().budget = Some(BudgetWindow {
            max_restarts,
            within,
            charged: charged.clone(),
        });
    }

    /// When the scheduled restart is due, while one is pending and the actor is failed.
    pub fn backing_off_until(&self, now: Instant) -> Option<SystemTime> {
        if self.status() != Status::Failed {
            return None;
        }
        let due = self.supervision().backoff_until;
        match due {
            Some((due, wall)) if due > now => Some(wall),
            _ => None,
        }
    }

    /// The actor's state: its status, refined by a pending restart or a stall past its
    /// stuck threshold.
    pub fn state(&self, now: Instant) -> State {
        match self.status() {
            Status::Starting => State::Starting,
            Status::Stopping => State::Stopping,
            Status::Stopped => State::Stopped,
            Status::Failed if self.backing_off_until(now).is_some() => State::BackingOff,
            Status::Failed => State::Failed,
            Status::Running => {
                let stuck_after = self.supervision().stuck_after;
                match (stuck_after, self.stalled_for(now)) {
                    (Some(limit), Some(stalled)) if stalled >= limit => State::Stuck,
                    _ => State::Running,
                }
            }
        }
    }

    /// A supervisor's restart budget now: restarts older than its window no longer count.
    pub fn budget(&self, now: Instant) -> Option<BudgetSnapshot> {
        let s = self.supervision();
        let b = s.budget.as_ref()?;
        let used = b
            .charged
            .iter()
            .filter(|t| now.saturating_duration_since(**t) <= b.within)
            .count() as u64;
        let unlimited = b.max_restarts == u32::MAX;
        Some(BudgetSnapshot {
            max_restarts: (!unlimited).then_some(b.max_restarts),
            within_seconds: b.within.as_secs_f64(),
            used,
            left: (!unlimited).then(|| u64::from(b.max_restarts).saturating_sub(used)),
        })
    }

    pub fn supervision_snapshot(&self) -> SupervisionSnapshot {
        let now = Instant::now();
        let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
        // Read alone: the guard must be gone before `budget` locks again.
        let stuck_after = self.supervision().stuck_after;
        SupervisionSnapshot {
            state: self.state(now),
            backing_off_until: self.backing_off_until(now).map(rfc3339),
            progress_age_seconds: self.since_progress(now).map(secs),
            stalled_seconds: self.stalled_for(now).map(secs),
            stuck_after_seconds: stuck_after.map(secs),
            restart_budget: self.budget(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{ActorKind, Registry};
    use crate::ActorPath;

    #[tokio::test(start_paused = true)]
    async fn a_failed_actor_backs_off_until_its_restart_is_due() {
        let reg = Registry::new();
        let p = reg.probe(&ActorPath::root().child("w"), ActorKind::Worker);
        p.set_status(Status::Failed);
        assert_eq!(p.state(Instant::now()), State::Failed);
        p.set_backoff(Duration::from_secs(4));
        assert_eq!(p.state(Instant::now()), State::BackingOff);
        assert!(p.supervision_snapshot().backing_off_until.is_some());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(p.state(Instant::now()), State::Failed);
        p.set_backoff(Duration::from_secs(4));
        p.set_status(Status::Starting);
        assert_eq!(p.state(Instant::now()), State::Starting);
        assert_eq!(p.supervision_snapshot().backing_off_until, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_worker_holding_work_past_its_threshold_is_stuck() {
        let reg = Registry::new();
        let p = reg.probe(&ActorPath::root().child("w"), ActorKind::Worker);
        p.set_status(Status::Running);
        p.set_stuck_after(Some(Duration::from_secs(10)));
        p.hold(1);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(p.state(Instant::now()), State::Running);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(p.state(Instant::now()), State::Stuck);
        p.progress(1, 0);
        assert_eq!(p.state(Instant::now()), State::Running);
        assert_eq!(p.supervision_snapshot().progress_age_seconds, Some(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_leave_the_budget_as_the_window_slides() {
        let reg = Registry::new();
        let p = reg.probe(&ActorPath::root().child("s"), ActorKind::Supervisor);
        assert_eq!(p.budget(Instant::now()), None);
        let mut charged = VecDeque::new();
        charged.push_back(Instant::now());
        tokio::time::sleep(Duration::from_secs(30)).await;
        charged.push_back(Instant::now());
        p.set_budget(3, Duration::from_secs(60), &charged);
        let b = p.budget(Instant::now()).expect("set");
        assert_eq!((b.used, b.left, b.max_restarts), (2, Some(1), Some(3)));
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(p.budget(Instant::now()).expect("set").left, Some(2));
        p.set_budget(u32::MAX, Duration::from_secs(60), &charged);
        assert_eq!(p.budget(Instant::now()).expect("set").left, None);
    }
}
