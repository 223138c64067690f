//! The scheduler on paused tokio time with a manual wall clock: days pass in milliseconds.

mod leases;
mod restarts;
mod runs;
mod timing;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actord_actors::observe::{ActorKind, Registry};
use actord_actors::scheduler::{
    Entry, Job, RunContext, RunId, RunNowError, RunSummary, Schedule, Scheduler, SchedulerArgs,
    SchedulerConfig, SchedulerHandle, SchedulerMsg, Trigger,
};
use actord_actors::testkit::ManualClock;
use actord_actors::{ActorPath, Probe};
use chrono::{DateTime, Utc};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};

pub fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

pub fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3_600)
}

pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

pub fn schedule(s: &str) -> Schedule {
    Schedule::parse(s).unwrap()
}

/// One run as the job saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ran {
    pub entry: String,
    pub run_id: RunId,
    pub trigger: Trigger,
    pub due: DateTime<Utc>,
    pub started: DateTime<Utc>,
}

/// Every run of the jobs built from it, in start order.
#[derive(Clone, Default)]
pub struct Runs(Arc<Mutex<Vec<Ran>>>);

impl Runs {
    pub fn record(&self, ctx: &RunContext) -> usize {
        let mut runs = self.0.lock().unwrap();
        runs.push(Ran {
            entry: ctx.entry.clone(),
            run_id: ctx.run_id,
            trigger: ctx.trigger,
            due: ctx.due,
            started: ctx.started,
        });
        runs.len()
    }

    pub fn all(&self) -> Vec<Ran> {
        self.0.lock().unwrap().clone()
    }

    pub fn of(&self, entry: &str) -> Vec<Ran> {
        self.all()
            .into_iter()
            .filter(|r| r.entry == entry)
            .collect()
    }

    /// Due times of `entry`'s runs, in order.
    pub fn dues(&self, entry: &str) -> Vec<DateTime<Utc>> {
        self.of(entry).iter().map(|r| r.due).collect()
    }

    /// A job that records its run and works for `work`.
    pub fn job(&self, work: Duration) -> Job {
        let runs = self.clone();
        Job::new(move |ctx| {
            runs.record(&ctx);
            async move {
                tokio::time::sleep(work).await;
                Ok(RunSummary::records(1))
            }
        })
    }
}

pub struct Sched {
    pub actor: ActorRef<SchedulerMsg>,
    pub handle: SchedulerHandle,
    pub probe: Probe,
}

pub fn config(clock: &ManualClock, entries: Vec<Entry>) -> SchedulerConfig {
    SchedulerConfig::new("test", entries)
        .clock(Arc::new(clock.clone()))
        .jitter_seed(1)
}

/// Spawns a scheduler outside any supervisor.
pub async fn spawn(config: SchedulerConfig) -> Sched {
    let registry = Registry::new();
    let probe = registry.probe(
        &ActorPath::parse("/test/scheduler").unwrap(),
        ActorKind::Worker,
    );
    let handle = SchedulerHandle::new();
    let (actor, _) = Actor::spawn(
        None,
        Scheduler,
        SchedulerArgs {
            config,
            handle: handle.clone(),
            probe: probe.clone(),
        },
    )
    .await
    .expect("spawn scheduler");
    Sched {
        actor,
        handle,
        probe,
    }
}

pub async fn run_now(
    actor: &ActorRef<SchedulerMsg>,
    entry: Option<&str>,
) -> Result<RunId, RunNowError> {
    let entry = entry.map(str::to_owned);
    match actor
        .call(|reply| SchedulerMsg::RunNow { entry, reply }, None)
        .await
        .expect("scheduler alive")
    {
        CallResult::Success(answer) => answer,
        other => panic!("run now got no answer: {other:?}"),
    }
}
