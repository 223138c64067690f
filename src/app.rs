//! The process: the supervision tree, and the admin port beside it for as long as it runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin;
use crate::config::reload::{Loader, ReloadError};
use crate::config::Config;
use crate::runtime::{self, Current, Outcome};

/// Starts the tree and the admin port, and runs until `shutdown` resolves or the root fails.
/// Without a way to read the configuration again, reloads are refused.
pub async fn run(
    config: Config,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    run_with(config, None, admin_listener, shutdown).await
}

/// As [`run`]; `loader` reads the configuration again on SIGHUP and
/// `POST /api/config/reload`, and the tree takes what changed.
pub async fn run_with(
    config: Config,
    loader: Option<Loader>,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    let mut running = runtime::start(config).await?;
    let mut handle = admin::Handle::new(
        built(Current {
            config: running.config.clone(),
            kafka: running.kafka.clone(),
            health: running.health.clone(),
            schedules: running.schedules.clone(),
        }),
        running.registry.clone(),
        running.supervisors.clone(),
        running.root.clone(),
        running.started,
    );
    if let Some(loader) = loader {
        let reloader = running.reloader();
        let reload: admin::Reload = Arc::new(move || {
            let (loader, reloader) = (loader.clone(), reloader.clone());
            let applied: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                // Reading the file and the env file blocks; validation is quick.
                let loaded = tokio::task::spawn_blocking(move || loader())
                    .await
                    .map_err(|e| ReloadError::Unavailable(format!("reading failed: {e}")))?;
                let config = loaded.map_err(ReloadError::Invalid)?;
                let (report, current) = reloader.apply(config).await?;
                Ok::<_, ReloadError>((report, built(current)))
            });
            applied
        });
        handle = handle.with_reload(reload);
    }
    running.announce(admin_listener.local_addr()?);
    let hangups = tokio::spawn(reload_on_hangup(handle.clone()));
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(admin::serve(admin_listener, handle, async move {
        let _ = admin_stopped.await;
    }));
    let outcome = running.until(shutdown).await;
    hangups.abort();
    let _ = hangups.await;
    let _ = stop_admin.send(());
    let _ = server.await;
    drop(running);
    info!(?outcome, "actord stopped");
    Ok(outcome)
}

fn built(c: Current) -> admin::Built {
    admin::Built {
        config: c.config,
        kafka: c.kafka,
        health: c.health,
        schedules: c.schedules,
    }
}

/// Each SIGHUP reloads the configuration, as `POST /api/config/reload` does.
async fn reload_on_hangup(handle: admin::Handle) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; reload through POST /api/config/reload");
        return;
    };
    while hangup.recv().await.is_some() {
        info!("SIGHUP: reloading the configuration");
        match handle.reload().await {
            Ok(report) => info!(summary = %report.summary(), "SIGHUP reload done"),
            Err(ReloadError::Invalid(e)) => {
                warn!(error = %e.to_string().trim_end(), "configuration reload refused, nothing changed")
            }
            Err(e) => warn!(error = %e, "configuration reload refused"),
        }
    }
}
