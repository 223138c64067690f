//! Configuration: `supervision.toml`, then the environment, then CLI flags, validated into typed
//! settings. Every problem is reported with where it came from and its TOML key.

pub(crate) mod env;
pub mod envfile;
pub(crate) mod raw;
pub mod reload;
pub mod schedule;
mod section;
mod supervision;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

pub use env::{prefixed, EnvKey, Unit};
pub use raw::RawSupervision;
pub use schedule::{RawSchedule, ScheduleSettings};
pub use section::{PipelineConfig, PipelinesConfig, Section};
pub use supervision::{Level, Supervision};

use crate::pipelines::{self, PipelineDef};
use raw::RawConfig;

/// The configuration shipped with the binary: it runs with no external infrastructure.
pub const EMBEDDED: &str = include_str!("../../supervision.toml");

/// A value that must never be printed (tokens, passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The file, environment variable or flag the value came from.
    pub origin: String,
    /// The TOML key, dotted (empty when the problem is not about one key).
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(
        origin: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            origin: origin.into(),
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

/// Every problem found; the process exits 2 with this message.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Inputs to [`load`], gathered by the CLI.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config`; without it `./supervision.toml` if present, else the embedded default.
    pub config_path: Option<std::path::PathBuf>,
    /// The process environment (after `--env-file`).
    pub env: BTreeMap<String, String>,
    /// `--enable a,b`.
    pub enable: Option<Vec<String>>,
    /// `--admin ADDR`.
    pub admin: Option<String>,
    /// `--demo-into-cluster`: run demo generators even when the brokers are a real cluster.
    pub demo_into_cluster: bool,
    /// `--bootstrap-servers`, as the seeds' containers take it: the cluster for all pipelines.
    pub bootstrap_servers: Option<String>,
    /// `--topic` and `--group-id`, as the seeds' containers take them: for the one enabled
    /// pipeline that reads Kafka.
    pub topic: Option<String>,
    pub group_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file came from, for messages.
    pub source: String,
    pub admin: AdminConfig,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    pub kafka: KafkaConfig,
    pub s3: S3Config,
    pub supervision: Supervision,
    pub pipelines: PipelinesConfig,
    /// A hash of the settings each registered pipeline is built from, by name: a reload
    /// restarts a pipeline whose hash differs (see [`reload`]).
    pub fingerprints: BTreeMap<String, u64>,
}

/// The shared S3 connection: where the server is and how to sign requests. Buckets belong to
/// the pipelines.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// A custom endpoint (MinIO, s3s, …); `None` means AWS.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub allow_http: bool,
    pub virtual_hosted: bool,
}

impl S3Config {
    fn validate(raw: &raw::RawS3, check: &mut Check<'_>) -> Self {
        let endpoint = raw.endpoint.clone().filter(|e| !e.trim().is_empty());
        let http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        if let Some(e) = &endpoint {
            if !(http || e.starts_with("https://")) {
                check.problem(
                    "s3.endpoint",
                    format!("expected an http:// or https:// URL, found {e:?}"),
                );
            }
        }
        let allow_http = raw.allow_http.unwrap_or(http);
        if http && !allow_http {
            check.problem(
                "s3.allow_http",
                "is false but s3.endpoint is a plain http:// URL; set it to true or use https://",
            );
        }
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        S3Config {
            endpoint,
            region: nonempty(&raw.region).unwrap_or_else(|| "us-east-1".to_owned()),
            access_key_id: nonempty(&raw.access_key_id),
            secret_access_key: nonempty(&raw.secret_access_key).map(Secret),
            session_token: nonempty(&raw.session_token).map(Secret),
            allow_http,
            virtual_hosted: raw.virtual_hosted.unwrap_or(false),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub fault_injection: bool,
    /// A non-loopback bind or fault injection without a token, allowed on purpose.
    pub insecure: bool,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Enabled pipeline names, in start order.
    pub enabled: Vec<String>,
    pub fail_fast: bool,
    pub cool_down: Duration,
    pub shutdown_timeout: Duration,
    /// Pipelines whose `demo = true` was switched off because the brokers are a real cluster.
    pub demos_off: Vec<String>,
    /// Demo generators publish into a real cluster (`--demo-into-cluster`).
    pub demo_into_cluster: bool,
    /// `--enable` named the pipelines, so `runtime.enable` in the file is not read (a reload
    /// keeps the same set).
    pub enabled_by_flag: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Brokers {
    /// librdkafka's in-process mock cluster: for demos and tests only.
    Embedded,
    /// Comma-separated bootstrap servers.
    List(String),
}

#[derive(Clone)]
pub struct KafkaConfig {
    pub brokers: Brokers,
    /// Extra librdkafka properties; values may hold credentials, so Debug hides them.
    pub properties: BTreeMap<String, String>,
    /// Export the consumer lag of each partition as well as each topic's.
    pub lag_per_partition: bool,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("lag_per_partition", &self.lag_per_partition)
            .finish()
    }
}

/// librdkafka's `message.max.bytes` when none is set.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: u64 = 1_000_000;

/// librdkafka refuses to create a consumer whose `fetch.max.bytes` is below
/// `message.max.bytes`: found here as a configuration error, not as consumers that never start.
fn check_fetch_sizes(properties: &BTreeMap<String, String>, check: &mut Check<'_>) {
    let mut size = |name: &str| -> Option<u64> {
        let value = properties.get(name)?;
        match value.trim().parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                check.problem(
                    &format!("kafka.properties.\"{name}\""),
                    format!("expected a number of bytes, found {value:?}"),
                );
                None
            }
        }
    };
    let message = size("message.max.bytes");
    if let Some(fetch) = size("fetch.max.bytes") {
        let message = message.unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES);
        if fetch < message {
            check.problem(
                "kafka.properties.\"fetch.max.bytes\"",
                format!(
                    "expected at least message.max.bytes ({message}), found {fetch}; librdkafka \
                     refuses a consumer that fetches less than one message may hold"
                ),
            );
        }
    }
}

/// Reads, overrides and validates the configuration.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let (origin, text) = read_source(sources.config_path.as_deref())?;
    let mut table: Table = toml::from_str(&text).map_err(|e| ConfigError {
        problems: vec![Problem::new(
            &origin,
            "",
            format!("not valid TOML: {}", e.to_string().trim()),
        )],
    })?;
    let mut problems = Vec::new();
    let mut root = Value::Table(std::mem::take(&mut table));
    env::interpolate(&mut root, "", &origin, &sources.env, &mut problems);
    let Value::Table(mut table) = root else {
        unreachable!("interpolation keeps the root a table")
    };

    let mut origins = env::Origins::new();
    let enabled = resolve_enabled(&table, sources, &origin, &mut origins, &mut problems);
    let defs: Vec<&PipelineDef> = enabled.iter().filter_map(|n| pipelines::find(n)).collect();
    env::apply(&mut table, &sources.env, &defs, &mut origins, &mut problems);
    apply_seed_flags(&mut table, sources, &defs, &mut origins, &mut problems);
    if let Some(admin) = &sources.admin {
        env::insert(&mut table, "admin.listen", Value::String(admin.clone()));
        origins.insert("admin.listen".into(), "--admin".into());
    }
    let demos_off = if sources.demo_into_cluster || brokers_embedded(&table) {
        Vec::new()
    } else {
        switch_off_demos(&mut table, &enabled)
    };
    env::insert(
        &mut table,
        "runtime.enable",
        Value::Array(enabled.iter().cloned().map(Value::String).collect()),
    );
    // Problems so far are kept and reported together with the ones validation finds.
    section::take_failure();
    let effective = table.clone();
    let raw: RawConfig = match serde_path_to_error::deserialize(Value::Table(table)) {
        Ok(raw) => raw,
        Err(e) => {
            let mut key = e.path().to_string();
            let mut message = e.inner().to_string();
            // A pipeline's section failed inside: its key goes down to the field.
            if let Some((inner, inner_message)) = section::take_failure() {
                if inner != "." {
                    key = format!("{key}.{inner}");
                }
                message = inner_message;
            }
            let from = origins.get(&key).cloned().unwrap_or_else(|| origin.clone());
            let key = if key == "." { String::new() } else { key };
            problems.push(Problem::new(from, key, message));
            return Err(ConfigError { problems });
        }
    };
    let check = Check::new(&origin, &origins, &mut problems);
    let config = validate(raw, &origin, enabled, check).map(|mut c| {
        c.runtime.demos_off = demos_off;
        c.runtime.demo_into_cluster = sources.demo_into_cluster;
        c.runtime.enabled_by_flag = sources.enable.is_some();
        c.fingerprints = reload::fingerprints(&effective, &c);
        c
    });
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(ConfigError { problems }),
    }
}

/// `--bootstrap-servers`, `--topic` and `--group-id`: the seeds' container flags. The last two
/// name no pipeline, so they apply only when exactly one enabled pipeline reads Kafka.
fn apply_seed_flags(
    table: &mut Table,
    sources: &Sources,
    defs: &[&PipelineDef],
    origins: &mut env::Origins,
    problems: &mut Vec<Problem>,
) {
    if let Some(brokers) = &sources.bootstrap_servers {
        env::insert(table, "kafka.brokers", Value::String(brokers.clone()));
        origins.insert("kafka.brokers".into(), "--bootstrap-servers".into());
    }
    let kafka: Vec<(&str, pipelines::KafkaKeys)> = defs
        .iter()
        .filter_map(|d| d.kafka_keys.map(|k| (d.name, k)))
        .collect();
    for (flag, value, long) in [
        ("--topic", &sources.topic, "KAFKA_TOPICS"),
        ("--group-id", &sources.group_id, "KAFKA_GROUP_ID"),
    ] {
        let Some(value) = value else { continue };
        let [(name, keys)] = kafka.as_slice() else {
            let names: Vec<&str> = kafka.iter().map(|(n, _)| *n).collect();
            let forms: Vec<String> = names.iter().map(|n| prefixed(n, long)).collect();
            problems.push(Problem::new(
                flag,
                "",
                format!(
                    "applies to one pipeline that reads Kafka, but {} are enabled ({}); enable \
                     one with --enable, or set {} instead",
                    names.len(),
                    names.join(", "),
                    forms.join(" or ")
                ),
            ));
            continue;
        };
        let (key, unit) = if flag == "--topic" {
            keys.topic
        } else {
            (keys.group, Unit::Str)
        };
        let dotted = format!("pipelines.{name}.{key}");
        let converted = match unit {
            Unit::List => Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
            _ => Value::String(value.trim().to_owned()),
        };
        env::insert(table, &dotted, converted);
        origins.insert(dotted, flag.to_owned());
    }
}

/// Whether `kafka.brokers` (after the environment) leaves the embedded broker in use.
fn brokers_embedded(table: &Table) -> bool {
    match table.get("kafka").and_then(|k| k.get("brokers")) {
        None => true,
        Some(v) => v.as_str().is_some_and(|b| b.trim() == "embedded"),
    }
}

/// Demo generators publish synthetic data standing in for a real producer: into a real cluster
/// that would mix invented records with real ones, so `demo = true` of every enabled pipeline
/// is switched off unless the run asks for it. Returns the pipelines switched off.
fn switch_off_demos(table: &mut Table, enabled: &[String]) -> Vec<String> {
    let mut off = Vec::new();
    for name in enabled {
        let section = table
            .get_mut("pipelines")
            .and_then(|p| p.get_mut(name.as_str()))
            .and_then(Value::as_table_mut);
        if let Some(section) = section {
            if section.get("demo").and_then(Value::as_bool) == Some(true) {
                section.insert("demo".to_owned(), Value::Boolean(false));
                off.push(name.clone());
            }
        }
    }
    off
}

fn read_source(path: Option<&Path>) -> Result<(String, String), ConfigError> {
    let fail = |p: &Path, e: std::io::Error| ConfigError {
        problems: vec![Problem::new(
            p.display().to_string(),
            "",
            format!("cannot read the file: {e}"),
        )],
    };
    match path {
        Some(p) => std::fs::read_to_string(p)
            .map(|t| (p.display().to_string(), t))
            .map_err(|e| fail(p, e)),
        None => {
            let local = Path::new("supervision.toml");
            if local.exists() {
                std::fs::read_to_string(local)
                    .map(|t| ("supervision.toml".to_owned(), t))
                    .map_err(|e| fail(local, e))
            } else {
                Ok((
                    "<embedded supervision.toml>".to_owned(),
                    EMBEDDED.to_owned(),
                ))
            }
        }
    }
}

fn resolve_enabled(
    table: &Table,
    sources: &Sources,
    file: &str,
    origins: &mut env::Origins,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    let (names, from): (Vec<String>, String) = match &sources.enable {
        Some(list) => {
            origins.insert("runtime.enable".into(), "--enable".into());
            (list.clone(), "--enable".into())
        }
        None => match table.get("runtime").and_then(|r| r.get("enable")) {
            Some(Value::Array(items)) => {
                let mut names = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) => names.push(s.to_owned()),
                        None => problems.push(Problem::new(
                            file,
                            format!("runtime.enable[{i}]"),
                            "expected a pipeline name (a string)",
                        )),
                    }
                }
                (names, file.to_owned())
            }
            Some(_) => {
                problems.push(Problem::new(
                    file,
                    "runtime.enable",
                    "expected a list of pipeline names",
                ));
                (Vec::new(), file.to_owned())
            }
            None => (
                pipelines::DEFAULT_ENABLED
                    .iter()
                    .map(|n| (*n).to_owned())
                    .collect(),
                file.to_owned(),
            ),
        },
    };
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let name = name.trim().to_owned();
        if name.is_empty() || out.contains(&name) {
            continue;
        }
        if pipelines::find(&name).is_none() {
            problems.push(Problem::new(
                &from,
                "runtime.enable",
                format!(
                    "unknown pipeline {name:?}; valid names: {}",
                    pipelines::names().join(", ")
                ),
            ));
            continue;
        }
        out.push(name);
    }
    if out.is_empty() && problems.is_empty() {
        problems.push(Problem::new(
            &from,
            "runtime.enable",
            format!(
                "no pipeline enabled; valid names: {}",
                pipelines::names().join(", ")
            ),
        ));
    }
    out
}

/// A size as written in the file: a number of bytes, or a string with a unit ("64MiB").
/// Anything else is kept as written, for [`Check::size`] to report beside the other problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
    Invalid(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Size;
        impl serde::de::Visitor<'_> for Size {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size")
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawSize, E> {
                Ok(u64::try_from(v)
                    .map_or_else(|_| RawSize::Invalid(v.to_string()), RawSize::Bytes))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawSize, E> {
                Ok(RawSize::Invalid(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawSize, E> {
                Ok(RawSize::Invalid(v.to_string()))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        d.deserialize_any(Size)
    }
}

/// Reads "512KiB", "64MiB", "1GiB" (powers of two), "500kB", "64MB", "1GB" (powers of ten) or a
/// plain number of bytes ("1048576", "1048576B").
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Collects validation problems, naming where each value came from.
pub struct Check<'a> {
    file: &'a str,
    origins: &'a env::Origins,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Check<'a> {
    pub(crate) fn new(
        file: &'a str,
        origins: &'a env::Origins,
        problems: &'a mut Vec<Problem>,
    ) -> Self {
        Check {
            file,
            origins,
            problems,
        }
    }

    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let origin = self
            .origins
            .get(key)
            .cloned()
            .unwrap_or_else(|| self.file.to_owned());
        self.problems.push(Problem::new(origin, key, message));
    }

    /// Where `key` was set when not in the file: an environment variable (e.g.
    /// "environment variable DB_HOST") or a flag.
    pub fn origin(&self, key: &str) -> Option<&str> {
        self.origins.get(key).map(String::as_str)
    }

    /// Parses a duration such as "500ms", "30s" or "2m".
    pub fn duration(&mut self, key: &str, raw: Option<&str>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(s) => {
                match humantime::parse_duration(s.trim()) {
                    Ok(d) => d,
                    Err(_) => {
                        self.problem(key, format!("expected a duration such as \"500ms\", \"30s\" or \"2m\", found {s:?}"));
                        default
                    }
                }
            }
        }
    }

    /// Parses a size above zero: a number of bytes or a string such as "64MiB" (see
    /// [`RawSize`]).
    pub fn size(&mut self, key: &str, raw: Option<&RawSize>, default: u64) -> u64 {
        let Some(raw) = raw else { return default };
        let (parsed, found) = match raw {
            RawSize::Bytes(n) => (Some(*n), n.to_string()),
            RawSize::Text(s) => (parse_size(s), format!("{s:?}")),
            RawSize::Invalid(v) => (None, v.clone()),
        };
        match parsed {
            Some(n) if n > 0 => n,
            _ => {
                self.problem(
                    key,
                    format!("expected a size above zero such as \"64MiB\", \"512KiB\" or a number of bytes, found {found}"),
                );
                default
            }
        }
    }

    /// A duration that must be above zero.
    pub fn positive_duration(
        &mut self,
        key: &str,
        raw: Option<&str>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(key, raw, default);
        if d.is_zero() {
            self.problem(key, "expected a duration above zero");
            return default;
        }
        d
    }

    /// Parses one of a closed set of names.
    pub fn choice<T: for<'de> Deserialize<'de>>(
        &mut self,
        key: &str,
        raw: &str,
        allowed: &[&str],
    ) -> Option<T> {
        match T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(raw))
        {
            Ok(v) => Some(v),
            Err(_) => {
                self.problem(
                    key,
                    format!("expected one of {}, found {raw:?}", allowed.join(", ")),
                );
                None
            }
        }
    }
}

fn validate(
    raw: RawConfig,
    file: &str,
    enabled: Vec<String>,
    mut check: Check<'_>,
) -> Option<Config> {
    let listen_raw = raw.admin.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = match listen_raw.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            check.problem(
                "admin.listen",
                format!(
                    "expected a socket address such as \"127.0.0.1:8080\", found {listen_raw:?}"
                ),
            );
            None
        }
    };
    let token = raw.admin.token.filter(|t| !t.is_empty()).map(Secret);
    let fault_injection = raw.admin.fault_injection.unwrap_or(false);
    let insecure = raw.admin.insecure.unwrap_or(false);
    if token.is_none() && !insecure {
        if let Some(addr) = listen.filter(|a| !a.ip().is_loopback()) {
            check.problem(
                "admin.listen",
                format!(
                    "{addr} is not a loopback address and admin.token is not set, so anyone who \
                     reaches it could stop or restart pipelines; set admin.token \
                     (ACTORD_ADMIN_TOKEN), or admin.insecure = true to allow it on purpose"
                ),
            );
        }
        if fault_injection {
            check.problem(
                "admin.fault_injection",
                "needs admin.token (ACTORD_ADMIN_TOKEN), or admin.insecure = true to allow it \
                 without one on purpose",
            );
        }
    }
    let runtime = RuntimeConfig {
        enabled,
        fail_fast: raw.runtime.fail_fast.unwrap_or(false),
        cool_down: check.positive_duration(
            "runtime.cool_down",
            raw.runtime.cool_down.as_deref(),
            Duration::from_secs(30),
        ),
        shutdown_timeout: check.positive_duration(
            "runtime.shutdown_timeout",
            raw.runtime.shutdown_timeout.as_deref(),
            Duration::from_secs(30),
        ),
        demos_off: Vec::new(),
        demo_into_cluster: false,
        enabled_by_flag: false,
    };
    let format = match raw.log.format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            check.problem(
                "log.format",
                format!("expected \"text\" or \"json\", found {other:?}"),
            );
            LogFormat::Text
        }
    };
    let level = raw.log.level.unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        check.problem(
            "log.level",
            format!("expected a level such as \"info\" or a filter directive, found {level:?}"),
        );
    }
    let brokers = match raw.kafka.brokers.as_deref().map(str::trim) {
        None | Some("embedded") => Brokers::Embedded,
        Some("") => {
            check.problem(
                "kafka.brokers",
                "expected \"embedded\" or a list of host:port",
            );
            Brokers::Embedded
        }
        Some(list) => {
            for b in list.split(',').map(str::trim) {
                if b.rsplit_once(':')
                    .and_then(|(h, p)| (!h.is_empty()).then_some(p))
                    .and_then(|p| p.parse::<u16>().ok())
                    .is_none()
                {
                    check.problem(
                        "kafka.brokers",
                        format!("expected host:port entries separated by commas, found {b:?}"),
                    );
                }
            }
            Brokers::List(list.to_owned())
        }
    };
    check_fetch_sizes(&raw.kafka.properties, &mut check);
    // Every registered pipeline's section is validated, enabled or not; an absent one is empty.
    let mut written = raw.pipelines.0;
    let sections: Vec<_> = pipelines::PIPELINES
        .iter()
        .map(|def| {
            let raw = written
                .remove(def.name)
                .unwrap_or_else(|| def.section.default_raw());
            (def.name, def.section, raw)
        })
        .collect();
    let pipeline_levels: BTreeMap<String, RawSupervision> = sections
        .iter()
        .map(|(name, section, raw)| ((*name).to_owned(), section.supervision(raw).clone()))
        .collect();
    let supervision = Supervision::validate(&raw.supervision, &pipeline_levels, &mut check);
    let s3 = S3Config::validate(&raw.s3, &mut check);
    let pipelines = PipelinesConfig::validate(&sections, &mut check);
    Some(Config {
        source: file.to_owned(),
        admin: AdminConfig {
            listen: listen?,
            token,
            fault_injection,
            insecure,
        },
        runtime,
        log: LogConfig { format, level },
        kafka: KafkaConfig {
            brokers,
            properties: raw.kafka.properties,
            lag_per_partition: raw.kafka.lag_per_partition.unwrap_or(false),
        },
        s3,
        supervision,
        pipelines,
        fingerprints: BTreeMap::new(),
    })
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_read_binary_and_decimal_units_and_plain_bytes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size(" 512KiB "), Some(512 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("500kB"), Some(500_000));
        assert_eq!(parse_size("64MB"), Some(64_000_000));
        assert_eq!(parse_size("2 GB"), Some(2_000_000_000));
        assert_eq!(parse_size("1048576"), Some(1_048_576));
        assert_eq!(parse_size("10B"), Some(10));
        for bad in [
            "",
            "MiB",
            "64 mebibytes",
            "-1MiB",
            "1.5MiB",
            "64Mib",
            "99999999999999999999GiB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
