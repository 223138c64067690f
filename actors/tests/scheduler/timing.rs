//! When entries run: intervals, run-on-start, cron in Seoul, New York and Berlin across DST, jitter, clock jumps.

use actord_actors::scheduler::{parse_time_zone, Entry, RunCounts, Trigger, Tz};
use actord_actors::testkit::ManualClock;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use crate::{config, days, hours, mins, schedule, secs, spawn, utc, Runs};

fn local_dates(dues: &[DateTime<Utc>], tz: Tz) -> Vec<NaiveDate> {
    dues.iter()
        .map(|d| d.with_timezone(&tz).date_naive())
        .collect()
}

fn gaps(dues: &[DateTime<Utc>]) -> Vec<TimeDelta> {
    dues.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn an_interval_runs_evenly_from_the_first_start() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let s = spawn(config(
        &clock,
        vec![Entry::new("cache", schedule("50s"), runs.job(secs(1)))],
    ))
    .await;
    tokio::time::sleep(secs(5 * 50 + 10)).await;
    let start = utc("2025-01-01T00:00:00Z");
    let expected: Vec<_> = (1..=5)
        .map(|k| start + TimeDelta::seconds(50 * k))
        .collect();
    assert_eq!(runs.dues("cache"), expected);
    for r in runs.of("cache") {
        assert_eq!(r.started, r.due);
        assert_eq!(r.trigger, Trigger::Schedule);
    }
    let snap = s.handle.entry("cache").unwrap();
    assert_eq!(
        snap.runs,
        RunCounts {
            started: 5,
            succeeded: 5,
            failed: 0,
            skipped: 0
        }
    );
    assert_eq!(snap.next_due, Some(start + TimeDelta::seconds(300)));
    assert_eq!(snap.last_duration_seconds, Some(1.0));
    assert_eq!(s.probe.counter("runs_succeeded"), 5);
}

#[tokio::test(start_paused = true)]
async fn run_on_start_runs_at_once_then_every_three_days() {
    let clock = ManualClock::at("2025-05-01T03:00:00Z");
    let runs = Runs::default();
    let _s = spawn(config(
        &clock,
        vec![Entry::new("backfill", schedule("3d"), runs.job(mins(20))).run_on_start(true)],
    ))
    .await;
    tokio::time::sleep(days(7)).await;
    let all = runs.of("backfill");
    let start = utc("2025-05-01T03:00:00Z");
    assert_eq!(
        all.iter().map(|r| (r.trigger, r.due)).collect::<Vec<_>>(),
        vec![
            (Trigger::Start, start),
            (Trigger::Schedule, start + TimeDelta::days(3)),
            (Trigger::Schedule, start + TimeDelta::days(6)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn without_run_on_start_the_first_run_waits_for_its_due_time() {
    let clock = ManualClock::at("2025-05-01T03:00:00Z");
    let runs = Runs::default();
    let s = spawn(config(
        &clock,
        vec![Entry::new("backfill", schedule("3d"), runs.job(secs(1)))],
    ))
    .await;
    tokio::time::sleep(days(1)).await;
    assert!(runs.all().is_empty());
    let start = utc("2025-05-01T03:00:00Z");
    assert_eq!(
        s.handle.entry("backfill").unwrap().next_due,
        Some(start + TimeDelta::days(3))
    );
    tokio::time::sleep(days(2) + secs(2)).await;
    assert_eq!(runs.dues("backfill"), vec![start + TimeDelta::days(3)]);
}

#[tokio::test(start_paused = true)]
async fn cron_in_seoul_crosses_midnight_and_month_end() {
    // 21:00 KST on 30 January 2025.
    let clock = ManualClock::at("2025-01-30T12:00:00Z");
    let runs = Runs::default();
    let entries = vec![
        Entry::new("daily", schedule("0 0 * * *"), runs.job(secs(1))),
        Entry::new("two_hourly", schedule("0 */2 * * *"), runs.job(secs(1))),
        Entry::new("monthly", schedule("0 0 1 * *"), runs.job(secs(1))),
        Entry::new("month_end", schedule("0 9 L * *"), runs.job(secs(1))),
    ];
    let _s = spawn(config(&clock, entries)).await;
    // Until 01:00 KST on 2 March.
    tokio::time::sleep(days(30) + hours(4)).await;

    let daily = runs.dues("daily");
    assert_eq!(daily.first(), Some(&utc("2025-01-30T15:00:00Z")));
    assert_eq!(daily.last(), Some(&utc("2025-03-01T15:00:00Z")));
    assert_eq!(daily.len(), 31);
    assert!(gaps(&daily).iter().all(|g| *g == TimeDelta::days(1)));

    let two_hourly = runs.dues("two_hourly");
    assert_eq!(two_hourly.first(), Some(&utc("2025-01-30T13:00:00Z")));
    assert_eq!(two_hourly.last(), Some(&utc("2025-03-01T15:00:00Z")));
    assert_eq!(two_hourly.len(), 362);
    assert!(gaps(&two_hourly).iter().all(|g| *g == TimeDelta::hours(2)));

    assert_eq!(
        runs.dues("monthly"),
        vec![utc("2025-01-31T15:00:00Z"), utc("2025-02-28T15:00:00Z")]
    );
    assert_eq!(
        runs.dues("month_end"),
        vec![utc("2025-01-31T00:00:00Z"), utc("2025-02-28T00:00:00Z")]
    );
    for r in runs.all() {
        assert_eq!(r.started, r.due, "{r:?}");
    }
}

/// Runs `30 2`, `30 1` and an hourly interval in `zone` for three days from `from`.
async fn three_days_in(zone: &str, from: &str) -> (Runs, Tz) {
    let tz = parse_time_zone(zone).unwrap();
    let clock = ManualClock::at(from);
    let runs = Runs::default();
    let entries = vec![
        Entry::new("at_0230", schedule("30 2 * * *"), runs.job(secs(1))).time_zone(tz),
        Entry::new("at_0130", schedule("30 1 * * *"), runs.job(secs(1))).time_zone(tz),
        Entry::new("hourly", schedule("1h"), runs.job(secs(1))).time_zone(tz),
    ];
    let _s = spawn(config(&clock, entries)).await;
    tokio::time::sleep(days(3) + mins(1)).await;
    (runs, tz)
}

#[tokio::test(start_paused = true)]
async fn new_york_spring_forward_runs_each_entry_once_a_day() {
    let (runs, tz) = three_days_in("America/New_York", "2025-03-08T00:00:00Z").await;
    let at_0230 = runs.dues("at_0230");
    assert_eq!(
        at_0230,
        vec![
            utc("2025-03-08T07:30:00Z"), // 02:30 EST
            utc("2025-03-09T07:00:00Z"), // 02:30 does not exist: 03:00 EDT
            utc("2025-03-10T06:30:00Z"), // 02:30 EDT
        ]
    );
    let day = |d| NaiveDate::from_ymd_opt(2025, 3, d).unwrap();
    assert_eq!(local_dates(&at_0230, tz), vec![day(8), day(9), day(10)]);
    assert_eq!(
        runs.dues("at_0130"),
        vec![
            utc("2025-03-08T06:30:00Z"),
            utc("2025-03-09T06:30:00Z"),
            utc("2025-03-10T05:30:00Z"),
        ]
    );
    let hourly = runs.dues("hourly");
    assert_eq!(hourly.len(), 72);
    assert!(gaps(&hourly).iter().all(|g| *g == TimeDelta::hours(1)));
}

#[tokio::test(start_paused = true)]
async fn new_york_fall_back_runs_each_entry_once_a_day() {
    let (runs, tz) = three_days_in("America/New_York", "2025-11-01T00:00:00Z").await;
    let at_0230 = runs.dues("at_0230");
    assert_eq!(
        at_0230,
        vec![
            utc("2025-11-01T06:30:00Z"), // 02:30 EDT
            utc("2025-11-02T07:30:00Z"), // 02:30 EST, after the repeated hour
            utc("2025-11-03T07:30:00Z"),
        ]
    );
    let day = |d| NaiveDate::from_ymd_opt(2025, 11, d).unwrap();
    assert_eq!(local_dates(&at_0230, tz), vec![day(1), day(2), day(3)]);
    // 01:30 happens twice on 2 November and runs at the first one only.
    let at_0130 = runs.dues("at_0130");
    assert_eq!(
        at_0130,
        vec![
            utc("2025-11-01T05:30:00Z"),
            utc("2025-11-02T05:30:00Z"),
            utc("2025-11-03T06:30:00Z"),
        ]
    );
    assert_eq!(local_dates(&at_0130, tz), vec![day(1), day(2), day(3)]);
    let hourly = runs.dues("hourly");
    assert_eq!(hourly.len(), 72);
    assert!(gaps(&hourly).iter().all(|g| *g == TimeDelta::hours(1)));
}

#[tokio::test(start_paused = true)]
async fn berlin_dst_changes_run_each_entry_once_a_day() {
    let (spring, tz) = three_days_in("Europe/Berlin", "2025-03-29T00:00:00Z").await;
    assert_eq!(
        spring.dues("at_0230"),
        vec![
            utc("2025-03-29T01:30:00Z"), // 02:30 CET
            utc("2025-03-30T01:00:00Z"), // in the gap: 03:00 CEST
            utc("2025-03-31T00:30:00Z"), // 02:30 CEST
        ]
    );
    let (autumn, _) = three_days_in("Europe/Berlin", "2025-10-25T00:00:00Z").await;
    let at_0230 = autumn.dues("at_0230");
    assert_eq!(
        at_0230,
        vec![
            utc("2025-10-25T00:30:00Z"),
            utc("2025-10-26T00:30:00Z"), // 02:30 CEST; the repeated 02:30 CET does not run
            utc("2025-10-27T01:30:00Z"),
        ]
    );
    let day = |d| NaiveDate::from_ymd_opt(2025, 10, d).unwrap();
    assert_eq!(local_dates(&at_0230, tz), vec![day(25), day(26), day(27)]);
    assert!(gaps(&autumn.dues("hourly"))
        .iter()
        .all(|g| *g == TimeDelta::hours(1)));
}

#[tokio::test(start_paused = true)]
async fn jitter_delays_each_run_within_its_bound() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let s = spawn(config(
        &clock,
        vec![Entry::new("generator", schedule("1h"), runs.job(secs(1))).jitter(mins(5))],
    ))
    .await;
    tokio::time::sleep(hours(10) + mins(6)).await;
    let all = runs.of("generator");
    assert_eq!(all.len(), 10);
    let delays: Vec<TimeDelta> = all.iter().map(|r| r.started - r.due).collect();
    assert!(
        delays
            .iter()
            .all(|d| *d >= TimeDelta::zero() && *d <= TimeDelta::minutes(5)),
        "{delays:?}"
    );
    assert!(delays.windows(2).any(|w| w[0] != w[1]), "{delays:?}");
    // Jitter delays runs; it does not move the schedule.
    assert!(gaps(&runs.dues("generator"))
        .iter()
        .all(|g| *g == TimeDelta::hours(1)));
    let snap = s.handle.entry("generator").unwrap();
    assert!(snap.next_run.unwrap() >= snap.next_due.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_wall_clock_jump_runs_once_and_keeps_the_phase() {
    let clock = ManualClock::at("2025-01-01T00:00:00Z");
    let runs = Runs::default();
    let _s = spawn(config(
        &clock,
        vec![Entry::new("every10", schedule("10m"), runs.job(secs(1)))],
    ))
    .await;
    tokio::time::sleep(mins(15)).await;
    // The host's clock steps an hour forward; tokio's timer knows nothing of it.
    clock.jump(TimeDelta::hours(1));
    tokio::time::sleep(secs(61)).await;
    let start = utc("2025-01-01T00:00:00Z");
    assert_eq!(
        runs.dues("every10"),
        vec![
            start + TimeDelta::minutes(10),
            start + TimeDelta::minutes(20)
        ]
    );
    // The next due time keeps the ten-minute phase.
    tokio::time::sleep(mins(10)).await;
    assert_eq!(
        runs.dues("every10").last(),
        Some(&(start + TimeDelta::minutes(80)))
    );
    assert_eq!(runs.all().len(), 3);
}
