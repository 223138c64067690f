//! What `/metrics` adds from the actor snapshots at each scrape: every actor's state, pending
//! work and progress age, and its restart counters at 0 before the first restart; series of
//! actors that are gone are left out.
//!
//! The Prometheus recorder cannot forget a series, so the paths this port has exported and no
//! longer finds in the registry (a removed child) are remembered and their lines dropped from
//! the rendered text; a path that comes back is shown again. So are the up and paused series of
//! a pipeline that a reload removed.

use std::collections::BTreeSet;
use std::sync::Mutex;

use actord_actors::{ActorKind, State, Status};

use super::Handle;
use crate::telemetry::{self, names};

/// The paths exported so far by this admin port.
#[derive(Default)]
pub struct Scrape {
    exported: Mutex<BTreeSet<String>>,
}

impl Scrape {
    /// Sets the per-actor series from the registry and renders the exposition text.
    pub fn render(&self, h: &Handle) -> String {
        let mut current = BTreeSet::new();
        for snap in h.registry.snapshots() {
            let path = snap.path.to_string();
            let up = if snap.status == Status::Running {
                1.0
            } else {
                0.0
            };
            metrics::gauge!(names::ACTOR_UP, "path" => path.clone()).set(up);
            for state in State::ALL {
                let on = if state == snap.supervision.state {
                    1.0
                } else {
                    0.0
                };
                metrics::gauge!(names::ACTOR_STATE, "path" => path.clone(), "state" => state.as_str())
                    .set(on);
            }
            metrics::counter!(names::ACTOR_RESTARTS_TOTAL, "path" => path.clone()).increment(0);
            match snap.kind {
                ActorKind::Supervisor => {
                    metrics::counter!(names::SUPERVISOR_BUDGET_EXHAUSTED_TOTAL, "path" => path.clone())
                        .increment(0);
                }
                ActorKind::Worker => {
                    metrics::gauge!(names::ACTOR_PENDING, "path" => path.clone())
                        .set(snap.pending as f64);
                    if let Some(age) = snap.supervision.progress_age_seconds {
                        metrics::gauge!(names::ACTOR_PROGRESS_AGE_SECONDS, "path" => path.clone())
                            .set(age);
                    }
                    if snap.supervision.stuck_after_seconds.is_some() {
                        metrics::counter!(names::ACTOR_STUCK_TOTAL, "path" => path.clone())
                            .increment(0);
                    }
                }
            }
            current.insert(path);
        }
        let enabled = h.config().runtime.enabled.clone();
        for pipeline in &enabled {
            let up = if h.pipeline_up(pipeline) { 1.0 } else { 0.0 };
            metrics::gauge!(names::PIPELINE_UP, "pipeline" => pipeline.clone()).set(up);
            let paused = if h.pipeline_paused(pipeline) {
                1.0
            } else {
                0.0
            };
            metrics::gauge!(names::PIPELINE_PAUSED, "pipeline" => pipeline.clone()).set(paused);
        }
        let gone: BTreeSet<String> = {
            let mut exported = self.exported.lock().expect("scrape lock");
            exported.extend(current.iter().cloned());
            exported.difference(&current).cloned().collect()
        };
        without_disabled(
            &without_paths(&telemetry::prometheus().render(), &gone),
            &enabled,
        )
    }
}

/// Series that only an enabled pipeline has: a pipeline a reload removed is not up or paused.
const PER_ENABLED_PIPELINE: &[&str] = &[names::PIPELINE_UP, names::PIPELINE_PAUSED];

/// The exposition text without the per-pipeline state of pipelines that are not enabled.
fn without_disabled(text: &str, enabled: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let stale = PER_ENABLED_PIPELINE
            .iter()
            .any(|name| line.starts_with(&format!("{name}{{")))
            && line
                .split_once("pipeline=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .is_some_and(|(p, _)| !enabled.iter().any(|e| e == p));
        if !stale {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The exposition text without the samples labelled with one of the `gone` paths.
fn without_paths(text: &str, gone: &BTreeSet<String>) -> String {
    if gone.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let path = (!line.starts_with('#'))
            .then(|| {
                line.split_once("path=\"")?
                    .1
                    .split_once('"')
                    .map(|(p, _)| p)
            })
            .flatten();
        if path.is_some_and(|p| gone.contains(p)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_only_the_samples_of_gone_paths() {
        let text = "# HELP actord_actor_up Up.\n# TYPE actord_actor_up gauge\n\
                    actord_actor_up{path=\"/p/a\"} 1\nactord_actor_up{path=\"/p/ab\"} 1\n\
                    actord_dlq_records_total{path=\"/p/a\",topic=\"t\"} 0\nactord_build_info{version=\"1\"} 1\n";
        let gone: BTreeSet<String> = ["/p/a".to_owned()].into();
        assert_eq!(
            without_paths(text, &gone),
            "# HELP actord_actor_up Up.\n# TYPE actord_actor_up gauge\n\
             actord_actor_up{path=\"/p/ab\"} 1\nactord_build_info{version=\"1\"} 1\n"
        );
        assert_eq!(without_paths(text, &BTreeSet::new()), text);
    }

    #[test]
    fn drops_the_pipeline_state_of_pipelines_no_longer_enabled() {
        let text = "actord_pipeline_up{pipeline=\"a\"} 1\nactord_pipeline_up{pipeline=\"b\"} 1\n\
                    actord_pipeline_paused{pipeline=\"b\"} 0\nactord_schedule_runs_started_total{pipeline=\"b\",entry=\"e\"} 2\n";
        assert_eq!(
            without_disabled(text, &["a".to_owned()]),
            "actord_pipeline_up{pipeline=\"a\"} 1\nactord_schedule_runs_started_total{pipeline=\"b\",entry=\"e\"} 2\n"
        );
    }
}
