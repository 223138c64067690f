//! Rebalance runs: three recorder processes in one consumer group (both paths, PostgreSQL and
//! Parquet on S3, each behind a throttling proxy) drain a backlog on a broker that expires dead
//! members (`actord embedded-broker`; half of the ticks before the first member starts, the rest
//! in shares before each event), while a seeded random schedule starts members and stops them,
//! some gracefully (SIGTERM: drain, commit, leave the group) and some with SIGKILL (the broker
//! expires them after the session timeout), never leaving the group without a member for more
//! than a moment. Each stop comes after the member wrote rows of its own, while both paths are
//! still draining (asserted: more than nothing and less than everything written at each stop).
//! At the end the proxies are unthrottled and the survivors drain the rest: every tick exactly
//! one row in PostgreSQL and in exactly one Parquet object, nothing dead-lettered, every member
//! stopped with SIGTERM exited 0 within the shutdown timeout.
//!
//! CI runs the short form (24,000 ticks, 4 events). The long form of the reliability suite:
//! `ACTORD_REBALANCE_MESSAGES=300000 ACTORD_REBALANCE_EVENTS=20 cargo test --test it rebalance:: -- --nocapture`
//! (`ACTORD_REBALANCE_SEED` picks another schedule: which member goes, how, and when).

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;

use crate::crash::{publish, setting, Moments, PG_BYTES_PER_TICK, S3_BYTES_PER_TICK, UNTHROTTLED};
use crate::kafka::end_offsets;
use crate::object_group::{assert_exactly_once, broker, counter, environment};
use crate::recorder::{count, drop_schema, fresh_schema, recorder_config};
use crate::recorder_s3::{env_of, FooterRows};
use crate::support::{until, wait_ready, Process, Proxy, S3Server};

/// Members at most; the schedule starts with all of them.
const MEMBERS: usize = 3;
/// Partitions of `market.tick`: four a member when all three are in the group.
const PARTITIONS: i32 = 12;

/// One actord process of the group.
struct Member {
    id: usize,
    p: Process,
}

/// What the schedule did, and where both sinks stood at that moment.
struct Event {
    /// Since the first member started.
    at: Duration,
    /// `start m4`, `TERM m2`, `KILL m1`.
    what: String,
    rows: i64,
    objects: usize,
    /// Ticks in the objects (from their footers).
    ticks: u64,
    /// For a stop: the rows and objects the member had written itself.
    own: Option<(f64, f64)>,
}

impl Event {
    fn is_stop(&self) -> bool {
        !self.what.starts_with("start")
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:6.1}s {:9} {:>8} rows {:>6} objects {:>8} ticks in objects",
            self.at.as_secs_f64(),
            self.what,
            self.rows,
            self.objects,
            self.ticks
        )?;
        if let Some((rows, objects)) = self.own {
            write!(
                f,
                " (its own: {rows:.0} rows, {:.0} objects)",
                objects.abs()
            )?;
        }
        Ok(())
    }
}

/// Where both sinks stand, for the events.
struct Watch {
    started: Instant,
    schema: String,
    store: Arc<dyn ObjectStore>,
    footers: FooterRows,
}

impl Watch {
    async fn event(&mut self, what: String) -> Event {
        let at = self.started.elapsed();
        let rows = count(&self.schema, "tick_data").await;
        let (objects, ticks) = self.footers.count(&self.store).await;
        Event {
            at,
            what,
            rows,
            objects,
            ticks,
            own: None,
        }
    }
}

/// How a member stopped with SIGTERM exited.
struct GracefulExit {
    member: usize,
    took: Duration,
    /// Everything it had read was written and committed before it left (no records left to be
    /// read again by the next owner).
    drained: bool,
}

impl std::fmt::Debug for GracefulExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "m{} in {:.1}s", self.member, self.took.as_secs_f64())?;
        if !self.drained {
            write!(f, ", records left to the next owner")?;
        }
        Ok(())
    }
}

/// Waits (polling, so that the proxies on this runtime keep passing its last writes) until a
/// member sent SIGTERM has exited, at most `within`; `None` when it has not.
async fn exit_of(mut m: Member, within: Duration) -> (Member, Option<ExitStatus>, Duration) {
    let signalled = Instant::now();
    loop {
        if let Some(status) = m.p.child.try_wait().unwrap() {
            return (m, Some(status), signalled.elapsed());
        }
        if signalled.elapsed() > within {
            return (m, None, signalled.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `lines` lines of a member's log, under its name; the lines librdkafka repeats
/// while no broker answers are counted, not shown, so they do not hide what came before.
fn tail(m: &Member, lines: usize) -> String {
    let log = m.p.log();
    let down = log.lines().filter(|l| l.contains("AllBrokersDown")).count();
    let mut last: Vec<&str> = log
        .lines()
        .rev()
        .filter(|l| !l.contains("AllBrokersDown"))
        .take(lines)
        .collect();
    last.reverse();
    format!(
        "--- m{} ({down} lines of AllBrokersDown left out)\n{}",
        m.id,
        last.join("\n")
    )
}

#[tokio::test]
async fn members_joining_and_leaving_while_a_backlog_drains_write_every_tick_exactly_once() {
    let n = setting("ACTORD_REBALANCE_MESSAGES", 24_000) as i64;
    let events = setting("ACTORD_REBALANCE_EVENTS", 4);
    let mut moments = Moments(setting("ACTORD_REBALANCE_SEED", 9));
    let mut broker = broker(PARTITIONS);
    let s3 = S3Server::start("rebalance");
    // Both sinks throttled so that the backlog would take twice as long as the schedule (about
    // 15 s before the first event, then 6 s an event) with two members writing, each with two
    // PostgreSQL connections and about three uploads at a time (up to four; every connection is
    // paced on its own): every event meets both paths draining, whoever owns what.
    let drain = 2 * (15 + 6 * events);
    let pg_rate = (n as u64 * PG_BYTES_PER_TICK / drain / 4).max(2_048);
    let s3_rate = (n as u64 * S3_BYTES_PER_TICK / drain / 6).max(2_048);
    let pg_proxy = Proxy::start_throttled("127.0.0.1:5432", pg_rate).await;
    let s3_proxy = Proxy::start_throttled(&format!("127.0.0.1:{}", s3.port), s3_rate).await;
    let schema = fresh_schema();
    let toml = recorder_config(&schema, pg_proxy.port, "");
    // Objects of about a twentieth of the backlog a batch, cut by partition: several uploads of
    // each member are in flight at any moment.
    let batch = (n / 20).clamp(1_000, 20_000);
    let env = environment(&s3, &s3_proxy, &broker, batch);
    // Half of the ticks are a backlog before the first member starts; the rest arrive in equal
    // shares, one before each event, so that the last share is still to write at the last one.
    let first = n / 2;
    let share = |step: u64| first + (n - first) * step as i64 / events as i64;
    publish(broker.bootstrap(), 0..first).await;
    let mut watch = Watch {
        started: Instant::now(),
        schema: schema.clone(),
        store: s3.client(),
        footers: FooterRows::default(),
    };

    let mut next_id = 0;
    let mut start = || {
        next_id += 1;
        Member {
            id: next_id,
            p: Process::start(&toml, &[], &env_of(&env)),
        }
    };
    let mut log: Vec<Event> = Vec::new();
    let mut alive: Vec<Member> = Vec::new();
    for _ in 0..MEMBERS {
        let m = start();
        log.push(watch.event(format!("start m{}", m.id)).await);
        alive.push(m);
    }
    for m in &alive {
        wait_ready(&m.p.base).await;
    }
    // Both paths wrote before the first event.
    until(
        Duration::from_secs(120),
        "the first rows and objects",
        || async {
            count(&schema, "tick_data").await > 0
                && FooterRows::default().count(&watch.store).await.1 > 0
        },
    )
    .await;

    let mut gone: Vec<Member> = Vec::new();
    let mut leaving = Vec::new();
    for step in 0..events {
        tokio::time::sleep(Duration::from_millis(moments.next_ms(1_000, 5_000))).await;
        publish(broker.bootstrap(), share(step)..share(step + 1)).await;
        // Three members: one goes. Two: a coin decides. One: another starts, or (one time
        // in three) it is replaced: stopped, and another started at once.
        let stop = match alive.len() {
            MEMBERS => true,
            1 => moments.next_ms(0, 3) == 0,
            _ => moments.next_ms(0, 2) == 0,
        };
        if !stop {
            let m = start();
            log.push(watch.event(format!("start m{}", m.id)).await);
            eprintln!("{}", log.last().unwrap());
            wait_ready(&m.p.base).await;
            alive.push(m);
            continue;
        }
        let mut victim = alive.remove(moments.next_ms(0, alive.len() as u64) as usize);
        let signal = if moments.next_ms(0, 2) == 0 {
            "TERM"
        } else {
            "KILL"
        };
        // It owned partitions: it wrote rows of its own.
        until(
            Duration::from_secs(120),
            &format!("m{} to write rows", victim.id),
            || async { counter(&victim.p, "actord_timescale_inserts_total").await > 0.0 },
        )
        .await;
        let own = (
            counter(&victim.p, "actord_timescale_inserts_total").await,
            counter(&victim.p, "actord_s3_uploads_total").await,
        );
        let mut event = watch.event(format!("{signal} m{}", victim.id)).await;
        event.own = Some(own);
        victim.p.signal(signal);
        eprintln!("{event}");
        log.push(event);
        if signal == "TERM" {
            // The recorder's shutdown timeout (30 s), and a moment to exit.
            leaving.push(tokio::spawn(exit_of(victim, Duration::from_secs(35))));
        } else {
            victim.p.wait_exit(Duration::from_secs(10));
            gone.push(victim);
        }
        if alive.is_empty() {
            let m = start();
            log.push(watch.event(format!("start m{}", m.id)).await);
            eprintln!("{}", log.last().unwrap());
            wait_ready(&m.p.base).await;
            alive.push(m);
        }
    }
    let scheduled_for = watch.started.elapsed();

    pg_proxy.set_rate(UNTHROTTLED);
    s3_proxy.set_rate(UNTHROTTLED);
    let logs = |alive: &[Member], gone: &[Member]| {
        alive
            .iter()
            .chain(gone)
            .map(|m| tail(m, 30))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let events_text = |log: &[Event]| {
        log.iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let rows = count(&schema, "tick_data").await;
        let (objects, ticks) = watch.footers.count(&watch.store).await;
        if rows >= n && ticks >= n as u64 {
            break;
        }
        broker.assert_running();
        assert!(
            Instant::now() < deadline,
            "{rows} rows and {ticks} ticks in {objects} objects of {n}; events:\n{}\n{}",
            events_text(&log),
            logs(&alive, &gone)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained = watch.started.elapsed();
    let mut graceful_exits = Vec::new();
    for exit in leaving {
        let (m, status, took) = exit.await.unwrap();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "m{} after SIGTERM, {took:?}\n{}",
            m.id,
            tail(&m, 60)
        );
        let text = m.p.log();
        graceful_exits.push(GracefulExit {
            member: m.id,
            took,
            drained: !text.contains("unacknowledged records")
                && !text.contains("graceful shutdown timed out"),
        });
        gone.push(m);
    }
    let generations = assert_exactly_once(&s3, &schema, n, || logs(&alive, &gone)).await;
    let objects = watch.footers.count(&watch.store).await.0;
    for topic in ["market.tick-dlq", "market.orderbook-dlq"] {
        let dead: i64 = end_offsets(broker.bootstrap(), topic, 1).values().sum();
        assert_eq!(dead, 0, "records in {topic}");
    }
    // Every stop came while both paths were draining: both had written (the first stop waits
    // for a row and an object), neither had written everything. The ticks in objects may fall
    // between events: a new owner removes the objects of batches its predecessor gave up
    // uncommitted (a revoke gives up uploads still in flight after its wait), and the S3 path
    // may hold none for a while.
    for e in log.iter().filter(|e| e.is_stop()) {
        assert!(
            (1..n).contains(&e.rows) && e.ticks < n as u64,
            "{} did not come mid-drain: {} rows, {} ticks in objects of {n}",
            e.what,
            e.rows,
            e.ticks
        );
    }
    let starts = log.iter().filter(|e| !e.is_stop()).count();
    let kills = log.iter().filter(|e| e.what.starts_with("KILL")).count();
    eprintln!(
        "rebalance run: {n} ticks ({first} before the first start, the rest in shares before \
         each event) on {PARTITIONS} partitions, PostgreSQL throttled to {pg_rate} and S3 to \
         {s3_rate} bytes/s a connection, objects of batches of {batch}; {events} events in {:.1}s: {starts} \
         members started, {} stopped with SIGTERM ({graceful_exits:?}), {kills} with SIGKILL; \
         at each:\n{}",
        scheduled_for.as_secs_f64(),
        graceful_exits.len(),
        events_text(&log)
    );
    eprintln!(
        "exactly once in PostgreSQL and in {objects} Parquet objects of {generations} ownership \
         generations, nothing dead-lettered; everything written {:.1}s after the first start \
         ({:.1}s for the test)",
        drained.as_secs_f64(),
        watch.started.elapsed().as_secs_f64()
    );
    drop((alive, gone));
    drop_schema(&schema).await;
}
