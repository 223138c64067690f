//! `[pipelines.backfill]` as written, and how it is read into [`BackfillConfig`].

use std::time::Duration;

use serde::Deserialize;

use super::mode::{self, Mode};
use crate::config::schedule::{self, ScheduleSettings};
use crate::config::{Check, PipelineConfig, RawSchedule, RawSupervision, Secret};
use crate::leases::LeaseKind;
use crate::sinks::objects::store::Location;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackfill {
    /// Topic to archive (KAFKA_TOPIC); default "fms-temphum".
    pub topic: Option<String>,
    /// Consumer group whose committed offsets mark what is archived (KAFKA_GROUP_ID); default
    /// "backfill-loader".
    pub group: Option<String>,
    /// Appended to the topic for dead letters; default "-dlq".
    pub dlq_suffix: Option<String>,
    /// Mode of scheduled runs: "incremental" (default), "fresh" or "continue".
    pub mode: Option<String>,
    /// With mode "continue": the first record time to archive,
    /// "YYYY-MM-DD[THH:MM[:SS]][offset]" (no offset: Asia/Seoul).
    pub from_date: Option<String>,
    /// The message field holding the record time; default the first of "timestamp", "ts",
    /// "time", "event_time" present.
    pub timestamp_field: Option<String>,
    /// Bucket (MINIO_BUCKET); default "fms-temphum".
    pub bucket: Option<String>,
    /// MinIO / S3 endpoint (MINIO_ENDPOINT): a URL, or host:port (then http://). Overrides
    /// `[s3] endpoint` for this pipeline; setting it selects the bucket even when `dir` is set.
    pub endpoint: Option<String>,
    /// Access key (MINIO_ACCESS_KEY); default `[s3] access_key_id`.
    pub access_key: Option<String>,
    /// Secret key (MINIO_SECRET_KEY); default `[s3] secret_access_key`. Use "${VAR}".
    pub secret_key: Option<String>,
    /// Region of the bucket; default `[s3] region`.
    pub region: Option<String>,
    /// A local directory to write into instead of the bucket (objects under
    /// `<dir>/<bucket>/`), unless `endpoint` is set.
    pub dir: Option<String>,
    /// Key prefix inside the bucket above `year=`; default none.
    pub prefix: Option<String>,
    /// Records per object batch at most; default 100000.
    pub batch_size: Option<u32>,
    /// Rows per Parquet row group; default 65536.
    pub row_group_size: Option<u32>,
    /// Runs a synthetic sensor generator into the topic (embedded broker only, see
    /// `--demo-into-cluster`).
    pub demo: Option<bool>,
    /// Synthetic readings per second when `demo` is on; default 20.
    pub demo_rate: Option<u32>,
    /// When runs happen: default every "3d", run_on_start = true (RUN_ON_START).
    #[serde(default)]
    pub schedule: RawSchedule,
    /// Supervision overrides for this pipeline and its paths.
    #[serde(default)]
    pub supervision: RawSupervision,
}

/// Where the objects go, and the credentials of a bucket.
#[derive(Debug, Clone)]
pub struct Store {
    pub location: Location,
    pub endpoint: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<Secret>,
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct BackfillConfig {
    pub topic: String,
    pub group: String,
    pub dlq_suffix: String,
    /// The mode and start of scheduled runs.
    pub mode: Mode,
    pub timestamp_field: Option<String>,
    pub store: Store,
    pub batch_size: usize,
    pub row_group_size: usize,
    pub demo: bool,
    pub demo_rate: u32,
    pub schedule: Option<ScheduleSettings>,
}

const K: &str = "pipelines.backfill";

/// `host:port` becomes `http://host:port`; a URL stays as written.
pub fn endpoint_url(raw: &str) -> String {
    let raw = raw.trim().trim_end_matches('/');
    if raw.starts_with("http://") || raw.starts_with("https://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    }
}

impl BackfillConfig {
    fn validate(raw: &RawBackfill, check: &mut Check<'_>) -> Self {
        let k = |f: &str| format!("{K}.{f}");
        let text = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let topic = text(&raw.topic).unwrap_or_else(|| "fms-temphum".to_owned());
        let group = text(&raw.group).unwrap_or_else(|| "backfill-loader".to_owned());
        let mode_name = text(&raw.mode).unwrap_or_else(|| "incremental".to_owned());
        let mode = match mode::parse(&mode_name, raw.from_date.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                let key = if e.contains("date") {
                    k("from_date")
                } else {
                    k("mode")
                };
                check.problem(&key, e);
                Mode::Incremental
            }
        };
        let bucket = text(&raw.bucket).unwrap_or_else(|| "fms-temphum".to_owned());
        let endpoint = text(&raw.endpoint).map(|e| endpoint_url(&e));
        let location = match (text(&raw.dir), &endpoint) {
            (Some(dir), None) => Location::Dir(std::path::PathBuf::from(dir).join(&bucket)),
            _ => Location::Bucket {
                name: bucket,
                region: text(&raw.region),
            },
        };
        let positive = |check: &mut Check<'_>, f: &str, v: Option<u32>, default: u32| match v {
            Some(0) => {
                check.problem(&k(f), "expected a number above zero");
                default as usize
            }
            Some(n) => n as usize,
            None => default as usize,
        };
        let timestamp_field = text(&raw.timestamp_field);
        let mut sched = raw.schedule.clone();
        if sched.every.is_none() && sched.cron.is_none() {
            sched.every = Some("3d".to_owned());
        }
        sched.run_on_start = Some(sched.run_on_start.unwrap_or(true));
        let schedule = schedule::validate(&sched, &k("schedule"), check);
        if let Some(s) = &schedule {
            if s.lease != LeaseKind::None && s.lease_url.is_none() {
                check.problem(
                    &k("schedule.lease_url"),
                    format!(
                        "needed for lease = \"{}\": the backfill uses no store of its own",
                        s.lease.as_str()
                    ),
                );
            }
        }
        BackfillConfig {
            dlq_suffix: raw.dlq_suffix.clone().unwrap_or_else(|| "-dlq".to_owned()),
            topic,
            group,
            mode,
            timestamp_field,
            store: Store {
                location,
                endpoint,
                access_key: text(&raw.access_key),
                secret_key: text(&raw.secret_key).map(Secret::new),
                prefix: raw
                    .prefix
                    .clone()
                    .unwrap_or_default()
                    .trim_matches('/')
                    .to_owned(),
            },
            batch_size: positive(check, "batch_size", raw.batch_size, 100_000),
            row_group_size: positive(check, "row_group_size", raw.row_group_size, 65_536),
            demo: raw.demo.unwrap_or(false),
            demo_rate: raw.demo_rate.unwrap_or(20).max(1),
            schedule,
        }
    }

    /// The dead-letter topic: `fms-temphum-dlq` by default.
    pub fn dlq_topic(&self) -> String {
        format!("{}{}", self.topic, self.dlq_suffix)
    }

    /// How long a run may go without progress before it is given up.
    pub fn stall_limit(&self) -> Duration {
        Duration::from_secs(120)
    }
}

impl PipelineConfig for BackfillConfig {
    type Raw = RawBackfill;

    fn supervision(raw: &RawBackfill) -> &RawSupervision {
        &raw.supervision
    }

    fn validate(raw: &RawBackfill, check: &mut Check<'_>) -> Self {
        BackfillConfig::validate(raw, check)
    }
}
