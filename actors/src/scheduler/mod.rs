//! `Scheduler`: runs jobs on intervals or cron expressions in a time zone, one run per entry at a time, across processes too.
//!
//! Guarantees:
//! - Due times come from the schedule and the injected [`Clock`]; the scheduler sleeps on
//!   tokio's timer, at most `max_sleep` at a time, so a wall clock that jumps delays a run by
//!   at most that much. A wake-up that finds several due times passed runs once (no catch-up
//!   storm); interval due times keep their phase (`anchor + k * every`).
//! - An entry never runs twice at once. A due time that comes while the previous run is still
//!   active is skipped, logged and counted (`run_active`). Across processes the same holds
//!   through the entry's [`Lease`]: not granted means skipped (`lease_held`, or `ran_elsewhere`
//!   when another process already ran that due time), a store that does not answer means
//!   skipped with a warning (`lease_unavailable`), never a crash. A run that cannot renew its
//!   lease is cancelled before the lease could pass to another process.
//! - While an operator has paused the pipeline (its subtree is paused in the registry), due
//!   times and `run_on_start` are skipped and counted (`paused`); runs already active go on.
//! - `run_on_start` runs an entry when the scheduler first starts in this process. The
//!   [`SchedulerHandle`] in the arguments outlives incarnations: a restart under the supervisor
//!   keeps the next due time and does not run on start again. Due times are not persisted
//!   across processes.
//! - A job that returns an error or panics is counted as failed; its next due time stays.
//! - Runs are tasks of the incarnation that started them. A graceful stop asks them to finish
//!   (`RunContext::stopped`) and waits `stop_grace`; a kill or a crash drops them at once
//!   (counted as failed, "interrupted") and their leases are released, or expire.
//! - Stuck detection: an active run holds one unit of work on the scheduler's probe and jobs
//!   report progress through [`RunContext::progress`]. With `stuck_after` set on the child spec
//!   (off by default), a run that reports nothing for that long gets the scheduler restarted,
//!   which interrupts the run; the entry runs again at its next due time.

mod clock;
mod config;
mod entry;
mod handle;
mod lease;
mod run;
mod schedule;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

pub use chrono_tz::Tz;
pub use clock::{Clock, SystemClock};
pub use config::SchedulerConfig;
pub use entry::{Entry, Job, JobFuture, RunContext, RunId, RunSummary, Trigger};
pub use handle::{
    ActiveRun, EntrySnapshot, Outcome, RunCounts, SchedulerHandle, SchedulerSnapshot, SkipReason,
};
pub use lease::{Acquire, HeldLease, Lease, LeaseError, LeaseGuard, NoLease};
pub use schedule::{
    format_interval, parse_time_zone, CronExpr, Schedule, ScheduleError, DEFAULT_TIME_ZONE,
};

use crate::observe::Probe;
use crate::spec::ChildSpec;
use run::Run;

/// Why a "run now" did not start a run.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "error", content = "detail", rename_all = "snake_case")]
pub enum RunNowError {
    #[error("no schedule entry named {0:?}")]
    UnknownEntry(String),
    #[error("name the entry to run; this scheduler has {}", .0.join(", "))]
    EntryRequired(Vec<String>),
    #[error("entry {entry:?} is already running (run {run_id})")]
    Active { entry: String, run_id: RunId },
    #[error("entry {0:?}: lease held elsewhere, another process is running it")]
    LeaseHeld(String),
    #[error("entry {entry:?}: lease unavailable: {error}")]
    LeaseUnavailable { entry: String, error: String },
    #[error("the scheduler is stopping")]
    Stopping,
    #[error("the scheduler is not running")]
    NotRunning,
}

type RunNowReply = RpcReplyPort<Result<RunId, RunNowError>>;

/// The scheduler actor. Build its child spec with [`Scheduler::spec`].
pub struct Scheduler;

pub struct SchedulerArgs {
    pub config: SchedulerConfig,
    /// Shared with later incarnations and the admin port.
    pub handle: SchedulerHandle,
    pub probe: Probe,
}

pub enum SchedulerMsg {
    /// Wake-up; ignored unless `generation` is the latest armed.
    Tick {
        generation: u64,
    },
    /// Runs an entry now (`None`: the only entry), under the same no-overlap rules. Answers
    /// once the run started (its lease granted) or was refused.
    RunNow {
        entry: Option<String>,
        reply: RpcReplyPort<Result<RunId, RunNowError>>,
    },
    Observe(RpcReplyPort<SchedulerSnapshot>),
}

/// Per entry: where it sits in the handle and when it next fires.
struct Slot {
    entry: Entry,
    idx: usize,
    anchor: DateTime<Utc>,
    next_due: Option<DateTime<Utc>>,
    next_run: Option<DateTime<Utc>>,
}

pub struct SchedulerState {
    config: SchedulerConfig,
    handle: SchedulerHandle,
    probe: Probe,
    slots: Vec<Slot>,
    generation: u64,
    rng: SplitMix64,
    /// Dropping the sender interrupts this incarnation's runs, even when the actor is killed
    /// and `post_stop` does not run.
    stop: Option<watch::Sender<bool>>,
    runs: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// A child spec for a scheduler with `config`, sharing `handle` across its incarnations.
    /// Its shutdown timeout leaves room for `stop_grace`.
    pub fn spec(
        id: impl Into<String>,
        config: SchedulerConfig,
        handle: SchedulerHandle,
    ) -> Result<ChildSpec, ScheduleError> {
        config.validate()?;
        let shutdown = config.stop_grace + Duration::from_secs(5);
        Ok(ChildSpec::worker(id, move |ctx| {
            let args = SchedulerArgs {
                config: config.clone(),
                handle: handle.clone(),
                probe: ctx.probe,
            };
            async move {
                let (actor, _) = Actor::spawn_linked(None, Scheduler, args, ctx.supervisor).await?;
                Ok(actor.get_cell())
            }
        })
        .shutdown(shutdown))
    }
}

impl SchedulerState {
    fn now(&self) -> DateTime<Utc> {
        self.config.clock.now()
    }

    fn jitter(&mut self, entry: &Entry) -> TimeDelta {
        let max = u64::try_from(entry.jitter.as_millis()).unwrap_or(u64::MAX);
        if max == 0 {
            return TimeDelta::zero();
        }
        let ms = self.rng.next() % (max + 1);
        TimeDelta::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// Sets slot `i`'s next due time to the first one after `after`.
    fn advance(&mut self, i: usize, after: DateTime<Utc>) {
        let slot = &self.slots[i];
        let next = slot
            .entry
            .schedule
            .next_after(after, slot.entry.time_zone, slot.anchor);
        if next.is_none() {
            error!(pipeline = %self.config.pipeline, entry = %slot.entry.name, "schedule has no further due time, entry idle");
        }
        let entry = slot.entry.clone();
        let run = next.map(|due| due + self.jitter(&entry));
        let slot = &mut self.slots[i];
        slot.next_due = next;
        slot.next_run = run;
        self.handle.set_next(slot.idx, next, run);
    }

    /// Claims and spawns a run of slot `i`; `Err` when a run of it is active.
    fn start_run(
        &mut self,
        i: usize,
        trigger: Trigger,
        due: DateTime<Utc>,
        reply: Option<RunNowReply>,
    ) -> Result<RunId, (RunId, Option<RunNowReply>)> {
        let slot = &self.slots[i];
        let (run_id, progress) = match self.handle.claim(slot.idx, trigger, due) {
            Ok(claimed) => claimed,
            Err(active) => return Err((active, reply)),
        };
        let Some(stop) = self.stop.as_ref().map(|s| s.subscribe()) else {
            self.handle.abandon(slot.idx, run_id);
            if let Some(reply) = reply {
                let _ = reply.send(Err(RunNowError::Stopping));
            }
            return Ok(run_id);
        };
        let run = Run {
            pipeline: self.config.pipeline.clone(),
            entry: slot.entry.clone(),
            idx: slot.idx,
            run_id,
            trigger,
            due,
            progress,
            handle: self.handle.clone(),
            probe: self.probe.clone(),
            clock: self.config.clock.clone(),
            stop,
            reply,
        };
        self.runs.retain(|r| !r.is_finished());
        self.runs.push(tokio::spawn(run.execute()));
        Ok(run_id)
    }

    /// Runs or skips every slot whose time has come.
    fn fire_due(&mut self, now: DateTime<Utc>) {
        for i in 0..self.slots.len() {
            let (Some(due), Some(at)) = (self.slots[i].next_due, self.slots[i].next_run) else {
                continue;
            };
            if at > now {
                continue;
            }
            self.advance(i, now.max(due));
            if self.probe.is_paused() {
                // A paused pipeline skips its due runs (no catch-up on resume): the next due
                // time after the resume runs as usual.
                let slot = &self.slots[i];
                info!(pipeline = %self.config.pipeline, entry = %slot.entry.name, due = %due, "run skipped, the pipeline is paused");
                self.handle
                    .skipped(&self.probe, slot.idx, None, SkipReason::Paused, due, None);
                continue;
            }
            if let Err((active, _)) = self.start_run(i, Trigger::Schedule, due, None) {
                let slot = &self.slots[i];
                warn!(pipeline = %self.config.pipeline, entry = %slot.entry.name, due = %due, active_run = %active, "run skipped, previous run still active");
                self.handle.skipped(
                    &self.probe,
                    slot.idx,
                    None,
                    SkipReason::RunActive,
                    due,
                    None,
                );
            }
        }
    }

    /// Sleeps until the earliest next run, or `max_sleep`.
    fn arm(&mut self, myself: &ActorRef<SchedulerMsg>, now: DateTime<Utc>) {
        self.generation += 1;
        let Some(earliest) = self.slots.iter().filter_map(|s| s.next_run).min() else {
            return;
        };
        let wait = (earliest - now).to_std().unwrap_or(Duration::ZERO);
        // Rounded up to whole milliseconds, so the clock has reached the due time on waking.
        let wait = Duration::from_millis(wait.as_nanos().div_ceil(1_000_000) as u64);
        let wait = wait
            .min(self.config.max_sleep)
            .max(Duration::from_millis(1));
        let generation = self.generation;
        myself.send_after(wait, move || SchedulerMsg::Tick { generation });
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.config.validate()?;
        args.handle.attach(myself);
        let indices = args
            .handle
            .register(&args.config.pipeline, &args.config.entries);
        // Run counters exist from the start (at zero), so a dashboard or an alert reading them
        // finds the series before the first run.
        for entry in &args.config.entries {
            for name in [
                crate::names::SCHEDULE_RUNS_STARTED_TOTAL,
                crate::names::SCHEDULE_RUNS_SUCCEEDED_TOTAL,
                crate::names::SCHEDULE_RUNS_FAILED_TOTAL,
            ] {
                metrics::counter!(name, "pipeline" => args.config.pipeline.clone(), "entry" => entry.name.clone())
                    .increment(0);
            }
        }
        let now = args.config.clock.now();
        let seed = args.config.jitter_seed.unwrap_or_else(|| {
            now.timestamp_nanos_opt().unwrap_or_default() as u64 ^ fnv(&args.config.pipeline)
        });
        let slots = args
            .config
            .entries
            .iter()
            .zip(indices)
            .map(|(entry, idx)| Slot {
                entry: entry.clone(),
                idx,
                anchor: now,
                next_due: None,
                next_run: None,
            })
            .collect();
        Ok(SchedulerState {
            config: args.config,
            handle: args.handle,
            probe: args.probe,
            slots,
            generation: 0,
            rng: SplitMix64(seed),
            stop: Some(watch::channel(false).0),
            runs: Vec::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = state.now();
        for i in 0..state.slots.len() {
            let slot = &state.slots[i];
            let found = state
                .handle
                .begin_scheduling(slot.idx, now, slot.entry.anchor);
            state.slots[i].anchor = found.anchor;
            if !found.first && found.next_due.is_some() {
                // A restart: the due time set by the previous incarnation stands. If it passed
                // while we were down, it runs now, once.
                state.slots[i].next_due = found.next_due;
                state.slots[i].next_run = found.next_run;
                continue;
            }
            if found.first && state.slots[i].entry.run_on_start && state.probe.is_paused() {
                let slot = &state.slots[i];
                info!(pipeline = %state.config.pipeline, entry = %slot.entry.name, "run on start skipped, the pipeline is paused");
                state
                    .handle
                    .skipped(&state.probe, slot.idx, None, SkipReason::Paused, now, None);
            } else if found.first && state.slots[i].entry.run_on_start {
                if let Err((active, _)) = state.start_run(i, Trigger::Start, now, None) {
                    debug!(entry = %state.slots[i].entry.name, active_run = %active, "run on start skipped, a run is active");
                }
            }
            state.advance(i, now);
        }
        for slot in &state.slots {
            info!(pipeline = %state.config.pipeline, entry = %slot.entry.name, schedule = %slot.entry.schedule, time_zone = slot.entry.time_zone.name(), next_due = ?slot.next_due, "entry scheduled");
        }
        state.fire_due(now);
        state.arm(&myself, now);
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.handle.detach(&myself);
        state.runs.retain(|r| !r.is_finished());
        if let Some(stop) = state.stop.as_ref() {
            stop.send_replace(true);
        }
        let runs = std::mem::take(&mut state.runs);
        if runs.is_empty() {
            return Ok(());
        }
        info!(pipeline = %state.config.pipeline, runs = runs.len(), grace = ?state.config.stop_grace, "waiting for active runs to finish");
        let mut all = Box::pin(futures::future::join_all(runs));
        if tokio::time::timeout(state.config.stop_grace, all.as_mut())
            .await
            .is_err()
        {
            warn!(pipeline = %state.config.pipeline, "active runs did not finish within the grace period, interrupting them");
            state.stop = None;
            // Let them release their leases and record the interruption.
            let _ = tokio::time::timeout(Duration::from_secs(1), all).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Tick { generation } if generation == state.generation => {
                let now = state.now();
                state.fire_due(now);
                state.arm(&myself, now);
            }
            SchedulerMsg::Tick { .. } => {} // superseded by a later arm
            SchedulerMsg::RunNow { entry, reply } => {
                let found = match &entry {
                    Some(name) => state
                        .slots
                        .iter()
                        .position(|s| s.entry.name == *name)
                        .ok_or_else(|| RunNowError::UnknownEntry(name.clone())),
                    None if state.slots.len() == 1 => Ok(0),
                    None => Err(RunNowError::EntryRequired(
                        state.slots.iter().map(|s| s.entry.name.clone()).collect(),
                    )),
                };
                match found {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok(i) => {
                        let now = state.now();
                        info!(pipeline = %state.config.pipeline, entry = %state.slots[i].entry.name, "run requested");
                        if let Err((run_id, Some(reply))) =
                            state.start_run(i, Trigger::Manual, now, Some(reply))
                        {
                            let _ = reply.send(Err(RunNowError::Active {
                                entry: state.slots[i].entry.name.clone(),
                                run_id,
                            }));
                        }
                    }
                }
            }
            SchedulerMsg::Observe(reply) => {
                let _ = reply.send(state.handle.snapshot());
            }
        }
        Ok(())
    }
}

/// A small seedable generator for jitter (SplitMix64); quality is ample for spreading start
/// times and it keeps tests deterministic.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
