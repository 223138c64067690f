//! The schedule section a pipeline embeds (`[pipelines.<name>.schedule]`): when an entry runs and which lease keeps processes from running it twice.

use std::sync::Arc;
use std::time::Duration;

use actord_actors::scheduler::{
    parse_time_zone, Entry, Job, Lease, LeaseError, Schedule, Tz, DEFAULT_TIME_ZONE,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{Check, Secret};
use crate::leases::{self, LeaseKind};

/// A schedule as written; `validate` turns it into [`ScheduleSettings`].
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// Time between runs, e.g. "50s", "10m", "3d"; set this or `cron`.
    pub every: Option<String>,
    /// A 5-field cron expression (minute hour day-of-month month day-of-week) read in
    /// `time_zone`, e.g. "0 */2 * * *"; set this or `every`.
    pub cron: Option<String>,
    /// IANA time zone the cron expression is read in; default "Asia/Seoul".
    pub time_zone: Option<String>,
    /// Run once as soon as the pipeline starts in this process (RUN_ON_START).
    pub run_on_start: Option<bool>,
    /// Delay each run by a random time up to this, e.g. "30s", so processes do not all fire at
    /// once; default "0s".
    pub jitter: Option<String>,
    /// RFC 3339 time an `every` interval counts from, e.g. "2025-01-01T00:00:00+09:00". Default:
    /// the process start, or the Unix epoch when a lease is shared, so that every process
    /// computes the same due times.
    pub anchor: Option<String>,
    /// Where runs are claimed so that only one process runs each due time: "none" (this
    /// process only), "redis" or "postgres".
    pub lease: Option<String>,
    /// Address of the lease store: "redis://host:6379" or a PostgreSQL URL or connection string
    /// ("host=… user=… dbname=…"); use "${VAR}" for a password.
    pub lease_url: Option<String>,
    /// How long a claim lasts without renewal, e.g. "60s"; renewed every third of it while the
    /// run lasts, so a process that dies mid-run frees the entry after at most this long.
    pub lease_ttl: Option<String>,
    /// Separates deployments that share a store (staging and production): Redis keys start
    /// with `<namespace>:lease:`, PostgreSQL leases live in the table `<namespace>_leases`;
    /// default "actord".
    pub lease_namespace: Option<String>,
}

/// A validated schedule section.
#[derive(Clone, Debug)]
pub struct ScheduleSettings {
    pub schedule: Schedule,
    pub time_zone: Tz,
    pub run_on_start: bool,
    pub jitter: Duration,
    /// Where an interval counts from; `None` counts from the scheduler's first start.
    pub anchor: Option<DateTime<Utc>>,
    pub lease: LeaseKind,
    pub lease_url: Option<Secret>,
    pub lease_ttl: Duration,
    pub lease_namespace: String,
}

/// Shortest lease ttl for a store: a renewal (every third of it) needs a network round trip.
const MIN_STORE_TTL: Duration = Duration::from_secs(1);

impl ScheduleSettings {
    /// An entry named `name` running `job` with `lease`.
    pub fn entry_with(&self, name: &str, job: Job, lease: Arc<dyn Lease>) -> Entry {
        let mut entry = Entry::new(name, self.schedule.clone(), job)
            .time_zone(self.time_zone)
            .run_on_start(self.run_on_start)
            .jitter(self.jitter)
            .lease(lease, self.lease_ttl);
        if let Some(anchor) = self.anchor {
            entry = entry.anchor(anchor);
        }
        entry
    }

    /// An entry named `name` running `job`, with the lease this section names at `lease_url`.
    pub fn entry(&self, name: &str, job: Job) -> Result<Entry, LeaseError> {
        let lease = leases::open(
            self.lease,
            self.lease_url.as_ref().map(Secret::expose),
            &self.lease_namespace,
        )?;
        Ok(self.entry_with(name, job, lease))
    }
}

/// Checks `raw`, the section at TOML key `key` (e.g. `pipelines.backfill.schedule`), reporting
/// each problem under its own key. `None` when no schedule can be built from it.
pub fn validate(raw: &RawSchedule, key: &str, check: &mut Check<'_>) -> Option<ScheduleSettings> {
    let at = |field: &str| format!("{key}.{field}");
    let schedule = match (raw.every.as_deref(), raw.cron.as_deref()) {
        (Some(_), Some(_)) => {
            check.problem(key, "set either `every` or `cron`, not both");
            None
        }
        (None, None) => {
            check.problem(
                key,
                "expected `every` (e.g. \"10m\") or `cron` (e.g. \"0 */2 * * *\")",
            );
            None
        }
        (Some(every), None) => match Schedule::every(every) {
            Ok(Schedule::Every(d)) if d.is_zero() => {
                check.problem(&at("every"), "expected an interval above zero");
                None
            }
            Ok(s) => Some(s),
            Err(e) => {
                check.problem(&at("every"), e.to_string());
                None
            }
        },
        (None, Some(cron)) => Schedule::cron(cron)
            .map_err(|e| check.problem(&at("cron"), e.to_string()))
            .ok(),
    };
    let time_zone = match raw.time_zone.as_deref() {
        None => DEFAULT_TIME_ZONE,
        Some(name) => parse_time_zone(name).unwrap_or_else(|e| {
            check.problem(&at("time_zone"), e.to_string());
            DEFAULT_TIME_ZONE
        }),
    };
    let jitter = check.duration(&at("jitter"), raw.jitter.as_deref(), Duration::ZERO);
    let lease = match raw.lease.as_deref() {
        None => LeaseKind::None,
        Some(name) => check
            .choice(&at("lease"), name, LeaseKind::NAMES)
            .unwrap_or_default(),
    };
    let lease_url = raw
        .lease_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    match (lease, lease_url) {
        (LeaseKind::None, Some(_)) => check.problem(
            &at("lease_url"),
            "is set but `lease` is \"none\"; set lease = \"redis\" or \"postgres\", or remove it",
        ),
        (kind, Some(url)) => {
            if let Err(e) = kind.check_url(url) {
                check.problem(&at("lease_url"), e);
            }
        }
        (LeaseKind::None, None) => {}
        // Whether the pipeline's own store stands in is the pipeline's call.
        (_, None) => {}
    }
    let lease_ttl = check.positive_duration(
        &at("lease_ttl"),
        raw.lease_ttl.as_deref(),
        Duration::from_secs(60),
    );
    if lease != LeaseKind::None && lease_ttl < MIN_STORE_TTL {
        check.problem(
            &at("lease_ttl"),
            format!(
                "expected at least {MIN_STORE_TTL:?} for a {} lease (it is renewed every third of it)",
                lease.as_str()
            ),
        );
    }
    let lease_namespace = match raw.lease_namespace.as_deref().map(str::trim) {
        None => leases::DEFAULT_NAMESPACE.to_owned(),
        Some(ns) => {
            if let Err(e) = leases::check_namespace(ns) {
                check.problem(&at("lease_namespace"), e);
            }
            ns.to_owned()
        }
    };
    let anchor = match raw.anchor.as_deref() {
        Some(text) => match DateTime::parse_from_rfc3339(text.trim()) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                check.problem(
                    &at("anchor"),
                    format!("expected an RFC 3339 time such as \"2025-01-01T00:00:00+09:00\", found {text:?}: {e}"),
                );
                None
            }
        },
        // Processes sharing a lease must agree on due times; their start times differ.
        None if lease != LeaseKind::None => Some(DateTime::<Utc>::UNIX_EPOCH),
        None => None,
    };
    if raw.anchor.is_some() && raw.cron.is_some() {
        check.problem(
            &at("anchor"),
            "applies to `every` only; a cron expression fixes its own times",
        );
    }
    Some(ScheduleSettings {
        schedule: schedule?,
        time_zone,
        run_on_start: raw.run_on_start.unwrap_or(false),
        jitter,
        anchor,
        lease,
        lease_url: lease_url.map(Secret::new),
        lease_ttl,
        lease_namespace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{env::Origins, Problem};

    fn run(toml: &str) -> (Option<ScheduleSettings>, Vec<Problem>) {
        let raw: RawSchedule = toml::from_str(toml).expect("parses as a schedule section");
        let origins = Origins::new();
        let mut problems = Vec::new();
        let mut check = Check::new("supervision.toml", &origins, &mut problems);
        let settings = validate(&raw, "pipelines.x.schedule", &mut check);
        (settings, problems)
    }

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn a_cron_entry_takes_the_defaults() {
        let (s, p) = run("cron = \"0 */2 * * *\"");
        assert!(p.is_empty(), "{p:?}");
        let s = s.unwrap();
        assert_eq!(s.schedule.to_string(), "0 */2 * * *");
        assert_eq!(s.time_zone, chrono_tz_seoul());
        assert!(!s.run_on_start);
        assert_eq!(s.jitter, Duration::ZERO);
        assert_eq!(s.lease, LeaseKind::None);
        assert_eq!(s.lease_ttl, Duration::from_secs(60));
        assert_eq!(s.anchor, None);
        assert_eq!(s.lease_namespace, "actord");
    }

    fn chrono_tz_seoul() -> Tz {
        parse_time_zone("Asia/Seoul").unwrap()
    }

    #[test]
    fn every_key_is_read() {
        let (s, p) = run(
            "every = \"3d\"\ntime_zone = \"Europe/Berlin\"\nrun_on_start = true\njitter = \"30s\"\n\
             anchor = \"2025-01-01T00:00:00+09:00\"\nlease = \"redis\"\n\
             lease_url = \"redis://127.0.0.1:6379\"\nlease_ttl = \"2m\"\nlease_namespace = \"staging\"",
        );
        assert!(p.is_empty(), "{p:?}");
        let s = s.unwrap();
        assert_eq!(s.schedule, Schedule::Every(Duration::from_secs(3 * 86_400)));
        assert_eq!(s.time_zone.name(), "Europe/Berlin");
        assert!(s.run_on_start);
        assert_eq!(s.jitter, Duration::from_secs(30));
        assert_eq!(s.anchor.unwrap().to_rfc3339(), "2024-12-31T15:00:00+00:00");
        assert_eq!(s.lease, LeaseKind::Redis);
        assert_eq!(
            s.lease_url.as_ref().map(Secret::expose),
            Some("redis://127.0.0.1:6379")
        );
        assert_eq!(s.lease_ttl, Duration::from_secs(120));
        assert_eq!(s.lease_namespace, "staging");
    }

    #[test]
    fn a_shared_interval_counts_from_the_epoch() {
        let (s, p) = run("every = \"50s\"\nlease = \"postgres\"\nlease_url = \"host=db user=app\"");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(s.unwrap().anchor, Some(DateTime::<Utc>::UNIX_EPOCH));
    }

    #[test]
    fn neither_or_both_forms_are_rejected_at_the_section() {
        let (s, p) = run("time_zone = \"UTC\"");
        assert!(s.is_none());
        assert_eq!(keys(&p), ["pipelines.x.schedule"]);
        assert!(p[0].message.contains("`every`"), "{}", p[0].message);

        let (s, p) = run("every = \"1m\"\ncron = \"* * * * *\"");
        assert!(s.is_none());
        assert_eq!(keys(&p), ["pipelines.x.schedule"]);
        assert!(p[0].message.contains("not both"), "{}", p[0].message);
    }

    #[test]
    fn bad_values_are_reported_under_their_keys() {
        let (s, p) = run(
            "cron = \"0 9 * *\"\ntime_zone = \"Asia/Busan\"\njitter = \"soon\"\nlease = \"etcd\"\n\
             lease_ttl = \"0s\"\nanchor = \"2025-01-01\"",
        );
        assert!(s.is_none());
        assert_eq!(
            keys(&p),
            [
                "pipelines.x.schedule.cron",
                "pipelines.x.schedule.time_zone",
                "pipelines.x.schedule.jitter",
                "pipelines.x.schedule.lease",
                "pipelines.x.schedule.lease_ttl",
                "pipelines.x.schedule.anchor",
                "pipelines.x.schedule.anchor",
            ]
        );
        assert!(
            p[0].message.contains("expected 5 fields"),
            "{}",
            p[0].message
        );
        assert!(p[1].message.contains("Asia/Busan"), "{}", p[1].message);
        assert!(
            p[3].message.contains("none, redis, postgres"),
            "{}",
            p[3].message
        );
        assert!(p[5].message.contains("RFC 3339"), "{}", p[5].message);
        assert!(p[6].message.contains("`every` only"), "{}", p[6].message);
    }

    #[test]
    fn an_interval_must_parse_and_be_above_zero() {
        let (_, p) = run("every = \"soon\"");
        assert_eq!(keys(&p), ["pipelines.x.schedule.every"]);
        assert!(
            p[0].message.contains("invalid interval"),
            "{}",
            p[0].message
        );
        let (_, p) = run("every = \"0s\"");
        assert_eq!(keys(&p), ["pipelines.x.schedule.every"]);
    }

    #[test]
    fn lease_addresses_and_ttls_are_checked() {
        let (_, p) = run("every = \"1m\"\nlease_url = \"redis://127.0.0.1\"");
        assert_eq!(keys(&p), ["pipelines.x.schedule.lease_url"]);
        assert!(p[0].message.contains("\"none\""), "{}", p[0].message);

        let (_, p) = run("every = \"1m\"\nlease = \"redis\"\nlease_url = \"http://127.0.0.1\"");
        assert_eq!(keys(&p), ["pipelines.x.schedule.lease_url"]);
        assert!(
            p[0].message.contains("invalid redis url"),
            "{}",
            p[0].message
        );

        let (_, p) = run("every = \"1m\"\nlease = \"postgres\"\nlease_url = \"host=db port=x\"");
        assert_eq!(keys(&p), ["pipelines.x.schedule.lease_url"]);
        assert!(
            p[0].message.contains("invalid postgres"),
            "{}",
            p[0].message
        );

        let (_, p) = run("every = \"1m\"\nlease = \"redis\"\nlease_ttl = \"500ms\"");
        assert_eq!(keys(&p), ["pipelines.x.schedule.lease_ttl"]);
        assert!(p[0].message.contains("at least 1s"), "{}", p[0].message);

        let (_, p) = run("every = \"1m\"\nlease = \"postgres\"\nlease_namespace = \"Prod-1\"");
        assert_eq!(keys(&p), ["pipelines.x.schedule.lease_namespace"]);
        assert!(p[0].message.contains("lowercase"), "{}", p[0].message);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<RawSchedule>("cron = \"* * * * *\"\nrun_on_startup = true")
            .unwrap_err();
        assert!(err.to_string().contains("run_on_startup"), "{err}");
    }
}
