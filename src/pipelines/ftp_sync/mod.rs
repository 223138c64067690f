//! The ftp-sync pipeline: file-transfer jobs from Kafka, each streaming a file from a source
//! server to a destination server (FTP, FTPS, S3 or a local directory); jobs that cannot succeed
//! go to `<topic><dlq_suffix>` in the original service's DLQ schema.
//!
//! Tree: `/ftp-sync/jobs` is a consumer path (group `etl-worker-group` by default, shared by
//! every process doing this work) whose writer, a `Dispatcher`, runs `concurrency` transfers at
//! a time in a continuous pool;
//! `/ftp-sync/demo` (with `demo = true`) writes files into a local source directory and
//! publishes jobs moving them to a local destination directory.

mod config;
mod demo;
pub mod dispatcher;
pub mod job;
pub mod names;
pub mod transfer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actord_actors::buffer::BufferLimits;
use actord_actors::record::SourceRecord;
use actord_actors::{ActorPath, Backoff, ChildSpec, Strategy};
use ractor::Actor;

use super::{HealthCheck, Pipeline, PipelineDef, Resources, TopicSpec};
use crate::config::{Check, Config, EnvKey, Secret, Section, Unit};
use crate::sinks::files::ftp::{FtpSettings, FtpTransport};
use crate::sinks::files::local::LocalTransport;
use crate::sinks::files::s3::S3Transport;
use crate::sinks::files::sftp::{SftpSettings, SftpTransport};
use crate::sinks::files::{Staging, Transport};
use crate::sinks::objects::store::{self, Location};
use crate::sources::kafka::path::{DispatchPath, SpawnWriter};
use crate::sources::kafka::{SourceSettings, StartFrom};
use dispatcher::{Dispatcher, DispatcherArgs};
use job::{Job, Roots};
use transfer::{Server, Settings, Transfers, Verify};

pub use config::*;

pub const DEF: PipelineDef = PipelineDef {
    name: "ftp-sync",
    summary: "file-transfer jobs from Kafka between FTP, FTPS, S3 and local servers, with a DLQ",
    env: &[
        // The seed takes its topic and group as flags, not variables: these names belong to the
        // recorder's seed, so here only the prefixed forms (ACTORD_FTP_SYNC_KAFKA_TOPICS, ...) apply.
        EnvKey::new("KAFKA_TOPICS", "topics", Unit::List),
        EnvKey::new("KAFKA_GROUP_ID", "group", Unit::Str),
        EnvKey::seed("DLQ_TOPIC_SUFFIX", "dlq_suffix", Unit::Str),
        EnvKey::seed("FTP_PASSIVE_MODE", "passive", Unit::Bool),
        EnvKey::new("START_FROM", "start_from", Unit::Str),
        EnvKey::new("CONCURRENCY", "concurrency", Unit::Int),
        EnvKey::new("MAX_RETRIES", "max_retries", Unit::Int),
        EnvKey::new("VERIFY", "verify", Unit::Str),
        EnvKey::new("DEMO", "demo", Unit::Bool),
    ],
    env_scan: Some(scan_servers),
    kafka_keys: Some(super::KafkaKeys {
        topic: ("topics", Unit::List),
        group: "group",
    }),
    describe_metrics: names::describe,
    section: Section::of::<FtpSyncConfig>(),
    topics,
    build,
};

/// Server kinds a `{HOSTNAME}_TYPE` variable may name.
const KINDS: [&str; 5] = ["ftp", "ftps", "sftp", "s3", "file"];

/// The seed's server registry: `{HOSTNAME}_TYPE` names a server (`SRC_FTP_SERVER1_TYPE=ftp`),
/// and `{HOSTNAME}_HOST`, `_PORT`, `_USER`, `_PASS` (and `_ROOT`, `_KEY`, `_HOST_KEY`) describe it.
fn scan_servers(env: &BTreeMap<String, String>) -> Vec<(String, Unit, String)> {
    let mut out = Vec::new();
    for (var, value) in env {
        let Some(name) = var.strip_suffix("_TYPE") else {
            continue;
        };
        // A `_TYPE` alone (say `MIME_TYPE=file`) names no server: a companion must be set too.
        let described = ["_HOST", "_PORT", "_USER", "_ROOT"]
            .iter()
            .any(|s| env.contains_key(&format!("{name}{s}")));
        if name.is_empty()
            || name.starts_with("ACTORD_")
            || !described
            || !KINDS.contains(&value.trim().to_ascii_lowercase().as_str())
        {
            continue;
        }
        for (suffix, field, unit) in [
            ("_TYPE", "type", Unit::Str),
            ("_HOST", "host", Unit::Str),
            ("_PORT", "port", Unit::Int),
            ("_USER", "user", Unit::Str),
            ("_PASS", "pass", Unit::Str),
            ("_ROOT", "root", Unit::Str),
            ("_KEY", "key_file", Unit::Str),
            ("_HOST_KEY", "host_key", Unit::Str),
        ] {
            let v = format!("{name}{suffix}");
            if env.contains_key(&v) {
                out.push((format!("servers.{name}.{field}"), unit, v));
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Ftp,
    Ftps,
    Sftp,
    S3,
    File,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub kind: ServerKind,
    /// Host (ftp, ftps) or bucket (s3).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    /// Confinement root for job paths (ftp, ftps, s3); the directory itself for `file`.
    pub root: Option<String>,
    pub passive: bool,
    pub insecure_tls: bool,
    pub key_file: Option<String>,
    pub host_key: Option<String>,
    pub insecure_host_key: bool,
    pub max_connections: usize,
    pub dead_letter_after: Option<Duration>,
    pub timeout: Duration,
    /// Passive data connections go to the PASV reply's address instead of the control
    /// connection's.
    pub passive_reply_address: bool,
    pub staging: Staging,
    /// Bytes above which an S3 commit streams the object instead of copying it.
    pub copy_limit: u64,
}

#[derive(Debug, Clone)]
pub struct FtpSyncConfig {
    pub topics: Vec<String>,
    pub group: String,
    pub concurrency: usize,
    pub max_in_flight: usize,
    /// Staged uploads older than this are swept at start; `None` turns the sweep off.
    pub sweep_after: Option<Duration>,
    /// A group without committed offsets starts at the earliest job (else at the latest).
    pub start_earliest: bool,
    pub dlq_suffix: String,
    pub max_retries: u32,
    pub backoff: Backoff,
    pub breaker_threshold: u32,
    pub verify: Verify,
    pub demo: bool,
    pub demo_rate: u32,
    pub servers: BTreeMap<String, ServerConfig>,
}

/// The largest object S3 copies in one request (5 GiB).
const S3_COPY_LIMIT: u64 = 5 << 30;

/// The demo's servers: two local directories.
pub const DEMO_SOURCE: &str = "DEMO_SRC";
pub const DEMO_DESTINATION: &str = "DEMO_DST";

impl FtpSyncConfig {
    pub(crate) fn validate(raw: &RawFtpSync, check: &mut Check<'_>) -> Self {
        let k = |f: &str| format!("pipelines.ftp-sync.{f}");
        let topics = raw
            .topics
            .clone()
            .unwrap_or_else(|| vec!["file-transfer-jobs".into()]);
        if topics.is_empty() || topics.iter().any(|t| t.trim().is_empty()) {
            check.problem(&k("topics"), "expected one or more topic names");
        }
        let concurrency = match raw.concurrency {
            Some(0) => {
                check.problem(&k("concurrency"), "expected a number above zero");
                1
            }
            Some(n) => n as usize,
            None => 4,
        };
        let max_retries = match raw.max_retries {
            Some(0) => {
                check.problem(&k("max_retries"), "expected a number above zero");
                1
            }
            Some(n) => n,
            None => 3,
        };
        let verify = match raw.verify.as_deref().unwrap_or("size") {
            "size" => Verify::Size,
            "sha256" => Verify::Sha256,
            other => {
                check.problem(
                    &k("verify"),
                    format!("expected \"size\" or \"sha256\", found {other:?}"),
                );
                Verify::Size
            }
        };
        let passive = raw.passive.unwrap_or(true);
        let demo = raw.demo.unwrap_or(false);
        let mut servers = BTreeMap::new();
        for (name, s) in &raw.servers {
            let sk = |f: &str| k(&format!("servers.{name}.{f}"));
            let kind = match s.kind.as_deref().map(|t| t.trim().to_ascii_lowercase()) {
                Some(t) if t == "ftp" => ServerKind::Ftp,
                Some(t) if t == "ftps" => ServerKind::Ftps,
                Some(t) if t == "sftp" => ServerKind::Sftp,
                Some(t) if t == "s3" => ServerKind::S3,
                Some(t) if t == "file" => ServerKind::File,
                other => {
                    check.problem(
                        &sk("type"),
                        format!("expected one of ftp, ftps, sftp, s3, file; found {other:?}"),
                    );
                    continue;
                }
            };
            let host = s.host.clone().unwrap_or_default();
            if kind == ServerKind::Sftp
                && s.host_key.as_deref().is_none_or(|k| k.trim().is_empty())
                && !s.insecure_host_key.unwrap_or(false)
            {
                check.problem(
                    &sk("host_key"),
                    "expected the server's host key fingerprint (\"SHA256:...\", as ssh-keygen -lf prints it), or insecure_host_key = true",
                );
            }
            if matches!(
                kind,
                ServerKind::Ftp | ServerKind::Ftps | ServerKind::Sftp | ServerKind::S3
            ) && host.trim().is_empty()
            {
                check.problem(
                    &sk("host"),
                    if kind == ServerKind::S3 {
                        "expected the bucket name"
                    } else {
                        "expected a host name or address"
                    },
                );
            }
            let dead_letter_after = s.dead_letter_after.as_deref().map(|d| {
                check.positive_duration(&sk("dead_letter_after"), Some(d), Duration::ZERO)
            });
            let timeout = check.positive_duration(
                &sk("timeout"),
                s.timeout.as_deref(),
                Duration::from_secs(30),
            );
            let passive_reply_address = match s.passive_address.as_deref() {
                None | Some("control") => false,
                Some("reply") => true,
                Some(other) => {
                    check.problem(
                        &sk("passive_address"),
                        format!("expected \"control\" or \"reply\", found {other:?}"),
                    );
                    false
                }
            };
            let staging = match s.staging.as_deref() {
                None | Some("rename") => Staging::Rename,
                Some("direct") => Staging::Direct,
                Some(other) => {
                    check.problem(
                        &sk("staging"),
                        format!("expected \"rename\" or \"direct\", found {other:?}"),
                    );
                    Staging::Rename
                }
            };
            let copy_limit = match s.copy_limit {
                Some(0) => {
                    check.problem(&sk("copy_limit"), "expected a number of bytes above zero");
                    S3_COPY_LIMIT
                }
                Some(n) => n,
                None => S3_COPY_LIMIT,
            };
            let root = s.root.clone().filter(|r| !r.trim().is_empty());
            if kind == ServerKind::File && root.is_none() {
                check.problem(
                    &sk("root"),
                    "expected the local directory this server serves",
                );
            }
            servers.insert(
                name.clone(),
                ServerConfig {
                    kind,
                    host,
                    port: s
                        .port
                        .unwrap_or(if kind == ServerKind::Sftp { 22 } else { 21 }),
                    user: s.user.clone().unwrap_or_else(|| "anonymous".to_owned()),
                    password: s.pass.clone().filter(|p| !p.is_empty()).map(Secret::new),
                    root,
                    passive: s.passive.unwrap_or(passive),
                    insecure_tls: s.insecure_tls.unwrap_or(false),
                    key_file: s.key_file.clone().filter(|k| !k.trim().is_empty()),
                    host_key: s.host_key.clone().filter(|k| !k.trim().is_empty()),
                    insecure_host_key: s.insecure_host_key.unwrap_or(false),
                    max_connections: s
                        .max_connections
                        .map(|n| n.max(1) as usize)
                        .unwrap_or(2 * concurrency),
                    dead_letter_after,
                    timeout,
                    passive_reply_address,
                    staging,
                    copy_limit,
                },
            );
        }
        if demo {
            for (name, dir) in [
                (DEMO_SOURCE, "data/ftp-sync/source"),
                (DEMO_DESTINATION, "data/ftp-sync/destination"),
            ] {
                servers.entry(name.to_owned()).or_insert(ServerConfig {
                    kind: ServerKind::File,
                    host: String::new(),
                    port: 0,
                    user: String::new(),
                    password: None,
                    root: Some(dir.to_owned()),
                    passive,
                    insecure_tls: false,
                    key_file: None,
                    host_key: None,
                    insecure_host_key: false,
                    max_connections: 2 * concurrency,
                    dead_letter_after: None,
                    timeout: Duration::from_secs(30),
                    passive_reply_address: false,
                    staging: Staging::Rename,
                    copy_limit: S3_COPY_LIMIT,
                });
            }
        }
        FtpSyncConfig {
            topics,
            group: raw
                .group
                .clone()
                .unwrap_or_else(|| "etl-worker-group".to_owned()),
            concurrency,
            start_earliest: match raw.start_from.as_deref() {
                None | Some("earliest") => true,
                Some("latest") => false,
                Some(other) => {
                    check.problem(
                        &k("start_from"),
                        format!("expected \"earliest\" or \"latest\", found {other:?}"),
                    );
                    true
                }
            },
            sweep_after: match raw.sweep_stale_after.as_deref().map(str::trim) {
                Some("off") => None,
                other => Some(check.positive_duration(
                    &k("sweep_stale_after"),
                    other,
                    Duration::from_secs(24 * 3600),
                )),
            },
            max_in_flight: match raw.max_in_flight {
                Some(n) if (n as usize) < concurrency => {
                    check.problem(
                        &k("max_in_flight"),
                        format!("expected at least concurrency ({concurrency}), found {n}"),
                    );
                    concurrency
                }
                Some(n) => n as usize,
                None => 256.max(concurrency),
            },
            dlq_suffix: raw.dlq_suffix.clone().unwrap_or_else(|| "-dlq".to_owned()),
            max_retries,
            backoff: Backoff {
                initial: check.positive_duration(
                    &k("retry_backoff"),
                    raw.retry_backoff.as_deref(),
                    Duration::from_secs(1),
                ),
                max: check.positive_duration(
                    &k("retry_backoff_max"),
                    raw.retry_backoff_max.as_deref(),
                    Duration::from_secs(30),
                ),
                factor: 2.0,
            },
            breaker_threshold: raw.breaker_threshold.unwrap_or(3).max(1),
            verify,
            demo,
            demo_rate: raw.demo_rate.unwrap_or(2).max(1),
            servers,
        }
    }

    /// Job-path roots as the decoder checks them. A local directory confines its paths by
    /// construction; `/` makes `..` above it an error rather than a no-op.
    fn roots(&self) -> Roots {
        self.servers
            .iter()
            .map(|(name, s)| {
                let root = match s.kind {
                    ServerKind::File => Some("/".to_owned()),
                    _ => s.root.clone(),
                };
                (name.clone(), root)
            })
            .collect()
    }
}

fn topics(config: &Config) -> Vec<TopicSpec> {
    let c = &config.pipelines.get::<FtpSyncConfig>();
    c.topics
        .iter()
        .flat_map(|t| TopicSpec::with_dlq(t, &c.dlq_suffix, 3))
        .collect()
}

fn transport(name: &str, s: &ServerConfig, config: &Config) -> anyhow::Result<Arc<dyn Transport>> {
    Ok(match s.kind {
        ServerKind::Ftp | ServerKind::Ftps => Arc::new(FtpTransport::new(FtpSettings {
            host: s.host.clone(),
            port: s.port,
            user: s.user.clone(),
            password: s.password.clone(),
            passive: s.passive,
            passive_reply_address: s.passive_reply_address,
            tls: s.kind == ServerKind::Ftps,
            insecure_tls: s.insecure_tls,
            max_connections: s.max_connections,
            timeout: s.timeout,
        })),
        ServerKind::Sftp => Arc::new(SftpTransport::new(SftpSettings {
            host: s.host.clone(),
            port: s.port,
            user: s.user.clone(),
            password: s.password.clone(),
            key_file: s.key_file.clone().map(Into::into),
            host_key: s.host_key.clone(),
            insecure: s.insecure_host_key,
            max_connections: s.max_connections,
            timeout: s.timeout,
        })),
        ServerKind::S3 => {
            let location = Location::Bucket {
                name: s.host.clone(),
                region: None,
            };
            // No whole-request timeout: a large download streams as long as it moves, and the
            // transport fails a chunk that does not come within the step timeout.
            let store = store::open_with(&location, &config.s3, None)
                .map_err(|e| anyhow::anyhow!("pipelines.ftp-sync.servers.{name}: {e}"))?;
            Arc::new(S3Transport::new(
                store,
                location.describe(&config.s3),
                s.timeout,
                s.copy_limit,
            ))
        }
        ServerKind::File => {
            let dir = s.root.clone().unwrap_or_default();
            std::fs::create_dir_all(&dir).map_err(|e| {
                anyhow::anyhow!("pipelines.ftp-sync.servers.{name}.root: cannot create {dir}: {e}")
            })?;
            Arc::new(LocalTransport::new(dir))
        }
    })
}

/// The writer stage of the jobs path: a [`Dispatcher`] over the shared servers.
pub fn dispatch_writer(transfers: Arc<Transfers>) -> SpawnWriter<Job> {
    Arc::new(move |probe, supervisor, dlq| {
        let args = DispatcherArgs {
            probe,
            transfers: transfers.clone(),
            dlq,
        };
        Box::pin(async move {
            let (actor, _) = Actor::spawn_linked(None, Dispatcher, args, supervisor).await?;
            Ok(actor)
        })
    })
}

fn build(config: &Config, resources: &Resources) -> anyhow::Result<Pipeline> {
    let c = config.pipelines.get::<FtpSyncConfig>().clone();
    let root = ActorPath::root().child(DEF.name);
    let sup = &config.supervision;
    let mut servers = BTreeMap::new();
    for (name, s) in &c.servers {
        let mut server = Server::new(name.clone(), transport(name, s, config)?);
        server.dead_letter_after = s.dead_letter_after;
        server.staging = s.staging;
        server.sweep_dir = match s.kind {
            ServerKind::File => Some("/".to_owned()),
            _ => s.root.clone(),
        };
        servers.insert(name.clone(), Arc::new(server));
    }
    let transfers = Arc::new(Transfers::new(
        servers,
        Settings {
            sweep_after: c.sweep_after,
            concurrency: c.concurrency,
            max_retries: c.max_retries,
            backoff: c.backoff,
            breaker_threshold: c.breaker_threshold,
            verify: c.verify,
        },
    ));
    let roots = Arc::new(c.roots());
    let mut source = SourceSettings::new(c.topics.clone(), c.group.clone());
    // Jobs running, waiting for a retry or parked for a server stay unacknowledged: this bound
    // is what keeps their number, and the memory they hold, finite.
    source.max_in_flight_records = c.max_in_flight;
    source.start = StartFrom::Committed {
        earliest: c.start_earliest,
    };
    source.chunk = c.concurrency.max(1);
    let path = DispatchPath::<Job> {
        id: "jobs".into(),
        connection: resources.kafka.clone(),
        source,
        decode: Arc::new(move |r: &SourceRecord| job::decode(r, &roots)),
        writer: dispatch_writer(transfers.clone()),
        buffer: BufferLimits {
            max_records: c.concurrency * 4,
            max_bytes: 16 << 20,
            max_age: Duration::from_millis(20),
        },
        dlq_suffix: Some(c.dlq_suffix.clone()),
    };
    let mut children = vec![path.child_spec(&root, sup)];
    if c.demo {
        children.push(demo::child(&root, config, resources));
    }
    let spec = sup.child(
        &root,
        ChildSpec::supervisor(
            DEF.name,
            sup.supervisor_spec(&root, Strategy::OneForOne),
            children,
        ),
    );
    let consumer = root.child("jobs").child("consumer-0");
    let (health, notes) = (transfers.clone(), transfers.clone());
    Ok(Pipeline {
        spec,
        health: vec![
            super::running("consumer", consumer),
            HealthCheck {
                component: "servers",
                check: Arc::new(move |_| health.healthy()),
            },
        ],
        notes: Arc::new(move || {
            notes
                .servers
                .values()
                .map(|s| {
                    format!(
                        "server {}: {} ({})",
                        s.name,
                        s.transport.describe(),
                        s.state()
                    )
                })
                .collect()
        }),
    })
}
