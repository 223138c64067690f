//! Command-line interface: flags, subcommands and the small commands that need no runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;

use actord_actors::{ActorKind, ChildSpec, SupervisorSpec};
use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError, Sources};
use crate::runtime;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "actord",
    version,
    about = "Data pipelines as a supervision tree of actors"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file (default: ./supervision.toml if present, else the embedded default).
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Pipelines to run, comma-separated (overrides runtime.enable).
    #[arg(long, global = true, value_delimiter = ',', value_name = "NAMES")]
    pub enable: Option<Vec<String>>,
    /// Admin address: where to listen when running, where to connect for `tree`.
    #[arg(long, global = true, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Load environment variables from this file first (existing variables win).
    #[arg(long, global = true, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// Run demo generators (synthetic data) even when kafka.brokers names a real cluster.
    #[arg(long, global = true)]
    pub demo_into_cluster: bool,
    /// Kafka bootstrap servers for every pipeline (overrides KAFKA_BROKERS and kafka.brokers).
    #[arg(long, global = true, value_name = "HOST:PORT,...")]
    pub bootstrap_servers: Option<String>,
    /// Topic(s) of the one enabled pipeline that reads Kafka, comma-separated.
    #[arg(long, global = true, value_name = "TOPIC")]
    pub topic: Option<String>,
    /// Consumer group of the one enabled pipeline that reads Kafka.
    #[arg(long, global = true, value_name = "GROUP")]
    pub group_id: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the enabled pipelines (the default).
    Run,
    /// Validate the configuration and print the tree it would start.
    Check,
    /// Print the live tree of a running instance (its admin port: --admin, else the config's).
    Tree(TreeArgs),
    /// Run one backfill in the foreground (the seed's `app.py --mode ...`): exit 0 when
    /// everything up to the high watermarks is archived and committed, 1 when the run failed,
    /// 3 when another run of the group holds the lease, 2 on a configuration error.
    Backfill {
        /// Where to start: the group's committed offsets, the beginning, or a date.
        #[arg(long, value_enum, default_value_t = BackfillMode::Incremental)]
        mode: BackfillMode,
        /// With --mode continue: YYYY-MM-DD[THH:MM[:SS]][offset]; without an offset, Asia/Seoul.
        #[arg(long, value_name = "DATE")]
        from_date: Option<String>,
    },
    /// Operations on the adaptive-card pipeline's Redis streams.
    #[command(name = "adaptive-card", subcommand)]
    AdaptiveCard(AdaptiveCardCommand),
    /// The commerce pipeline's database: a starting population, or a generated past.
    #[command(subcommand)]
    Commerce(CommerceCommand),
    /// Ask a running instance's admin port for /live, /ready or /health: exits 0 on 200, 1
    /// otherwise (a container health check that needs no HTTP client in the image).
    Probe {
        /// Which endpoint to ask.
        #[arg(value_enum, default_value_t = ProbeEndpoint::Live)]
        endpoint: ProbeEndpoint,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Run the embedded broker (librdkafka's in-process mock cluster) on its own, so several
    /// actord processes on this machine can share one: prints `bootstrap=<host:port>` on the
    /// first line of stdout and serves until SIGINT or SIGTERM. For local runs and tests only:
    /// it keeps at most 5 MiB per partition and nothing survives its exit.
    #[command(name = "embedded-broker")]
    EmbeddedBroker {
        /// Topics to create, as NAME:PARTITIONS (repeat the flag or separate with commas).
        #[arg(
            long = "create-topic",
            value_delimiter = ',',
            value_name = "NAME:PARTITIONS"
        )]
        create_topic: Vec<String>,
    },
}

/// Parses `NAME:PARTITIONS` of `actord embedded-broker --create-topic`.
pub fn topic_spec(spec: &str) -> Result<(String, i32), String> {
    let (name, partitions) = spec
        .rsplit_once(':')
        .ok_or_else(|| format!("--create-topic {spec:?}: expected NAME:PARTITIONS"))?;
    let partitions: i32 = partitions.parse().map_err(|_| {
        format!("--create-topic {spec:?}: the partition count must be a positive number")
    })?;
    if name.is_empty() || partitions < 1 {
        return Err(format!(
            "--create-topic {spec:?}: expected a topic name and at least one partition"
        ));
    }
    Ok((name.to_owned(), partitions))
}

/// `actord backfill --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackfillMode {
    Incremental,
    Fresh,
    Continue,
}

impl BackfillMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillMode::Incremental => "incremental",
            BackfillMode::Fresh => "fresh",
            BackfillMode::Continue => "continue",
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdaptiveCardCommand {
    /// Delete sales_org_queue and adaptive_card_queue with their groups (refused while a run
    /// is active).
    Reset {
        /// Delete their dead-letter streams (`<stream>:dlq`) too.
        #[arg(long)]
        dlq: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum CommerceCommand {
    /// Create the tables and a starting population of users and products (no orders).
    Seed {
        /// Users to create.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Products to create.
        #[arg(long, default_value_t = 300)]
        products: usize,
        /// Seed of the draws; default from the clock.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Generate a past of users, products and orders following the shop's rules, loaded with
    /// COPY; the same seed, span and sizes give the same rows.
    History {
        /// Days of history before --until.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Seed of the draws.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The day after the span (YYYY-MM-DD); default today (UTC).
        #[arg(long)]
        until: Option<chrono::NaiveDate>,
        /// Users existing before the span.
        #[arg(long, default_value_t = 1000)]
        initial_users: usize,
        /// Products existing before the span.
        #[arg(long, default_value_t = 300)]
        initial_products: usize,
        /// New users per day.
        #[arg(long, default_value_t = 30)]
        users_per_day: usize,
        /// New products per day.
        #[arg(long, default_value_t = 5)]
        products_per_day: usize,
        /// Orders per day.
        #[arg(long, default_value_t = 300)]
        orders_per_day: usize,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct TreeArgs {
    /// Redraw the tree every --interval until interrupted.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// Seconds between redraws in watch mode.
    #[arg(long, default_value = "2", value_name = "SECONDS")]
    pub interval: f64,
    /// Print the live view as JSON (one line per redraw in watch mode).
    #[arg(long)]
    pub json: bool,
    /// Show only actors that are not running as they should (with their ancestors).
    #[arg(long)]
    pub failed: bool,
    /// Seconds to wait for the admin port before giving up.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    pub timeout: f64,
    /// Never colour the states (colours are used only on a terminal anyway).
    #[arg(long)]
    pub no_color: bool,
}

/// The admin endpoints `actord probe` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeEndpoint {
    /// The process serves (never depends on a pipeline's state).
    Live,
    /// Every enabled pipeline is up.
    Ready,
    /// The per-component health report.
    Health,
}

impl ProbeEndpoint {
    fn path(self) -> &'static str {
        match self {
            ProbeEndpoint::Live => "/live",
            ProbeEndpoint::Ready => "/ready",
            ProbeEndpoint::Health => "/health",
        }
    }
}

/// Asks `endpoint` of the admin port at `base`: the status code and the body.
pub async fn probe(
    base: &str,
    endpoint: ProbeEndpoint,
    timeout: std::time::Duration,
) -> anyhow::Result<(u16, String)> {
    let url = format!("{}{}", base.trim_end_matches('/'), endpoint.path());
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let reply = client.get(&url).send().await?;
    let status = reply.status().as_u16();
    Ok((status, reply.text().await?))
}

impl Cli {
    /// Reads the configuration again the way [`Cli::load_config`] did: for a reload.
    pub fn loader(&self) -> config::reload::Loader {
        let cli = self.clone();
        std::sync::Arc::new(move || cli.load_config())
    }

    /// Reads the configuration with the process environment, plus `--env-file` read as the
    /// original services read theirs (variables already set win).
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        self.load_config_with(&[], None)
    }

    /// [`Cli::load_config`] with `extra` environment variables over the process's (a
    /// subcommand's own settings) and `enable` over `--enable`.
    pub fn load_config_with(
        &self,
        extra: &[(String, String)],
        enable: Option<Vec<String>>,
    ) -> Result<Config, ConfigError> {
        let mut env: BTreeMap<String, String> = std::env::vars().collect();
        if let Some(path) = &self.env_file {
            let fail = |message: String| ConfigError {
                problems: vec![config::Problem::new(
                    path.display().to_string(),
                    "",
                    message,
                )],
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("cannot read the env file: {e}")))?;
            let vars = config::envfile::parse(&text, &env)
                .map_err(|e| fail(format!("line {}: {}", e.line, e.message)))?;
            env.extend(vars);
        }
        env.extend(extra.iter().cloned());
        config::load(&Sources {
            config_path: self.config.clone(),
            env,
            enable: enable.or_else(|| self.enable.clone()),
            admin: self.admin.clone(),
            demo_into_cluster: self.demo_into_cluster,
            bootstrap_servers: self.bootstrap_servers.clone(),
            topic: self.topic.clone(),
            group_id: self.group_id.clone(),
        })
    }
}

/// Renders the planned tree with each actor's supervision settings.
pub fn render_plan(config: &Config) -> anyhow::Result<String> {
    let bootstrap = match &config.kafka.brokers {
        config::Brokers::Embedded => "embedded".to_owned(),
        config::Brokers::List(list) => list.clone(),
    };
    let resources = crate::pipelines::Resources::new(runtime::connection(config, &bootstrap));
    let plan = runtime::plan(config, &resources)?;
    let mut out: String = plan
        .warnings
        .iter()
        .map(|w| format!("warning: {w}\n"))
        .collect();
    out.push_str(&format!(
        "config: {}\nadmin: http://{}\n/ (root) {}\n",
        config.source,
        config.admin.listen,
        describe_sup(&plan.root)
    ));
    for spec in &plan.pipelines {
        render_child(spec, 1, &mut out);
    }
    Ok(out)
}

fn describe_sup(s: &SupervisorSpec) -> String {
    let budget = if s.max_restarts == u32::MAX {
        "unlimited restarts".to_owned()
    } else {
        format!("max {} restarts in {:?}", s.max_restarts, s.within)
    };
    let stop = if s.concurrent_stop {
        ", children stop together"
    } else {
        ""
    };
    format!(
        "{:?}, {budget}, backoff {:?}..{:?} x{}{stop}",
        s.strategy, s.backoff.initial, s.backoff.max, s.backoff.factor
    )
}

fn render_child(spec: &ChildSpec, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    match (spec.kind, spec.nested()) {
        (ActorKind::Supervisor, Some((sup, children))) => {
            out.push_str(&format!(
                "{indent}{} supervisor [{:?}, shutdown {:?}] {}\n",
                spec.id,
                spec.restart,
                spec.shutdown,
                describe_sup(sup)
            ));
            for child in children {
                render_child(child, depth + 1, out);
            }
        }
        _ => {
            let stuck = spec
                .stuck_after
                .map(|d| format!("{d:?}"))
                .unwrap_or_else(|| "off".into());
            out.push_str(&format!(
                "{indent}{} worker [{:?}, shutdown {:?}, stuck after {stuck}]\n",
                spec.id, spec.restart, spec.shutdown
            ));
        }
    }
}

/// The admin base URL for `tree`: `--admin` (with or without scheme), else the config's address.
pub fn admin_url(cli: &Cli, config: Option<&Config>) -> String {
    match (&cli.admin, config) {
        (Some(a), _) if a.starts_with("http://") || a.starts_with("https://") => a.clone(),
        (Some(a), _) => format!("http://{a}"),
        (None, Some(c)) => format!("http://{}", reachable(&c.admin.listen)),
        (None, None) => "http://127.0.0.1:8080".to_owned(),
    }
}

/// The address a client on this host uses for a listen address: an unspecified address
/// (`0.0.0.0`, `[::]`) is reached through the loopback of the same family.
fn reachable(listen: &std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if !listen.ip().is_unspecified() {
        return *listen;
    }
    let ip = match listen.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    std::net::SocketAddr::new(ip, listen.port())
}

/// One scheduled entry: what and when, then how its last run went and what runs now.
pub(crate) fn render_entry(e: &serde_json::Value) -> String {
    let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("-");
    let mut line = format!(
        "schedule {}: {} ({}), lease {}  next={}",
        s("name"),
        s("schedule"),
        s("time_zone"),
        s("lease"),
        whole_seconds(s("next_run"))
    );
    match e.get("last_outcome").filter(|o| !o.is_null()) {
        None => line.push_str("  last=never"),
        Some(o) => {
            let outcome = o.get("outcome").and_then(|v| v.as_str()).unwrap_or("?");
            line.push_str(&format!("  last={outcome}"));
            if let Some(reason) = o.get("reason").and_then(|v| v.as_str()) {
                line.push_str(&format!(" ({reason})"));
            }
            if let Some(error) = o.get("error").and_then(|v| v.as_str()) {
                line.push_str(&format!(" {error:?}"));
            }
            if outcome != "skipped" {
                if let Some(started) = e.get("last_start").and_then(|v| v.as_str()) {
                    line.push_str(&format!(" at {}", whole_seconds(started)));
                }
                if let Some(took) = e.get("last_duration_seconds").and_then(|v| v.as_f64()) {
                    line.push_str(&format!(" took={took:.3}s"));
                }
            }
        }
    }
    match e.get("active").filter(|a| !a.is_null()) {
        None => line.push_str("  active=none"),
        Some(a) => line.push_str(&format!(
            "  active=run {} ({}, since {}, records={})",
            a.get("run_id").and_then(|v| v.as_u64()).unwrap_or(0),
            a.get("trigger").and_then(|v| v.as_str()).unwrap_or("?"),
            a.get("started")
                .and_then(|v| v.as_str())
                .map(whole_seconds)
                .unwrap_or_else(|| "taking the lease".to_owned()),
            a.get("records").and_then(|v| v.as_u64()).unwrap_or(0)
        )),
    }
    let runs = |k: &str| {
        e.pointer(&format!("/runs/{k}"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    };
    line.push_str(&format!(
        "  runs: {} started, {} ok, {} failed, {} skipped",
        runs("started"),
        runs("succeeded"),
        runs("failed"),
        runs("skipped")
    ));
    line
}

/// `2025-01-01T09:00:00.123456Z` as `2025-01-01T09:00:00Z`: a terminal line needs no fractions.
fn whole_seconds(rfc3339: &str) -> String {
    match rfc3339.split_once('.') {
        Some((head, rest)) => {
            let zone = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{head}{zone}")
        }
        None => rfc3339.to_owned(),
    }
}
