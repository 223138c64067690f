//! Supervision settings cascade: built-in defaults, `[supervision]`, the pipeline's table,
//! then each `paths` entry on the way down to an actor. The most specific value wins.

use std::collections::BTreeMap;
use std::time::Duration;

use actord_actors::{ActorPath, Backoff, ChildSpec, Restart, Strategy, SupervisorSpec};

use super::raw::RawSupervision;
use super::Check;

/// One level of overrides, typed; `None` means "inherit".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Level {
    pub strategy: Option<Strategy>,
    pub max_restarts: Option<u32>,
    pub within: Option<Duration>,
    pub backoff_initial: Option<Duration>,
    pub backoff_max: Option<Duration>,
    pub backoff_factor: Option<f64>,
    pub restart: Option<Restart>,
    pub shutdown_timeout: Option<Duration>,
    /// `Some(None)` is an explicit "off".
    pub stuck_after: Option<Option<Duration>>,
}

impl Level {
    fn overlay(&mut self, other: &Level) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            strategy,
            max_restarts,
            within,
            backoff_initial,
            backoff_max,
            backoff_factor,
            restart,
            shutdown_timeout,
            stuck_after
        );
    }

    fn validate(raw: &RawSupervision, key: &str, check: &mut Check<'_>) -> Level {
        let k = |f: &str| {
            if key.is_empty() {
                format!("supervision.{f}")
            } else {
                format!("{key}.{f}")
            }
        };
        let dur = |check: &mut Check<'_>, f: &str, v: &Option<String>| {
            v.as_deref()
                .map(|s| check.positive_duration(&k(f), Some(s), Duration::from_secs(1)))
        };
        let strategy = raw.strategy.as_deref().and_then(|s| {
            check.choice::<Strategy>(
                &k("strategy"),
                s,
                &["one_for_one", "one_for_all", "rest_for_one"],
            )
        });
        let restart = raw.restart.as_deref().and_then(|s| {
            check.choice::<Restart>(&k("restart"), s, &["permanent", "transient", "temporary"])
        });
        let stuck_after = raw.stuck_after.as_deref().map(|s| match s.trim() {
            "off" | "none" => None,
            other => Some(check.positive_duration(
                &k("stuck_after"),
                Some(other),
                Duration::from_secs(120),
            )),
        });
        if let Some(f) = raw.backoff_factor {
            if !(1.0..=10.0).contains(&f) {
                check.problem(
                    &k("backoff_factor"),
                    format!("expected a number from 1.0 to 10.0, found {f}"),
                );
            }
        }
        let level = Level {
            strategy,
            max_restarts: raw.max_restarts,
            within: dur(check, "within", &raw.within),
            backoff_initial: dur(check, "backoff_initial", &raw.backoff_initial),
            backoff_max: dur(check, "backoff_max", &raw.backoff_max),
            backoff_factor: raw.backoff_factor,
            restart,
            shutdown_timeout: dur(check, "shutdown_timeout", &raw.shutdown_timeout),
            stuck_after,
        };
        if let (Some(i), Some(m)) = (level.backoff_initial, level.backoff_max) {
            if i > m {
                check.problem(
                    &k("backoff_max"),
                    format!("must not be below backoff_initial ({i:?})"),
                );
            }
        }
        level
    }
}

/// The built-in values under every configuration.
fn builtin() -> Level {
    Level {
        // Each supervisor brings its natural strategy; configuration may override it.
        strategy: None,
        max_restarts: Some(5),
        within: Some(Duration::from_secs(60)),
        backoff_initial: Some(Duration::from_millis(500)),
        backoff_max: Some(Duration::from_secs(30)),
        backoff_factor: Some(2.0),
        restart: Some(Restart::Permanent),
        shutdown_timeout: Some(Duration::from_secs(10)),
        stuck_after: Some(Some(Duration::from_secs(120))),
    }
}

#[derive(Debug, Clone, Default)]
struct PipelineLevels {
    own: Level,
    paths: BTreeMap<String, Level>,
}

/// Resolves the supervision settings of any actor path.
#[derive(Debug, Clone, Default)]
pub struct Supervision {
    defaults: Level,
    pipelines: BTreeMap<String, PipelineLevels>,
}

impl Supervision {
    pub(super) fn validate(
        defaults: &RawSupervision,
        pipelines: &BTreeMap<String, RawSupervision>,
        check: &mut Check<'_>,
    ) -> Supervision {
        if !defaults.paths.is_empty() {
            check.problem(
                "supervision.paths",
                "paths are set per pipeline, under [pipelines.<name>.supervision.paths]",
            );
        }
        let mut out = Supervision {
            defaults: Level::validate(defaults, "", check),
            pipelines: BTreeMap::new(),
        };
        for (name, raw) in pipelines {
            let base = format!("pipelines.{name}.supervision");
            let mut levels = PipelineLevels {
                own: Level::validate(raw, &base, check),
                paths: BTreeMap::new(),
            };
            for (rel, sub) in &raw.paths {
                let key = format!("{base}.paths.\"{rel}\"");
                if ActorPath::parse(&format!("/{name}/{rel}")).is_none() || rel.starts_with('/') {
                    check.problem(
                        &key,
                        "expected a path relative to the pipeline, such as \"timescale/writer\"",
                    );
                    continue;
                }
                if !sub.paths.is_empty() {
                    check.problem(
                        &format!("{key}.paths"),
                        "paths do not nest; write the longer path instead",
                    );
                }
                let normalized = rel.trim_matches('/').to_owned();
                levels
                    .paths
                    .insert(normalized, Level::validate(sub, &key, check));
            }
            out.pipelines.insert(name.clone(), levels);
        }
        out
    }

    /// The effective settings at `path` (`/pipeline/...`).
    pub fn resolve(&self, path: &ActorPath) -> Level {
        let mut level = builtin();
        level.overlay(&self.defaults);
        let mut segments = path.segments();
        if let Some(levels) = segments.next().and_then(|p| self.pipelines.get(p)) {
            level.overlay(&levels.own);
            let mut rel = String::new();
            for seg in segments {
                if !rel.is_empty() {
                    rel.push('/');
                }
                rel.push_str(seg);
                if let Some(l) = levels.paths.get(&rel) {
                    level.overlay(l);
                }
            }
        }
        level
    }

    /// The supervisor spec for the supervisor at `path`; `natural` is the strategy its
    /// children's dependencies call for when none is configured.
    pub fn supervisor_spec(&self, path: &ActorPath, natural: Strategy) -> SupervisorSpec {
        let l = self.resolve(path);
        SupervisorSpec {
            strategy: l.strategy.unwrap_or(natural),
            max_restarts: l.max_restarts.unwrap_or(5),
            within: l.within.unwrap_or(Duration::from_secs(60)),
            backoff: Backoff {
                initial: l.backoff_initial.unwrap_or(Duration::from_millis(500)),
                max: l.backoff_max.unwrap_or(Duration::from_secs(30)),
                factor: l.backoff_factor.unwrap_or(2.0),
            },
            stuck_check: Duration::from_secs(1),
            concurrent_stop: false,
        }
    }

    /// Applies restart type, shutdown timeout and stuck threshold to a child at `path`.
    pub fn child(&self, path: &ActorPath, spec: ChildSpec) -> ChildSpec {
        let l = self.resolve(path);
        let mut spec = spec.restart(l.restart.unwrap_or(Restart::Permanent));
        // A supervisor's own timeout already covers its children's, one after another.
        if spec.kind == actord_actors::ActorKind::Worker {
            spec = spec
                .shutdown(l.shutdown_timeout.unwrap_or(Duration::from_secs(10)))
                .stuck_after(l.stuck_after.flatten());
        }
        spec
    }
}
