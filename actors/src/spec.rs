//! What a supervisor is told: its strategy and budget, and how to start each child.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, SpawnErr};
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::observe::{ActorKind, Probe};
use crate::path::ActorPath;
use crate::supervisor::{Supervisor, SupervisorArgs, Supervisors};

/// Which siblings restart with a failed child (OTP semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed child restarts.
    OneForOne,
    /// Every child restarts.
    OneForAll,
    /// The failed child and the children started after it restart.
    RestForOne,
}

/// When a terminated child is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always, whether it failed or exited normally.
    Permanent,
    /// Only when it failed.
    Transient,
    /// Never; the child is forgotten when it exits.
    Temporary,
}

/// How one supervisor treats its children.
#[derive(Clone, Debug, PartialEq)]
pub struct SupervisorSpec {
    pub strategy: Strategy,
    /// More restarts than this within `within` exhaust the budget: the supervisor stops its
    /// children and fails upward.
    pub max_restarts: u32,
    pub within: Duration,
    /// Delay before a restart, growing with consecutive failures of the same child. A child that
    /// ran for a whole `within` window starts again from the initial delay.
    pub backoff: Backoff,
    /// How often children with a `stuck_after` are checked for progress.
    pub stuck_check: Duration,
    /// Children are independent of each other: they stop at the same time, each within its
    /// own timeout, instead of one after another in reverse start order.
    pub concurrent_stop: bool,
}

impl Default for SupervisorSpec {
    fn default() -> Self {
        SupervisorSpec {
            strategy: Strategy::OneForOne,
            max_restarts: 5,
            within: Duration::from_secs(60),
            backoff: Backoff::default(),
            stuck_check: Duration::from_secs(1),
            concurrent_stop: false,
        }
    }
}

impl SupervisorSpec {
    /// The longest time `max_restarts + 1` consecutive failures of a child that never starts
    /// take, from the first to the last: the sum of the backoff delays between them. When it
    /// exceeds `within`, such a child never exhausts the budget and never escalates.
    pub fn time_to_exhaust(&self) -> Duration {
        (0..self.max_restarts.min(10_000))
            .map(|n| self.backoff.delay(n))
            .sum()
    }
}

/// What a supervisor adds to its children's stop times: its own bookkeeping.
pub const STOP_MARGIN: Duration = Duration::from_millis(500);

/// How long a child's start (`pre_start` included) may take by default before it counts as a
/// failed start.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A worker's graceful stop by default: a final flush, not a drain.
pub const DEFAULT_WORKER_SHUTDOWN: Duration = Duration::from_secs(5);

/// Handed to a child's start function.
pub struct ChildContext {
    /// Link the child to this cell (`Actor::spawn_linked(None, …, ctx.supervisor)`).
    pub supervisor: ActorCell,
    pub path: ActorPath,
    /// The child's probe: the same one across restarts.
    pub probe: Probe,
    /// The tree's running supervisors; a nested supervisor enters itself here.
    pub supervisors: Supervisors,
}

type StartFn =
    Arc<dyn Fn(ChildContext) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// One child of a supervisor: its id (the last segment of its path), restart type, shutdown
/// timeout, stuck threshold and how to start an incarnation.
#[derive(Clone)]
pub struct ChildSpec {
    pub id: String,
    pub kind: ActorKind,
    pub restart: Restart,
    /// How long a graceful stop may take before the child is killed.
    pub shutdown: Duration,
    /// Restart the child when it holds work and records no progress for this long.
    pub stuck_after: Option<Duration>,
    /// How long a start may take (spawning the actor and its `pre_start`) before it is
    /// abandoned and counted as a failed start.
    pub start_timeout: Duration,
    /// For a nested supervisor: the strategy its wiring needs (e.g. a consumer path started
    /// sink first needs `rest_for_one`), if any other would break it.
    pub wiring: Option<Strategy>,
    /// For a nested supervisor: its spec and children, for printing the planned tree.
    nested: Option<Arc<(SupervisorSpec, Vec<ChildSpec>)>>,
    start: StartFn,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("stuck_after", &self.stuck_after)
            .field("start_timeout", &self.start_timeout)
            .finish()
    }
}

impl ChildSpec {
    /// A worker started by `start`, which must link the actor it spawns to `ctx.supervisor`.
    pub fn worker<F, Fut>(id: impl Into<String>, start: F) -> Self
    where
        F: Fn(ChildContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        ChildSpec {
            id: id.into(),
            kind: ActorKind::Worker,
            restart: Restart::Permanent,
            shutdown: DEFAULT_WORKER_SHUTDOWN,
            stuck_after: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            wiring: None,
            nested: None,
            start: Arc::new(move |ctx| Box::pin(start(ctx))),
        }
    }

    /// A nested supervisor over `children`, started afresh on every restart. Its shutdown
    /// timeout is what its children need to stop ([`ChildSpec::stop_need`]) unless set.
    pub fn supervisor(
        id: impl Into<String>,
        spec: SupervisorSpec,
        children: Vec<ChildSpec>,
    ) -> Self {
        let shutdown = stop_need(&spec, &children);
        let nested = Some(Arc::new((spec.clone(), children.clone())));
        let start = move |ctx: ChildContext| {
            let args = SupervisorArgs {
                spec: spec.clone(),
                children: children.clone(),
                probe: ctx.probe,
                supervisors: ctx.supervisors,
            };
            async move {
                let (actor, _) =
                    Actor::spawn_linked(None, Supervisor, args, ctx.supervisor).await?;
                Ok(actor.get_cell())
            }
        };
        ChildSpec {
            kind: ActorKind::Supervisor,
            shutdown,
            nested,
            ..ChildSpec::worker(id, start)
        }
    }

    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    pub fn shutdown(mut self, timeout: Duration) -> Self {
        self.shutdown = timeout;
        self
    }

    pub fn stuck_after(mut self, after: Option<Duration>) -> Self {
        self.stuck_after = after;
        self
    }

    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Declares the strategy this supervisor's wiring needs.
    pub fn wiring(mut self, strategy: Strategy) -> Self {
        self.wiring = Some(strategy);
        self
    }

    /// For a supervisor, the time its children need to stop with their own timeouts (one after
    /// another, or the longest when they stop together), plus its margin; for a worker, its
    /// shutdown timeout.
    pub fn stop_need(&self) -> Duration {
        match self.nested() {
            Some((spec, children)) => stop_need(spec, children),
            None => self.shutdown,
        }
    }

    /// The spec and children of a nested supervisor, `None` for a worker.
    pub fn nested(&self) -> Option<(&SupervisorSpec, &[ChildSpec])> {
        self.nested
            .as_deref()
            .map(|(spec, children)| (spec, children.as_slice()))
    }

    pub(crate) fn start_fn(
        &self,
        ctx: ChildContext,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        (self.start)(ctx)
    }
}

fn stop_need(spec: &SupervisorSpec, children: &[ChildSpec]) -> Duration {
    let each = children.iter().map(|c| c.shutdown);
    let need = if spec.concurrent_stop {
        each.max().unwrap_or_default()
    } else {
        each.sum()
    };
    need + STOP_MARGIN
}
