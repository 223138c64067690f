//! The pipelines actord can run, each a supervised subtree under the root.

pub mod adaptive_card;
pub mod backfill;
pub mod commerce;
pub mod ftp_sync;
pub mod heartbeat;
pub mod recorder;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actord_actors::scheduler::SchedulerHandle;
use actord_actors::{ChildSpec, Registry};

use crate::config::{Config, EnvKey, Section, Unit};
use crate::sources::kafka::KafkaConnection;

/// A health component of a pipeline: `/health` prints `<pipeline>.<component>: healthy`.
#[derive(Clone)]
pub struct HealthCheck {
    pub component: &'static str,
    pub check: Arc<dyn Fn(&Registry) -> bool + Send + Sync>,
}

/// Extra `/health` lines of a pipeline.
pub type Notes = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// The health components and notes of one pipeline.
#[derive(Clone)]
pub struct Health {
    pub checks: Vec<HealthCheck>,
    pub notes: Notes,
}

/// What a pipeline gives the runtime: its subtree and its health components.
pub struct Pipeline {
    pub spec: ChildSpec,
    pub health: Vec<HealthCheck>,
    /// `# ...` lines under `/health` (e.g. which storage mode runs).
    pub notes: Notes,
}

/// A topic a pipeline reads or writes; the embedded broker creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
}

impl TopicSpec {
    /// A topic of `partitions` partitions and its dead-letter topic `<name><dlq_suffix>`, which
    /// has one.
    pub fn with_dlq(name: &str, dlq_suffix: &str, partitions: i32) -> [TopicSpec; 2] {
        [
            TopicSpec {
                name: name.to_owned(),
                partitions,
            },
            TopicSpec {
                name: format!("{name}{dlq_suffix}"),
                partitions: 1,
            },
        ]
    }
}

/// Shared connections handed to pipeline builders, and where they register what the admin
/// port needs from them.
#[derive(Clone, Debug)]
pub struct Resources {
    pub kafka: KafkaConnection,
    pub schedules: Schedules,
}

impl Resources {
    pub fn new(kafka: KafkaConnection) -> Self {
        Resources {
            kafka,
            schedules: Schedules::default(),
        }
    }
}

/// The scheduler handles of the pipelines being built, by pipeline name: a pipeline with
/// scheduled entries registers its handle while building, and the admin port shows and drives
/// the entries through it (`/api/tree`, `POST /api/pipelines/<name>/run`).
#[derive(Clone, Default)]
pub struct Schedules(Arc<Mutex<BTreeMap<String, SchedulerHandle>>>);

impl Schedules {
    /// Registers `pipeline`'s scheduler; a pipeline has at most one, holding all its entries.
    pub fn register(&self, pipeline: &str, handle: SchedulerHandle) {
        self.lock().insert(pipeline.to_owned(), handle);
    }

    pub fn get(&self, pipeline: &str) -> Option<SchedulerHandle> {
        self.lock().get(pipeline).cloned()
    }

    pub fn all(&self) -> BTreeMap<String, SchedulerHandle> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SchedulerHandle>> {
        // Only inserts and clones happen under the lock; a poisoned map is still whole.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Schedules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lock().keys()).finish()
    }
}

/// A pipeline kind known to the binary.
pub struct PipelineDef {
    /// The `--enable` name and the first segment of its actors' paths.
    pub name: &'static str,
    pub summary: &'static str,
    /// Its environment variables (seed names and `ACTORD_<PIPELINE>_` forms).
    pub env: &'static [EnvKey],
    /// Variables whose names are data, such as `{HOSTNAME}_HOST`: returns (key under the
    /// pipeline, unit, variable name) for each one present.
    pub env_scan: Option<EnvScan>,
    /// Where the seeds' `--topic` and `--group-id` flags land in its section, if it reads Kafka.
    pub kafka_keys: Option<KafkaKeys>,
    /// Gives the recorder the help text of its own metrics (its `names.rs`), so they show on
    /// `/metrics` from the start.
    pub describe_metrics: fn(),
    /// Its `[pipelines.<name>]` table: how it is typed, its supervision overrides, its
    /// validation (`Section::of::<ItsConfig>()`).
    pub section: Section,
    /// Topics it uses (with their dead-letter topics), created when the broker is embedded.
    pub topics: fn(&Config) -> Vec<TopicSpec>,
    pub build: fn(&Config, &Resources) -> anyhow::Result<Pipeline>,
}

/// The keys of a pipeline section that `--topic` and `--group-id` set.
#[derive(Clone, Copy, Debug)]
pub struct KafkaKeys {
    /// The topic key, and whether it holds one name (`Unit::Str`) or a list (`Unit::List`).
    pub topic: (&'static str, Unit),
    pub group: &'static str,
}

/// A health line that is healthy while the actor at `path` runs.
pub fn running(component: &'static str, path: actord_actors::ActorPath) -> HealthCheck {
    HealthCheck {
        component,
        check: Arc::new(move |registry| {
            registry
                .get(&path)
                .is_some_and(|p| p.status() == actord_actors::Status::Running)
        }),
    }
}

/// `<root>/demo`: a publisher and the generator that uses it, the generator restarted with it.
pub fn demo_subtree(
    root: &actord_actors::ActorPath,
    config: &Config,
    publisher: ChildSpec,
    generator: ChildSpec,
) -> ChildSpec {
    let demo_root = root.child("demo");
    let sup = &config.supervision;
    let children = vec![
        sup.child(&demo_root.child("publisher"), publisher),
        sup.child(&demo_root.child("generator"), generator),
    ];
    sup.child(
        &demo_root,
        ChildSpec::supervisor(
            "demo",
            sup.supervisor_spec(&demo_root, actord_actors::Strategy::RestForOne),
            children,
        ),
    )
}

/// Finds variables whose names carry data: (key under the pipeline, unit, variable name).
pub type EnvScan = fn(&BTreeMap<String, String>) -> Vec<(String, Unit, String)>;

/// Every pipeline the binary can run, in the order their sections are validated. A new
/// pipeline is its folder plus one entry here.
pub const PIPELINES: &[PipelineDef] = &[
    heartbeat::DEF,
    recorder::DEF,
    ftp_sync::DEF,
    adaptive_card::DEF,
    commerce::DEF,
    backfill::DEF,
];

/// What runs when neither `--enable` nor `runtime.enable` names anything.
pub const DEFAULT_ENABLED: &[&str] = &["heartbeat"];

pub fn find(name: &str) -> Option<&'static PipelineDef> {
    PIPELINES.iter().find(|p| p.name == name)
}

pub fn names() -> Vec<&'static str> {
    PIPELINES.iter().map(|p| p.name).collect()
}

/// Describes every registered pipeline's metrics, enabled or not.
pub fn describe_metrics() {
    for def in PIPELINES {
        (def.describe_metrics)();
    }
}

#[cfg(test)]
mod config_tests;
#[cfg(test)]
pub(crate) mod poison;

/// Parses a JSON message. The whole body must be UTF-8, as JSON is: serde skips the fields a
/// type does not read without looking at their bytes, so invalid bytes there would pass.
pub fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    from_json_borrowed(bytes)
}

/// [`from_json`] for a type that borrows strings from the message.
pub fn from_json_borrowed<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("the message is not UTF-8: {e}"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}
