//! `actord tree`: the live view of a running instance (`/api/live`) as a terminal tree, once or
//! refreshed in place.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

/// What `actord tree` shows and how.
#[derive(Clone, Debug)]
pub struct TreeOptions {
    /// The admin base URL, e.g. `http://127.0.0.1:8080`.
    pub base: String,
    pub json: bool,
    /// Only actors that are not running as they should, with their ancestors.
    pub failed: bool,
    /// Longest wait for one answer of the admin port.
    pub timeout: Duration,
    /// ANSI colours for the states.
    pub color: bool,
}

/// Why the tree could not be read, in one line for an operator.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the live tree from {url}: {reason}")]
pub struct FetchError {
    pub url: String,
    pub reason: String,
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .expect("an HTTP client with timeouts")
}

/// One reading of `/api/live`, and of `/api/info` for the header.
pub async fn fetch(opts: &TreeOptions) -> Result<(Value, Value), FetchError> {
    let base = opts.base.trim_end_matches('/');
    let http = client(opts.timeout);
    let get = |path: &str| {
        let url = format!("{base}{path}");
        let http = http.clone();
        async move {
            let fail = |reason: String| FetchError {
                url: url.clone(),
                reason,
            };
            let response = http.get(&url).send().await.map_err(|e| {
                fail(if e.is_timeout() {
                    "no answer within the timeout".to_owned()
                } else if e.is_connect() {
                    "nothing answers there (is actord running, and is --admin right?)".to_owned()
                } else {
                    format!("{e}")
                })
            })?;
            let status = response.status();
            let body = response.text().await.map_err(|e| fail(format!("{e}")))?;
            if !status.is_success() {
                return Err(fail(format!("HTTP {status}: {}", body.trim())));
            }
            serde_json::from_str::<Value>(&body)
                .map_err(|e| fail(format!("not the admin port's JSON ({e})")))
        }
    };
    let live = get("/api/live").await?;
    let info = get("/api/info").await?;
    Ok((live, info))
}

/// Keeps the actors that are not as they should be (not running and not stopped on purpose,
/// or running but stuck or unhealthy), with their ancestors, in tree order.
pub fn only_failed(live: &mut Value) {
    let Some(actors) = live.get("actors").and_then(Value::as_array) else {
        return;
    };
    let bad: Vec<String> = actors
        .iter()
        .filter(|a| is_bad(a))
        .filter_map(|a| a["path"].as_str().map(str::to_owned))
        .collect();
    let keep = |path: &str| {
        bad.iter().any(|b| {
            b == path || path == "/" || b.starts_with(&format!("{}/", path.trim_end_matches('/')))
        })
    };
    let kept: Vec<Value> = actors
        .iter()
        .filter(|a| !bad.is_empty() && keep(a["path"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    live["actors"] = Value::Array(kept);
}

fn is_bad(a: &Value) -> bool {
    let state = a["state"].as_str().unwrap_or("");
    !matches!(state, "running" | "stopped") || !a["unhealthy"].is_null()
}

/// The readable tree: a header, a line per pipeline, then the actors.
pub fn render(live: &Value, info: &Value, opts: &TreeOptions) -> String {
    let mut out = String::new();
    let bootstrap = info
        .pointer("/kafka/bootstrap")
        .and_then(Value::as_str)
        .unwrap_or("");
    if info.pointer("/kafka/mode").and_then(Value::as_str) == Some("embedded")
        && !bootstrap.is_empty()
    {
        out.push_str(&format!("# {}\n", crate::admin::embedded_note(bootstrap)));
    }
    let now = live["now"].as_str().unwrap_or("");
    let paint = |state: &str| paint(state, opts.color);
    for p in live["pipelines"].as_array().into_iter().flatten() {
        let state = if p["status"] != "running" {
            p["status"].as_str().unwrap_or("?")
        } else if p["up"] == true {
            "up"
        } else {
            "degraded"
        };
        let paused = if p["paused"] == true { "  paused" } else { "" };
        let mut line = format!(
            "pipeline {}  {}{paused}  {}",
            p["name"].as_str().unwrap_or("?"),
            paint(state),
            per_second(p["records_per_second"].as_f64().unwrap_or(0.0))
        );
        if let Some(lag) = p["consumer_lag"].as_u64() {
            line.push_str(&format!("  lag={lag}"));
        }
        line.push_str(&format!("  dlq={}", p["dlq_records"].as_u64().unwrap_or(0)));
        if let Some(e) = p.get("last_error").filter(|e| !e.is_null()) {
            line.push_str(&format!(
                "  last_error={:?} at {} ({})",
                e["message"].as_str().unwrap_or(""),
                e["path"].as_str().unwrap_or(""),
                ago(now, e["at"].as_str().unwrap_or(""))
            ));
        }
        out.push_str(&line);
        out.push('\n');
        for why in p["not_up"].as_array().into_iter().flatten() {
            out.push_str(&format!("  not up: {}\n", why.as_str().unwrap_or("")));
        }
    }
    let actors: Vec<&Value> = live["actors"].as_array().into_iter().flatten().collect();
    if opts.failed && actors.is_empty() {
        out.push_str("no failed actors\n");
    }
    let schedules = |path: &str| -> Vec<Value> {
        live["pipelines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["path"] == path)
            .flat_map(|p| p["schedules"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    for (i, a) in actors.iter().enumerate() {
        let depth = a["depth"].as_u64().unwrap_or(0) as usize;
        let prefix = branches(&actors, i, depth);
        out.push_str(&format!("{prefix}{}\n", actor_line(a, now, &paint)));
        let path = a["path"].as_str().unwrap_or("");
        for entry in schedules(path) {
            let inner = continuation(&actors, i, depth);
            out.push_str(&format!("{inner}{}\n", crate::cli::render_entry(&entry)));
        }
    }
    out
}

/// `├─ ` or `└─ ` after the ancestors' `│  ` columns.
fn branches(actors: &[&Value], i: usize, depth: usize) -> String {
    if depth == 0 {
        return String::new();
    }
    let mut s = String::new();
    for level in 1..depth {
        s.push_str(if has_later_sibling(actors, i, level) {
            "│  "
        } else {
            "   "
        });
    }
    s.push_str(if has_later_sibling(actors, i, depth) {
        "├─ "
    } else {
        "└─ "
    });
    s
}

/// The prefix of a line that belongs to actor `i` (its schedules), under its own branch.
fn continuation(actors: &[&Value], i: usize, depth: usize) -> String {
    let mut s = String::new();
    for level in 1..=depth {
        s.push_str(if has_later_sibling(actors, i, level) {
            "│  "
        } else {
            "   "
        });
    }
    s.push_str("   ");
    s
}

/// Whether the ancestor of actor `i` at `level` (or `i` itself at its own depth) has a sibling
/// further down.
fn has_later_sibling(actors: &[&Value], i: usize, level: usize) -> bool {
    for a in &actors[i + 1..] {
        let d = a["depth"].as_u64().unwrap_or(0) as usize;
        if d < level {
            return false;
        }
        if d == level {
            return true;
        }
    }
    false
}

fn actor_line(a: &Value, now: &str, paint: &dyn Fn(&str) -> String) -> String {
    let state = a["state"].as_str().unwrap_or("?");
    let worker = a["kind"] == "worker";
    let mut line = format!(
        "{}  {}  {}  restarts={}",
        a["name"].as_str().unwrap_or("?"),
        a["kind"].as_str().unwrap_or("?"),
        paint(state),
        a["restarts"].as_u64().unwrap_or(0)
    );
    match a.get("budget_left") {
        Some(Value::Null) => line.push_str("  budget_left=unlimited"),
        Some(v) if v.is_u64() => line.push_str(&format!("  budget_left={v}")),
        _ => {}
    }
    if let Some(until) = a["backing_off_until"].as_str() {
        line.push_str(&format!(
            "  backing_off_until={until} ({})",
            ago(now, until)
        ));
    }
    if worker {
        match a["last_progress"].as_str() {
            Some(t) => line.push_str(&format!("  progress={}", ago(now, t))),
            None => line.push_str("  progress=never"),
        }
        line.push_str(&format!(
            "  rate={}",
            per_second(a["records_per_second"].as_f64().unwrap_or(0.0))
        ));
        let bytes = a["bytes_per_second"].as_f64().unwrap_or(0.0);
        if bytes > 0.0 {
            line.push_str(&format!(" {}", bytes_per_second(bytes)));
        }
        if let Some(p) = a["pending"].as_u64().filter(|p| *p > 0) {
            line.push_str(&format!("  pending={p}"));
        }
    }
    let counters = a["counters"].as_object();
    let records = counters
        .and_then(|c| c.get("records"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if worker || records > 0 {
        line.push_str(&format!("  records={records}"));
    }
    for (k, v) in counters.into_iter().flatten() {
        if k != "records" && k != "bytes" && v.as_u64().unwrap_or(0) > 0 {
            line.push_str(&format!("  {k}={v}"));
        }
    }
    if let Some(e) = a.get("last_error").filter(|e| !e.is_null()) {
        line.push_str(&format!(
            "  last_error={:?} ({})",
            e["message"].as_str().unwrap_or(""),
            ago(now, e["at"].as_str().unwrap_or(""))
        ));
    }
    if let Some(why) = a["unhealthy"].as_str() {
        line.push_str(&format!("  unhealthy={why:?}"));
    }
    line
}

fn per_second(n: f64) -> String {
    if n >= 1000.0 {
        format!("{:.1}k/s", n / 1000.0)
    } else {
        format!("{}/s", (n * 10.0).round() / 10.0)
    }
}

fn bytes_per_second(n: f64) -> String {
    let units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let (mut v, mut i) = (n, 0);
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// `then` relative to `now` (both RFC 3339): "3 s ago", "in 5 s", "2 min 5 s ago".
fn ago(now: &str, then: &str) -> String {
    let (Ok(now), Ok(then)) = (
        chrono::DateTime::parse_from_rfc3339(now),
        chrono::DateTime::parse_from_rfc3339(then),
    ) else {
        return then.to_owned();
    };
    let secs = (now - then).num_milliseconds() as f64 / 1000.0;
    let n = secs.abs().round() as u64;
    let span = if n < 60 {
        format!("{n} s")
    } else if n < 3600 {
        format!("{} min {} s", n / 60, n % 60)
    } else if n < 86_400 {
        format!("{} h {} min", n / 3600, (n % 3600) / 60)
    } else {
        format!("{} d {} h", n / 86_400, (n % 86_400) / 3600)
    };
    if secs >= 0.0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

fn paint(state: &str, color: bool) -> String {
    if !color {
        return state.to_owned();
    }
    let code = match state {
        "running" | "up" => "32",
        "starting" | "stopping" => "33",
        "backing_off" | "degraded" => "38;5;208",
        "stuck" => "35",
        "failed" => "1;31",
        _ => "2",
    };
    format!("\x1b[{code}m{state}\x1b[0m")
}

/// Prints the tree once (exit 0) or, with `watch`, every `every` until interrupted. Returns
/// the error of the first reading; later failures in watch mode are shown and retried.
pub async fn run(opts: &TreeOptions, watch: Option<Duration>) -> Result<(), FetchError> {
    let show = |live: &mut Value, info: &Value| -> String {
        if opts.failed {
            only_failed(live);
        }
        if opts.json {
            let text = if watch.is_some() {
                serde_json::to_string(live)
            } else {
                serde_json::to_string_pretty(live)
            };
            format!("{}\n", text.unwrap_or_default())
        } else {
            render(live, info, opts)
        }
    };
    let (mut live, info) = fetch(opts).await?;
    let Some(every) = watch else {
        print!("{}", show(&mut live, &info));
        return Ok(());
    };
    let clear = !opts.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut frame = show(&mut live, &info);
    loop {
        let mut stdout = std::io::stdout().lock();
        if clear {
            // Home, draw, then clear what the previous frame left below.
            let _ = write!(stdout, "\x1b[H{}\x1b[J", frame.replace('\n', "\x1b[K\n"));
        } else {
            let _ = write!(stdout, "{frame}");
            if !opts.json {
                let _ = writeln!(stdout);
            }
        }
        let _ = stdout.flush();
        drop(stdout);
        tokio::time::sleep(every).await;
        frame = match fetch(opts).await {
            Ok((mut live, info)) => show(&mut live, &info),
            Err(e) if opts.json => {
                eprintln!("error: {e}");
                continue;
            }
            Err(e) => format!("error: {e}\n(retrying every {every:?})\n"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn actor(path: &str, depth: u64, state: &str) -> Value {
        json!({"path": path, "name": path.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("/"), "depth": depth, "kind": if depth < 2 { "supervisor" } else { "worker" }, "state": state, "restarts": 0, "counters": {"records": 0}, "unhealthy": null, "last_error": null})
    }

    #[test]
    fn draws_branches_and_keeps_only_what_failed_with_its_ancestors() {
        let mut live = json!({"now": "2026-01-01T00:00:10Z", "pipelines": [], "actors": [
            actor("/", 0, "running"),
            actor("/a", 1, "running"),
            actor("/a/x", 2, "running"),
            actor("/a/y", 2, "backing_off"),
            actor("/b", 1, "running"),
            actor("/b/z", 2, "running"),
        ]});
        let opts = TreeOptions {
            base: String::new(),
            json: false,
            failed: false,
            timeout: Duration::from_secs(1),
            color: false,
        };
        let text = render(&live, &json!({}), &opts);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("/  supervisor  running"), "{text}");
        let paused = json!({"now": "2026-01-01T00:00:10Z", "actors": [], "pipelines": [
            {"name": "a", "status": "running", "up": true, "paused": true, "records_per_second": 0.0, "dlq_records": 0},
        ]});
        let text = render(&paused, &json!({}), &opts);
        assert!(text.starts_with("pipeline a  up  paused"), "{text}");
        assert!(lines[1].starts_with("├─ a  supervisor"), "{text}");
        assert!(lines[2].starts_with("│  ├─ x  worker  running"), "{text}");
        assert!(
            lines[3].starts_with("│  └─ y  worker  backing_off"),
            "{text}"
        );
        assert!(lines[4].starts_with("└─ b  supervisor"), "{text}");
        assert!(lines[5].starts_with("   └─ z  worker"), "{text}");
        only_failed(&mut live);
        let kept: Vec<&str> = live["actors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["path"].as_str().unwrap())
            .collect();
        assert_eq!(kept, ["/", "/a", "/a/y"]);
    }

    #[test]
    fn ages_read_as_an_operator_says_them() {
        assert_eq!(
            ago("2026-01-01T00:00:10Z", "2026-01-01T00:00:07.2Z"),
            "3 s ago"
        );
        assert_eq!(
            ago("2026-01-01T00:10:10Z", "2026-01-01T00:00:05Z"),
            "10 min 5 s ago"
        );
        assert_eq!(
            ago("2026-01-01T00:00:10Z", "2026-01-01T00:00:15Z"),
            "in 5 s"
        );
    }
}
