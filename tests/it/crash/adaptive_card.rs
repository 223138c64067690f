//! adaptive-card's workers killed with SIGKILL at random (seeded) moments while both stages
//! work through a backlog of jobs, and restarted each time (`role = "workers"`, the seed's
//! `python -m app.worker_*`). The jobs are added as a producer following the README's drain
//! contract adds them: the job in `data`, the run id in `run_id`, and the run's `enqueued`
//! counter raised in the same `MULTI`. The user jobs belong to a run that merged its files
//! before the crash run (done by a process of its own); the sales-org jobs to the next run id.
//!
//! Each stage hands a worker one job at a time, so a kill charges a delivery (the README's
//! delivery limit) only to the jobs that were being done, not to jobs read ahead.
//!
//! The guarantee checked is the README's: a job is processed at least once and its results are
//! idempotent (a sales-org job rewrites the same two files, a user job upserts its cards keyed by
//! (user_id, scenario_id)), and each job counts once in its run's drain counters however often
//! it was done. So afterwards: every organisation's two files byte-exact and no others, every
//! user's two cards and no others, the counters `acked == enqueued` exactly (none twice, none
//! lost) with nothing dead-lettered, both dead-letter streams empty, nothing pending. Jobs done
//! again after a kill are counted (T2A requests, and a trigger counting each card's committed
//! writes) and printed, not asserted.
//!
//! The stages are slowed so that every kill lands while both are working: the test's T2A
//! stand-in answers each request after a delay, and PostgreSQL sits behind a throttling proxy;
//! both are set so the whole backlog would take 20 s per kill and more. The last run is
//! unthrottled. Stream names are the seed's, so the test has a Redis database of its own on the
//! shared server (database 8), emptied of the pipeline's streams with `actord adaptive-card
//! reset --dlq` before and after.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};

use super::{kill_mid_run, setting, Moments, UNTHROTTLED};
use crate::adaptive_card::{config, counting_t2a, drain_counts, enqueue, run_once, setup};
use crate::redis_streams::{conn, entries};
use crate::support::{pg, run_to_end, wait_ready, Process, Proxy};

const REDIS: &str = "redis://127.0.0.1:6379/8";
const SALES: &str = "sales_org_queue";
const CARDS: &str = "adaptive_card_queue";
/// The organisation whose files of the first run are the pattern of every other's.
const PATTERN: &str = "PATTERNORG";
/// Organisations of the first run, whose merged rows the user jobs read.
const USER_ORGS: [&str; 4] = ["1000", "2000", "3000", "4000"];
/// Bytes a user job costs on the wire to PostgreSQL on the busier side of its connection
/// (measured: about 60 jobs a second on two connections at 37,500 bytes/s each): its statements,
/// two cards and their replies.
const PG_BYTES_PER_JOB: u64 = 1_200;

/// Jobs of `run` in `stream` acknowledged or dead-lettered so far.
async fn done(c: &mut MultiplexedConnection, stream: &str, run: i64) -> u64 {
    let (counts, _) = drain_counts(c, stream, &run.to_string()).await;
    counts.get("acked").copied().unwrap_or(0) + counts.get("dead_lettered").copied().unwrap_or(0)
}

/// Files by name under `dir`, and the names of staged writes a kill left (`<name>#<n>`).
fn files(dir: &std::path::Path) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut finals = BTreeMap::new();
    let mut staged = BTreeSet::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains('#') {
            staged.insert(name);
        } else {
            finals.insert(name, std::fs::read_to_string(e.path()).unwrap());
        }
    }
    (finals, staged)
}

fn reset(toml: &str) {
    let (code, out, err) = run_to_end(&["adaptive-card", "reset", "--dlq"], Some(toml), &[]);
    assert_eq!(code, 0, "reset: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_card_workers_killed_again_and_again_finish_every_job_once() {
    let users = setting("ACTORD_CRASH_MESSAGES", 2_000) as usize;
    let orgs = (users / 10).max(20);
    let kills = setting("ACTORD_CRASH_KILLS", 3);
    let mut moments = Moments(setting("ACTORD_CRASH_SEED", 7));
    let mut c = conn(REDIS).await;
    let s = setup(&[], 0).await;
    let results = s.results.clone();
    let db = pg().await;
    // The results table as the pipeline makes it, with a trigger counting each card's
    // committed writes (a job done again writes its cards again).
    db.batch_execute(&format!(
        "CREATE TABLE {results} (user_id text NOT NULL, scenario_id text NOT NULL, \
         run_id bigint NOT NULL, card jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT \
         now(), PRIMARY KEY (user_id, scenario_id));
         CREATE TABLE {results}_writes (user_id text, scenario_id text, n int NOT NULL, \
         PRIMARY KEY (user_id, scenario_id));
         CREATE FUNCTION {results}_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         INSERT INTO {results}_writes VALUES (NEW.user_id, NEW.scenario_id, 1) \
         ON CONFLICT (user_id, scenario_id) DO UPDATE SET n = {results}_writes.n + 1; \
         RETURN NEW; END $$;
         CREATE TRIGGER {results}_count AFTER INSERT OR UPDATE ON {results} \
         FOR EACH ROW EXECUTE FUNCTION {results}_count();"
    ))
    .await
    .unwrap();

    // The first run, in a process of its own: the merged rows the user jobs read, and the
    // pattern of an organisation's files.
    let delay_ms = Arc::new(AtomicU64::new(0));
    let (api, requests) = counting_t2a(delay_ms.clone()).await;
    let mut first_orgs = USER_ORGS.to_vec();
    first_orgs.push(PATTERN);
    let first_toml = config(REDIS, &api, &s, &first_orgs);
    reset(&first_toml);
    let mut first = Process::start(&first_toml, &[], &[]);
    wait_ready(&first.base).await;
    let outcome = run_once(&first.base, 0).await;
    assert_eq!(outcome["outcome"], "succeeded", "{outcome:#}");
    first.signal("TERM");
    first.wait_exit(Duration::from_secs(20));
    let runs: Vec<i64> = std::fs::read_dir(s.out.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let (cards_run, sales_run) = (runs[0], runs[0] + 1);
    let pattern = |dataset: &str| {
        std::fs::read_to_string(
            s.out
                .path()
                .join(format!("runs/{cards_run}/{dataset}/{PATTERN}.csv")),
        )
        .unwrap()
    };
    let (material, gscm) = (pattern("material"), pattern("gscm"));

    // The backlog: `orgs` sales-org jobs of the next run, `users` user jobs of the first.
    let org_of = |i: usize| format!("{}", 10_000 + i);
    let user_of = |i: usize| (format!("u-{i}"), USER_ORGS[i % USER_ORGS.len()]);
    let sales_jobs: Vec<Value> = (0..orgs)
        .map(|i| json!({"run_id": sales_run, "sales_org": org_of(i)}))
        .collect();
    let user_jobs: Vec<Value> = (0..users)
        .map(|i| {
            let (user, org) = user_of(i);
            json!({"run_id": cards_run, "user_id": user, "sales_org": org})
        })
        .collect();
    enqueue(&mut c, SALES, sales_run, &sales_jobs).await;
    enqueue(&mut c, CARDS, cards_run, &user_jobs).await;

    // Paced so that the whole backlog would take 20 s per kill and more: each stage has two
    // workers, a sales-org job makes two T2A requests, a user job's writes go through the
    // proxy on a pooled connection per worker.
    let drain = 20 * (kills + 1);
    delay_ms.store(drain * 1_000 / orgs as u64, Ordering::Release);
    let pg_rate = (users as u64 * PG_BYTES_PER_JOB / drain / 2).max(2_048);
    let pg_proxy = Proxy::start_throttled("127.0.0.1:5432", pg_rate).await;
    let toml = config(REDIS, &api, &s, &[])
        .replacen(
            "[pipelines.adaptive-card]\n",
            "[pipelines.adaptive-card]\nrole = \"workers\"\nclaim_idle = \"5s\"\n",
            1,
        )
        .replacen(
            "host = \"127.0.0.1\"\n",
            &format!("host = \"127.0.0.1\"\nport = {}\n", pg_proxy.port),
            1,
        );
    let started = Instant::now();

    // (sales-org jobs, user jobs done, cards) at each kill.
    let mut at_kill: Vec<(u64, u64, i64)> = Vec::new();
    let cards_count = format!("SELECT count(*) FROM {results}");
    for k in 1..=kills {
        let before = (
            done(&mut c, SALES, sales_run).await,
            done(&mut c, CARDS, cards_run).await,
        );
        let mut p = Process::start(&toml, &[], &[]);
        wait_ready(&p.base).await;
        let ready = Instant::now();
        // Both stages of this run have finished a job (or have none left).
        let landed = || {
            let mut c = c.clone();
            async move {
                let now = (
                    done(&mut c, SALES, sales_run).await,
                    done(&mut c, CARDS, cards_run).await,
                );
                (now.0 > before.0 || now.0 >= orgs as u64)
                    && (now.1 > before.1 || now.1 >= users as u64)
            }
        };
        let exited = kill_mid_run(&mut p, &mut moments, 3_000, landed).await;
        assert!(
            exited.is_none(),
            "actord exited on its own ({exited:?}); log:\n{}",
            p.log()
        );
        let killed = ready.elapsed();
        // What the killed process had sent still reaches PostgreSQL through the proxy.
        let drained = Instant::now() + Duration::from_secs(30);
        while pg_proxy.open_connections() > 0 && Instant::now() < drained {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now = (
            done(&mut c, SALES, sales_run).await,
            done(&mut c, CARDS, cards_run).await,
            db.query_one(&cards_count, &[]).await.unwrap().get(0),
        );
        eprintln!(
            "kill {k}: {} of {orgs} sales-org jobs, {} of {users} user jobs done, {} cards \
             (killed {:.1}s after ready)",
            now.0,
            now.1,
            now.2,
            killed.as_secs_f64()
        );
        at_kill.push(now);
    }
    let killed_for = started.elapsed();

    delay_ms.store(0, Ordering::Release);
    pg_proxy.set_rate(UNTHROTTLED);
    let last = Process::start(&toml, &[], &[]);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let now = (
            done(&mut c, SALES, sales_run).await,
            done(&mut c, CARDS, cards_run).await,
        );
        if now.0 >= orgs as u64 && now.1 >= users as u64 {
            break;
        }
        if Instant::now() > deadline {
            let log = last.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{now:?} of ({orgs}, {users}) jobs done after {kills} kills (at each: \
                 {at_kill:?})\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let elapsed = started.elapsed();
    // A moment more: nothing else may arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Each job counted once in its run, none dead-lettered, nothing left pending.
    let exactly = |n: usize| -> BTreeMap<String, u64> {
        [("enqueued".into(), n as u64), ("acked".into(), n as u64)].into()
    };
    let counted = (
        drain_counts(&mut c, SALES, &sales_run.to_string()).await.0,
        drain_counts(&mut c, CARDS, &cards_run.to_string()).await.0,
    );
    assert_eq!(
        counted,
        (exactly(orgs), exactly(users)),
        "drain counters (at each kill: {at_kill:?})"
    );
    for stream in [SALES, CARDS] {
        let dlq = format!("{stream}:dlq");
        let letters = entries(&mut c, &dlq).await;
        assert!(
            letters.is_empty(),
            "{} in {dlq}: {letters:?}",
            letters.len()
        );
    }
    for (stream, group) in [(SALES, "sales_org_group"), (CARDS, "adaptive_card_group")] {
        let pending = crate::redis_streams::pending(&mut c, stream, group).await;
        assert_eq!(pending.values().sum::<u64>(), 0, "pending in {stream}");
    }

    // Every organisation's two files, byte-exact, and no others.
    let mut staged_left = 0;
    for (dataset, pattern) in [("material", &material), ("gscm", &gscm)] {
        let dir = s.out.path().join(format!("runs/{sales_run}/{dataset}"));
        let (finals, staged) = files(&dir);
        staged_left += staged.len();
        let want: BTreeMap<String, String> = (0..orgs)
            .map(|i| {
                let org = org_of(i);
                (format!("{org}.csv"), pattern.replace(PATTERN, &org))
            })
            .collect();
        let names: BTreeSet<&String> = finals.keys().collect();
        assert_eq!(names, want.keys().collect(), "{dataset} files");
        for (name, text) in &want {
            assert_eq!(&finals[name], text, "{dataset}/{name}");
        }
    }

    // Every user's two cards, and no others, each as its organisation's card of the first run.
    let rows = db
        .query(
            &format!("SELECT user_id, scenario_id, run_id, card FROM {results} ORDER BY 1, 2"),
            &[],
        )
        .await
        .unwrap();
    let mut cards: BTreeMap<(String, String), Value> = BTreeMap::new();
    for r in &rows {
        let (user, scenario, run): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        let mut card: Value = r.get(3);
        assert_eq!(run, cards_run, "{user} {scenario}");
        assert_eq!(card["metadata"]["user_id"], user.as_str(), "{card}");
        card["metadata"]["user_id"] = Value::Null;
        cards.insert((user, scenario), card);
    }
    assert_eq!(rows.len(), cards.len());
    let scenarios = ["delayed_delivery", "low_stock"];
    let want: BTreeSet<(String, String)> = (0..users)
        .flat_map(|i| scenarios.map(|sc| (user_of(i).0, sc.to_owned())))
        .collect();
    let got: BTreeSet<(String, String)> = cards.keys().cloned().collect();
    let missing = want.difference(&got).count();
    let extra = got.difference(&want).count();
    assert!(
        missing == 0 && extra == 0,
        "{missing} cards missing, {extra} cards not of a job (at each kill: {at_kill:?})"
    );
    for i in 0..users {
        let (user, org) = user_of(i);
        let (pattern_user, _) = user_of(i % USER_ORGS.len());
        for sc in scenarios {
            let card = &cards[&(user.clone(), sc.to_owned())];
            assert_eq!(
                card,
                &cards[&(pattern_user.clone(), sc.to_owned())],
                "{user} {sc}"
            );
            assert!(
                card["body"][0]["text"].as_str().unwrap().contains(org),
                "{card}"
            );
        }
    }

    // Every kill landed while both stages were working: neither had done nothing nor all.
    for (k, (sales, user, _)) in at_kill.iter().enumerate() {
        assert!(
            (1..orgs as u64).contains(sales) && (1..users as u64).contains(user),
            "kill {} did not land mid-run: {sales} of {orgs} sales-org jobs, {user} of {users} \
             user jobs done",
            k + 1
        );
    }

    // Jobs done again after a kill: their T2A requests and card writes repeated.
    let counts = requests.lock().unwrap().clone();
    let again_sales = (0..orgs)
        .filter(|i| counts.get(&org_of(*i)).copied().unwrap_or(0) > 2)
        .count();
    let written: Vec<(i64, i64)> = db
        .query(
            &format!("SELECT count(*) FILTER (WHERE m > 2), coalesce(sum(m), 0)::bigint FROM (SELECT sum(n) AS m FROM {results}_writes GROUP BY user_id) w"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (again_users, card_writes) = written[0];
    eprintln!(
        "crash run: adaptive-card workers, {orgs} sales-org and {users} user jobs, {kills} \
         SIGKILLs in {:.1}s (T2A {} ms a request, PostgreSQL at {pg_rate} bytes/s a \
         connection; sales-org jobs, user jobs, cards at each: {at_kill:?}); every file \
         byte-exact, every card once, acked == enqueued in both stages, 0 dead letters, 0 \
         pending, after {:.1}s; done again after a kill: {again_sales} sales-org jobs, \
         {again_users} user jobs ({card_writes} card writes for {} cards), {staged_left} staged \
         files left",
        killed_for.as_secs_f64(),
        drain * 1_000 / orgs as u64,
        elapsed.as_secs_f64(),
        2 * users
    );

    drop(last);
    reset(&toml);
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{SALES}:drain:{sales_run}"))
        .arg(format!("{CARDS}:drain:{cards_run}"))
        .arg(format!("{SALES}:drain:{cards_run}"))
        .query_async(&mut c)
        .await
        .unwrap();
    let _ = db
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {results}, {results}_writes, {}; \
             DROP FUNCTION IF EXISTS {results}_count()",
            s.users
        ))
        .await;
}
