//! Reloading the configuration (SIGHUP, `POST /api/config/reload`) and pausing pipelines, on
//! the actord binary, driven from outside as an operator does.

use std::time::Duration;

use serde_json::Value;

use crate::recorder::{
    bootstrap_of, count, drop_schema, fresh_schema, produce, recorder_config, tick, BASE,
};
use crate::support::{
    actor, config, flatten, get, pg, post, run_to_end, tree, unique, until, wait_ready, Process,
};

/// The recorder in `schema` and ftp-sync on topics of its own, both on the embedded broker.
fn recorder_and_ftp_sync(schema: &str, jobs: &str, batch_size: u32) -> String {
    recorder_config(schema, 5432, "")
        .replace(
            "enable = [\"recorder\"]",
            "enable = [\"recorder\", \"ftp-sync\"]",
        )
        .replace("batch_size = 200", &format!("batch_size = {batch_size}"))
        + &format!(
            "[pipelines.ftp-sync]\ntopics = [\"{jobs}\"]\ngroup = \"{jobs}\"\ndemo = false\n"
        )
}

fn config_file(p: &Process) -> std::path::PathBuf {
    p.dir().join("supervision.toml")
}

/// Every actor at or below `top`, with its restart count.
fn restarts_below(t: &Value, top: &str) -> Vec<(String, u64)> {
    flatten(t)
        .into_iter()
        .filter(|a| {
            let path = a["path"].as_str().unwrap_or("");
            path == top || path.starts_with(&format!("{top}/"))
        })
        .map(|a| {
            (
                a["path"].as_str().unwrap().to_owned(),
                a["restarts"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Ticks `range` into the embedded broker of `p`.
async fn ticks(bootstrap: &str, range: std::ops::Range<i64>) {
    produce(
        bootstrap,
        "market.tick",
        range.map(|i| tick(i, BASE)).collect(),
    )
    .await;
}

/// Every tick volume `0..n` is in the table exactly once.
async fn exactly_once(schema: &str, n: i64) {
    let row = pg()
        .await
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT volume), min(volume), max(volume) FROM \"{schema}\".tick_data"
            ),
            &[],
        )
        .await
        .unwrap();
    let (all, distinct, min, max): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((all, distinct, min, max), (n, n, 0, n - 1));
}

#[tokio::test]
async fn a_changed_batch_size_and_sighup_restart_only_the_recorder() {
    let schema = fresh_schema();
    let jobs = unique("jobs");
    let mut p = Process::start(&recorder_and_ftp_sync(&schema, &jobs, 200), &[], &[]);
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    ticks(&bootstrap, 0..300).await;
    until(Duration::from_secs(60), "300 ticks", || async {
        count(&schema, "tick_data").await == 300
    })
    .await;
    let before = tree(&p.base).await;
    let ftp_before = restarts_below(&before, "/ftp-sync");
    assert!(ftp_before.len() > 3, "{ftp_before:?}");
    assert!(ftp_before.iter().all(|(_, n)| *n == 0), "{ftp_before:?}");

    // The same file again changes nothing.
    p.signal("HUP");
    until(Duration::from_secs(20), "the first reload", || async {
        p.log().contains("SIGHUP reload done")
    })
    .await;
    assert_eq!(actor(&tree(&p.base).await, "/recorder")["restarts"], 0);

    std::fs::write(config_file(&p), recorder_and_ftp_sync(&schema, &jobs, 50)).unwrap();
    p.signal("HUP");
    until(
        Duration::from_secs(60),
        "the recorder to restart",
        || async {
            let t = tree(&p.base).await;
            let r = actor(&t, "/recorder");
            r["restarts"] == 1 && get(&p.base, "/ready").await.0 == 200
        },
    )
    .await;
    let after = tree(&p.base).await;
    assert_eq!(restarts_below(&after, "/ftp-sync"), ftp_before);
    assert_eq!(actor(&after, "/")["restarts"], 0);
    let log = p.log();
    assert!(
        log.contains("restarted: recorder; added: none; removed: none; unchanged: ftp-sync"),
        "{log}"
    );
    // Nothing was lost or written twice across the restart.
    ticks(&bootstrap, 300..600).await;
    until(Duration::from_secs(60), "600 ticks", || async {
        count(&schema, "tick_data").await == 600
    })
    .await;
    exactly_once(&schema, 600).await;
    drop_schema(&schema).await;
}

#[tokio::test]
async fn a_reload_adds_and_removes_pipelines_and_refuses_an_invalid_file() {
    let jobs = unique("jobs");
    let token = "reload-s3cret";
    let base = config(&format!(
        "[admin]\ntoken = \"{token}\"\n[pipelines.ftp-sync]\ntopics = [\"{jobs}\"]\ngroup = \"{jobs}\"\ndemo = false\n"
    ));
    let mut p = Process::start(&base, &[], &[]);
    wait_ready(&p.base).await;
    let t = tree(&p.base).await;
    assert!(flatten(&t).iter().all(|a| a["path"] != "/ftp-sync"));

    // runtime.enable gains ftp-sync: it starts, heartbeat is untouched.
    let with_ftp = base.replace(
        "[runtime]\n",
        "[runtime]\nenable = [\"heartbeat\", \"ftp-sync\"]\n",
    );
    std::fs::write(config_file(&p), &with_ftp).unwrap();
    let (status, body) = post(&p.base, "/api/config/reload", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&p.base, "/api/config/reload", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["added"], serde_json::json!(["ftp-sync"]), "{body}");
    assert_eq!(
        reply["unchanged"],
        serde_json::json!(["heartbeat"]),
        "{body}"
    );
    assert_eq!(reply["restarted"], serde_json::json!([]), "{body}");
    wait_ready(&p.base).await;
    let t = tree(&p.base).await;
    assert_eq!(actor(&t, "/ftp-sync")["status"], "running");
    assert!(restarts_below(&t, "/heartbeat")
        .iter()
        .all(|(_, n)| *n == 0));
    let (_, health) = get(&p.base, "/health").await;
    assert!(health.contains("ftp-sync."), "{health}");
    let (_, metrics) = get(&p.base, "/metrics").await;
    assert!(
        metrics.contains("actord_pipeline_up{pipeline=\"ftp-sync\"} 1"),
        "{metrics}"
    );

    // An invalid file is refused with every problem named, and nothing changes: through the
    // admin port and through SIGHUP alike.
    let invalid = with_ftp.replace("interval = \"100ms\"", "interval = \"often\"");
    std::fs::write(config_file(&p), &invalid).unwrap();
    let (status, body) = post(&p.base, "/api/config/reload", Some(token)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("reload refused, nothing changed"), "{body}");
    assert!(body.contains("pipelines.heartbeat.interval"), "{body}");
    p.signal("HUP");
    until(
        Duration::from_secs(20),
        "the refusal in the log",
        || async {
            p.log()
                .matches("configuration reload refused, nothing changed")
                .count()
                >= 2
        },
    )
    .await;
    let (code, _, err) = run_to_end(&["check"], Some(&invalid), &[]);
    assert_eq!(code, 2, "actord check refuses it too: {err}");
    let t = tree(&p.base).await;
    assert_eq!(actor(&t, "/ftp-sync")["status"], "running");
    assert!(restarts_below(&t, "/ftp-sync").iter().all(|(_, n)| *n == 0));
    assert!(restarts_below(&t, "/heartbeat")
        .iter()
        .all(|(_, n)| *n == 0));
    assert_eq!(get(&p.base, "/ready").await.0, 200);

    // Back to heartbeat alone: ftp-sync stops and leaves the tree and the health report.
    std::fs::write(config_file(&p), &base).unwrap();
    let (status, body) = post(&p.base, "/api/config/reload", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["removed"], serde_json::json!(["ftp-sync"]), "{body}");
    let t = tree(&p.base).await;
    assert!(flatten(&t).iter().all(|a| a["path"] != "/ftp-sync"));
    let (status, health) = get(&p.base, "/health").await;
    assert_eq!(status, 200, "{health}");
    assert!(!health.contains("ftp-sync."), "{health}");
    let (_, metrics) = get(&p.base, "/metrics").await;
    assert!(
        !metrics.contains("actord_pipeline_up{pipeline=\"ftp-sync\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("actord_config_reloads_total{outcome=\"refused\"} 2"));
    assert!(restarts_below(&t, "/heartbeat")
        .iter()
        .all(|(_, n)| *n == 0));
}

#[tokio::test]
async fn pause_and_resume_lose_nothing_and_show_everywhere() {
    let schema = fresh_schema();
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &[]);
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    ticks(&bootstrap, 0..500).await;
    // Paused while ticks are on their way: what is in flight finishes.
    let (status, body) = post(&p.base, "/api/pipelines/recorder/pause", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("paused recorder"), "{body}");
    until(Duration::from_secs(30), "nothing in flight", || async {
        let t = tree(&p.base).await;
        actor(&t, "/recorder/timescale/consumer-0")["counters"]["in_flight"] == 0
    })
    .await;
    let t = tree(&p.base).await;
    assert_eq!(actor(&t, "/recorder")["paused"], true);
    assert_eq!(actor(&t, "/recorder/timescale/consumer-0")["paused"], true);
    let (_, live) = get(&p.base, "/api/live").await;
    let live: Value = serde_json::from_str(&live).unwrap();
    assert_eq!(live["pipelines"][0]["paused"], true, "{live}");
    let (status, health) = get(&p.base, "/health").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("# paused: recorder"), "{health}");
    let (_, metrics) = get(&p.base, "/metrics").await;
    assert!(
        metrics.contains("actord_pipeline_paused{pipeline=\"recorder\"} 1"),
        "{metrics}"
    );
    let (code, out, err) = run_to_end(&["tree", "--admin", &p.base], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pipeline recorder  up  paused"), "{out}");

    // While paused nothing new is read.
    let written = count(&schema, "tick_data").await;
    ticks(&bootstrap, 500..1000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&schema, "tick_data").await, written);

    let (status, body) = post(&p.base, "/api/pipelines/recorder/resume", None).await;
    assert_eq!(status, 200, "{body}");
    until(Duration::from_secs(60), "1000 ticks", || async {
        count(&schema, "tick_data").await == 1000
    })
    .await;
    exactly_once(&schema, 1000).await;
    let t = tree(&p.base).await;
    assert_eq!(actor(&t, "/recorder")["paused"], false);
    // Waiting while paused was not taken for being stuck.
    assert!(restarts_below(&t, "/recorder").iter().all(|(_, n)| *n == 0));
    let (_, metrics) = get(&p.base, "/metrics").await;
    assert!(metrics.contains("actord_pipeline_paused{pipeline=\"recorder\"} 0"));
    // Offsets kept: the committed offsets cover every tick.
    let next: i64 = pg()
        .await
        .query_one(
            &format!("SELECT sum(next_offset)::BIGINT FROM \"{schema}\".actord_offsets WHERE consumer_group = 'data-recorder-group-timescale' AND topic = 'market.tick'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 1000);
    drop_schema(&schema).await;
}
