//! The backfill pipeline: on a schedule (every 3 days and at start by default), read the
//! sensor topic `fms-temphum` from where the group `backfill-loader` left it (or from the
//! beginning, or from a date) up to the high watermarks of the run's start, and archive the
//! readings as snappy Parquet objects partitioned by Seoul day (`year=/month=/day=`) through
//! the shared Parquet object sink; readings without a usable timestamp go to
//! `fms-temphum-dlq`.
//!
//! Tree: `/backfill/scheduler` runs the entry `run`; each run starts `/backfill/run` (dead-letter
//! producer, writer, buffer) and removes it when it ends; `/backfill/demo` (with `demo = true`)
//! publishes synthetic readings into the embedded broker.

mod config;
pub mod encode;
pub mod foreground;
mod format;
mod generator;
mod job;
pub mod mode;
pub mod names;
pub mod reading;
pub mod run;

use std::sync::Arc;

use actord_actors::scheduler::{SchedulerConfig, SchedulerHandle};
use actord_actors::{ActorPath, ChildSpec, Strategy};
use anyhow::Context;

use super::{HealthCheck, Pipeline, PipelineDef, Resources, TopicSpec};
use crate::config::{Config, EnvKey, S3Config, Section, Unit};
use crate::sinks::objects::keys::{Granularity, Layout};
use crate::sinks::objects::sink::{Objects, Settings};
use crate::sinks::objects::store;

pub use config::*;
pub use job::ENTRY;

pub const DEF: PipelineDef = PipelineDef {
    name: "backfill",
    summary:
        "archives a Kafka topic into Parquet objects by Seoul day, on a schedule (every 3 days)",
    env: &[
        EnvKey::seed("KAFKA_TOPIC", "topic", Unit::Str),
        EnvKey::seed("KAFKA_GROUP_ID", "group", Unit::Str),
        EnvKey::seed("MINIO_ENDPOINT", "endpoint", Unit::Str),
        EnvKey::seed("MINIO_BUCKET", "bucket", Unit::Str),
        EnvKey::seed("MINIO_ACCESS_KEY", "access_key", Unit::Str),
        EnvKey::seed("MINIO_SECRET_KEY", "secret_key", Unit::Str),
        EnvKey::seed("RUN_ON_START", "schedule.run_on_start", Unit::Bool),
        EnvKey::new("MODE", "mode", Unit::Str),
        EnvKey::new("FROM_DATE", "from_date", Unit::Str),
        EnvKey::new("TIMESTAMP_FIELD", "timestamp_field", Unit::Str),
        EnvKey::new("INTERVAL", "schedule.every", Unit::Str),
        EnvKey::new("DEMO", "demo", Unit::Bool),
        EnvKey::new("DIR", "dir", Unit::Str),
    ],
    env_scan: None,
    kafka_keys: Some(super::KafkaKeys {
        topic: ("topic", Unit::Str),
        group: "group",
    }),
    describe_metrics: names::describe,
    section: Section::of::<BackfillConfig>(),
    topics,
    build,
};

fn topics(config: &Config) -> Vec<TopicSpec> {
    let c = config.pipelines.get::<BackfillConfig>();
    TopicSpec::with_dlq(&c.topic, &c.dlq_suffix, 3).to_vec()
}

/// The shared `[s3]` connection with the pipeline's MinIO settings over it.
pub fn s3_connection(c: &BackfillConfig, shared: &S3Config) -> S3Config {
    let mut s3 = shared.clone();
    if let Some(e) = &c.store.endpoint {
        s3.endpoint = Some(e.clone());
        if e.starts_with("http://") {
            s3.allow_http = true;
        }
    }
    if let Some(k) = &c.store.access_key {
        s3.access_key_id = Some(k.clone());
    }
    if let Some(k) = &c.store.secret_key {
        s3.secret_access_key = Some(k.clone());
    }
    s3
}

fn build(config: &Config, resources: &Resources) -> anyhow::Result<Pipeline> {
    let c = config.pipelines.get::<BackfillConfig>().clone();
    let root = ActorPath::root().child(DEF.name);
    let sup = &config.supervision;
    let s3 = s3_connection(&c, &config.s3);
    let target = store::open_target(&c.store.location, &s3)
        .map_err(|e| anyhow::anyhow!("pipelines.backfill: {e}"))?;
    let layout = Layout::new(c.store.prefix.clone(), mode::KST, Granularity::Day);
    let objects_settings = Settings {
        row_group_rows: c.row_group_size,
        path: root.child("run").child("writer-0").to_string(),
        // With the embedded broker offsets start at zero on every process start.
        replay_since: resources.kafka.embedded_since(),
    };
    let objects: job::OpenObjects = Box::new(move || {
        Objects::open(
            target.clone(),
            format::Readings,
            layout.clone(),
            objects_settings.clone(),
        )
    });
    let current: Arc<std::sync::Mutex<Option<Arc<Objects<format::Readings>>>>> = Arc::default();
    let parent = Arc::default();
    let (demo_ready, ready_rx) = tokio::sync::watch::channel(false);
    let runner = Arc::new(job::Runner {
        settings: run::RunSettings {
            connection: resources.kafka.clone(),
            topic: c.topic.clone(),
            group: c.group.clone(),
            mode: c.mode,
            timestamp_field: c.timestamp_field.clone(),
            batch_size: c.batch_size,
            stall_limit: c.stall_limit(),
        },
        connection: resources.kafka.clone(),
        dlq_suffix: c.dlq_suffix.clone(),
        objects,
        current: current.clone(),
        supervision: config.supervision.clone(),
        root: root.clone(),
        parent: Arc::clone(&parent),
        demo_ready: c.demo.then_some(ready_rx),
    });
    let settings = c
        .schedule
        .as_ref()
        .context("pipelines.backfill.schedule is invalid")?;
    let entry = settings
        .entry(ENTRY, job::job(runner))
        .context("opening the schedule's lease store")?;
    let handle = SchedulerHandle::new();
    resources.schedules.register(DEF.name, handle.clone());
    let scheduler = job::scheduler(SchedulerConfig::new(DEF.name, vec![entry]), handle, parent)?;
    // A run waits until the demo history is in the topic (`demo_ready`).
    let mut children = Vec::new();
    if c.demo {
        children.push(generator::child(&root, config, resources, demo_ready));
    }
    children.push(sup.child(&root.child("scheduler"), scheduler));
    let spec = sup.child(
        &root,
        ChildSpec::supervisor(
            DEF.name,
            sup.supervisor_spec(&root, Strategy::OneForOne),
            children,
        ),
    );
    let where_to = format!(
        "objects: Parquet under {}{}",
        c.store.location.describe(&s3),
        if c.store.prefix.is_empty() {
            String::new()
        } else {
            format!("/{}", c.store.prefix)
        }
    );
    Ok(Pipeline {
        spec,
        health: vec![
            super::running("scheduler", root.child("scheduler")),
            HealthCheck {
                component: "objects",
                // The last run's sink: healthy until a run's write fails.
                check: Arc::new(move |_| {
                    current
                        .lock()
                        .expect("sink slot lock")
                        .as_ref()
                        .is_none_or(|o| o.healthy())
                }),
            },
        ],
        notes: Arc::new(move || vec![where_to.clone()]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Sources};
    use crate::sinks::objects::store::Location;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, config::ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervision.toml");
        std::fs::write(&path, toml).unwrap();
        config::load(&Sources {
            config_path: Some(path),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            enable: Some(vec!["backfill".into()]),
            ..Sources::default()
        })
    }

    #[test]
    fn defaults_are_the_seeds() {
        let config = load("", &[]).unwrap();
        let c = config.pipelines.get::<BackfillConfig>();
        assert_eq!(c.topic, "fms-temphum");
        assert_eq!(c.group, "backfill-loader");
        assert_eq!(c.dlq_topic(), "fms-temphum-dlq");
        assert_eq!(c.mode, mode::Mode::Incremental);
        let s = c.schedule.as_ref().unwrap();
        assert!(s.run_on_start);
        assert_eq!(
            s.schedule,
            actord_actors::scheduler::Schedule::every("3d").unwrap()
        );
        assert_eq!(
            c.store.location,
            Location::Bucket {
                name: "fms-temphum".into(),
                region: None
            }
        );
    }

    #[test]
    fn the_seed_environment_sets_topic_group_bucket_endpoint_and_run_on_start() {
        let config = load(
            "[pipelines.backfill]\ndir = \"data/objects\"\n",
            &[
                ("KAFKA_TOPIC", "sensors"),
                ("KAFKA_GROUP_ID", "loader-2"),
                ("MINIO_ENDPOINT", "minio:9000"),
                ("MINIO_BUCKET", "archive"),
                ("MINIO_ACCESS_KEY", "ak"),
                ("MINIO_SECRET_KEY", "sk"),
                ("RUN_ON_START", "false"),
            ],
        )
        .unwrap();
        let c = config.pipelines.get::<BackfillConfig>();
        assert_eq!(
            (c.topic.as_str(), c.group.as_str()),
            ("sensors", "loader-2")
        );
        assert_eq!(c.store.endpoint.as_deref(), Some("http://minio:9000"));
        // An endpoint selects the bucket even with a directory configured.
        assert!(matches!(&c.store.location, Location::Bucket { name, .. } if name == "archive"));
        let s3 = s3_connection(c, &config.s3);
        assert_eq!(s3.access_key_id.as_deref(), Some("ak"));
        assert!(s3.allow_http);
        assert!(!c.schedule.as_ref().unwrap().run_on_start);
    }

    #[test]
    fn a_directory_without_an_endpoint_holds_the_bucket_locally() {
        let config = load("[pipelines.backfill]\ndir = \"data/objects\"\n", &[]).unwrap();
        let c = config.pipelines.get::<BackfillConfig>();
        assert_eq!(
            c.store.location,
            Location::Dir("data/objects/fms-temphum".into())
        );
    }

    #[test]
    fn a_foreground_run_warns_only_without_a_lease_store() {
        let warning = foreground::lease_warning(&load("", &[]).unwrap()).unwrap();
        assert!(warning.contains("backfill-loader"), "{warning}");
        assert!(warning.contains("lease = \"redis\""), "{warning}");
        let leased = load(
            "[pipelines.backfill.schedule]\nevery = \"3d\"\nlease = \"redis\"\nlease_url = \"redis://127.0.0.1:6379\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(foreground::lease_warning(&leased), None);
    }

    #[test]
    fn a_bad_mode_or_date_names_its_key() {
        let err = load("[pipelines.backfill]\nmode = \"sideways\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("pipelines.backfill.mode"), "{err}");
        let err = load(
            "[pipelines.backfill]\nmode = \"continue\"\nfrom_date = \"yesterday\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("pipelines.backfill.from_date"),
            "{err}"
        );
    }
}
