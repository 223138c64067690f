//! The Redis and PostgreSQL leases against the local servers: one holder at a time, renewals by the holder only, expiry, due times that already ran, release, and an unreachable store.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actord::leases::{PostgresLease, RedisLease};
use actord_actors::observe::{ActorKind, Registry};
use actord_actors::scheduler::{
    Acquire, Entry, Job, Lease, LeaseGuard, Outcome, RunSummary, Schedule, Scheduler,
    SchedulerArgs, SchedulerConfig, SchedulerHandle, SkipReason,
};
use actord_actors::ActorPath;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use ractor::Actor;

use crate::support::{free_port, unique};

const REDIS: &str = "redis://127.0.0.1:6379";
const POSTGRES: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Two processes' views of one Redis store, and the test's own key.
fn redis_pair() -> (RedisLease, RedisLease, String) {
    let a = RedisLease::new(REDIS).unwrap();
    let b = RedisLease::new(REDIS).unwrap();
    (a, b, unique("lease-test"))
}

/// Removes the keys a Redis test used.
async fn redis_cleanup(lease: &RedisLease, key: &str) {
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(lease.lease_key(key))
        .arg(lease.last_due_key(key))
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Two processes' views of one PostgreSQL store in a table of the test's own.
fn postgres_pair() -> (PostgresLease, PostgresLease, String) {
    let table = unique("lease_test").replace('-', "_");
    let a = PostgresLease::new(POSTGRES).unwrap().table(&table).unwrap();
    let b = PostgresLease::new(POSTGRES).unwrap().table(&table).unwrap();
    (a, b, table)
}

async fn postgres_cleanup(table: &str) {
    crate::support::pg()
        .await
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .await
        .unwrap();
}

fn granted(answer: Acquire) -> LeaseGuard {
    match answer {
        Acquire::Granted(guard) => guard,
        other => panic!("expected the lease to be granted, got {other:?}"),
    }
}

fn is_granted(a: &Acquire) -> bool {
    matches!(a, Acquire::Granted(_))
}

/// Two holders claim at once: exactly one is granted, the other sees it held.
async fn contention(a: &dyn Lease, b: &dyn Lease, key: &str) {
    let ttl = Duration::from_secs(10);
    let (x, y) = tokio::join!(a.try_acquire(key, None, ttl), b.try_acquire(key, None, ttl));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(
        [&x, &y].into_iter().filter(|r| is_granted(r)).count(),
        1,
        "exactly one holder: {x:?} {y:?}"
    );
    let (winner, loser) = if is_granted(&x) { (x, y) } else { (y, x) };
    assert!(matches!(loser, Acquire::HeldElsewhere), "{loser:?}");
    // A third claim while the winner holds it is refused too.
    let again = a.try_acquire(key, None, ttl).await.unwrap();
    assert!(matches!(again, Acquire::HeldElsewhere), "{again:?}");
    granted(winner).release().await.unwrap();
}

/// Renewal by the holder keeps the lease past its first ttl; once it expired, the other holder
/// takes it and the first one's token no longer renews or releases anything.
async fn renewal_and_expiry(a: &dyn Lease, b: &dyn Lease, key: &str) {
    let ttl = ms(1_500);
    let mut first = granted(a.try_acquire(key, None, ttl).await.unwrap());
    tokio::time::sleep(ms(900)).await;
    assert!(first.renew(ttl).await.unwrap(), "the holder renews");
    // 1.8 s after the grant: past the first ttl, within the renewed one.
    tokio::time::sleep(ms(900)).await;
    let refused = b.try_acquire(key, None, ttl).await.unwrap();
    assert!(matches!(refused, Acquire::HeldElsewhere), "{refused:?}");
    // No renewal: it expires and the other holder gets it.
    tokio::time::sleep(ms(1_800)).await;
    let second = granted(b.try_acquire(key, None, ttl).await.unwrap());
    assert!(
        !first.renew(ttl).await.unwrap(),
        "a stale token does not renew"
    );
    first.release().await.unwrap();
    let still = a.try_acquire(key, None, ttl).await.unwrap();
    assert!(
        matches!(still, Acquire::HeldElsewhere),
        "a stale token's release leaves the new holder's lease alone: {still:?}"
    );
    second.release().await.unwrap();
}

/// A due time at or before the latest granted one answers `AlreadyRan`, from any process; a
/// "run now" (no due time) neither checks nor moves it.
async fn due_times(a: &dyn Lease, b: &dyn Lease, key: &str) {
    let ttl = Duration::from_secs(10);
    let due = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let minute = TimeDelta::minutes(1);
    granted(a.try_acquire(key, Some(due), ttl).await.unwrap())
        .release()
        .await
        .unwrap();
    for (what, at) in [("the same due time", due), ("an earlier one", due - minute)] {
        let answer = b.try_acquire(key, Some(at), ttl).await.unwrap();
        assert!(matches!(answer, Acquire::AlreadyRan), "{what}: {answer:?}");
    }
    granted(b.try_acquire(key, None, ttl).await.unwrap())
        .release()
        .await
        .unwrap();
    let answer = b.try_acquire(key, Some(due), ttl).await.unwrap();
    assert!(
        matches!(answer, Acquire::AlreadyRan),
        "run now left the last due time: {answer:?}"
    );
    // The next due time runs once: whoever comes second is told it ran, even while held.
    let next = granted(b.try_acquire(key, Some(due + minute), ttl).await.unwrap());
    let answer = a.try_acquire(key, Some(due + minute), ttl).await.unwrap();
    assert!(matches!(answer, Acquire::AlreadyRan), "{answer:?}");
    let answer = a
        .try_acquire(key, Some(due + minute * 2), ttl)
        .await
        .unwrap();
    assert!(
        matches!(answer, Acquire::HeldElsewhere),
        "a later due time waits for the holder: {answer:?}"
    );
    next.release().await.unwrap();
    granted(
        a.try_acquire(key, Some(due + minute * 2), ttl)
            .await
            .unwrap(),
    )
    .release()
    .await
    .unwrap();
}

/// Releasing frees the lease at once, without waiting for the ttl.
async fn release(a: &dyn Lease, b: &dyn Lease, key: &str) {
    let ttl = Duration::from_secs(60);
    let held = granted(a.try_acquire(key, None, ttl).await.unwrap());
    let refused = b.try_acquire(key, None, ttl).await.unwrap();
    assert!(matches!(refused, Acquire::HeldElsewhere), "{refused:?}");
    held.release().await.unwrap();
    granted(b.try_acquire(key, None, ttl).await.unwrap())
        .release()
        .await
        .unwrap();
}

/// A store nobody listens on answers with an error, quickly and more than once.
async fn unreachable(lease: &dyn Lease) {
    for attempt in 0..2 {
        let started = std::time::Instant::now();
        let answer = lease
            .try_acquire("nowhere/entry", Some(Utc::now()), Duration::from_secs(10))
            .await;
        let err = match answer {
            Err(e) => e,
            Ok(other) => panic!("attempt {attempt}: expected a lease error, got {other:?}"),
        };
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "attempt {attempt} took {:?}",
            started.elapsed()
        );
        assert!(
            err.0.contains("127.0.0.1"),
            "the error names the store: {err}"
        );
    }
}

#[tokio::test]
async fn redis_two_holders_contend_and_one_is_granted() {
    let (a, b, key) = redis_pair();
    contention(&a, &b, &key).await;
    redis_cleanup(&a, &key).await;
}

#[tokio::test]
async fn redis_renewal_extends_and_expiry_hands_over() {
    let (a, b, key) = redis_pair();
    renewal_and_expiry(&a, &b, &key).await;
    redis_cleanup(&a, &key).await;
}

#[tokio::test]
async fn redis_a_due_time_runs_once() {
    let (a, b, key) = redis_pair();
    due_times(&a, &b, &key).await;
    redis_cleanup(&a, &key).await;
}

#[tokio::test]
async fn redis_release_frees_the_lease() {
    let (a, b, key) = redis_pair();
    release(&a, &b, &key).await;
    redis_cleanup(&a, &key).await;
}

#[tokio::test]
async fn redis_unreachable_is_a_lease_error() {
    let lease = RedisLease::new(&format!("redis://127.0.0.1:{}", free_port())).unwrap();
    unreachable(&lease).await;
}

#[tokio::test]
async fn postgres_two_holders_contend_and_one_is_granted() {
    // A fresh table: both holders also race to create it.
    let (a, b, table) = postgres_pair();
    contention(&a, &b, "p/contend").await;
    postgres_cleanup(&table).await;
}

#[tokio::test]
async fn postgres_renewal_extends_and_expiry_hands_over() {
    let (a, b, table) = postgres_pair();
    renewal_and_expiry(&a, &b, "p/renew").await;
    postgres_cleanup(&table).await;
}

#[tokio::test]
async fn postgres_a_due_time_runs_once() {
    let (a, b, table) = postgres_pair();
    due_times(&a, &b, "p/due").await;
    postgres_cleanup(&table).await;
}

#[tokio::test]
async fn postgres_release_frees_the_lease() {
    let (a, b, table) = postgres_pair();
    release(&a, &b, "p/release").await;
    postgres_cleanup(&table).await;
}

#[tokio::test]
async fn postgres_unreachable_is_a_lease_error() {
    let lease = PostgresLease::new(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        free_port()
    ))
    .unwrap();
    unreachable(&lease).await;
}

#[tokio::test]
async fn postgres_lease_table_names_are_checked() {
    let lease = PostgresLease::new(POSTGRES).unwrap();
    for bad in ["", "a;drop table x", "x.y.z", "1abc", "a\"b"] {
        assert!(lease.clone().table(bad).is_err(), "{bad:?} accepted");
    }
    let ok = lease.table("public.my_leases").unwrap();
    assert_eq!(ok.table_name(), "\"public\".\"my_leases\"");
}

/// Due times of every run, by every scheduler using it.
#[derive(Clone, Default)]
struct Dues(Arc<Mutex<Vec<DateTime<Utc>>>>);

impl Dues {
    fn job(&self) -> Job {
        let dues = self.clone();
        Job::new(move |ctx| {
            dues.0.lock().unwrap().push(ctx.due);
            async move {
                tokio::time::sleep(ms(50)).await;
                Ok(RunSummary::records(1))
            }
        })
    }
}

#[tokio::test]
async fn two_schedulers_sharing_a_redis_lease_run_each_due_time_once() {
    let pipeline = unique("sched");
    let dues = Dues::default();
    let registry = Registry::new();
    let mut schedulers = Vec::new();
    for (i, jitter) in [ms(0), ms(300)].into_iter().enumerate() {
        // Every second, counted from the epoch so that both compute the same due times; the
        // second one fires up to 300 ms late, often after the first one's run ended.
        let entry = Entry::new("tick", Schedule::every("1s").unwrap(), dues.job())
            .anchor(DateTime::<Utc>::UNIX_EPOCH)
            .jitter(jitter)
            .lease(Arc::new(RedisLease::new(REDIS).unwrap()), ms(3_000));
        let handle = SchedulerHandle::new();
        let probe = registry.probe(
            &ActorPath::parse(&format!("/{pipeline}/scheduler-{i}")).unwrap(),
            ActorKind::Worker,
        );
        let (actor, _) = Actor::spawn(
            None,
            Scheduler,
            SchedulerArgs {
                config: SchedulerConfig::new(&pipeline, vec![entry]).jitter_seed(i as u64),
                handle: handle.clone(),
                probe,
            },
        )
        .await
        .unwrap();
        schedulers.push((actor, handle));
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    for (actor, _) in &schedulers {
        actor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await
            .unwrap();
    }

    let all = dues.0.lock().unwrap().clone();
    let unique_dues: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        unique_dues.len(),
        "a due time ran twice: {all:?}"
    );
    assert!(unique_dues.len() >= 4, "too few runs: {unique_dues:?}");
    let first = *unique_dues.first().unwrap();
    let last = *unique_dues.last().unwrap();
    assert_eq!(
        (last - first).num_seconds() as usize + 1,
        unique_dues.len(),
        "every due second between the first and the last ran: {unique_dues:?}"
    );
    let (mut started, mut skipped) = (0, 0);
    for (_, handle) in &schedulers {
        let entry = handle.entry("tick").unwrap();
        started += entry.runs.started;
        skipped += entry.runs.skipped;
        assert_eq!(entry.runs.failed, 0);
        if let Some(Outcome::Skipped { reason, .. }) = entry.last_outcome {
            assert!(
                matches!(reason, SkipReason::RanElsewhere | SkipReason::LeaseHeld),
                "{reason:?}"
            );
        }
    }
    assert_eq!(started as usize, unique_dues.len());
    assert!(
        skipped + 2 >= started,
        "each due time was also fired, and refused, by the other scheduler: {started} started, {skipped} skipped"
    );
    let probe = RedisLease::new(REDIS).unwrap();
    redis_cleanup(&probe, &format!("{pipeline}/tick")).await;
}

#[tokio::test]
async fn a_scheduler_whose_redis_is_unreachable_skips_with_lease_unavailable() {
    let dues = Dues::default();
    let lease = RedisLease::new(&format!("redis://127.0.0.1:{}", free_port())).unwrap();
    let entry = Entry::new("tick", Schedule::every("1s").unwrap(), dues.job())
        .lease(Arc::new(lease), ms(3_000));
    let handle = SchedulerHandle::new();
    let probe = Registry::new().probe(
        &ActorPath::parse("/unreachable/scheduler").unwrap(),
        ActorKind::Worker,
    );
    let (actor, _) = Actor::spawn(
        None,
        Scheduler,
        SchedulerArgs {
            config: SchedulerConfig::new("unreachable", vec![entry]),
            handle: handle.clone(),
            probe,
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(ms(2_600)).await;
    let entry = handle.entry("tick").unwrap();
    actor
        .stop_and_wait(None, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(dues.0.lock().unwrap().is_empty(), "nothing ran");
    assert_eq!(entry.runs.started, 0);
    assert!(entry.runs.skipped >= 2, "{:?}", entry.runs);
    match entry.last_outcome {
        Some(Outcome::Skipped {
            reason: SkipReason::LeaseUnavailable,
            detail: Some(detail),
            ..
        }) => assert!(detail.contains("redis 127.0.0.1:"), "{detail}"),
        other => panic!("expected a lease_unavailable skip, got {other:?}"),
    }
}
