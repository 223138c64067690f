//! The adaptive-card pipeline in-process against real Redis and PostgreSQL, with the T2A
//! stand-in on a loopback port. Each test has a Redis database of its own (the seed's stream
//! names are fixed) and tables of its own.

use std::collections::BTreeSet;
use std::time::Duration;

use actord::pipelines::adaptive_card::standin;
use axum::http::StatusCode;
use serde_json::Value;

use crate::redis_streams::{conn, entries};
use crate::support::{actor, pg, post, run_to_end, tree, unique, until, InProcess};

/// A Redis database of this test's own, emptied.
async fn redis_db(db: u8) -> String {
    let url = format!("redis://127.0.0.1:6379/{db}");
    let () = redis::cmd("FLUSHDB")
        .query_async(&mut conn(&url).await)
        .await
        .unwrap();
    url
}

/// The T2A stand-in on a free port; `fail_first` requests answer 500 first.
async fn t2a(fail_first: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(fail_first));
    let app = standin::router().layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let failures = failures.clone();
            async move {
                use std::sync::atomic::Ordering;
                let left = failures.load(Ordering::SeqCst);
                if left > 0 {
                    failures.store(left - 1, Ordering::SeqCst);
                    return axum::response::IntoResponse::into_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                    );
                }
                next.run(req).await
            }
        },
    ));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

pub(crate) struct Setup {
    pub(crate) users: String,
    pub(crate) results: String,
    pub(crate) out: tempfile::TempDir,
}

/// Users `u-<org>-<i>` for each organisation, in a table of the test's own.
pub(crate) async fn setup(orgs: &[&str], per_org: usize) -> Setup {
    let users = unique("ac_users").replace('-', "_");
    let results = unique("ac_results").replace('-', "_");
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE {users} (user_id text PRIMARY KEY, sales_org text NOT NULL)"
    ))
    .await
    .unwrap();
    for org in orgs {
        for i in 0..per_org {
            db.execute(
                &format!("INSERT INTO {users} VALUES ($1, $2)"),
                &[&format!("u-{org}-{i}"), org],
            )
            .await
            .unwrap();
        }
    }
    Setup {
        users,
        results,
        out: tempfile::tempdir().unwrap(),
    }
}

pub(crate) fn config(redis: &str, t2a: &str, s: &Setup, orgs: &[&str]) -> String {
    let orgs: Vec<String> = orgs.iter().map(|o| format!("\"{o}\"")).collect();
    format!(
        "[pipelines.adaptive-card]\nredis_url = \"{redis}\"\nsales_orgs = [{}]\n\
         max_workers_sales = 2\nmax_workers_adaptive = 2\nretry_backoff = \"50ms\"\n\
         output = \"{}\"\nusers_table = \"{}\"\nresults_table = \"{}\"\nstage_timeout = \"60s\"\n\
         [pipelines.adaptive-card.t2a]\nurl = \"{t2a}\"\ntimeout = \"5s\"\n\
         [pipelines.adaptive-card.db]\nhost = \"127.0.0.1\"\nname = \"postgres\"\n\
         [pipelines.adaptive-card.schedule]\ncron = \"0 0 1 1 *\"\n\
         [runtime]\nenable = [\"adaptive-card\"]\ncool_down = \"1s\"\nshutdown_timeout = \"10s\"\n",
        orgs.join(", "),
        s.out.path().display(),
        s.users,
        s.results,
    )
}

pub(crate) async fn run_entry(base: &str) -> Value {
    let tree = tree(base).await;
    let node = actor(&tree, "/adaptive-card");
    node["schedules"]
        .as_array()
        .and_then(|s| s.iter().find(|e| e["name"] == "run"))
        .cloned()
        .unwrap_or_else(|| panic!("no entry run on /adaptive-card: {node:#}"))
}

/// Starts a run and waits for its outcome.
pub(crate) async fn run_once(base: &str, runs_before: u64) -> Value {
    let (status, body) = post(base, "/api/pipelines/adaptive-card/run", None).await;
    assert_eq!(status, 200, "{body}");
    until(Duration::from_secs(90), "the run to end", || async {
        let e = run_entry(base).await;
        let ended = e["runs"]["succeeded"].as_u64().unwrap_or(0)
            + e["runs"]["failed"].as_u64().unwrap_or(0);
        ended > runs_before
    })
    .await;
    run_entry(base).await["last_outcome"].clone()
}

pub(crate) async fn cards(results: &str) -> Vec<(String, String, Value)> {
    pg().await
        .query(
            &format!("SELECT user_id, scenario_id, card FROM {results} ORDER BY 1, 2"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The runs the cards in `results` were written by.
async fn run_ids(results: &str) -> BTreeSet<i64> {
    pg().await
        .query(&format!("SELECT DISTINCT run_id FROM {results}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_merges_the_csvs_and_writes_one_card_per_user_and_scenario_and_a_rerun_updates_them()
{
    let orgs = ["1000", "2000", "3000"];
    let redis = redis_db(11).await;
    let api = t2a(0).await;
    let s = setup(&orgs, 2).await;
    let actord = InProcess::start(&config(&redis, &api, &s, &orgs)).await;
    let outcome = run_once(&actord.base, 0).await;
    assert_eq!(outcome["outcome"], "succeeded", "{outcome:#}");

    let material = std::fs::read_to_string(s.out.path().join("Material.csv")).unwrap();
    let lines: Vec<&str> = material.lines().collect();
    assert_eq!(lines[0], "sales_org,description,material,stock");
    assert_eq!(lines.len(), 1 + 3 * orgs.len());
    for org in orgs {
        assert!(material.contains(&format!("{org},material 1 of {org},{org}-M1,4")));
    }
    let gscm = std::fs::read_to_string(s.out.path().join("GSCM.csv")).unwrap();
    assert_eq!(
        gscm.lines().next().unwrap(),
        "sales_org,eta,material,order,status"
    );
    assert_eq!(gscm.lines().count(), 1 + 2 * orgs.len());

    let first = cards(&s.results).await;
    assert_eq!(first.len(), 6 * 2, "one card per user and scenario");
    let keys: BTreeSet<(String, String)> = first
        .iter()
        .map(|(u, sc, _)| (u.clone(), sc.clone()))
        .collect();
    assert!(keys.contains(&("u-2000-1".into(), "low_stock".into())));
    assert!(keys.contains(&("u-3000-0".into(), "delayed_delivery".into())));
    let card = &first
        .iter()
        .find(|c| c.0 == "u-1000-0" && c.1 == "low_stock")
        .unwrap()
        .2;
    assert_eq!(card["version"], "1.5");
    assert_eq!(card["body"][1]["facts"][0]["value"], "1000-M1");

    // The seed's monitoring: every job acknowledged, consumers named after the stage.
    let mut c = conn(&redis).await;
    let consumers: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("sales_org_queue")
        .arg("sales_org_group")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(consumers
        .consumers
        .iter()
        .all(|c| c.name.starts_with("sales_org_worker-") && c.pending == 0));
    assert!(entries(&mut c, "sales_org_queue:dlq").await.is_empty());
    // The stage's stream, pending entries and consumers in the tree, as the seed's monitor.
    until(
        Duration::from_secs(20),
        "the monitor in the tree",
        || async {
            let t = tree(&actord.base).await;
            let monitor = actor(&t, "/adaptive-card/adaptive-card/consumer-0");
            let c = &monitor["counters"];
            c["stream_consumers"].as_u64().unwrap_or(0) >= 1
                && c["stream_pending"] == 0
                && c["stream_length"].is_u64()
        },
    )
    .await;

    // A rerun updates the rows instead of duplicating them.
    let outcome = run_once(&actord.base, 1).await;
    assert_eq!(outcome["outcome"], "succeeded", "{outcome:#}");
    let second = cards(&s.results).await;
    assert_eq!(second.len(), first.len());
    let run_ids = run_ids(&s.results).await;
    assert_eq!(run_ids.len(), 1, "every row carries the second run");
    // Drained streams were trimmed: what the groups delivered and acked is gone.
    for q in ["sales_org_queue", "adaptive_card_queue"] {
        let len: u64 = redis::cmd("XLEN").arg(q).query_async(&mut c).await.unwrap();
        assert_eq!(len, 0, "{q}");
    }
    actord.shutdown().await;

    // The seed's queue reset: refused while a run is active, then both streams are gone.
    let toml = config(&redis, &api, &s, &orgs);
    let () = redis::cmd("SET")
        .arg("adaptive_card:active_run")
        .arg("42")
        .query_async(&mut c)
        .await
        .unwrap();
    let (code, _, err) = run_to_end(&["adaptive-card", "reset"], Some(&toml), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("run 42 is active"), "{err}");
    let () = redis::cmd("DEL")
        .arg("adaptive_card:active_run")
        .query_async::<i64>(&mut c)
        .await
        .map(|_| ())
        .unwrap();
    // Both runs left drain counters in both stages.
    let drain_keys = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            let mut keys: Vec<String> = redis::cmd("KEYS")
                .arg("*_queue:drain:*")
                .query_async(&mut c)
                .await
                .unwrap();
            keys.sort();
            keys
        }
    };
    let counters = drain_keys(&mut c).await;
    assert!(counters.len() >= 2, "{counters:?}");
    let (code, out, err) = run_to_end(&["adaptive-card", "reset"], Some(&toml), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("sales_org_queue") && out.contains("adaptive_card_queue"),
        "{out}"
    );
    assert!(
        out.contains(&format!("; {} drain counter(s)", counters.len())),
        "{out}"
    );
    let exists: u64 = redis::cmd("EXISTS")
        .arg("sales_org_queue")
        .arg("adaptive_card_queue")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    assert_eq!(drain_keys(&mut c).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_answering_500s_dead_letters_nothing_and_an_unknown_org_is_dead_lettered_after_three_attempts(
) {
    let orgs = ["1000", "unknown-9"];
    let redis = redis_db(12).await;
    // The first requests fail as a server outage would.
    let api = t2a(6).await;
    let s = setup(&["1000"], 1).await;
    let actord = InProcess::start(&config(&redis, &api, &s, &orgs)).await;
    let outcome = run_once(&actord.base, 0).await;
    assert_eq!(outcome["outcome"], "succeeded", "{outcome:#}");
    let mut c = conn(&redis).await;
    let letters = entries(&mut c, "sales_org_queue:dlq").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    let job: Value = serde_json::from_str(&letter["data"]).unwrap();
    assert_eq!(job["sales_org"], "unknown-9");
    assert_eq!(letter["retry_count"], "3");
    assert_eq!(letter["error_class"], "Http404");
    assert!(letter["error"].contains("404"), "{letter:?}");
    assert_eq!(cards(&s.results).await.len(), 2);
    // The outage was seen, and waited out rather than dead-lettered.
    let (_, metrics) = crate::support::get(&actord.base, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("actord_adaptive_card_jobs_total")
                && l.contains("outcome=\"unavailable\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    actord.shutdown().await;
}

/// Requests a T2A stand-in answered, by organisation.
pub(crate) type Requests =
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>;

/// The T2A stand-in on a free port, counting requests by organisation and answering each after
/// `delay_ms` (read at each request, so a test can change it: jobs take a while, and both
/// processes get some).
pub(crate) async fn counting_t2a(
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> (String, Requests) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts: Requests = Default::default();
    let seen = counts.clone();
    let app = standin::router().layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let (seen, delay_ms) = (seen.clone(), delay_ms.clone());
            async move {
                let org = req.uri().path().split('/').nth(2).unwrap_or("").to_owned();
                *seen.lock().unwrap().entry(org).or_insert(0) += 1;
                let delay = delay_ms.load(std::sync::atomic::Ordering::Acquire);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                next.run(req).await
            }
        },
    ));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), counts)
}

/// Adds `jobs` as a producer following the drain contract does: each in `data` with the run in
/// `run_id`, and the run's `enqueued` counter raised in the same transaction, 500 at a time.
pub(crate) async fn enqueue(
    c: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    run: i64,
    jobs: &[Value],
) {
    for chunk in jobs.chunks(500) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for job in chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("data")
                .arg(job.to_string())
                .arg("run_id")
                .arg(run)
                .ignore();
        }
        let counters = format!("{stream}:drain:{run}");
        pipe.cmd("HINCRBY")
            .arg(&counters)
            .arg("enqueued")
            .arg(chunk.len())
            .ignore();
        pipe.cmd("PEXPIRE").arg(&counters).arg(86_400_000).ignore();
        let () = pipe.query_async(c).await.unwrap();
    }
}

/// The value of `actord_adaptive_card_jobs_total` for `stage`, outcome `done`.
pub(crate) async fn jobs_done(base: &str, stage: &str) -> u64 {
    let metrics = crate::support::get(base, "/metrics").await.1;
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("actord_adaptive_card_jobs_total{")
                && l.contains("outcome=\"done\"")
                && l.contains(&format!("stage=\"{stage}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_and_a_workers_only_process_share_a_runs_jobs_and_do_each_once() {
    let orgs: Vec<String> = (1..=24).map(|i| format!("{}", 1000 + i)).collect();
    let org_refs: Vec<&str> = orgs.iter().map(String::as_str).collect();
    let redis = redis_db(14).await;
    let (api, requests) = counting_t2a(std::sync::Arc::new(20.into())).await;
    let s = setup(&org_refs, 1).await;
    let toml = config(&redis, &api, &s, &org_refs);
    let with_role = |role: &str| {
        toml.replacen(
            "[pipelines.adaptive-card]\n",
            &format!("[pipelines.adaptive-card]\nrole = \"{role}\"\n"),
            1,
        )
    };
    // A scheduler-only process has no workers; a workers-only one no scheduler.
    let (code, out, err) = run_to_end(&["check"], Some(&with_role("scheduler")), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("scheduler worker") && !out.contains("sales-org"),
        "{out}"
    );
    let env = [("BATCH_COUNT", "1")];
    let scheduler = crate::support::Process::start(&with_role("all"), &[], &env);
    let workers = crate::support::Process::start(&with_role("workers"), &[], &env);
    crate::support::wait_ready(&scheduler.base).await;
    crate::support::wait_ready(&workers.base).await;
    let t = tree(&workers.base).await;
    assert!(
        crate::support::flatten(&t)
            .iter()
            .all(|a| a["path"] != "/adaptive-card/scheduler"),
        "a workers-only process drives no runs"
    );
    let (status, _) = post(&workers.base, "/api/pipelines/adaptive-card/run", None).await;
    assert_eq!(status, 404);
    // Every consumer polls its stream (its monitor has read it) before the run starts.
    for base in [&scheduler.base, &workers.base] {
        until(Duration::from_secs(30), "the consumers polling", || async {
            let t = tree(base).await;
            ["sales-org", "adaptive-card"].iter().all(|stage| {
                actor(&t, &format!("/adaptive-card/{stage}/consumer-0"))["counters"]
                    ["stream_length"]
                    .is_u64()
            })
        })
        .await;
    }
    let outcome = run_once(&scheduler.base, 0).await;
    assert_eq!(outcome["outcome"], "succeeded", "{outcome:#}");
    // Every organisation fetched once per dataset: no job was done twice.
    let counts = requests.lock().unwrap().clone();
    assert_eq!(counts.len(), orgs.len(), "{counts:?}");
    assert!(counts.values().all(|n| *n == 2), "{counts:?}");
    assert_eq!(cards(&s.results).await.len(), orgs.len() * 2);
    let mut c = conn(&redis).await;
    assert!(entries(&mut c, "sales_org_queue:dlq").await.is_empty());
    assert!(entries(&mut c, "adaptive_card_queue:dlq").await.is_empty());
    // Both processes took jobs of both stages, and together did each once.
    let (a, b) = (
        jobs_done(&scheduler.base, "sales_org").await,
        jobs_done(&workers.base, "sales_org").await,
    );
    assert!(a > 0 && b > 0 && a + b == orgs.len() as u64, "{a} + {b}");
    let (a, b) = (
        jobs_done(&scheduler.base, "adaptive_card").await,
        jobs_done(&workers.base, "adaptive_card").await,
    );
    assert!(a > 0 && b > 0 && a + b == orgs.len() as u64, "{a} + {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_fails_the_start_with_how_to_create_it() {
    let s = setup(&["1000"], 1).await;
    let toml = config(
        "redis://127.0.0.1:6379/15",
        "http://127.0.0.1:9",
        &s,
        &["1000"],
    )
    .replace("name = \"postgres\"", "name = \"no_such_adaptive_card_db\"");
    let p = crate::support::Process::start(&toml, &[], &[]);
    let expected =
        "database no_such_adaptive_card_db does not exist on 127.0.0.1:5432: create it (createdb no_such_adaptive_card_db)";
    until(Duration::from_secs(30), "the start error", || async {
        let Ok(r) = reqwest::get(format!("{}/api/tree", p.base)).await else {
            return false;
        };
        let t: Value = r.json().await.unwrap();
        crate::support::flatten(&t).iter().any(|a| {
            a["path"] == "/adaptive-card/database"
                && a["last_error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(expected))
        })
    })
    .await;
    let (status, health) = crate::support::get(&p.base, "/health").await;
    assert_eq!(status, 503, "{health}");
    assert!(
        health.contains("adaptive-card.database: unhealthy"),
        "{health}"
    );
    assert!(p.log().contains(expected), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_t2a_outage_opens_the_circuit_shown_on_health_and_the_tree_and_the_run_completes_after_it(
) {
    let orgs = ["1000", "2000"];
    let redis = redis_db(10).await;
    // The stand-in answers 503 while `down` is set.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = down.clone();
    let app = standin::router().layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let flag = flag.clone();
            async move {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return axum::response::IntoResponse::into_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                    );
                }
                next.run(req).await
            }
        },
    ));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s = setup(&orgs, 1).await;
    let actord = InProcess::start(&config(&redis, &api, &s, &orgs)).await;
    let (status, body) = post(&actord.base, "/api/pipelines/adaptive-card/run", None).await;
    assert_eq!(status, 200, "{body}");
    until(Duration::from_secs(30), "the T2A circuit open", || async {
        let health = crate::support::get(&actord.base, "/health").await.1;
        let t = tree(&actord.base).await;
        let m = actor(&t, "/adaptive-card/monitor");
        health.contains("adaptive-card.t2a: unhealthy")
            && m["counters"]["t2a_circuit_open"] == 1
            && m["unhealthy"].as_str().is_some_and(|u| u.contains("503"))
            && m["counters"]["sales_org_enqueued"] == 2
            && m["counters"]["sales_org_remaining"] == 2
    })
    .await;
    // The gauges (their values are the process's, which other tests here share).
    let metrics = crate::support::get(&actord.base, "/metrics").await.1;
    assert!(
        metrics.contains("actord_adaptive_card_circuit_open{dependency=\"t2a\"}"),
        "{metrics}"
    );
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    until(Duration::from_secs(60), "the run to end", || async {
        let e = run_entry(&actord.base).await;
        e["runs"]["succeeded"].as_u64().unwrap_or(0) + e["runs"]["failed"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let outcome = run_entry(&actord.base).await["last_outcome"].clone();
    assert_eq!(outcome["outcome"], "succeeded", "{outcome:#}");
    assert!(entries(&mut conn(&redis).await, "sales_org_queue:dlq")
        .await
        .is_empty());
    assert_eq!(cards(&s.results).await.len(), 4);
    // The circuit closed, and the run's drain counters add up.
    until(
        Duration::from_secs(10),
        "the monitor to show it",
        || async {
            let t = tree(&actord.base).await;
            let c = actor(&t, "/adaptive-card/monitor")["counters"].clone();
            c["t2a_circuit_open"] == 0
                && c["sales_org_done"] == 2
                && c["sales_org_dead_lettered"] == 0
                && c["sales_org_remaining"] == 0
                && c["adaptive_card_enqueued"] == 2
                && c["adaptive_card_done"] == 2
        },
    )
    .await;
    let health = crate::support::get(&actord.base, "/health").await.1;
    assert!(health.contains("adaptive-card.t2a: healthy"), "{health}");
    let metrics = crate::support::get(&actord.base, "/metrics").await.1;
    assert!(
        metrics.contains("actord_adaptive_card_run_jobs{stage=\"adaptive_card\",state=\"done\"}"),
        "{metrics}"
    );
    actord.shutdown().await;
}

/// The drain counters of `stream` for `run` (`<stream>:drain:<run>`), and their expiry (ms).
pub(crate) async fn drain_counts(
    c: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    run: &str,
) -> (std::collections::BTreeMap<String, u64>, i64) {
    let key = format!("{stream}:drain:{run}");
    let counts = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(c)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(c).await.unwrap();
    (counts, ttl)
}

/// Adds a job of an earlier run to `stream`, as that run's driver did; with `holder`, a
/// consumer of `group` reads it and never acknowledges it (a hung worker).
async fn earlier_job(
    c: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
    job: Value,
    holder: Option<&str>,
) {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(c)
        .await;
    assert!(created.is_ok() || created.is_err_and(|e| e.code() == Some("BUSYGROUP")));
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("data")
        .arg(job.to_string())
        .arg("run_id")
        .arg(job["run_id"].to_string())
        .query_async(c)
        .await
        .unwrap();
    if let Some(holder) = holder {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(holder)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(c)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_drain_is_counted_per_run_id_in_redis_by_workers_in_another_process() {
    let redis = redis_db(9).await;
    let api = t2a(0).await;
    let orgs = ["1000", "2000", "unknown-9"];
    let s = setup(&["1000", "2000"], 2).await;
    let mut c = conn(&redis).await;
    // Earlier runs left jobs behind: one held by a worker that hangs (not idle long enough to
    // be taken over during the run), in each stage, and one not delivered yet.
    earlier_job(
        &mut c,
        "sales_org_queue",
        "sales_org_group",
        serde_json::json!({"run_id": 1, "sales_org": "1000"}),
        Some("hung-worker"),
    )
    .await;
    earlier_job(
        &mut c,
        "sales_org_queue",
        "sales_org_group",
        serde_json::json!({"run_id": 2, "sales_org": "2000"}),
        None,
    )
    .await;
    earlier_job(
        &mut c,
        "adaptive_card_queue",
        "adaptive_card_group",
        serde_json::json!({"run_id": 1, "user_id": "u-1000-0", "sales_org": "1000"}),
        Some("hung-worker"),
    )
    .await;
    let toml = config(&redis, &api, &s, &orgs).replacen(
        "[pipelines.adaptive-card]\n",
        "[pipelines.adaptive-card]\nclaim_idle = \"10m\"\n",
        1,
    );
    let with_role = |role: &str| {
        toml.replacen(
            "[pipelines.adaptive-card]\n",
            &format!("[pipelines.adaptive-card]\nrole = \"{role}\"\n"),
            1,
        )
    };
    // The driver takes no jobs: every count it sees comes from the other process's workers.
    let driver = crate::support::Process::start(&with_role("scheduler"), &[], &[]);
    let workers = crate::support::Process::start(&with_role("workers"), &[], &[]);
    crate::support::wait_ready(&driver.base).await;
    crate::support::wait_ready(&workers.base).await;
    let outcome = run_once(&driver.base, 0).await;
    assert_eq!(outcome["outcome"], "succeeded", "{outcome:#}");
    // The run's id: the one run whose counters were set when it enqueued.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("adaptive_card_queue:drain:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let run = keys[0].rsplit(':').next().unwrap().to_owned();

    // The run's own jobs, each counted once: the dead-lettered organisation too.
    let (sales, ttl) = drain_counts(&mut c, "sales_org_queue", &run).await;
    let expected: std::collections::BTreeMap<String, u64> = [
        ("enqueued".to_owned(), 3),
        ("acked".to_owned(), 2),
        ("dead_lettered".to_owned(), 1),
    ]
    .into();
    assert_eq!(sales, expected, "run {run}");
    assert!(ttl > 0, "the counters expire ({ttl} ms)");
    let (cards_counts, _) = drain_counts(&mut c, "adaptive_card_queue", &run).await;
    assert_eq!(cards_counts["enqueued"], 4, "{cards_counts:?}");
    assert_eq!(cards_counts["acked"], 4, "{cards_counts:?}");
    assert_eq!(cards_counts.get("dead_lettered"), None, "{cards_counts:?}");
    let letters = entries(&mut c, "sales_org_queue:dlq").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["run_id"], run);
    // The earlier run's undelivered job was done during this run and counted in its own run.
    let (earlier, _) = drain_counts(&mut c, "sales_org_queue", "2").await;
    assert_eq!(earlier.get("acked"), Some(&1), "{earlier:?}");
    // The hung worker still holds its jobs: the group was never empty, and the run drained.
    for (stream, group) in [
        ("sales_org_queue", "sales_org_group"),
        ("adaptive_card_queue", "adaptive_card_group"),
    ] {
        let pending = crate::redis_streams::pending(&mut c, stream, group).await;
        assert_eq!(pending.values().sum::<u64>(), 1, "{stream}");
    }
    assert!(drain_counts(&mut c, "sales_org_queue", "1")
        .await
        .0
        .is_empty());
    // The driver shows the run's counters on its monitor.
    until(
        Duration::from_secs(20),
        "the counters on the monitor",
        || async {
            let t = tree(&driver.base).await;
            let m = &actor(&t, "/adaptive-card/monitor")["counters"];
            m["sales_org_enqueued"] == 3
                && m["sales_org_done"] == 2
                && m["sales_org_dead_lettered"] == 1
                && m["adaptive_card_done"] == 4
                && m["adaptive_card_remaining"] == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_process_leaves_pending_only_the_jobs_its_workers_were_on() {
    let redis = redis_db(7).await;
    // Each T2A request takes 2 s: the workers are on their first jobs when the kill comes.
    let delay_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(2_000));
    let (api, requests) = counting_t2a(delay_ms.clone()).await;
    let s = setup(&[], 0).await;
    let toml = config(&redis, &api, &s, &[]).replacen(
        "[pipelines.adaptive-card]\n",
        "[pipelines.adaptive-card]\nrole = \"workers\"\nclaim_idle = \"2s\"\n",
        1,
    );
    let run = 7i64;
    let orgs: Vec<String> = (0..8).map(|i| format!("{}", 5000 + i)).collect();
    let jobs: Vec<Value> = orgs
        .iter()
        .map(|o| serde_json::json!({"run_id": run, "sales_org": o}))
        .collect();
    let mut c = conn(&redis).await;
    enqueue(&mut c, "sales_org_queue", run, &jobs).await;
    let mut p = crate::support::Process::start(&toml, &[], &[]);
    until(Duration::from_secs(30), "both workers on a job", || async {
        requests.lock().unwrap().values().sum::<usize>() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal("KILL");
    p.wait_exit(Duration::from_secs(10));
    // Only the jobs the two workers were on were delivered (and are charged a delivery when
    // they are taken over); the others were never read, so a crash costs them nothing.
    let pending = crate::redis_streams::pending(&mut c, "sales_org_queue", "sales_org_group").await;
    assert_eq!(
        pending.values().sum::<u64>(),
        2,
        "entries delivered to the killed process"
    );
    let started: BTreeSet<String> = requests.lock().unwrap().keys().cloned().collect();
    assert_eq!(started.len(), 2, "{started:?}");

    // The next process takes the two over after claim_idle and does every job once more.
    delay_ms.store(0, std::sync::atomic::Ordering::Release);
    let next = crate::support::Process::start(&toml, &[], &[]);
    until(Duration::from_secs(60), "every job done", || async {
        let (counts, _) = drain_counts(&mut conn(&redis).await, "sales_org_queue", "7").await;
        counts.get("acked") == Some(&8)
    })
    .await;
    let (counts, _) = drain_counts(&mut c, "sales_org_queue", "7").await;
    assert_eq!(counts.get("dead_lettered"), None, "{counts:?}");
    assert!(entries(&mut c, "sales_org_queue:dlq").await.is_empty());
    let counts = requests.lock().unwrap().clone();
    for o in &orgs {
        // Materials, then GSCM; a job cut after its first request asks for materials again.
        let want = if started.contains(o) { 3 } else { 2 };
        assert_eq!(counts.get(o), Some(&want), "{o}: {counts:?}");
    }
    drop(next);
    let (code, _, err) = run_to_end(&["adaptive-card", "reset", "--dlq"], Some(&toml), &[]);
    assert_eq!(code, 0, "{err}");
}

/// A process that drove a run (`role = "all"`) and was killed in the middle of it leaves the
/// run's mark in Redis only until the mark lapses (it is renewed while a run lives): a run
/// started right after the restart waits that out instead of failing, and writes every card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_its_process_holds_back_the_next_run_only_until_its_mark_lapses() {
    let redis = redis_db(5).await;
    let orgs: Vec<String> = (0..6).map(|i| format!("{}", 6000 + i)).collect();
    let orgs: Vec<&str> = orgs.iter().map(String::as_str).collect();
    // Each T2A request takes a second: the first run is in its first stage when the kill comes.
    let delay_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1_000));
    let (api, requests) = counting_t2a(delay_ms.clone()).await;
    let s = setup(&orgs, 2).await;
    let toml = config(&redis, &api, &s, &orgs);
    let mut first = crate::support::Process::start(&toml, &[], &[]);
    crate::support::wait_ready(&first.base).await;
    let (status, body) = post(&first.base, "/api/pipelines/adaptive-card/run", None).await;
    assert_eq!(status, 200, "{body}");
    until(
        Duration::from_secs(30),
        "the run's first requests",
        || async { requests.lock().unwrap().values().sum::<usize>() >= 1 },
    )
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let mut c = conn(&redis).await;
    let held: Option<String> = redis::cmd("GET")
        .arg("adaptive_card:active_run")
        .query_async(&mut c)
        .await
        .unwrap();
    let left_ms: i64 = redis::cmd("PTTL")
        .arg("adaptive_card:active_run")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(held.is_some(), "the killed run's mark is gone already");
    assert!(
        (1..=60_000).contains(&left_ms),
        "the killed run's mark lapses in {left_ms} ms"
    );

    delay_ms.store(0, std::sync::atomic::Ordering::Release);
    let next = crate::support::Process::start(&toml, &[], &[]);
    crate::support::wait_ready(&next.base).await;
    let outcome = run_once(&next.base, 0).await;
    assert_eq!(
        outcome["outcome"],
        "succeeded",
        "{outcome:#}\n{}",
        next.log()
    );
    assert!(
        next.log().contains("the earlier run's mark lapsed"),
        "{}",
        next.log()
    );
    let written = cards(&s.results).await;
    assert_eq!(
        written.len(),
        orgs.len() * 2 * 2,
        "one card per user and scenario"
    );
    let run_ids = run_ids(&s.results).await;
    assert_eq!(run_ids.len(), 1, "every card of the run after the restart");
}
