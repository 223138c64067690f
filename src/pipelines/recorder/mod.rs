//! The recorder pipeline: `market.tick` and `market.orderbook` from Kafka into TimescaleDB
//! (exactly once, binary COPY), with the seed's tables and 1 min / 5 min / 1 h aggregates.
//!
//! Tree: `/recorder/timescale` is a consumer path with its own consumer group
//! (`<group>-timescale`) and owns the dead-letter topics; `/recorder/aggregates` refreshes the
//! plain-PostgreSQL views; `/recorder/demo` (with `demo = true`) publishes synthetic data.

mod config;
pub mod copy;
mod generator;
pub mod model;
pub mod names;
pub mod parquet;
mod refresher;
pub mod timescale;

use std::sync::Arc;
use std::time::Duration;

use actord_actors::buffer::BufferLimits;
use actord_actors::record::{Poison, SourceRecord};
use actord_actors::writer::RetryPolicy;
use actord_actors::{ActorPath, ChildSpec, Strategy};
use ractor::Actor;

use self::parquet::{Objects, ParquetSink};
use super::{HealthCheck, Pipeline, PipelineDef, Resources, TopicSpec};
use crate::config::{Check, Config, ConfigError, EnvKey, Problem, Secret, Section, Unit};
use crate::sinks::objects::store::{self, Location};
use crate::sinks::postgres::{BreakerSettings, Classifier, Database, DbSettings, PostgresSink};
use crate::sources::kafka::path::KafkaPath;
use crate::sources::kafka::producer::PublisherSlot;
use crate::sources::kafka::{check_batch_fits, check_batch_fits_bytes, SourceSettings, StartFrom};
use generator::{Generator, GeneratorArgs};
use model::Market;
use refresher::{Refresher, RefresherArgs};
use timescale::{MarketCopy, RecorderTables};

pub use config::*;

/// `max_in_flight_bytes` when none is set: what every consumer path holds at most by default.
const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = crate::sources::kafka::DEFAULT_MAX_IN_FLIGHT_BYTES as u64;

pub const DEF: PipelineDef = PipelineDef {
    name: "recorder",
    summary: "market ticks and order books from Kafka into TimescaleDB, exactly once",
    env: &[
        EnvKey::seed("KAFKA_TOPICS", "topics", Unit::List),
        EnvKey::seed("KAFKA_GROUP_ID", "group", Unit::Str),
        EnvKey::seed("NUM_CONSUMERS", "consumers", Unit::Int),
        EnvKey::seed("DB_WRITE_WORKERS", "db_write_workers", Unit::Int),
        EnvKey::seed("BATCH_SIZE", "batch_size", Unit::Int),
        EnvKey::seed("BATCH_TIMEOUT_MS", "batch_timeout", Unit::Millis),
        EnvKey::seed("MAX_BUFFER_SIZE", "max_buffer_size", Unit::Int),
        EnvKey::seed("TIMESCALEDB_HOST", "timescale.host", Unit::Str),
        EnvKey::seed("TIMESCALEDB_PORT", "timescale.port", Unit::Int),
        EnvKey::seed("TIMESCALEDB_USER", "timescale.user", Unit::Str),
        EnvKey::seed("TIMESCALEDB_PASSWORD", "timescale.password", Unit::Str),
        EnvKey::seed("TIMESCALEDB_DB", "timescale.database", Unit::Str),
        EnvKey::seed("S3_WRITE_ENABLED", "s3.enabled", Unit::Bool),
        EnvKey::seed("S3_BUCKET", "s3.bucket", Unit::Str),
        EnvKey::seed("S3_REGION", "s3.region", Unit::Str),
        EnvKey::seed("S3_BATCH_SIZE", "s3.batch_size", Unit::Int),
        EnvKey::seed("S3_BATCH_TIMEOUT_SEC", "s3.batch_timeout", Unit::Secs),
        EnvKey::new("DEMO", "demo", Unit::Bool),
        EnvKey::new("MIGRATE_FROM_GROUP", "migrate_from_group", Unit::Str),
        EnvKey::new("MAX_IN_FLIGHT_BYTES", "max_in_flight_bytes", Unit::Str),
    ],
    env_scan: None,
    kafka_keys: Some(super::KafkaKeys {
        topic: ("topics", Unit::List),
        group: "group",
    }),
    describe_metrics: names::describe,
    section: Section::of::<RecorderConfig>(),
    topics,
    build,
};

#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub topics: Vec<String>,
    pub group: String,
    /// The seed's group, whose committed offsets start a path with none of its own.
    pub migrate_from_group: Option<String>,
    pub consumers: usize,
    pub db_write_workers: usize,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub max_buffer_size: usize,
    /// Bytes in flight per consumer before it pauses (records' memory, as the consumer counts
    /// it): with `max_buffer_size`, what bounds a path's memory.
    pub max_in_flight_bytes: usize,
    pub demo: bool,
    pub demo_rate: u32,
    pub db: DbSettings,
    pub refresh_interval: Duration,
    pub s3: S3Path,
}

/// The Parquet path's settings.
#[derive(Debug, Clone)]
pub struct S3Path {
    pub enabled: bool,
    pub location: Location,
    pub prefix: String,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub writers: usize,
    pub row_group_size: usize,
}

impl S3Path {
    fn validate(raw: &RawRecorderS3, topics: &[String], check: &mut Check<'_>) -> Self {
        let k = |f: &str| format!("pipelines.recorder.s3.{f}");
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let location = match nonempty(&raw.bucket) {
            Some(name) => Location::Bucket {
                name,
                region: nonempty(&raw.region),
            },
            None => Location::Dir(
                nonempty(&raw.dir)
                    .unwrap_or_else(|| "data/objects".to_owned())
                    .into(),
            ),
        };
        let enabled = raw.enabled.unwrap_or(true);
        if enabled {
            // Object names carry the partition but not the topic: one topic per kind.
            for orderbook in [false, true] {
                let same: Vec<&str> = topics
                    .iter()
                    .filter(|t| model::is_orderbook_topic(t) == orderbook)
                    .map(String::as_str)
                    .collect();
                if same.len() > 1 {
                    check.problem(
                        "pipelines.recorder.topics",
                        format!(
                            "with s3.enabled, expected at most one {} topic (object names carry the partition, not the topic), found {}",
                            if orderbook { "order book" } else { "tick" },
                            same.join(", ")
                        ),
                    );
                }
            }
        }
        let prefix = raw
            .prefix
            .clone()
            .unwrap_or_else(|| "market-data".to_owned())
            .trim_matches('/')
            .to_owned();
        if prefix.is_empty() {
            check.problem(
                &k("prefix"),
                "expected a key prefix such as \"market-data\"",
            );
        }
        let count = |check: &mut Check<'_>, f: &str, v: Option<u32>, default: u32| match v {
            Some(0) => {
                check.problem(&k(f), "expected a number above zero");
                default as usize
            }
            Some(n) => n as usize,
            None => default as usize,
        };
        S3Path {
            enabled,
            location,
            prefix,
            batch_size: count(check, "batch_size", raw.batch_size, 100_000),
            batch_timeout: check.positive_duration(
                &k("batch_timeout"),
                raw.batch_timeout.as_deref(),
                Duration::from_secs(3600),
            ),
            writers: count(check, "writers", raw.writers, 1),
            row_group_size: count(check, "row_group_size", raw.row_group_size, 65_536),
        }
    }
}

impl RecorderConfig {
    pub(crate) fn validate(raw: &RawRecorder, check: &mut Check<'_>) -> Self {
        let k = |f: &str| format!("pipelines.recorder.{f}");
        let topics = raw
            .topics
            .clone()
            .unwrap_or_else(|| vec!["market.tick".into(), "market.orderbook".into()]);
        if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
            check.problem(&k("topics"), "expected one or more topic names");
        }
        let positive = |check: &mut Check<'_>, f: &str, v: Option<u32>, default: u32| -> usize {
            match v {
                Some(0) => {
                    check.problem(&k(f), "expected a number above zero");
                    default as usize
                }
                Some(n) => n as usize,
                None => default as usize,
            }
        };
        let consumers = positive(check, "consumers", raw.consumers, 1);
        let db_write_workers = positive(check, "db_write_workers", raw.db_write_workers, 2);
        let batch_size = positive(check, "batch_size", raw.batch_size, 1000);
        let max_buffer_size = positive(check, "max_buffer_size", raw.max_buffer_size, 100_000);
        check_batch_fits(
            check,
            &k("batch_size"),
            batch_size,
            &k("max_buffer_size"),
            max_buffer_size,
        );
        let max_in_flight_bytes = check.size(
            &k("max_in_flight_bytes"),
            raw.max_in_flight_bytes.as_ref(),
            DEFAULT_MAX_IN_FLIGHT_BYTES,
        ) as usize;
        // The S3 path's batches are cut at the bytes bound as well (objects then hold what fits
        // in it); only the database path's batch must fit whole.
        check_batch_fits_bytes(
            check,
            &k("batch_size"),
            batch_size,
            &k("max_in_flight_bytes"),
            max_in_flight_bytes,
        );
        let s3 = S3Path::validate(&raw.s3, &topics, check);
        // The S3 path's batches are cut at the in-flight bound at the latest: MAX_BUFFER_SIZE
        // bounds memory, S3_BATCH_SIZE only asks for objects that large.
        let mut s3 = s3;
        s3.batch_size = s3.batch_size.min(max_buffer_size);
        let t = &raw.timescale;
        let schema = t.schema.clone().unwrap_or_else(|| "public".to_owned());
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            check.problem(
                &k("timescale.schema"),
                format!("expected a schema name of letters, digits and _, found {schema:?}"),
            );
        }
        let group = raw
            .group
            .clone()
            .unwrap_or_else(|| "data-recorder-group".to_owned());
        let migrate_from_group = match raw.migrate_from_group.as_deref().map(str::trim) {
            None => Some(group.clone()),
            Some("") => None,
            Some(g) => Some(g.to_owned()),
        };
        RecorderConfig {
            topics,
            group,
            migrate_from_group,
            consumers,
            db_write_workers,
            batch_size,
            batch_timeout: check.positive_duration(
                &k("batch_timeout"),
                raw.batch_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            max_buffer_size,
            max_in_flight_bytes,
            demo: raw.demo.unwrap_or(false),
            demo_rate: raw.demo_rate.unwrap_or(50).max(1),
            db: DbSettings {
                host: t.host.clone().unwrap_or_else(|| "localhost".to_owned()),
                port: t.port.unwrap_or(5432),
                user: t.user.clone().unwrap_or_else(|| "postgres".to_owned()),
                password: t
                    .password
                    .clone()
                    .filter(|p| !p.is_empty())
                    .map(Secret::new),
                database: t.database.clone().unwrap_or_else(|| "postgres".to_owned()),
                schema,
                pool_size: db_write_workers as u32 + 1,
                forget_offsets: None,
                lock_timeout: check.duration(
                    &k("timescale.lock_timeout"),
                    t.lock_timeout.as_deref(),
                    Duration::from_secs(30),
                ),
                statement_timeout: check.duration(
                    &k("timescale.statement_timeout"),
                    t.statement_timeout.as_deref(),
                    Duration::from_secs(300),
                ),
                rejection: rejection(t, check),
            },
            refresh_interval: check.positive_duration(
                &k("timescale.refresh_interval"),
                t.refresh_interval.as_deref(),
                Duration::from_secs(60),
            ),
            s3,
        }
    }
}

/// The rejection breaker's window and share.
fn rejection(t: &RawTimescale, check: &mut Check<'_>) -> BreakerSettings {
    let default = BreakerSettings::default();
    let window = match t.rejection_window {
        Some(0) => {
            check.problem(
                "pipelines.recorder.timescale.rejection_window",
                "expected a number of records above zero",
            );
            default.window
        }
        Some(n) => n as usize,
        None => default.window,
    };
    let share = match t.rejection_share {
        Some(s) if !(s > 0.0 && s <= 1.0) => {
            check.problem(
                "pipelines.recorder.timescale.rejection_share",
                format!("expected a share above 0 and at most 1 (0.5 is half), found {s}"),
            );
            default.share
        }
        Some(s) => s,
        None => default.share,
    };
    BreakerSettings { window, share }
}

/// The TimescaleDB path's decoding, which also counts messages by kind. The counters are
/// looked up once, when the path is built, not per message.
fn counting_decode() -> impl Fn(&SourceRecord) -> Result<Market, Poison> + Send + Sync {
    let ticks = metrics::counter!(names::RECORDER_MESSAGES_TOTAL, "kind" => "tick");
    let books = metrics::counter!(names::RECORDER_MESSAGES_TOTAL, "kind" => "orderbook");
    let errors = metrics::counter!(names::RECORDER_ERRORS_TOTAL);
    move |r| {
        let decoded = model::decode(r);
        match &decoded {
            Ok(Market::Tick(_)) => ticks.increment(1),
            Ok(Market::OrderBook(_)) => books.increment(1),
            Err(_) => errors.increment(1),
        }
        decoded
    }
}

fn topics(config: &Config) -> Vec<TopicSpec> {
    config
        .pipelines
        .get::<RecorderConfig>()
        .topics
        .iter()
        .flat_map(|t| TopicSpec::with_dlq(t, "-dlq", 3))
        .collect()
}

fn build(config: &Config, resources: &Resources) -> anyhow::Result<Pipeline> {
    let rc = config.pipelines.get::<RecorderConfig>().clone();
    let root = ActorPath::root().child(DEF.name);
    let sup = &config.supervision;
    let mut children = Vec::new();

    let group = format!("{}-timescale", rc.group);
    let settings = DbSettings {
        forget_offsets: resources
            .kafka
            .embedded
            .then(|| resources.kafka.bootstrap.clone()),
        ..rc.db.clone()
    };
    let tables = Arc::new(RecorderTables::default());
    let db = Database::kafka(
        settings,
        "timescaledb",
        tables.clone(),
        Classifier::default(),
        group.clone(),
    );
    // Tables that cannot take what the COPY writes are a configuration fault: found at start-up,
    // they stop the process with exit 2 like any other.
    if let Err(problems) = db.preflight() {
        let origin = format!(
            "database {} on {}:{}",
            rc.db.database, rc.db.host, rc.db.port
        );
        return Err(anyhow::Error::new(ConfigError {
            problems: problems
                .iter()
                .map(|p| {
                    Problem::new(
                        origin.clone(),
                        "pipelines.recorder.timescale.schema",
                        format!("{p}; alter the column or choose another schema (a binary COPY converts no types)"),
                    )
                })
                .collect(),
        }));
    }
    let mut source = SourceSettings::new(rc.topics.clone(), group);
    source.consumers = rc.consumers;
    source.max_in_flight_records = rc.max_buffer_size;
    source.max_in_flight_bytes = rc.max_in_flight_bytes;
    source.start = StartFrom::Sink(db.clone());
    source.migrate_from_group = rc.migrate_from_group.clone();
    let path = KafkaPath::<Market, PostgresSink<Market, MarketCopy>> {
        id: "timescale".into(),
        connection: resources.kafka.clone(),
        source,
        decode: Arc::new(counting_decode()),
        sink: db.factory(Arc::new(MarketCopy::default())),
        lanes: rc.db_write_workers,
        buffer: BufferLimits {
            max_records: rc.batch_size,
            max_bytes: 64 << 20,
            max_age: rc.batch_timeout,
        },
        retry: RetryPolicy::default(),
        dlq_suffix: Some("-dlq".into()),
    };
    children.push(path.child_spec(&root, sup));

    let objects = if rc.s3.enabled {
        let (spec, objects) = s3_path(&root, config, resources)?;
        children.push(spec);
        Some(objects)
    } else {
        None
    };

    let (refresh_db, interval) = (db.clone(), rc.refresh_interval);
    let refresh_tables = tables.clone();
    let refresher = ChildSpec::worker("aggregates", move |ctx| {
        let (db, tables) = (refresh_db.clone(), refresh_tables.clone());
        async move {
            let args = RefresherArgs {
                probe: ctx.probe,
                db,
                tables,
                interval,
            };
            let (actor, _) = Actor::spawn_linked(None, Refresher, args, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    });
    children.push(sup.child(&root.child("aggregates"), refresher));

    if rc.demo {
        children.push(demo(&root, config, resources));
    }

    let spec = sup.child(
        &root,
        ChildSpec::supervisor(
            DEF.name,
            sup.supervisor_spec(&root, Strategy::OneForOne),
            children,
        ),
    );
    let consumer = root.child("timescale").child("consumer-0");
    let health_db = db.clone();
    let mode_db = db.clone();
    let mut health = vec![
        super::running("consumer", consumer),
        HealthCheck {
            component: "timescaledb",
            check: Arc::new(move |_| health_db.healthy()),
        },
    ];
    let s3_note = match &objects {
        Some(objects) => {
            let objects = objects.clone();
            health.push(HealthCheck {
                component: "s3",
                check: Arc::new(move |_| objects.healthy()),
            });
            format!(
                "s3: Parquet under {}/{}",
                rc.s3.location.describe(&config.s3),
                rc.s3.prefix
            )
        }
        None => "s3: disabled (s3.enabled = false)".to_owned(),
    };
    Ok(Pipeline {
        spec,
        health,
        notes: Arc::new(move || {
            let mut notes = mode_db.notes();
            notes.push(s3_note.clone());
            notes
        }),
    })
}

/// `/recorder/s3`: the same topics under `<group>-s3` into Parquet objects. Poison records
/// are skipped here; the TimescaleDB path dead-letters them once.
fn s3_path(
    root: &ActorPath,
    config: &Config,
    resources: &Resources,
) -> anyhow::Result<(ChildSpec, Arc<Objects>)> {
    let rc = config.pipelines.get::<RecorderConfig>();
    let target = store::open_target(&rc.s3.location, &config.s3)
        .map_err(|e| anyhow::anyhow!("pipelines.recorder.s3: {e}"))?;
    let replay_since = resources.kafka.embedded_since();
    let objects = Objects::new(
        target,
        rc.s3.prefix.clone(),
        rc.s3.row_group_size,
        root.child("s3").to_string(),
        replay_since,
    );
    let mut source = SourceSettings::new(rc.topics.clone(), format!("{}-s3", rc.group));
    source.consumers = rc.consumers;
    source.max_in_flight_records = rc.max_buffer_size;
    source.max_in_flight_bytes = rc.max_in_flight_bytes;
    source.start = StartFrom::Committed { earliest: true };
    source.migrate_from_group = rc.migrate_from_group.clone();
    let path = KafkaPath::<Market, ParquetSink> {
        id: "s3".into(),
        connection: resources.kafka.clone(),
        source,
        decode: Arc::new(model::decode),
        sink: objects.factory(),
        lanes: rc.s3.writers,
        buffer: BufferLimits {
            max_records: rc.s3.batch_size,
            max_bytes: 256 << 20,
            max_age: rc.s3.batch_timeout,
        },
        retry: RetryPolicy::default(),
        dlq_suffix: None,
    };
    Ok((path.child_spec(root, &config.supervision), objects))
}

/// `/recorder/demo`: a publisher and a generator of synthetic ticks and order books.
fn demo(root: &ActorPath, config: &Config, resources: &Resources) -> ChildSpec {
    let slot = PublisherSlot::default();
    let publisher = slot.child(resources.kafka.clone());
    let rc = config.pipelines.get::<RecorderConfig>().clone();
    let generator = ChildSpec::worker("generator", move |ctx| {
        let publisher = slot.get();
        let topics = rc.topics.clone();
        let rate = rc.demo_rate;
        async move {
            let publisher = publisher?;
            let args = GeneratorArgs {
                probe: ctx.probe,
                publisher,
                topics,
                rate,
            };
            let (actor, _) = Actor::spawn_linked(None, Generator, args, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    });
    super::demo_subtree(root, config, publisher, generator)
}
