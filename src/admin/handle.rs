//! What the admin port needs from a running instance, defined here so that the admin port
//! depends on nothing that runs the tree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use actord_actors::scheduler::SchedulerHandle;
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
    pub fn pipeline_not_up(&self, name: &str) -> Vec<(ActorPath, String)> {
        self.registry.not_up(&ActorPath::root().child(name))
    }

    /// Whether a pipeline's supervisor and every actor below it run (or were stopped on
    /// purpose: a transient actor that finished, an operator stop). A pipeline whose workers
    /// crash-loop or back off is not up, whatever its supervisor's status.
    pub fn pipeline_up(&self, name: &str) -> bool {
        self.pipeline_not_up(name).is_empty()
    }
}
