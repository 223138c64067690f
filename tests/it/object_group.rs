//! The recorder's object fence across processes, as an operator meets it: several actord
//! processes in one consumer group on a broker that expires dead members (librdkafka's mock
//! cluster in a process of its own), uploads slowed by a throttling proxy in front of the S3
//! server, partitions moved while uploads are in flight. Afterwards every record is in exactly
//! one object and one row, whoever wrote it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::recorder::{count, drop_schema, fresh_schema, produce, recorder_config, tick, BASE};
use crate::recorder_s3::{assert_every_tick_once, assert_key_layout, env_of, objects, Row};
use crate::support::{get, wait_ready, MockBroker, Process, Proxy, S3Server};

const PARTITIONS: i32 = 6;

/// The recorder's topics on a broker of their own, `partitions` each, and their DLQ topics.
pub(crate) fn broker(partitions: i32) -> MockBroker {
    MockBroker::start(&[
        ("market.tick", partitions),
        ("market.orderbook", partitions),
        ("market.tick-dlq", 1),
        ("market.orderbook-dlq", 1),
    ])
}

/// The recorder's environment: the S3 server reached through `proxy`, objects cut every
/// `batch` records or every second, so that many are cut while partitions move.
pub(crate) fn environment(
    s3: &S3Server,
    proxy: &Proxy,
    broker: &MockBroker,
    batch: i64,
) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = s3
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_ENDPOINT_URL")
        .collect();
    env.push((
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", proxy.port),
    ));
    env.push(("KAFKA_BROKERS", broker.bootstrap().to_owned()));
    env.push(("S3_BATCH_SIZE", batch.to_string()));
    env.push(("S3_BATCH_TIMEOUT_SEC", "1".into()));
    env
}

fn ticks(range: std::ops::Range<i64>) -> Vec<String> {
    range.map(|i| tick(i, BASE)).collect()
}

/// Distinct tick volumes (= indices) found in the objects.
pub(crate) fn distinct(objects: &std::collections::BTreeMap<String, Vec<Row>>) -> usize {
    objects
        .values()
        .flatten()
        .filter_map(|r| match r {
            Row::Tick { volume, .. } => Some(*volume),
            Row::Book { .. } => None,
        })
        .collect::<BTreeSet<i64>>()
        .len()
}

/// Waits until every one of `n` ticks is in an object and a row, then checks exactly once in
/// both, and that more than one ownership generation wrote objects.
pub(crate) async fn assert_exactly_once(
    s3: &S3Server,
    schema: &str,
    n: i64,
    logs: impl Fn() -> String,
) -> usize {
    let store = s3.client();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (parquet, rows) = (
            distinct(&objects(&store).await),
            count(schema, "tick_data").await,
        );
        if parquet == n as usize && rows >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{parquet} records in objects, {rows} rows of {n}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Late uploads of a member that lost its partitions would land now: give them time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let objects = objects(&store).await;
    assert_every_tick_once(&objects, n);
    assert_key_layout(&objects);
    assert_eq!(
        crate::recorder::tick_rows(schema).await,
        (n, n),
        "rows in PostgreSQL"
    );
    objects
        .keys()
        .filter_map(|k| k.rsplit_once(".g")?.1.strip_suffix(".parquet"))
        .collect::<BTreeSet<&str>>()
        .len()
}

/// The sum of a counter over all its series in a process's `/metrics`.
pub(crate) async fn counter(p: &Process, name: &str) -> f64 {
    let (_, text) = get(&p.base, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Two members drain a backlog while a third joins and leaves four times (twice gracefully,
/// twice killed), with every upload slowed to a crawl: each move revokes partitions whose
/// uploads are in flight. The test waits for a stopping member's exit off the runtime's
/// workers, so the proxy keeps passing that member's last uploads meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_moving_under_slow_uploads_leave_every_record_in_one_object() {
    let broker = broker(PARTITIONS);
    let s3 = S3Server::start("moving");
    let proxy = Proxy::start_throttled(&format!("127.0.0.1:{}", s3.port), 96 * 1024).await;
    let schema = fresh_schema();
    let toml = recorder_config(&schema, 5432, "");
    let env = environment(&s3, &proxy, &broker, 400);
    let n = 24_000i64;
    produce(broker.bootstrap(), "market.tick", ticks(0..n / 2)).await;

    let a = Process::start(&toml, &[], &env_of(&env));
    let b = Process::start(&toml, &[], &env_of(&env));
    wait_ready(&a.base).await;
    wait_ready(&b.base).await;
    let mut moved = 0;
    for round in 0..4 {
        let mut c = Process::start(&toml, &[], &env_of(&env));
        wait_ready(&c.base).await;
        // Long enough for the group to hand c its share and for c to start uploading.
        tokio::time::sleep(Duration::from_secs(6)).await;
        if round == 1 {
            produce(broker.bootstrap(), "market.tick", ticks(n / 2..n)).await;
        }
        if round % 2 == 0 {
            c.signal("TERM");
            let status = tokio::task::block_in_place(|| c.wait_exit(Duration::from_secs(60)));
            assert_eq!(status.code(), Some(0), "{}", c.log());
        } else {
            c.signal("KILL");
            c.wait_exit(Duration::from_secs(10));
        }
        moved += 1;
    }
    let logs = || format!("--- a\n{}\n--- b\n{}", a.log(), b.log());
    let generations = assert_exactly_once(&s3, &schema, n, logs).await;
    assert!(
        generations > 1,
        "after {moved} moves every object has one generation"
    );
    drop((a, b));
    drop_schema(&schema).await;
}

/// A member frozen (SIGSTOP) in the middle of slow uploads, longer than the session timeout:
/// the other member takes its partitions and writes them. Thawed, the zombie's late uploads
/// neither remove nor shadow the new owner's objects.
#[tokio::test]
async fn a_frozen_member_thawed_after_losing_its_partitions_cannot_touch_the_new_owners_objects() {
    let broker = broker(PARTITIONS);
    let s3 = S3Server::start("zombie");
    let proxy = Proxy::start_throttled(&format!("127.0.0.1:{}", s3.port), 48 * 1024).await;
    let schema = fresh_schema();
    let toml = recorder_config(&schema, 5432, "");
    let env = environment(&s3, &proxy, &broker, 400);
    let n = 12_000i64;
    produce(broker.bootstrap(), "market.tick", ticks(0..n / 2)).await;

    let mut zombie = Process::start(&toml, &[], &env_of(&env));
    let owner = Process::start(&toml, &[], &env_of(&env));
    wait_ready(&zombie.base).await;
    wait_ready(&owner.base).await;
    // The zombie has written objects of its own (else the owner would write its partitions
    // first, under the first generation, and nothing would change hands).
    crate::support::until(
        Duration::from_secs(90),
        "the zombie's first objects",
        || async { counter(&zombie, "actord_s3_uploads_total").await > 0.0 },
    )
    .await;
    // Freeze while its uploads crawl through the proxy; the broker expires it after the
    // session timeout (10 s) and the owner gets every partition.
    zombie.signal("STOP");
    produce(broker.bootstrap(), "market.tick", ticks(n / 2..n)).await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    zombie.signal("CONT");
    let logs = || format!("--- zombie\n{}\n--- owner\n{}", zombie.log(), owner.log());
    let generations = assert_exactly_once(&s3, &schema, n, logs).await;
    assert!(generations > 1, "the partitions never changed hands");
    // Whether the freeze caught an upload in flight depends on timing; when it did, the thawed
    // zombie met the fence (the exactly-once checks above hold either way).
    let fenced = counter(&zombie, "actord_s3_fenced_total").await;
    eprintln!("the thawed zombie had {fenced} write(s) fenced");
    drop((zombie, owner));
    drop_schema(&schema).await;
}
