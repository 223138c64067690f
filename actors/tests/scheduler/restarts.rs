//! The scheduler as a supervised worker: restarts do not repeat runs, stuck runs restart it.

use std::sync::Arc;
use std::time::Duration;

use actord_actors::observe::{ActorKind, Registry, Status};
use actord_actors::scheduler::{
    Entry, Job, Outcome, RunSummary, Scheduler, SchedulerHandle, Trigger,
};
use actord_actors::testkit::{eventually, ManualClock, MemoryLease};
use actord_actors::{
    ActorPath, Backoff, ChildSpec, Probe, Strategy, Supervisor, SupervisorArgs, SupervisorMsg,
    SupervisorSpec, Supervisors,
};
use chrono::TimeDelta;
use ractor::{call, Actor, ActorRef};

use crate::{config, days, hours, mins, schedule, secs, utc, Runs};

struct Tree {
    sup: ActorRef<SupervisorMsg>,
    probe: Probe,
}

/// A supervisor at `/p` over one child, the scheduler at `/p/scheduler`.
async fn supervise(child: ChildSpec) -> Tree {
    let registry = Registry::new();
    let spec = SupervisorSpec {
        strategy: Strategy::OneForOne,
        max_restarts: 10,
        within: Duration::from_secs(600),
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
        },
        stuck_check: secs(1),
        concurrent_stop: false,
    };
    let (sup, _) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec,
            children: vec![child],
            probe: registry.probe(&ActorPath::parse("/p").unwrap(), ActorKind::Supervisor),
            supervisors: Supervisors::default(),
        },
    )
    .await
    .expect("spawn supervisor");
    let probe = registry.probe(
        &ActorPath::parse("/p/scheduler").unwrap(),
        ActorKind::Worker,
    );
    Tree { sup, probe }
}

impl Tree {
    async fn restarted(&self, times: u64) {
        let probe = self.probe.clone();
        assert!(
            eventually(secs(10), || probe.restarts() == times
                && probe.status() == Status::Running)
            .await,
            "scheduler restarted {} times, status {:?}",
            probe.restarts(),
            probe.status()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn restarts_under_the_supervisor_do_not_run_an_entry_again() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let handle = SchedulerHandle::new();
    let entries = vec![
        Entry::new("backfill", schedule("1h"), runs.job(mins(1))).run_on_start(true),
        Entry::new("report", schedule("0 * * * *"), runs.job(secs(1))),
    ];
    let tree =
        supervise(Scheduler::spec("scheduler", config(&clock, entries), handle.clone()).unwrap())
            .await;
    tokio::time::sleep(mins(10)).await;
    assert_eq!(runs.all().len(), 1);

    // A crash, then an operator restart: neither runs `backfill` on start again.
    call!(tree.sup, SupervisorMsg::FailChild, "scheduler".to_owned())
        .unwrap()
        .unwrap();
    tree.restarted(1).await;
    tokio::time::sleep(mins(5)).await;
    call!(
        tree.sup,
        SupervisorMsg::RestartChild,
        "scheduler".to_owned()
    )
    .unwrap()
    .unwrap();
    tree.restarted(2).await;
    tokio::time::sleep(mins(5)).await;
    assert_eq!(runs.all().len(), 1, "{:?}", runs.all());

    // The schedule goes on from the first start.
    tokio::time::sleep(mins(42)).await;
    let start = utc("2025-01-01T00:00:00Z");
    let backfill = runs.of("backfill");
    assert_eq!(
        backfill
            .iter()
            .map(|r| (r.trigger, r.due))
            .collect::<Vec<_>>(),
        vec![
            (Trigger::Start, start),
            (Trigger::Schedule, start + TimeDelta::hours(1)),
        ]
    );
    assert_eq!(runs.dues("report"), vec![start + TimeDelta::hours(1)]);
    let snap = handle.entry("backfill").unwrap();
    assert_eq!((snap.runs.started, snap.runs.succeeded), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_crash_during_a_run_interrupts_it_releases_the_lease_and_does_not_repeat_it() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let lease = MemoryLease::new();
    let handle = SchedulerHandle::new();
    let entries = vec![Entry::new("backfill", schedule("1d"), runs.job(hours(2)))
        .run_on_start(true)
        .lease(Arc::new(lease.clone()), secs(30))];
    let tree =
        supervise(Scheduler::spec("scheduler", config(&clock, entries), handle.clone()).unwrap())
            .await;
    tokio::time::sleep(mins(10)).await;
    assert!(lease.is_held("test/backfill"));
    call!(tree.sup, SupervisorMsg::FailChild, "scheduler".to_owned())
        .unwrap()
        .unwrap();
    tree.restarted(1).await;
    let h = handle.clone();
    assert!(
        eventually(secs(5), || matches!(
            &h.entry("backfill").unwrap().last_outcome,
            Some(Outcome::Failed { error, .. }) if error == "interrupted, the scheduler stopped"
        ))
        .await
    );
    assert!(!lease.is_held("test/backfill"));
    tokio::time::sleep(hours(3)).await;
    assert_eq!(runs.all().len(), 1);
    tokio::time::sleep(days(1)).await;
    assert_eq!(
        runs.dues("backfill"),
        vec![utc("2025-01-01T00:00:00Z"), utc("2025-01-02T00:00:00Z")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_run_that_reports_progress_is_not_stuck_but_a_silent_one_is() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let handle = SchedulerHandle::new();
    let chatty = Job::new(|ctx| async move {
        for _ in 0..20 {
            tokio::time::sleep(secs(30)).await;
            ctx.progress(100, 0);
        }
        Ok(RunSummary::records(2_000))
    });
    let silent = Job::new(|_ctx| async move {
        tokio::time::sleep(hours(1)).await;
        Ok(RunSummary::default())
    });
    let entries = vec![
        Entry::new("chatty", schedule("1d"), chatty).run_on_start(true),
        Entry::new("silent", schedule("1d"), silent),
    ];
    let spec = Scheduler::spec("scheduler", config(&clock, entries), handle.clone())
        .unwrap()
        .stuck_after(Some(mins(2)));
    let tree = supervise(spec).await;
    tokio::time::sleep(mins(11)).await;
    assert_eq!(tree.probe.restarts(), 0);
    assert!(matches!(
        handle.entry("chatty").unwrap().last_outcome,
        Some(Outcome::Succeeded { .. })
    ));

    let scheduler = tree.probe.clone();
    // The admin port's way in: the handle knows the current incarnation.
    handle.run_now(Some("silent")).await.unwrap();
    tokio::time::sleep(mins(1)).await;
    assert_eq!(tree.probe.restarts(), 0);
    tokio::time::sleep(mins(2)).await;
    tree.restarted(1).await;
    let h = handle.clone();
    assert!(
        eventually(secs(5), || matches!(
            &h.entry("silent").unwrap().last_outcome,
            Some(Outcome::Failed { error, .. }) if error == "interrupted, the scheduler stopped"
        ))
        .await
    );
    assert!(scheduler
        .last_error()
        .unwrap()
        .message
        .starts_with("stuck: held 1 units of work"));
    // The restart ran nothing on start.
    assert_eq!(handle.entry("chatty").unwrap().runs.started, 1);
}
