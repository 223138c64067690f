//! The actord binary: parses flags, sets up logging and runs the tree until a signal.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use actord::app;
use actord::cli::{self, Cli, Command};
use actord::runtime::Outcome;
use actord::telemetry;
use actord::tree_view::{self, TreeOptions};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, warn};

/// How long a process that stopped without a signal (a command, a failed start, a fail-fast
/// exit) waits for threads still inside blocking calls before it exits without them.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// When a signalled stop must be over, exit included: the first signal plus
/// `runtime.shutdown_timeout`.
static STOP_DEADLINE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(command(Cli::parse()));
    // Everything the process runs has stopped. A thread can still be inside a blocking call
    // (librdkafka closing a consumer whose broker stopped answering waits for its request
    // timeouts, minutes): the process waits for it only until the stop's deadline.
    let grace = STOP_DEADLINE
        .get()
        .map_or(EXIT_GRACE, |d| d.saturating_duration_since(Instant::now()));
    let began = Instant::now();
    runtime.shutdown_timeout(grace);
    if !grace.is_zero() && began.elapsed() >= grace {
        warn!(
            waited = ?grace,
            "exiting with threads still blocked in a client library; what they held was already stopped"
        );
    }
    code
}

async fn command(cli: Cli) -> ExitCode {
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Run => run(&cli).await,
        Command::Check => match cli.load_config() {
            Ok(config) => match cli::render_plan(&config) {
                Ok(tree) => {
                    print!("configuration OK\n{tree}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            },
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Tree(args) => tree(&cli, args).await,
        Command::AdaptiveCard(cli::AdaptiveCardCommand::Reset { dlq }) => {
            let config = match cli.load_config() {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
            };
            let ac = config
                .pipelines
                .get::<actord::pipelines::adaptive_card::AdaptiveCardConfig>();
            match actord::pipelines::adaptive_card::reset::reset(ac, *dlq).await {
                Ok(deleted) => {
                    println!(
                        "deleted {} stream(s): {}; {} drain counter(s)",
                        deleted.streams.len(),
                        deleted.streams.join(", "),
                        deleted.drain_counters
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Commerce(cmd) => commerce(&cli, cmd).await,
        Command::Probe { endpoint, timeout } => probe(&cli, *endpoint, *timeout).await,
        Command::EmbeddedBroker { create_topic } => embedded_broker(&cli, create_topic).await,
        Command::Backfill { mode, from_date } => backfill(&cli, *mode, from_date.as_deref()).await,
    }
}

/// `actord commerce seed|history`: exit 2 on a configuration error, 1 when the load fails.
async fn commerce(cli: &Cli, cmd: &cli::CommerceCommand) -> ExitCode {
    use actord::pipelines::commerce::{history, seed, CommerceConfig};
    let config = match cli.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let cc = config.pipelines.get::<CommerceConfig>();
    let target = format!(
        "{}:{}/{} schema {}",
        cc.db.host, cc.db.port, cc.db.database, cc.db.schema
    );
    let result = match cmd {
        cli::CommerceCommand::Seed {
            users,
            products,
            seed: s,
        } => seed::seed(cc, *users, *products, *s).await.map(|n| {
            format!(
                "seeded {target}: {} users, {} products",
                n.users, n.products
            )
        }),
        cli::CommerceCommand::History {
            days,
            seed,
            until,
            initial_users,
            initial_products,
            users_per_day,
            products_per_day,
            orders_per_day,
        } => {
            let args = history::HistoryArgs {
                days: *days,
                seed: *seed,
                until: *until,
                initial_users: *initial_users,
                initial_products: *initial_products,
                users_per_day: *users_per_day,
                products_per_day: *products_per_day,
                orders_per_day: *orders_per_day,
            };
            history::run(cc, &args).await.map(|r| {
                let grades: Vec<String> = r.grades.iter().map(|(g, n)| format!("{g}={n}")).collect();
                format!(
                    "loaded into {target}: {} users, {} products, {} orders in {:.2}s ({:.0} rows/s); grades {}",
                    r.users,
                    r.products,
                    r.orders,
                    r.load_seconds,
                    r.rows_per_second,
                    grades.join(", ")
                )
            })
        }
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `actord embedded-broker`: the mock cluster alone, until a signal.
async fn embedded_broker(cli: &Cli, specs: &[String]) -> ExitCode {
    use std::io::Write;
    let topics = match specs
        .iter()
        .map(|s| cli::topic_spec(s))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Logs go to stderr; stdout carries only the bootstrap line.
    let format = if cli.log_json {
        actord::config::LogFormat::Json
    } else {
        actord::config::LogFormat::Text
    };
    telemetry::init_logging(format, "info", cli.verbose);
    let broker = match actord::sources::kafka::embedded::EmbeddedKafka::start() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: the embedded broker did not start: {e}");
            return ExitCode::from(1);
        }
    };
    for (name, partitions) in &topics {
        if let Err(e) = broker.create_topic(name, *partitions) {
            eprintln!("error: creating topic {name}: {e}");
            return ExitCode::from(1);
        }
    }
    let mut out = std::io::stdout().lock();
    if writeln!(out, "bootstrap={}", broker.bootstrap())
        .and_then(|_| out.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    drop(out);
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("error: cannot install the signal handlers");
        return ExitCode::from(1);
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    drop(broker);
    ExitCode::SUCCESS
}

/// `actord backfill`: one run in the foreground.
async fn backfill(cli: &Cli, mode: cli::BackfillMode, from_date: Option<&str>) -> ExitCode {
    use actord::pipelines::backfill::foreground;
    let overrides = foreground::overrides(mode.as_str(), from_date);
    let config = match cli.load_config_with(&overrides, Some(vec!["backfill".to_owned()])) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli, &config);
    ExitCode::from(foreground::run(config).await.code())
}

/// Logs as the configuration says, `--log-json` and `-v` winning.
fn init_logging(cli: &Cli, config: &actord::config::Config) {
    let format = if cli.log_json {
        actord::config::LogFormat::Json
    } else {
        config.log.format
    };
    telemetry::init_logging(format, &config.log.level, cli.verbose);
}

/// `actord tree`: exit 1 with one clear line when the admin port cannot be read.
async fn tree(cli: &Cli, args: &cli::TreeArgs) -> ExitCode {
    let config = if cli.admin.is_none() {
        cli.load_config().ok()
    } else {
        None
    };
    let seconds = |s: f64, what: &str| match Duration::try_from_secs_f64(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "error: --{what} expects a positive number of seconds, found {s}"
        )),
    };
    let (timeout, interval) = match (
        seconds(args.timeout, "timeout"),
        seconds(args.interval, "interval"),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let opts = TreeOptions {
        base: cli::admin_url(cli, config.as_ref()),
        json: args.json,
        failed: args.failed,
        timeout,
        color: !args.no_color && std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    match tree_view::run(&opts, args.watch.then_some(interval)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `actord probe`: exit 0 when the endpoint answers 200, 1 otherwise.
async fn probe(cli: &Cli, endpoint: cli::ProbeEndpoint, timeout: u64) -> ExitCode {
    let config = if cli.admin.is_none() {
        cli.load_config().ok()
    } else {
        None
    };
    let url = cli::admin_url(cli, config.as_ref());
    match cli::probe(&url, endpoint, Duration::from_secs(timeout)).await {
        Ok((status, body)) => {
            print!("{body}");
            if status == 200 {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: {url} answered {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: cannot reach the admin port at {url}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> ExitCode {
    let config = match cli.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli, &config);
    let listener = match TcpListener::bind(config.admin.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(admin = %config.admin.listen, error = %e, "cannot bind the admin port");
            return ExitCode::FAILURE;
        }
    };
    let stop_within = config.runtime.shutdown_timeout;
    match app::run_with(
        config,
        Some(cli.loader()),
        listener,
        shutdown_signal(stop_within),
    )
    .await
    {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Err(e) => {
            error!(error = %format!("{e:#}"), "actord failed to start");
            // A configuration fault found while starting (a table whose columns do not take
            // what a pipeline writes) exits like a configuration error.
            if e.chain().any(|c| c.is::<actord::config::ConfigError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT, from when the stop has `stop_within` to end, exit
/// included; a second one exits at once.
async fn shutdown_signal(stop_within: Duration) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = STOP_DEADLINE.set(Instant::now() + stop_within);
    warn!("shutdown requested; a second signal exits immediately");
    // Two listeners: this runtime's from now on, and one on a thread of its own that still
    // listens while the process waits at exit for threads blocked in a client library (this
    // runtime's signal driver is gone by then).
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        exit_on_second_signal();
    });
    let listener = std::thread::Builder::new()
        .name("second-signal".to_owned())
        .spawn(|| {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                exit_on_second_signal();
            });
        });
    if let Err(e) = listener {
        warn!(error = %e, "cannot listen for a second signal after the stop");
    }
}

fn exit_on_second_signal() -> ! {
    eprintln!("second signal: exiting immediately");
    std::process::exit(130);
}
