//! `[pipelines.heartbeat]` as written, and how it is read into [`HeartbeatConfig`].

use serde::Deserialize;

use super::HeartbeatConfig;
use crate::config::{Check, PipelineConfig, RawSchedule, RawSupervision};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeartbeat {
    /// Time between beats, e.g. "1s".
    pub interval: Option<String>,
    /// Topic the beats go through.
    pub topic: Option<String>,
    /// Consumer group reading the beats back.
    pub group: Option<String>,
    /// An optional scheduled entry `beat`: each run publishes one extra beat marked
    /// `"scheduled": true`. Absent by default.
    pub schedule: Option<RawSchedule>,
    /// How long a scheduled run lasts after its beat was delivered, e.g. "5s"; default "0s".
    /// Lets an operator watch an active run and the no-overlap rule.
    pub schedule_hold: Option<String>,
    /// Supervision overrides for this pipeline and its paths.
    #[serde(default)]
    pub supervision: RawSupervision,
}

impl PipelineConfig for HeartbeatConfig {
    type Raw = RawHeartbeat;

    fn supervision(raw: &RawHeartbeat) -> &RawSupervision {
        &raw.supervision
    }

    fn validate(raw: &RawHeartbeat, check: &mut Check<'_>) -> Self {
        HeartbeatConfig::validate(raw, check)
    }
}
