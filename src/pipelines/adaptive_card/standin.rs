//! A T2A stand-in: serves deterministic rows for any sales organisation, for tests and demos.
//! `GET /sales-orgs/{org}/materials` and `GET /sales-orgs/{org}/gscm` answer JSON arrays;
//! an organisation named `unknown…` gets 404.

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
