//! The supervisor: OTP restart semantics on top of ractor's supervision events.
//!
//! Guarantees:
//! - A child is restarted according to its restart type (`permanent`, `transient`, `temporary`)
//!   and the supervisor's strategy (`one_for_one`, `one_for_all`, `rest_for_one`), after a
//!   capped exponential backoff.
//! - More than `max_restarts` restarts within `within` exhaust the budget: the supervisor stops
//!   its children in reverse start order and fails, so its own supervisor sees a failure. So do
//!   more than `max_restarts` failed starts in a row, or stuck restarts in a row of a child that
//!   never advanced, however far apart they are (a start timeout or `stuck_after` longer than
//!   the window would otherwise retry forever).
//! - A start runs in its own task, bounded by the child's start timeout: a hung `pre_start`
//!   counts as a failed start, and the supervisor keeps serving stuck checks, restarts and
//!   operator calls meanwhile. Children of one group start one after another, in order.
//! - Stopping a child is graceful first (its `post_stop` runs) and forced after its shutdown
//!   timeout, or earlier when the supervisor's own stop deadline leaves less. Children stop in
//!   reverse start order, or all at once under `concurrent_stop`.
//! - A child that holds work without recording progress for its `stuck_after` is killed and
//!   treated as failed.
//! - A kill that does not take effect (a handler blocked in synchronous code) is reported, and
//!   no new incarnation starts while the old one may still run.
//! - A child failure marked as a misconfiguration ([`crate::error::MISCONFIGURED`]) is not
//!   restarted and not charged to the budget: restarting cannot mend it, and a restart loop
//!   would only end in a failed pipeline that the root retries for ever. The supervisor stops
//!   every child, keeps them stopped and reports itself unhealthy with the reason (so the
//!   pipeline is not ready) until an operator restarts or starts them.
//! - Children are spawned without global names, so any number of trees can run in one process;
//!   they are known by path through the [`Registry`](crate::observe::Registry), and running
//!   supervisors through [`Supervisors`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort,
    SupervisionEvent,
};
use thiserror::Error;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::names;
use crate::observe::{ActorKind, Probe, Status};
use crate::path::ActorPath;
use crate::spec::{ChildContext, ChildSpec, Restart, Strategy, SupervisorSpec};

/// How long a killed actor may take to end before the kill counts as failed.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// What a supervisor keeps of its stop deadline for its own bookkeeping.
const STOP_RESERVE: Duration = Duration::from_millis(200);

/// A supervisor actor. Spawn it with [`SupervisorArgs`]; it starts its children in order.
pub struct Supervisor;

pub struct SupervisorArgs {
    pub spec: SupervisorSpec,
    pub children: Vec<ChildSpec>,
    /// This supervisor's own probe; its path is the parent of every child path.
    pub probe: Probe,
    /// Where this supervisor and the ones below it make themselves reachable by path.
    pub supervisors: Supervisors,
}

/// The running supervisors of one tree, by path: how an operator's call reaches the
/// supervisor that owns an actor. A supervisor enters itself when it starts and leaves when it
/// stops; a later incarnation's entry is never removed by an earlier one.
#[derive(Clone, Default)]
pub struct Supervisors {
    inner: Arc<RwLock<BTreeMap<ActorPath, ActorRef<SupervisorMsg>>>>,
}

impl Supervisors {
    /// The supervisor running at `path`, if any.
    pub fn get(&self, path: &ActorPath) -> Option<ActorRef<SupervisorMsg>> {
        self.inner
            .read()
            .expect("supervisors lock")
            .get(path)
            .cloned()
    }

    fn enter(&self, path: &ActorPath, actor: ActorRef<SupervisorMsg>) {
        self.inner
            .write()
            .expect("supervisors lock")
            .insert(path.clone(), actor);
    }

    /// Removes the entry at `path` if it is still `actor`'s.
    fn leave(&self, path: &ActorPath, actor: ActorId) {
        let mut map = self.inner.write().expect("supervisors lock");
        if map.get(path).is_some_and(|a| a.get_id() == actor) {
            map.remove(path);
        }
    }

    /// Forgets every supervisor strictly below `path`: they ended with the one at `path`.
    pub fn remove_below(&self, path: &ActorPath) {
        self.inner
            .write()
            .expect("supervisors lock")
            .retain(|p, _| !(p.starts_with(path) && p != path));
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SupervisorError {
    #[error("no child {0:?} under this supervisor")]
    UnknownChild(String),
    #[error("a child named {0:?} already exists")]
    AlreadyExists(String),
    #[error("child {0:?} is not running")]
    NotRunning(String),
    #[error("child {id:?} failed to start: {reason}")]
    StartFailed { id: String, reason: String },
    #[error("restart budget exhausted at {path}: more than {max_restarts} restarts within {within:?}; last failure: {last}")]
    BudgetExhausted {
        path: String,
        max_restarts: u32,
        within: Duration,
        last: String,
    },
    #[error(
        "restart budget exhausted at {path}: {what} {count} times in a row; last failure: {last}"
    )]
    FailingInARow {
        path: String,
        what: &'static str,
        count: u32,
        last: String,
    },
}

type Reply = RpcReplyPort<Result<(), SupervisorError>>;

pub enum SupervisorMsg {
    /// A scheduled restart of `ids` is due; ignored when `token` is stale.
    RestartDue { ids: Vec<String>, token: u64 },
    /// Periodic check of children with a `stuck_after`.
    CheckStuck,
    /// Adds and starts a child at run time (worker pools grow).
    AddChild(ChildSpec, Reply),
    /// Stops and forgets a child (worker pools shrink).
    RemoveChild(String, Reply),
    /// Stops a child gracefully and starts it again from a new spec with the same id, in the
    /// same place (a reloaded configuration). Counted as a restart, outside the budget; the
    /// siblings are untouched whatever the strategy. A child an operator stopped stays stopped.
    ReplaceChild(ChildSpec, Reply),
    /// Stops a child and keeps it stopped until `StartChild` (operator stop).
    StopChild(String, Reply),
    /// Starts a stopped child (operator start).
    StartChild(String, Reply),
    /// Stops a child gracefully and starts it again (operator restart; outside the budget).
    RestartChild(String, Reply),
    /// Kills a child and treats it as failed, as if its handler had returned an error.
    FailChild(String, Reply),
    /// Lists the children's ids in start order.
    Children(RpcReplyPort<Vec<String>>),
    /// Internal: start number `seq` ended (sent by the start's own task).
    StartDone {
        seq: u64,
        result: Result<ActorCell, String>,
    },
    /// Internal: start number `seq` ran past its timeout.
    StartTimedOut { seq: u64 },
    /// Internal: the kill of child `id`'s incarnation `cell` should have taken effect by now.
    KillOverdue { id: String, cell: ActorId },
}

/// Why the supervisor killed a running incarnation; its termination is then a failure.
struct Kill {
    reason: String,
    stuck: bool,
}

/// How an incarnation ended, as far as the restart decision goes.
enum Exit {
    Normal,
    Failed(String),
    /// Its start failed or timed out.
    StartFailed(String),
    /// Killed for holding work without progress.
    Stuck(String),
}

impl Exit {
    fn failure(&self) -> Option<&str> {
        match self {
            Exit::Normal => None,
            Exit::Failed(r) | Exit::StartFailed(r) | Exit::Stuck(r) => Some(r),
        }
    }
}

struct Child {
    spec: ChildSpec,
    probe: Probe,
    cell: Option<ActorCell>,
    started_at: Instant,
    /// Consecutive restarts, the exponent of the backoff.
    attempt: u32,
    /// Matches the token of the restart scheduled for this child.
    token: u64,
    /// Set when we killed the running incarnation.
    kill: Option<Kill>,
    /// Stopped by an operator: not restarted until started again.
    held: bool,
    /// Failed starts since the last successful one.
    failed_starts: u32,
    /// Stuck restarts in a row of incarnations that never advanced.
    stuck_kills: u32,
    /// A start task that was abandoned (timed out or cancelled) and may still run.
    abandoned_start: Option<JoinHandle<()>>,
}

/// Children to start one after another, and who waits for the outcome.
struct StartJob {
    ids: VecDeque<String>,
    reply: Option<Reply>,
    kind: JobKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JobKind {
    /// The supervisor's own start: children not yet scheduled for a restart.
    Initial,
    /// A restart after a failure, valid while the children carry `token`.
    Restart { token: u64 },
    /// Started by an operator (start, restart).
    Operator,
    /// Added at run time; a failed start forgets the child.
    Add,
}

/// A start under way. A job starts its children one after another; under `one_for_one`
/// different jobs run side by side (the children are independent), under the other
/// strategies one job at a time.
struct InFlight {
    seq: u64,
    id: String,
    job: StartJob,
    /// `None` when the start was refused without running.
    task: Option<JoinHandle<()>>,
    timeout: Duration,
}

pub struct SupervisorState {
    spec: SupervisorSpec,
    probe: Probe,
    supervisors: Supervisors,
    /// This incarnation, for leaving [`Supervisors`] without removing a later one.
    me: ActorId,
    children: Vec<Child>,
    restarts: VecDeque<Instant>,
    next_token: u64,
    /// A `CheckStuck` is pending; one timer chain at most.
    stuck_check_pending: bool,
    queue: VecDeque<StartJob>,
    inflight: Vec<InFlight>,
    next_seq: u64,
}

impl SupervisorState {
    fn path(&self) -> &ActorPath {
        self.probe.path()
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.children.iter().position(|c| c.spec.id == id)
    }

    fn index_of_cell(&self, cell: ActorId) -> Option<usize> {
        self.children
            .iter()
            .position(|c| c.cell.as_ref().map(|a| a.get_id()) == Some(cell))
    }

    fn require(&self, id: &str) -> Result<usize, SupervisorError> {
        self.index_of(id)
            .ok_or_else(|| SupervisorError::UnknownChild(id.to_owned()))
    }

    fn new_child(&self, spec: ChildSpec) -> Child {
        let path = self.path().child(&spec.id);
        let probe = self.probe.registry().probe(&path, spec.kind);
        probe.set_stuck_after(spec.stuck_after);
        Child {
            spec,
            probe,
            cell: None,
            started_at: Instant::now(),
            attempt: 0,
            token: 0,
            kill: None,
            held: false,
            failed_starts: 0,
            stuck_kills: 0,
            abandoned_start: None,
        }
    }

    fn enqueue(&mut self, myself: &ActorRef<SupervisorMsg>, job: StartJob) {
        self.queue.push_back(job);
        self.pump(myself);
    }

    /// Begins queued jobs: all of them under `one_for_one`, else one at a time.
    fn pump(&mut self, myself: &ActorRef<SupervisorMsg>) {
        while !self.queue.is_empty()
            && (self.inflight.is_empty() || self.spec.strategy == Strategy::OneForOne)
        {
            let job = self.queue.pop_front().expect("not empty");
            self.advance(myself, job);
        }
    }

    /// Starts the next eligible child of `job`, or completes the job.
    fn advance(&mut self, myself: &ActorRef<SupervisorMsg>, mut job: StartJob) {
        while let Some(id) = job.ids.pop_front() {
            let Some(idx) = self.index_of(&id) else {
                continue;
            };
            let child = &self.children[idx];
            let eligible = child.cell.is_none()
                && !child.held
                && !self.inflight.iter().any(|f| f.id == id)
                && match job.kind {
                    JobKind::Initial => child.token == 0,
                    JobKind::Restart { token } => child.token == token,
                    JobKind::Operator | JobKind::Add => true,
                };
            if !eligible {
                continue;
            }
            if matches!(job.kind, JobKind::Restart { .. }) {
                child.probe.count_restart();
            }
            self.begin_start(myself, idx, job);
            return;
        }
        if let Some(reply) = job.reply {
            let _ = reply.send(Ok(()));
        }
    }

    /// Spawns the start of child `idx` in its own task and arms its timeout.
    fn begin_start(&mut self, myself: &ActorRef<SupervisorMsg>, idx: usize, job: StartJob) {
        self.next_seq += 1;
        let seq = self.next_seq;
        let child = &mut self.children[idx];
        let id = child.spec.id.clone();
        child.probe.set_status(Status::Starting);
        child.probe.clear_pending();
        child.probe.set_stop_deadline(None);
        child.probe.set_unhealthy(None);
        child.kill = None;
        // Counted from the attempt, so repeated start failures keep growing the backoff.
        child.started_at = Instant::now();
        if let Some(reason) = still_running(child) {
            // Reported as a failed start, with backoff and budget, until the old one ends.
            error!(path = %child.probe.path(), error = %reason, "not starting a new incarnation while the previous one may still run");
            let result = Err(reason);
            let timeout = child.spec.start_timeout;
            self.inflight.push(InFlight {
                seq,
                id,
                job,
                task: None,
                timeout,
            });
            let _ = myself.cast(SupervisorMsg::StartDone { seq, result });
            return;
        }
        if child.spec.kind == ActorKind::Supervisor {
            child.probe.set_stop_budget(child.spec.shutdown);
        }
        let ctx = ChildContext {
            supervisor: myself.get_cell(),
            path: child.probe.path().clone(),
            probe: child.probe.next_incarnation(),
            supervisors: self.supervisors.clone(),
        };
        let start = child.spec.start_fn(ctx);
        let timeout = child.spec.start_timeout;
        let me = myself.clone();
        let task = tokio::spawn(async move {
            let result = start.await.map_err(|e| match e {
                ractor::SpawnErr::StartupFailed(err) => err.to_string(),
                other => other.to_string(),
            });
            let cell = result.as_ref().ok().cloned();
            if me.cast(SupervisorMsg::StartDone { seq, result }).is_err() {
                // The supervisor is gone: nobody supervises what just started.
                if let Some(cell) = cell {
                    cell.kill();
                }
            }
        });
        myself.send_after(timeout, move || SupervisorMsg::StartTimedOut { seq });
        self.inflight.push(InFlight {
            seq,
            id,
            job,
            task: Some(task),
            timeout,
        });
    }

    /// Abandons the start of child `id` under way, if any (the child is stopped or removed, or
    /// the supervisor stops). Its task may still run if it is blocked; a late success is killed
    /// on arrival.
    fn cancel_start(&mut self, id: &str, reason: &str) {
        let Some(pos) = self.inflight.iter().position(|f| f.id == id) else {
            return;
        };
        let f = self.inflight.remove(pos);
        if let (Some(task), Some(idx)) = (f.task, self.index_of(&f.id)) {
            task.abort();
            self.children[idx].abandoned_start = Some(task);
        }
        if let Some(reply) = f.job.reply {
            let _ = reply.send(Err(SupervisorError::StartFailed {
                id: f.id.clone(),
                reason: reason.to_owned(),
            }));
        }
    }

    async fn start_done(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        seq: u64,
        result: Result<ActorCell, String>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(pos) = self.inflight.iter().position(|f| f.seq == seq) else {
            if let Ok(cell) = result {
                warn!(path = %self.path(), "an abandoned start finished late, stopping what it started");
                cell.kill();
            }
            return Ok(());
        };
        let f = self.inflight.remove(pos);
        self.finish_start(myself, f.id, f.job, result).await
    }

    async fn start_timed_out(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        seq: u64,
    ) -> Result<(), ActorProcessingErr> {
        let Some(pos) = self.inflight.iter().position(|f| f.seq == seq) else {
            return Ok(());
        };
        let f = self.inflight.remove(pos);
        let reason = format!("start timed out after {:?}", f.timeout);
        if let Some(idx) = self.index_of(&f.id) {
            let child = &mut self.children[idx];
            warn!(path = %child.probe.path(), timeout = ?f.timeout, "actor did not start in time, abandoning the start");
            metrics::counter!(names::ACTOR_START_TIMEOUTS_TOTAL, "path" => child.probe.path().to_string()).increment(1);
            // Cancelled at its next await; if it is blocked, no new incarnation starts until
            // it ends.
            if let Some(task) = f.task {
                task.abort();
                child.abandoned_start = Some(task);
            }
        }
        self.finish_start(myself, f.id, f.job, Err(reason)).await
    }

    /// Applies the outcome of a start and moves on to the next one.
    async fn finish_start(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: String,
        mut job: StartJob,
        result: Result<ActorCell, String>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(idx) = self.index_of(&id) else {
            if let Ok(cell) = result {
                cell.kill();
            }
            self.advance(myself, job);
            self.pump(myself);
            return Ok(());
        };
        match result {
            Ok(cell) => {
                let child = &mut self.children[idx];
                child.cell = Some(cell);
                child.token = 0;
                child.failed_starts = 0;
                child.probe.set_status(Status::Running);
                self.schedule_stuck_check(myself);
                self.advance(myself, job);
            }
            Err(reason) => {
                let kind = job.kind;
                if let Some(reply) = job.reply.take() {
                    let _ = reply.send(Err(SupervisorError::StartFailed {
                        id: id.clone(),
                        reason: reason.clone(),
                    }));
                }
                if kind == JobKind::Add {
                    let child = self.children.remove(idx);
                    child.probe.set_status(Status::Stopped);
                    self.probe.registry().remove_subtree(child.probe.path());
                } else {
                    self.children[idx].failed_starts += 1;
                    // A restart group is rescheduled as a whole by the failure.
                    self.child_exited(myself, idx, Exit::StartFailed(reason))
                        .await?;
                    if kind == JobKind::Initial {
                        // The other children still start; those the failure rescheduled
                        // with it no longer match the initial job.
                        self.advance(myself, job);
                    }
                }
            }
        }
        self.pump(myself);
        Ok(())
    }

    /// Stops child `idx` gracefully within `timeout`, killing it after.
    async fn stop_child(&mut self, idx: usize, timeout: Duration) {
        let child = &mut self.children[idx];
        let Some(cell) = child.cell.take() else {
            return;
        };
        stop_cell(
            cell,
            &child.probe,
            child.spec.kind,
            timeout,
            &self.supervisors,
        )
        .await;
    }

    /// Stops every child within this supervisor's stop deadline, if one was set: one after
    /// another in reverse start order, or all at once under `concurrent_stop`. Each child gets
    /// its own shutdown timeout, or what is left of the deadline when that is less.
    async fn stop_all(&mut self) {
        let starting: Vec<String> = self.inflight.iter().map(|f| f.id.clone()).collect();
        for id in starting {
            self.cancel_start(&id, "the supervisor is stopping");
        }
        for job in self.queue.drain(..) {
            if let Some(reply) = job.reply {
                let _ = reply.send(Err(SupervisorError::StartFailed {
                    id: job.ids.front().cloned().unwrap_or_default(),
                    reason: "the supervisor is stopping".to_owned(),
                }));
            }
        }
        let deadline = self
            .probe
            .take_stop_deadline()
            .or_else(|| self.probe.stop_budget().map(|b| Instant::now() + b))
            .map(|d| d.checked_sub(STOP_RESERVE).unwrap_or(d));
        let limit = |own: Duration| match deadline {
            Some(d) => own.min(d.saturating_duration_since(Instant::now())),
            None => own,
        };
        if self.spec.concurrent_stop {
            let stops: Vec<_> = self
                .children
                .iter_mut()
                .filter_map(|c| {
                    let cell = c.cell.take()?;
                    let timeout = limit(c.spec.shutdown);
                    let (probe, kind) = (c.probe.clone(), c.spec.kind);
                    let supervisors = self.supervisors.clone();
                    Some(async move { stop_cell(cell, &probe, kind, timeout, &supervisors).await })
                })
                .collect();
            futures::future::join_all(stops).await;
        } else {
            for idx in (0..self.children.len()).rev() {
                let timeout = limit(self.children[idx].spec.shutdown);
                self.stop_child(idx, timeout).await;
            }
        }
    }

    /// Records one restart in the window; false when the budget is exhausted.
    fn charge_budget(&mut self) -> bool {
        let now = Instant::now();
        self.restarts.push_back(now);
        while let Some(first) = self.restarts.front() {
            if now.saturating_duration_since(*first) > self.spec.within {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.probe
            .set_budget(self.spec.max_restarts, self.spec.within, &self.restarts);
        self.restarts.len() as u64 <= u64::from(self.spec.max_restarts)
    }

    /// The children that restart together with `idx` under the strategy, in start order.
    fn restart_group(&self, idx: usize) -> Vec<usize> {
        match self.spec.strategy {
            Strategy::OneForOne => vec![idx],
            Strategy::OneForAll => (0..self.children.len())
                .filter(|&i| i == idx || !self.children[i].held)
                .collect(),
            Strategy::RestForOne => (idx..self.children.len())
                .filter(|&i| i == idx || !self.children[i].held)
                .collect(),
        }
    }

    /// Handles the end of child `idx`'s incarnation.
    async fn child_exited(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
        exit: Exit,
    ) -> Result<(), ActorProcessingErr> {
        let child = &mut self.children[idx];
        let ended = child.cell.take().map(|c| c.get_id());
        child.kill = None;
        child.probe.clear_pending();
        let path = child.probe.path().clone();
        if child.spec.kind == ActorKind::Supervisor {
            // Whatever ran below it ended with it.
            self.probe.registry().mark_stopped_below(&path);
            self.supervisors.remove_below(&path);
            if let Some(ended) = ended {
                self.supervisors.leave(&path, ended);
            }
        }
        let child = &mut self.children[idx];
        let failure = exit.failure().map(str::to_owned);
        match &failure {
            Some(reason) => {
                warn!(path = %path, error = %reason, "actor failed");
                child.probe.set_error(reason.clone());
            }
            None => info!(path = %path, "actor exited"),
        }
        if let Some(reason) = failure
            .as_deref()
            .filter(|r| crate::error::is_misconfigured(r))
        {
            let reason = reason.to_owned();
            self.park(idx, &reason).await;
            return Ok(());
        }
        let child = &mut self.children[idx];
        let restart = match child.spec.restart {
            Restart::Permanent => !child.held,
            Restart::Transient => failure.is_some() && !child.held,
            Restart::Temporary => false,
        };
        if !restart {
            child.probe.set_status(if failure.is_some() {
                Status::Failed
            } else {
                Status::Stopped
            });
            if child.spec.restart == Restart::Temporary {
                self.children.remove(idx);
                self.probe.registry().remove_subtree(&path);
            }
            return Ok(());
        }
        child.probe.set_status(if failure.is_some() {
            Status::Failed
        } else {
            Status::Starting
        });
        let in_a_row = match &exit {
            Exit::StartFailed(_) => Some(("failed to start", child.failed_starts)),
            Exit::Stuck(_) => Some(("stuck without progress", child.stuck_kills)),
            _ => None,
        };
        let reason = failure.unwrap_or_else(|| "exited normally".to_owned());
        if let Some((what, count)) = in_a_row.filter(|(_, n)| *n > self.spec.max_restarts) {
            let err = SupervisorError::FailingInARow {
                path: path.to_string(),
                what,
                count,
                last: reason,
            };
            return Err(self.exhausted(err).await);
        }
        if !self.charge_budget() {
            let err = SupervisorError::BudgetExhausted {
                path: self.path().to_string(),
                max_restarts: self.spec.max_restarts,
                within: self.spec.within,
                last: reason,
            };
            return Err(self.exhausted(err).await);
        }
        let group = self.restart_group(idx);
        for &i in group.iter().rev() {
            if i != idx && self.children[i].cell.is_some() {
                let timeout = self.children[i].spec.shutdown;
                self.stop_child(i, timeout).await;
                self.children[i].probe.set_status(Status::Starting);
            }
        }
        // Temporary siblings are stopped with the group but never come back (OTP).
        let (temporary, group): (Vec<usize>, Vec<usize>) = group
            .into_iter()
            .partition(|&i| i != idx && self.children[i].spec.restart == Restart::Temporary);
        self.schedule_restart(myself, idx, group);
        for i in temporary.into_iter().rev() {
            let child = self.children.remove(i);
            self.probe.registry().remove_subtree(child.probe.path());
        }
        Ok(())
    }

    fn schedule_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
        group: Vec<usize>,
    ) {
        let within = self.spec.within;
        let child = &mut self.children[idx];
        if child.started_at.elapsed() >= within {
            child.attempt = 0;
        }
        let delay = self.spec.backoff.delay(child.attempt);
        child.attempt = child.attempt.saturating_add(1);
        child.probe.set_backoff(delay);
        self.next_token += 1;
        let token = self.next_token;
        let ids: Vec<String> = group
            .iter()
            .map(|&i| {
                self.children[i].token = token;
                self.children[i].spec.id.clone()
            })
            .collect();
        info!(path = %self.path(), children = ?ids, delay = ?delay, "restart scheduled");
        myself.send_after(delay, move || SupervisorMsg::RestartDue { ids, token });
    }

    /// Stops every child and returns the error that fails this supervisor upward.
    /// A child failed with a misconfiguration: stops every child and keeps them stopped (held,
    /// as after an operator stop), reporting why, until an operator starts them again.
    async fn park(&mut self, idx: usize, reason: &str) {
        let path = self.path().to_string();
        let child = self.children[idx].probe.path().to_string();
        error!(path = %path, child = %child, error = %reason, "misconfigured: stopping every child and keeping them stopped until an operator restarts them");
        self.stop_all().await;
        for c in &mut self.children {
            c.held = true;
            c.token = 0;
        }
        self.children[idx].probe.set_status(Status::Failed);
        self.probe.set_unhealthy(Some(format!(
            "{child} is misconfigured and stays stopped until an operator restarts {path}: {reason}"
        )));
    }

    async fn exhausted(&mut self, err: SupervisorError) -> ActorProcessingErr {
        let path = self.path().to_string();
        error!(path = %path, max_restarts = self.spec.max_restarts, within = ?self.spec.within, error = %err, "restart budget exhausted, stopping children and failing upward");
        metrics::counter!(names::SUPERVISOR_BUDGET_EXHAUSTED_TOTAL, "path" => path).increment(1);
        self.stop_all().await;
        self.supervisors.leave(self.probe.path(), self.me);
        Box::new(err)
    }

    fn schedule_stuck_check(&mut self, myself: &ActorRef<SupervisorMsg>) {
        if !self.stuck_check_pending && self.children.iter().any(|c| c.spec.stuck_after.is_some()) {
            self.stuck_check_pending = true;
            myself.send_after(self.spec.stuck_check, || SupervisorMsg::CheckStuck);
        }
    }

    fn check_stuck(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let now = Instant::now();
        for child in &mut self.children {
            let (Some(limit), Some(cell)) = (child.spec.stuck_after, &child.cell) else {
                continue;
            };
            if child.kill.is_some() {
                continue;
            }
            if let Some(stalled) = child.probe.stalled_for(now) {
                if stalled >= limit {
                    let reason = format!(
                        "stuck: held {} units of work without progress for {:?}",
                        child.probe.pending(),
                        stalled
                    );
                    // An incarnation that advanced since it started breaks the streak.
                    let advanced = child
                        .probe
                        .since_progress(now)
                        .is_some_and(|d| d < now.saturating_duration_since(child.started_at));
                    child.stuck_kills = if advanced { 1 } else { child.stuck_kills + 1 };
                    warn!(path = %child.probe.path(), stalled = ?stalled, in_a_row = child.stuck_kills, "actor stuck, restarting it");
                    metrics::counter!(names::ACTOR_STUCK_TOTAL, "path" => child.probe.path().to_string()).increment(1);
                    child.kill = Some(Kill {
                        reason,
                        stuck: true,
                    });
                    kill(myself, &child.spec.id, cell);
                }
            }
        }
    }

    /// A kill sent to child `id`'s incarnation `cell` should have ended it by now.
    fn kill_overdue(&mut self, id: &str, cell: ActorId) {
        let Some(idx) = self.index_of(id) else {
            return;
        };
        let child = &self.children[idx];
        let Some(current) = child.cell.as_ref().filter(|c| c.get_id() == cell) else {
            return;
        };
        if current.get_status() == ActorStatus::Stopped {
            return;
        }
        let reason = format!(
            "killed {KILL_GRACE:?} ago and still running: its handler is blocked in synchronous code; no new incarnation starts until it ends"
        );
        error!(path = %child.probe.path(), "{reason}");
        metrics::counter!(names::ACTOR_KILL_FAILED_TOTAL, "path" => child.probe.path().to_string())
            .increment(1);
        child.probe.set_error(reason);
        child.probe.set_status(Status::Failed);
    }

    /// Starts a child on an operator's request. A failed start is then handled like any
    /// failure (restart with backoff, charged to the budget).
    fn start_held(&mut self, myself: &ActorRef<SupervisorMsg>, idx: usize, reply: Reply) {
        self.children[idx].held = false;
        self.children[idx].attempt = 0;
        if self.children[idx].cell.is_some() {
            let _ = reply.send(Ok(()));
            return;
        }
        let job = StartJob {
            ids: VecDeque::from([self.children[idx].spec.id.clone()]),
            reply: Some(reply),
            kind: JobKind::Operator,
        };
        self.enqueue(myself, job);
        if self.children.iter().all(|c| !c.held) {
            // The operator started what a misconfiguration had stopped.
            self.probe.set_unhealthy(None);
        }
    }

    /// Replaces child `idx` with `spec` (same id): stops what runs, forgets what ran below it
    /// (the new spec may wire other children), and starts the new spec in its place.
    async fn replace_child(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
        spec: ChildSpec,
        reply: Reply,
    ) {
        let id = spec.id.clone();
        self.cancel_start(&id, "replaced by a new configuration");
        let timeout = self.children[idx].spec.shutdown;
        self.stop_child(idx, timeout).await;
        let child = &mut self.children[idx];
        let path = child.probe.path().clone();
        self.probe.registry().remove_below(&path);
        self.supervisors.remove_below(&path);
        child.spec = spec;
        child.probe.set_stuck_after(child.spec.stuck_after);
        child.attempt = 0;
        child.token = 0;
        child.failed_starts = 0;
        child.stuck_kills = 0;
        child.kill = None;
        child.probe.count_restart();
        info!(path = %path, "actor replaced by a new configuration");
        if child.held {
            child.probe.set_status(Status::Stopped);
            let _ = reply.send(Ok(()));
            return;
        }
        let job = StartJob {
            ids: VecDeque::from([id]),
            reply: Some(reply),
            kind: JobKind::Operator,
        };
        self.enqueue(myself, job);
    }

    /// An operator restart of child `idx`: it and the siblings its strategy ties to it are
    /// stopped (in reverse order) and started again, outside the restart budget.
    async fn operator_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
        reply: Reply,
    ) {
        let ids: Vec<String> = self
            .restart_group(idx)
            .iter()
            .map(|&i| self.children[i].spec.id.clone())
            .collect();
        for id in &ids {
            self.cancel_start(id, "restarted by an operator");
        }
        for id in ids.iter().rev() {
            if let Some(i) = self.index_of(id) {
                let timeout = self.children[i].spec.shutdown;
                self.stop_child(i, timeout).await;
            }
        }
        for id in &ids {
            let Some(i) = self.index_of(id) else { continue };
            let child = &mut self.children[i];
            child.held = false;
            child.attempt = 0;
            child.probe.count_restart();
            info!(path = %child.probe.path(), "actor restarted by operator");
        }
        let job = StartJob {
            ids: ids.into(),
            reply: Some(reply),
            kind: JobKind::Operator,
        };
        self.enqueue(myself, job);
    }
}

/// The reason a new incarnation of `child` must not start yet, if an earlier one may run.
fn still_running(child: &mut Child) -> Option<String> {
    if let Some(task) = &child.abandoned_start {
        if task.is_finished() {
            child.abandoned_start = None;
        } else {
            return Some("an abandoned start of this actor is still running".to_owned());
        }
    }
    child.probe.lingering().map(|_| {
        "the previous incarnation did not end when it was killed (blocked in synchronous code)"
            .to_owned()
    })
}

/// Kills `cell` as child `id` and checks later that the kill took effect.
fn kill(myself: &ActorRef<SupervisorMsg>, id: &str, cell: &ActorCell) {
    cell.kill();
    let (id, cell) = (id.to_owned(), cell.get_id());
    myself.send_after(KILL_GRACE, move || SupervisorMsg::KillOverdue { id, cell });
}

/// Stops `cell` gracefully within `timeout`, then kills it. An actor that does not end even
/// then is remembered on its probe, so no new incarnation starts while it runs.
async fn stop_cell(
    cell: ActorCell,
    probe: &Probe,
    kind: ActorKind,
    timeout: Duration,
    supervisors: &Supervisors,
) {
    probe.set_status(Status::Stopping);
    probe.set_stop_deadline(Some(Instant::now() + timeout));
    let stopped = cell
        .stop_and_wait(Some("shutdown".to_owned()), Some(timeout))
        .await
        .is_ok()
        || cell.get_status() == ActorStatus::Stopped;
    if !stopped {
        warn!(path = %probe.path(), timeout = ?timeout, "actor did not stop within its shutdown timeout, killing it");
        if cell.kill_and_wait(Some(KILL_GRACE)).await.is_err()
            && cell.get_status() != ActorStatus::Stopped
        {
            let reason = format!(
                "did not end within {KILL_GRACE:?} of being killed: its handler is blocked in synchronous code; no new incarnation starts until it ends"
            );
            error!(path = %probe.path(), "{reason}");
            metrics::counter!(names::ACTOR_KILL_FAILED_TOTAL, "path" => probe.path().to_string())
                .increment(1);
            probe.set_error(reason);
            probe.set_lingering(Some(cell));
        }
    }
    probe.set_status(Status::Stopped);
    if kind == ActorKind::Supervisor {
        probe.registry().mark_stopped_below(probe.path());
        supervisors.remove_below(probe.path());
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        if args.probe.is_current() {
            args.supervisors.enter(args.probe.path(), myself.clone());
        }
        // A misconfiguration reported by an earlier incarnation is what the restart is for.
        args.probe.set_unhealthy(None);
        args.probe
            .set_budget(args.spec.max_restarts, args.spec.within, &VecDeque::new());
        let mut state = SupervisorState {
            spec: args.spec,
            probe: args.probe,
            supervisors: args.supervisors,
            me: myself.get_id(),
            children: Vec::with_capacity(args.children.len()),
            restarts: VecDeque::new(),
            next_token: 0,
            stuck_check_pending: false,
            queue: VecDeque::new(),
            inflight: Vec::new(),
            next_seq: 0,
        };
        for spec in args.children {
            let child = state.new_child(spec);
            state.children.push(child);
        }
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ids = state.children.iter().map(|c| c.spec.id.clone()).collect();
        state.enqueue(
            &myself,
            StartJob {
                ids,
                reply: None,
                kind: JobKind::Initial,
            },
        );
        state.schedule_stuck_check(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_all().await;
        state.supervisors.leave(state.probe.path(), state.me);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::RestartDue { ids, token } => state.enqueue(
                &myself,
                StartJob {
                    ids: ids.into(),
                    reply: None,
                    kind: JobKind::Restart { token },
                },
            ),
            SupervisorMsg::StartDone { seq, result } => {
                state.start_done(&myself, seq, result).await?
            }
            SupervisorMsg::StartTimedOut { seq } => state.start_timed_out(&myself, seq).await?,
            SupervisorMsg::KillOverdue { id, cell } => state.kill_overdue(&id, cell),
            SupervisorMsg::CheckStuck => {
                state.stuck_check_pending = false;
                state.check_stuck(&myself);
                state.schedule_stuck_check(&myself);
            }
            SupervisorMsg::AddChild(spec, reply) => {
                if state.index_of(&spec.id).is_some() {
                    let _ = reply.send(Err(SupervisorError::AlreadyExists(spec.id.clone())));
                } else {
                    let child = state.new_child(spec);
                    let id = child.spec.id.clone();
                    state.children.push(child);
                    state.enqueue(
                        &myself,
                        StartJob {
                            ids: VecDeque::from([id]),
                            reply: Some(reply),
                            kind: JobKind::Add,
                        },
                    );
                }
            }
            SupervisorMsg::RemoveChild(id, reply) => {
                let result = match state.require(&id) {
                    Ok(idx) => {
                        state.cancel_start(&id, "removed");
                        let timeout = state.children[idx].spec.shutdown;
                        state.stop_child(idx, timeout).await;
                        let child = state.children.remove(idx);
                        state.probe.registry().remove_subtree(child.probe.path());
                        state.pump(&myself);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::ReplaceChild(spec, reply) => match state.require(&spec.id) {
                Ok(idx) => state.replace_child(&myself, idx, spec, reply).await,
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            SupervisorMsg::StopChild(id, reply) => {
                let result = match state.require(&id) {
                    Ok(idx) => {
                        state.cancel_start(&id, "stopped by an operator");
                        state.children[idx].held = true;
                        state.children[idx].token = 0;
                        let timeout = state.children[idx].spec.shutdown;
                        state.stop_child(idx, timeout).await;
                        state.children[idx].probe.set_status(Status::Stopped);
                        info!(path = %state.children[idx].probe.path(), "actor stopped by operator");
                        state.pump(&myself);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::StartChild(id, reply) => match state.require(&id) {
                Ok(idx) => state.start_held(&myself, idx, reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            SupervisorMsg::RestartChild(id, reply) => match state.require(&id) {
                Ok(idx) => state.operator_restart(&myself, idx, reply).await,
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            SupervisorMsg::FailChild(id, reply) => {
                let result = match state.require(&id) {
                    Ok(idx) => match state.children[idx].cell.clone() {
                        Some(cell) => {
                            warn!(path = %state.children[idx].probe.path(), "failing actor on request");
                            state.children[idx].kill = Some(Kill {
                                reason: "fault injected through the admin port".to_owned(),
                                stuck: false,
                            });
                            kill(&myself, &id, &cell);
                            Ok(())
                        }
                        None => Err(SupervisorError::NotRunning(id)),
                    },
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(state.children.iter().map(|c| c.spec.id.clone()).collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let killed = matches!(
                    reason.as_deref(),
                    Some("killed") | Some("actor_task_cancelled")
                );
                (cell, killed.then(|| "killed".to_owned()))
            }
            _ => return Ok(()),
        };
        // Children we stopped on purpose were detached first, so their events find no entry.
        let Some(idx) = state.index_of_cell(cell.get_id()) else {
            return Ok(());
        };
        let exit = match state.children[idx].kill.take() {
            Some(Kill {
                reason,
                stuck: true,
            }) => Exit::Stuck(reason),
            Some(Kill { reason, .. }) => Exit::Failed(reason),
            None => match failure {
                Some(reason) => Exit::Failed(reason),
                None => Exit::Normal,
            },
        };
        state.child_exited(&myself, idx, exit).await
    }
}
