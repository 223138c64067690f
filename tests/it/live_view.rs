//! The operator's live view: the page at `/` in a real headless Chromium (driven over WebDriver
//! by chromedriver), the event stream behind it, and `actord tree` run as a separate process.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{config, free_port, get, post, run_to_end, until, wait_ready, Process};

/// A chromedriver process on a free port, with one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver (Debian package chromium-driver; scripts/services.sh installs it)",
            );
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        until(
            Duration::from_secs(20),
            "chromedriver to answer",
            || async {
                match http.get(format!("{base}/status")).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                }
            },
        )
        .await;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,900"]
            }
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let v: Value = req.send().await.expect(&url).json().await.expect("JSON");
        if v["value"].get("error").is_some() {
            panic!("webdriver {path}: {v}");
        }
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The text of the first element matching `css`, or null.
    async fn text(&self, css: &str) -> Value {
        self.eval(&format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        ))
        .await
    }

    /// A real click (mouse events through the browser) on the element matching `css`.
    async fn click(&self, css: &str) {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned();
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("element")
            .to_owned();
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Saves a PNG of the page under the test target dir and returns its path.
    async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = decode_base64(b64.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Waits until the text at `css` satisfies `ok`, failing with what it showed last.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.text(css).await;
            if let Some(s) = t.as_str() {
                if ok(s) {
                    return s.to_owned();
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; {css} shows {t}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (and its Chromium) before the driver goes.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = reqwest::Client::new().delete(url).send().await;
            });
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..data.len()]);
    }
    out
}

const TICKER: &str = r#"tr[data-path="/heartbeat/ticker"]"#;

#[tokio::test]
async fn the_page_shows_the_live_tree_and_restarts_an_actor_in_chromium() {
    let p = Process::start(&config("[admin]\ntoken = \"s3cret\"\n"), &[], &[]);
    wait_ready(&p.base).await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/", p.base)).await;

    // The tree arrives over the event stream: every actor, with its state and counters.
    browser
        .wait_text(&format!("{TICKER} td.state"), "the ticker running", |s| {
            s.contains("running")
        })
        .await;
    for path in [
        "/",
        "/heartbeat",
        "/heartbeat/beats/consumer-0",
        "/heartbeat/beats/dlq",
    ] {
        let css = format!(r#"tr[data-path="{path}"]"#);
        assert!(!browser.text(&css).await.is_null(), "no row for {path}");
    }
    assert_eq!(browser.text(&format!("{TICKER} td.restarts")).await, "0");
    browser
        .wait_text(&format!("{TICKER} td.progress"), "a progress age", |s| {
            s.ends_with(" s ago")
        })
        .await;
    browser
        .wait_text(&format!("{TICKER} td.counters"), "records counted", |s| {
            s.contains("records=")
        })
        .await;
    browser
        .wait_text(
            r#"tr[data-pipeline="heartbeat"] td.state"#,
            "the pipeline up",
            |s| s.starts_with("up"),
        )
        .await;
    assert_eq!(
        browser
            .text(r#"tr[data-pipeline="heartbeat"] td.dlq"#)
            .await,
        "0"
    );

    // Without the token the port refuses, and the page says why.
    browser.click(&format!("{TICKER} button.restart")).await;
    browser
        .wait_text("#notice", "the refusal", |s| s.starts_with("401"))
        .await;
    assert_eq!(browser.text(&format!("{TICKER} td.restarts")).await, "0");

    // With the token kept in the tab's session storage, restart goes through.
    browser.type_into("#token", "s3cret").await;
    browser.click("#token-form button[type=submit]").await;
    browser.click(&format!("{TICKER} button.restart")).await;
    browser
        .wait_text("#notice", "the restart", |s| {
            s == "restarted /heartbeat/ticker"
        })
        .await;
    browser
        .wait_text(
            &format!("{TICKER} td.restarts"),
            "the restart count to change",
            |s| s == "1",
        )
        .await;
    assert_eq!(
        browser
            .eval("return sessionStorage.getItem('actord-admin-token')")
            .await,
        "s3cret"
    );
    // The page loads nothing from outside the admin port.
    let foreign = browser
        .eval(
            "return performance.getEntriesByType('resource').map(e => e.name)\
             .filter(n => !n.startsWith(location.origin));",
        )
        .await;
    assert_eq!(foreign, json!([]), "resources from elsewhere");
    let shot = browser.screenshot("live-view.png").await;
    println!("screenshot of the live view: {}", shot.display());
}

/// Reads SSE events from `/api/live/events` until `n` have arrived.
async fn events(base: &str, n: usize) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let response = reqwest::get(format!("{base}/api/live/events"))
        .await
        .expect("event stream");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut body = response.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("an event within 10 s")
            .expect("stream open")
            .expect("chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !name.is_empty() {
                out.push((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_event_stream_sends_the_view_once_then_only_what_changed() {
    let p = Process::start(&config(""), &[], &[]);
    wait_ready(&p.base).await;
    let got = events(&p.base, 4).await;
    let (first, snapshot) = &got[0];
    assert_eq!(first, "snapshot");
    let actors = snapshot["actors"].as_array().expect("actors");
    assert!(actors.iter().any(|a| a["path"] == "/heartbeat/ticker"));
    let total = actors.len();
    for (name, ev) in &got[1..] {
        match name.as_str() {
            // The ticker beats every 100 ms, so its counters change; the supervisors do not.
            "delta" => {
                let changed = ev["changed"].as_array().expect("changed");
                assert!(
                    changed.len() < total,
                    "a delta repeats the whole tree: {ev}"
                );
                assert!(
                    changed.iter().all(|a| a["kind"] == "worker"),
                    "an idle supervisor was sent again: {ev}"
                );
            }
            "tick" => assert!(ev["now"].is_string()),
            other => panic!("unexpected event {other}: {ev}"),
        }
    }
    assert!(got[1..].iter().any(|(n, _)| n == "delta"), "{got:?}");
}

#[tokio::test]
async fn sigterm_ends_the_process_while_the_page_streams() {
    let mut p = Process::start(&config(""), &[], &[]);
    wait_ready(&p.base).await;
    let base = p.base.clone();
    // An open stream must not hold the graceful shutdown.
    let reader = tokio::spawn(async move { events(&base, 1000).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.signal("TERM");
    let status = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    reader.abort();
}

#[tokio::test]
async fn the_page_and_its_assets_come_from_the_binary() {
    let p = Process::start(&config(""), &[], &[]);
    wait_ready(&p.base).await;
    let (status, page) = get(&p.base, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"<script src="/assets/live.js">"#), "{page}");
    assert!(
        !page.contains("https://"),
        "the page names no outside resource"
    );
    let (status, js) = get(&p.base, "/assets/live.js").await;
    assert_eq!(status, 200);
    assert!(js.contains("EventSource('/api/live/events')"));
    assert!(js.contains("X-Actord-Request"));
    assert_eq!(get(&p.base, "/assets/live.css").await.0, 200);
    assert_eq!(get(&p.base, "/assets/nothing.js").await.0, 404);
}

fn tree_cmd(args: &[&str]) -> (i32, String, String) {
    run_to_end(args, None, &[])
}

#[tokio::test]
async fn tree_prints_states_restarts_ages_rates_and_pipelines() {
    let p = Process::start(&config(""), &[], &[]);
    wait_ready(&p.base).await;
    // Give the sampler a few seconds of beats to compute rates from.
    let base = p.base.clone();
    until(Duration::from_secs(15), "a rate for the ticker", || {
        let base = base.clone();
        async move {
            let (_, body) = get(&base, "/api/live").await;
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            v["actors"].as_array().into_iter().flatten().any(|a| {
                a["path"] == "/heartbeat/ticker" && a["records_per_second"].as_f64() > Some(0.0)
            })
        }
    })
    .await;
    let admin = p.base.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || tree_cmd(&["tree", "--admin", &admin]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("# kafka: embedded in-process broker at 127.0.0.1:"),
        "{out}"
    );
    assert!(lines[1].starts_with("pipeline heartbeat  up  "), "{out}");
    assert!(lines[1].contains("dlq=0"), "{out}");
    assert!(
        lines[2].starts_with("/  supervisor  running  restarts=0"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("└─ heartbeat  supervisor  running  restarts=0"),
        "{out}"
    );
    let ticker = lines
        .iter()
        .find(|l| l.contains("─ ticker  worker  running  restarts=0"))
        .unwrap_or_else(|| panic!("no ticker line: {out}"));
    assert!(ticker.contains("budget_left=5"), "{ticker}");
    assert!(ticker.contains(" s ago"), "progress age: {ticker}");
    assert!(ticker.contains("rate="), "{ticker}");
    assert!(!ticker.contains("rate=0/s"), "{ticker}");

    // After a restart the count shows.
    assert_eq!(
        post(&p.base, "/api/actors/restart?path=/heartbeat/ticker", None)
            .await
            .0,
        200
    );
    let admin = p.base.clone();
    let (code, out, _) =
        tokio::task::spawn_blocking(move || tree_cmd(&["tree", "--admin", &admin, "--json"]))
            .await
            .unwrap();
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("--json prints JSON");
    let ticker = v["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["path"] == "/heartbeat/ticker")
        .expect("ticker");
    assert_eq!(ticker["restarts"], 1);
    assert_eq!(v["pipelines"][0]["name"], "heartbeat");
}

#[tokio::test]
async fn tree_failed_shows_only_what_is_wrong() {
    let p = Process::start(
        &config("[admin]\nfault_injection = true\ninsecure = true\n[pipelines.heartbeat.supervision]\nbackoff_initial = \"8s\"\nbackoff_max = \"8s\"\n"),
        &[],
        &[],
    );
    wait_ready(&p.base).await;
    let admin = p.base.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || tree_cmd(&["tree", "--admin", &admin, "--failed"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no failed actors"), "{out}");

    let (status, body) = post(&p.base, "/api/actors/fail?path=/heartbeat/ticker", None).await;
    assert_eq!(status, 200, "{body}");
    let admin = p.base.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || tree_cmd(&["tree", "--admin", &admin, "--failed"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    let actors: Vec<&str> = out.lines().filter(|l| l.contains("  restarts=")).collect();
    assert_eq!(
        actors.len(),
        3,
        "the root, the pipeline and the ticker: {out}"
    );
    let ticker = actors[2];
    assert!(ticker.contains("ticker  worker  backing_off"), "{out}");
    assert!(ticker.contains("backing_off_until="), "{ticker}");
    assert!(ticker.contains("(in "), "{ticker}");
    assert!(ticker.contains("last_error="), "{ticker}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("pipeline heartbeat  degraded")),
        "{out}"
    );
}

#[tokio::test]
async fn tree_watch_redraws_until_interrupted() {
    let p = Process::start(&config(""), &[], &[]);
    wait_ready(&p.base).await;
    let watch = Command::new(env!("CARGO_BIN_EXE_actord"))
        .args(["tree", "--admin", &p.base, "--watch", "--interval", "0.3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(watch.id().to_string())
        .status();
    let out = tokio::task::spawn_blocking(move || watch.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text.matches("pipeline heartbeat").count();
    assert!(frames >= 2, "{frames} redraws:\n{text}");
}

#[test]
fn tree_names_an_unreachable_admin_port_and_fails() {
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let (code, out, err) = tree_cmd(&["tree", "--admin", &admin, "--timeout", "2"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.starts_with(&format!(
            "error: cannot read the live tree from http://{admin}/api/live: nothing answers there"
        )),
        "{err}"
    );

    // A port that accepts and never answers runs into the timeout instead of hanging.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = silent.local_addr().unwrap().to_string();
    let (code, _, err) = tree_cmd(&["tree", "--admin", &admin, "--timeout", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("no answer within the timeout"), "{err}");
    drop(silent);
}

#[tokio::test]
async fn every_dashboard_series_is_there_at_the_first_scrape() {
    let p = Process::start(&config(""), &[], &[]);
    wait_ready(&p.base).await;
    let (status, body) = get(&p.base, "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "actord_pipeline_up{pipeline=\"heartbeat\"} 1",
        "actord_actor_state{path=\"/heartbeat/ticker\",state=\"running\"} 1",
        "actord_actor_state{path=\"/heartbeat/ticker\",state=\"backing_off\"} 0",
        "actord_actor_state{path=\"/heartbeat/ticker\",state=\"stuck\"} 0",
        "actord_actor_state{path=\"/heartbeat/ticker\",state=\"failed\"} 0",
        "actord_actor_state{path=\"/heartbeat/ticker\",state=\"stopped\"} 0",
        "actord_actor_restarts_total{path=\"/heartbeat/ticker\"} 0",
        "actord_actor_restarts_total{path=\"/heartbeat/beats\"} 0",
        "actord_supervisor_budget_exhausted_total{path=\"/heartbeat\"} 0",
        "actord_supervisor_budget_exhausted_total{path=\"/heartbeat/beats\"} 0",
        "actord_dlq_records_total{path=\"/heartbeat/beats/dlq\",topic=\"actord.heartbeat\"} 0",
        "actord_dlq_errors_total{path=\"/heartbeat/beats/dlq\"} 0",
        "actord_actor_pending_work{path=\"/heartbeat/beats/buffer-0\"}",
        "actord_buffer_fill_ratio{path=\"/heartbeat/beats/buffer-0\"}",
        "actord_buffer_records{path=\"/heartbeat/beats/buffer-0\"}",
        "actord_records_written_total{path=\"/heartbeat/beats/writer-0\"}",
        "actord_flush_duration_seconds_count{path=\"/heartbeat/beats/writer-0\"}",
    ] {
        assert!(body.contains(series), "missing {series} in\n{body}");
    }
    crate::support::promtool_accepts(&body);
}

#[tokio::test]
async fn consumer_lag_shows_per_topic_in_the_summary_and_per_partition_when_asked() {
    let p = Process::start(&config("[kafka]\nlag_per_partition = true\n"), &[], &[]);
    wait_ready(&p.base).await;
    // librdkafka reports statistics every 5 s.
    let base = p.base.clone();
    until(Duration::from_secs(30), "per-partition lag", || {
        let base = base.clone();
        async move {
            get(&base, "/metrics").await.1.contains(
                "actord_kafka_partition_consumer_lag{path=\"/heartbeat/beats/consumer-0\",topic=\"actord.heartbeat\",partition=\"0\"}",
            )
        }
    })
    .await;
    let (_, body) = get(&p.base, "/metrics").await;
    assert!(
        body.contains("actord_kafka_consumer_lag{path=\"/heartbeat/beats/consumer-0\",topic=\"actord.heartbeat\"}"),
        "{body}"
    );
    crate::support::promtool_accepts(&body);
    let (_, live) = get(&p.base, "/api/live").await;
    let live: Value = serde_json::from_str(&live).unwrap();
    assert!(
        live["pipelines"][0]["consumer_lag"].is_u64(),
        "the summary carries the lag: {}",
        live["pipelines"][0]
    );
}
