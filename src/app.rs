//! The process: the supervision tree, and the admin port beside it for as long as it runs.

use std::future::Future;

use tokio::net::TcpListener;
use tracing::info;

use crate::admin;
use crate::config::Config;
use crate::runtime::{self, Outcome};

/// Starts the tree and the admin port, and runs until `shutdown` resolves or the root fails.
pub async fn run(
    config: Config,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    let mut running = runtime::start(config).await?;
    let handle = admin::Handle {
        config: running.config.clone(),
        registry: running.registry.clone(),
        supervisors: running.supervisors.clone(),
        root: running.root.clone(),
        health: running.health.clone(),
        started: running.started,
        kafka: running.kafka.clone(),
        schedules: running.schedules.clone(),
    };
    running.announce(admin_listener.local_addr()?);
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(admin::serve(admin_listener, handle, async move {
        let _ = admin_stopped.await;
    }));
    let outcome = running.until(shutdown).await;
    let _ = stop_admin.send(());
    let _ = server.await;
    drop(running);
    info!(?outcome, "actord stopped");
    Ok(outcome)
}
