//! The supervisor: OTP restart semantics on top of ractor's supervision events.
//!
//! Guarantees:
//! - A child is restarted according to its restart type (`permanent`, `transient`, `temporary`)
//!   and the supervisor's strategy (`one_for_one`, `one_for_all`, `rest_for_one`), after a
//!   capped exponential backoff.
//! - More than `max_restarts` restarts within `within` exhaust the budget: the supervisor stops
//!   its children in reverse start order and fails, so its own supervisor sees a failure.
//! - Stopping a child is graceful first (its `post_stop` runs) and forced after its shutdown
//!   timeout. Children stop in reverse start order when the supervisor stops.
//! - A child that holds work without recording progress for its `stuck_after` is killed and
//!   treated as failed.
//! - Children are spawned without global names, so any number of trees can run in one process;
//!   they are known by path through the [`Registry`](crate::observe::Registry).

use std::collections::VecDeque;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use thiserror::Error;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::names;
use crate::observe::{Probe, Status};
use crate::path::ActorPath;
use crate::spec::{ChildContext, ChildSpec, Restart, Strategy, SupervisorSpec};

/// A supervisor actor. Spawn it with [`SupervisorArgs`]; it starts its children in order.
pub struct Supervisor;

pub struct SupervisorArgs {
    pub spec: SupervisorSpec,
    pub children: Vec<ChildSpec>,
    /// This supervisor's own probe; its path is the parent of every child path.
    pub probe: Probe,
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
    /// Why we killed the running incarnation; its termination is then a failure.
    kill_reason: Option<String>,
    /// Stopped by an operator: not restarted until started again.
    held: bool,
}

pub struct SupervisorState {
    spec: SupervisorSpec,
    probe: Probe,
    children: Vec<Child>,
    restarts: VecDeque<Instant>,
    next_token: u64,
    /// A `CheckStuck` is pending; one timer chain at most.
    stuck_check_pending: bool,
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
        Child {
            spec,
            probe,
            cell: None,
            started_at: Instant::now(),
            attempt: 0,
            token: 0,
            kill_reason: None,
            held: false,
        }
    }

    /// Starts child `idx`; `Err` carries the reason it could not start.
    async fn start_child(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
    ) -> Result<(), String> {
        let child = &mut self.children[idx];
        child.probe.set_status(Status::Starting);
        child.probe.clear_pending();
        child.kill_reason = None;
        // Counted from the attempt, so repeated start failures keep growing the backoff.
        child.started_at = Instant::now();
        let ctx = ChildContext {
            supervisor: myself.get_cell(),
            path: child.probe.path().clone(),
            probe: child.probe.clone(),
        };
        match child.spec.start(ctx).await {
            Ok(cell) => {
                child.cell = Some(cell);
                child.probe.set_status(Status::Running);
                Ok(())
            }
            Err(ractor::SpawnErr::StartupFailed(err)) => Err(err.to_string()),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Stops child `idx` gracefully, killing it after its shutdown timeout.
    async fn stop_child(&mut self, idx: usize) {
        let child = &mut self.children[idx];
        let Some(cell) = child.cell.take() else {
            return;
        };
        child.probe.set_status(Status::Stopping);
        let timeout = child.spec.shutdown;
        if cell
            .stop_and_wait(Some("shutdown".to_owned()), Some(timeout))
            .await
            .is_err()
            && cell.get_status() != ractor::ActorStatus::Stopped
        {
            warn!(path = %child.probe.path(), timeout = ?timeout, "actor did not stop within its shutdown timeout, killing it");
            let _ = cell.kill_and_wait(Some(Duration::from_secs(5))).await;
        }
        child.probe.set_status(Status::Stopped);
    }

    async fn stop_all(&mut self) {
        for idx in (0..self.children.len()).rev() {
            self.stop_child(idx).await;
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

    /// Handles the end of child `idx`'s incarnation. `failure` is `None` for a normal exit.
    async fn child_exited(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
        failure: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let child = &mut self.children[idx];
        child.cell = None;
        child.probe.clear_pending();
        let path = child.probe.path().clone();
        match &failure {
            Some(reason) => {
                warn!(path = %path, error = %reason, "actor failed");
                child.probe.set_error(reason.clone());
            }
            None => info!(path = %path, "actor exited"),
        }
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
        let reason = failure.unwrap_or_else(|| "exited normally".to_owned());
        if !self.charge_budget() {
            return Err(self.exhausted(reason).await);
        }
        let group = self.restart_group(idx);
        for &i in group.iter().rev() {
            if i != idx && self.children[i].cell.is_some() {
                self.stop_child(i).await;
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

    /// Stops every child and builds the error that fails this supervisor upward.
    async fn exhausted(&mut self, last: String) -> ActorProcessingErr {
        let path = self.path().to_string();
        error!(path = %path, max_restarts = self.spec.max_restarts, within = ?self.spec.within, error = %last, "restart budget exhausted, stopping children and failing upward");
        metrics::counter!(names::SUPERVISOR_BUDGET_EXHAUSTED_TOTAL, "path" => path.clone())
            .increment(1);
        self.stop_all().await;
        self.probe.set_control(None);
        Box::new(SupervisorError::BudgetExhausted {
            path,
            max_restarts: self.spec.max_restarts,
            within: self.spec.within,
            last,
        })
    }

    async fn restart_due(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        ids: Vec<String>,
        token: u64,
    ) -> Result<(), ActorProcessingErr> {
        for id in ids {
            let Some(idx) = self.index_of(&id) else {
                continue;
            };
            let child = &self.children[idx];
            if child.token != token || child.cell.is_some() || child.held {
                continue;
            }
            child.probe.count_restart();
            if let Err(reason) = self.start_child(myself, idx).await {
                // The failure handling reschedules this child and, by strategy, its group.
                return self.child_exited(myself, idx, Some(reason)).await;
            }
        }
        Ok(())
    }

    fn schedule_stuck_check(&mut self, myself: &ActorRef<SupervisorMsg>) {
        if !self.stuck_check_pending && self.children.iter().any(|c| c.spec.stuck_after.is_some()) {
            self.stuck_check_pending = true;
            myself.send_after(self.spec.stuck_check, || SupervisorMsg::CheckStuck);
        }
    }

    fn check_stuck(&mut self) {
        let now = Instant::now();
        for child in &mut self.children {
            let (Some(limit), Some(cell)) = (child.spec.stuck_after, &child.cell) else {
                continue;
            };
            if child.kill_reason.is_some() {
                continue;
            }
            if let Some(stalled) = child.probe.stalled_for(now) {
                if stalled >= limit {
                    let reason = format!(
                        "stuck: held {} units of work without progress for {:?}",
                        child.probe.pending(),
                        stalled
                    );
                    warn!(path = %child.probe.path(), stalled = ?stalled, "actor stuck, restarting it");
                    metrics::counter!(names::ACTOR_STUCK_TOTAL, "path" => child.probe.path().to_string()).increment(1);
                    child.kill_reason = Some(reason);
                    cell.kill();
                }
            }
        }
    }

    /// Starts a child on an operator's request. A failed start is then handled like any
    /// failure (restart with backoff, charged to the budget); the outer error fails this
    /// supervisor when the budget is exhausted.
    async fn start_held(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
    ) -> Result<Result<(), SupervisorError>, ActorProcessingErr> {
        self.children[idx].held = false;
        self.children[idx].attempt = 0;
        if self.children[idx].cell.is_some() {
            return Ok(Ok(()));
        }
        match self.start_child(myself, idx).await {
            Ok(()) => Ok(Ok(())),
            Err(reason) => {
                let id = self.children[idx].spec.id.clone();
                self.child_exited(myself, idx, Some(reason.clone())).await?;
                Ok(Err(SupervisorError::StartFailed { id, reason }))
            }
        }
    }

    /// An operator restart of child `idx`: it and the siblings its strategy ties to it are
    /// stopped (in reverse order) and started again, outside the restart budget.
    async fn operator_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
    ) -> Result<Result<(), SupervisorError>, ActorProcessingErr> {
        let ids: Vec<String> = self
            .restart_group(idx)
            .iter()
            .map(|&i| self.children[i].spec.id.clone())
            .collect();
        for id in ids.iter().rev() {
            if let Some(i) = self.index_of(id) {
                self.stop_child(i).await;
            }
        }
        for id in &ids {
            let Some(i) = self.index_of(id) else { continue };
            self.children[i].probe.count_restart();
            info!(path = %self.children[i].probe.path(), "actor restarted by operator");
            if let Err(e) = self.start_held(myself, i).await? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
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
        args.probe.set_control(Some(myself));
        let mut state = SupervisorState {
            spec: args.spec,
            probe: args.probe,
            children: Vec::with_capacity(args.children.len()),
            restarts: VecDeque::new(),
            next_token: 0,
            stuck_check_pending: false,
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
        let mut idx = 0;
        while idx < state.children.len() {
            if state.children[idx].cell.is_none() && state.children[idx].token == 0 {
                if let Err(reason) = state.start_child(&myself, idx).await {
                    let before = state.children.len();
                    state.child_exited(&myself, idx, Some(reason)).await?;
                    if state.children.len() < before {
                        continue; // a temporary child was forgotten: idx now holds the next one
                    }
                }
            }
            idx += 1;
        }
        state.schedule_stuck_check(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_all().await;
        state.probe.set_control(None);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::RestartDue { ids, token } => {
                state.restart_due(&myself, ids, token).await?
            }
            SupervisorMsg::CheckStuck => {
                state.stuck_check_pending = false;
                state.check_stuck();
                state.schedule_stuck_check(&myself);
            }
            SupervisorMsg::AddChild(spec, reply) => {
                let result = if state.index_of(&spec.id).is_some() {
                    Err(SupervisorError::AlreadyExists(spec.id.clone()))
                } else {
                    let child = state.new_child(spec);
                    state.children.push(child);
                    let idx = state.children.len() - 1;
                    match state.start_child(&myself, idx).await {
                        Ok(()) => {
                            state.schedule_stuck_check(&myself);
                            Ok(())
                        }
                        Err(reason) => {
                            let child = state.children.remove(idx);
                            state.probe.registry().remove_subtree(child.probe.path());
                            Err(SupervisorError::StartFailed {
                                id: child.spec.id,
                                reason,
                            })
                        }
                    }
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::RemoveChild(id, reply) => {
                let result = match state.require(&id) {
                    Ok(idx) => {
                        state.stop_child(idx).await;
                        let child = state.children.remove(idx);
                        state.probe.registry().remove_subtree(child.probe.path());
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::StopChild(id, reply) => {
                let result = match state.require(&id) {
                    Ok(idx) => {
                        state.children[idx].held = true;
                        state.children[idx].token = 0;
                        state.stop_child(idx).await;
                        info!(path = %state.children[idx].probe.path(), "actor stopped by operator");
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::StartChild(id, reply) => {
                let result = match state.require(&id) {
                    Ok(idx) => state.start_held(&myself, idx).await?,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::RestartChild(id, reply) => {
                let result = match state.require(&id) {
                    Ok(idx) => state.operator_restart(&myself, idx).await?,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::FailChild(id, reply) => {
                let result = match state.require(&id) {
                    Ok(idx) => match state.children[idx].cell.clone() {
                        Some(cell) => {
                            warn!(path = %state.children[idx].probe.path(), "failing actor on request");
                            state.children[idx].kill_reason =
                                Some("fault injected through the admin port".to_owned());
                            cell.kill();
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
                let killed = reason.as_deref() == Some("killed");
                let failure = match state.index_of_cell(cell.get_id()) {
                    Some(idx) => state.children[idx].kill_reason.take(),
                    None => None,
                };
                let failure = failure.or_else(|| killed.then(|| "killed".to_owned()));
                (cell, failure)
            }
            _ => return Ok(()),
        };
        // Children we stopped on purpose were detached first, so their events find no entry.
        match state.index_of_cell(cell.get_id()) {
            Some(idx) => state.child_exited(&myself, idx, failure).await,
            None => Ok(()),
        }
    }
}
