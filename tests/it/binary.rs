//! The actord binary, run as an operator runs it.

use std::time::Duration;

use crate::support::{
    actor, config, get, post, run_to_end, tree, unique, until, wait_ready, MockBroker, Process,
    Proxy,
};

#[tokio::test]
async fn an_injected_fault_restarts_only_that_subtree() {
    let toml = config("[admin]\nfault_injection = true\ninsecure = true\n");
    let p = Process::start(&toml, &[], &[]);
    wait_ready(&p.base).await;
    let (status, body) = post(&p.base, "/api/actors/fail?path=/heartbeat/ticker", None).await;
    assert_eq!(status, 200, "{body}");
    until(
        Duration::from_secs(20),
        "the ticker to come back",
        || async {
            let t = tree(&p.base).await;
            let ticker = actor(&t, "/heartbeat/ticker");
            ticker["restarts"] == 1 && ticker["status"] == "running"
        },
    )
    .await;
    let t = tree(&p.base).await;
    let ticker = actor(&t, "/heartbeat/ticker");
    assert!(ticker["last_error"]["message"]
        .as_str()
        .unwrap()
        .contains("fault injected"));
    // Its siblings (started before it), its supervisor and the root were untouched.
    assert_eq!(actor(&t, "/heartbeat/publisher")["restarts"], 0);
    assert_eq!(actor(&t, "/heartbeat/beats")["restarts"], 0);
    assert_eq!(actor(&t, "/heartbeat")["restarts"], 0);
    assert_eq!(actor(&t, "/")["restarts"], 0);
    assert!(actor(&t, "/heartbeat/publisher")["last_error"].is_null());

    // Under rest_for_one, failing the publisher takes the ticker (started after it) along.
    let (status, _) = post(&p.base, "/api/actors/fail?path=/heartbeat/publisher", None).await;
    assert_eq!(status, 200);
    until(
        Duration::from_secs(20),
        "the publisher and the ticker to come back",
        || async {
            let t = tree(&p.base).await;
            actor(&t, "/heartbeat/publisher")["restarts"] == 1
                && actor(&t, "/heartbeat/ticker")["restarts"] == 2
                && actor(&t, "/heartbeat/ticker")["status"] == "running"
        },
    )
    .await;
    let t = tree(&p.base).await;
    assert_eq!(actor(&t, "/heartbeat")["restarts"], 0);
    assert_eq!(actor(&t, "/heartbeat/beats")["restarts"], 0);
    assert_eq!(actor(&t, "/heartbeat/beats/consumer-0")["restarts"], 0);

    // Failing the pipeline supervisor restarts the whole pipeline subtree through the root.
    let (status, _) = post(&p.base, "/api/actors/fail?path=/heartbeat", None).await;
    assert_eq!(status, 200);
    until(
        Duration::from_secs(20),
        "the pipeline to come back",
        || async {
            let t = tree(&p.base).await;
            actor(&t, "/heartbeat")["restarts"] == 1
                && actor(&t, "/heartbeat/ticker")["status"] == "running"
        },
    )
    .await;
    assert_eq!(actor(&tree(&p.base).await, "/")["restarts"], 0);
}

#[tokio::test]
async fn a_pipeline_past_its_budget_is_marked_failed_then_restarted_after_cool_down() {
    let toml = config(
        "[admin]\nfault_injection = true\ninsecure = true\n[pipelines.heartbeat.supervision]\nmax_restarts = 0\n",
    );
    let p = Process::start(&toml, &[], &[]);
    wait_ready(&p.base).await;
    assert_eq!(
        post(&p.base, "/api/actors/fail?path=/heartbeat/ticker", None)
            .await
            .0,
        200
    );
    until(
        Duration::from_secs(10),
        "the pipeline to be marked failed",
        || async { actor(&tree(&p.base).await, "/heartbeat")["status"] == "failed" },
    )
    .await;
    let (status, body) = get(&p.base, "/ready").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("NOT READY\nheartbeat: failed\n# kafka: embedded"),
        "{body}"
    );
    assert!(get(&p.base, "/health").await.1.starts_with("DEGRADED\n"));
    let metrics = get(&p.base, "/metrics").await.1;
    assert!(
        metrics.contains("actord_pipeline_up{pipeline=\"heartbeat\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("actord_supervisor_budget_exhausted_total{path=\"/heartbeat\"} 1"),
        "{metrics}"
    );
    // The cool-down is 1 s; then the root starts the pipeline again.
    wait_ready(&p.base).await;
    let t = tree(&p.base).await;
    assert_eq!(actor(&t, "/heartbeat")["restarts"], 1);
    assert!(actor(&t, "/heartbeat")["last_error"]["message"]
        .as_str()
        .unwrap()
        .contains("restart budget exhausted"));
    assert!(p.log().contains("restart budget exhausted"));
}

#[tokio::test]
async fn fail_fast_exits_non_zero_when_a_pipeline_gives_up() {
    let toml = "[admin]\nfault_injection = true\ninsecure = true\n[runtime]\nfail_fast = true\n[pipelines.heartbeat]\ninterval = \"100ms\"\n[pipelines.heartbeat.supervision]\nmax_restarts = 0\n";
    let mut p = Process::start(toml, &[], &[]);
    wait_ready(&p.base).await;
    assert_eq!(
        post(&p.base, "/api/actors/fail?path=/heartbeat/ticker", None)
            .await
            .0,
        200
    );
    let status = p.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "log:\n{}", p.log());
}

#[tokio::test]
async fn sigterm_stops_pipelines_gracefully_and_exits_zero() {
    let mut p = Process::start(&config(""), &["-v"], &[]);
    wait_ready(&p.base).await;
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", p.log());
    let log = p.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("actord stopped"), "{log}");
}

#[tokio::test]
async fn environment_names_override_the_file() {
    let p = Process::start(
        &config(""),
        &[],
        &[
            ("KAFKA_BROKERS", "broker-a:9092,broker-b:9092"),
            ("ACTORD_HEARTBEAT_INTERVAL_MS", "50"),
        ],
    );
    wait_ready(&p.base).await;
    let info: serde_json::Value = serde_json::from_str(&get(&p.base, "/api/info").await.1).unwrap();
    assert_eq!(info["kafka"]["brokers"], "broker-a:9092,broker-b:9092");
    // 50 ms beats: at least 10 within a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let beats = actor(&tree(&p.base).await, "/heartbeat/ticker")["counters"]["records"]
        .as_u64()
        .unwrap();
    assert!(beats >= 10, "{beats} beats");
}

#[tokio::test]
async fn env_file_is_loaded_first() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join(".env");
    std::fs::write(&env_file, "# comment\nKAFKA_BROKERS=from-env-file:9092\n").unwrap();
    let p = Process::start(
        &config(""),
        &["--env-file", env_file.to_str().unwrap()],
        &[],
    );
    wait_ready(&p.base).await;
    let info: serde_json::Value = serde_json::from_str(&get(&p.base, "/api/info").await.1).unwrap();
    assert_eq!(info["kafka"]["brokers"], "from-env-file:9092");
}

#[test]
fn config_errors_exit_2_naming_file_key_and_expectation() {
    let (code, _, err) = run_to_end(
        &["check"],
        Some("[runtime]\ncool_down = \"whenever\"\n[admin]\nlisten = \"x\"\n"),
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("custom.toml: runtime.cool_down: expected a duration"),
        "{err}"
    );
    assert!(
        err.contains("custom.toml: admin.listen: expected a socket address"),
        "{err}"
    );
    let (code, _, err) = run_to_end(&[], Some(""), &[("ACTORD_FAIL_FAST", "maybe")]);
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "environment variable ACTORD_FAIL_FAST: runtime.fail_fast: expected true or false"
        ),
        "{err}"
    );
    let (code, _, err) = run_to_end(&["--enable", "heartbeat,warp-drive"], None, &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown pipeline \"warp-drive\"; valid names: heartbeat"),
        "{err}"
    );
}

#[test]
fn check_prints_the_planned_tree_from_the_embedded_default() {
    let (code, out, err) = run_to_end(&["check"], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("<embedded supervision.toml>"), "{out}");
    assert!(out.contains("heartbeat supervisor"), "{out}");
    assert!(out.contains("    publisher worker"), "{out}");
    assert!(out.contains("    ticker worker"), "{out}");
    assert!(out.contains("      consumer-0 worker"), "{out}");
}

#[test]
fn version_flag() {
    let (code, out, _) = run_to_end(&["--version"], None, &[]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("actord {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn tree_command_prints_the_live_tree() {
    let p = Process::start(&config(""), &[], &[]);
    wait_ready(&p.base).await;
    let admin = p.base.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_to_end(&["tree", "--admin", &admin], None, &[]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("# kafka: embedded in-process broker at 127.0.0.1:"),
        "the embedded broker is named first: {out}"
    );
    let lines = &lines[1..];
    assert!(lines[0].starts_with("pipeline heartbeat  up"), "{out}");
    assert!(lines[1].starts_with("/  supervisor  running"), "{out}");
    assert!(
        lines[2].starts_with("└─ heartbeat  supervisor  running"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("   └─ ticker  worker  running")),
        "{out}"
    );
}

#[tokio::test]
async fn an_outside_client_can_produce_into_the_embedded_broker() {
    let p = Process::start(&config(""), &[], &[]);
    wait_ready(&p.base).await;
    let info: serde_json::Value = serde_json::from_str(&get(&p.base, "/api/info").await.1).unwrap();
    let bootstrap = info["kafka"]["bootstrap"].as_str().unwrap().to_owned();
    // 30 beats from outside plus one record that is not a beat.
    let mut payloads: Vec<String> = (0..30)
        .map(|i| format!(r#"{{"seq":{},"at":"2025-01-01T00:00:00Z"}}"#, 1_000_000 + i))
        .collect();
    payloads.push("not a beat".into());
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    crate::kafka::produce_raw(&bootstrap, "actord.heartbeat", &refs).await;
    until(Duration::from_secs(30), "the poison record in the DLQ", || async {
        get(&p.base, "/metrics")
            .await
            .1
            .contains("actord_dlq_records_total{path=\"/heartbeat/beats/dlq\",topic=\"actord.heartbeat\"} 1")
    })
    .await;
    let t = tree(&p.base).await;
    let ticked = actor(&t, "/heartbeat/ticker")["counters"]["records"]
        .as_u64()
        .unwrap();
    let written = actor(&t, "/heartbeat/beats/writer-0")["counters"]["records"]
        .as_u64()
        .unwrap();
    assert!(written >= 30, "only {written} beats written");
    assert!(
        written <= ticked + 30,
        "{written} written, {ticked} ticked + 30 from outside"
    );
    let dlq = crate::kafka::read_until(&bootstrap, "actord.heartbeat-dlq", |r| !r.is_empty());
    assert_eq!(dlq[0].0["original_message"], "not a beat");
    // Lag comes from librdkafka's statistics, every 5 s.
    until(Duration::from_secs(15), "the lag gauge", || async {
        get(&p.base, "/metrics")
            .await
            .1
            .contains("actord_kafka_consumer_lag{path=\"/heartbeat/beats/consumer-0\",topic=\"actord.heartbeat\"}")
    })
    .await;
}

/// Files below `dir` whose name ends with `suffix`.
fn count_files(dir: &std::path::Path, suffix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p, suffix)
            } else {
                usize::from(p.to_string_lossy().ends_with(suffix))
            }
        })
        .sum()
}

/// Runs of adaptive-card's entry `run` that succeeded.
async fn adaptive_card_runs(base: &str) -> u64 {
    let t = tree(base).await;
    actor(&t, "/adaptive-card")["schedules"][0]["runs"]["succeeded"]
        .as_u64()
        .unwrap_or(0)
}

/// The lines the shipped configuration's `/health` shows once data flows everywhere.
const SHIPPED_HEALTH: [&str; 12] = [
    "heartbeat.consumer: healthy",
    "recorder.timescaledb: healthy",
    "recorder.s3: healthy",
    "ftp-sync.servers: healthy",
    "adaptive-card.database: healthy",
    "adaptive-card.sales_org_worker: healthy",
    "adaptive-card.adaptive_card_worker: healthy",
    "adaptive-card.t2a: healthy",
    "# adaptive-card: T2A stand-in at http://127.0.0.1:",
    "commerce.orders: healthy",
    "commerce.postgres: healthy",
    "backfill.objects: healthy",
];

#[tokio::test]
async fn the_shipped_configuration_shows_data_flowing_in_every_pipeline() {
    // adaptive-card's streams in a Redis database of this test's own (the seed's stream names
    // are fixed); everything else as shipped. The file names it, as the shipped file names the
    // local Redis: REDIS_URL in the environment would be a deployment's, where the T2A
    // stand-in is refused.
    let redis = "redis://127.0.0.1:6379/13";
    let () = redis::cmd("FLUSHDB")
        .query_async(&mut crate::redis_streams::conn(redis).await)
        .await
        .unwrap();
    let shipped = include_str!("../../supervision.toml");
    let toml = shipped.replace(
        "redis_url = \"redis://127.0.0.1:6379/0\"",
        &format!("redis_url = \"{redis}\""),
    );
    assert_ne!(toml, shipped);
    let p = Process::start(&toml, &[], &[]);
    wait_ready(&p.base).await;
    let dir = p.dir().to_owned();
    // Conditions, not times: a loaded machine takes longer to get there, and the checks are
    // the same.
    until(
        Duration::from_secs(240),
        "data in every pipeline",
        || async {
            let metrics = get(&p.base, "/metrics").await.1;
            let beats = metrics
                .lines()
                .any(|l| l.starts_with("actord_heartbeat_beats_total") && !l.ends_with(" 0"));
            let ticks = metrics
                .lines()
                .any(|l| l.starts_with("actord_timescale_inserts_total") && !l.ends_with(" 0"));
            beats
                && ticks
                && count_files(&dir.join("data/objects/market-data"), ".parquet") > 0
                && count_files(&dir.join("data/ftp-sync/destination/archive"), ".bin") > 0
                && adaptive_card_runs(&p.base).await > 0
                // The backfill's run at start archives the demo's history.
                && count_files(&dir.join("data/objects/fms-temphum"), ".parquet") > 0
        },
    )
    .await;
    // The run at start went through both stages on the T2A stand-in and the demo's users.
    let material = std::fs::read_to_string(dir.join("data/adaptive-card/Material.csv")).unwrap();
    for org in ["1000", "2000", "3000"] {
        assert!(material.contains(&format!("{org}-M1")), "{material}");
    }
    // Every run ended well. A later due time may have come while a slow run was active (it is
    // then skipped) or be running now, so the last outcome alone says little.
    let t = tree(&p.base).await;
    let entry = &actor(&t, "/adaptive-card")["schedules"][0];
    assert_eq!(entry["name"], "run", "{entry:#}");
    assert!(entry["runs"]["succeeded"].as_u64() > Some(0), "{entry:#}");
    assert_eq!(entry["runs"]["failed"], 0, "{entry:#}");
    // Every component reports healthy: a component still settling (a circuit a slow start
    // opened, a connection being made again) is waited for; one that never gets there fails.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, health) = get(&p.base, "/health").await;
        let missing: Vec<&str> = SHIPPED_HEALTH
            .iter()
            .copied()
            .filter(|line| !health.contains(line))
            .collect();
        if status == 200 && missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health {status}, missing {missing:?}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let t = tree(&p.base).await;
    for path in [
        "/recorder/s3/writer-0",
        "/ftp-sync/jobs/writer-0",
        "/ftp-sync/demo/generator",
        "/adaptive-card/t2a-standin",
        "/adaptive-card/monitor",
        "/adaptive-card/sales-org/consumer-0",
        "/adaptive-card/adaptive-card/consumer-0",
        "/adaptive-card/scheduler",
    ] {
        assert_eq!(actor(&t, path)["status"], "running", "{path}");
    }
}

#[test]
fn an_admin_port_others_can_reach_refuses_to_start_without_a_token() {
    let (code, _, err) = run_to_end(&["--admin", "0.0.0.0:0"], Some(&config("")), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--admin: admin.listen: 0.0.0.0:0 is not a loopback address"),
        "{err}"
    );
    let (code, _, err) = run_to_end(&[], Some(&config("[admin]\nfault_injection = true\n")), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("admin.fault_injection: needs admin.token"),
        "{err}"
    );
    let (code, _, err) = run_to_end(
        &["check", "--admin", "0.0.0.0:0"],
        Some(&config("[admin]\nfault_injection = true\n")),
        &[("ACTORD_ADMIN_TOKEN", "t0ken")],
    );
    assert_eq!(code, 0, "a token opens both: {err}");
}

#[test]
fn demo_generators_run_only_on_the_embedded_broker_unless_asked_for() {
    let demos = |out: &str| out.matches("demo supervisor").count();
    let (code, out, err) = run_to_end(&["check"], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        demos(&out),
        4,
        "recorder, ftp-sync, commerce and backfill demos: {out}"
    );
    let real = [("KAFKA_BROKERS", "kafka-1.internal:9092")];
    let (code, out, err) = run_to_end(&["check"], None, &real);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        demos(&out),
        0,
        "no synthetic data into a real cluster: {out}"
    );
    let (code, out, err) = run_to_end(&["check", "--demo-into-cluster"], None, &real);
    assert_eq!(code, 0, "{err}");
    assert_eq!(demos(&out), 4, "{out}");
    // adaptive-card's T2A stand-in runs only while T2A_API_URL names no real API.
    let (code, out, err) = run_to_end(&["check"], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("t2a-standin worker"), "{out}");
    let api = [("T2A_API_URL", "https://api.t2a.example.com")];
    let (code, out, err) = run_to_end(&["check"], None, &api);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("t2a-standin"), "{out}");
}

#[test]
fn the_t2a_standin_refuses_a_deployments_database_and_redis_unless_asked_for() {
    // A seed deployment moved over: its environment names the database, T2A_API_URL is unset.
    let seed = [
        ("DB_HOST", "adaptive-db.internal"),
        ("DB_PASSWORD", "pg-s3cret"),
    ];
    let (code, _, err) = run_to_end(
        &["--enable", "adaptive-card", "--admin", "127.0.0.1:0"],
        None,
        &seed,
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("pipelines.adaptive-card.t2a.url: is \"standin\" (T2A_API_URL is not set)"),
        "{err}"
    );
    for expected in [
        "DB_HOST is set",
        "DB_PASSWORD is set",
        "PostgreSQL is on adaptive-db.internal",
        "expected T2A_API_URL naming the T2A API",
        "pipelines.adaptive-card.t2a_standin = true (ACTORD_ADAPTIVE_CARD_T2A_STANDIN=true)",
    ] {
        assert!(err.contains(expected), "{expected} not in {err}");
    }
    assert!(!err.contains("pg-s3cret"), "{err}");
    // A Redis named by the environment is a deployment's too, even on this host.
    let (code, _, err) = run_to_end(
        &["check"],
        None,
        &[("REDIS_URL", "redis://127.0.0.1:6379/3")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("REDIS_URL is set"), "{err}");
    // Asked for explicitly, the stand-in runs there.
    let asked = [
        seed[0],
        seed[1],
        ("ACTORD_ADAPTIVE_CARD_T2A_STANDIN", "true"),
    ];
    let (code, out, err) = run_to_end(&["check"], None, &asked);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("t2a-standin worker"), "{out}");
    // With the real API named, there is no stand-in to refuse.
    let real = [
        seed[0],
        seed[1],
        ("T2A_API_URL", "https://api.t2a.example.com"),
    ];
    let (code, out, err) = run_to_end(&["check"], None, &real);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("t2a-standin"), "{out}");
}

#[tokio::test]
async fn json_logs_carry_time_level_message_and_the_actor_path() {
    let p = Process::start(&config(""), &[], &[("ACTORD_LOG_FORMAT", "json")]);
    wait_ready(&p.base).await;
    let (status, body) = post(&p.base, "/api/actors/restart?path=/heartbeat/ticker", None).await;
    assert_eq!(status, 200, "{body}");
    let find = || {
        p.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "actor restarted by operator")
    };
    until(
        Duration::from_secs(10),
        "the restart in the log",
        || async { find().is_some() },
    )
    .await;
    let line = find().unwrap();
    assert_eq!(line["path"], "/heartbeat/ticker", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(line["timestamp"].as_str().unwrap()).is_ok(),
        "{line}"
    );
    for raw in p.log().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(raw).is_ok(),
            "every line is JSON: {raw}"
        );
    }
}

/// Pipelines stop together: one that cannot drain (its database went away) does not eat the
/// time another needs to flush and commit, and the whole stop fits in runtime.shutdown_timeout.
#[tokio::test]
async fn sigterm_stops_pipelines_together_within_the_shutdown_timeout() {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let schema = unique("shutdown").replace('-', "_");
    let toml = format!(
        r#"[runtime]
enable = ["heartbeat", "recorder"]
shutdown_timeout = "8s"
[pipelines.heartbeat]
interval = "100ms"
[pipelines.recorder]
demo = true
demo_rate = 200
batch_size = 50
batch_timeout = "200ms"
[pipelines.recorder.s3]
enabled = false
[pipelines.recorder.timescale]
host = "127.0.0.1"
port = {port}
user = "postgres"
database = "postgres"
schema = "{schema}"
"#,
        port = proxy.port
    );
    let mut p = Process::start(&toml, &["-v"], &[]);
    wait_ready(&p.base).await;
    until(Duration::from_secs(30), "rows written", || async {
        actor(&tree(&p.base).await, "/recorder/timescale/writer-0")["counters"]["records"].as_u64()
            > Some(0)
    })
    .await;
    // The database goes away: the recorder's writers retry and its consumer cannot drain.
    proxy.down();
    until(
        Duration::from_secs(20),
        "the recorder to hold unwritten batches",
        || {
            let log = p.log();
            async move { log.contains("sink write failed, retrying") }
        },
    )
    .await;
    let began = std::time::Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(30));
    let took = began.elapsed();
    let log = p.log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(
        took < Duration::from_millis(9_500),
        "took {took:?}; log:\n{log}"
    );
    // The heartbeat drained and committed although the recorder could not.
    assert!(
        log.lines()
            .any(|l| l.contains("consumer stopped") && l.contains("/heartbeat/beats/consumer-0")),
        "log:\n{log}"
    );
    let _ = crate::support::pg()
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await;
}

/// The heartbeat on a broker of its own with `shutdown_timeout` and `extra` TOML; once beats
/// flow the broker is frozen (SIGSTOP: its connections stay open, nothing comes back) and the
/// client's requests to it are left half a second to pile up.
async fn heartbeat_on_a_frozen_broker(
    shutdown_timeout: &str,
    extra: &str,
) -> (MockBroker, Process) {
    let mut broker = MockBroker::start(&[("actord.heartbeat", 2), ("actord.heartbeat-dlq", 1)]);
    let toml = format!(
        "[runtime]\nenable = [\"heartbeat\"]\nshutdown_timeout = \"{shutdown_timeout}\"\n\
         [pipelines.heartbeat]\ninterval = \"100ms\"\n{extra}"
    );
    let p = Process::start(&toml, &["-v"], &[("KAFKA_BROKERS", broker.bootstrap())]);
    wait_ready(&p.base).await;
    until(Duration::from_secs(30), "beats consumed", || async {
        actor(&tree(&p.base).await, "/heartbeat/beats/writer-0")["counters"]["records"].as_u64()
            > Some(0)
    })
    .await;
    broker.signal("STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    (broker, p)
}

/// A broker that stops answering while actord stops (frozen: its connections stay open, nothing
/// comes back): librdkafka's final commit and its consumer close wait for it in synchronous
/// code, yet the process exits 0 within its shutdown timeout instead of waiting for
/// librdkafka's request timeouts.
#[tokio::test]
async fn sigterm_exits_in_time_when_the_broker_stops_answering() {
    let (mut broker, mut p) = heartbeat_on_a_frozen_broker("6s", "").await;
    let began = std::time::Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(120));
    let took = began.elapsed();
    broker.signal("CONT");
    let log = p.log();
    // The shutdown timeout, and slack for a loaded machine.
    assert!(
        took < Duration::from_millis(8_500),
        "took {took:?}; log:\n{log}"
    );
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(log.contains("actord stopped"), "log:\n{log}");
}

/// A second signal exits at once with status 130, also while the stopped process waits for a
/// thread blocked in a client library (the broker frozen again; the pipeline's own stop budget
/// short, the process's long, so the wait is long).
#[tokio::test]
async fn a_second_signal_exits_at_once_while_the_exit_waits_for_a_blocked_thread() {
    let (mut broker, mut p) = heartbeat_on_a_frozen_broker(
        "60s",
        "[pipelines.heartbeat.supervision]\nshutdown_timeout = \"4s\"\n",
    )
    .await;
    p.signal("TERM");
    until(Duration::from_secs(30), "the tree to stop", || {
        let log = p.log();
        async move { log.contains("actord stopped") }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "the process did not wait for its blocked thread; log:\n{}",
        p.log()
    );
    let began = std::time::Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(60));
    let took = began.elapsed();
    broker.signal("CONT");
    let log = p.log();
    assert_eq!(status.code(), Some(130), "log:\n{log}");
    assert!(took < Duration::from_secs(5), "took {took:?}; log:\n{log}");
}

#[test]
fn check_refuses_a_budget_that_never_escalates_and_a_strategy_that_breaks_a_path() {
    let toml = "[pipelines.heartbeat.supervision]\nwithin = \"10s\"\n[pipelines.heartbeat.supervision.paths.beats]\nstrategy = \"one_for_all\"\n";
    let (code, out, err) = run_to_end(&["check"], Some(toml), &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("pipelines.heartbeat.supervision.within: at /heartbeat the restart budget can never be spent"),
        "{err}"
    );
    assert!(
        err.contains("pipelines.heartbeat.supervision.paths.\"beats\".strategy: one_for_all breaks the wiring of /heartbeat/beats"),
        "{err}"
    );
    // A run refuses it too.
    let (code, _, err) = run_to_end(&[], Some(toml), &[]);
    assert_ne!(code, 0, "{err}");
}

#[test]
fn check_honours_a_supervisor_shutdown_timeout_and_warns_when_budgets_cannot_fit() {
    let toml = "[runtime]\nshutdown_timeout = \"10s\"\n[pipelines.heartbeat.supervision]\nshutdown_timeout = \"7s\"\n";
    let (code, out, err) = run_to_end(&["check"], Some(toml), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("heartbeat supervisor [Permanent, shutdown 7s]"),
        "{out}"
    );
    assert!(
        out.contains("warning: pipelines.heartbeat.supervision.shutdown_timeout = 7s is less than"),
        "{out}"
    );
    let toml = "[runtime]\nshutdown_timeout = \"10s\"\n";
    let (code, out, _) = run_to_end(&["check"], Some(toml), &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("warning: pipeline heartbeat: stopping may take up to"),
        "{out}"
    );
}
