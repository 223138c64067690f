//! A T2A stand-in: serves deterministic rows for any sales organisation, for tests and demos.
//! `GET /sales-orgs/{org}/materials` and `GET /sales-orgs/{org}/gscm` answer JSON arrays;
//! an organisation named `unknown…` gets 404.
//!
//! With `t2a.url = "standin"` the pipeline runs it as the worker `/adaptive-card/t2a-standin`
//! on a loopback port bound once per process (a restart serves the same port); T2A_API_URL
//! naming a real API replaces the setting, so the stand-in is then off.

use std::sync::Arc;

use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::info;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Material rows of `org`: three materials, one of them low on stock.
pub fn materials(org: &str) -> Vec<Value> {
    (1..=3)
        .map(|i| {
            json!({
                "material": format!("{org}-M{i}"),
                "description": format!("material {i} of {org}"),
                "stock": if i == 1 { 4 } else { 40 * i },
            })
        })
        .collect()
}

/// GSCM rows of `org`: two orders, one delayed.
pub fn gscm(org: &str) -> Vec<Value> {
    (1..=2)
        .map(|i| {
            json!({
                "order": format!("{org}-O{i}"),
                "material": format!("{org}-M{i}"),
                "status": if i == 1 { "DELAYED" } else { "ON_TIME" },
                "eta": format!("2026-01-0{i}"),
            })
        })
        .collect()
}

fn known(org: &str) -> Result<(), StatusCode> {
    if org.starts_with("unknown") {
        Err(StatusCode::NOT_FOUND)
    } else {
        Ok(())
    }
}

pub fn router() -> Router {
    Router::new()
        .route(
            "/sales-orgs/{org}/materials",
            get(|Path(org): Path<String>| async move {
                known(&org).map(|()| Json(Value::Array(materials(&org))))
            }),
        )
        .route(
            "/sales-orgs/{org}/gscm",
            get(|Path(org): Path<String>| async move {
                known(&org).map(|()| Json(Value::Array(gscm(&org))))
            }),
        )
}

/// Serves the stand-in on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router()).await
}

/// Serves the stand-in as a supervised worker.
pub struct T2aStandIn;

pub struct StandInArgs {
    pub probe: Probe,
    /// Bound when the pipeline was built; each incarnation serves a clone of it.
    pub listener: Arc<std::net::TcpListener>,
}

pub struct StandInState {
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Actor for T2aStandIn {
    type Msg = ();
    type State = StandInState;
    type Arguments = StandInArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let listener = tokio::net::TcpListener::from_std(args.listener.try_clone()?)?;
        let addr = listener.local_addr()?;
        info!(path = %args.probe.path(), addr = %addr, "T2A stand-in serving demo rows; set T2A_API_URL for a real API");
        Ok(StandInState {
            server: tokio::spawn(serve(listener)),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.server.abort();
        Ok(())
    }
}

/// Binds the stand-in's loopback port (nonblocking, for tokio).
pub fn bind() -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
