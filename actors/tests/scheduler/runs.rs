//! What happens to runs: overlap, run now, failures, panics, observation and stopping.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use actord_actors::scheduler::{
    Entry, Job, Outcome, RunCounts, RunId, RunNowError, RunSummary, SchedulerMsg, SkipReason,
    Trigger,
};
use actord_actors::testkit::{eventually, ManualClock};
use chrono::TimeDelta;
use ractor::call;

use crate::{config, hours, mins, run_now, schedule, secs, spawn, utc, Runs};

#[tokio::test(start_paused = true)]
async fn a_due_time_during_a_long_run_is_skipped_and_counted() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let s = spawn(config(
        &clock,
        vec![Entry::new("slow", schedule("10m"), runs.job(mins(25)))],
    ))
    .await;
    // Runs at 00:10 until 00:35; 00:20 and 00:30 come while it is active.
    tokio::time::sleep(mins(25)).await;
    let snap = s.handle.entry("slow").unwrap();
    assert_eq!(snap.active.as_ref().map(|a| a.run_id), Some(RunId(1)));
    assert_eq!(
        snap.last_outcome,
        Some(Outcome::Skipped {
            reason: SkipReason::RunActive,
            due: utc("2025-01-01T00:20:00Z"),
            detail: None,
        })
    );
    tokio::time::sleep(mins(20) + secs(1)).await;
    let start = utc("2025-01-01T00:00:00Z");
    assert_eq!(
        runs.dues("slow"),
        vec![
            start + TimeDelta::minutes(10),
            start + TimeDelta::minutes(40)
        ]
    );
    let snap = s.handle.entry("slow").unwrap();
    assert_eq!(
        snap.runs,
        RunCounts {
            started: 2,
            succeeded: 1,
            failed: 0,
            skipped: 2
        }
    );
    assert_eq!(s.probe.counter("runs_skipped"), 2);
}

#[tokio::test(start_paused = true)]
async fn run_now_starts_the_only_entry_and_refuses_while_it_runs() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let s = spawn(config(
        &clock,
        vec![Entry::new("backfill", schedule("3d"), runs.job(mins(30)))],
    ))
    .await;
    tokio::time::sleep(mins(5)).await;
    let id = run_now(&s.actor, None).await.unwrap();
    assert_eq!(
        run_now(&s.actor, Some("backfill")).await,
        Err(RunNowError::Active {
            entry: "backfill".into(),
            run_id: id
        })
    );
    let ran = runs.of("backfill");
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].trigger, Trigger::Manual);
    assert_eq!(ran[0].run_id, id);
    assert_eq!(ran[0].due, utc("2025-01-01T00:05:00Z"));
    assert_eq!(
        run_now(&s.actor, Some("nope")).await,
        Err(RunNowError::UnknownEntry("nope".into()))
    );
    tokio::time::sleep(mins(31)).await;
    // Finished: another run may start, and the schedule was not moved.
    let again = run_now(&s.actor, None).await.unwrap();
    assert!(again > id);
    let snap = s.handle.entry("backfill").unwrap();
    assert_eq!(snap.next_due, Some(utc("2025-01-04T00:00:00Z")));
    assert_eq!(snap.runs.started, 2);
    assert_eq!(snap.runs.skipped, 0);
}

#[tokio::test(start_paused = true)]
async fn run_now_needs_a_name_when_there_are_several_entries() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let s = spawn(config(
        &clock,
        vec![
            Entry::new("cache", schedule("50s"), runs.job(secs(1))),
            Entry::new("grades", schedule("10m"), runs.job(secs(1))),
        ],
    ))
    .await;
    let err = run_now(&s.actor, None).await.unwrap_err();
    assert_eq!(
        err,
        RunNowError::EntryRequired(vec!["cache".into(), "grades".into()])
    );
    assert_eq!(
        err.to_string(),
        "name the entry to run; this scheduler has cache, grades"
    );
    run_now(&s.actor, Some("grades")).await.unwrap();
    assert_eq!(runs.of("grades").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_run_is_counted_and_the_next_one_still_runs() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let calls = Arc::new(AtomicU32::new(0));
    let job = {
        let runs = runs.clone();
        let calls = calls.clone();
        Job::new(move |ctx| {
            runs.record(&ctx);
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err("redis: connection refused".to_owned())
                } else {
                    Ok(RunSummary::records(7).note("refreshed"))
                }
            }
        })
    };
    let s = spawn(config(
        &clock,
        vec![Entry::new("grades", schedule("10m"), job)],
    ))
    .await;
    tokio::time::sleep(mins(11)).await;
    let snap = s.handle.entry("grades").unwrap();
    assert_eq!(
        snap.last_outcome,
        Some(Outcome::Failed {
            run_id: RunId(1),
            error: "redis: connection refused".into()
        })
    );
    assert_eq!(snap.next_due, Some(utc("2025-01-01T00:20:00Z")));
    let err = s.probe.last_error().unwrap().message;
    assert_eq!(err, "grades: run 1 failed: redis: connection refused");
    tokio::time::sleep(mins(10)).await;
    let snap = s.handle.entry("grades").unwrap();
    assert_eq!(runs.of("grades").len(), 2);
    assert_eq!(
        snap.runs,
        RunCounts {
            started: 2,
            succeeded: 1,
            failed: 1,
            skipped: 0
        }
    );
    assert_eq!(
        snap.last_outcome,
        Some(Outcome::Succeeded {
            run_id: RunId(2),
            summary: RunSummary::records(7).note("refreshed")
        })
    );
    assert_eq!(snap.last_success, Some(utc("2025-01-01T00:20:00Z")));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_job_counts_as_failed_and_the_scheduler_lives_on() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let job = {
        let runs = runs.clone();
        Job::new(move |ctx| {
            let n = runs.record(&ctx);
            async move {
                if n == 1 {
                    panic!("index out of bounds");
                }
                Ok(RunSummary::default())
            }
        })
    };
    let s = spawn(config(&clock, vec![Entry::new("p", schedule("1h"), job)])).await;
    tokio::time::sleep(hours(1) + secs(1)).await;
    let snap = s.handle.entry("p").unwrap();
    assert_eq!(
        snap.last_outcome,
        Some(Outcome::Failed {
            run_id: RunId(1),
            error: "the job panicked: index out of bounds".into()
        })
    );
    assert!(snap.active.is_none());
    tokio::time::sleep(hours(1)).await;
    let snap = call!(s.actor, SchedulerMsg::Observe).unwrap();
    let p = snap.entry("p").unwrap();
    assert_eq!((p.runs.failed, p.runs.succeeded), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn observe_and_the_handle_show_the_same_serializable_state() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let job = {
        let runs = runs.clone();
        Job::new(move |ctx| {
            runs.record(&ctx);
            async move {
                for _ in 0..3 {
                    tokio::time::sleep(mins(1)).await;
                    ctx.progress(10, 1_000);
                }
                tokio::time::sleep(hours(1)).await;
                Ok(RunSummary::records(30))
            }
        })
    };
    let s = spawn(config(
        &clock,
        vec![Entry::new("backfill", schedule("0 */2 * * *"), job).run_on_start(true)],
    ))
    .await;
    tokio::time::sleep(mins(5)).await;
    let observed = call!(s.actor, SchedulerMsg::Observe).unwrap();
    let json = serde_json::to_value(&observed).unwrap();
    assert_eq!(
        json,
        serde_json::to_value(s.handle.snapshot()).unwrap(),
        "the handle and the actor agree"
    );
    assert_eq!(json["pipeline"], "test");
    let entry = &json["entries"][0];
    assert_eq!(entry["name"], "backfill");
    assert_eq!(entry["schedule"], "0 */2 * * *");
    assert_eq!(entry["time_zone"], "Asia/Seoul");
    assert_eq!(entry["run_on_start"], true);
    assert_eq!(entry["lease"], "none");
    // 10:00 KST is the next even hour after 09:00 KST.
    assert_eq!(entry["next_due"], "2025-01-01T01:00:00Z");
    assert_eq!(entry["active"]["run_id"], 1);
    assert_eq!(entry["active"]["trigger"], "start");
    assert_eq!(entry["active"]["records"], 30);
    assert_eq!(entry["active"]["bytes"], 3_000);
    assert_eq!(entry["last_start"], "2025-01-01T00:00:00Z");
    assert_eq!(entry["runs"]["started"], 1);
    assert_eq!(s.probe.pending(), 1, "an active run holds work");
    assert_eq!(s.probe.counter("records"), 30);
    tokio::time::sleep(hours(1)).await;
    let json = serde_json::to_value(s.handle.snapshot()).unwrap();
    let entry = &json["entries"][0];
    assert!(entry["active"].is_null());
    // The 01:00Z due time came during the run and was skipped; the run's end came after it.
    assert_eq!(entry["runs"]["skipped"], 1);
    assert_eq!(entry["last_outcome"]["outcome"], "succeeded");
    assert_eq!(entry["last_outcome"]["summary"]["records"], 30);
    assert_eq!(entry["last_duration_seconds"], 3_780.0);
    assert_eq!(s.probe.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn stopping_asks_runs_to_finish_and_interrupts_those_that_do_not() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let polite = Job::new(|ctx| async move {
        ctx.stopped().await;
        Ok(RunSummary::default().note("stopped early"))
    });
    let stubborn = Job::new(|_ctx| async move {
        tokio::time::sleep(hours(5)).await;
        Ok(RunSummary::default())
    });
    let s = spawn(
        config(
            &clock,
            vec![
                Entry::new("polite", schedule("1d"), polite).run_on_start(true),
                Entry::new("stubborn", schedule("1d"), stubborn).run_on_start(true),
            ],
        )
        .stop_grace(secs(3)),
    )
    .await;
    tokio::time::sleep(mins(1)).await;
    s.actor
        .stop_and_wait(None, Some(secs(30)))
        .await
        .expect("stops");
    let snap = s.handle.snapshot();
    let polite = snap.entry("polite").unwrap();
    assert!(matches!(
        &polite.last_outcome,
        Some(Outcome::Succeeded { summary, .. }) if summary.note.as_deref() == Some("stopped early")
    ));
    let handle = s.handle.clone();
    assert!(
        eventually(secs(5), || {
            matches!(
                &handle.entry("stubborn").unwrap().last_outcome,
                Some(Outcome::Failed { error, .. }) if error == "interrupted, the scheduler stopped"
            )
        })
        .await
    );
    assert!(snap.entries.iter().all(|e| e.next_due.is_some()));
}

#[tokio::test(start_paused = true)]
async fn a_paused_pipeline_skips_its_due_runs_and_runs_again_once_resumed() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let s = spawn(config(
        &clock,
        vec![Entry::new("tick", schedule("10m"), runs.job(secs(1)))],
    ))
    .await;
    let pipeline = actord_actors::ActorPath::parse("/test").unwrap();
    assert!(s.probe.registry().set_paused(&pipeline, true));
    // 00:10 and 00:20 come while the pipeline is paused.
    tokio::time::sleep(mins(25)).await;
    assert!(runs.dues("tick").is_empty());
    let snap = s.handle.entry("tick").unwrap();
    assert_eq!(
        snap.last_outcome,
        Some(Outcome::Skipped {
            reason: SkipReason::Paused,
            due: utc("2025-01-01T00:20:00Z"),
            detail: None,
        })
    );
    assert_eq!(snap.runs.skipped, 2);
    s.probe.registry().set_paused(&pipeline, false);
    // No catch-up: the next due time after the resume runs, once.
    tokio::time::sleep(mins(10)).await;
    assert_eq!(runs.dues("tick"), vec![utc("2025-01-01T00:30:00Z")]);
}
