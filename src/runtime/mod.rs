//! The root of the tree: one supervisor over the enabled pipelines, and graceful shutdown.
//!
//! The root isolates pipelines: it restarts only the pipeline that failed, after the configured
//! cool-down, and never counts one pipeline's failures against another. A pipeline that exhausts
//! its own budget shows `failed` until then. With `fail_fast` the root has no budget, so the
//! first pipeline failure ends the process with a non-zero status instead.
//!
//! On shutdown the pipelines stop at the same time, each within its own budget or what is left
//! of `runtime.shutdown_timeout`, so one slow pipeline cannot eat another's time to flush.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actord_actors::scheduler::SchedulerHandle;
use actord_actors::{
    ActorKind, ActorPath, Backoff, ChildSpec, Probe, Registry, Status, Strategy, Supervisor,
    SupervisorArgs, SupervisorMsg, SupervisorSpec, Supervisors,
};
use anyhow::Context;
use ractor::{Actor, ActorRef};
use tracing::{error, info, warn};

use crate::config::{Brokers, Config};
use crate::pipelines::{self, Health, Resources, TopicSpec};
use crate::sources::kafka::embedded::EmbeddedKafka;
use crate::sources::kafka::KafkaConnection;

mod check;
mod reload;

pub use reload::{Current, Reloader};

/// The planned tree: one child spec per enabled pipeline and their health components.
pub struct Plan {
    pub root: SupervisorSpec,
    pub pipelines: Vec<ChildSpec>,
    pub health: BTreeMap<String, Health>,
    /// Schedulers of the pipelines that have scheduled entries.
    pub schedules: BTreeMap<String, SchedulerHandle>,
    /// Settings that work but may not do what was meant (shutdown budgets that do not fit).
    pub warnings: Vec<String>,
}

/// What the root keeps of `runtime.shutdown_timeout` for killing what overran and for
/// its own bookkeeping; the pipelines share the rest.
pub fn stop_reserve(shutdown_timeout: Duration) -> Duration {
    (shutdown_timeout / 10).min(Duration::from_secs(2))
}

/// Topics the enabled pipelines use.
pub fn topics(config: &Config) -> Vec<TopicSpec> {
    let mut out: Vec<TopicSpec> = Vec::new();
    for def in config
        .runtime
        .enabled
        .iter()
        .filter_map(|n| pipelines::find(n))
    {
        for t in (def.topics)(config) {
            if !out.iter().any(|o| o.name == t.name) {
                out.push(t);
            }
        }
    }
    out
}

/// The Kafka connection for `config`, without starting anything.
pub fn connection(config: &Config, bootstrap: &str) -> KafkaConnection {
    KafkaConnection {
        bootstrap: bootstrap.to_owned(),
        properties: config.kafka.properties.clone(),
        embedded: config.kafka.brokers == Brokers::Embedded,
        lag_per_partition: config.kafka.lag_per_partition,
    }
}

/// Builds the tree the configuration describes, without starting anything.
pub fn plan(config: &Config, resources: &Resources) -> anyhow::Result<Plan> {
    let mut specs = Vec::new();
    let mut health = BTreeMap::new();
    for name in &config.runtime.enabled {
        let def = pipelines::find(name).with_context(|| format!("unknown pipeline {name}"))?;
        let pipeline =
            (def.build)(config, resources).with_context(|| format!("building pipeline {name}"))?;
        specs.push(pipeline.spec);
        health.insert(
            name.clone(),
            Health {
                checks: pipeline.health,
                notes: pipeline.notes,
            },
        );
    }
    let root = SupervisorSpec {
        strategy: Strategy::OneForOne,
        max_restarts: if config.runtime.fail_fast {
            0
        } else {
            u32::MAX
        },
        within: Duration::from_secs(3600),
        backoff: Backoff::fixed(config.runtime.cool_down),
        stuck_check: Duration::from_secs(1),
        // Pipelines are independent: each flushes within its own budget, at the same time.
        concurrent_stop: true,
    };
    let warnings = check::plan(config, &specs)?;
    Ok(Plan {
        root,
        pipelines: specs,
        health,
        schedules: resources.schedules.all(),
        warnings,
    })
}

fn bootstrap_or_embedded(config: &Config) -> &str {
    match &config.kafka.brokers {
        Brokers::Embedded => "embedded",
        Brokers::List(list) => list,
    }
}

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down on request.
    Clean,
    /// The root failed (a pipeline failed under `fail_fast`).
    Failed,
}

/// A started tree: what the admin port reads and drives, and what [`Running::until`] stops.
pub struct Running {
    pub config: Arc<Config>,
    pub registry: Registry,
    /// The running supervisors by path, through which operator calls reach an actor's owner.
    pub supervisors: Supervisors,
    pub root: ActorRef<SupervisorMsg>,
    /// Health components and notes by pipeline name.
    pub health: Arc<BTreeMap<String, Health>>,
    pub started: SystemTime,
    /// The bootstrap servers in use, and whether they are the embedded broker.
    pub kafka: KafkaConnection,
    /// Schedulers by pipeline name, for the tree and "run now".
    pub schedules: Arc<BTreeMap<String, SchedulerHandle>>,
    root_probe: Probe,
    root_task: tokio::task::JoinHandle<()>,
    /// Applies a new configuration; it also holds the embedded broker, which lives as long as
    /// this value and its clones and starts only when a pipeline needs it.
    reloader: Reloader,
}

/// Starts the tree the configuration describes.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    crate::telemetry::prometheus();
    let wanted = topics(&config);
    let mut embedded = Embedded::default();
    let bootstrap = embedded.bootstrap_for(&config, &wanted)?;
    let kafka = connection(&config, &bootstrap);
    let plan = plan(&config, &Resources::new(kafka.clone()))?;
    for w in &plan.warnings {
        warn!(warning = %w, "configuration warning");
    }
    let registry = Registry::new();
    let supervisors = Supervisors::default();
    let root_probe = registry.probe(&ActorPath::root(), ActorKind::Supervisor);
    let (root, root_task) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec: plan.root,
            children: plan.pipelines,
            probe: root_probe.clone(),
            supervisors: supervisors.clone(),
        },
    )
    .await
    .context("starting the root supervisor")?;
    root_probe.set_status(Status::Running);
    let health = Arc::new(plan.health);
    let schedules = Arc::new(plan.schedules);
    let reloader = Reloader::new(
        Current {
            config: config.clone(),
            kafka: kafka.clone(),
            health: health.clone(),
            schedules: schedules.clone(),
        },
        embedded,
        root.clone(),
        registry.clone(),
    );
    Ok(Running {
        config,
        registry,
        supervisors,
        root,
        health,
        started: SystemTime::now(),
        kafka,
        schedules,
        root_probe,
        root_task,
        reloader,
    })
}

/// The embedded broker, started when a pipeline first needs it, and the topics made on it.
#[derive(Default)]
pub(crate) struct Embedded {
    kafka: Option<EmbeddedKafka>,
    topics: std::collections::BTreeSet<String>,
}

impl Embedded {
    /// The bootstrap servers `config` uses: its brokers, or the embedded broker (started if
    /// needed, with the `wanted` topics it does not have yet).
    pub(crate) fn bootstrap_for(
        &mut self,
        config: &Config,
        wanted: &[TopicSpec],
    ) -> anyhow::Result<String> {
        match &config.kafka.brokers {
            Brokers::List(list) => Ok(list.clone()),
            Brokers::Embedded if wanted.is_empty() => Ok(self
                .kafka
                .as_ref()
                .map(|k| k.bootstrap().to_owned())
                .unwrap_or_default()),
            Brokers::Embedded => {
                if self.kafka.is_none() {
                    let kafka = EmbeddedKafka::start()
                        .map_err(|e| anyhow::anyhow!("starting the embedded kafka: {e}"))?;
                    warn!(bootstrap = %kafka.bootstrap(), topics = ?wanted.iter().map(|t| &t.name).collect::<Vec<_>>(), "no kafka.brokers or KAFKA_BROKERS configured: using the embedded in-process broker, for demos and tests only (5 MiB per partition, lost on exit)");
                    self.kafka = Some(kafka);
                }
                let kafka = self.kafka.as_ref().expect("started above");
                for t in wanted {
                    if self.topics.contains(&t.name) {
                        continue;
                    }
                    kafka
                        .create_topic(&t.name, t.partitions)
                        .map_err(|e| anyhow::anyhow!("creating topic {}: {e}", t.name))?;
                    self.topics.insert(t.name.clone());
                }
                Ok(kafka.bootstrap().to_owned())
            }
        }
    }
}

impl Running {
    /// Applies new configurations to this tree (SIGHUP, `POST /api/config/reload`).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Logs what started and what an operator should know about it.
    pub fn announce(&self, admin: std::net::SocketAddr) {
        let config = &self.config;
        info!(admin = %admin, pipelines = ?config.runtime.enabled, config = %config.source, "actord started");
        for name in &config.runtime.demos_off {
            warn!(pipeline = %name, brokers = %bootstrap_or_embedded(config), "demo generator off: kafka.brokers names a real cluster, and synthetic data is published only into the embedded broker (pass --demo-into-cluster to publish it there anyway)");
        }
        if config.runtime.demo_into_cluster && config.kafka.brokers != Brokers::Embedded {
            warn!(brokers = %bootstrap_or_embedded(config), "--demo-into-cluster: demo generators publish synthetic data into this cluster");
        }
        if config.admin.token.is_none() && config.admin.insecure {
            warn!(admin = %admin, fault_injection = config.admin.fault_injection, "admin port runs without a token on purpose (admin.insecure = true)");
        }
    }

    /// Runs until `shutdown` resolves (then stops the pipelines together) or the root fails.
    pub async fn until(&mut self, shutdown: impl Future<Output = ()>) -> Outcome {
        let (root, root_probe) = (&self.root, &self.root_probe);
        let config = &self.config;
        let root_task = &mut self.root_task;
        tokio::select! {
            _ = shutdown => {
                let timeout = config.runtime.shutdown_timeout;
                info!(timeout = ?timeout, "shutting down: stopping the pipelines together");
                root_probe.set_status(Status::Stopping);
                let began = tokio::time::Instant::now();
                root_probe.set_stop_deadline(Some(began + timeout - stop_reserve(timeout)));
                if root.stop_and_wait(Some("shutdown".into()), Some(timeout)).await.is_err() {
                    warn!(timeout = ?timeout, "graceful shutdown timed out, killing the remaining actors");
                    root.kill();
                }
                let _ = root_task.await;
                self.registry.mark_stopped_below(&ActorPath::root());
                self.supervisors.remove_below(&ActorPath::root());
                root_probe.set_status(Status::Stopped);
                info!(took = ?began.elapsed(), "pipelines stopped");
                Outcome::Clean
            }
            _ = &mut *root_task => {
                root_probe.set_status(Status::Failed);
                error!("the root supervisor failed (fail_fast): exiting");
                Outcome::Failed
            }
        }
    }
}
