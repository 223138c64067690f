//! The commerce pipeline: a synthetic shop. Generators publish users, products and orders to
//! Kafka; three consumer paths write them to PostgreSQL through the shared sink (rows and
//! offsets in one transaction); a cache worker loads split user and product pools into Redis
//! every 50 s, from which the order producer draws buyers by purchase propensity; a grade
//! updater recomputes grades every 10 minutes.
//!
//! Tree: `/commerce/users`, `/commerce/products`, `/commerce/orders` are consumer paths (groups
//! `users_group`, `products_group`, `orders_group`, each owning its `<topic>-dlq`);
//! `/commerce/scheduler` runs the entries `cache` and `grades`; `/commerce/cache-monitor`
//! shows Redis and the caches; `/commerce/demo` (with `demo = true`) holds the publisher, the
//! user/product generator and the order producer.

pub mod cache;
mod config;
mod generator;
pub mod grades;
pub mod history;
pub mod model;
mod monitor;
pub mod names;
mod producer;
pub mod propensity;
pub mod seed;
pub mod store;
pub mod synth;

use std::sync::Arc;
use std::time::Duration;

use actord_actors::buffer::BufferLimits;
use actord_actors::record::{Poison, SourceRecord};
use actord_actors::scheduler::{
    Entry, Job, RunSummary, Schedule, Scheduler, SchedulerConfig, SchedulerHandle,
};
use actord_actors::writer::RetryPolicy;
use actord_actors::{ActorPath, Backoff, ChildSpec, Strategy};
use ractor::Actor;
use tracing::info;

use super::{HealthCheck, Pipeline, PipelineDef, Resources, TopicSpec};
use crate::config::{Config, ConfigError, EnvKey, Problem, Section, Unit};
use crate::sinks::postgres::{Database, DbSettings, PostgresSink, Writes};
use crate::sources::kafka::path::KafkaPath;
use crate::sources::kafka::producer::PublisherSlot;
use crate::sources::kafka::{SourceSettings, StartFrom};
use crate::sources::redis::RedisConnection;
use generator::{Generator, GeneratorArgs};
use model::{Order, Product, User};
use monitor::{CacheMonitor, CacheMonitorArgs};
use producer::{OrderProducer, OrderProducerArgs};
use store::{OrderRows, ProductRows, ShopTables, UserRows};

pub use config::*;

pub const DEF: PipelineDef = PipelineDef {
    name: "commerce",
    summary: "synthetic shop: users, products and orders through Kafka into PostgreSQL, split caches in Redis, grades",
    env: &[
        EnvKey::seed("DB_TYPE", "db_type", Unit::Str),
        EnvKey::seed("POSTGRES_HOST", "db.host", Unit::Str),
        EnvKey::seed("POSTGRES_PORT", "db.port", Unit::Int),
        EnvKey::seed("POSTGRES_USER", "db.user", Unit::Str),
        EnvKey::seed("POSTGRES_PASSWORD", "db.password", Unit::Str),
        EnvKey::seed("POSTGRES_DB", "db.database", Unit::Str),
        EnvKey::seed("CACHE_REFRESH_INTERVAL", "cache_refresh_interval", Unit::Secs),
        EnvKey::seed("CACHE_BATCH_SIZE", "cache_batch_size", Unit::Int),
        EnvKey::new("REDIS_URL", "redis_url", Unit::Str),
        EnvKey::new("KEY_PREFIX", "key_prefix", Unit::Str),
        EnvKey::new("DEMO", "demo", Unit::Bool),
        EnvKey::new("CONSUMERS", "consumers", Unit::Int),
        EnvKey::new("SCHEMA", "db.schema", Unit::Str),
    ],
    env_scan: None,
    kafka_keys: None,
    describe_metrics: names::describe,
    section: Section::of::<CommerceConfig>(),
    topics,
    build,
};

fn topics(config: &Config) -> Vec<TopicSpec> {
    let cc = config.pipelines.get::<CommerceConfig>();
    [&cc.users_topic, &cc.products_topic, &cc.orders_topic]
        .into_iter()
        .flat_map(|t| TopicSpec::with_dlq(t, "-dlq", 3))
        .collect()
}

/// Retries that outlast `fk_retry_for`: an order waiting for its user must not exhaust the
/// writer's budget first (each attempt waits at least half the backoff).
fn order_retry(fk_retry_for: Duration) -> RetryPolicy {
    let base = RetryPolicy::default();
    let backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(5),
        factor: 2.0,
    };
    let floor = (backoff.max / 2).as_secs_f64();
    RetryPolicy {
        backoff,
        max_attempts: base.max_attempts + (fk_retry_for.as_secs_f64() / floor).ceil() as u32 + 1,
    }
}

/// One consumer path writing through the shared sink.
#[allow(clippy::too_many_arguments)]
fn path<R, W>(
    root: &ActorPath,
    config: &Config,
    resources: &Resources,
    id: &str,
    topic: &str,
    group: &str,
    settings: &DbSettings,
    decode: fn(&SourceRecord) -> Result<R, Poison>,
    writes: W,
    retry: RetryPolicy,
) -> ChildSpec
where
    R: Send + Sync + 'static,
    W: Writes<R>,
{
    let cc = config.pipelines.get::<CommerceConfig>();
    let db = Database::kafka(
        settings.clone(),
        "postgres",
        Arc::new(ShopTables),
        store::classifier(),
        group.to_owned(),
    );
    let mut source = SourceSettings::new(vec![topic.to_owned()], group);
    source.consumers = cc.consumers;
    source.max_in_flight_records = (cc.batch_size * 4).max(1000);
    source.start = StartFrom::Sink(db.clone());
    let path = KafkaPath::<R, PostgresSink<R, W>> {
        id: id.into(),
        connection: resources.kafka.clone(),
        source,
        decode: Arc::new(decode),
        sink: db.factory(Arc::new(writes)),
        lanes: cc.consumers,
        buffer: BufferLimits {
            max_records: cc.batch_size,
            max_bytes: 16 << 20,
            max_age: cc.batch_timeout,
        },
        retry,
        dlq_suffix: Some("-dlq".into()),
    };
    path.child_spec(root, &config.supervision)
}

/// The scheduled entries: `cache` (run on start, then every CACHE_REFRESH_INTERVAL) and
/// `grades` (every `grade_interval`).
fn entries(cc: &CommerceConfig, jobs_db: Arc<Database>, redis: RedisConnection) -> Vec<Entry> {
    let (cache_cc, cache_db) = (cc.clone(), jobs_db.clone());
    let cache_job = Job::new(move |ctx| {
        let (cc, db, redis) = (cache_cc.clone(), cache_db.clone(), redis.clone());
        async move {
            let pool = db.pool().await.map_err(|e| e.message)?;
            let client = pool.get().await.map_err(|e| format!("database: {e}"))?;
            let mut conn = redis.connect(Duration::from_secs(30)).await?;
            let r = cache::refresh(&cc, &client, &mut conn, chrono::Utc::now()).await?;
            metrics::counter!(names::COMMERCE_CACHE_REFRESHES_TOTAL).increment(1);
            let n = (r.users_with_history + r.users_without + r.popular + r.newest) as u64;
            ctx.progress(n, 0);
            info!(
                pipeline = "commerce",
                users_with_history = r.users_with_history,
                users_without = r.users_without,
                popular = r.popular,
                newest = r.newest,
                refreshes = r.refreshes,
                "caches swapped"
            );
            Ok(RunSummary::records(n).note(format!(
                "users {}+{}, products {}+{}",
                r.users_with_history, r.users_without, r.popular, r.newest
            )))
        }
    });
    let (grade_cc, grade_db) = (cc.clone(), jobs_db);
    let grade_job = Job::new(move |ctx| {
        let (cc, db) = (grade_cc.clone(), grade_db.clone());
        async move {
            let pool = db.pool().await.map_err(|e| e.message)?;
            let client = pool.get().await.map_err(|e| format!("database: {e}"))?;
            let changed = grades::update(&**client, &cc.db.schema, chrono::Utc::now(), cc.grades)
                .await
                .map_err(|e| crate::sinks::postgres::describe(&e))?;
            metrics::counter!(names::COMMERCE_GRADE_CHANGES_TOTAL).increment(changed);
            ctx.progress(changed, 0);
            info!(pipeline = "commerce", changed, "grades updated");
            Ok(RunSummary::records(changed).note(format!("{changed} grade(s) changed")))
        }
    });
    vec![
        Entry::new(
            "cache",
            Schedule::Every(cc.cache_refresh_interval),
            cache_job,
        )
        .run_on_start(true),
        Entry::new("grades", Schedule::Every(cc.grade_interval), grade_job),
    ]
}

fn build(config: &Config, resources: &Resources) -> anyhow::Result<Pipeline> {
    let cc = config.pipelines.get::<CommerceConfig>().clone();
    let root = ActorPath::root().child(DEF.name);
    let sup = &config.supervision;
    let redis = RedisConnection::new(cc.redis_url.clone());
    redis
        .client()
        .map_err(|e| anyhow::anyhow!("pipelines.commerce.redis_url: {e}"))?;
    let settings = DbSettings {
        forget_offsets: resources
            .kafka
            .embedded
            .then(|| resources.kafka.bootstrap.clone()),
        ..cc.db.clone()
    };
    let jobs_db = Database::new(
        DbSettings {
            pool_size: 2,
            ..cc.db.clone()
        },
        "postgres",
        Arc::new(ShopTables),
        store::classifier(),
    );
    // Tables that cannot take what the paths write stop the start-up with exit 2.
    if let Err(problems) = jobs_db.preflight() {
        let origin = format!(
            "database {} on {}:{}",
            cc.db.database, cc.db.host, cc.db.port
        );
        return Err(anyhow::Error::new(ConfigError {
            problems: problems
                .iter()
                .map(|p| {
                    Problem::new(
                        origin.clone(),
                        "pipelines.commerce.db.schema",
                        format!("{p}; alter the column or choose another schema"),
                    )
                })
                .collect(),
        }));
    }
    metrics::counter!(names::COMMERCE_ORDERS_WAITING_TOTAL).increment(0);
    metrics::counter!(names::COMMERCE_CACHE_REFRESHES_TOTAL).increment(0);
    metrics::counter!(names::COMMERCE_GRADE_CHANGES_TOTAL).increment(0);
    let mut children = vec![
        path::<User, UserRows>(
            &root,
            config,
            resources,
            "users",
            &cc.users_topic,
            &cc.users_group,
            &settings,
            model::decode_user,
            UserRows,
            RetryPolicy::default(),
        ),
        path::<Product, ProductRows>(
            &root,
            config,
            resources,
            "products",
            &cc.products_topic,
            &cc.products_group,
            &settings,
            model::decode_product,
            ProductRows,
            RetryPolicy::default(),
        ),
        path::<Order, OrderRows>(
            &root,
            config,
            resources,
            "orders",
            &cc.orders_topic,
            &cc.orders_group,
            &settings,
            model::decode_order,
            OrderRows::new(cc.fk_retry_for),
            order_retry(cc.fk_retry_for),
        ),
    ];

    let handle = SchedulerHandle::new();
    resources.schedules.register(DEF.name, handle.clone());
    let scheduler = Scheduler::spec(
        "scheduler",
        SchedulerConfig::new(DEF.name, entries(&cc, jobs_db.clone(), redis.clone())),
        handle,
    )?;
    children.push(sup.child(&root.child("scheduler"), scheduler));

    let monitor_args = {
        let (redis, cc) = (redis.clone(), cc.clone());
        move |probe| CacheMonitorArgs {
            probe,
            redis: redis.clone(),
            users_key: cc.users_key(),
            products_key: cc.products_key(),
            meta_key: cc.meta_key(),
            interval: cc.monitor_interval,
            refresh_interval: cc.cache_refresh_interval,
        }
    };
    let monitor = ChildSpec::worker("cache-monitor", move |ctx| {
        let args = monitor_args(ctx.probe);
        async move {
            let (actor, _) = Actor::spawn_linked(None, CacheMonitor, args, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    });
    children.push(sup.child(&root.child("cache-monitor"), monitor));

    if cc.demo {
        children.push(demo(&root, config, resources, &cc, redis.clone()));
    }

    let spec = sup.child(
        &root,
        ChildSpec::supervisor(
            DEF.name,
            sup.supervisor_spec(&root, Strategy::OneForOne),
            children,
        ),
    );
    let health_db = jobs_db.clone();
    let notes_db = jobs_db;
    let demo_note = if cc.demo {
        "generators: users, products and orders published to the configured brokers".to_owned()
    } else {
        "generators: off (demo = false, or switched off against a real cluster)".to_owned()
    };
    Ok(Pipeline {
        spec,
        health: vec![
            super::running("users", root.child("users").child("consumer-0")),
            super::running("products", root.child("products").child("consumer-0")),
            super::running("orders", root.child("orders").child("consumer-0")),
            HealthCheck {
                component: "postgres",
                check: Arc::new(move |_| health_db.healthy()),
            },
            super::running("cache-monitor", root.child("cache-monitor")),
        ],
        notes: Arc::new(move || {
            let mut notes = notes_db.notes();
            notes.push(demo_note.clone());
            notes
        }),
    })
}

/// `/commerce/demo`: the publisher, the user/product generator and the order producer, the
/// last two restarted with the publisher whose address they hold.
fn demo(
    root: &ActorPath,
    config: &Config,
    resources: &Resources,
    cc: &CommerceConfig,
    redis: RedisConnection,
) -> ChildSpec {
    let demo_root = root.child("demo");
    let sup = &config.supervision;
    let slot = PublisherSlot::default();
    let publisher = slot.child(resources.kafka.clone());
    let (gen_slot, gen_cc) = (slot.clone(), cc.clone());
    let generator = ChildSpec::worker("generator", move |ctx| {
        let publisher = gen_slot.get();
        let cc = gen_cc.clone();
        async move {
            let args = GeneratorArgs {
                probe: ctx.probe,
                publisher: publisher?,
                users_topic: cc.users_topic.clone(),
                products_topic: cc.products_topic.clone(),
                settings: cc.generator.clone(),
            };
            let (actor, _) = Actor::spawn_linked(None, Generator, args, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    });
    let order_cc = cc.clone();
    let orders = ChildSpec::worker("orders", move |ctx| {
        let publisher = slot.get();
        let (cc, redis) = (order_cc.clone(), redis.clone());
        async move {
            let args = OrderProducerArgs {
                probe: ctx.probe,
                publisher: publisher?,
                redis,
                users_key: cc.users_key(),
                products_key: cc.products_key(),
                orders_topic: cc.orders_topic.clone(),
                interval: cc.generator.order_interval,
                top_users: cc.generator.top_users,
                scenarios: cc.scenarios.clone(),
            };
            let (actor, _) = Actor::spawn_linked(None, OrderProducer, args, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    });
    let children = vec![
        sup.child(&demo_root.child("publisher"), publisher),
        sup.child(&demo_root.child("generator"), generator),
        sup.child(&demo_root.child("orders"), orders),
    ];
    sup.child(
        &demo_root,
        ChildSpec::supervisor(
            "demo",
            sup.supervisor_spec(&demo_root, Strategy::RestForOne),
            children,
        ),
    )
}
