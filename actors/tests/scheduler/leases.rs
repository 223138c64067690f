//! No overlap across processes: two schedulers sharing a lease store.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use actord_actors::scheduler::{
    Entry, Job, Outcome, RunCounts, RunNowError, RunSummary, SkipReason,
};
use actord_actors::testkit::{ManualClock, MemoryLease};
use chrono::{DateTime, TimeDelta, Utc};

use crate::{config, days, hours, mins, run_now, schedule, secs, spawn, utc, Runs};

/// Notes the clock's time when dropped: when a job was cancelled.
struct NoteDrop(Arc<Mutex<Option<DateTime<Utc>>>>, ManualClock);

impl Drop for NoteDrop {
    fn drop(&mut self) {
        use actord_actors::scheduler::Clock;
        *self.0.lock().unwrap() = Some(self.1.now());
    }
}

#[tokio::test(start_paused = true)]
async fn two_schedulers_sharing_a_lease_run_each_due_time_once_in_total() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let store = MemoryLease::new();
    let anchor = DateTime::<Utc>::UNIX_EPOCH;
    let process = |lease: MemoryLease, runs: &Runs, seed: u64| {
        let lease = Arc::new(lease);
        config(
            &clock,
            vec![
                // Short runs with jitter: the later process fires after the earlier one's run
                // ended and its lease was released.
                Entry::new("sync", schedule("*/10 * * * *"), runs.job(secs(1)))
                    .jitter(secs(20))
                    .lease(lease.clone(), secs(30)),
                Entry::new("cache", schedule("50s"), runs.job(secs(40)))
                    .anchor(anchor)
                    .lease(lease, secs(30)),
            ],
        )
        .jitter_seed(seed)
    };
    let (runs_a, runs_b) = (Runs::default(), Runs::default());
    let a = spawn(process(store.clone(), &runs_a, 1)).await;
    // The second process starts later; the common anchor gives it the same due times.
    tokio::time::sleep(secs(23)).await;
    let b = spawn(process(store.process(), &runs_b, 2)).await;
    tokio::time::sleep(hours(2) + mins(1)).await;

    let start = utc("2025-01-01T00:00:00Z");
    for (entry, expected) in [
        (
            "sync",
            (1..=12)
                .map(|k| start + TimeDelta::minutes(10 * k))
                .collect::<Vec<_>>(),
        ),
        (
            "cache",
            // 00:00:00 is a multiple of 50 s since the epoch, as is every due time after it.
            (1..=(7_260 / 50))
                .map(|k| start + TimeDelta::seconds(50 * k))
                .collect::<Vec<_>>(),
        ),
    ] {
        let mut dues = runs_a.dues(entry);
        dues.extend(runs_b.dues(entry));
        let unique: BTreeSet<_> = dues.iter().copied().collect();
        assert_eq!(dues.len(), unique.len(), "{entry}: a due time ran twice");
        assert_eq!(
            unique.into_iter().collect::<Vec<_>>(),
            expected,
            "{entry}: every due time ran"
        );
        let (sa, sb) = (
            a.handle.entry(entry).unwrap().runs,
            b.handle.entry(entry).unwrap().runs,
        );
        assert_eq!(sa.started + sb.started, expected.len() as u64, "{entry}");
        assert_eq!(sa.skipped + sb.skipped, expected.len() as u64, "{entry}");
    }
    // With jitter, either process may be first to a due time.
    assert!(!runs_a.dues("sync").is_empty() && !runs_b.dues("sync").is_empty());
    assert_eq!(
        store.grants(),
        (runs_a.all().len() + runs_b.all().len()) as u64
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_whose_holder_died_expires_and_the_other_process_runs() {
    let clock = ManualClock::at("2025-01-01T09:59:50Z");
    let store = MemoryLease::new();
    let (lease_a, lease_b) = (store.clone(), store.process());
    let (runs_a, runs_b) = (Runs::default(), Runs::default());
    let entry = |lease: MemoryLease, job: Job| {
        vec![Entry::new("sync", schedule("*/10 * * * *"), job).lease(Arc::new(lease), secs(60))]
    };
    // A's job never ends by itself; it notes when it is dropped.
    let dropped = Arc::new(Mutex::new(None));
    let job_a = {
        let (runs, dropped, clock) = (runs_a.clone(), dropped.clone(), clock.clone());
        Job::new(move |ctx| {
            runs.record(&ctx);
            let noted = NoteDrop(dropped.clone(), clock.clone());
            async move {
                let _noted = noted;
                tokio::time::sleep(days(1)).await;
                Ok(RunSummary::default())
            }
        })
    };
    let a = spawn(config(&clock, entry(lease_a.clone(), job_a))).await;
    let b = spawn(config(&clock, entry(lease_b, runs_b.job(secs(5))))).await;
    run_now(&a.actor, None).await.unwrap();
    // Process A freezes: its renewals and its release never reach the store.
    lease_a.crash();

    // 10:00: A's run still holds the lease.
    tokio::time::sleep(secs(15)).await;
    let snap_b = b.handle.entry("sync").unwrap();
    assert!(matches!(
        snap_b.last_outcome,
        Some(Outcome::Skipped {
            reason: SkipReason::LeaseHeld,
            ..
        })
    ));
    // A could not renew at 10:00:10 and gives the run up at 10:00:30, before its lease
    // expires at 10:00:50, so no other process can start while it still runs.
    tokio::time::sleep(secs(30)).await;
    assert_eq!(*dropped.lock().unwrap(), Some(utc("2025-01-01T10:00:30Z")));
    assert!(
        store.is_held("test/sync"),
        "the dead holder's lease lingers"
    );
    tokio::time::sleep(secs(16)).await;
    assert!(!store.is_held("test/sync"), "until its ttl runs out");
    let snap_a = a.handle.entry("sync").unwrap();
    assert!(
        matches!(
            &snap_a.last_outcome,
            Some(Outcome::Failed { error, .. }) if error.starts_with("cancelled, the lease was lost")
        ),
        "{:?}",
        snap_a.last_outcome
    );

    // 10:10: the lease has expired and B runs.
    tokio::time::sleep(mins(10)).await;
    assert_eq!(runs_b.dues("sync"), vec![utc("2025-01-01T10:10:00Z")]);
    assert_eq!(
        b.handle.entry("sync").unwrap().runs,
        RunCounts {
            started: 1,
            succeeded: 1,
            failed: 0,
            skipped: 1
        }
    );
    assert_eq!(runs_a.all().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_is_down_skips_runs_with_a_warning_and_a_short_outage_does_not_cancel_a_run() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let store = MemoryLease::new();
    let runs = Runs::default();
    let s = spawn(config(
        &clock,
        vec![Entry::new("grades", schedule("10m"), runs.job(mins(5)))
            .lease(Arc::new(store.clone()), secs(60))],
    ))
    .await;
    store.set_down(true);
    tokio::time::sleep(mins(10) + secs(1)).await;
    assert_eq!(
        s.handle.entry("grades").unwrap().last_outcome,
        Some(Outcome::Skipped {
            reason: SkipReason::LeaseUnavailable,
            due: utc("2025-01-01T00:10:00Z"),
            detail: Some("connection refused".into()),
        })
    );
    assert_eq!(
        run_now(&s.actor, None).await,
        Err(RunNowError::LeaseUnavailable {
            entry: "grades".into(),
            error: "connection refused".into()
        })
    );
    store.set_down(false);
    tokio::time::sleep(mins(10)).await;
    assert_eq!(runs.dues("grades"), vec![utc("2025-01-01T00:20:00Z")]);

    // During that run (00:20–00:25) the store is down for 30 s: one renewal fails, the next
    // one succeeds, and the run goes on.
    tokio::time::sleep(secs(30)).await;
    store.set_down(true);
    tokio::time::sleep(secs(20)).await;
    store.set_down(false);
    tokio::time::sleep(mins(5)).await;
    let snap = s.handle.entry("grades").unwrap();
    assert!(
        matches!(snap.last_outcome, Some(Outcome::Succeeded { .. })),
        "{:?}",
        snap.last_outcome
    );
    assert_eq!(
        snap.runs,
        RunCounts {
            started: 1,
            succeeded: 1,
            failed: 0,
            // A refused "run now" is an answer to the operator, not a skipped due time.
            skipped: 1
        }
    );
}
