//! Outages: a service one pipeline depends on is stopped for 30 s in the middle of a run while
//! another pipeline runs beside it. Nothing is lost, nothing is dead-lettered because of the
//! outage, only the affected pipeline's subtree restarts, and the other pipeline's throughput
//! during the outage is printed beside its throughput before. Each test stops a server of its
//! own (`PgServer`, `RedisServer`, `S3Server`), never the machine's shared services.
//!
//! `cargo test --test it outages:: -- --nocapture`

use std::time::{Duration, Instant};

use crate::kafka::end_offsets;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::recorder::{recorder_config, tick, BASE};
use crate::support::{
    flatten, get, tree, until, wait_ready, PgServer, Process, RedisServer, S3Server,
};

/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(30);

/// The sum of a counter's series in a scrape.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Restarts of every actor under `prefix` (the pipeline supervisor included), by path.
fn restarts_under(t: &serde_json::Value, prefix: &str) -> Vec<(String, u64)> {
    flatten(t)
        .into_iter()
        .filter_map(|a| {
            let path = a["path"].as_str()?.to_owned();
            (path == prefix || path.starts_with(&format!("{prefix}/")))
                .then(|| (path, a["restarts"].as_u64().unwrap_or(0)))
        })
        .collect()
}

/// A rate over a window of a counter read through the admin port.
struct Rate {
    name: &'static str,
    value: f64,
    at: Instant,
}

impl Rate {
    async fn mark(base: &str, name: &'static str) -> Rate {
        let value = counter(&get(base, "/metrics").await.1, name);
        Rate {
            name,
            value,
            at: Instant::now(),
        }
    }

    /// Units per second since the mark, and a new mark.
    async fn since(self, base: &str) -> (f64, Rate) {
        let now = Rate::mark(base, self.name).await;
        let rate = (now.value - self.value) / now.at.duration_since(self.at).as_secs_f64();
        (rate, now)
    }
}

async fn rows(db: &PgServer, schema: &str) -> (i64, i64) {
    crate::recorder::tick_rows_on(&db.client().await, schema).await
}

/// The recorder writes ticks into a PostgreSQL of the test's own, the heartbeat runs beside it
/// on the same embedded broker. Ticks arrive at a steady rate; PostgreSQL is stopped for 30 s
/// mid-run and started again. Every tick is exactly one row, the tick DLQ is empty, and no
/// heartbeat actor restarted; the beats per second before and during the outage are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_loses_no_tick_and_leaves_the_heartbeat_alone() {
    let mut db = PgServer::start();
    let schema = crate::recorder::fresh_schema();
    let toml = recorder_config(&schema, db.port, "").replace(
        "enable = [\"recorder\"]",
        "enable = [\"recorder\", \"heartbeat\"]",
    ) + "[pipelines.heartbeat]\ninterval = \"20ms\"\n";
    let p = Process::start(&toml, &[], &[("S3_WRITE_ENABLED", "false")]);
    wait_ready(&p.base).await;
    let bootstrap = crate::recorder::bootstrap_of(&p).await;

    // 12,000 ticks at 200 a second: a minute of input, the outage in its middle.
    let n: i64 = 12_000;
    let producer = {
        let bootstrap = bootstrap.clone();
        tokio::spawn(async move {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "5")
                .create()
                .unwrap();
            let started = tokio::time::Instant::now();
            for (k, start) in (0..n).step_by(50).enumerate() {
                let mut waits = Vec::new();
                for i in start..start + 50 {
                    let (payload, key) = (tick(i, BASE), (i % 13).to_string());
                    let record = FutureRecord::to("market.tick").payload(&payload).key(&key);
                    waits.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
                }
                for w in waits {
                    w.await.unwrap().map_err(|(e, _)| e).unwrap();
                }
                tokio::time::sleep_until(started + Duration::from_millis(250 * (k as u64 + 1)))
                    .await;
            }
        })
    };

    until(Duration::from_secs(60), "the first beats", || async {
        counter(
            &get(&p.base, "/metrics").await.1,
            "actord_heartbeat_beats_total",
        ) > 0.0
    })
    .await;
    let mark = Rate::mark(&p.base, "actord_heartbeat_beats_total").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (before, mark) = mark.since(&p.base).await;
    let (at_stop, _) = rows(&db, &schema).await;
    assert!(at_stop < n, "the outage falls in the middle of the run");

    db.stop();
    tokio::time::sleep(OUTAGE).await;
    let (during, _) = mark.since(&p.base).await;
    db.resume();

    producer.await.unwrap();
    let caught_up = Instant::now();
    let deadline = caught_up + Duration::from_secs(120);
    loop {
        let (count, _) = rows(&db, &schema).await;
        if count >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{count} rows of {n}; actord log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let catch_up = caught_up.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows(&db, &schema).await, (n, n), "exactly one row per tick");
    let dead: i64 = end_offsets(&bootstrap, "market.tick-dlq", 1).values().sum();
    assert_eq!(dead, 0, "no tick dead-lettered for the outage");

    let t = tree(&p.base).await;
    let heartbeat = restarts_under(&t, "/heartbeat");
    assert!(!heartbeat.is_empty(), "{t:#}");
    assert!(
        heartbeat.iter().all(|(_, r)| *r == 0),
        "the heartbeat's actors restarted: {heartbeat:?}"
    );
    let recorder: u64 = restarts_under(&t, "/recorder").iter().map(|(_, r)| r).sum();
    eprintln!(
        "postgres outage: {n} ticks at 200/s, PostgreSQL down {}s with {at_stop} rows written; \
         every tick one row, 0 dead letters, {recorder} restarts under /recorder, 0 under \
         /heartbeat; heartbeat {before:.1} beats/s before, {during:.1} during; all rows {:.1}s \
         after the last tick was produced",
        OUTAGE.as_secs(),
        catch_up.as_secs_f64()
    );
}

/// The T2A stand-in on a free port, answering each request after `delay` (so a run lasts long
/// enough for an outage to fall in it).
async fn slow_t2a(delay: Duration) -> String {
    use actord::pipelines::adaptive_card::standin;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = standin::router().layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            tokio::time::sleep(delay).await;
            next.run(req).await
        },
    ));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Ticks at 200 a second into `market.tick` until `stop` is set; returns how many were sent.
fn steady_ticks(
    bootstrap: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut sent = 0i64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let mut waits = Vec::new();
            for i in sent..sent + 50 {
                let (payload, key) = (tick(i, BASE), (i % 13).to_string());
                let record = FutureRecord::to("market.tick").payload(&payload).key(&key);
                waits.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            }
            for w in waits {
                w.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
            sent += 50;
            tokio::time::sleep_until(started + Duration::from_millis(250 * (sent as u64 / 50)))
                .await;
        }
        sent
    })
}

async fn shared_rows(schema: &str) -> i64 {
    crate::recorder::count(schema, "tick_data").await
}

/// adaptive-card's queues on a Redis of the test's own (persistent, as a queue's server must
/// be) and the recorder beside it in one process. A run is started; once some sales-org jobs
/// are done Redis is killed for 30 s and started again. The run completes, nothing is
/// dead-lettered, every user has its cards, every tick is one row, and no recorder actor
/// restarted; the recorder's rows per second before and during the outage are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_mid_run_completes_the_run_and_leaves_the_recorder_alone() {
    use crate::adaptive_card::{cards, config, jobs_done, run_entry, setup};
    use crate::redis_streams::{conn, entries};
    use crate::support::{post, InProcess};

    let mut redis = RedisServer::start(true);
    let orgs: Vec<String> = (1..=40).map(|i| format!("{}", 5000 + i)).collect();
    let orgs: Vec<&str> = orgs.iter().map(String::as_str).collect();
    let api = slow_t2a(Duration::from_millis(300)).await;
    let s = setup(&orgs, 1).await;
    let schema = crate::recorder::fresh_schema();
    let toml = config(&redis.url(), &api, &s, &orgs)
        .replace(
            "enable = [\"adaptive-card\"]",
            "enable = [\"adaptive-card\", \"recorder\"]",
        )
        .replace("stage_timeout = \"60s\"", "stage_timeout = \"600s\"")
        + &format!(
            "[pipelines.recorder]\nbatch_size = 200\nbatch_timeout = \"200ms\"\n\
             [pipelines.recorder.timescale]\nhost = \"127.0.0.1\"\nport = 5432\n\
             user = \"postgres\"\ndatabase = \"postgres\"\nschema = \"{schema}\"\n\
             refresh_interval = \"1s\"\n[pipelines.recorder.s3]\nenabled = false\n"
        );
    let actord = InProcess::start(&toml).await;
    let info: serde_json::Value =
        serde_json::from_str(&get(&actord.base, "/api/info").await.1).unwrap();
    let bootstrap = info["kafka"]["bootstrap"].as_str().unwrap().to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = steady_ticks(bootstrap.clone(), stop.clone());

    until(Duration::from_secs(60), "the first rows", || async {
        shared_rows(&schema).await > 0
    })
    .await;
    // The recorder's rate once it has caught up with what queued while it started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rows0, t0) = (shared_rows(&schema).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = (shared_rows(&schema).await - rows0) as f64 / t0.elapsed().as_secs_f64();
    let (status, body) = post(&actord.base, "/api/pipelines/adaptive-card/run", None).await;
    assert_eq!(status, 200, "{body}");
    until(
        Duration::from_secs(60),
        "some sales-org jobs done",
        || async { jobs_done(&actord.base, "sales_org").await >= 4 },
    )
    .await;
    let (rows1, t1) = (shared_rows(&schema).await, Instant::now());
    let done_at_stop = jobs_done(&actord.base, "sales_org").await;

    redis.stop();
    tokio::time::sleep(OUTAGE).await;
    let (rows2, t2) = (shared_rows(&schema).await, Instant::now());
    let during = (rows2 - rows1) as f64 / t2.duration_since(t1).as_secs_f64();
    redis.resume();
    let back = Instant::now();

    until(Duration::from_secs(300), "the run to end", || async {
        let e = run_entry(&actord.base).await;
        e["runs"]["succeeded"].as_u64().unwrap_or(0) + e["runs"]["failed"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let run_after = back.elapsed();
    let outcome = run_entry(&actord.base).await["last_outcome"].clone();
    assert_eq!(outcome["outcome"], "succeeded", "{outcome:#}");
    let mut c = conn(&redis.url()).await;
    for dlq in ["sales_org_queue:dlq", "adaptive_card_queue:dlq"] {
        assert!(entries(&mut c, dlq).await.is_empty(), "{dlq} is not empty");
    }
    assert_eq!(
        cards(&s.results).await.len(),
        orgs.len() * 2,
        "one card per user and scenario"
    );

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = producer.await.unwrap();
    until(Duration::from_secs(120), "every tick a row", || async {
        shared_rows(&schema).await >= n
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        crate::recorder::tick_rows(&schema).await,
        (n, n),
        "exactly one row per tick"
    );
    let dead: i64 = end_offsets(&bootstrap, "market.tick-dlq", 1).values().sum();
    assert_eq!(dead, 0, "no tick dead-lettered");

    let t = tree(&actord.base).await;
    let recorder = restarts_under(&t, "/recorder");
    assert!(!recorder.is_empty(), "{t:#}");
    assert!(
        recorder.iter().all(|(_, r)| *r == 0),
        "the recorder's actors restarted: {recorder:?}"
    );
    let affected: u64 = restarts_under(&t, "/adaptive-card")
        .iter()
        .map(|(_, r)| r)
        .sum();
    eprintln!(
        "redis outage: adaptive-card run of {} sales-org jobs and {} users, Redis killed for {}s \
         after {done_at_stop} sales-org jobs; the run succeeded {:.1}s after Redis was back, 0 \
         dead letters, {} cards; {affected} restarts under /adaptive-card, 0 under /recorder; \
         recorder {before:.0} rows/s before, {during:.0} during (input 200/s), {n} ticks each \
         one row",
        orgs.len(),
        orgs.len(),
        OUTAGE.as_secs(),
        run_after.as_secs_f64(),
        orgs.len() * 2
    );
    actord.shutdown().await;
    crate::recorder::drop_schema(&schema).await;
}

/// The recorder writes ticks into PostgreSQL and Parquet objects on an s3s-fs server of the
/// test's own, the heartbeat runs beside it on the same embedded broker. Ticks arrive at a
/// steady rate; the S3 server is stopped for 30 s mid-run and started again on the same port
/// and directory. Every tick is in exactly one object and one row, the tick DLQ is empty, and no
/// heartbeat actor restarted; the beats per second before and during the outage are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_loses_no_tick_and_leaves_the_heartbeat_alone() {
    use crate::recorder_s3::{assert_every_tick_once, env_of, objects};

    let mut s3 = S3Server::start("outage-beside");
    let schema = crate::recorder::fresh_schema();
    let toml = recorder_config(&schema, 5432, "").replace(
        "enable = [\"recorder\"]",
        "enable = [\"recorder\", \"heartbeat\"]",
    ) + "[pipelines.heartbeat]\ninterval = \"20ms\"\n";
    let mut env = s3.env();
    env.push(("S3_BATCH_SIZE", "500".into()));
    env.push(("S3_BATCH_TIMEOUT_SEC", "1".into()));
    let p = Process::start(&toml, &[], &env_of(&env));
    wait_ready(&p.base).await;
    let bootstrap = crate::recorder::bootstrap_of(&p).await;
    let store = s3.client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = steady_ticks(bootstrap.clone(), stop.clone());

    until(Duration::from_secs(60), "the first beats", || async {
        counter(
            &get(&p.base, "/metrics").await.1,
            "actord_heartbeat_beats_total",
        ) > 0.0
    })
    .await;
    let mark = Rate::mark(&p.base, "actord_heartbeat_beats_total").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (before, mark) = mark.since(&p.base).await;
    let in_objects = objects(&store).await.values().map(Vec::len).sum::<usize>();

    s3.stop();
    tokio::time::sleep(OUTAGE).await;
    let (during, _) = mark.since(&p.base).await;
    s3.resume();
    // Ticks go on arriving for a while after the server is back.
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = producer.await.unwrap();
    assert!(
        (in_objects as i64) < n,
        "the outage falls in the middle of the run"
    );

    let ended = Instant::now();
    until(
        Duration::from_secs(120),
        "every tick in Parquet and PostgreSQL",
        || async {
            objects(&store).await.values().map(Vec::len).sum::<usize>() as i64 >= n
                && crate::recorder::count(&schema, "tick_data").await >= n
        },
    )
    .await;
    let catch_up = ended.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_every_tick_once(&objects(&store).await, n);
    assert_eq!(
        crate::recorder::tick_rows(&schema).await,
        (n, n),
        "exactly one row per tick"
    );
    let dead: i64 = end_offsets(&bootstrap, "market.tick-dlq", 1).values().sum();
    assert_eq!(dead, 0, "no tick dead-lettered for the outage");

    let t = tree(&p.base).await;
    let heartbeat = restarts_under(&t, "/heartbeat");
    assert!(!heartbeat.is_empty(), "{t:#}");
    assert!(
        heartbeat.iter().all(|(_, r)| *r == 0),
        "the heartbeat's actors restarted: {heartbeat:?}"
    );
    let recorder: Vec<(String, u64)> = restarts_under(&t, "/recorder")
        .into_iter()
        .filter(|(_, r)| *r > 0)
        .collect();
    eprintln!(
        "s3 outage: {n} ticks at 200/s, s3s-fs down {}s with {in_objects} ticks in objects; every \
         tick in exactly one object and one row, 0 dead letters, restarts under /recorder: \
         {recorder:?}, 0 under /heartbeat; heartbeat {before:.1} beats/s before, {during:.1} \
         during; everything written {:.1}s after the last tick was produced",
        OUTAGE.as_secs(),
        catch_up.as_secs_f64()
    );
    drop(p);
    crate::recorder::drop_schema(&schema).await;
}

/// ftp-sync copies files between two FTP servers of the test's own, the recorder runs beside
/// it on the same embedded broker. The destination server is stopped for 30 s while jobs keep
/// arriving and started again on the same port and directory. Every file arrives byte-exact, the
/// job DLQ is empty, no recorder actor restarted; the recorder's rows per second before and
/// during the outage are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ftp_outage_loses_no_job_and_leaves_the_recorder_alone() {
    use crate::recorder::produce;
    use crate::support::FtpServer;

    let src = FtpServer::start(true);
    let mut dst = FtpServer::start(true);
    let content = |i: usize| -> Vec<u8> {
        (0..20_000 + i)
            .map(|k| (k as u8).wrapping_mul(31).wrapping_add(i as u8))
            .collect()
    };
    let jobs_total = 50;
    for i in 0..jobs_total {
        let path = src.root().join(format!("in/{i}.bin"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content(i)).unwrap();
    }
    let jobs = |range: std::ops::Range<usize>| -> Vec<String> {
        range
            .map(|i| {
                serde_json::json!({
                    "job_id": format!("j{i}"),
                    "source": {"hostname": "SRC_FTP_SERVER1", "path": format!("/in/{i}.bin")},
                    "destination": {"hostname": "DST_FTP_SERVER1", "path": format!("/out/{i}.bin")},
                })
                .to_string()
            })
            .collect()
    };
    let arrived = |dst: &FtpServer, range: std::ops::Range<usize>| {
        range
            .filter(|i| std::fs::read(dst.root().join(format!("out/{i}.bin"))).is_ok())
            .count()
    };

    let schema = crate::recorder::fresh_schema();
    let toml = recorder_config(&schema, 5432, "").replace(
        "enable = [\"recorder\"]",
        "enable = [\"recorder\", \"ftp-sync\"]",
    ) + "[pipelines.ftp-sync]\ntopics = [\"mem-dft-img\"]\nconcurrency = 4\n\
         retry_backoff = \"200ms\"\nretry_backoff_max = \"1s\"\n";
    let mut env: Vec<(String, String)> = src.env("SRC_FTP_SERVER1");
    env.extend(dst.env("DST_FTP_SERVER1"));
    env.push(("S3_WRITE_ENABLED".into(), "false".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let p = Process::start(&toml, &[], &env);
    wait_ready(&p.base).await;
    let bootstrap = crate::recorder::bootstrap_of(&p).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = steady_ticks(bootstrap.clone(), stop.clone());

    produce(&bootstrap, "mem-dft-img", jobs(0..10)).await;
    until(Duration::from_secs(60), "the first files", || async {
        arrived(&dst, 0..10) == 10
    })
    .await;
    // The recorder's rate once it has caught up with what queued while it started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rows0, t0) = (shared_rows(&schema).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rows1, t1) = (shared_rows(&schema).await, Instant::now());
    let before = (rows1 - rows0) as f64 / t1.duration_since(t0).as_secs_f64();

    dst.stop();
    produce(&bootstrap, "mem-dft-img", jobs(10..jobs_total)).await;
    tokio::time::sleep(OUTAGE).await;
    let during = (shared_rows(&schema).await - rows1) as f64 / t1.elapsed().as_secs_f64();
    let at_resume = arrived(&dst, 10..jobs_total);
    dst.resume();
    let back = Instant::now();
    until(
        Duration::from_secs(120),
        "every file after the outage",
        || async { arrived(&dst, 0..jobs_total) == jobs_total },
    )
    .await;
    let all_after = back.elapsed();
    for i in 0..jobs_total {
        let got = std::fs::read(dst.root().join(format!("out/{i}.bin"))).unwrap();
        assert!(got == content(i), "out/{i}.bin differs from its source");
    }
    let dead: i64 = end_offsets(&bootstrap, "mem-dft-img-dlq", 1).values().sum();
    assert_eq!(dead, 0, "no job dead-lettered for the outage");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = producer.await.unwrap();
    until(Duration::from_secs(120), "every tick a row", || async {
        shared_rows(&schema).await >= n
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        crate::recorder::tick_rows(&schema).await,
        (n, n),
        "exactly one row per tick"
    );

    let t = tree(&p.base).await;
    let recorder = restarts_under(&t, "/recorder");
    assert!(!recorder.is_empty(), "{t:#}");
    assert!(
        recorder.iter().all(|(_, r)| *r == 0),
        "the recorder's actors restarted: {recorder:?}"
    );
    let affected: Vec<(String, u64)> = restarts_under(&t, "/ftp-sync")
        .into_iter()
        .filter(|(_, r)| *r > 0)
        .collect();
    eprintln!(
        "ftp outage: {jobs_total} jobs, the destination FTP server down {}s while {} of them \
         arrived ({at_resume} written meanwhile); every file byte-exact {:.1}s after it was back, \
         0 dead letters, restarts under /ftp-sync: {affected:?}, 0 under /recorder; recorder \
         {before:.0} rows/s before, {during:.0} during (input 200/s), {n} ticks each one row",
        OUTAGE.as_secs(),
        jobs_total - 10,
        all_after.as_secs_f64()
    );
    drop(p);
    crate::recorder::drop_schema(&schema).await;
}
