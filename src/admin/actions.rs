//! Mutating admin endpoints. Each takes the actor path as a query parameter; the guard in front of
//! the router decides who may call them.

use actord_actors::scheduler::RunNowError;
use actord_actors::{ActorPath, SupervisorError, SupervisorMsg};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use ractor::{ActorRef, RpcReplyPort};
use serde::Deserialize;
use tracing::info;

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
    if !h.config.admin.fault_injection {
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
    if !h.config.runtime.enabled.contains(&name) {
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
        other => text(
            StatusCode::NOT_FOUND,
            format!("unknown action {other:?}; expected stop, start or run\n"),
        ),
    }
}

/// Starts a run of one of the pipeline's scheduled entries now, under the same no-overlap
/// rules as a scheduled run (a run of it active here, or its lease held elsewhere, refuses).
async fn run_now(h: &Handle, name: &str, entry: Option<&str>) -> Response {
    let Some(handle) = h.schedules.get(name) else {
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
