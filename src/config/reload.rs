//! What a configuration reload changes: which pipelines restart, start and stop, and which
//! settings wait for a restart of the process.
//!
//! A pipeline counts as changed when the settings it is built from differ between the running
//! configuration and the new one, compared as text after the environment, `--env-file` and the
//! flags were applied: its own `[pipelines.<name>]` table (its supervision overrides included),
//! `[supervision]` and `[s3]`, and `[kafka]` for a pipeline that uses Kafka. Writing out a value
//! that equals its default counts as a change; comments and layout do not.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use toml::{Table, Value};

use super::{Config, ConfigError};
use crate::pipelines;

/// Reads the configuration again from where the process read it (the file, `--env-file`, the
/// flags and the process environment as it was at start).
pub type Loader = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// What a reload did, by pipeline name; the reply of `POST /api/config/reload` and the log line.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reloaded {
    /// Where the configuration was read from.
    pub config: String,
    /// Running pipelines whose settings changed: their subtree was stopped gracefully and
    /// started again from the new settings.
    pub restarted: Vec<String>,
    /// Pipelines enabled by the new configuration, started.
    pub added: Vec<String>,
    /// Pipelines no longer enabled, stopped gracefully.
    pub removed: Vec<String>,
    /// Running pipelines whose settings did not change: untouched.
    pub unchanged: Vec<String>,
    /// Settings that changed but apply only to a new process (`admin.*`, `log.*`,
    /// `runtime.fail_fast`, `runtime.cool_down`, `runtime.shutdown_timeout`); the running
    /// values stay.
    pub needs_restart: Vec<String>,
    /// Pipelines whose new subtree did not start, with why.
    pub failed: Vec<String>,
    /// Warnings of the new configuration (as `actord check` prints them) and notes on how it
    /// was applied.
    pub notes: Vec<String>,
}

impl Reloaded {
    /// Whether the reload touched any pipeline.
    pub fn changed_anything(&self) -> bool {
        !(self.restarted.is_empty() && self.added.is_empty() && self.removed.is_empty())
    }

    /// One line for the log and the reply's first line.
    pub fn summary(&self) -> String {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        format!(
            "restarted: {}; added: {}; removed: {}; unchanged: {}",
            list(&self.restarted),
            list(&self.added),
            list(&self.removed),
            list(&self.unchanged)
        )
    }
}

/// Why a reload changed nothing.
#[derive(Debug, Clone)]
pub enum ReloadError {
    /// The new configuration is invalid (what `actord check` would refuse).
    Invalid(ConfigError),
    /// This instance was not started from a configuration it can read again.
    Unavailable(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Invalid(e) => write!(f, "{e}"),
            ReloadError::Unavailable(why) => f.write_str(why),
        }
    }
}

/// A hash of the text each registered pipeline is built from (see the module comment), by name.
pub(super) fn fingerprints(table: &Table, config: &Config) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for def in pipelines::PIPELINES {
        let mut parts = Table::new();
        if let Some(section) = table.get("pipelines").and_then(|p| p.get(def.name)) {
            parts.insert("section".to_owned(), section.clone());
        }
        let uses_kafka = def.kafka_keys.is_some() || !(def.topics)(config).is_empty();
        for shared in ["supervision", "s3", "kafka"] {
            if shared == "kafka" && !uses_kafka {
                continue;
            }
            if let Some(v) = table.get(shared) {
                parts.insert(shared.to_owned(), v.clone());
            }
        }
        // Only a hash is kept: the text holds passwords, and a Config may be printed.
        let text = toml::to_string(&Value::Table(parts)).unwrap_or_default();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&text, &mut hasher);
        out.insert(def.name.to_owned(), std::hash::Hasher::finish(&hasher));
    }
    out
}

/// Compares the running configuration with a new one and keeps, in `new`, the running values of
/// the settings that apply only to a new process. Says which pipelines to restart, start and
/// stop; the enabled order of `new` is kept.
pub fn reconcile(old: &Config, new: &mut Config) -> Reloaded {
    let mut out = Reloaded {
        config: new.source.clone(),
        ..Reloaded::default()
    };
    let mut differ = |name: &str, same: bool| {
        if !same {
            out.needs_restart.push(name.to_owned());
        }
    };
    differ("admin.listen", old.admin.listen == new.admin.listen);
    differ("admin.token", old.admin.token == new.admin.token);
    differ(
        "admin.fault_injection",
        old.admin.fault_injection == new.admin.fault_injection,
    );
    differ("admin.insecure", old.admin.insecure == new.admin.insecure);
    differ("log.format", old.log.format == new.log.format);
    differ("log.level", old.log.level == new.log.level);
    differ(
        "runtime.fail_fast",
        old.runtime.fail_fast == new.runtime.fail_fast,
    );
    differ(
        "runtime.cool_down",
        old.runtime.cool_down == new.runtime.cool_down,
    );
    differ(
        "runtime.shutdown_timeout",
        old.runtime.shutdown_timeout == new.runtime.shutdown_timeout,
    );
    new.admin = old.admin.clone();
    new.log = old.log.clone();
    new.runtime.fail_fast = old.runtime.fail_fast;
    new.runtime.cool_down = old.runtime.cool_down;
    new.runtime.shutdown_timeout = old.runtime.shutdown_timeout;
    for name in &new.runtime.enabled {
        if !old.runtime.enabled.contains(name) {
            out.added.push(name.clone());
        } else if old.fingerprints.get(name) != new.fingerprints.get(name) {
            out.restarted.push(name.clone());
        } else {
            out.unchanged.push(name.clone());
        }
    }
    out.removed = old
        .runtime
        .enabled
        .iter()
        .filter(|n| !new.runtime.enabled.contains(n))
        .cloned()
        .collect();
    if new.runtime.enabled_by_flag {
        out.notes.push(
            "--enable pins the enabled pipelines; runtime.enable in the file is not read while \
             it is given"
                .to_owned(),
        );
    }
    out
}
