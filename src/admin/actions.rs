//! Mutating admin endpoints. Each takes the actor path as a query parameter; the guard in front of
//! the router decides who may call them.

use actord_actors::scheduler::RunNowError;
use actord_actors::{ActorPath, SupervisorError, SupervisorMsg};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ractor::{ActorRef, RpcReplyPort};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::reload::ReloadError;

use super::text;
use super::Handle;

#[derive(Deserialize)]
pub struct PathQuery {
    path: Option<String>,
}

#[derive(Deserialize)]
pub struct RunQuery {
    entry: Option<String>,
}

type Reply = RpcReplyPort<Result<(), SupervisorError>>;

/// A refused request: its status and a one-line reason.
struct Reject(StatusCode, String);

impl From<Reject> for Response {
    fn from(r: Reject) -> Response {
        text(r.0, format!("{}\n", r.1))
    }
}

/// The supervisor that owns `path` and the child id of `path` in it.
fn owner(
    h: &Handle,
    query: &PathQuery,
) -> Result<(ActorRef<SupervisorMsg>, String, ActorPath), Reject> {
    let raw = query.path.as_deref().unwrap_or("");
    let path = ActorPath::parse(raw).ok_or_else(|| {
        Reject(
            StatusCode::BAD_REQUEST,
            format!("expected ?path=/pipeline/..., found {raw:?}"),
        )
    })?;
    let parent = path.parent().ok_or_else(|| {
        Reject(
            StatusCode::BAD_REQUEST,
            "the root cannot be targeted; stop the process instead".into(),
        )
    })?;
    if h.registry.get(&path).is_none() {
        return Err(Reject(StatusCode::NOT_FOUND, format!("no actor at {path}")));
    }
    let sup = h.supervisors.get(&parent).ok_or_else(|| {
        Reject(
            StatusCode::CONFLICT,
            format!("the supervisor of {path} is not running"),
        )
    })?;
    Ok((sup, path.name().to_owned(), path))
}

async fn ask(
    sup: &ActorRef<SupervisorMsg>,
    make: impl FnOnce(Reply) -> SupervisorMsg,
    done: String,
) -> Response {
    match sup
        .call(make, Some(std::time::Duration::from_secs(120)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(Ok(()))) => text(StatusCode::OK, format!("{done}\n")),
        Ok(ractor::rpc::CallResult::Success(Err(e))) => {
            let status = match e {
                SupervisorError::UnknownChild(_) => StatusCode::NOT_FOUND,
                SupervisorError::NotRunning(_) | SupervisorError::AlreadyExists(_) => {
                    StatusCode::CONFLICT
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            text(status, format!("{e}\n"))
        }
        Ok(_) | Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor did not answer\n".into(),
        ),
    }
}

pub async fn restart_actor(State(h): State<Handle>, Query(q): Query<PathQuery>) -> Response {
    let (sup, id, path) = match owner(&h, &q) {
        Ok(o) => o,
        Err(r) => return r.into(),
    };
    info!(path = %path, "restart requested through the admin port");
    ask(
        &sup,
        |reply| SupervisorMsg::RestartChild(id, reply),
        format!("restarted {path}"),
    )
    .await
}

pub async fn fail_actor(State(h): State<Handle>, Query(q): Query<PathQuery>) -> Response {
    if !h.config().admin.fault_injection {
        return text(
            StatusCode::NOT_FOUND,
            "fault injection is disabled (admin.fault_injection = false)\n".into(),
        );
    }
    let (sup, id, path) = match owner(&h, &q) {
        Ok(o) => o,
        Err(r) => return r.into(),
    };
    ask(
        &sup,
        |reply| SupervisorMsg::FailChild(id, reply),
        format!("failed {path}"),
    )
    .await
}

pub async fn pipeline_action(
    State(h): State<Handle>,
    Path((name, action)): Path<(String, String)>,
    Query(run): Query<RunQuery>,
) -> Response {
    if !h.config().runtime.enabled.contains(&name) {
        return text(
            StatusCode::NOT_FOUND,
            format!("pipeline {name:?} is not enabled\n"),
        );
    }
    info!(pipeline = %name, action = %action, "pipeline action requested through the admin port");
    match action.as_str() {
        "stop" => {
            ask(
                &h.root,
                |reply| SupervisorMsg::StopChild(name.clone(), reply),
                format!("stopped {name}"),
            )
            .await
        }
        "start" => {
            ask(
                &h.root,
                |reply| SupervisorMsg::StartChild(name.clone(), reply),
                format!("started {name}"),
            )
            .await
        }
        "run" => run_now(&h, &name, run.entry.as_deref()).await,
        "pause" | "resume" => pause(&h, &name, action == "pause"),
        other => text(
            StatusCode::NOT_FOUND,
            format!("unknown action {other:?}; expected stop, start, run, pause or resume\n"),
        ),
    }
}

/// Starts a run of one of the pipeline's scheduled entries now, under the same no-overlap
/// rules as a scheduled run (a run of it active here, or its lease held elsewhere, refuses).
async fn run_now(h: &Handle, name: &str, entry: Option<&str>) -> Response {
    if h.pipeline_paused(name) {
        return text(
            StatusCode::CONFLICT,
            format!("pipeline {name:?} is paused; resume it first\n"),
        );
    }
    let Some(handle) = h.schedules().get(name).cloned() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pipeline {name:?} has no scheduled entries\n"),
        );
    };
    match handle.run_now(entry).await {
        Ok(run_id) => {
            // Without `entry` the scheduler ran its only one.
            let entry = entry.map(str::to_owned).unwrap_or_else(|| {
                let snap = handle.snapshot();
                snap.entries
                    .first()
                    .map(|e| e.name.clone())
                    .unwrap_or_default()
            });
            text(
                StatusCode::OK,
                format!("started run {run_id} of {name}/{entry}\n"),
            )
        }
        Err(e) => {
            let status = match &e {
                RunNowError::UnknownEntry(_) => StatusCode::NOT_FOUND,
                RunNowError::EntryRequired(_) => StatusCode::BAD_REQUEST,
                RunNowError::Active { .. } | RunNowError::LeaseHeld(_) => StatusCode::CONFLICT,
                RunNowError::LeaseUnavailable { .. }
                | RunNowError::Stopping
                | RunNowError::NotRunning => StatusCode::SERVICE_UNAVAILABLE,
            };
            text(status, format!("{e}\n"))
        }
    }
}

/// Pauses or resumes a pipeline. Paused, its consumers flush what their buffers hold, pause
/// their partitions (Kafka) or stop reading (Redis) and read nothing new; acks and commits go
/// on, so in-flight batches finish and their offsets are kept. Its schedulers skip due runs.
/// The pause outlives restarts of the pipeline and reloads that change it.
fn pause(h: &Handle, name: &str, paused: bool) -> Response {
    let changed = h
        .registry
        .set_paused(&ActorPath::root().child(name), paused);
    let (verb, already) = if paused {
        ("paused", "already paused")
    } else {
        ("resumed", "not paused")
    };
    if !changed {
        return text(StatusCode::OK, format!("{name} was {already}\n"));
    }
    info!(pipeline = %name, "pipeline {verb} by an operator");
    let detail = if paused {
        ": in-flight batches finish and are committed, nothing new is read, scheduled runs are skipped"
    } else {
        ""
    };
    text(StatusCode::OK, format!("{verb} {name}{detail}\n"))
}

/// `POST /api/config/reload`: re-reads the configuration and applies it. 200 with what was
/// restarted, added and removed; 422 with every problem when the new configuration is invalid
/// (nothing changed); 409 when this instance cannot reload; 500 when a pipeline did not start.
pub async fn reload(State(h): State<Handle>) -> Response {
    info!("configuration reload requested through the admin port");
    match h.reload().await {
        Ok(report) => {
            let status = if report.failed.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (status, axum::Json(report)).into_response()
        }
        Err(ReloadError::Invalid(e)) => {
            warn!(error = %e.to_string().trim_end(), "configuration reload refused, nothing changed");
            text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload refused, nothing changed: {e}"),
            )
        }
        Err(e @ ReloadError::Unavailable(_)) => text(StatusCode::CONFLICT, format!("{e}\n")),
    }
}
