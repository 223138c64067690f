//! The recorder's PostgreSQL path under database faults: start offsets read at assignment, an
//! offsets table that fell behind, schema mismatches, rejection storms, lock waits and a
//! TimescaleDB that is installed but not preloaded.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::{bootstrap_of, count, drop_schema, fresh_schema, recorder_config, tick, BASE};
use crate::kafka::end_offsets;
use crate::support::{get, pg, unique, until, wait_ready, Process, Proxy, Tansu};

/// The group the TimescaleDB path uses when `KAFKA_GROUP_ID` is not set.
const GROUP: &str = "data-recorder-group-timescale";

/// Produces ticks `range` (volume = i) into one partition, so their offsets are known.
async fn produce_to(bootstrap: &str, partition: i32, range: std::ops::Range<i64>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // Small chunks, each confirmed: tansu drops produce requests under a large backlog.
    let all: Vec<i64> = range.collect();
    for chunk in all.chunks(50) {
        let mut waits = Vec::new();
        for i in chunk {
            let payload = tick(*i, BASE);
            waits.push(
                producer
                    .send_result(
                        FutureRecord::<str, str>::to("market.tick")
                            .payload(&payload)
                            .partition(partition),
                    )
                    .map_err(|(e, _)| e)
                    .unwrap(),
            );
        }
        for w in waits {
            w.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
}

/// The `partitions assigned` lines of a log, oldest first.
fn assignments(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("partitions assigned"))
        .map(str::to_owned)
        .collect()
}

/// The partitions of `market.tick` in an assignment line.
fn partitions_of(line: &str) -> Vec<i32> {
    (0..8)
        .filter(|p| line.contains(&format!("market.tick[{p}]")))
        .collect()
}

async fn stored_offset(schema: &str, group: &str, partition: i32) -> Option<i64> {
    pg().await
        .query_opt(
            &format!(
                "SELECT next_offset FROM \"{schema}\".actord_offsets \
                 WHERE consumer_group = $1 AND topic = 'market.tick' AND partition = $2"
            ),
            &[&group, &partition],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn distinct_volumes(schema: &str) -> i64 {
    pg().await
        .query_one(
            &format!("SELECT count(DISTINCT volume) FROM \"{schema}\".tick_data"),
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

fn dlq_records(bootstrap: &str) -> i64 {
    end_offsets(bootstrap, "market.tick-dlq", 1).values().sum()
}

/// Two actord processes in one group on a real broker: a partition that process A wrote, then
/// lost to B while B wrote more, comes back to A. A must start it where B's writes left the
/// table, not where A's own memory of it stopped.
#[tokio::test]
async fn a_partition_given_back_starts_where_the_other_member_left_the_table() {
    let broker = Tansu::start();
    broker.create_topic("market.tick", 2);
    broker.create_topic("market.tick-dlq", 1);
    let schema = fresh_schema();
    let group = unique("handover");
    let env = [
        ("KAFKA_BROKERS", broker.bootstrap().to_owned()),
        ("KAFKA_GROUP_ID", group.clone()),
        ("S3_WRITE_ENABLED", "false".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let toml = recorder_config(&schema, 5432, "topics = [\"market.tick\"]");
    let group = format!("{group}-timescale");

    let a = Process::start(&toml, &[], &env);
    wait_ready(&a.base).await;
    produce_to(broker.bootstrap(), 0, 0..100).await;
    produce_to(broker.bootstrap(), 1, 100..200).await;
    until(
        Duration::from_secs(90),
        "A writes both partitions",
        || async { count(&schema, "tick_data").await == 200 },
    )
    .await;

    let mut b = Process::start(&toml, &[], &env);
    wait_ready(&b.base).await;
    let mut b_part = -1;
    until(Duration::from_secs(90), "the partitions split", || {
        let (la, lb) = (assignments(&a.log()), assignments(&b.log()));
        let (pa, pb) = (
            la.last().map(|l| partitions_of(l)).unwrap_or_default(),
            lb.last().map(|l| partitions_of(l)).unwrap_or_default(),
        );
        if pa.len() == 1 && pb.len() == 1 && pa != pb {
            b_part = pb[0];
        }
        async move { pa.len() == 1 && pb.len() == 1 && pa != pb }
    })
    .await;
    produce_to(broker.bootstrap(), 0, 200..300).await;
    produce_to(broker.bootstrap(), 1, 300..400).await;
    until(Duration::from_secs(90), "A and B write", || async {
        count(&schema, "tick_data").await == 400
    })
    .await;

    let before = assignments(&a.log()).len();
    b.signal("TERM");
    assert_eq!(
        b.wait_exit(Duration::from_secs(60)).code(),
        Some(0),
        "{}",
        b.log()
    );
    let left = stored_offset(&schema, &group, b_part).await.unwrap();
    assert_eq!(left, 200, "B wrote its partition up to offset 200");
    until(Duration::from_secs(90), "A takes both partitions", || {
        let la = assignments(&a.log());
        let done = la.len() > before && la.last().map(|l| partitions_of(l).len()) == Some(2);
        async move { done }
    })
    .await;
    let last = assignments(&a.log()).pop().unwrap();
    assert!(
        last.contains(&format!("market.tick[{b_part}]@Offset({left})")),
        "A must start partition {b_part} at {left}, where the table says B stopped: {last}"
    );

    produce_to(broker.bootstrap(), 0, 400..450).await;
    produce_to(broker.bootstrap(), 1, 450..500).await;
    until(Duration::from_secs(90), "every tick", || async {
        count(&schema, "tick_data").await == 500
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&schema, "tick_data").await, 500);
    assert_eq!(distinct_volumes(&schema).await, 500);
    drop(a);
    drop_schema(&schema).await;
}

/// A database that lost its last commits (a failover to a lagging standby), simulated by
/// deleting rows and lowering the stored offset: the writer must not write past the hole. It
/// fails loudly, and the path starts again from the table's offset, which refills the hole.
#[tokio::test]
async fn an_offsets_table_behind_what_this_process_wrote_fails_loudly_and_is_refilled() {
    let schema = fresh_schema();
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &[]);
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce_to(&bootstrap, 0, 0..100).await;
    until(Duration::from_secs(60), "the first 100 ticks", || async {
        count(&schema, "tick_data").await == 100
    })
    .await;
    assert_eq!(stored_offset(&schema, GROUP, 0).await, Some(100));

    pg().await
        .batch_execute(&format!(
            "BEGIN; DELETE FROM \"{schema}\".tick_data WHERE volume >= 60; \
             UPDATE \"{schema}\".actord_offsets SET next_offset = 60 \
             WHERE consumer_group = '{GROUP}' AND topic = 'market.tick' AND partition = 0; COMMIT"
        ))
        .await
        .unwrap();
    produce_to(&bootstrap, 0, 100..150).await;

    until(
        Duration::from_secs(60),
        "the regression in the log",
        || async { p.log().contains("offset regression") },
    )
    .await;
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.contains("offset regression"))
        .unwrap();
    assert!(
        line.contains("market.tick") && line.contains("60") && line.contains("100"),
        "{line}"
    );
    until(Duration::from_secs(90), "the hole refilled", || async {
        count(&schema, "tick_data").await == 150
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&schema, "tick_data").await, 150);
    assert_eq!(distinct_volumes(&schema).await, 150, "no duplicates");
    let metrics = get(&p.base, "/metrics").await.1;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("actord_timescale_offset_regressions_total") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    let health = get(&p.base, "/health").await.1;
    assert!(health.contains("offset regression"), "{health}");
    assert_eq!(dlq_records(&bootstrap), 0);
    drop(p);
    drop_schema(&schema).await;
}

/// The table lost commits that another member made (this process never wrote the partition,
/// it only read the table's offset when the partition was assigned): the writer must not step
/// over the hole either.
#[tokio::test]
async fn an_offsets_table_behind_what_this_process_read_there_is_a_regression_too() {
    let schema = fresh_schema();
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &[]);
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    let (status, body) = crate::support::post(&p.base, "/api/pipelines/recorder/stop", None).await;
    assert_eq!(status, 200, "{body}");
    // Another member wrote offsets 0..100 of partition 0 and committed its offset.
    produce_to(&bootstrap, 0, 0..100).await;
    let rows: Vec<String> = (0..100)
        .map(|i| format!("(to_timestamp({i}), 'S', 1.0, {i}, 0.0, 0.0)"))
        .collect();
    pg().await
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".tick_data VALUES {}; \
             INSERT INTO \"{schema}\".actord_offsets (consumer_group, topic, partition, next_offset) \
             VALUES ('{GROUP}', 'market.tick', 0, 100)",
            rows.join(", ")
        ))
        .await
        .unwrap();
    let before = assignments(&p.log()).len();
    let (status, body) = crate::support::post(&p.base, "/api/pipelines/recorder/start", None).await;
    assert_eq!(status, 200, "{body}");
    until(
        Duration::from_secs(60),
        "partition 0 assigned at 100",
        || {
            let log = p.log();
            let all = assignments(&log);
            let done = all.len() > before
                && all[before..]
                    .iter()
                    .any(|l| l.contains("market.tick[0]@Offset(100)"));
            async move { done }
        },
    )
    .await;
    // The database loses the other member's last commits.
    pg().await
        .batch_execute(&format!(
            "BEGIN; DELETE FROM \"{schema}\".tick_data WHERE volume >= 60; \
             UPDATE \"{schema}\".actord_offsets SET next_offset = 60 \
             WHERE consumer_group = '{GROUP}' AND topic = 'market.tick' AND partition = 0; COMMIT"
        ))
        .await
        .unwrap();
    produce_to(&bootstrap, 0, 100..150).await;
    until(
        Duration::from_secs(60),
        "the regression in the log",
        || async { p.log().contains("offset regression") },
    )
    .await;
    until(Duration::from_secs(90), "the hole refilled", || async {
        count(&schema, "tick_data").await == 150
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&schema, "tick_data").await, 150);
    assert_eq!(
        distinct_volumes(&schema).await,
        150,
        "no duplicates, no hole"
    );
    assert_eq!(stored_offset(&schema, GROUP, 0).await, Some(150));
    assert_eq!(dlq_records(&bootstrap), 0);
    drop(p);
    drop_schema(&schema).await;
}

/// A table whose `volume` column is INTEGER where the COPY writes BIGINT.
async fn create_mismatched_schema(schema: &str) {
    pg().await
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".tick_data (time TIMESTAMPTZ NOT NULL, \
             symbol TEXT NOT NULL, price DOUBLE PRECISION, volume INTEGER, change DOUBLE PRECISION, \
             change_rate DOUBLE PRECISION)"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_table_of_other_column_types_is_a_start_up_error_that_exits_2() {
    let schema = fresh_schema();
    create_mismatched_schema(&schema).await;
    let mut p = Process::start(&recorder_config(&schema, 5432, ""), &[], &[]);
    let status = p.wait_exit(Duration::from_secs(60));
    let log = p.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains(&format!("{schema}.tick_data")), "{log}");
    assert!(
        log.contains("volume") && log.contains("integer") && log.contains("bigint"),
        "{log}"
    );
    drop_schema(&schema).await;
}

/// The database is away at start-up, so the mismatch is found when the path connects: the path
/// fails with the message on /health and in the log, and nothing is dead-lettered.
#[tokio::test]
async fn a_mismatch_found_after_start_up_stops_the_path_without_dead_letters() {
    let schema = fresh_schema();
    create_mismatched_schema(&schema).await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    proxy.down();
    let p = Process::start(&recorder_config(&schema, proxy.port, ""), &[], &[]);
    until(Duration::from_secs(30), "the admin port", || async {
        reqwest::get(format!("{}/live", p.base)).await.is_ok()
    })
    .await;
    let bootstrap = bootstrap_of(&p).await;
    produce_to(&bootstrap, 0, 0..300).await;
    proxy.up();
    until(
        Duration::from_secs(60),
        "the mismatch on /health",
        || async {
            let (status, body) = get(&p.base, "/health").await;
            status == 503 && body.contains("tick_data.volume")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let health = get(&p.base, "/health").await.1;
    assert!(
        health.contains("recorder.timescaledb: unhealthy")
            && health.contains("integer")
            && health.contains("bigint"),
        "{health}"
    );
    assert!(p.log().contains("tick_data.volume"), "{}", p.log());
    assert_eq!(dlq_records(&bootstrap), 0, "no dead letters");
    assert_eq!(count(&schema, "tick_data").await, 0);

    // A misconfiguration is not restarted under the budget: the path stays stopped, the
    // pipeline is not ready and says why, and the check ran once.
    let restarts = |t: &serde_json::Value| {
        [
            "/recorder/timescale",
            "/recorder/timescale/writer-0",
            "/recorder/timescale/writer-1",
        ]
        .map(|a| crate::support::actor(t, a)["restarts"].as_u64().unwrap())
    };
    let before = restarts(&crate::support::tree(&p.base).await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = crate::support::tree(&p.base).await;
    assert_eq!(restarts(&t), before, "{t:#}");
    let ready = get(&p.base, "/ready").await;
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert!(
        ready.1.contains("/recorder/timescale") && ready.1.contains("misconfigured"),
        "{}",
        ready.1
    );
    let checks = p
        .log()
        .lines()
        .filter(|l| l.contains("a table does not take what"))
        .count();
    assert_eq!(checks, 1, "{}", p.log());

    // Fixed by hand and restarted by the operator, the path writes everything once.
    pg().await
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".tick_data ALTER COLUMN volume TYPE BIGINT"
        ))
        .await
        .unwrap();
    let (status, body) = crate::support::post(
        &p.base,
        "/api/actors/restart?path=/recorder/timescale",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    until(Duration::from_secs(60), "the 300 ticks", || async {
        count(&schema, "tick_data").await == 300
    })
    .await;
    assert_eq!(distinct_volumes(&schema).await, 300);
    until(Duration::from_secs(30), "ready again", || async {
        get(&p.base, "/ready").await.0 == 200
    })
    .await;
    assert_eq!(dlq_records(&bootstrap), 0);
    drop(p);
    drop_schema(&schema).await;
}

/// A column altered to another type while the path runs: the COPY fails with 22P03, which is a
/// misconfiguration: the path stops and stays stopped, nothing is dead-lettered.
#[tokio::test]
async fn a_table_altered_while_the_path_runs_parks_the_path() {
    let schema = fresh_schema();
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &[]);
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce_to(&bootstrap, 0, 0..10).await;
    until(Duration::from_secs(60), "the first ticks", || async {
        count(&schema, "tick_data").await == 10
    })
    .await;
    pg().await
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".tick_data ALTER COLUMN change TYPE REAL"
        ))
        .await
        .unwrap();
    produce_to(&bootstrap, 0, 10..20).await;
    until(Duration::from_secs(60), "the path parked", || async {
        let (status, body) = get(&p.base, "/ready").await;
        status == 503 && body.contains("misconfigured") && body.contains("22P03")
    })
    .await;
    let restarts = |t: &serde_json::Value| {
        [
            "/recorder/timescale",
            "/recorder/timescale/writer-0",
            "/recorder/timescale/writer-1",
        ]
        .map(|a| crate::support::actor(t, a)["restarts"].as_u64().unwrap())
    };
    let before = restarts(&crate::support::tree(&p.base).await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = crate::support::tree(&p.base).await;
    assert_eq!(restarts(&t), before, "{t:#}");
    assert_eq!(dlq_records(&bootstrap), 0, "no dead letters");
    assert_eq!(count(&schema, "tick_data").await, 10);
    drop(p);
    drop_schema(&schema).await;
}

/// A constraint every row breaks (as a bad migration would add): the breaker stops the path
/// after about half the default window instead of emptying the topic into the DLQ.
#[tokio::test]
async fn a_rejection_storm_stops_the_path_instead_of_draining_the_topic() {
    let schema = fresh_schema();
    pg().await
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".tick_data (time TIMESTAMPTZ NOT NULL, \
             symbol TEXT NOT NULL, price DOUBLE PRECISION CHECK (price < 0), volume BIGINT, \
             change DOUBLE PRECISION, change_rate DOUBLE PRECISION)"
        ))
        .await
        .unwrap();
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &[]);
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce_to(&bootstrap, 0, 0..3000).await;
    until(
        Duration::from_secs(120),
        "the breaker on /health",
        || async {
            get(&p.base, "/health")
                .await
                .1
                .contains("rejection breaker")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let dead = dlq_records(&bootstrap);
    assert!(
        (500..1000).contains(&dead),
        "about half the window dead-lettered, then the path stopped: {dead}"
    );
    assert!(p.log().contains("rejection breaker"), "{}", p.log());
    assert_eq!(get(&p.base, "/health").await.0, 503);
    drop(p);
    drop_schema(&schema).await;
}

/// A topic of messages that cannot be decoded (a producer writing another format) trips the
/// same breaker: about half the window is dead-lettered, then the path stops.
#[tokio::test]
async fn a_flood_of_undecodable_messages_trips_the_rejection_breaker() {
    let schema = fresh_schema();
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &[]);
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce_to(&bootstrap, 0, 0..10).await;
    until(Duration::from_secs(60), "the first ticks", || async {
        count(&schema, "tick_data").await == 10
    })
    .await;
    let garbage: Vec<String> = (0..3000).map(|i| format!("<tick n=\"{i}\"/>")).collect();
    super::produce(&bootstrap, "market.tick", garbage).await;
    until(
        Duration::from_secs(120),
        "the breaker on /health",
        || async {
            get(&p.base, "/health")
                .await
                .1
                .contains("rejection breaker")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Undecodable records are judged a batch (200) at a time, before any is dead-lettered: the
    // batch that would pass half the window (500) is refused whole.
    let dead = dlq_records(&bootstrap);
    assert!(
        (300..=500).contains(&dead),
        "at most half the window dead-lettered, then the path stopped: {dead}"
    );
    let health = get(&p.base, "/health").await;
    assert_eq!(health.0, 503, "{}", health.1);
    assert!(health.1.contains("undecodable"), "{}", health.1);
    assert!(p.log().contains("rejection breaker open"), "{}", p.log());
    drop(p);
    drop_schema(&schema).await;
}

/// One row in a small batch that the database rejects still goes to the DLQ alone.
#[tokio::test]
async fn a_single_rejected_row_goes_to_the_dlq_and_the_rest_lands() {
    let schema = fresh_schema();
    pg().await
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".tick_data (time TIMESTAMPTZ NOT NULL, \
             symbol TEXT NOT NULL, price DOUBLE PRECISION, volume BIGINT CHECK (volume <> 7), \
             change DOUBLE PRECISION, change_rate DOUBLE PRECISION)"
        ))
        .await
        .unwrap();
    let p = Process::start(&recorder_config(&schema, 5432, ""), &[], &[]);
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce_to(&bootstrap, 0, 0..20).await;
    until(Duration::from_secs(60), "the 19 good rows", || async {
        count(&schema, "tick_data").await == 19
    })
    .await;
    let dlq = crate::kafka::read_until(&bootstrap, "market.tick-dlq", |r| !r.is_empty());
    assert_eq!(dlq.len(), 1);
    assert!(
        dlq[0].0["error"]
            .as_str()
            .unwrap()
            .starts_with("SqlState23514"),
        "{:?}",
        dlq[0].0
    );
    assert_eq!(get(&p.base, "/health").await.0, 200);
    drop(p);
    drop_schema(&schema).await;
}

/// A session holding the offsets row of a partition (a zombie writer): the writer's
/// `lock_timeout` turns the wait into a retried error instead of a stall without end.
#[tokio::test]
async fn a_held_row_lock_times_out_and_is_retried() {
    let schema = fresh_schema();
    let toml = recorder_config(&schema, 5432, "") + "lock_timeout = \"1s\"\n";
    let p = Process::start(&toml, &[], &[]);
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce_to(&bootstrap, 0, 0..10).await;
    until(Duration::from_secs(60), "the first rows", || async {
        count(&schema, "tick_data").await == 10
    })
    .await;
    let (mut zombie, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let tx = zombie.transaction().await.unwrap();
    tx.execute(
        &format!(
            "SELECT 1 FROM \"{schema}\".actord_offsets WHERE consumer_group = $1 AND partition = 0 \
             AND topic = 'market.tick' FOR UPDATE"
        ),
        &[&GROUP],
    )
    .await
    .unwrap();
    produce_to(&bootstrap, 0, 10..20).await;
    until(
        Duration::from_secs(30),
        "a lock timeout in the log",
        || async { p.log().contains("55P03") },
    )
    .await;
    let log = p.log();
    let line = log.lines().find(|l| l.contains("55P03")).unwrap();
    assert!(line.contains("lock timeout"), "{line}");
    assert_eq!(count(&schema, "tick_data").await, 10);
    tx.rollback().await.unwrap();
    until(
        Duration::from_secs(60),
        "the rows after the lock",
        || async { count(&schema, "tick_data").await == 20 },
    )
    .await;
    assert_eq!(dlq_records(&bootstrap), 0);
    drop(p);
    drop_schema(&schema).await;
}

/// The name of the stub extension; see the test below for why it is not `timescaledb`.
const STUB: &str = "timescaledb_actord_stub";

/// Installs an extension whose script ends its own session, as TimescaleDB does when it is
/// installed but missing from `shared_preload_libraries` (FATAL, connection closed).
async fn install_stub_extension() {
    let sharedir: String = pg()
        .await
        .query_one("SELECT setting FROM pg_config WHERE name = 'SHAREDIR'", &[])
        .await
        .unwrap()
        .get(0);
    let dir = std::path::Path::new(&sharedir).join("extension");
    let files = [
        (
            format!("{STUB}.control"),
            "comment = 'actord tests: an extension that is installed but cannot load'\n\
             default_version = '1.0'\nrelocatable = true\n"
                .to_owned(),
        ),
        (
            format!("{STUB}--1.0.sql"),
            "SELECT pg_terminate_backend(pg_backend_pid());\n".to_owned(),
        ),
    ];
    for (name, body) in files {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(body.as_str()) {
            // Written beside and renamed, so a concurrent run never reads half a file.
            let tmp = dir.join(format!(".{}", unique(STUB)));
            std::fs::write(&tmp, &body).expect("the tests run as root to install the stub");
            std::fs::rename(&tmp, &path).unwrap();
        }
    }
}

/// TimescaleDB's files present but the library not preloaded: CREATE EXTENSION answers FATAL and
/// closes the connection. The recorder falls back to plain tables on a fresh connection, says
/// how to enable the extension and prints the server's error, once.
///
/// The stub is installed under its own name and the recorder is pointed at it through a test
/// knob (`ACTORD_TEST_TIMESCALEDB_EXTENSION`): an extension named `timescaledb` in the shared
/// server's extension directory would change what every other recorder test running in
/// parallel sees, and a private `initdb` server would still share that directory.
#[tokio::test]
async fn timescaledb_installed_but_not_preloaded_falls_back_to_plain_tables_once() {
    install_stub_extension().await;
    let schema = fresh_schema();
    let p = Process::start(
        &recorder_config(&schema, 5432, ""),
        &[],
        &[("ACTORD_TEST_TIMESCALEDB_EXTENSION", STUB)],
    );
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce_to(&bootstrap, 0, 0..50).await;
    until(
        Duration::from_secs(60),
        "the ticks in plain tables",
        || async { count(&schema, "tick_data").await == 50 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = p.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("shared_preload_libraries"))
        .collect();
    assert_eq!(warnings.len(), 1, "one fallback, no loop: {log}");
    assert!(
        warnings[0].contains("57P01")
            && warnings[0].contains("terminating connection due to administrator command"),
        "the server's message and SQLSTATE: {}",
        warnings[0]
    );
    assert!(!log.contains("db error"), "{log}");
    let health = get(&p.base, "/health").await;
    assert_eq!(health.0, 200, "{}", health.1);
    assert!(
        health.1.contains("shared_preload_libraries"),
        "{}",
        health.1
    );
    let t = crate::support::tree(&p.base).await;
    assert_eq!(
        crate::support::actor(&t, "/recorder/timescale/writer-0")["restarts"],
        0
    );
    drop(p);
    drop_schema(&schema).await;
}

/// A long COPY reports progress through the writer's hook while rows move, before the batch is
/// written: a trigger holds the batch's last row on a lock the test holds, and the probe shows
/// progress while the write waits.
#[tokio::test]
async fn a_long_copy_reports_progress_while_rows_move() {
    use actord::pipelines::recorder::model;
    use actord::pipelines::recorder::timescale::{MarketCopy, RecorderTables};
    use actord::sinks::postgres::{Classifier, Database, DbSettings};
    use actord_actors::observe::{ActorKind, Registry};
    use actord_actors::record::{Acker, Envelope, Origin, SourceRecord, Topic};
    use actord_actors::sink::{Progress, Sink};
    use actord_actors::ActorPath;

    let schema = fresh_schema();
    let db = Database::kafka(
        DbSettings {
            host: "127.0.0.1".into(),
            schema: schema.clone(),
            ..DbSettings::default()
        },
        "timescaledb",
        std::sync::Arc::new(RecorderTables::default()),
        Classifier::default(),
        unique("progress"),
    );
    let factory = db.factory(std::sync::Arc::new(MarketCopy {
        progress_every: 100,
    }));
    let mut sink = factory().await.unwrap();
    let key: i64 = 0x5eed_0000 + (std::process::id() as i64);
    pg().await
        .batch_execute(&format!(
            "CREATE FUNCTION \"{schema}\".hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             PERFORM pg_advisory_lock_shared({key}); PERFORM pg_advisory_unlock_shared({key}); RETURN NEW; END $$; \
             CREATE TRIGGER hold BEFORE INSERT ON \"{schema}\".tick_data FOR EACH ROW \
             WHEN (NEW.symbol = 'LAST') EXECUTE FUNCTION \"{schema}\".hold()"
        ))
        .await
        .unwrap();
    let holder = pg().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();

    let registry = Registry::new();
    let probe = registry.probe(
        &ActorPath::parse("/recorder/timescale/writer-0").unwrap(),
        ActorKind::Worker,
    );
    sink.attach_progress(Progress::new(probe.clone()));
    let n = 2000i64;
    let records: Vec<Envelope<model::Market>> = (0..n)
        .map(|i| {
            let mut payload: serde_json::Value = serde_json::from_str(&tick(i, BASE)).unwrap();
            if i == n - 1 {
                payload["symbol"] = "LAST".into();
            }
            let source = SourceRecord {
                origin: Origin {
                    topic: Topic::intern("market.tick"),
                    partition: 0,
                    offset: i,
                    epoch: 1,
                },
                key: None,
                payload: Some(payload.to_string().into_bytes()),
                timestamp_ms: None,
                headers: Vec::new(),
            };
            Envelope {
                record: model::decode(&source).unwrap(),
                source,
                acker: Acker::new(|_| {}),
                bytes: 100,
            }
        })
        .collect();
    assert!(probe.since_progress(tokio::time::Instant::now()).is_none());
    let write = tokio::spawn(async move { sink.write(&records).await });
    until(Duration::from_secs(30), "progress during the COPY", || {
        let moved = probe.since_progress(tokio::time::Instant::now()).is_some();
        async move { moved }
    })
    .await;
    assert!(!write.is_finished(), "the last row is still held");
    assert_eq!(
        count(&schema, "tick_data").await,
        0,
        "nothing committed yet"
    );
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .unwrap();
    write.await.unwrap().unwrap();
    assert_eq!(count(&schema, "tick_data").await, n);
    drop_schema(&schema).await;
}
