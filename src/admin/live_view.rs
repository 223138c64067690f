//! The operator's live view: one flat list of actors with rates, a summary per pipeline, and a
//! server-sent event stream of what changed, for the page at `/` and `actord tree`.
//!
//! Rates come from a sampler that reads every probe's record and byte counts once a second and
//! keeps the last ten seconds, so a one-shot `actord tree` shows them as well as the page. The
//! event stream sends the whole view once, then every second only the actors whose fields
//! changed; ages ("3 s ago") are computed by the reader from the times and the server's clock
//! sent with each event, so an idle tree costs a few bytes a second.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use actord_actors::observe::{rfc3339, TreeNode};
use actord_actors::{ActorKind, ActorPath};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures::Stream;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Handle;

/// How often the sampler reads the probes and the event stream looks for changes.
const TICK: Duration = Duration::from_secs(1);
/// The window rates are averaged over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

pub fn routes() -> Router<Handle> {
    Router::new()
        .route("/api/live", get(view))
        .route("/api/live/events", get(events))
}

/// State shared by the live endpoints: the sampler and the signal that ends event streams when
/// the admin port shuts down (an open stream would otherwise hold the graceful shutdown).
#[derive(Clone)]
pub struct Live {
    inner: Arc<LiveInner>,
}

struct LiveInner {
    samples: Mutex<VecDeque<Sample>>,
    sampler: OnceLock<()>,
    closing: watch::Sender<bool>,
}

struct Sample {
    at: Instant,
    /// Records and bytes per actor path.
    counts: BTreeMap<ActorPath, (u64, u64)>,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    pub fn new() -> Self {
        Live {
            inner: Arc::new(LiveInner {
                samples: Mutex::new(VecDeque::new()),
                sampler: OnceLock::new(),
                closing: watch::channel(false).0,
            }),
        }
    }

    /// Ends every open event stream (the admin port is shutting down).
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Starts the sampler once; it ends when the last handle on this state is dropped.
    pub fn start(&self, handle: &Handle) {
        self.inner.sampler.get_or_init(|| {
            let weak: Weak<LiveInner> = Arc::downgrade(&self.inner);
            let registry = handle.registry.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let counts = registry
                        .snapshots()
                        .into_iter()
                        .map(|s| {
                            let records = s.counters.get("records").copied().unwrap_or(0);
                            let bytes = s.counters.get("bytes").copied().unwrap_or(0);
                            (s.path, (records, bytes))
                        })
                        .collect();
                    let now = Instant::now();
                    let mut samples = inner.samples.lock().expect("samples lock");
                    samples.push_back(Sample { at: now, counts });
                    while samples
                        .front()
                        .is_some_and(|s| now.saturating_duration_since(s.at) > RATE_WINDOW)
                    {
                        samples.pop_front();
                    }
                }
            });
        });
    }

    /// Records and bytes per second of every actor over the sampled window.
    fn rates(&self) -> BTreeMap<ActorPath, (f64, f64)> {
        let samples = self.inner.samples.lock().expect("samples lock");
        let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
            return BTreeMap::new();
        };
        let secs = last.at.saturating_duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return BTreeMap::new();
        }
        last.counts
            .iter()
            .map(|(path, (records, bytes))| {
                let (r0, b0) = first.counts.get(path).copied().unwrap_or((0, 0));
                let per = |now: u64, before: u64| {
                    // A counter that went down belongs to a new probe: no rate yet.
                    (now.saturating_sub(before) as f64 / secs * 10.0).round() / 10.0
                };
                (path.clone(), (per(*records, r0), per(*bytes, b0)))
            })
            .collect()
    }
}

/// The whole view: the server's clock, a summary per pipeline, then every actor in tree order.
#[derive(Serialize)]
pub struct View {
    pub now: String,
    pub pipelines: Vec<Value>,
    pub actors: Vec<Value>,
}

/// Builds the view of the running instance.
pub fn build(h: &Handle, live: &Live) -> View {
    live.start(h);
    let rates = live.rates();
    let mut actors = Vec::new();
    for root in h.registry.tree() {
        flatten(&root, None, 0, &rates, &mut actors);
    }
    let pipelines = h
        .config()
        .runtime
        .enabled
        .iter()
        .map(|name| summary(h, name, &actors))
        .collect();
    View {
        now: rfc3339(SystemTime::now()),
        pipelines,
        actors,
    }
}

fn flatten(
    node: &TreeNode,
    parent_budget_left: Option<Option<u64>>,
    depth: usize,
    rates: &BTreeMap<ActorPath, (f64, f64)>,
    out: &mut Vec<Value>,
) {
    let a = &node.actor;
    let s = &a.supervision;
    let (records_rate, bytes_rate) = rates.get(&a.path).copied().unwrap_or((0.0, 0.0));
    let mut entry = json!({
        "path": a.path,
        "name": if a.path.is_root() { "/" } else { a.name.as_str() },
        "depth": depth,
        "kind": a.kind,
        "status": a.status,
        "state": s.state,
        "restarts": a.restarts,
        "last_error": a.last_error,
        "unhealthy": a.unhealthy,
        "counters": a.counters,
        "pending": a.pending,
        "paused": a.paused,
        "last_progress": a.last_progress,
        "backing_off_until": s.backing_off_until,
        "stuck_after_seconds": s.stuck_after_seconds,
        "restart_budget": s.restart_budget,
        "records_per_second": records_rate,
        "bytes_per_second": bytes_rate,
    });
    // Restarts this actor may still cost its supervisor: absent for the root, null when the
    // supervisor's budget is unlimited.
    if let Some(left) = parent_budget_left {
        entry["budget_left"] = json!(left);
    }
    out.push(entry);
    let own_left = s.restart_budget.as_ref().map(|b| b.left);
    for child in &node.children {
        flatten(child, own_left, depth + 1, rates, out);
    }
}

/// One pipeline at a glance. Throughput is what its consumers read per second (its busiest
/// worker's rate when it has no consumer); lag is the consumers' last reported lag; the DLQ
/// count is what its DLQ writers wrote since start; the last error is the newest of any actor.
fn summary(h: &Handle, name: &str, actors: &[Value]) -> Value {
    let top = ActorPath::root().child(name);
    let mine: Vec<&Value> = actors
        .iter()
        .filter(|a| {
            a["path"]
                .as_str()
                .and_then(ActorPath::parse)
                .is_some_and(|p| p.starts_with(&top))
        })
        .collect();
    let workers = || {
        mine.iter()
            .filter(|a| a["kind"] == json!(ActorKind::Worker))
            .copied()
    };
    let rate = |a: &Value| a["records_per_second"].as_f64().unwrap_or(0.0);
    let is_consumer = |a: &&Value| {
        a["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("consumer"))
    };
    let throughput = if workers().any(|a| is_consumer(&a)) {
        workers().filter(is_consumer).map(rate).sum::<f64>()
    } else {
        workers().map(rate).fold(0.0, f64::max)
    };
    let counter = |a: &Value, c: &str| a["counters"][c].as_u64();
    let lags: Vec<u64> = workers().filter_map(|a| counter(a, "lag")).collect();
    let dlq: u64 = workers()
        .filter(|a| a["name"] == "dlq")
        .filter_map(|a| counter(a, "records"))
        .sum();
    let last_error = mine
        .iter()
        .filter(|a| !a["last_error"].is_null())
        .max_by(|a, b| {
            let at = |v: &Value| v["last_error"]["at"].as_str().unwrap_or("").to_owned();
            at(a).cmp(&at(b))
        })
        .map(|a| json!({"path": a["path"], "message": a["last_error"]["message"], "at": a["last_error"]["at"]}));
    let not_up: Vec<String> = h
        .pipeline_not_up(name)
        .into_iter()
        .map(|(path, why)| format!("{path} {why}"))
        .collect();
    let status = h.pipeline_status(name);
    let schedules = h
        .schedules()
        .get(name)
        .map(|s| json!(s.snapshot().entries))
        .unwrap_or_else(|| json!([]));
    json!({
        "name": name,
        "path": top,
        "status": status,
        "up": not_up.is_empty(),
        "paused": h.pipeline_paused(name),
        "not_up": not_up,
        "records_per_second": (throughput * 10.0).round() / 10.0,
        "consumer_lag": if lags.is_empty() { None } else { Some(lags.iter().sum::<u64>()) },
        "dlq_records": dlq,
        "last_error": last_error,
        "schedules": schedules,
    })
}

async fn view(State(h): State<Handle>, Extension(live): Extension<Live>) -> Response {
    Json(build(&h, &live)).into_response()
}

/// The fields of an actor that the event stream compares: everything but the clock.
fn keyed(actors: &[Value]) -> BTreeMap<String, &Value> {
    actors
        .iter()
        .map(|a| (a["path"].as_str().unwrap_or("").to_owned(), a))
        .collect()
}

/// What changed between two views: the actors whose fields differ (or are new) and the paths
/// that are gone; `None` when the pipelines and the actors are the same (order included).
fn delta(before: &View, after: &View) -> Option<Value> {
    let old = keyed(&before.actors);
    let new = keyed(&after.actors);
    let changed: Vec<&Value> = after
        .actors
        .iter()
        .filter(|a| old.get(a["path"].as_str().unwrap_or("")) != Some(a))
        .collect();
    let removed: Vec<&String> = old.keys().filter(|p| !new.contains_key(*p)).collect();
    let order: Vec<&str> = after
        .actors
        .iter()
        .filter_map(|a| a["path"].as_str())
        .collect();
    let same_order = before
        .actors
        .iter()
        .filter_map(|a| a["path"].as_str())
        .eq(order.iter().copied());
    let pipelines_same = before.pipelines == after.pipelines;
    if changed.is_empty() && removed.is_empty() && same_order && pipelines_same {
        return None;
    }
    Some(json!({
        "now": after.now,
        "pipelines": if pipelines_same { None } else { Some(&after.pipelines) },
        "changed": changed,
        "removed": removed,
        "order": if same_order { None } else { Some(order) },
    }))
}

fn event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

/// `snapshot` once with the whole view, then `delta` when something changed, else `tick` with
/// the server's clock, once a second.
async fn events(
    State(h): State<Handle>,
    Extension(live): Extension<Live>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let closing = live.inner.closing.subscribe();
    let first = build(&h, &live);
    let start = event("snapshot", &first);
    let stream = futures::stream::unfold(
        (Some(start), first, h, live, closing),
        |(start, last, h, live, mut closing)| async move {
            if let Some(start) = start {
                return Some((Ok(start), (None, last, h, live, closing)));
            }
            if *closing.borrow() {
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = closing.changed() => return None,
            }
            let next = build(&h, &live);
            let ev = match delta(&last, &next) {
                Some(d) => event("delta", &d),
                None => event("tick", &json!({"now": next.now})),
            };
            Some((Ok(ev), (None, next, h, live, closing)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(actors: Vec<Value>) -> View {
        View {
            now: "t".into(),
            pipelines: vec![json!({"name": "p"})],
            actors,
        }
    }

    #[test]
    fn a_delta_names_only_what_changed() {
        let a = json!({"path": "/p/a", "restarts": 0});
        let b = json!({"path": "/p/b", "restarts": 0});
        let before = view(vec![a.clone(), b.clone()]);
        assert_eq!(delta(&before, &view(vec![a.clone(), b.clone()])), None);
        let b2 = json!({"path": "/p/b", "restarts": 1});
        let d = delta(&before, &view(vec![a.clone(), b2.clone()])).expect("changed");
        assert_eq!(d["changed"], json!([b2]));
        assert_eq!(d["removed"], json!([]));
        assert_eq!(d["order"], Value::Null);
        assert_eq!(d["pipelines"], Value::Null);
        let d = delta(&before, &view(vec![a.clone()])).expect("removed");
        assert_eq!(d["removed"], json!(["/p/b"]));
        assert_eq!(d["order"], json!(["/p/a"]));
    }
}
