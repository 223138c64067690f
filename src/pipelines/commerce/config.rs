//! `[pipelines.commerce]` as written, and how it is read into [`CommerceConfig`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::propensity::{Scenario, SCENARIOS};
use crate::config::{Check, PipelineConfig, RawSupervision, Secret};
use crate::sinks::postgres::{BreakerSettings, DbSettings};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommerce {
    /// "local" (the local defaults) or "production" (POSTGRES_HOST, POSTGRES_USER and
    /// POSTGRES_PASSWORD must be set) (DB_TYPE).
    pub db_type: Option<String>,
    /// Redis holding the caches, default "redis://127.0.0.1:6379/0".
    pub redis_url: Option<String>,
    /// Prefix of every Redis key this pipeline uses (`<prefix>cache:users`); default "".
    pub key_prefix: Option<String>,
    /// Runs the generators (users, products, orders) into the topics. Like every demo
    /// generator, switched off against a real cluster unless `--demo-into-cluster` is given.
    pub demo: Option<bool>,
    /// Topic of user events, default "users".
    pub users_topic: Option<String>,
    /// Topic of product events, default "products".
    pub products_topic: Option<String>,
    /// Topic of order events, default "orders".
    pub orders_topic: Option<String>,
    /// Consumer group of the users path, default "users_group".
    pub users_group: Option<String>,
    /// Consumer group of the products path, default "products_group".
    pub products_group: Option<String>,
    /// Consumer group of the orders path, default "orders_group".
    pub orders_group: Option<String>,
    /// Consumers per group in this process, default 3.
    pub consumers: Option<u32>,
    /// Rows per database transaction, default 500.
    pub batch_size: Option<u32>,
    /// Age at which a partial batch is written, default "500ms".
    pub batch_timeout: Option<String>,
    /// How long an order naming a user or product not written yet is retried before it is
    /// dead-lettered with the reason, default "60s".
    pub fk_retry_for: Option<String>,
    /// Time between cache refreshes (CACHE_REFRESH_INTERVAL, seconds), default "50s".
    pub cache_refresh_interval: Option<String>,
    /// Entries per cache (CACHE_BATCH_SIZE), default 1000: users 60% with purchase history
    /// and 40% without, products 70% popular and 30% newest.
    pub cache_batch_size: Option<u32>,
    /// How often the cache monitor reads Redis, default "5s".
    pub monitor_interval: Option<String>,
    /// Time between grade updates, default "10m".
    pub grade_interval: Option<String>,
    /// PostgreSQL holding users, products and orders.
    #[serde(default)]
    pub db: RawDb,
    /// The generators' rates.
    #[serde(default)]
    pub generator: RawGenerator,
    /// Grade thresholds on 6-month spending (KRW).
    #[serde(default)]
    pub grades: RawGrades,
    /// Weight of each order scenario by name (see the README); unnamed ones keep their default.
    #[serde(default)]
    pub scenarios: BTreeMap<String, u32>,
    /// Supervision overrides for this pipeline and its paths.
    #[serde(default)]
    pub supervision: RawSupervision,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDb {
    /// Host (POSTGRES_HOST), default "127.0.0.1".
    pub host: Option<String>,
    /// Port (POSTGRES_PORT), default 5432.
    pub port: Option<u16>,
    /// User (POSTGRES_USER), default "postgres".
    pub user: Option<String>,
    /// Password (POSTGRES_PASSWORD); use "${VAR}" rather than writing it here.
    pub password: Option<String>,
    /// Database (POSTGRES_DB), default "sesac_db".
    pub database: Option<String>,
    /// Schema holding users, products, orders and actord_offsets, default "public".
    pub schema: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGenerator {
    /// New users per 10 s at the start of the S-curve, default 10.
    pub users_initial_per_10s: Option<f64>,
    /// New users per 10 s the curve settles at, default 1.
    pub users_floor_per_10s: Option<f64>,
    /// Time since start at which the rate is half way down, default "30m".
    pub users_midpoint: Option<String>,
    /// How sharply the rate falls around the midpoint, default "5m".
    pub users_steepness: Option<String>,
    /// Shortest wait between products, default "6s".
    pub product_interval_min: Option<String>,
    /// Longest wait between products, default "8s".
    pub product_interval_max: Option<String>,
    /// Shortest wait between orders, default "3s".
    pub order_interval_min: Option<String>,
    /// Longest wait between orders, default "5s".
    pub order_interval_max: Option<String>,
    /// Buyers are drawn from this many users of the cache with the highest propensity,
    /// default 200.
    pub top_users: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrades {
    /// 6-month spending from which a user is SILVER, default 300000.
    pub silver: Option<i64>,
    /// ... GOLD, default 1000000.
    pub gold: Option<i64>,
    /// ... VIP, default 3000000.
    pub vip: Option<i64>,
}

/// Where the database is: local defaults, or production with every POSTGRES_* given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbType {
    Local,
    Production,
}

/// The generators' settings.
#[derive(Clone, Debug)]
pub struct GeneratorSettings {
    pub users_initial_per_10s: f64,
    pub users_floor_per_10s: f64,
    pub users_midpoint: Duration,
    pub users_steepness: Duration,
    pub product_interval: (Duration, Duration),
    pub order_interval: (Duration, Duration),
    pub top_users: usize,
}

/// Grade thresholds on 6-month spending, in KRW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradeThresholds {
    pub silver: i64,
    pub gold: i64,
    pub vip: i64,
}

impl Default for GradeThresholds {
    fn default() -> Self {
        GradeThresholds {
            silver: 300_000,
            gold: 1_000_000,
            vip: 3_000_000,
        }
    }
}

impl GradeThresholds {
    /// The grade of a user who spent `spent` in the last six months.
    pub fn grade(&self, spent: i64) -> &'static str {
        if spent >= self.vip {
            "VIP"
        } else if spent >= self.gold {
            "GOLD"
        } else if spent >= self.silver {
            "SILVER"
        } else {
            "BRONZE"
        }
    }
}

#[derive(Debug, Clone)]
pub struct CommerceConfig {
    pub db_type: DbType,
    pub db: DbSettings,
    pub redis_url: String,
    pub key_prefix: String,
    pub demo: bool,
    pub users_topic: String,
    pub products_topic: String,
    pub orders_topic: String,
    pub users_group: String,
    pub products_group: String,
    pub orders_group: String,
    pub consumers: usize,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub fk_retry_for: Duration,
    pub cache_refresh_interval: Duration,
    pub cache_batch_size: usize,
    pub monitor_interval: Duration,
    pub grade_interval: Duration,
    pub generator: GeneratorSettings,
    pub grades: GradeThresholds,
    pub scenarios: Vec<Scenario>,
}

impl CommerceConfig {
    /// `cache:users` under the key prefix.
    pub fn users_key(&self) -> String {
        format!("{}cache:users", self.key_prefix)
    }

    /// `cache:products` under the key prefix.
    pub fn products_key(&self) -> String {
        format!("{}cache:products", self.key_prefix)
    }

    /// Holds the refresh count and the time of the last swap.
    pub fn meta_key(&self) -> String {
        format!("{}cache:meta", self.key_prefix)
    }

    /// Users with purchase history in the cache (60% of CACHE_BATCH_SIZE).
    pub fn cache_split_users(&self) -> (usize, usize) {
        let with = self.cache_batch_size * 3 / 5;
        (with, self.cache_batch_size - with)
    }

    /// Popular products in the cache (70% of CACHE_BATCH_SIZE).
    pub fn cache_split_products(&self) -> (usize, usize) {
        let popular = self.cache_batch_size * 7 / 10;
        (popular, self.cache_batch_size - popular)
    }

    pub(crate) fn validate(raw: &RawCommerce, check: &mut Check<'_>) -> Self {
        let k = |f: &str| format!("pipelines.commerce.{f}");
        let db_type = match raw.db_type.as_deref() {
            None => DbType::Local,
            Some(s) => check
                .choice(&k("db_type"), s.trim(), &["local", "production"])
                .unwrap_or(DbType::Local),
        };
        let d = &raw.db;
        if db_type == DbType::Production {
            for (field, value, env) in [
                ("host", d.host.as_deref(), "POSTGRES_HOST"),
                ("user", d.user.as_deref(), "POSTGRES_USER"),
                ("password", d.password.as_deref(), "POSTGRES_PASSWORD"),
            ] {
                if value.is_none_or(|v| v.trim().is_empty()) {
                    check.problem(
                        &k(&format!("db.{field}")),
                        format!("DB_TYPE=production needs it: set {env}"),
                    );
                }
            }
        }
        let schema = d.schema.clone().unwrap_or_else(|| "public".to_owned());
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            check.problem(
                &k("db.schema"),
                format!("expected a schema name of letters, digits and _, found {schema:?}"),
            );
        }
        let name = |check: &mut Check<'_>, f: &str, v: &Option<String>, default: &str| {
            let v = v.clone().unwrap_or_else(|| default.to_owned());
            if v.trim().is_empty() {
                check.problem(&k(f), "expected a name");
            }
            v
        };
        let positive = |check: &mut Check<'_>, f: &str, v: Option<u32>, default: u32| match v {
            Some(0) => {
                check.problem(&k(f), "expected a number above zero");
                default as usize
            }
            Some(n) => n as usize,
            None => default as usize,
        };
        let consumers = positive(check, "consumers", raw.consumers, 3);
        let batch_size = positive(check, "batch_size", raw.batch_size, 500);
        let cache_batch_size = positive(check, "cache_batch_size", raw.cache_batch_size, 1000);
        let g = &raw.generator;
        let interval = |check: &mut Check<'_>,
                        f: &str,
                        lo: &Option<String>,
                        hi: &Option<String>,
                        dlo: u64,
                        dhi: u64| {
            let lo = check.positive_duration(
                &k(&format!("generator.{f}_min")),
                lo.as_deref(),
                Duration::from_secs(dlo),
            );
            let hi = check.positive_duration(
                &k(&format!("generator.{f}_max")),
                hi.as_deref(),
                Duration::from_secs(dhi),
            );
            if hi < lo {
                check.problem(
                    &k(&format!("generator.{f}_max")),
                    format!("expected at least {f}_min ({lo:?})"),
                );
                return (lo, lo);
            }
            (lo, hi)
        };
        let product_interval = interval(
            check,
            "product_interval",
            &g.product_interval_min,
            &g.product_interval_max,
            6,
            8,
        );
        let order_interval = interval(
            check,
            "order_interval",
            &g.order_interval_min,
            &g.order_interval_max,
            3,
            5,
        );
        let rate = |check: &mut Check<'_>, f: &str, v: Option<f64>, default: f64| match v {
            Some(r) if !(r.is_finite() && r >= 0.0) => {
                check.problem(
                    &k(&format!("generator.{f}")),
                    format!("expected a rate of zero or more, found {r}"),
                );
                default
            }
            Some(r) => r,
            None => default,
        };
        let generator = GeneratorSettings {
            users_initial_per_10s: rate(
                check,
                "users_initial_per_10s",
                g.users_initial_per_10s,
                10.0,
            ),
            users_floor_per_10s: rate(check, "users_floor_per_10s", g.users_floor_per_10s, 1.0),
            users_midpoint: check.duration(
                &k("generator.users_midpoint"),
                g.users_midpoint.as_deref(),
                Duration::from_secs(30 * 60),
            ),
            users_steepness: check.positive_duration(
                &k("generator.users_steepness"),
                g.users_steepness.as_deref(),
                Duration::from_secs(5 * 60),
            ),
            product_interval,
            order_interval,
            top_users: positive(check, "generator.top_users", g.top_users, 200),
        };
        let defaults = GradeThresholds::default();
        let grades = GradeThresholds {
            silver: raw.grades.silver.unwrap_or(defaults.silver),
            gold: raw.grades.gold.unwrap_or(defaults.gold),
            vip: raw.grades.vip.unwrap_or(defaults.vip),
        };
        if !(0 <= grades.silver && grades.silver <= grades.gold && grades.gold <= grades.vip) {
            check.problem(
                &k("grades"),
                format!(
                    "expected 0 <= silver <= gold <= vip, found {} / {} / {}",
                    grades.silver, grades.gold, grades.vip
                ),
            );
        }
        let mut scenarios = SCENARIOS.to_vec();
        for (name, weight) in &raw.scenarios {
            match scenarios.iter_mut().find(|s| s.name == name) {
                Some(s) => s.weight = *weight,
                None => {
                    let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                    check.problem(
                        &k(&format!("scenarios.{name}")),
                        format!("unknown scenario; expected one of {}", names.join(", ")),
                    );
                }
            }
        }
        if scenarios.iter().all(|s| s.weight == 0) {
            check.problem(&k("scenarios"), "expected at least one weight above zero");
        }
        let (host, port, user, database) = match db_type {
            DbType::Local => ("127.0.0.1", 5432, "postgres", "sesac_db"),
            DbType::Production => ("", 5432, "", "sesac_db"),
        };
        let db = DbSettings {
            host: d.host.clone().unwrap_or_else(|| host.to_owned()),
            port: d.port.unwrap_or(port),
            user: d.user.clone().unwrap_or_else(|| user.to_owned()),
            password: d
                .password
                .clone()
                .filter(|p| !p.is_empty())
                .map(Secret::new),
            database: d.database.clone().unwrap_or_else(|| database.to_owned()),
            schema,
            pool_size: consumers as u32 + 1,
            forget_offsets: None,
            lock_timeout: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(300),
            rejection: BreakerSettings::default(),
        };
        CommerceConfig {
            db_type,
            db,
            redis_url: raw
                .redis_url
                .clone()
                .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned()),
            key_prefix: raw.key_prefix.clone().unwrap_or_default(),
            demo: raw.demo.unwrap_or(false),
            users_topic: name(check, "users_topic", &raw.users_topic, "users"),
            products_topic: name(check, "products_topic", &raw.products_topic, "products"),
            orders_topic: name(check, "orders_topic", &raw.orders_topic, "orders"),
            users_group: name(check, "users_group", &raw.users_group, "users_group"),
            products_group: name(
                check,
                "products_group",
                &raw.products_group,
                "products_group",
            ),
            orders_group: name(check, "orders_group", &raw.orders_group, "orders_group"),
            consumers,
            batch_size,
            batch_timeout: check.positive_duration(
                &k("batch_timeout"),
                raw.batch_timeout.as_deref(),
                Duration::from_millis(500),
            ),
            fk_retry_for: check.duration(
                &k("fk_retry_for"),
                raw.fk_retry_for.as_deref(),
                Duration::from_secs(60),
            ),
            cache_refresh_interval: check.positive_duration(
                &k("cache_refresh_interval"),
                raw.cache_refresh_interval.as_deref(),
                Duration::from_secs(50),
            ),
            cache_batch_size,
            monitor_interval: check.positive_duration(
                &k("monitor_interval"),
                raw.monitor_interval.as_deref(),
                Duration::from_secs(5),
            ),
            grade_interval: check.positive_duration(
                &k("grade_interval"),
                raw.grade_interval.as_deref(),
                Duration::from_secs(600),
            ),
            generator,
            grades,
            scenarios,
        }
    }
}

impl PipelineConfig for CommerceConfig {
    type Raw = RawCommerce;

    fn supervision(raw: &RawCommerce) -> &RawSupervision {
        &raw.supervision
    }

    fn validate(raw: &RawCommerce, check: &mut Check<'_>) -> Self {
        CommerceConfig::validate(raw, check)
    }
}
