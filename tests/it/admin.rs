//! The admin port of an in-process runtime, bound to port 0.

use std::time::Duration;

use actord::runtime::Outcome;

use crate::support::{actor, config, get, post, promtool_accepts, tree, until, InProcess};

#[tokio::test]
async fn liveness_readiness_health_and_info() {
    let rt = InProcess::start(&config("")).await;
    assert_eq!(get(&rt.base, "/live").await, (200, "OK\n".into()));
    let (status, ready) = get(&rt.base, "/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.starts_with("READY\n# kafka: embedded in-process broker at 127.0.0.1:"),
        "the embedded broker is a note, not a failure: {ready}"
    );

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
    assert!(page.contains("/assets/live.js"), "{page}");
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
    promtool_accepts(&body);
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
    assert_eq!(status, 503);
    assert!(
        body.starts_with("NOT READY\nheartbeat: stopped\n# kafka: embedded"),
        "{body}"
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

#[tokio::test]
async fn a_web_page_cannot_drive_the_admin_port() {
    let rt = InProcess::start(&config("")).await;
    let port = rt.base.rsplit(':').next().unwrap().to_owned();
    let client = reqwest::Client::new();
    let restart = format!("{}/api/actors/restart?path=/heartbeat/ticker", rt.base);

    // A form on another site posting here: a simple request, no custom header, a foreign Origin.
    let form = client
        .post(&restart)
        .header("Origin", "https://evil.example")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("path=%2Fheartbeat%2Fticker")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 403);
    // Without an Origin (some browsers and privacy settings drop it) it still lacks the header.
    assert_eq!(client.post(&restart).send().await.unwrap().status(), 403);
    // A caller that adds the header but comes from another origin is refused as well.
    let foreign = client
        .post(&restart)
        .header("X-Actord-Request", "1")
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    // The preflight a browser sends before a cross-origin fetch with that header gets no grant.
    let preflight = client
        .request(reqwest::Method::OPTIONS, &restart)
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "x-actord-request")
        .send()
        .await
        .unwrap();
    assert!(preflight
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // DNS rebinding: a hostile name that resolves to 127.0.0.1 reads nothing and posts nothing.
    for (method, url) in [
        (reqwest::Method::GET, format!("{}/api/tree", rt.base)),
        (reqwest::Method::POST, restart.clone()),
    ] {
        let rebound = client
            .request(method, &url)
            .header("Host", format!("rebind.evil.example:{port}"))
            .header("X-Actord-Request", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), 403, "{url}");
    }
    assert_eq!(
        actor(&tree(&rt.base).await, "/heartbeat/ticker")["restarts"],
        0,
        "nothing was restarted"
    );

    // Every loopback name works for reads, as the seed's `curl http://localhost:8080/health`.
    for host in ["localhost", "127.0.0.1", "[::1]"] {
        let r = client
            .get(format!("{}/health", rt.base))
            .header("Host", format!("{host}:{port}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    // The admin page's own requests (same origin, with the header) work.
    let own = client
        .post(&restart)
        .header("Host", format!("localhost:{port}"))
        .header("Origin", format!("http://localhost:{port}"))
        .header("X-Actord-Request", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert_eq!(
        actor(&tree(&rt.base).await, "/heartbeat/ticker")["restarts"],
        1
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let rt = InProcess::start(&config("[admin]\ntoken = \"s3cret\"\n")).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/actors/restart?path=/heartbeat/ticker", rt.base);
    for (auth, expected) in [
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("Bearer s3cre", 401),
        ("Bearer s3cret-and-more", 401),
        ("Basic s3cret", 401),
    ] {
        let r = client
            .post(&url)
            .header("Authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected, "{auth}");
    }
    // With a token, the custom header alone is not enough.
    let r = client
        .post(&url)
        .header("X-Actord-Request", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    rt.shutdown().await;
}

/// A pipeline is up only when its workers are: one backing off after a failure makes it not
/// ready, degraded and `actord_pipeline_up` 0 although its supervisor runs.
#[tokio::test]
async fn a_pipeline_whose_worker_backs_off_is_not_up() {
    let rt = InProcess::start(&config(
        "[admin]\nfault_injection = true\ninsecure = true\n[pipelines.heartbeat.supervision]\nbackoff_initial = \"4s\"\nbackoff_max = \"4s\"\n",
    ))
    .await;
    let (status, _) = post(&rt.base, "/api/actors/fail?path=/heartbeat/ticker", None).await;
    assert_eq!(status, 200);
    let (status, body) = get(&rt.base, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("NOT READY\nheartbeat: degraded (/heartbeat/ticker failed)\n"),
        "{body}"
    );
    let (status, body) = get(&rt.base, "/health").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("DEGRADED\n"), "{body}");
    assert!(body.contains("# not up: heartbeat: degraded"), "{body}");
    let (status, body) = get(&rt.base, "/health/heartbeat").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("DEGRADED\n"), "{body}");
    let metrics = get(&rt.base, "/metrics").await.1;
    assert!(
        metrics.contains("actord_pipeline_up{pipeline=\"heartbeat\"} 0"),
        "{metrics}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&get(&rt.base, "/api/info").await.1).unwrap();
    assert_eq!(info["pipelines"][0]["status"], "running");
    assert_eq!(info["pipelines"][0]["up"], false);
    // Once the ticker is back the pipeline is up again.
    until(
        Duration::from_secs(20),
        "the pipeline to be up again",
        || async { get(&rt.base, "/ready").await.0 == 200 },
    )
    .await;
    let metrics = get(&rt.base, "/metrics").await.1;
    assert!(
        metrics.contains("actord_pipeline_up{pipeline=\"heartbeat\"} 1"),
        "{metrics}"
    );
    rt.shutdown().await;
}
