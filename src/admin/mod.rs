//! The admin HTTP port: liveness, readiness, health, metrics, the live actor tree, and
//! operator actions on actors and pipelines.

mod actions;
mod guard;
mod handle;
pub mod live_view;
mod scrape;

pub use guard::REQUEST_HEADER;
pub use handle::{Built, Handle, Reload};

use std::future::Future;

use actord_actors::{observe::rfc3339, ActorPath, Status};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::Brokers;

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/live.js");
const STYLE: &str = include_str!("assets/live.css");

pub fn router(handle: Handle) -> Router {
    router_with(handle, live_view::Live::new())
}

fn router_with(handle: Handle, view: live_view::Live) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/health", get(health))
        .route("/health/{pipeline}", get(pipeline_health))
        .route("/metrics", get(metrics))
        .route("/api/tree", get(tree))
        .route("/api/schedules", get(schedules))
        .route("/api/info", get(info))
        .route("/api/config/reload", post(actions::reload))
        .route("/api/actors/restart", post(actions::restart_actor))
        .route("/api/actors/fail", post(actions::fail_actor))
        .route(
            "/api/pipelines/{name}/{action}",
            post(actions::pipeline_action),
        )
        .merge(live_view::routes())
        .route("/assets/{name}", get(asset))
        .layer(axum::Extension(view))
        .layer(axum::Extension(std::sync::Arc::new(
            scrape::Scrape::default(),
        )))
        .layer(axum::middleware::from_fn_with_state(
            handle.clone(),
            guard::guard,
        ))
        .with_state(handle)
}

/// Serves the admin port until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    handle: Handle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let live = live_view::Live::new();
    live.start(&handle);
    let closing = live.clone();
    axum::serve(listener, router_with(handle, live))
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Open event streams end, or the graceful shutdown would wait for their readers.
            closing.close();
        })
        .await
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// The page's script and style, embedded in the binary: the page needs nothing from outside.
async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "live.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "live.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return text(StatusCode::NOT_FOUND, format!("no asset {name:?}\n")),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn live() -> Response {
    text(StatusCode::OK, "OK\n".into())
}

/// Why a pipeline is not up, in one line: its supervisor's status, or the actors below it that
/// are not running.
fn not_up_line(h: &Handle, pipeline: &str) -> Option<String> {
    let not_up = h.pipeline_not_up(pipeline);
    if not_up.is_empty() {
        return None;
    }
    let status = h.pipeline_status(pipeline);
    if status != Status::Running {
        return Some(format!("{pipeline}: {}", status.as_str()));
    }
    let actors: Vec<String> = not_up
        .iter()
        .map(|(path, why)| format!("{path} {why}"))
        .collect();
    Some(format!("{pipeline}: degraded ({})", actors.join(", ")))
}

async fn ready(State(h): State<Handle>) -> Response {
    let failing: Vec<String> = h
        .config()
        .runtime
        .enabled
        .iter()
        .filter_map(|p| not_up_line(&h, p))
        .collect();
    // Notes (such as the embedded broker) inform; they never make the process unready.
    let notes: String = notes(&h).iter().map(|n| format!("# {n}\n")).collect();
    if failing.is_empty() {
        text(StatusCode::OK, format!("READY\n{notes}"))
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("NOT READY\n{}\n{notes}", failing.join("\n")),
        )
    }
}

/// `(component, healthy)` for one pipeline; everything is unhealthy while it is not running.
fn components(h: &Handle, pipeline: &str) -> Vec<(String, bool)> {
    let running = h.pipeline_status(pipeline) == Status::Running;
    match h.health().get(pipeline) {
        Some(health) if !health.checks.is_empty() => health
            .checks
            .iter()
            .map(|c| (c.component.to_owned(), running && (c.check)(&h.registry)))
            .collect(),
        _ => vec![("supervisor".to_owned(), running)],
    }
}

/// `up` is false when a pipeline is not up although its components look healthy (a worker
/// backing off): the status line then says `DEGRADED`.
fn health_body(up: bool, lines: Vec<(String, bool)>, notes: Vec<String>) -> Response {
    let ok = up && lines.iter().all(|(_, healthy)| *healthy);
    let mut body = String::from(if ok { "OK\n" } else { "DEGRADED\n" });
    for (name, healthy) in lines {
        body.push_str(&format!(
            "{name}: {}\n",
            if healthy { "healthy" } else { "unhealthy" }
        ));
    }
    for note in notes {
        body.push_str(&format!("# {note}\n"));
    }
    text(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

/// What an operator who forgot `KAFKA_BROKERS` must see at once.
pub fn embedded_note(bootstrap: &str) -> String {
    format!(
        "kafka: embedded in-process broker at {bootstrap} (demo/test only: 5 MiB per partition, \
         lost on exit); set KAFKA_BROKERS or kafka.brokers to use a real cluster"
    )
}

fn notes(h: &Handle) -> Vec<String> {
    let mut notes = Vec::new();
    let kafka = h.kafka();
    if kafka.embedded && !kafka.bootstrap.is_empty() {
        notes.push(embedded_note(&kafka.bootstrap));
    }
    notes
}

async fn health(State(h): State<Handle>) -> Response {
    let mut lines = Vec::new();
    let mut not_up = Vec::new();
    let mut paused = Vec::new();
    for pipeline in &h.config().runtime.enabled {
        for (component, healthy) in components(&h, pipeline) {
            lines.push((format!("{pipeline}.{component}"), healthy));
        }
        not_up.extend(not_up_line(&h, pipeline));
        if h.pipeline_paused(pipeline) {
            paused.push(format!(
                "paused: {pipeline} (by an operator; POST /api/pipelines/{pipeline}/resume)"
            ));
        }
    }
    let mut notes: Vec<String> = not_up.iter().map(|l| format!("not up: {l}")).collect();
    notes.extend(paused);
    notes.extend(self::notes(&h));
    for health in h.health().values() {
        notes.extend((health.notes)());
    }
    health_body(not_up.is_empty(), lines, notes)
}

async fn pipeline_health(State(h): State<Handle>, Path(pipeline): Path<String>) -> Response {
    if !h.config().runtime.enabled.contains(&pipeline) {
        return text(
            StatusCode::NOT_FOUND,
            format!("pipeline {pipeline:?} is not enabled\n"),
        );
    }
    // The seed's exact form: status, then one line per component, no notes.
    health_body(
        h.pipeline_up(&pipeline),
        components(&h, &pipeline),
        Vec::new(),
    )
}

async fn metrics(
    State(h): State<Handle>,
    axum::Extension(scrape): axum::Extension<std::sync::Arc<scrape::Scrape>>,
) -> Response {
    let body = scrape.render(&h);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn tree(State(h): State<Handle>) -> Response {
    let Some(root) = h.registry.tree().into_iter().next() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "tree not started\n").into_response();
    };
    let mut root = match serde_json::to_value(root) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    // A pipeline's scheduled entries sit on its node: next and last run, outcome, active run.
    let pipelines = root
        .get_mut("children")
        .and_then(|c| c.as_array_mut())
        .into_iter()
        .flatten();
    let all = h.schedules();
    for node in pipelines {
        let name = node.get("name").and_then(|n| n.as_str()).unwrap_or("");
        if let Some(handle) = all.get(name) {
            node["schedules"] = json!(handle.snapshot().entries);
        }
    }
    Json(root).into_response()
}

/// Every pipeline's scheduled entries, by pipeline name.
async fn schedules(State(h): State<Handle>) -> Response {
    let all: serde_json::Map<String, serde_json::Value> = h
        .schedules()
        .iter()
        .map(|(name, handle)| (name.clone(), json!(handle.snapshot().entries)))
        .collect();
    Json(all).into_response()
}

async fn info(State(h): State<Handle>) -> Response {
    let c = h.config();
    let kafka = match &c.kafka.brokers {
        Brokers::Embedded => json!({"mode": "embedded", "bootstrap": h.kafka().bootstrap}),
        Brokers::List(list) => json!({"mode": "external", "brokers": list}),
    };
    let pipelines: Vec<_> = c
        .runtime
        .enabled
        .iter()
        .map(|p| json!({"name": p, "status": h.pipeline_status(p), "up": h.pipeline_up(p), "paused": h.pipeline_paused(p), "path": ActorPath::root().child(p)}))
        .collect();
    Json(json!({
        "name": "actord",
        "version": env!("CARGO_PKG_VERSION"),
        "config": c.source,
        "started_at": rfc3339(h.started),
        "uptime_seconds": h.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        "admin": {"listen": c.admin.listen.to_string(), "token_required": c.admin.token.is_some(), "fault_injection": c.admin.fault_injection},
        "fail_fast": c.runtime.fail_fast,
        "pipelines": pipelines,
        "kafka": kafka,
    }))
    .into_response()
}
