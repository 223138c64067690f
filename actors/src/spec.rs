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
use crate::supervisor::{Supervisor, SupervisorArgs};

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
}

impl Default for SupervisorSpec {
    fn default() -> Self {
        SupervisorSpec {
            strategy: Strategy::OneForOne,
            max_restarts: 5,
            within: Duration::from_secs(60),
            backoff: Backoff::default(),
            stuck_check: Duration::from_secs(1),
        }
    }
}

/// Handed to a child's start function.
pub struct ChildContext {
    /// Link the child to this cell (`Actor::spawn_linked(None, …, ctx.supervisor)`).
    pub supervisor: ActorCell,
    pub path: ActorPath,
    /// The child's probe: the same one across restarts.
    pub probe: Probe,
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
            shutdown: Duration::from_secs(10),
            stuck_after: None,
            nested: None,
            start: Arc::new(move |ctx| Box::pin(start(ctx))),
        }
    }

    /// A nested supervisor over `children`, started afresh on every restart.
    pub fn supervisor(
        id: impl Into<String>,
        spec: SupervisorSpec,
        children: Vec<ChildSpec>,
    ) -> Self {
        // Children stop one after another, each within its own timeout.
        let shutdown =
            children.iter().map(|c| c.shutdown).sum::<Duration>() + Duration::from_secs(1);
        let nested = Some(Arc::new((spec.clone(), children.clone())));
        let start = move |ctx: ChildContext| {
            let args = SupervisorArgs {
                spec: spec.clone(),
                children: children.clone(),
                probe: ctx.probe,
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

    /// The spec and children of a nested supervisor, `None` for a worker.
    pub fn nested(&self) -> Option<(&SupervisorSpec, &[ChildSpec])> {
        self.nested
            .as_deref()
            .map(|(spec, children)| (spec, children.as_slice()))
    }

    pub(crate) fn start(
        &self,
        ctx: ChildContext,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        (self.start)(ctx)
    }
}
