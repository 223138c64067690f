//! Logs (tracing) and metrics (Prometheus exposition).

pub mod names;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Log targets that would print a secret below some level, with the most they may log
/// whatever the filter asks: the FTP client traces its control connection, `PASS <password>`
/// included. These directives are the most specific for their targets, so a broader `trace`
/// never reaches them.
const SECRET_BEARING_TARGETS: [&str; 1] = ["suppaftp::async_ftp::tokio_ftp::control=debug"];

/// Installs the log subscriber. `RUST_LOG` wins over `-v`, which wins over `log.level`.
pub fn init_logging(format: LogFormat, level: &str, verbose: u8) {
    let fallback = match verbose {
        0 => level.to_owned(),
        1 => "debug".to_owned(),
        _ => "trace".to_owned(),
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&fallback))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = SECRET_BEARING_TARGETS.iter().fold(filter, |f, d| {
        f.add_directive(d.parse().expect("a valid log directive"))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".to_owned()),
                &[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0,
                ],
            )
            .expect("bucket list is not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        names::describe();
        metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}
