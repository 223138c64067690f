//! The admin port of an in-process runtime, bound to port 0.

use std::process::Command;
use std::time::Duration;

use actord::runtime::Outcome;

use crate::support::{actor, config, get, post, tree, until, InProcess};

#[tokio::test]
async fn liveness_readiness_health_and_info() {
    let rt = InProcess::start(&config("")).await;
    assert_eq!(get(&rt.base, "/live").await, (200, "OK\n".into()));
    assert_eq!(get(&rt.base, "/ready").await, (200, "READY\n".into()));

    // Wait for a beat so the components have made progress.
    until(Duration::from_secs(10), "a beat", || async {
        actor(&tree(&rt.base).await, "/heartbeat/beats/writer-0")["counters"]["records"].as_u64()
            > Some(0)
    })
    .await;
    let (status, body) = get(&rt.base, "/health").await;
    assert_eq!(status, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "OK",
            "heartbeat.ticker: healthy",
            "heartbeat.consumer: healthy"
        ]
    );
    assert!(body.contains("# kafka: embedded"), "{body}");
    assert_eq!(
        get(&rt.base, "/health/heartbeat").await,
        (200, "OK\nticker: healthy\nconsumer: healthy\n".into())
    );
    assert_eq!(get(&rt.base, "/health/nosuch").await.0, 404);

    let (status, body) = get(&rt.base, "/api/info").await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["pipelines"][0]["name"], "heartbeat");
    assert_eq!(info["pipelines"][0]["status"], "running");
    assert_eq!(info["kafka"]["mode"], "embedded");
    assert!(
        info["kafka"]["bootstrap"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{info}"
    );

    let (status, page) = get(&rt.base, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("/api/tree"));
    assert_eq!(rt.shutdown().await, Outcome::Clean);
}

#[tokio::test]
async fn the_tree_shows_every_actor_with_its_state() {
    let rt = InProcess::start(&config("")).await;
    until(Duration::from_secs(20), "beats read back", || async {
        actor(&tree(&rt.base).await, "/heartbeat/beats/writer-0")["counters"]["records"].as_u64()
            >= Some(2)
    })
    .await;
    let t = tree(&rt.base).await;
    assert_eq!(t["path"], "/");
    assert_eq!(t["kind"], "supervisor");
    let hb = actor(&t, "/heartbeat");
    assert_eq!(hb["kind"], "supervisor");
    assert_eq!(hb["status"], "running");
    let ticker = actor(&t, "/heartbeat/ticker");
    assert_eq!(ticker["kind"], "worker");
    assert_eq!(ticker["restarts"], 0);
    assert!(ticker["last_error"].is_null());
    assert!(ticker["last_progress"].as_str().unwrap().ends_with('Z'));
    assert!(ticker["counters"]["beats"].as_u64() >= Some(2));
    let beats = actor(&t, "/heartbeat/beats");
    assert_eq!(beats["kind"], "supervisor");
    let names: Vec<&str> = beats["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["dlq", "writer-0", "buffer-0", "decoder-0", "consumer-0"],
        "children in start order"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn metrics_pass_promtool_and_carry_the_runtime_series() {
    let rt = InProcess::start(&config("")).await;
    until(Duration::from_secs(10), "a beat", || async {
        get(&rt.base, "/metrics")
            .await
            .1
            .contains("actord_heartbeat_beats_total")
    })
    .await;
    let (status, body) = get(&rt.base, "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "actord_build_info{version=\"",
        "actord_pipeline_up{pipeline=\"heartbeat\"} 1",
        "actord_actor_up{path=\"/heartbeat/ticker\"} 1",
        "actord_heartbeat_beats_total",
        "actord_records_consumed_total{path=\"/heartbeat/beats/consumer-0\",topic=\"actord.heartbeat\"}",
        "actord_records_produced_total{path=\"/heartbeat/publisher\",topic=\"actord.heartbeat\"}",
        "actord_records_written_total{path=\"/heartbeat/beats/writer-0\"}",
        "actord_buffer_flushed_records_total{path=\"/heartbeat/beats/buffer-0\"}",
        "actord_flush_duration_seconds_bucket{path=\"/heartbeat/beats/writer-0\",le=",
    ] {
        assert!(body.contains(series), "missing {series} in\n{body}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; scripts/test.sh installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn operator_restart_and_pipeline_stop_start() {
    let rt = InProcess::start(&config("")).await;
    let (status, body) = post(&rt.base, "/api/actors/restart?path=/heartbeat/ticker", None).await;
    assert_eq!(status, 200, "{body}");
    let t = tree(&rt.base).await;
    assert_eq!(actor(&t, "/heartbeat/ticker")["restarts"], 1);
    assert_eq!(actor(&t, "/heartbeat/publisher")["restarts"], 0);

    assert_eq!(
        post(&rt.base, "/api/actors/restart?path=/heartbeat/nope", None)
            .await
            .0,
        404
    );
    assert_eq!(
        post(&rt.base, "/api/actors/restart?path=/", None).await.0,
        400
    );
    assert_eq!(
        post(&rt.base, "/api/actors/restart?path=bad", None).await.0,
        400
    );
    // Fault injection is off unless configured.
    assert_eq!(
        post(&rt.base, "/api/actors/fail?path=/heartbeat/ticker", None)
            .await
            .0,
        404
    );

    assert_eq!(
        post(&rt.base, "/api/pipelines/heartbeat/stop", None)
            .await
            .0,
        200
    );
    let (status, body) = get(&rt.base, "/ready").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "NOT READY\nheartbeat: stopped\n")
    );
    let (status, body) = get(&rt.base, "/health").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("DEGRADED\nheartbeat.ticker: unhealthy\n"),
        "{body}"
    );
    assert!(get(&rt.base, "/metrics")
        .await
        .1
        .contains("actord_pipeline_up{pipeline=\"heartbeat\"} 0"));

    assert_eq!(
        post(&rt.base, "/api/pipelines/heartbeat/start", None)
            .await
            .0,
        200
    );
    assert_eq!(get(&rt.base, "/ready").await.0, 200);
    assert_eq!(
        post(&rt.base, "/api/pipelines/nosuch/stop", None).await.0,
        404
    );
    assert_eq!(
        post(&rt.base, "/api/pipelines/heartbeat/explode", None)
            .await
            .0,
        404
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_configured_token_guards_every_post() {
    let rt = InProcess::start(&config(
        "[admin]\ntoken = \"s3cret\"\nfault_injection = true\n",
    ))
    .await;
    for path in [
        "/api/actors/restart?path=/heartbeat/ticker",
        "/api/actors/fail?path=/heartbeat/ticker",
        "/api/pipelines/heartbeat/stop",
    ] {
        assert_eq!(
            post(&rt.base, path, None).await.0,
            401,
            "{path} without token"
        );
        assert_eq!(
            post(&rt.base, path, Some("wrong")).await.0,
            401,
            "{path} with a wrong token"
        );
    }
    assert_eq!(
        post(
            &rt.base,
            "/api/actors/restart?path=/heartbeat/ticker",
            Some("s3cret")
        )
        .await
        .0,
        200
    );
    // Reads stay open.
    assert_eq!(get(&rt.base, "/api/tree").await.0, 200);
    rt.shutdown().await;
}
