//! Checks that need the planned tree: restart budgets a failing child can reach, the strategy
//! a subtree's wiring needs, and shutdown budgets that fit in `runtime.shutdown_timeout`.
//!
//! The first two are configuration errors (exit 2): a child that always fails would never
//! escalate, and a consumer path restarted out of order would feed a stopped actor. Shutdown
//! budgets that do not fit are warnings: they are worst cases (every actor using its whole
//! timeout), and the last actors to stop are killed without their `post_stop` only if the worst
//! case happens.

use actord_actors::{ActorPath, ChildSpec};

use crate::config::{Config, ConfigError, Problem};

/// Checks `pipelines`; returns the warnings, or the problems.
pub(super) fn plan(config: &Config, pipelines: &[ChildSpec]) -> Result<Vec<String>, ConfigError> {
    let mut out = Findings::default();
    let timeout = config.runtime.shutdown_timeout;
    let available = timeout.saturating_sub(super::stop_reserve(timeout));
    for spec in pipelines {
        let path = ActorPath::root().child(&spec.id);
        walk(config, spec, &path, &mut out);
        if spec.shutdown > available {
            out.warnings.push(format!(
                "pipeline {}: stopping may take up to {:?} (its actors' shutdown timeouts, one \
                 after another), more than the {available:?} runtime.shutdown_timeout ({timeout:?}) \
                 leaves the pipelines; the last actors to stop would be killed without flushing. \
                 Raise runtime.shutdown_timeout, or lower shutdown_timeout of the pipeline's \
                 workers",
                spec.id, spec.shutdown
            ));
        }
    }
    if out.problems.is_empty() {
        Ok(out.warnings)
    } else {
        Err(ConfigError {
            problems: out
                .problems
                .into_iter()
                .map(|(key, message)| Problem::new(&config.source, key, message))
                .collect(),
        })
    }
}

#[derive(Default)]
struct Findings {
    /// (TOML key, message); one per key, for the first actor path it affects.
    problems: Vec<(String, String)>,
    warnings: Vec<String>,
}

impl Findings {
    fn problem(&mut self, key: String, message: String) {
        if !self.problems.iter().any(|(k, _)| *k == key) {
            self.problems.push((key, message));
        }
    }
}

fn walk(config: &Config, spec: &ChildSpec, path: &ActorPath, out: &mut Findings) {
    let Some((sup, children)) = spec.nested() else {
        return;
    };
    let supervision = &config.supervision;
    if let Some(wiring) = spec.wiring.filter(|w| *w != sup.strategy) {
        let key = supervision
            .key_of(path, "strategy")
            .unwrap_or_else(|| format!("pipelines.{}.supervision.strategy", spec.id));
        out.problem(
            key,
            format!(
                "{} breaks the wiring of {path}: its children start sink first and each takes \
                 the address of the one started before it, so a restart must take those \
                 started after it along ({}); remove the setting or set it for another path",
                name(sup.strategy),
                name(wiring)
            ),
        );
    }
    let exhaust = sup.time_to_exhaust();
    if sup.max_restarts > 0 && exhaust > sup.within {
        let key = [
            "within",
            "backoff_initial",
            "backoff_max",
            "backoff_factor",
            "max_restarts",
        ]
        .iter()
        .find_map(|f| supervision.key_of(path, f));
        if let Some(key) = key {
            out.problem(
                key,
                format!(
                    "at {path} the restart budget can never be spent: {} restarts of a child that \
                     always fails are spread over {exhaust:?} of backoff ({:?} doubling by {} up \
                     to {:?}), longer than within ({:?}), so the child would be retried forever \
                     and never escalate; lengthen within, lower max_restarts or shorten the \
                     backoff",
                    sup.max_restarts + 1,
                    sup.backoff.initial,
                    sup.backoff.factor,
                    sup.backoff.max,
                    sup.within
                ),
            );
        }
    }
    if let Some((key, budget)) = supervision.own_shutdown_timeout(path) {
        let need = spec.stop_need();
        if budget < need {
            out.warnings.push(format!(
                "{key} = {budget:?} is less than the {need:?} the children of {path} may take to \
                 stop with their own timeouts; the last of them would be killed without \
                 flushing"
            ));
        }
    }
    for child in children {
        walk(config, child, &path.child(&child.id), out);
    }
}

fn name(strategy: actord_actors::Strategy) -> &'static str {
    match strategy {
        actord_actors::Strategy::OneForOne => "one_for_one",
        actord_actors::Strategy::OneForAll => "one_for_all",
        actord_actors::Strategy::RestForOne => "rest_for_one",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn load(toml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervision.toml");
        std::fs::write(&path, toml).unwrap();
        crate::config::load(&crate::config::Sources {
            config_path: Some(path),
            ..Default::default()
        })
        .unwrap()
    }

    fn plan(toml: &str) -> Result<Vec<String>, ConfigError> {
        let config = load(toml);
        let resources = crate::pipelines::Resources::new(super::super::connection(&config, ""));
        match super::super::plan(&config, &resources) {
            Ok(p) => Ok(p.warnings),
            Err(e) => Err(e.downcast::<ConfigError>().expect("a configuration error")),
        }
    }

    #[test]
    fn the_defaults_fit() {
        assert_eq!(plan("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_backoff_that_outgrows_the_window_names_its_key() {
        let err = plan("[pipelines.heartbeat.supervision]\nwithin = \"10s\"\n").unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(
            err.problems[0].key,
            "pipelines.heartbeat.supervision.within"
        );
        assert!(err.problems[0].message.contains("never escalate"), "{err}");
        // Enough restarts fit once the window holds the backoff.
        assert!(plan("[pipelines.heartbeat.supervision]\nwithin = \"40s\"\n").is_ok());
    }

    #[test]
    fn a_strategy_that_breaks_a_consumer_path_names_its_key() {
        let err =
            plan("[pipelines.heartbeat.supervision.paths.beats]\nstrategy = \"one_for_one\"\n")
                .unwrap_err();
        assert_eq!(
            err.problems[0].key,
            "pipelines.heartbeat.supervision.paths.\"beats\".strategy"
        );
        assert!(err.problems[0].message.contains("rest_for_one"), "{err}");
        // The pipeline's own strategy is free, but it cascades onto the path.
        let err =
            plan("[pipelines.heartbeat.supervision]\nstrategy = \"one_for_all\"\n").unwrap_err();
        assert_eq!(
            err.problems[0].key,
            "pipelines.heartbeat.supervision.strategy"
        );
    }

    #[test]
    fn budgets_that_cannot_fit_are_warned_about() {
        let w = plan("[runtime]\nshutdown_timeout = \"10s\"\n").unwrap();
        assert!(w.iter().any(|w| w.contains("pipeline heartbeat")), "{w:?}");
        let w = plan("[pipelines.heartbeat.supervision.paths.beats]\nshutdown_timeout = \"3s\"\n")
            .unwrap();
        assert!(
            w.iter().any(|w| w.starts_with(
                "pipelines.heartbeat.supervision.paths.\"beats\".shutdown_timeout = 3s"
            )),
            "{w:?}"
        );
    }

    #[test]
    fn shutdown_timeouts_apply_to_the_actor_their_level_names() {
        let config = load(
            "[supervision]\nshutdown_timeout = \"4s\"\n[pipelines.heartbeat.supervision]\nshutdown_timeout = \"20s\"\n",
        );
        let resources = crate::pipelines::Resources::new(super::super::connection(&config, ""));
        let p = super::super::plan(&config, &resources).unwrap();
        let hb = &p.pipelines[0];
        assert_eq!(hb.shutdown, Duration::from_secs(20));
        let (_, children) = hb.nested().unwrap();
        let ticker = children.iter().find(|c| c.id == "ticker").unwrap();
        assert_eq!(ticker.shutdown, Duration::from_secs(4));
        let beats = children.iter().find(|c| c.id == "beats").unwrap();
        assert_eq!(beats.shutdown, beats.stop_need());
    }

    #[test]
    fn start_timeouts_cascade_down_to_each_child() {
        let config = load(
            "[supervision]\nstart_timeout = \"20s\"\n[pipelines.heartbeat.supervision.paths.ticker]\nstart_timeout = \"5s\"\n",
        );
        let resources = crate::pipelines::Resources::new(super::super::connection(&config, ""));
        let p = super::super::plan(&config, &resources).unwrap();
        let (_, children) = p.pipelines[0].nested().unwrap();
        let child = |id: &str| children.iter().find(|c| c.id == id).unwrap();
        assert_eq!(child("ticker").start_timeout, Duration::from_secs(5));
        assert_eq!(child("publisher").start_timeout, Duration::from_secs(20));
        let (_, path) = child("beats").nested().unwrap();
        assert!(path
            .iter()
            .all(|c| c.start_timeout == Duration::from_secs(20)));
    }
}
