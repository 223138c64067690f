//! The Redis Streams source against real Redis: the shared server at 127.0.0.1:6379 (a unique
//! stream per test), and a server of the test's own where it is restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use actord::config::{Config, Sources, Supervision};
use actord::sources::redis::path::RedisPath;
use actord::sources::redis::{RedisConnection, StreamSettings};
use actord_actors::buffer::BufferLimits;
use actord_actors::observe::{ActorKind, Registry};
use actord_actors::record::{Poison, SourceRecord};
use actord_actors::testkit::{RecordingSink, SinkControl, SinkMode};
use actord_actors::writer::RetryPolicy;
use actord_actors::{
    ActorPath, Backoff, Supervisor, SupervisorArgs, SupervisorMsg, SupervisorSpec, Supervisors,
};
use ractor::{Actor, ActorRef};
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use crate::support::{free_port, unique, until};

pub const LOCAL: &str = "redis://127.0.0.1:6379/0";

#[derive(Clone, Debug, PartialEq)]
pub struct Job(pub i64);

/// Jobs are `{"n": i}` in the field `data`, as the seed's workers read them.
fn decode(r: &SourceRecord) -> Result<Job, Poison> {
    let v: Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default())
        .map_err(|e| Poison::new("JsonError", e.to_string()))?;
    v.get("n")
        .and_then(Value::as_i64)
        .map(Job)
        .ok_or_else(|| Poison::new("MissingField", "field `n` is missing"))
}

pub async fn conn(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Adds `{"n": i}` jobs in the field `data`.
pub async fn add_jobs(c: &mut MultiplexedConnection, stream: &str, range: std::ops::Range<i64>) {
    let mut pipe = redis::pipe();
    for i in range {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("data")
            .arg(format!("{{\"n\":{i}}}"))
            .ignore();
    }
    let () = pipe.query_async(c).await.unwrap();
}

/// Pending entries of the group, by consumer (none while the group does not exist).
pub async fn pending(
    c: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> BTreeMap<String, u64> {
    let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(c)
        .await
        .unwrap_or_default();
    match reply {
        redis::streams::StreamPendingReply::Data(d) => d
            .consumers
            .into_iter()
            .map(|c| (c.name, c.pending as u64))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Every entry of a stream as its fields.
pub async fn entries(c: &mut MultiplexedConnection, stream: &str) -> Vec<BTreeMap<String, String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(c)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            e.map
                .iter()
                .map(|(k, v)| (k.clone(), redis::from_redis_value_ref::<String>(v).unwrap()))
                .collect()
        })
        .collect()
}

fn supervision() -> Supervision {
    let dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("supervision.toml");
    std::fs::write(
        &path,
        "[supervision]\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\nmax_restarts = 50\n",
    )
    .unwrap();
    let config: Config = actord::config::load(&Sources {
        config_path: Some(path),
        ..Sources::default()
    })
    .unwrap();
    config.supervision
}

pub struct Options {
    pub url: String,
    pub stream: String,
    pub group: String,
    pub consumer: String,
    pub consumers: usize,
    pub lanes: usize,
    pub claim_idle: Duration,
    pub max_deliveries: u32,
    pub lease_name: bool,
    /// Per consumer; the source's default unless a test bounds it.
    pub max_in_flight_bytes: Option<usize>,
}

impl Options {
    pub fn new(stream: &str) -> Self {
        Options {
            url: LOCAL.to_owned(),
            stream: stream.to_owned(),
            group: unique("group"),
            consumer: unique("worker"),
            consumers: 2,
            lanes: 2,
            claim_idle: Duration::from_secs(30),
            max_deliveries: 3,
            lease_name: false,
            max_in_flight_bytes: None,
        }
    }
}

/// A Redis Streams path over a recording sink, under its own root supervisor.
pub struct TestPath {
    pub sink: SinkControl<Job>,
    pub registry: Registry,
    pub root: ActorRef<SupervisorMsg>,
}

impl TestPath {
    pub async fn start(o: &Options, sink: SinkControl<Job>) -> TestPath {
        let mut source = StreamSettings::new(o.stream.clone(), o.group.clone());
        source.consumer = o.consumer.clone();
        source.consumers = o.consumers;
        source.payload_field = Some("data".into());
        source.block = Duration::from_millis(300);
        source.claim_idle = o.claim_idle;
        source.claim_interval = Duration::from_millis(200);
        source.max_deliveries = o.max_deliveries;
        source.lease_name = o.lease_name;
        if let Some(bytes) = o.max_in_flight_bytes {
            source.max_in_flight_bytes = bytes;
        }
        source.monitor_interval = Duration::from_millis(200);
        source.reconnect = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            factor: 2.0,
        };
        let path = RedisPath::<Job, RecordingSink<Job>> {
            id: "path".into(),
            connection: RedisConnection::new(o.url.clone()),
            source,
            decode: Arc::new(decode),
            sink: sink.factory(),
            lanes: o.lanes,
            buffer: BufferLimits {
                max_records: 20,
                max_bytes: 1 << 20,
                max_age: Duration::from_millis(50),
            },
            retry: RetryPolicy {
                backoff: Backoff {
                    initial: Duration::from_millis(50),
                    max: Duration::from_millis(300),
                    factor: 2.0,
                },
                max_attempts: 4,
            },
            dlq_suffix: Some(":dlq".into()),
        };
        let registry = Registry::new();
        let root_path = ActorPath::parse("/test").unwrap();
        let spec = path.child_spec(&root_path, &supervision());
        let probe = registry.probe(&root_path, ActorKind::Supervisor);
        let (root, _) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                spec: SupervisorSpec {
                    max_restarts: 100,
                    ..SupervisorSpec::default()
                },
                children: vec![spec],
                probe,
                supervisors: Supervisors::default(),
            },
        )
        .await
        .unwrap();
        TestPath {
            sink,
            registry,
            root,
        }
    }

    pub fn written(&self) -> Vec<i64> {
        self.sink.written().iter().map(|(_, r)| r.0).collect()
    }

    pub fn probe(&self, rel: &str) -> actord_actors::Probe {
        let path = ActorPath::parse(&format!("/test/path/{rel}")).unwrap();
        self.registry.probe(&path, ActorKind::Worker)
    }

    pub async fn stop(self) {
        self.root
            .stop_and_wait(None, Some(Duration::from_secs(30)))
            .await
            .unwrap();
    }
}

fn accepting() -> SinkControl<Job> {
    SinkControl::new(|j: &Job| j.0 < 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_is_written_once_and_acknowledged() {
    let stream = unique("jobs");
    let o = Options::new(&stream);
    let mut c = conn(LOCAL).await;
    add_jobs(&mut c, &stream, 0..400).await;
    let p = TestPath::start(&o, accepting()).await;
    // Entries added while the path runs are read too.
    add_jobs(&mut c, &stream, 400..600).await;
    until(Duration::from_secs(30), "600 jobs written", || async {
        p.written().len() >= 600
    })
    .await;
    let written = p.written();
    assert_eq!(written.len(), 600, "duplicates without any failure");
    assert_eq!(
        written.into_iter().collect::<BTreeSet<_>>(),
        (0..600).collect()
    );
    until(
        Duration::from_secs(10),
        "every entry acknowledged",
        || async {
            pending(&mut conn(LOCAL).await, &stream, &o.group)
                .await
                .is_empty()
        },
    )
    .await;
    // Both consumers of the path are in the group under the names given.
    let consumers: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg(&o.group)
        .query_async(&mut c)
        .await
        .unwrap();
    let names: BTreeSet<String> = consumers.consumers.into_iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [format!("{}-0", o.consumer), format!("{}-1", o.consumer)].into()
    );
    // The monitor shows the stream in the tree.
    let consumer = p.probe("consumer-0");
    until(Duration::from_secs(10), "the monitor read", || async {
        consumer.counter("stream_length") == 600 && consumer.counter("stream_pending") == 0
    })
    .await;
    p.stop().await;
}

/// Large entries against a stalled sink: a consumer holds no more than its bytes bound (and one
/// read past it), however many entries its records bound would allow; then all are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_stop_at_the_in_flight_bytes_bound() {
    large_entries_against_the_bytes_bound(Held::Nowhere).await;
}

/// Large entries pending under a name from before: a consumer taking them up as its own, or
/// taking them over from a dead one, stops at its bytes bound too (and one page of a read's
/// size past it), not a page of a hundred past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pending_entries_taken_up_or_over_stop_at_the_in_flight_bytes_bound() {
    large_entries_against_the_bytes_bound(Held::ByItsOwnName).await;
    large_entries_against_the_bytes_bound(Held::ByADeadConsumer).await;
}

/// Where the large entries are when the consumer starts.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// New, never delivered.
    Nowhere,
    /// Delivered to the consumer's own name before, never acknowledged.
    ByItsOwnName,
    /// Delivered to another consumer that died.
    ByADeadConsumer,
}

/// 200 entries of 20 KB against a bound of ten and a blocked sink: at most ten and one read or
/// page more are held; once the sink accepts, every entry is written.
async fn large_entries_against_the_bytes_bound(held: Held) {
    let stream = unique("large");
    let mut o = Options::new(&stream);
    o.consumers = 1;
    o.lanes = 1;
    o.claim_idle = Duration::from_millis(500);
    // Ten entries of 20 KB each, counted with what they hold in flight.
    let entry = 20_000;
    o.max_in_flight_bytes = Some(10 * (entry + actord_actors::record::IN_FLIGHT_OVERHEAD));
    let read = StreamSettings::new("s", "g").count;
    let mut c = conn(LOCAL).await;
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&o.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    for i in 0..200 {
        let data = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(entry - 20));
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("data")
            .arg(data)
            .ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();
    let holder = match held {
        Held::Nowhere => None,
        Held::ByItsOwnName => Some(o.consumer.clone()),
        Held::ByADeadConsumer => Some(unique("dead")),
    };
    if let Some(holder) = holder {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&o.group)
            .arg(&holder)
            .arg("COUNT")
            .arg(200)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut c)
            .await
            .unwrap();
        // Idle past claim_idle, so a takeover may take them.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let sink = accepting();
    sink.set_mode(SinkMode::Blocked);
    let p = TestPath::start(&o, sink).await;
    let consumer = p.probe("consumer-0");
    until(Duration::from_secs(10), "entries in flight", || async {
        consumer.counter("in_flight") >= 10
    })
    .await;
    // Acks are held back by the sink: the count would rise now if the bound let it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held_now = consumer.counter("in_flight");
    assert!(
        (10..=10 + read as u64).contains(&held_now),
        "{held:?}: {held_now} entries in flight, bound 10 (+ one read or page of {read})"
    );
    p.sink.set_mode(SinkMode::Accept);
    until(Duration::from_secs(60), "200 jobs written", || async {
        p.written().len() >= 200
    })
    .await;
    assert_eq!(
        p.written().into_iter().collect::<BTreeSet<_>>(),
        (0..200).collect(),
        "{held:?}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_is_created_once_and_two_processes_share_the_work() {
    let stream = unique("shared");
    let o1 = Options::new(&stream);
    let o2 = Options {
        group: o1.group.clone(),
        ..Options::new(&stream)
    };
    // Both create the group (BUSYGROUP for the second) before anything is in the stream.
    let (a, b) = (
        TestPath::start(&o1, accepting()).await,
        TestPath::start(&o2, accepting()).await,
    );
    let mut c = conn(LOCAL).await;
    until(Duration::from_secs(10), "the group exists", || async {
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn(LOCAL).await)
            .await
            .unwrap_or_default();
        groups.groups.iter().any(|g| g.name == o1.group)
    })
    .await;
    add_jobs(&mut c, &stream, 0..500).await;
    until(Duration::from_secs(30), "500 jobs written", || async {
        a.written().len() + b.written().len() >= 500
    })
    .await;
    let mut all = a.written();
    all.extend(b.written());
    assert_eq!(all.len(), 500, "an entry went to both");
    assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), (0..500).collect());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_stream_with_its_error() {
    let stream = unique("poison");
    let o = Options::new(&stream);
    let mut c = conn(LOCAL).await;
    add_jobs(&mut c, &stream, 0..10).await;
    let () = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("data")
        .arg("not json")
        .arg("org")
        .arg("1000")
        .query_async::<String>(&mut c)
        .await
        .map(|_| ())
        .unwrap();
    // The sink rejects negative jobs after its own attempts.
    add_jobs(&mut c, &stream, -2..-1).await;
    add_jobs(&mut c, &stream, 10..20).await;
    let sink = accepting();
    sink.set_mode(SinkMode::RejectEach { attempts: 3 });
    let p = TestPath::start(&o, sink).await;
    let dlq = format!("{stream}:dlq");
    until(Duration::from_secs(30), "two dead letters", || async {
        entries(&mut conn(LOCAL).await, &dlq).await.len() >= 2
    })
    .await;
    until(Duration::from_secs(30), "20 jobs written", || async {
        p.written().len() >= 20
    })
    .await;
    let letters = entries(&mut c, &dlq).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let decode = letters.iter().find(|l| l["stage"] == "decode").unwrap();
    assert_eq!(decode["data"], "not json");
    assert_eq!(decode["org"], "1000", "the original fields are kept");
    assert_eq!(decode["error_class"], "JsonError");
    assert!(decode["error"].starts_with("JsonError: "), "{decode:?}");
    assert!(decode["original_id"].contains('-'), "{decode:?}");
    let sink = letters.iter().find(|l| l["stage"] == "sink").unwrap();
    assert_eq!(sink["data"], "{\"n\":-2}");
    assert_eq!(sink["retry_count"], "3");
    until(
        Duration::from_secs(10),
        "everything acknowledged",
        || async {
            pending(&mut conn(LOCAL).await, &stream, &o.group)
                .await
                .is_empty()
        },
    )
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_entries_are_taken_over_and_completed() {
    let stream = unique("reclaim");
    let mut first = Options::new(&stream);
    first.consumers = 1;
    first.claim_idle = Duration::from_secs(1);
    let mut c = conn(LOCAL).await;
    add_jobs(&mut c, &stream, 0..30).await;
    // The first consumer takes jobs and hangs in its sink, then dies without a word.
    let hung = accepting();
    hung.set_mode(SinkMode::Blocked);
    let a = TestPath::start(&first, hung.clone()).await;
    until(
        Duration::from_secs(20),
        "the first consumer holds all jobs",
        || async {
            pending(&mut conn(LOCAL).await, &stream, &first.group)
                .await
                .get(&first.consumer)
                == Some(&30)
        },
    )
    .await;
    a.root.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.written().is_empty());
    let second = Options {
        group: first.group.clone(),
        consumers: 1,
        claim_idle: Duration::from_secs(1),
        ..Options::new(&stream)
    };
    let b = TestPath::start(&second, accepting()).await;
    until(
        Duration::from_secs(30),
        "the jobs completed by the second",
        || async { b.written().len() >= 30 },
    )
    .await;
    assert_eq!(
        b.written().into_iter().collect::<BTreeSet<_>>(),
        (0..30).collect()
    );
    until(Duration::from_secs(10), "nothing pending", || async {
        pending(&mut conn(LOCAL).await, &stream, &first.group)
            .await
            .is_empty()
    })
    .await;
    assert!(b.probe("consumer-0").counter("claimed") >= 30);
    b.stop().await;
    hung.set_mode(SinkMode::Accept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_delivered_too_often_is_dead_lettered_with_its_count() {
    let stream = unique("limit");
    let mut o = Options::new(&stream);
    o.claim_idle = Duration::from_millis(300);
    o.max_deliveries = 3;
    let mut c = conn(LOCAL).await;
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&o.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    add_jobs(&mut c, &stream, 0..3).await;
    // A consumer that died three times on the first job: three deliveries, never acked.
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&o.group)
        .arg("crashing")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    let id = read.keys[0].ids[0].id.clone();
    for _ in 0..2 {
        let _: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg(&o.group)
            .arg("crashing")
            .arg(0)
            .arg(&id)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let p = TestPath::start(&o, accepting()).await;
    let dlq = format!("{stream}:dlq");
    until(Duration::from_secs(20), "the letter", || async {
        !entries(&mut conn(LOCAL).await, &dlq).await.is_empty()
    })
    .await;
    until(Duration::from_secs(20), "the other jobs", || async {
        p.written().len() >= 2
    })
    .await;
    let letters = entries(&mut c, &dlq).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["stage"], "source");
    assert_eq!(letters[0]["error_class"], "DeliveryLimit");
    assert_eq!(letters[0]["original_id"], id);
    assert_eq!(letters[0]["retry_count"], "3", "{:?}", letters[0]);
    assert_eq!(letters[0]["data"], "{\"n\":0}");
    assert_eq!(
        p.written().into_iter().collect::<BTreeSet<_>>(),
        [1, 2].into()
    );
    until(Duration::from_secs(10), "nothing pending", || async {
        pending(&mut conn(LOCAL).await, &stream, &o.group)
            .await
            .is_empty()
    })
    .await;
    p.stop().await;
}

/// A Redis server of the test's own that keeps its data in an append-only file across
/// restarts.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let mut r = OwnRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.up();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server without a chance to save anything more.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_loses_nothing() {
    let mut server = OwnRedis::start();
    let url = server.url();
    let stream = unique("restart");
    let mut o = Options::new(&stream);
    o.url = url.clone();
    let mut c = conn(&url).await;
    add_jobs(&mut c, &stream, 0..300).await;
    // A slow sink, so the restart falls in the middle of the run.
    let sink = accepting();
    sink.set_mode(SinkMode::Trickle {
        steps: 1,
        step: Duration::from_millis(40),
    });
    let p = TestPath::start(&o, sink.clone()).await;
    until(Duration::from_secs(20), "some jobs written", || async {
        p.written().len() >= 50
    })
    .await;
    server.kill();
    let consumer = p.probe("consumer-0");
    until(Duration::from_secs(20), "the outage reported", || async {
        consumer.unhealthy().is_some()
    })
    .await;
    assert!(
        consumer
            .unhealthy()
            .unwrap()
            .contains(&format!("127.0.0.1:{}", server.port)),
        "{:?}",
        consumer.unhealthy()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.up();
    // The port opens before the append-only file is loaded: wait until Redis answers.
    until(Duration::from_secs(20), "redis loaded", || async {
        match redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
        {
            Ok(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
            Err(_) => false,
        }
    })
    .await;
    let mut c = conn(&url).await;
    add_jobs(&mut c, &stream, 300..400).await;
    sink.set_mode(SinkMode::Accept);
    until(Duration::from_secs(60), "every job written", || async {
        p.written().into_iter().collect::<BTreeSet<_>>().len() >= 400
    })
    .await;
    assert_eq!(
        p.written().into_iter().collect::<BTreeSet<_>>(),
        (0..400).collect()
    );
    until(Duration::from_secs(20), "nothing pending", || async {
        pending(&mut conn(&url).await, &stream, &o.group)
            .await
            .is_empty()
    })
    .await;
    until(Duration::from_secs(10), "healthy again", || async {
        consumer.unhealthy().is_none()
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_takes_up_its_own_pending_entries_without_counting_them() {
    let stream = unique("own");
    let mut o = Options::new(&stream);
    o.consumers = 1;
    // Far longer than the test: only the consumer's own name can bring these back.
    o.claim_idle = Duration::from_secs(600);
    let mut c = conn(LOCAL).await;
    add_jobs(&mut c, &stream, 0..15).await;
    let hung = accepting();
    hung.set_mode(SinkMode::Blocked);
    let a = TestPath::start(&o, hung.clone()).await;
    until(Duration::from_secs(20), "the jobs held", || async {
        pending(&mut conn(LOCAL).await, &stream, &o.group)
            .await
            .get(&o.consumer)
            == Some(&15)
    })
    .await;
    a.root.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The same worker name again, as a restarted process with WORKER_NAME set.
    let b = TestPath::start(&o, accepting()).await;
    until(Duration::from_secs(20), "the jobs completed", || async {
        b.written().len() >= 15
    })
    .await;
    assert_eq!(
        b.written().into_iter().collect::<BTreeSet<_>>(),
        (0..15).collect()
    );
    assert_eq!(b.probe("consumer-0").counter("recovered"), 15);
    assert_eq!(b.probe("consumer-0").counter("claimed"), 0);
    until(Duration::from_secs(10), "nothing pending", || async {
        pending(&mut conn(LOCAL).await, &stream, &o.group)
            .await
            .is_empty()
    })
    .await;
    b.stop().await;
    hung.set_mode(SinkMode::Accept);
}

/// Ids of a stream's entries, oldest first.
async fn ids(c: &mut MultiplexedConnection, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(c)
        .await
        .unwrap();
    reply.ids.into_iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn trimming_never_drops_a_pending_or_undelivered_entry() {
    use actord::sources::redis::trim::trim_consumed;
    let stream = unique("trim");
    let mut c = conn(LOCAL).await;
    add_jobs(&mut c, &stream, 0..10).await;
    let all = ids(&mut c, &stream).await;
    for g in ["g1", "g2"] {
        let () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(g)
            .arg("0")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // Nothing was delivered to g2 yet: nothing may go.
    assert_eq!(trim_consumed(&mut c, &stream).await.unwrap(), 0);

    // g1 read entries 0..6 and acknowledged 0, 1 and 3: 2, 4 and 5 are pending, 6..10 waiting.
    // g2 read and acknowledged 0..8.
    let read = |g: &'static str, n: usize| {
        let stream = stream.clone();
        async move {
            let _: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(g)
                .arg("c")
                .arg("COUNT")
                .arg(n)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut conn(LOCAL).await)
                .await
                .unwrap();
        }
    };
    let ack = |g: &'static str, which: Vec<usize>| {
        let (stream, all) = (stream.clone(), all.clone());
        async move {
            let ids: Vec<&String> = which.iter().map(|i| &all[*i]).collect();
            let _: u64 = redis::cmd("XACK")
                .arg(&stream)
                .arg(g)
                .arg(ids)
                .query_async(&mut conn(LOCAL).await)
                .await
                .unwrap();
        }
    };
    read("g1", 6).await;
    ack("g1", vec![0, 1, 3]).await;
    read("g2", 8).await;
    ack("g2", (0..8).collect()).await;
    // The floor is g1's oldest pending entry, 2.
    assert_eq!(trim_consumed(&mut c, &stream).await.unwrap(), 2);
    assert_eq!(ids(&mut c, &stream).await, all[2..].to_vec());

    // g1 acknowledges its pending entries: its floor becomes the entry after its last
    // delivered one (6), below g2's (8).
    ack("g1", vec![2, 4, 5]).await;
    assert_eq!(trim_consumed(&mut c, &stream).await.unwrap(), 4);
    assert_eq!(ids(&mut c, &stream).await, all[6..].to_vec());
    let pend = pending(&mut c, &stream, "g1").await;
    assert!(pend.is_empty(), "{pend:?}");

    // Both read everything and g2 acknowledges all but the last: that one stays.
    read("g1", 10).await;
    ack("g1", (6..10).collect()).await;
    read("g2", 10).await;
    ack("g2", vec![8]).await;
    assert_eq!(trim_consumed(&mut c, &stream).await.unwrap(), 3);
    assert_eq!(ids(&mut c, &stream).await, all[9..].to_vec());
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// The consumer holding a pending entry, if any (none while the path has not created its
/// group yet).
async fn owner(
    c: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    id: &str,
) -> Option<String> {
    let reply: redis::streams::StreamPendingCountReply = match redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(id)
        .arg(id)
        .arg(1)
        .query_async(c)
        .await
    {
        Ok(reply) => reply,
        Err(e) if e.code() == Some("NOGROUP") => return None,
        Err(e) => panic!("XPENDING {stream} {group}: {e}"),
    };
    reply.ids.into_iter().next().map(|p| p.consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_taken_over_while_its_holder_was_cut_off_stays_with_the_new_owner() {
    let stream = unique("taken");
    let mut o = Options::new(&stream);
    o.consumers = 1;
    o.lanes = 1;
    // Held entries are touched every 500 ms.
    o.claim_idle = Duration::from_millis(1500);
    let sink = accepting();
    sink.set_mode(SinkMode::Blocked);
    let p = TestPath::start(&o, sink).await;
    let mut c = conn(LOCAL).await;
    add_jobs(&mut c, &stream, 0..1).await;
    let id = ids(&mut c, &stream).await.remove(0);
    until(Duration::from_secs(10), "the job in work", || async {
        owner(&mut conn(LOCAL).await, &stream, &o.group, &id).await == Some(o.consumer.clone())
    })
    .await;
    // Another consumer takes the entry over, as its XAUTOCLAIM does once the holder could not
    // reach Redis for `claim_idle`, and keeps it as a live consumer does (touching it while it
    // is its own).
    let () = redis::cmd("XCLAIM")
        .arg(&stream)
        .arg(&o.group)
        .arg("intruder")
        .arg(0)
        .arg(&id)
        .arg("JUSTID")
        .query_async::<Vec<String>>(&mut c)
        .await
        .map(|_| ())
        .unwrap();
    let keep = {
        let (stream, group, id) = (stream.clone(), o.group.clone(), id.clone());
        tokio::spawn(async move {
            let mut c = conn(LOCAL).await;
            while owner(&mut c, &stream, &group, &id).await.as_deref() == Some("intruder") {
                let _: Vec<String> = redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg(&group)
                    .arg("intruder")
                    .arg(0)
                    .arg(&id)
                    .arg("JUSTID")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // The old holder's touch finds the entry gone to another and lets it be.
    until(
        Duration::from_secs(10),
        "the old holder to let go",
        || async { p.probe("consumer-0").counter("lost") == 1 },
    )
    .await;
    assert_eq!(
        owner(&mut c, &stream, &o.group, &id).await.as_deref(),
        Some("intruder")
    );
    // Its write ends, and a later job goes through the same lane: the old holder acknowledged
    // the later job only, and the taken-over entry is still the new owner's.
    p.sink.set_mode(SinkMode::Accept);
    add_jobs(&mut c, &stream, 1..2).await;
    until(
        Duration::from_secs(10),
        "the later job acknowledged",
        || async { p.written().contains(&1) && p.probe("consumer-0").counter("acked") == 1 },
    )
    .await;
    assert_eq!(
        owner(&mut c, &stream, &o.group, &id).await.as_deref(),
        Some("intruder")
    );
    assert!(
        !keep.is_finished(),
        "the new owner kept its entry throughout"
    );
    keep.abort();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_given_one_worker_name_lease_names_of_their_own_and_keep_the_delivery_limit() {
    let stream = unique("named");
    let base = unique("worker");
    let mut o = Options::new(&stream);
    o.consumer = base.clone();
    o.consumers = 1;
    o.lease_name = true;
    o.max_deliveries = 1;
    let mut c = conn(LOCAL).await;
    // A process that died holding two jobs under `<base>-0` (its lease expired long ago).
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&o.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    add_jobs(&mut c, &stream, 0..2).await;
    let _: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&o.group)
        .arg(format!("{base}-0"))
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    // Two processes given the same name.
    let o2 = Options {
        group: o.group.clone(),
        consumer: base.clone(),
        consumers: 1,
        lease_name: true,
        max_deliveries: 1,
        ..Options::new(&stream)
    };
    let (a, b) = (
        TestPath::start(&o, accepting()).await,
        TestPath::start(&o2, accepting()).await,
    );
    add_jobs(&mut c, &stream, 2..200).await;
    until(Duration::from_secs(30), "198 jobs written", || async {
        a.written().len() + b.written().len() >= 198
    })
    .await;
    until(
        Duration::from_secs(30),
        "the dead process's jobs dead-lettered",
        || async {
            entries(&mut conn(LOCAL).await, &format!("{stream}:dlq"))
                .await
                .len()
                == 2
        },
    )
    .await;
    let mut all = a.written();
    all.extend(b.written());
    assert_eq!(all.len(), 198, "an entry went to both");
    assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), (2..200).collect());
    // The dead process's jobs were taken over as deliveries, so the limit held: each had been
    // delivered once already.
    for letter in entries(&mut c, &format!("{stream}:dlq")).await {
        assert_eq!(letter["error_class"], "DeliveryLimit", "{letter:?}");
    }
    let consumers: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg(&o.group)
        .query_async(&mut c)
        .await
        .unwrap();
    let names: BTreeSet<String> = consumers.consumers.into_iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [format!("{base}-0"), format!("{base}-1")]
            .into_iter()
            .collect()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_path_finishes_what_it_holds_reads_nothing_new_and_loses_nothing() {
    let stream = unique("jobs");
    let o = Options::new(&stream);
    let mut c = conn(LOCAL).await;
    let p = TestPath::start(&o, accepting()).await;
    add_jobs(&mut c, &stream, 0..300).await;
    let top = ActorPath::parse("/test").unwrap();
    assert!(p.registry.set_paused(&top, true));
    // A read already blocked when the pause came (at most the 300 ms block) may still bring
    // entries: past it, the consumers have seen the pause.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // What was handed out before the pause is written and acknowledged.
    until(Duration::from_secs(30), "nothing pending", || async {
        p.probe("consumer-0").counter("in_flight") == 0
            && p.probe("consumer-1").counter("in_flight") == 0
            && pending(&mut conn(LOCAL).await, &stream, &o.group)
                .await
                .is_empty()
    })
    .await;
    let before = p.written().len();
    add_jobs(&mut c, &stream, 300..400).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(p.written().len(), before, "read while paused");
    assert!(p.probe("consumer-0").is_paused());
    assert!(p.registry.set_paused(&top, false));
    until(Duration::from_secs(30), "400 jobs written", || async {
        p.written().len() >= 400
    })
    .await;
    let written = p.written();
    assert_eq!(written.len(), 400, "duplicates without any failure");
    assert_eq!(
        written.into_iter().collect::<BTreeSet<_>>(),
        (0..400).collect()
    );
    until(
        Duration::from_secs(10),
        "every entry acknowledged",
        || async {
            pending(&mut conn(LOCAL).await, &stream, &o.group)
                .await
                .is_empty()
        },
    )
    .await;
    p.stop().await;
}
