//! `SchedulerConfig`: a scheduler's entries, clock and timing knobs.

use std::sync::Arc;
use std::time::Duration;

use super::clock::{Clock, SystemClock};
use super::entry::Entry;
use super::schedule::ScheduleError;

/// What a scheduler runs, and how.
#[derive(Clone)]
pub struct SchedulerConfig {
    /// The pipeline label of metrics and logs, and the first part of lease keys.
    pub pipeline: String,
    pub entries: Vec<Entry>,
    pub clock: Arc<dyn Clock>,
    /// The longest single sleep; the clock is read again at least this often.
    pub max_sleep: Duration,
    /// How long a graceful stop waits for active runs after asking them to finish.
    pub stop_grace: Duration,
    /// Seeds the jitter; `None` seeds it from the clock.
    pub jitter_seed: Option<u64>,
}

impl SchedulerConfig {
    pub fn new(pipeline: impl Into<String>, entries: Vec<Entry>) -> Self {
        SchedulerConfig {
            pipeline: pipeline.into(),
            entries,
            clock: Arc::new(SystemClock),
            max_sleep: Duration::from_secs(60),
            stop_grace: Duration::from_secs(5),
            jitter_seed: None,
        }
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn max_sleep(mut self, max: Duration) -> Self {
        self.max_sleep = max;
        self
    }

    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Entry names are present and unique, lease ttls long enough to renew.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let mut seen = std::collections::HashSet::new();
        for e in &self.entries {
            if e.name.trim().is_empty() {
                return Err(ScheduleError::EmptyName);
            }
            if !seen.insert(e.name.as_str()) {
                return Err(ScheduleError::DuplicateEntry(e.name.clone()));
            }
            if e.lease_ttl < Duration::from_millis(3) {
                return Err(ScheduleError::LeaseTtl {
                    entry: e.name.clone(),
                    ttl: e.lease_ttl,
                });
            }
        }
        Ok(())
    }
}
