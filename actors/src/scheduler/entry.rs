//! `Entry`: one scheduled job — its name, schedule, zone, start behaviour, jitter, lease and the job itself.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;

use super::lease::{Lease, NoLease};
use super::schedule::{Schedule, DEFAULT_TIME_ZONE};
use crate::observe::Probe;

/// Identifies one run; unique within a scheduler's handle, across restarts of the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RunId(pub u64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a run started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `run_on_start`: the first start of the scheduler in this process.
    Start,
    /// A due time of the schedule.
    Schedule,
    /// An operator's "run now".
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }
}

/// What a successful run reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub records: u64,
    pub bytes: u64,
    /// A line for the admin view (`"merged 12 files"`).
    pub note: Option<String>,
}

impl RunSummary {
    pub fn records(records: u64) -> Self {
        RunSummary {
            records,
            ..RunSummary::default()
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Work done so far by an active run, read by the admin view.
#[derive(Default)]
pub(crate) struct RunProgress {
    pub(crate) records: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// Handed to a job for one run.
pub struct RunContext {
    pub pipeline: String,
    pub entry: String,
    pub run_id: RunId,
    pub trigger: Trigger,
    /// The due time this run is for (the start time for `Start` and `Manual` runs), before
    /// jitter.
    pub due: DateTime<Utc>,
    /// When the run started, on the scheduler's clock.
    pub started: DateTime<Utc>,
    pub(crate) probe: Probe,
    pub(crate) progress: Arc<RunProgress>,
    pub(crate) stop: watch::Receiver<bool>,
}

impl RunContext {
    /// Records work advanced. The scheduler counts as holding work while a run is active, so a
    /// long job reports progress here to stay clear of stuck detection.
    pub fn progress(&self, records: u64, bytes: u64) {
        self.progress.records.fetch_add(records, Ordering::Relaxed);
        self.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.probe.progress(records, bytes);
    }

    /// True once the scheduler is stopping and asks the run to finish early.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves when the scheduler is stopping. A job that does not finish within the
    /// scheduler's `stop_grace` afterwards is dropped.
    pub async fn stopped(&self) {
        let mut stop = self.stop.clone();
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The future a job returns: a summary, or an error message for the log and the admin view.
pub type JobFuture = BoxFuture<'static, Result<RunSummary, String>>;

/// The work an entry does on each run. A job is dropped mid-way when its run is interrupted
/// (the scheduler was killed, or the lease was lost), so it must be safe to run again.
#[derive(Clone)]
pub struct Job(Arc<dyn Fn(RunContext) -> JobFuture + Send + Sync>);

impl Job {
    pub fn new<F, Fut>(job: F) -> Self
    where
        F: Fn(RunContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<RunSummary, String>> + Send + 'static,
    {
        Job(Arc::new(move |ctx| Box::pin(job(ctx))))
    }

    pub(crate) fn call(&self, ctx: RunContext) -> JobFuture {
        (self.0)(ctx)
    }
}

/// One scheduled job.
#[derive(Clone)]
pub struct Entry {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    pub(crate) time_zone: Tz,
    pub(crate) run_on_start: bool,
    pub(crate) jitter: Duration,
    pub(crate) anchor: Option<DateTime<Utc>>,
    pub(crate) lease: Arc<dyn Lease>,
    pub(crate) lease_ttl: Duration,
    pub(crate) job: Job,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("schedule", &self.schedule.to_string())
            .field("time_zone", &self.time_zone.name())
            .field("run_on_start", &self.run_on_start)
            .field("jitter", &self.jitter)
            .field("anchor", &self.anchor)
            .field("lease", &self.lease.kind())
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl Entry {
    /// An entry in `Asia/Seoul`, not run on start, without jitter and without a shared lease.
    pub fn new(name: impl Into<String>, schedule: Schedule, job: Job) -> Self {
        Entry {
            name: name.into(),
            schedule,
            time_zone: DEFAULT_TIME_ZONE,
            run_on_start: false,
            jitter: Duration::ZERO,
            anchor: None,
            lease: Arc::new(NoLease),
            lease_ttl: Duration::from_secs(60),
            job,
        }
    }

    /// The zone a cron expression is read in. Intervals ignore it.
    pub fn time_zone(mut self, tz: Tz) -> Self {
        self.time_zone = tz;
        self
    }

    /// Run once as soon as the scheduler first starts in this process.
    pub fn run_on_start(mut self, yes: bool) -> Self {
        self.run_on_start = yes;
        self
    }

    /// Delays each run by a random time up to `max` after its due time, so generators of many
    /// processes do not fire at the same instant.
    pub fn jitter(mut self, max: Duration) -> Self {
        self.jitter = max;
        self
    }

    /// Where an interval's due times are counted from (`anchor + k * every`). Without one they
    /// count from the scheduler's first start in this process; entries that several processes
    /// share through a lease need a common anchor, so that all compute the same due times.
    pub fn anchor(mut self, at: DateTime<Utc>) -> Self {
        self.anchor = Some(at);
        self
    }

    /// The lease taken before each run, and its ttl (renewed every `ttl / 3`).
    pub fn lease(mut self, lease: Arc<dyn Lease>, ttl: Duration) -> Self {
        self.lease = lease;
        self.lease_ttl = ttl;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn zone(&self) -> Tz {
        self.time_zone
    }

    pub fn runs_on_start(&self) -> bool {
        self.run_on_start
    }
}
