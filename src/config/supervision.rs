//! Supervision settings cascade: built-in defaults, `[supervision]`, the pipeline's table,
//! then each `paths` entry on the way down to an actor. The most specific value wins.
//!
//! `shutdown_timeout` is the exception: it belongs to the actor its level names. Set in
//! `[supervision]` it is every worker's graceful stop; set in a pipeline's table or a `paths`
//! entry that names a supervisor, it is that supervisor's budget for stopping its whole
//! subtree, which its children share (each within its own timeout, or what is left).
//! Unset, a worker keeps the timeout its wiring gives it and a supervisor takes what its
//! children need.

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
    pub start_timeout: Option<Duration>,
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
            stuck_after,
            start_timeout
        );
    }

    /// Whether this level sets the field named `field` (a TOML key).
    fn sets(&self, field: &str) -> bool {
        match field {
            "strategy" => self.strategy.is_some(),
            "max_restarts" => self.max_restarts.is_some(),
            "within" => self.within.is_some(),
            "backoff_initial" => self.backoff_initial.is_some(),
            "backoff_max" => self.backoff_max.is_some(),
            "backoff_factor" => self.backoff_factor.is_some(),
            "restart" => self.restart.is_some(),
            "shutdown_timeout" => self.shutdown_timeout.is_some(),
            "stuck_after" => self.stuck_after.is_some(),
            "start_timeout" => self.start_timeout.is_some(),
            _ => false,
        }
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
            start_timeout: dur(check, "start_timeout", &raw.start_timeout),
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
        // Each actor's wiring knows what its stop involves (a consumer's drain, a final flush).
        shutdown_timeout: None,
        stuck_after: Some(Some(Duration::from_secs(120))),
        start_timeout: Some(actord_actors::spec::DEFAULT_START_TIMEOUT),
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

    /// The levels on the way down to `path` with their TOML tables, most general first.
    fn levels(&self, path: &ActorPath) -> Vec<(String, &Level)> {
        let mut out = vec![("supervision".to_owned(), &self.defaults)];
        let mut segments = path.segments();
        let Some(name) = segments.next() else {
            return out;
        };
        let Some(levels) = self.pipelines.get(name) else {
            return out;
        };
        let base = format!("pipelines.{name}.supervision");
        out.push((base.clone(), &levels.own));
        let mut rel = String::new();
        for seg in segments {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(seg);
            if let Some(l) = levels.paths.get(&rel) {
                out.push((format!("{base}.paths.\"{rel}\""), l));
            }
        }
        out
    }

    /// The TOML key that sets `field` for the actor at `path` (the most specific level that
    /// sets it), `None` when it is built in.
    pub fn key_of(&self, path: &ActorPath, field: &str) -> Option<String> {
        self.levels(path)
            .into_iter()
            .rev()
            .find(|(_, l)| l.sets(field))
            .map(|(table, _)| format!("{table}.{field}"))
    }

    /// The level that names exactly the actor at `path`: the pipeline's table for `/<name>`,
    /// the `paths` entry for a path below it.
    fn own_level(&self, path: &ActorPath) -> Option<(String, &Level)> {
        let depth = path.segments().count();
        if depth == 0 {
            return None;
        }
        let levels = self.levels(path);
        let (table, level) = levels.last()?;
        let expected = if depth == 1 {
            format!("pipelines.{}.supervision", path.pipeline()?)
        } else {
            let rel: Vec<&str> = path.segments().skip(1).collect();
            format!(
                "pipelines.{}.supervision.paths.\"{}\"",
                path.pipeline()?,
                rel.join("/")
            )
        };
        (*table == expected).then(|| (table.clone(), *level))
    }

    /// The shutdown timeout configured for exactly the actor at `path`, with its key.
    pub fn own_shutdown_timeout(&self, path: &ActorPath) -> Option<(String, Duration)> {
        let (table, level) = self.own_level(path)?;
        level
            .shutdown_timeout
            .map(|d| (format!("{table}.shutdown_timeout"), d))
    }

    /// The supervisor spec for the supervisor at `path`; `natural` is the strategy its
    /// children's dependencies call for when none is configured. Children of a
    /// `one_for_one` supervisor are independent, so they stop at the same time.
    pub fn supervisor_spec(&self, path: &ActorPath, natural: Strategy) -> SupervisorSpec {
        let l = self.resolve(path);
        let strategy = l.strategy.unwrap_or(natural);
        SupervisorSpec {
            strategy,
            max_restarts: l.max_restarts.unwrap_or(5),
            within: l.within.unwrap_or(Duration::from_secs(60)),
            backoff: Backoff {
                initial: l.backoff_initial.unwrap_or(Duration::from_millis(500)),
                max: l.backoff_max.unwrap_or(Duration::from_secs(30)),
                factor: l.backoff_factor.unwrap_or(2.0),
            },
            stuck_check: Duration::from_secs(1),
            concurrent_stop: strategy == Strategy::OneForOne,
        }
    }

    /// Applies restart type, start timeout, shutdown timeout and stuck threshold to a child at
    /// `path`. A worker's shutdown timeout comes from its own `paths` entry, else
    /// `[supervision]`, else its wiring; a supervisor's from its own level only, else what its
    /// children need.
    pub fn child(&self, path: &ActorPath, spec: ChildSpec) -> ChildSpec {
        let l = self.resolve(path);
        let mut spec = spec.restart(l.restart.unwrap_or(Restart::Permanent));
        if let Some(t) = l.start_timeout {
            spec = spec.start_timeout(t);
        }
        let own = self.own_shutdown_timeout(path).map(|(_, d)| d);
        match spec.kind {
            actord_actors::ActorKind::Worker => {
                if let Some(d) = own.or(self.defaults.shutdown_timeout) {
                    spec = spec.shutdown(d);
                }
                spec = spec.stuck_after(l.stuck_after.flatten());
            }
            actord_actors::ActorKind::Supervisor => {
                if let Some(d) = own {
                    spec = spec.shutdown(d);
                }
            }
        }
        spec
    }
}
