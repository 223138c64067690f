//! Environment overrides: the seeds' variable names, `ACTORD_<PIPELINE>_<NAME>`, and `${VAR}`
//! interpolation, all applied to the TOML tree before it is typed.

use std::collections::{BTreeMap, BTreeSet};

use toml::{Table, Value};

use super::Problem;
use crate::pipelines::PipelineDef;

/// How an environment value becomes a config value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Str,
    Bool,
    Int,
    Float,
    /// An integer number of milliseconds (names ending `_MS`) for a duration key.
    Millis,
    /// An integer number of seconds (names ending `_SEC`) for a duration key.
    Secs,
    /// A comma-separated list.
    List,
}

/// One variable: its name, the config key it sets and its unit.
#[derive(Clone, Copy, Debug)]
pub struct EnvKey {
    pub name: &'static str,
    /// Dotted key; for a pipeline variable, relative to `pipelines.<name>`.
    pub key: &'static str,
    pub unit: Unit,
    /// A seed's own name: also read without the `ACTORD_<PIPELINE>_` prefix.
    pub seed: bool,
}

impl EnvKey {
    pub const fn new(name: &'static str, key: &'static str, unit: Unit) -> Self {
        EnvKey {
            name,
            key,
            unit,
            seed: false,
        }
    }

    pub const fn seed(name: &'static str, key: &'static str, unit: Unit) -> Self {
        EnvKey {
            name,
            key,
            unit,
            seed: true,
        }
    }
}

/// Cluster-wide and process-wide variables, read whatever is enabled.
pub const GLOBAL: &[EnvKey] = &[
    EnvKey::new("KAFKA_BROKERS", "kafka.brokers", Unit::Str),
    EnvKey::new("ACTORD_ADMIN_LISTEN", "admin.listen", Unit::Str),
    EnvKey::new("ACTORD_ADMIN_TOKEN", "admin.token", Unit::Str),
    EnvKey::new("ACTORD_ADMIN_INSECURE", "admin.insecure", Unit::Bool),
    EnvKey::new("ACTORD_FAIL_FAST", "runtime.fail_fast", Unit::Bool),
    EnvKey::new("ACTORD_LOG_FORMAT", "log.format", Unit::Str),
    EnvKey::new("ACTORD_LOG_LEVEL", "log.level", Unit::Str),
    EnvKey::new("AWS_ENDPOINT_URL", "s3.endpoint", Unit::Str),
    EnvKey::new("AWS_REGION", "s3.region", Unit::Str),
    EnvKey::new("AWS_ACCESS_KEY_ID", "s3.access_key_id", Unit::Str),
    EnvKey::new("AWS_SECRET_ACCESS_KEY", "s3.secret_access_key", Unit::Str),
    EnvKey::new("AWS_SESSION_TOKEN", "s3.session_token", Unit::Str),
    EnvKey::new("AWS_ALLOW_HTTP", "s3.allow_http", Unit::Bool),
];

/// The prefixed form of a pipeline variable: `ACTORD_FTP_SYNC_BATCH_SIZE`.
pub fn prefixed(pipeline: &str, name: &str) -> String {
    format!(
        "ACTORD_{}_{}",
        pipeline.to_ascii_uppercase().replace('-', "_"),
        name
    )
}

/// Where each overridden key came from, for error messages.
pub type Origins = BTreeMap<String, String>;

/// Applies every override found in `env` to `table`, recording problems.
pub fn apply(
    table: &mut Table,
    env: &BTreeMap<String, String>,
    enabled: &[&PipelineDef],
    origins: &mut Origins,
    problems: &mut Vec<Problem>,
) {
    for key in GLOBAL {
        if let Some(raw) = env.get(key.name) {
            set(table, key.key, key, key.name, raw, origins, problems);
        }
    }
    // A seed name shared by several enabled pipelines cannot say which one it means.
    let mut claimed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for def in enabled {
        for key in def.env.iter().filter(|k| k.seed) {
            claimed.entry(key.name).or_default().push(def.name);
        }
    }
    let ambiguous: BTreeSet<&str> = claimed
        .iter()
        .filter(|(name, owners)| owners.len() > 1 && env.contains_key(**name))
        .map(|(name, _)| *name)
        .collect();
    for name in &ambiguous {
        let owners = &claimed[name];
        let forms: Vec<String> = owners
            .iter()
            .map(|p| format!("{} for {p}", prefixed(p, name)))
            .collect();
        problems.push(Problem::new(
            format!("environment variable {name}"),
            "",
            format!(
                "belongs to the seeds of {}, which are enabled together, so it cannot say which one it sets; \
                 unset {name} (in the environment and any --env-file) and set {} (a pipeline without \
                 its variable keeps its configured value)",
                owners.join(" and "),
                forms.join(", ")
            ),
        ));
    }
    for def in enabled {
        for key in def.env {
            let full_key = format!("pipelines.{}.{}", def.name, key.key);
            let long = prefixed(def.name, key.name);
            if key.seed && !ambiguous.contains(key.name) {
                if let Some(raw) = env.get(key.name) {
                    set(table, &full_key, key, key.name, raw, origins, problems);
                }
            }
            // The prefixed form is the more specific one and wins.
            if let Some(raw) = env.get(&long) {
                set(table, &full_key, key, &long, raw, origins, problems);
            }
        }
        if let Some(scan) = def.env_scan {
            for (key, unit, var) in scan(env) {
                let full_key = format!("pipelines.{}.{}", def.name, key);
                let spec = EnvKey::new("", "", unit);
                set(table, &full_key, &spec, &var, &env[&var], origins, problems);
            }
        }
    }
}

fn set(
    table: &mut Table,
    dotted: &str,
    key: &EnvKey,
    var: &str,
    raw: &str,
    origins: &mut Origins,
    problems: &mut Vec<Problem>,
) {
    match convert(key.unit, raw) {
        Ok(value) => {
            insert(table, dotted, value);
            origins.insert(dotted.to_owned(), format!("environment variable {var}"));
        }
        Err(expected) => problems.push(Problem::new(
            format!("environment variable {var}"),
            dotted,
            format!("expected {expected}, found {raw:?}"),
        )),
    }
}

fn convert(unit: Unit, raw: &str) -> Result<Value, &'static str> {
    let t = raw.trim();
    match unit {
        Unit::Str => Ok(Value::String(raw.to_owned())),
        Unit::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err("true or false"),
        },
        Unit::Int => t
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| "an integer"),
        Unit::Float => t.parse::<f64>().map(Value::Float).map_err(|_| "a number"),
        Unit::Millis => t
            .parse::<u64>()
            .map(|n| Value::String(format!("{n}ms")))
            .map_err(|_| "a whole number of milliseconds"),
        Unit::Secs => t
            .parse::<u64>()
            .map(|n| Value::String(format!("{n}s")))
            .map_err(|_| "a whole number of seconds"),
        Unit::List => Ok(Value::Array(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        )),
    }
}

/// Sets a dotted key, creating the tables on the way.
pub fn insert(table: &mut Table, dotted: &str, value: Value) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().expect("non-empty key");
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
    current.insert(last.to_owned(), value);
}

/// Replaces `${VAR}` in every string with the variable's value (`$${` stays a literal `${`).
pub fn interpolate(
    value: &mut Value,
    key: &str,
    file: &str,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::String(s) if s.contains("${") => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(var) => problems.push(Problem::new(
                file,
                key,
                format!("refers to ${{{var}}}, which is not set in the environment"),
            )),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{key}[{i}]"), file, env, problems);
            }
        }
        Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                interpolate(v, &sub, file, env, problems);
            }
        }
        _ => {}
    }
}

fn expand(s: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[pos..]);
            return Ok(out);
        };
        let var = &after[..end];
        match env.get(var) {
            Some(v) => out.push_str(v),
            None => return Err(var.to_owned()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_variables_and_escapes() {
        let e = env(&[("PASS", "s3cret")]);
        assert_eq!(expand("a-${PASS}-b", &e).unwrap(), "a-s3cret-b");
        assert_eq!(expand("$${PASS}", &e).unwrap(), "${PASS}");
        assert_eq!(expand("${NOPE}", &e).unwrap_err(), "NOPE");
    }

    #[test]
    fn converts_units() {
        assert_eq!(
            convert(Unit::Millis, "5000").unwrap(),
            Value::String("5000ms".into())
        );
        assert_eq!(
            convert(Unit::Secs, "3600").unwrap(),
            Value::String("3600s".into())
        );
        assert_eq!(convert(Unit::Bool, "TRUE").unwrap(), Value::Boolean(true));
        assert!(convert(Unit::Millis, "5s").is_err());
        assert_eq!(
            convert(Unit::List, "market.tick, market.orderbook").unwrap(),
            Value::Array(vec![
                Value::String("market.tick".into()),
                Value::String("market.orderbook".into())
            ])
        );
    }

    #[test]
    fn inserts_dotted_keys() {
        let mut t = Table::new();
        insert(&mut t, "pipelines.x.interval", Value::String("2s".into()));
        assert_eq!(t["pipelines"]["x"]["interval"].as_str(), Some("2s"));
    }
}
