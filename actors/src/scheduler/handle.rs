//! `SchedulerHandle`: the scheduler's state that outlives its incarnations, read by the admin port without a call.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use ractor::rpc::CallResult;
use ractor::ActorRef;

use super::entry::{Entry, RunId, RunProgress, RunSummary, Trigger};
use super::{RunNowError, SchedulerMsg};
use crate::names;
use crate::observe::Probe;

/// Why a due time did not run. A closed set: it is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The previous run of the entry was still active.
    RunActive,
    /// Another process holds the entry's lease.
    LeaseHeld,
    /// The lease store did not answer.
    LeaseUnavailable,
    /// Another process already ran this due time.
    RanElsewhere,
    /// An operator paused the pipeline.
    Paused,
}

impl SkipReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::RunActive => "run_active",
            SkipReason::LeaseHeld => "lease_held",
            SkipReason::LeaseUnavailable => "lease_unavailable",
            SkipReason::RanElsewhere => "ran_elsewhere",
            SkipReason::Paused => "paused",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::RunActive => "previous run still active",
            SkipReason::LeaseHeld => "lease held elsewhere",
            SkipReason::LeaseUnavailable => "lease unavailable",
            SkipReason::RanElsewhere => "already ran elsewhere",
            SkipReason::Paused => "pipeline paused",
        })
    }
}

/// How the last run (or skipped due time) of an entry ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded {
        run_id: RunId,
        summary: RunSummary,
    },
    Failed {
        run_id: RunId,
        error: String,
    },
    Skipped {
        reason: SkipReason,
        due: DateTime<Utc>,
        /// The store's error for `lease_unavailable`.
        detail: Option<String>,
    },
}

/// Runs of one entry since the process started, by how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// A run in progress.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActiveRun {
    pub run_id: RunId,
    pub trigger: Trigger,
    pub due: DateTime<Utc>,
    /// `None` while the lease is being taken.
    pub started: Option<DateTime<Utc>>,
    pub records: u64,
    pub bytes: u64,
}

/// The observable state of one entry.
#[derive(Clone, Debug, Serialize)]
pub struct EntrySnapshot {
    pub name: String,
    /// `every 3d` or the cron expression.
    pub schedule: String,
    pub time_zone: String,
    pub run_on_start: bool,
    /// The lease kind (`none`, `redis`, …).
    pub lease: String,
    /// The next due time of the schedule.
    pub next_due: Option<DateTime<Utc>>,
    /// When that run will start: the due time plus jitter.
    pub next_run: Option<DateTime<Utc>>,
    pub active: Option<ActiveRun>,
    pub last_start: Option<DateTime<Utc>>,
    pub last_outcome: Option<Outcome>,
    pub last_duration_seconds: Option<f64>,
    pub last_success: Option<DateTime<Utc>>,
    pub runs: RunCounts,
}

/// The observable state of a scheduler.
#[derive(Clone, Debug, Serialize)]
pub struct SchedulerSnapshot {
    pub pipeline: String,
    pub entries: Vec<EntrySnapshot>,
}

impl SchedulerSnapshot {
    pub fn entry(&self, name: &str) -> Option<&EntrySnapshot> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// The scheduler's state shared with its runs, its next incarnations and the admin port. Cheap
/// to clone. Give the same handle to every incarnation (build it once, outside the child spec's
/// start function): that is what keeps a restart from repeating `run_on_start`.
#[derive(Clone, Default)]
pub struct SchedulerHandle {
    inner: Arc<Mutex<Book>>,
}

#[derive(Default)]
struct Book {
    pipeline: String,
    /// The running incarnation, for "run now" from outside the tree.
    actor: Option<ActorRef<SchedulerMsg>>,
    entries: Vec<Record>,
    last_run_id: u64,
}

struct Record {
    snap: EntrySnapshot,
    /// Set by the first incarnation that scheduled the entry; later ones skip `run_on_start`.
    scheduled: bool,
    anchor: Option<DateTime<Utc>>,
    progress: Option<Arc<RunProgress>>,
}

/// What an incarnation finds when it schedules an entry.
pub(crate) struct Scheduling {
    /// No earlier incarnation in this process scheduled the entry.
    pub(crate) first: bool,
    pub(crate) anchor: DateTime<Utc>,
    pub(crate) next_due: Option<DateTime<Utc>>,
    pub(crate) next_run: Option<DateTime<Utc>>,
}

impl SchedulerHandle {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot(&self) -> SchedulerSnapshot {
        let book = self.lock();
        SchedulerSnapshot {
            pipeline: book.pipeline.clone(),
            entries: book.entries.iter().map(Record::snapshot).collect(),
        }
    }

    pub fn entry(&self, name: &str) -> Option<EntrySnapshot> {
        let book = self.lock();
        book.entries
            .iter()
            .find(|r| r.snap.name == name)
            .map(Record::snapshot)
    }

    /// The running incarnation of the scheduler, if any.
    pub fn actor(&self) -> Option<ActorRef<SchedulerMsg>> {
        self.lock().actor.clone()
    }

    /// Asks the running incarnation to run `entry` now (`None`: its only entry); answers once
    /// the run started or was refused.
    pub async fn run_now(&self, entry: Option<&str>) -> Result<RunId, RunNowError> {
        let actor = self.actor().ok_or(RunNowError::NotRunning)?;
        let entry = entry.map(str::to_owned);
        match actor
            .call(|reply| SchedulerMsg::RunNow { entry, reply }, None)
            .await
        {
            Ok(CallResult::Success(answer)) => answer,
            _ => Err(RunNowError::NotRunning),
        }
    }

    pub(crate) fn attach(&self, actor: ActorRef<SchedulerMsg>) {
        self.lock().actor = Some(actor);
    }

    /// Forgets `actor`, unless a newer incarnation took its place.
    pub(crate) fn detach(&self, actor: &ActorRef<SchedulerMsg>) {
        let mut book = self.lock();
        if book.actor.as_ref().map(|a| a.get_id()) == Some(actor.get_id()) {
            book.actor = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds entries not seen before and refreshes the description of known ones; returns each
    /// entry's index in the book.
    pub(crate) fn register(&self, pipeline: &str, entries: &[Entry]) -> Vec<usize> {
        let mut book = self.lock();
        book.pipeline = pipeline.to_owned();
        entries
            .iter()
            .map(|e| {
                let idx = match book.entries.iter().position(|r| r.snap.name == e.name) {
                    Some(idx) => idx,
                    None => {
                        book.entries.push(Record::new(&e.name));
                        book.entries.len() - 1
                    }
                };
                let snap = &mut book.entries[idx].snap;
                snap.schedule = e.schedule.to_string();
                snap.time_zone = e.time_zone.name().to_owned();
                snap.run_on_start = e.run_on_start;
                snap.lease = e.lease.kind().to_owned();
                idx
            })
            .collect()
    }

    pub(crate) fn begin_scheduling(
        &self,
        idx: usize,
        now: DateTime<Utc>,
        anchor: Option<DateTime<Utc>>,
    ) -> Scheduling {
        let mut book = self.lock();
        let rec = &mut book.entries[idx];
        let first = !rec.scheduled;
        rec.scheduled = true;
        let anchor = *rec.anchor.get_or_insert(anchor.unwrap_or(now));
        Scheduling {
            first,
            anchor,
            next_due: rec.snap.next_due,
            next_run: rec.snap.next_run,
        }
    }

    pub(crate) fn set_next(
        &self,
        idx: usize,
        next_due: Option<DateTime<Utc>>,
        next_run: Option<DateTime<Utc>>,
    ) {
        let mut book = self.lock();
        book.entries[idx].snap.next_due = next_due;
        book.entries[idx].snap.next_run = next_run;
    }

    /// Marks a run of entry `idx` active, unless one already is (its id is the error).
    pub(crate) fn claim(
        &self,
        idx: usize,
        trigger: Trigger,
        due: DateTime<Utc>,
    ) -> Result<(RunId, Arc<RunProgress>), RunId> {
        let mut book = self.lock();
        if let Some(active) = &book.entries[idx].snap.active {
            return Err(active.run_id);
        }
        book.last_run_id += 1;
        let run_id = RunId(book.last_run_id);
        let progress = Arc::new(RunProgress::default());
        let rec = &mut book.entries[idx];
        rec.progress = Some(progress.clone());
        rec.snap.active = Some(ActiveRun {
            run_id,
            trigger,
            due,
            started: None,
            records: 0,
            bytes: 0,
        });
        Ok((run_id, progress))
    }

    /// The lease was granted: the run counts as started.
    pub(crate) fn started(&self, probe: &Probe, idx: usize, run_id: RunId, at: DateTime<Utc>) {
        let mut book = self.lock();
        let (pipeline, rec) = book.split(idx);
        if let Some(active) = rec.snap.active.as_mut().filter(|a| a.run_id == run_id) {
            active.started = Some(at);
        }
        rec.snap.last_start = Some(at);
        rec.snap.runs.started += 1;
        metrics::counter!(names::SCHEDULE_RUNS_STARTED_TOTAL, "pipeline" => pipeline, "entry" => rec.snap.name.clone())
            .increment(1);
        probe.add_counter("runs_started", 1);
    }

    /// A started run ended.
    pub(crate) fn finished(
        &self,
        probe: &Probe,
        idx: usize,
        run_id: RunId,
        result: Result<RunSummary, String>,
        took: Duration,
        at: DateTime<Utc>,
    ) {
        let mut book = self.lock();
        let (pipeline, rec) = book.split(idx);
        rec.clear_active(run_id);
        let entry = rec.snap.name.clone();
        rec.snap.last_duration_seconds = Some(took.as_secs_f64());
        metrics::histogram!(names::SCHEDULE_RUN_DURATION_SECONDS, "pipeline" => pipeline.clone(), "entry" => entry.clone())
            .record(took.as_secs_f64());
        match result {
            Ok(summary) => {
                rec.snap.runs.succeeded += 1;
                rec.snap.last_success = Some(at);
                rec.snap.last_outcome = Some(Outcome::Succeeded { run_id, summary });
                metrics::counter!(names::SCHEDULE_RUNS_SUCCEEDED_TOTAL, "pipeline" => pipeline.clone(), "entry" => entry.clone())
                    .increment(1);
                metrics::gauge!(names::SCHEDULE_LAST_SUCCESS_TIMESTAMP_SECONDS, "pipeline" => pipeline, "entry" => entry)
                    .set(at.timestamp_millis() as f64 / 1000.0);
                probe.add_counter("runs_succeeded", 1);
            }
            Err(error) => {
                rec.snap.runs.failed += 1;
                rec.snap.last_outcome = Some(Outcome::Failed { run_id, error });
                metrics::counter!(names::SCHEDULE_RUNS_FAILED_TOTAL, "pipeline" => pipeline, "entry" => entry)
                    .increment(1);
                probe.add_counter("runs_failed", 1);
            }
        }
    }

    /// A due time did not run; `run_id` is the claim to give back, if one was made.
    pub(crate) fn skipped(
        &self,
        probe: &Probe,
        idx: usize,
        run_id: Option<RunId>,
        reason: SkipReason,
        due: DateTime<Utc>,
        detail: Option<String>,
    ) {
        let mut book = self.lock();
        let (pipeline, rec) = book.split(idx);
        if let Some(run_id) = run_id {
            rec.clear_active(run_id);
        }
        rec.snap.runs.skipped += 1;
        rec.snap.last_outcome = Some(Outcome::Skipped {
            reason,
            due,
            detail,
        });
        metrics::counter!(names::SCHEDULE_RUNS_SKIPPED_TOTAL, "pipeline" => pipeline, "entry" => rec.snap.name.clone(), "reason" => reason.as_str())
            .increment(1);
        probe.add_counter("runs_skipped", 1);
    }

    /// Gives back a claim that never became a run (the scheduler stopped while taking the
    /// lease).
    pub(crate) fn abandon(&self, idx: usize, run_id: RunId) {
        self.lock().entries[idx].clear_active(run_id);
    }
}

impl Book {
    fn split(&mut self, idx: usize) -> (String, &mut Record) {
        (self.pipeline.clone(), &mut self.entries[idx])
    }
}

impl Record {
    fn new(name: &str) -> Self {
        Record {
            snap: EntrySnapshot {
                name: name.to_owned(),
                schedule: String::new(),
                time_zone: String::new(),
                run_on_start: false,
                lease: String::new(),
                next_due: None,
                next_run: None,
                active: None,
                last_start: None,
                last_outcome: None,
                last_duration_seconds: None,
                last_success: None,
                runs: RunCounts::default(),
            },
            scheduled: false,
            anchor: None,
            progress: None,
        }
    }

    fn clear_active(&mut self, run_id: RunId) {
        // A run from an earlier incarnation may end after a newer one started: it only clears
        // its own claim.
        if self.snap.active.as_ref().map(|a| a.run_id) == Some(run_id) {
            self.snap.active = None;
            self.progress = None;
        }
    }

    fn snapshot(&self) -> EntrySnapshot {
        let mut snap = self.snap.clone();
        if let (Some(active), Some(progress)) = (snap.active.as_mut(), &self.progress) {
            active.records = progress.records.load(Ordering::Relaxed);
            active.bytes = progress.bytes.load(Ordering::Relaxed);
        }
        snap
    }
}
