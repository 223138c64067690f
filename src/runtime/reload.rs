//! Applying a new configuration to the running tree: only the pipelines whose settings changed
//! restart, pipelines enabled or no longer enabled start or stop, the others are not touched.
//!
//! Guarantees:
//! - The new configuration is validated and its tree planned (what `actord check` does) before
//!   anything changes: an invalid one changes nothing.
//! - A changed pipeline is stopped gracefully (its consumers drain, its buffers flush and its
//!   offsets are committed, as on shutdown) and started from the new settings in the same place
//!   under the root; its restart count goes up by one. An unchanged pipeline keeps running, with
//!   its restart counts, health components and schedules.
//! - A removed pipeline stops gracefully and its pause, if any, is forgotten; a changed one
//!   stays paused.
//! - Reloads run one at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use actord_actors::scheduler::SchedulerHandle;
use actord_actors::{ActorPath, Registry, SupervisorError, SupervisorMsg};
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{connection, plan, topics, Embedded};
use crate::config::reload::{reconcile, ReloadError, Reloaded};
use crate::config::{Config, ConfigError, Problem};
use crate::pipelines::{Health, Resources};
use crate::sources::kafka::KafkaConnection;

/// What the running tree was built from: the admin port reads it.
#[derive(Clone)]
pub struct Current {
    pub config: Arc<Config>,
    /// The bootstrap servers in use, and whether they are the embedded broker.
    pub kafka: KafkaConnection,
    /// Health components and notes by pipeline name.
    pub health: Arc<BTreeMap<String, Health>>,
    /// Schedulers by pipeline name, for the tree and "run now".
    pub schedules: Arc<BTreeMap<String, SchedulerHandle>>,
}

struct Live {
    current: Current,
    embedded: Embedded,
}

/// Applies new configurations to one running tree; clones share it.
#[derive(Clone)]
pub struct Reloader {
    live: Arc<Mutex<Live>>,
    root: ActorRef<SupervisorMsg>,
    registry: Registry,
}

/// How long one pipeline may take to stop and start again before the reload reports it as
/// failed (its supervisor goes on with it).
const STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl Reloader {
    pub(super) fn new(
        current: Current,
        embedded: Embedded,
        root: ActorRef<SupervisorMsg>,
        registry: Registry,
    ) -> Self {
        Reloader {
            live: Arc::new(Mutex::new(Live { current, embedded })),
            root,
            registry,
        }
    }

    /// What runs now.
    pub async fn current(&self) -> Current {
        self.live.lock().await.current.clone()
    }

    /// Applies `new`: restarts the pipelines whose settings changed, starts the added ones and
    /// stops the removed ones. Refused, with nothing changed, when the planned tree is invalid.
    pub async fn apply(&self, mut new: Config) -> Result<(Reloaded, Current), ReloadError> {
        let mut live = self.live.lock().await;
        let old = live.current.config.clone();
        let mut report = reconcile(&old, &mut new);
        let invalid = |message: String| {
            ReloadError::Invalid(ConfigError {
                problems: vec![Problem::new(&new.source, "", message)],
            })
        };
        // Planned before anything changes, with the broker the new settings name; the embedded
        // broker only gains topics, which harms nothing if the plan is refused.
        let bootstrap = live
            .embedded
            .bootstrap_for(&new, &topics(&new))
            .map_err(|e| invalid(format!("{e:#}")))?;
        let kafka = connection(&new, &bootstrap);
        let resources = Resources::new(kafka.clone());
        let planned = match plan(&new, &resources) {
            Ok(p) => p,
            Err(e) => {
                if let Some(c) = e.downcast_ref::<ConfigError>() {
                    return Err(ReloadError::Invalid(c.clone()));
                }
                return Err(invalid(format!("{e:#}")));
            }
        };
        report.notes.extend(planned.warnings.iter().cloned());
        for name in &report.removed {
            let (id, path) = (name.clone(), ActorPath::root().child(name));
            if let Err(e) = self
                .ask(|reply| SupervisorMsg::RemoveChild(id, reply))
                .await
            {
                report.failed.push(format!("{name}: stopping it: {e}"));
            }
            self.registry.set_paused(&path, false);
        }
        for spec in planned.pipelines {
            let name = spec.id.clone();
            let step = if report.restarted.contains(&name) {
                self.ask(|reply| SupervisorMsg::ReplaceChild(spec, reply))
                    .await
            } else if report.added.contains(&name) {
                self.ask(|reply| SupervisorMsg::AddChild(spec, reply)).await
            } else {
                continue;
            };
            if let Err(e) = step {
                report.failed.push(format!("{name}: {e}"));
            }
        }
        // Unchanged pipelines keep what their running actors report through; the others take
        // what their new build made.
        let mut health = planned.health;
        let mut schedules = planned.schedules;
        for name in &report.unchanged {
            if let Some(h) = live.current.health.get(name) {
                health.insert(name.clone(), h.clone());
            }
            match live.current.schedules.get(name) {
                Some(s) => schedules.insert(name.clone(), s.clone()),
                None => schedules.remove(name),
            };
        }
        // A pipeline that failed to be added is not running: it is not shown as enabled.
        let not_added: Vec<String> = report
            .added
            .iter()
            .filter(|n| {
                report
                    .failed
                    .iter()
                    .any(|f| f.starts_with(&format!("{n}: ")))
            })
            .cloned()
            .collect();
        new.runtime.enabled.retain(|n| !not_added.contains(n));
        report.added.retain(|n| !not_added.contains(n));
        health.retain(|n, _| new.runtime.enabled.contains(n));
        schedules.retain(|n, _| new.runtime.enabled.contains(n));
        live.current = Current {
            config: Arc::new(new),
            kafka,
            health: Arc::new(health),
            schedules: Arc::new(schedules),
        };
        if report.failed.is_empty() {
            info!(config = %report.config, restarted = ?report.restarted, added = ?report.added, removed = ?report.removed, unchanged = ?report.unchanged, "configuration reloaded");
        } else {
            warn!(config = %report.config, restarted = ?report.restarted, added = ?report.added, removed = ?report.removed, failed = ?report.failed, "configuration reloaded, but some pipelines did not start");
        }
        if !report.needs_restart.is_empty() {
            warn!(settings = ?report.needs_restart, "changed settings apply only after a restart of the process; the running values stay");
        }
        Ok((report, live.current.clone()))
    }

    async fn ask(
        &self,
        make: impl FnOnce(RpcReplyPort<Result<(), SupervisorError>>) -> SupervisorMsg,
    ) -> Result<(), String> {
        match self.root.call(make, Some(STEP_TIMEOUT)).await {
            Ok(CallResult::Success(Ok(()))) => Ok(()),
            Ok(CallResult::Success(Err(e))) => Err(e.to_string()),
            Ok(CallResult::Timeout) => Err(format!("no answer within {STEP_TIMEOUT:?}")),
            Ok(CallResult::SenderError) | Err(_) => Err("the root supervisor is gone".into()),
        }
    }
}
