//! The heartbeat's scheduled entry from outside: run now through the admin port, the entry in `/api/tree`, `actord tree` and `/metrics`, and two processes sharing a Redis lease.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    actor, get, post, promtool_accepts, run_to_end, tree, unique, until, wait_ready, Process,
};

const REDIS: &str = "redis://127.0.0.1:6379";

/// A heartbeat with a scheduled entry and `schedule` as its section.
fn heartbeat(hold: &str, schedule: &str) -> String {
    format!(
        "[pipelines.heartbeat]\ninterval = \"200ms\"\nschedule_hold = \"{hold}\"\n\
         [pipelines.heartbeat.schedule]\n{schedule}\n\
         [runtime]\nenable = [\"heartbeat\"]\ncool_down = \"1s\"\nshutdown_timeout = \"10s\"\n"
    )
}

/// The heartbeat's entry `beat` as `/api/tree` shows it on the pipeline's node.
async fn beat_entry(base: &str) -> Value {
    let tree = tree(base).await;
    let node = actor(&tree, "/heartbeat");
    node["schedules"]
        .as_array()
        .and_then(|s| s.iter().find(|e| e["name"] == "beat"))
        .cloned()
        .unwrap_or_else(|| panic!("no entry beat on /heartbeat: {node:#}"))
}

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

#[tokio::test]
async fn run_now_the_tree_the_cli_and_the_metrics_show_the_scheduled_entry() {
    // A cron entry that is not due during the test (1 January); each run lasts 3 s.
    let mut process = Process::start(&heartbeat("3s", "cron = \"0 0 1 1 *\""), &[], &[]);
    wait_ready(&process.base).await;
    let base = process.base.clone();

    let entry = beat_entry(&base).await;
    assert_eq!(entry["schedule"], "0 0 1 1 *");
    assert_eq!(entry["time_zone"], "Asia/Seoul");
    assert_eq!(entry["lease"], "none");
    assert!(entry["next_run"].as_str().is_some(), "{entry:#}");
    assert!(entry["last_outcome"].is_null(), "{entry:#}");
    assert!(entry["active"].is_null(), "{entry:#}");

    let (status, body) = post(&base, "/api/pipelines/heartbeat/run", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "started run 1 of heartbeat/beat\n");
    // The run holds for 3 s: a second request meets it and is refused.
    let (status, body) = post(&base, "/api/pipelines/heartbeat/run?entry=beat", None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already running (run 1)"), "{body}");
    let active = beat_entry(&base).await["active"].clone();
    assert_eq!(active["run_id"], 1, "{active:#}");
    assert_eq!(active["trigger"], "manual", "{active:#}");

    let (status, body) = post(&base, "/api/pipelines/heartbeat/run?entry=nope", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no schedule entry named \"nope\""), "{body}");
    let (status, body) = post(&base, "/api/pipelines/recorder/run", None).await;
    assert_eq!(status, 404, "{body}");
    let client = reqwest::Client::new();
    let unguarded = client
        .post(format!("{base}/api/pipelines/heartbeat/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unguarded.status().as_u16(),
        403,
        "a POST without the request header is refused"
    );

    until(Duration::from_secs(15), "the run to succeed", || async {
        beat_entry(&base).await["last_outcome"]["outcome"] == "succeeded"
    })
    .await;
    let entry = beat_entry(&base).await;
    assert!(entry["active"].is_null(), "{entry:#}");
    let took = entry["last_duration_seconds"].as_f64().unwrap();
    assert!((3.0..10.0).contains(&took), "the run held for 3 s: {took}");
    assert_eq!(entry["runs"]["started"], 1);
    assert_eq!(entry["runs"]["succeeded"], 1);
    assert_eq!(entry["last_outcome"]["summary"]["records"], 1);
    // The scheduler is an actor of the pipeline's subtree.
    let scheduler = actor(&tree(&base).await, "/heartbeat/scheduler");
    assert_eq!(scheduler["status"], "running");
    assert_eq!(scheduler["counters"]["runs_succeeded"], 1);
    let (status, all) = get(&base, "/api/schedules").await;
    assert_eq!(status, 200);
    let all: Value = serde_json::from_str(&all).unwrap();
    assert_eq!(all["heartbeat"][0]["name"], "beat");

    // Published, delivered and read back by the consumer path.
    until(
        Duration::from_secs(15),
        "the scheduled beat to be read back",
        || async {
            let (_, m) = get(&base, "/metrics").await;
            sample(&m, "actord_heartbeat_scheduled_beats_total", &[]).unwrap_or(0.0) >= 1.0
        },
    )
    .await;
    let (_, metrics) = get(&base, "/metrics").await;
    let labels = ["pipeline=\"heartbeat\"", "entry=\"beat\""];
    for (name, want) in [
        ("actord_schedule_runs_started_total", 1.0),
        ("actord_schedule_runs_succeeded_total", 1.0),
    ] {
        assert_eq!(sample(&metrics, name, &labels), Some(want), "{name}");
    }
    assert!(
        sample(
            &metrics,
            "actord_schedule_last_success_timestamp_seconds",
            &labels
        )
        .unwrap()
            > 1.7e9
    );
    assert!(metrics.contains("# HELP actord_schedule_runs_started_total"));
    promtool_accepts(&metrics);

    let addr = base.trim_start_matches("http://");
    let (code, out, err) = run_to_end(&["tree", "--admin", addr], None, &[]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("schedule beat:"))
        .unwrap_or_else(|| panic!("no schedule line in:\n{out}"));
    assert!(
        line.contains("0 0 1 1 * (Asia/Seoul), lease none  next=20"),
        "{line}"
    );
    assert!(line.contains("last=succeeded at 20"), "{line}");
    assert!(line.contains("took=3."), "{line}");
    assert!(line.contains("active=none"), "{line}");
    assert!(
        line.contains("runs: 1 started, 1 ok, 0 failed, 0 skipped"),
        "{line}"
    );

    // With the pipeline stopped there is no scheduler to ask.
    let (status, body) = post(&base, "/api/pipelines/heartbeat/stop", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&base, "/api/pipelines/heartbeat/run", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not running"), "{body}");

    process.signal("TERM");
    assert!(process.wait_exit(Duration::from_secs(20)).success());
}

#[tokio::test]
async fn a_pipeline_without_a_schedule_has_nothing_to_run() {
    let process = Process::start(
        "[pipelines.heartbeat]\ninterval = \"200ms\"\n[runtime]\nenable = [\"heartbeat\"]\n",
        &[],
        &[],
    );
    wait_ready(&process.base).await;
    let (status, body) = post(&process.base, "/api/pipelines/heartbeat/run", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("has no scheduled entries"), "{body}");
    let node = actor(&tree(&process.base).await, "/heartbeat");
    assert!(node.get("schedules").is_none(), "{node:#}");
}

#[tokio::test]
async fn a_schedule_without_a_lease_store_address_is_a_config_error() {
    let (code, _, err) = run_to_end(
        &["check"],
        Some(&heartbeat("0s", "every = \"1m\"\nlease = \"redis\"")),
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("pipelines.heartbeat.schedule.lease_url: needed for lease = \"redis\""),
        "{err}"
    );
    let (code, out, err) = run_to_end(
        &["check"],
        Some(&heartbeat("0s", "cron = \"*/5 * * * *\"")),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("scheduler worker"), "{out}");
}

/// `(started, skipped, ran elsewhere)` of the entry in one process.
async fn counts(base: &str) -> (u64, u64, u64) {
    let entry = beat_entry(base).await;
    let runs = &entry["runs"];
    assert_eq!(runs["failed"], 0, "{entry:#}");
    let (_, metrics) = get(base, "/metrics").await;
    let elsewhere = sample(
        &metrics,
        "actord_schedule_runs_skipped_total",
        &["entry=\"beat\"", "reason=\"ran_elsewhere\""],
    )
    .unwrap_or(0.0) as u64;
    (
        runs["started"].as_u64().unwrap(),
        runs["skipped"].as_u64().unwrap(),
        elsewhere,
    )
}

#[tokio::test]
async fn two_processes_sharing_a_redis_lease_run_each_due_minute_once() {
    let namespace = unique("it").replace('-', "_");
    let toml = heartbeat(
        "0s",
        &format!(
            "cron = \"* * * * *\"\nlease = \"redis\"\nlease_url = \"{REDIS}\"\n\
             lease_namespace = \"{namespace}\"\nlease_ttl = \"10s\""
        ),
    );
    let started = Instant::now();
    let a = Process::start(&toml, &[], &[]);
    let b = Process::start(&toml, &[], &[]);
    wait_ready(&a.base).await;
    wait_ready(&b.base).await;

    // Each process fires every minute; whoever claims a minute first runs it, the other is
    // told it already ran. Two minutes that both processes saw are enough.
    let deadline = Duration::from_secs(150);
    let mut settled = None;
    while started.elapsed() < deadline {
        let (ca, cb) = (counts(&a.base).await, counts(&b.base).await);
        let seen = |c: (u64, u64, u64)| c.0 + c.1;
        let idle = beat_entry(&a.base).await["active"].is_null()
            && beat_entry(&b.base).await["active"].is_null();
        if seen(ca).min(seen(cb)) >= 2 && idle {
            // Give a due time one process just fired time to reach the other's counts.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let again = (counts(&a.base).await, counts(&b.base).await);
            if again == (ca, cb) {
                settled = Some(again);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ((sa, ka, ea), (sb, kb, eb)) = settled.unwrap_or_else(|| {
        panic!(
            "two due minutes did not pass in both within {deadline:?}; logs:\n{}\n---\n{}",
            a.log(),
            b.log()
        )
    });
    let due_minutes = (sa + ka).max(sb + kb);
    assert_eq!(
        sa + sb,
        due_minutes,
        "each due minute ran once in total: a started {sa}, skipped {ka}; b started {sb}, skipped {kb}"
    );
    assert!(sa + sb >= 2);
    assert_eq!(
        (ea, eb),
        (ka, kb),
        "every skip was a due time the other process had claimed"
    );

    // Leave no keys behind in the shared Redis.
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let base_key = format!("{namespace}:lease:{{heartbeat/beat}}");
    let _: i64 = redis::cmd("DEL")
        .arg(&base_key)
        .arg(format!("{base_key}:last_due"))
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Between runs a scheduled pipeline is judged by its last run: a due time skipped because the
/// lease store did not answer makes it not ready (with the reason on `/ready` and
/// `actord_pipeline_up` at 0) until a later run succeeds.
#[tokio::test]
async fn a_scheduled_pipeline_whose_last_run_could_not_run_is_not_ready() {
    let port = crate::support::free_port();
    let namespace = unique("it").replace('-', "_");
    let toml = heartbeat(
        "0s",
        &format!(
            "every = \"2s\"\nlease = \"redis\"\nlease_url = \"redis://127.0.0.1:{port}\"\n\
             lease_namespace = \"{namespace}\"\nlease_ttl = \"10s\""
        ),
    );
    let process = Process::start(&toml, &[], &[]);
    let base = process.base.clone();
    let up = |metrics: &str| sample(metrics, "actord_pipeline_up", &["pipeline=\"heartbeat\""]);

    until(Duration::from_secs(30), "the admin port", || async {
        reqwest::get(format!("{base}/live")).await.is_ok()
    })
    .await;
    // The lease store is down: every due time is skipped, it cannot take its lease.
    until(Duration::from_secs(30), "the skipped run", || async {
        beat_entry(&base).await["last_outcome"]["reason"] == "lease_unavailable"
    })
    .await;
    let (status, body) = get(&base, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("/heartbeat/scheduler last due time of beat skipped: lease unavailable"),
        "{body}"
    );
    assert_eq!(up(&get(&base, "/metrics").await.1), Some(0.0));

    // The store comes back; the next run succeeds and the pipeline is up again.
    let dir = tempfile::tempdir().unwrap();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    until(Duration::from_secs(10), "the lease store", || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    until(Duration::from_secs(30), "a successful run", || async {
        beat_entry(&base).await["last_outcome"]["outcome"] == "succeeded"
    })
    .await;
    let (status, body) = get(&base, "/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up(&get(&base, "/metrics").await.1), Some(1.0));
    let _ = redis.kill();
    let _ = redis.wait();
}
