//! The adaptive-card pipeline: on a cron, a two-stage Redis Streams job queue. Stage 1 fetches
//! each sales organisation's rows from the T2A API into per-organisation CSV files, which are
//! merged into `Material.csv` and `GSCM.csv`; stage 2 evaluates scenarios per user against the
//! merged rows and upserts Adaptive Cards into PostgreSQL.
//!
//! `/adaptive-card/scheduler` drives runs (entry `run`); `/adaptive-card/sales-org` and
//! `/adaptive-card/adaptive-card` are Redis Streams paths whose writers are the workers.

mod card;
mod csv;
mod database;
mod monitor;
pub mod names;
pub mod reset;
mod run;
mod sales_org;
pub mod standin;
mod status;
mod t2a;

use std::sync::Arc;
use std::time::Duration;

use actord_actors::buffer::BufferLimits;
use actord_actors::scheduler::{Scheduler, SchedulerConfig, SchedulerHandle};
use actord_actors::writer::RetryPolicy;
use actord_actors::{ActorPath, Backoff, ChildSpec, Strategy};
use anyhow::Context;
use serde::Deserialize;

use super::{HealthCheck, Pipeline, PipelineDef, Resources, TopicSpec};
use crate::config::schedule::{self, RawSchedule, ScheduleSettings};
use crate::config::{Check, Config, EnvKey, PipelineConfig, RawSupervision, Secret, Section, Unit};
use crate::sinks::objects::store::{self, Location};
use crate::sources::redis::drain::DrainCounting;
use crate::sources::redis::path::RedisPath;
use crate::sources::redis::{consumer_name, RedisConnection, StreamSettings};

pub use card::Scenario;
// The stream jobs and their decoders, public for the micro-benchmarks.
pub use card::{decode as decode_user_job, UserJob};
pub use sales_org::{decode as decode_sales_org_job, SalesOrgJob};

pub const DEF: PipelineDef = PipelineDef {
    name: "adaptive-card",
    summary: "on a cron, sales-org jobs (T2A API → CSV, merged) then per-user Adaptive Card jobs into PostgreSQL, through Redis Streams",
    env: &[
        EnvKey::seed("REDIS_URL", "redis_url", Unit::Str),
        EnvKey::seed("CRON_SPEC", "schedule.cron", Unit::Str),
        EnvKey::seed("MAX_WORKERS_SALES", "max_workers_sales", Unit::Int),
        EnvKey::seed("MAX_WORKERS_ADAPTIVE", "max_workers_adaptive", Unit::Int),
        EnvKey::seed("BATCH_COUNT", "batch_count", Unit::Int),
        EnvKey::seed("WORKER_NAME", "worker_name", Unit::Str),
        EnvKey::seed("T2A_API_URL", "t2a.url", Unit::Str),
        EnvKey::seed("T2A_API_TOKEN", "t2a.token", Unit::Str),
        EnvKey::seed("DB_HOST", "db.host", Unit::Str),
        EnvKey::seed("DB_PORT", "db.port", Unit::Int),
        EnvKey::seed("DB_NAME", "db.name", Unit::Str),
        EnvKey::seed("DB_USER", "db.user", Unit::Str),
        EnvKey::seed("DB_PASSWORD", "db.password", Unit::Str),
        EnvKey::new("SALES_ORGS", "sales_orgs", Unit::List),
        EnvKey::new("SALES_ORGS_TABLE", "sales_orgs_table", Unit::Str),
        EnvKey::new("ROLE", "role", Unit::Str),
        EnvKey::new("OUTPUT", "output", Unit::Str),
        EnvKey::new("SCENARIOS", "scenarios", Unit::Str),
        EnvKey::new("T2A_STANDIN", "t2a_standin", Unit::Bool),
    ],
    env_scan: None,
    kafka_keys: None,
    describe_metrics: names::describe,
    section: Section::of::<AdaptiveCardConfig>(),
    topics: no_topics,
    build,
};

fn no_topics(_: &Config) -> Vec<TopicSpec> {
    Vec::new()
}

/// `[pipelines.adaptive-card]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptiveCard {
    /// Redis holding the job streams (REDIS_URL), default "redis://localhost:6379/0".
    pub redis_url: Option<String>,
    /// What this process does: "all" (default: drives runs and takes jobs), "workers" (takes
    /// jobs only, as the seed's `python -m app.worker_sales_org`) or "scheduler" (drives runs
    /// only).
    pub role: Option<String>,
    /// Sales organisations a run fetches (SALES_ORGS, comma-separated).
    pub sales_orgs: Option<Vec<String>>,
    /// A table `(sales_org text primary key)` whose organisations a run fetches as well.
    pub sales_orgs_table: Option<String>,
    /// With the T2A stand-in: add this many users per organisation (`demo-<org>-<n>`) to the
    /// users table at start, so the demo has users to make cards for; default 0 (none).
    pub demo_users: Option<u32>,
    /// Stage 1 workers in this process (MAX_WORKERS_SALES), default 3.
    pub max_workers_sales: Option<u32>,
    /// Stage 2 workers in this process (MAX_WORKERS_ADAPTIVE), default 3.
    pub max_workers_adaptive: Option<u32>,
    /// Entries per XREADGROUP (BATCH_COUNT), default 10.
    pub batch_count: Option<u32>,
    /// Consumer name base (WORKER_NAME); default `<stage>-<host>-<pid>`.
    pub worker_name: Option<String>,
    /// Entries of a dead worker idle this long are taken over, e.g. "60s".
    pub claim_idle: Option<String>,
    /// Attempts of a job whose failure is its own (an unknown organisation), default 3.
    pub max_retries: Option<u32>,
    /// First delay between those attempts, e.g. "1s"; doubles up to `retry_backoff_max`.
    pub retry_backoff: Option<String>,
    /// Largest delay between attempts, e.g. "60s".
    pub retry_backoff_max: Option<String>,
    /// Where CSV files go: a local directory (default "data/adaptive-card") or "s3://bucket/prefix".
    pub output: Option<String>,
    /// A JSON file of scenarios; default: the built-in scenarios.
    pub scenarios: Option<String>,
    /// Table of users (user_id, sales_org), default "adaptive_card_users".
    pub users_table: Option<String>,
    /// Table of cards, default "user_scenario_result".
    pub results_table: Option<String>,
    /// Longest wait for a stage to drain, e.g. "1h".
    pub stage_timeout: Option<String>,
    /// Run the T2A stand-in (`t2a.url = "standin"`, T2A_API_URL unset) even though the
    /// environment names the database or Redis, or they are on another host: the stand-in's
    /// demo rows, cards and users then go there. Without it such a start is refused. Default
    /// false (ACTORD_ADAPTIVE_CARD_T2A_STANDIN).
    pub t2a_standin: Option<bool>,
    /// The T2A API.
    #[serde(default)]
    pub t2a: RawT2a,
    /// PostgreSQL holding users and cards.
    #[serde(default)]
    pub db: RawDb,
    /// When runs happen; default cron "0 */2 * * *" in Asia/Seoul (CRON_SPEC).
    pub schedule: Option<RawSchedule>,
    /// Supervision overrides for this pipeline and its paths.
    #[serde(default)]
    pub supervision: RawSupervision,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawT2a {
    /// Base URL (T2A_API_URL), or "standin": serve deterministic rows from this process on a
    /// loopback port (the demo; off whenever T2A_API_URL names a real API).
    pub url: Option<String>,
    /// Sent as `<auth_header>: Bearer <token>` when set (T2A_API_TOKEN).
    pub token: Option<String>,
    /// Header carrying the token, default "Authorization".
    pub auth_header: Option<String>,
    /// Path of an organisation's material rows, default "/sales-orgs/{sales_org}/materials".
    pub material_path: Option<String>,
    /// Path of an organisation's GSCM rows, default "/sales-orgs/{sales_org}/gscm".
    pub gscm_path: Option<String>,
    /// Longest wait for one request, e.g. "30s".
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDb {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Default "adaptive_card_db".
    pub name: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// The T2A API as configured.
#[derive(Debug, Clone)]
pub struct T2aSettings {
    pub url: String,
    /// `t2a.url = "standin"`: the stand-in serves this process's workers; `url` is set to its
    /// address when the pipeline is built.
    pub standin: bool,
    pub token: Option<Secret>,
    pub auth_header: String,
    pub material_path: String,
    pub gscm_path: String,
    pub timeout: Duration,
}

/// PostgreSQL as configured.
#[derive(Debug, Clone)]
pub struct DbSettings {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub password: Option<Secret>,
}

impl DbSettings {
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .dbname(&self.name)
            .user(&self.user)
            .connect_timeout(Duration::from_secs(5));
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        c
    }
}

#[derive(Debug, Clone)]
pub struct AdaptiveCardConfig {
    pub role: Role,
    pub redis_url: String,
    pub sales_orgs: Vec<String>,
    pub sales_orgs_table: Option<String>,
    pub demo_users: usize,
    pub max_workers_sales: usize,
    pub max_workers_adaptive: usize,
    pub batch_count: usize,
    pub worker_name: Option<String>,
    pub claim_idle: Duration,
    pub max_retries: u32,
    pub retry: Backoff,
    pub output: Location,
    pub scenarios: Option<String>,
    pub users_table: String,
    pub results_table: String,
    pub stage_timeout: Duration,
    pub t2a: T2aSettings,
    pub db: DbSettings,
    pub schedule: Option<ScheduleSettings>,
}

/// What one process does in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Drives runs (the scheduler) and takes jobs (both stages' workers).
    All,
    /// Takes jobs only.
    Workers,
    /// Drives runs only; the jobs are taken by workers elsewhere.
    Scheduler,
}

impl Role {
    pub fn workers(self) -> bool {
        self != Role::Scheduler
    }

    pub fn scheduler(self) -> bool {
        self != Role::Workers
    }
}

/// The value of `t2a.url` that starts the stand-in.
pub const STANDIN: &str = "standin";

/// Stage 1's stream and group, as the seed names them.
pub const SALES_ORG_QUEUE: &str = "sales_org_queue";
pub const SALES_ORG_GROUP: &str = "sales_org_group";
/// Stage 2's stream and group.
pub const ADAPTIVE_CARD_QUEUE: &str = "adaptive_card_queue";
pub const ADAPTIVE_CARD_GROUP: &str = "adaptive_card_group";

fn table_name(check: &mut Check<'_>, key: &str, raw: Option<&str>, default: &str) -> String {
    let name = raw.unwrap_or(default).to_owned();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        check.problem(key, "expected a table name of letters, digits, `_` and `.`");
    }
    name
}

impl PipelineConfig for AdaptiveCardConfig {
    type Raw = RawAdaptiveCard;

    fn supervision(raw: &RawAdaptiveCard) -> &RawSupervision {
        &raw.supervision
    }

    fn validate(raw: &RawAdaptiveCard, check: &mut Check<'_>) -> Self {
        AdaptiveCardConfig::validate(raw, check)
    }
}

impl AdaptiveCardConfig {
    pub(crate) fn validate(raw: &RawAdaptiveCard, check: &mut Check<'_>) -> Self {
        let k = |f: &str| format!("pipelines.adaptive-card.{f}");
        let positive = |check: &mut Check<'_>, key: &str, v: Option<u32>, default: u32| {
            let v = v.unwrap_or(default);
            if v == 0 {
                check.problem(key, "expected a number above zero");
                return default as usize;
            }
            v as usize
        };
        let schedule = match &raw.schedule {
            Some(s) => schedule::validate(s, &k("schedule"), check),
            None => schedule::validate(
                &RawSchedule {
                    cron: Some("0 */2 * * *".to_owned()),
                    ..RawSchedule::default()
                },
                &k("schedule"),
                check,
            ),
        };
        let output = match raw.output.as_deref() {
            None => Location::Dir("data/adaptive-card".into()),
            Some(s) if s.starts_with("s3://") => {
                let name = s.trim_start_matches("s3://").trim_end_matches('/');
                if name.is_empty() || name.contains('/') {
                    check.problem(
                        &k("output"),
                        "expected s3://bucket (the files go to its top)",
                    );
                }
                Location::Bucket {
                    name: name.to_owned(),
                    region: None,
                }
            }
            Some("") => {
                check.problem(&k("output"), "expected a directory or s3://bucket");
                Location::Dir("data/adaptive-card".into())
            }
            Some(dir) => Location::Dir(dir.into()),
        };
        let url = raw
            .t2a
            .url
            .clone()
            .unwrap_or_else(|| "https://api.t2a.example.com".to_owned());
        let standin = url.trim() == STANDIN;
        if !standin && reqwest::Url::parse(&url).is_err() {
            check.problem(
                &k("t2a.url"),
                format!("expected an http(s) URL or \"{STANDIN}\", found {url:?}"),
            );
        }
        if standin && !raw.t2a_standin.unwrap_or(false) {
            guard_standin(raw, check);
        }
        let sales_orgs = raw.sales_orgs.clone().unwrap_or_default();
        if sales_orgs
            .iter()
            .any(|o| o.trim().is_empty() || o.contains('/'))
        {
            check.problem(&k("sales_orgs"), "expected organisation codes without `/`");
        }
        let role = match raw.role.as_deref().map(str::trim) {
            None | Some("all") => Role::All,
            Some("workers") => Role::Workers,
            Some("scheduler") => Role::Scheduler,
            Some(other) => {
                check.problem(
                    &k("role"),
                    format!("expected \"all\", \"workers\" or \"scheduler\", found {other:?}"),
                );
                Role::All
            }
        };
        let sales_orgs_table = raw
            .sales_orgs_table
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| table_name(check, &k("sales_orgs_table"), Some(t), t));
        AdaptiveCardConfig {
            role,
            sales_orgs_table,
            demo_users: raw.demo_users.unwrap_or(0) as usize,
            redis_url: raw
                .redis_url
                .clone()
                .unwrap_or_else(|| "redis://localhost:6379/0".to_owned()),
            sales_orgs,
            max_workers_sales: positive(check, &k("max_workers_sales"), raw.max_workers_sales, 3),
            max_workers_adaptive: positive(
                check,
                &k("max_workers_adaptive"),
                raw.max_workers_adaptive,
                3,
            ),
            batch_count: positive(check, &k("batch_count"), raw.batch_count, 10),
            worker_name: raw.worker_name.clone().filter(|w| !w.is_empty()),
            claim_idle: check.positive_duration(
                &k("claim_idle"),
                raw.claim_idle.as_deref(),
                Duration::from_secs(60),
            ),
            max_retries: positive(check, &k("max_retries"), raw.max_retries, 3) as u32,
            retry: Backoff {
                initial: check.positive_duration(
                    &k("retry_backoff"),
                    raw.retry_backoff.as_deref(),
                    Duration::from_secs(1),
                ),
                max: check.positive_duration(
                    &k("retry_backoff_max"),
                    raw.retry_backoff_max.as_deref(),
                    Duration::from_secs(60),
                ),
                factor: 2.0,
            },
            output,
            scenarios: raw.scenarios.clone().filter(|s| !s.is_empty()),
            users_table: table_name(
                check,
                &k("users_table"),
                raw.users_table.as_deref(),
                "adaptive_card_users",
            ),
            results_table: table_name(
                check,
                &k("results_table"),
                raw.results_table.as_deref(),
                "user_scenario_result",
            ),
            stage_timeout: check.positive_duration(
                &k("stage_timeout"),
                raw.stage_timeout.as_deref(),
                Duration::from_secs(3600),
            ),
            t2a: T2aSettings {
                url,
                standin,
                token: raw.t2a.token.clone().map(Secret::new),
                auth_header: raw
                    .t2a
                    .auth_header
                    .clone()
                    .unwrap_or_else(|| "Authorization".to_owned()),
                material_path: raw
                    .t2a
                    .material_path
                    .clone()
                    .unwrap_or_else(|| "/sales-orgs/{sales_org}/materials".to_owned()),
                gscm_path: raw
                    .t2a
                    .gscm_path
                    .clone()
                    .unwrap_or_else(|| "/sales-orgs/{sales_org}/gscm".to_owned()),
                timeout: check.positive_duration(
                    &k("t2a.timeout"),
                    raw.t2a.timeout.as_deref(),
                    Duration::from_secs(30),
                ),
            },
            db: DbSettings {
                host: raw
                    .db
                    .host
                    .clone()
                    .unwrap_or_else(|| "localhost".to_owned()),
                port: raw.db.port.unwrap_or(5432),
                name: raw
                    .db
                    .name
                    .clone()
                    .unwrap_or_else(|| "adaptive_card_db".to_owned()),
                user: raw.db.user.clone().unwrap_or_else(|| "postgres".to_owned()),
                password: raw.db.password.clone().map(Secret::new),
            },
            schedule,
        }
    }
}

/// Keys whose value in the environment means the pipeline runs against real services.
const SERVICE_KEYS: [&str; 6] = [
    "redis_url",
    "db.host",
    "db.port",
    "db.name",
    "db.user",
    "db.password",
];

/// A host on this machine: loopback, or a Unix socket.
fn local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.is_empty()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The stand-in writes demo data (cards, and users with `demo_users`): it runs only against
/// the local defaults, unless asked for with `t2a_standin = true`. Refused when a seed's
/// environment names the database or Redis (a deployment moved over that did not set
/// T2A_API_URL), or when either is on another host.
fn guard_standin(raw: &RawAdaptiveCard, check: &mut Check<'_>) {
    let k = |f: &str| format!("pipelines.adaptive-card.{f}");
    let mut reasons: Vec<String> = SERVICE_KEYS
        .iter()
        .filter_map(|f| {
            let origin = check.origin(&k(f))?;
            let var = origin.strip_prefix("environment variable ")?;
            Some(format!("{var} is set"))
        })
        .collect();
    let redis_host = raw.redis_url.as_deref().and_then(|u| {
        let url = reqwest::Url::parse(u).ok()?;
        (url.scheme() != "unix" && url.scheme() != "redis+unix")
            .then(|| url.host_str().unwrap_or_default().to_owned())
    });
    if let Some(h) = redis_host.filter(|h| !local_host(h)) {
        reasons.push(format!("Redis is on {h}"));
    }
    if let Some(h) = raw.db.host.as_deref().filter(|h| !local_host(h)) {
        reasons.push(format!("PostgreSQL is on {h}"));
    }
    if reasons.is_empty() {
        return;
    }
    check.problem(
        &k("t2a.url"),
        format!(
            "is \"{STANDIN}\" (T2A_API_URL is not set), so the T2A stand-in would write demo \
             rows, cards and users into services that are not the local defaults ({}); expected \
             T2A_API_URL naming the T2A API, or pipelines.adaptive-card.t2a_standin = true \
             (ACTORD_ADAPTIVE_CARD_T2A_STANDIN=true) to run the stand-in there on purpose",
            reasons.join(", ")
        ),
    );
}

/// The entry field naming a job's run, beside the job itself in `data`.
pub const RUN_FIELD: &str = "run_id";

/// Each stage's jobs counted per run in Redis (`<stream>:drain:<run_id>`): the drain test of
/// the run's driver. The counters are kept a day after their last change, or twice the stage
/// timeout and an hour if that is longer, so they outlast any run.
pub fn drain_counting(ac: &AdaptiveCardConfig) -> DrainCounting {
    DrainCounting {
        field: RUN_FIELD.to_owned(),
        ttl: (ac.stage_timeout * 2 + Duration::from_secs(3600)).max(Duration::from_secs(86_400)),
    }
}

/// The stream settings of one stage with `workers` workers.
fn stage(
    ac: &AdaptiveCardConfig,
    stream: &str,
    group: &str,
    prefix: &str,
    workers: usize,
) -> StreamSettings {
    let mut s = StreamSettings::new(stream, group);
    s.consumer = match &ac.worker_name {
        Some(w) => format!("{w}-{prefix}"),
        None => consumer_name(prefix, None),
    };
    // A WORKER_NAME may be given to several processes alike: each leases `<name>-<n>`.
    s.lease_name = ac.worker_name.is_some();
    s.payload_field = Some("data".to_owned());
    s.count = ac.batch_count;
    s.claim_idle = ac.claim_idle;
    s.max_deliveries = ac.max_retries;
    // One entry per worker: every entry handed out is one a worker is on, none waits behind
    // another. A process that dies charges a delivery (see the delivery limit) to the jobs it
    // was doing, not to jobs it had merely read ahead, so repeated crashes (a SIGKILL, an OOM
    // kill, a host lost) do not dead-letter jobs that were never tried.
    s.max_in_flight_records = workers;
    s.drain_counting = Some(drain_counting(ac));
    s
}

/// The stop of a worker that holds no work (the database watch, the stand-in).
const STOP_QUICK: Duration = Duration::from_secs(1);

/// One job per write: each worker (lane) does one job at a time, as the seed's workers do.
const ONE_JOB: BufferLimits = BufferLimits {
    max_records: 1,
    max_bytes: 1 << 20,
    max_age: Duration::from_millis(10),
};

fn build(config: &Config, resources: &Resources) -> anyhow::Result<Pipeline> {
    let root = ActorPath::root().child(DEF.name);
    let mut ac = config.pipelines.get::<AdaptiveCardConfig>().clone();
    let sup = &config.supervision;
    let store = store::open(&ac.output, &config.s3)
        .map_err(|e| anyhow::anyhow!("pipelines.adaptive-card.output: {e}"))?;
    let scenarios = Arc::new(card::load_scenarios(ac.scenarios.as_deref())?);
    let connection = RedisConnection::new(ac.redis_url.clone());
    connection
        .client()
        .map_err(|e| anyhow::anyhow!("pipelines.adaptive-card.redis_url: {e}"))?;
    // The stand-in's port is bound here, so the workers know its address before it serves.
    let standin = if ac.t2a.standin && ac.role.workers() {
        let listener = standin::bind().context("binding the T2A stand-in's port")?;
        ac.t2a.url = format!("http://{}", listener.local_addr()?);
        Some(Arc::new(listener))
    } else {
        None
    };
    if ac.demo_users > 0 && !ac.t2a.standin {
        tracing::warn!(
            "pipelines.adaptive-card.demo_users is ignored: demo users are only added with the T2A stand-in"
        );
    }
    let ac = Arc::new(ac);

    let breaker = Arc::new(status::Breaker::default());
    let runs = Arc::new(status::RunStatus::default());
    let mut children = Vec::new();
    let (b, r) = (breaker.clone(), runs.clone());
    let monitor = ChildSpec::worker("monitor", move |ctx| {
        let args = monitor::MonitorArgs {
            probe: ctx.probe,
            breaker: b.clone(),
            runs: r.clone(),
        };
        async move {
            let (actor, _) =
                ractor::Actor::spawn_linked(None, monitor::PipelineMonitor, args, ctx.supervisor)
                    .await?;
            Ok(actor.get_cell())
        }
    })
    .shutdown(STOP_QUICK);
    children.push(sup.child(&root.child("monitor"), monitor));
    let config_for_db = ac.clone();
    let database = ChildSpec::worker("database", move |ctx| {
        let args = database::DatabaseWatchArgs {
            probe: ctx.probe,
            config: config_for_db.clone(),
        };
        async move {
            let (actor, _) =
                ractor::Actor::spawn_linked(None, database::DatabaseWatch, args, ctx.supervisor)
                    .await?;
            Ok(actor.get_cell())
        }
    })
    .shutdown(STOP_QUICK);
    children.push(sup.child(&root.child("database"), database));
    if let Some(listener) = standin.clone() {
        let spec = ChildSpec::worker("t2a-standin", move |ctx| {
            let args = standin::StandInArgs {
                probe: ctx.probe,
                listener: listener.clone(),
            };
            async move {
                let (actor, _) =
                    ractor::Actor::spawn_linked(None, standin::T2aStandIn, args, ctx.supervisor)
                        .await?;
                Ok(actor.get_cell())
            }
        })
        .shutdown(STOP_QUICK);
        children.push(sup.child(&root.child("t2a-standin"), spec));
    }
    if ac.role.workers() {
        let sales = RedisPath {
            id: "sales-org".into(),
            connection: connection.clone(),
            source: stage(
                &ac,
                SALES_ORG_QUEUE,
                SALES_ORG_GROUP,
                "sales_org_worker",
                ac.max_workers_sales,
            ),
            decode: Arc::new(sales_org::decode),
            sink: sales_org::SalesOrgSink::factory(ac.clone(), store.clone(), breaker.clone()),
            lanes: ac.max_workers_sales,
            buffer: ONE_JOB,
            retry: RetryPolicy::default(),
            dlq_suffix: Some(":dlq".into()),
        };
        let cards = RedisPath {
            id: "adaptive-card".into(),
            connection: connection.clone(),
            source: stage(
                &ac,
                ADAPTIVE_CARD_QUEUE,
                ADAPTIVE_CARD_GROUP,
                "adaptive_card_worker",
                ac.max_workers_adaptive,
            ),
            decode: Arc::new(card::decode),
            sink: card::factory(ac.clone(), store.clone(), scenarios),
            lanes: ac.max_workers_adaptive,
            buffer: ONE_JOB,
            retry: RetryPolicy::default(),
            dlq_suffix: Some(":dlq".into()),
        };
        children.push(sales.child_spec(&root, sup));
        children.push(cards.child_spec(&root, sup));
    }
    if let (true, Some(settings)) = (ac.role.scheduler(), &ac.schedule) {
        let job = run::job(ac.clone(), connection, store, runs);
        let entry = settings
            .entry(run::ENTRY, job)
            .context("opening the schedule's lease store")?;
        let handle = SchedulerHandle::new();
        resources.schedules.register(DEF.name, handle.clone());
        let spec = Scheduler::spec(
            "scheduler",
            SchedulerConfig::new(DEF.name, vec![entry]),
            handle,
        )?;
        children.push(sup.child(&root.child("scheduler"), spec));
    }
    let spec = sup.child(
        &root,
        ChildSpec::supervisor(
            DEF.name,
            sup.supervisor_spec(&root, Strategy::OneForOne),
            children,
        ),
    );
    let mut health: Vec<HealthCheck> = vec![healthy("database", root.child("database"))];
    if ac.role.workers() {
        health.push(super::running(
            "sales_org_worker",
            root.child("sales-org").child("consumer-0"),
        ));
        health.push(super::running(
            "adaptive_card_worker",
            root.child("adaptive-card").child("consumer-0"),
        ));
        health.push(HealthCheck {
            component: "t2a",
            check: Arc::new(move |_| !breaker.is_open()),
        });
    }
    let note = standin.map(|_| {
        format!(
            "# adaptive-card: T2A stand-in at {} serving demo rows (T2A_API_URL names a real API)",
            ac.t2a.url
        )
    });
    Ok(Pipeline {
        spec,
        health,
        notes: Arc::new(move || note.iter().cloned().collect()),
    })
}

/// A health line that is healthy while the actor at `path` runs and does not report itself
/// unhealthy (a dependency it watches is down).
fn healthy(component: &'static str, path: ActorPath) -> HealthCheck {
    HealthCheck {
        component,
        check: Arc::new(move |registry| {
            registry.get(&path).is_some_and(|p| {
                p.status() == actord_actors::Status::Running && p.unhealthy().is_none()
            })
        }),
    }
}
