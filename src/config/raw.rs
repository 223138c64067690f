//! `supervision.toml` as written: every field optional, checked later by validation.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::section::{parse_section, RawSection, Section};
use crate::pipelines::{self, PipelineDef};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The admin HTTP port.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Process-wide settings.
    #[serde(default)]
    pub runtime: RawRuntime,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// The shared Kafka connection.
    #[serde(default)]
    pub kafka: RawKafka,
    /// The shared S3 connection (endpoint, region, credentials) for pipelines that use buckets.
    #[serde(default)]
    pub s3: RawS3,
    /// Supervision defaults for every supervisor and worker.
    #[serde(default)]
    pub supervision: RawSupervision,
    /// Per-pipeline settings, one table per pipeline name.
    #[serde(default)]
    pub pipelines: RawPipelines,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address the admin port binds, e.g. "127.0.0.1:8080".
    pub listen: Option<String>,
    /// Bearer token required by mutating endpoints; empty or absent means none.
    pub token: Option<String>,
    /// Enables `POST /api/actors/fail` (fault injection).
    pub fault_injection: Option<bool>,
    /// Allows a non-loopback bind or fault injection without a token, on purpose.
    pub insecure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// Pipelines started when `--enable` is not given.
    // Resolved from the TOML tree before typing (env mappings depend on it); kept for the schema.
    #[allow(dead_code)]
    pub enable: Option<Vec<String>>,
    /// Exit non-zero when a pipeline exhausts its restart budget, instead of restarting it later.
    pub fail_fast: Option<bool>,
    /// How long a failed pipeline waits before the root restarts it, e.g. "30s".
    pub cool_down: Option<String>,
    /// How long a graceful shutdown may take in all, e.g. "30s".
    pub shutdown_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// "text" (human-readable) or "json".
    pub format: Option<String>,
    /// Default level filter ("info", "debug", or a tracing directive); RUST_LOG wins.
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// Bootstrap servers ("host:port,host:port") or "embedded" for the in-process broker.
    pub brokers: Option<String>,
    /// Extra librdkafka properties for every client, e.g. `"security.protocol" = "SSL"`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Also export the consumer lag of each partition (`actord_kafka_partition_consumer_lag`);
    /// off by default to keep the label set bounded.
    pub lag_per_partition: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3 {
    /// Endpoint URL for S3-compatible servers such as MinIO (AWS_ENDPOINT_URL); unset means AWS.
    pub endpoint: Option<String>,
    /// Region (AWS_REGION); default "us-east-1".
    pub region: Option<String>,
    /// Access key id (AWS_ACCESS_KEY_ID).
    pub access_key_id: Option<String>,
    /// Secret access key (AWS_SECRET_ACCESS_KEY); use "${VAR}" rather than writing it here.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials (AWS_SESSION_TOKEN).
    pub session_token: Option<String>,
    /// Allows a plain-http endpoint (AWS_ALLOW_HTTP).
    pub allow_http: Option<bool>,
    /// Virtual-hosted-style requests (bucket in the host name); false means path style.
    pub virtual_hosted: Option<bool>,
}

/// Supervision settings; every level (defaults, pipeline, path) uses the same keys.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupervision {
    /// "one_for_one", "one_for_all" or "rest_for_one".
    pub strategy: Option<String>,
    /// Restarts allowed within `within` before the supervisor gives up and fails upward.
    pub max_restarts: Option<u32>,
    /// The window of the restart budget, e.g. "60s".
    pub within: Option<String>,
    /// First delay before a restart, e.g. "500ms".
    pub backoff_initial: Option<String>,
    /// Largest delay before a restart, e.g. "30s".
    pub backoff_max: Option<String>,
    /// Growth of the delay per consecutive restart.
    pub backoff_factor: Option<f64>,
    /// "permanent", "transient" or "temporary": when this actor is restarted.
    pub restart: Option<String>,
    /// How long a graceful stop may take before the actor is killed, e.g. "10s"; for a
    /// supervisor (set in its own table), the time its whole subtree may take.
    pub shutdown_timeout: Option<String>,
    /// Restart a worker that holds work without progress for this long, e.g. "2m"; "off" disables.
    pub stuck_after: Option<String>,
    /// How long a start (the actor's set-up: connecting, migrating) may take before it counts
    /// as a failed start, e.g. "60s".
    pub start_timeout: Option<String>,
    /// Overrides for actors below this level, keyed by path relative to the pipeline
    /// ("timescale", "timescale/writer"); only valid under a pipeline.
    #[serde(default)]
    pub paths: BTreeMap<String, RawSupervision>,
}

/// Per-pipeline tables, each typed by the pipeline that registered its name.
#[derive(Default)]
pub struct RawPipelines(pub BTreeMap<&'static str, RawSection>);

impl fmt::Debug for RawPipelines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// The registered names, as serde's unknown-field message lists them.
fn names() -> &'static [&'static str] {
    static NAMES: OnceLock<&'static [&'static str]> = OnceLock::new();
    NAMES.get_or_init(|| Box::leak(pipelines::names().into_boxed_slice()))
}

impl<'de> Deserialize<'de> for RawPipelines {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("RawPipelines", names(), PipelinesVisitor)
    }
}

struct PipelinesVisitor;

impl<'de> Visitor<'de> for PipelinesVisitor {
    type Value = RawPipelines;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct RawPipelines")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPipelines, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(def) = map.next_key_seed(NameSeed)? {
            let raw = map.next_value_seed(SectionSeed(def.section))?;
            out.insert(def.name, raw);
        }
        Ok(RawPipelines(out))
    }
}

/// A section's name; an unregistered one is an unknown field, as for any other table.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = &'static PipelineDef;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let name = String::deserialize(d)?;
        pipelines::find(&name).ok_or_else(|| de::Error::unknown_field(&name, names()))
    }
}

/// A section typed by its pipeline's registration.
struct SectionSeed(Section);

impl<'de> DeserializeSeed<'de> for SectionSeed {
    type Value = RawSection;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let value = toml::Value::deserialize(d)?;
        parse_section(&self.0, value)
    }
}
