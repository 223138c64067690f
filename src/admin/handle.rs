//! What the admin port needs from a running instance, defined here so that the admin port
//! depends on nothing that runs the tree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use actord_actors::scheduler::{Outcome, SchedulerHandle, SkipReason};
use actord_actors::{ActorPath, Registry, Status, SupervisorMsg, Supervisors};
use ractor::ActorRef;

use crate::config::Config;
use crate::pipelines::Health;
use crate::sources::kafka::KafkaConnection;

/// What the admin port reads and drives: the tree's probes and supervisors, the pipelines'
/// health, their schedulers, and the configuration. Whoever runs the tree provides it.
#[derive(Clone)]
pub struct Handle {
    pub config: Arc<Config>,
    pub registry: Registry,
    /// The running supervisors by path, through which operator calls reach an actor's owner.
    pub supervisors: Supervisors,
    pub root: ActorRef<SupervisorMsg>,
    pub health: Arc<BTreeMap<String, Health>>,
    pub started: SystemTime,
    /// The bootstrap servers in use, and whether they are the embedded broker.
    pub kafka: KafkaConnection,
    /// Schedulers by pipeline name, for the tree and "run now".
    pub schedules: Arc<BTreeMap<String, SchedulerHandle>>,
}

impl Handle {
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
        if let Some(schedules) = self.schedules.get(name) {
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
