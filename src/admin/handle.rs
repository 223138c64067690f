//! What the admin port needs from a running instance, defined here so that the admin port
//! depends on nothing that runs the tree.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use actord_actors::scheduler::{Outcome, SchedulerHandle, SkipReason};
use actord_actors::{ActorPath, Registry, Status, SupervisorMsg, Supervisors};
use ractor::ActorRef;

use crate::config::reload::{ReloadError, Reloaded};
use crate::config::Config;
use crate::pipelines::Health;
use crate::sources::kafka::KafkaConnection;
use crate::telemetry::names;

/// What the tree was built from; a reload replaces it as a whole.
#[derive(Clone)]
pub struct Built {
    pub config: Arc<Config>,
    /// The bootstrap servers in use, and whether they are the embedded broker.
    pub kafka: KafkaConnection,
    pub health: Arc<BTreeMap<String, Health>>,
    /// Schedulers by pipeline name, for the tree and "run now".
    pub schedules: Arc<BTreeMap<String, SchedulerHandle>>,
}

/// Re-reads the configuration and applies it; on success it also returns what now runs.
pub type Reload = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(Reloaded, Built), ReloadError>> + Send>>
        + Send
        + Sync,
>;

/// What the admin port reads and drives: the tree's probes and supervisors, the pipelines'
/// health, their schedulers, and the configuration. Whoever runs the tree provides it.
#[derive(Clone)]
pub struct Handle {
    pub registry: Registry,
    /// The running supervisors by path, through which operator calls reach an actor's owner.
    pub supervisors: Supervisors,
    pub root: ActorRef<SupervisorMsg>,
    pub started: SystemTime,
    built: Arc<RwLock<Built>>,
    reload: Option<Reload>,
    /// One reload at a time, from re-reading to recording what runs, so that a SIGHUP and a
    /// `POST /api/config/reload` arriving together cannot leave the older result recorded.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

impl Handle {
    pub fn new(
        built: Built,
        registry: Registry,
        supervisors: Supervisors,
        root: ActorRef<SupervisorMsg>,
        started: SystemTime,
    ) -> Self {
        Handle {
            registry,
            supervisors,
            root,
            started,
            built: Arc::new(RwLock::new(built)),
            reload: None,
            reloading: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Lets `POST /api/config/reload` re-read and apply the configuration through `reload`.
    pub fn with_reload(mut self, reload: Reload) -> Self {
        self.reload = Some(reload);
        self
    }

    fn built(&self) -> Built {
        self.built.read().expect("built lock").clone()
    }

    /// Records what runs after a reload.
    pub fn set_built(&self, built: Built) {
        *self.built.write().expect("built lock") = built;
    }

    pub fn config(&self) -> Arc<Config> {
        self.built.read().expect("built lock").config.clone()
    }

    pub fn kafka(&self) -> KafkaConnection {
        self.built().kafka
    }

    pub fn health(&self) -> Arc<BTreeMap<String, Health>> {
        self.built.read().expect("built lock").health.clone()
    }

    pub fn schedules(&self) -> Arc<BTreeMap<String, SchedulerHandle>> {
        self.built.read().expect("built lock").schedules.clone()
    }

    /// Re-reads and applies the configuration, and records what runs after it.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let Some(reload) = &self.reload else {
            metrics::counter!(names::CONFIG_RELOADS_TOTAL, "outcome" => "refused").increment(1);
            return Err(ReloadError::Unavailable(
                "this instance cannot read its configuration again (it was not started from \
                 the command line)"
                    .into(),
            ));
        };
        let serial = self.reloading.lock().await;
        let outcome = match reload().await {
            Ok((report, built)) => {
                self.set_built(built);
                Ok(report)
            }
            Err(e) => Err(e),
        };
        drop(serial);
        let label = match &outcome {
            Ok(r) if !r.failed.is_empty() => "failed",
            Ok(r) if r.changed_anything() => "applied",
            Ok(_) => "unchanged",
            Err(_) => "refused",
        };
        metrics::counter!(names::CONFIG_RELOADS_TOTAL, "outcome" => label).increment(1);
        outcome
    }

    /// Whether an operator paused the pipeline.
    pub fn pipeline_paused(&self, name: &str) -> bool {
        self.registry.is_paused(&ActorPath::root().child(name))
    }

    /// Status of an enabled pipeline's supervisor.
    pub fn pipeline_status(&self, name: &str) -> Status {
        self.registry
            .get(&ActorPath::root().child(name))
            .map(|p| p.status())
            .unwrap_or(Status::Stopped)
    }

    /// The actors of an enabled pipeline that keep it from being up, its supervisor included,
    /// with why: failed, backing off, starting, stopping, or running but unhealthy. Empty when
    /// the pipeline is up.
    ///
    /// A scheduled pipeline is judged between its runs by how the last one ended: a failed run,
    /// or a due time skipped because the lease store did not answer, keeps it from being up
    /// until a later run of that entry succeeds.
    pub fn pipeline_not_up(&self, name: &str) -> Vec<(ActorPath, String)> {
        let mut not_up = self.registry.not_up(&ActorPath::root().child(name));
        if let Some(schedules) = self.schedules().get(name) {
            let path = ActorPath::root().child(name).child("scheduler");
            for entry in schedules.snapshot().entries {
                let why = match &entry.last_outcome {
                    Some(Outcome::Failed { run_id, error }) => {
                        format!("last run of {} (run {run_id}) failed: {error}", entry.name)
                    }
                    Some(Outcome::Skipped {
                        reason: SkipReason::LeaseUnavailable,
                        detail,
                        ..
                    }) => format!(
                        "last due time of {} skipped: lease unavailable{}",
                        entry.name,
                        detail
                            .as_deref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    ),
                    _ => continue,
                };
                not_up.push((path.clone(), why));
            }
        }
        not_up
    }

    /// Whether a pipeline's supervisor and every actor below it run (or were stopped on
    /// purpose: a transient actor that finished, an operator stop). A pipeline whose workers
    /// crash-loop or back off is not up, whatever its supervisor's status.
    pub fn pipeline_up(&self, name: &str) -> bool {
        self.pipeline_not_up(name).is_empty()
    }
}
