//! The delivery core against a Kafka-protocol broker: librdkafka's mock cluster in-process,
//! tansu in its own process where time look-ups matter.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actord::config::{Config, Sources, Supervision};
use actord::sources::kafka::embedded::EmbeddedKafka;
use actord::sources::kafka::path::KafkaPath;
use actord::sources::kafka::{KafkaConnection, SourceSettings, StartFrom};
use actord_actors::buffer::BufferLimits;
use actord_actors::observe::{ActorKind, Registry};
use actord_actors::record::{Poison, SourceRecord};
use actord_actors::testkit::{RecordingSink, SinkControl, SinkMode};
use actord_actors::writer::RetryPolicy;
use actord_actors::{
    ActorPath, Backoff, Supervisor, SupervisorArgs, SupervisorMsg, SupervisorSpec, Supervisors,
};
use ractor::{Actor, ActorRef};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use crate::support::{unique, until, Tansu};

#[derive(Clone, Debug, PartialEq)]
pub struct Rec(pub i64);

fn decode(r: &SourceRecord) -> Result<Rec, Poison> {
    let v: Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default())
        .map_err(|e| Poison::new("JsonError", e.to_string()))?;
    v.get("n")
        .and_then(Value::as_i64)
        .map(Rec)
        .ok_or_else(|| Poison::new("MissingField", "field `n` is missing"))
}

/// Produces `{"n": i}` for each i, keyed so they spread over partitions; returns when acked.
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    range: std::ops::Range<i64>,
    timestamp_ms: Option<i64>,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut waits = Vec::new();
    for i in range {
        let payload = format!("{{\"n\":{i}}}");
        let key = i.to_string();
        let mut rec = FutureRecord::to(topic).payload(&payload).key(&key);
        if let Some(ts) = timestamp_ms {
            rec = rec.timestamp(ts);
        }
        waits.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
    }
    for w in waits {
        w.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

pub async fn produce_raw(bootstrap: &str, topic: &str, payloads: &[&str]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for p in payloads {
        producer
            .send(
                FutureRecord::<str, str>::to(topic).payload(p).partition(0),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Committed offsets of `group` on `topic`, by partition.
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    watermarks(bootstrap, topic, partitions)
        .into_iter()
        .map(|(p, (_, end))| (p, end))
        .filter(|(_, end)| *end > 0)
        .collect()
}

/// Each partition's (log start, log end) offsets.
pub fn watermarks(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, (i64, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            (
                p,
                c.fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap(),
            )
        })
        .collect()
}

/// Asserts the broker still holds all of `n` records produced to `topic` (none removed by its
/// retention, as the embedded broker does past 100,000 records or 5 MiB in a partition).
pub fn assert_holds_all(bootstrap: &str, topic: &str, partitions: i32, n: i64) {
    let marks = watermarks(bootstrap, topic, partitions);
    let (start, end): (i64, i64) = marks
        .values()
        .fold((0, 0), |(s, e), (lo, hi)| (s + lo, e + hi));
    assert_eq!(
        (start, end),
        (0, n),
        "the broker does not hold every record of {topic}: {marks:?}"
    );
}

type Read = Vec<(Value, Vec<(String, String)>)>;

/// Reads a topic from the beginning until `done` holds for what was read (at most 30 s).
pub fn read_until(bootstrap: &str, topic: &str, done: impl Fn(&Read) -> bool) -> Read {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done(&out) && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let body: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((body, headers));
        }
    }
    out
}

/// A consumer path over a recording sink, running under its own root supervisor.
pub struct TestPath {
    pub sink: SinkControl<Rec>,
    pub registry: Registry,
    pub supervisors: Supervisors,
    pub root: ActorRef<SupervisorMsg>,
    pub group: String,
}

pub struct PathOptions {
    pub topic: String,
    pub group: String,
    pub lanes: usize,
    pub batch: usize,
    pub max_age: Duration,
    pub in_flight: usize,
    pub owns_dlq: bool,
    pub start: StartFrom,
}

impl PathOptions {
    pub fn new(topic: &str) -> Self {
        PathOptions {
            topic: topic.to_owned(),
            group: unique("group"),
            lanes: 2,
            batch: 100,
            max_age: Duration::from_millis(200),
            in_flight: 10_000,
            owns_dlq: true,
            start: StartFrom::Committed { earliest: true },
        }
    }
}

fn supervision() -> Supervision {
    let config: Config = actord::config::load(&Sources {
        config_path: Some(write_config()),
        ..Sources::default()
    })
    .unwrap();
    config.supervision
}

fn write_config() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("supervision.toml");
    std::fs::write(
        &path,
        "[supervision]\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\nmax_restarts = 50\n",
    )
    .unwrap();
    path
}

impl TestPath {
    pub async fn start(bootstrap: &str, o: PathOptions) -> TestPath {
        Self::start_with(bootstrap, o, SinkControl::new(|r: &Rec| r.0 < 0)).await
    }

    pub async fn start_with(bootstrap: &str, o: PathOptions, sink: SinkControl<Rec>) -> TestPath {
        let mut source = SourceSettings::new(vec![o.topic.clone()], o.group.clone());
        source.start = o.start;
        source.max_in_flight_records = o.in_flight;
        source.session_timeout = Duration::from_secs(6);
        source.commit_interval = Duration::from_millis(200);
        let path = KafkaPath::<Rec, RecordingSink<Rec>> {
            id: "path".into(),
            connection: KafkaConnection::new(bootstrap),
            source,
            decode: Arc::new(decode),
            sink: sink.factory(),
            lanes: o.lanes,
            buffer: BufferLimits {
                max_records: o.batch,
                max_bytes: 64 << 20,
                max_age: o.max_age,
            },
            retry: RetryPolicy {
                backoff: Backoff {
                    initial: Duration::from_millis(50),
                    max: Duration::from_millis(500),
                    factor: 2.0,
                },
                max_attempts: 5,
            },
            dlq_suffix: o.owns_dlq.then(|| "-dlq".to_owned()),
        };
        let registry = Registry::new();
        let supervisors = Supervisors::default();
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
                supervisors: supervisors.clone(),
            },
        )
        .await
        .unwrap();
        TestPath {
            sink,
            registry,
            supervisors,
            root,
            group: o.group,
        }
    }

    pub fn written(&self) -> Vec<i64> {
        self.sink.written().iter().map(|(_, r)| r.0).collect()
    }

    pub fn written_set(&self) -> BTreeSet<i64> {
        self.written().into_iter().collect()
    }

    pub fn probe(&self, rel: &str) -> actord_actors::Probe {
        let path = ActorPath::parse(&format!("/test/path/{rel}")).unwrap();
        let kind = if rel.is_empty() {
            ActorKind::Supervisor
        } else {
            ActorKind::Worker
        };
        self.registry.probe(&path, kind)
    }

    pub async fn stop(self) {
        self.root
            .stop_and_wait(None, Some(Duration::from_secs(30)))
            .await
            .unwrap();
    }
}

pub fn embedded(topic: &str, partitions: i32) -> EmbeddedKafka {
    let k = EmbeddedKafka::start().unwrap();
    k.create_topic(topic, partitions).unwrap();
    k.create_topic(&format!("{topic}-dlq"), 1).unwrap();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_written_and_committed() {
    let k = embedded("orders", 4);
    produce(k.bootstrap(), "orders", 0..3000, None).await;
    let p = TestPath::start(k.bootstrap(), PathOptions::new("orders")).await;
    until(Duration::from_secs(60), "3000 records written", || async {
        p.written().len() >= 3000
    })
    .await;
    assert_eq!(p.written_set(), (0..3000).collect());
    assert_eq!(p.written().len(), 3000, "duplicates without any failure");
    let end = end_offsets(k.bootstrap(), "orders", 4);
    until(Duration::from_secs(20), "offsets committed", || async {
        committed(k.bootstrap(), &p.group, "orders", 4) == end
    })
    .await;
    // Records of one partition were written in offset order.
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (origin, _) in p.sink.written() {
        let prev = last.insert(origin.partition, origin.offset);
        assert!(
            prev.is_none_or(|prev| prev < origin.offset),
            "partition {} out of order",
            origin.partition
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_path_restarts_mid_batch() {
    let k = embedded("ticks", 3);
    produce(k.bootstrap(), "ticks", 0..2000, None).await;
    let sink = SinkControl::new(|r: &Rec| r.0 < 0);
    sink.set_mode(SinkMode::Blocked);
    let p = TestPath::start_with(k.bootstrap(), PathOptions::new("ticks"), sink).await;
    until(Duration::from_secs(30), "records in flight", || async {
        p.probe("consumer-0").counter("records") > 0
    })
    .await;
    // Fail the writer of lane 0 while it holds a batch: the path restarts from committed offsets.
    let sup = p
        .supervisors
        .get(&ActorPath::parse("/test/path").unwrap())
        .unwrap();
    ractor::call!(sup, SupervisorMsg::FailChild, "writer-0".to_owned())
        .unwrap()
        .unwrap();
    until(Duration::from_secs(20), "the path to restart", || async {
        p.probe("consumer-0").restarts() >= 1
    })
    .await;
    p.sink.set_mode(SinkMode::Accept);
    until(Duration::from_secs(60), "every record written", || async {
        p.written_set().len() == 2000
    })
    .await;
    let end = end_offsets(k.bootstrap(), "ticks", 3);
    until(Duration::from_secs(20), "offsets committed", || async {
        committed(k.bootstrap(), &p.group, "ticks", 3) == end
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_split_partitions_and_a_leave_loses_nothing() {
    let k = embedded("jobs", 4);
    let opts = |group: &str| PathOptions {
        group: group.to_owned(),
        ..PathOptions::new("jobs")
    };
    let group = unique("shared");
    let a = TestPath::start(k.bootstrap(), opts(&group)).await;
    let b = TestPath::start(k.bootstrap(), opts(&group)).await;
    until(Duration::from_secs(30), "both members assigned", || async {
        let (pa, pb) = (
            a.probe("consumer-0").counter("partitions"),
            b.probe("consumer-0").counter("partitions"),
        );
        pa > 0 && pb > 0 && pa + pb == 4
    })
    .await;
    produce(k.bootstrap(), "jobs", 0..2000, None).await;
    until(Duration::from_secs(60), "the first 2000", || async {
        union(&a, &b).len() == 2000
    })
    .await;
    assert!(
        !a.written().is_empty() && !b.written().is_empty(),
        "the partitions were not split"
    );
    let a_partitions: BTreeSet<i32> = a.sink.written().iter().map(|(o, _)| o.partition).collect();
    let b_partitions: BTreeSet<i32> = b.sink.written().iter().map(|(o, _)| o.partition).collect();
    assert!(
        a_partitions.is_disjoint(&b_partitions),
        "{a_partitions:?} vs {b_partitions:?}"
    );
    // b leaves; a takes over its partitions from b's committed offsets.
    let b_sink = b.sink.clone();
    b.stop().await;
    produce(k.bootstrap(), "jobs", 2000..4000, None).await;
    until(
        Duration::from_secs(60),
        "all 4000 after the rebalance",
        || async {
            let all: BTreeSet<i64> = a
                .written()
                .into_iter()
                .chain(b_sink.written().iter().map(|(_, r)| r.0))
                .collect();
            all.len() == 4000
        },
    )
    .await;
    let end = end_offsets(k.bootstrap(), "jobs", 4);
    until(Duration::from_secs(20), "offsets committed", || async {
        committed(k.bootstrap(), &group, "jobs", 4) == end
    })
    .await;
    a.stop().await;
}

fn union(a: &TestPath, b: &TestPath) -> BTreeSet<i64> {
    a.written().into_iter().chain(b.written()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_holds_the_in_flight_bound_and_never_deadlocks() {
    let k = embedded("flood", 4);
    produce(k.bootstrap(), "flood", 0..6000, None).await;
    let sink = SinkControl::new(|r: &Rec| r.0 < 0);
    sink.set_mode(SinkMode::Blocked);
    let opts = PathOptions {
        in_flight: 500,
        // Below the bound, but spread over two lanes no buffer fills by size: only the forced
        // flush at the bound can move them, and the age flush is an hour away.
        batch: 400,
        max_age: Duration::from_secs(3600),
        ..PathOptions::new("flood")
    };
    let p = TestPath::start_with(k.bootstrap(), opts, sink).await;
    until(Duration::from_secs(30), "records read", || async {
        p.probe("consumer-0").counter("in_flight") > 0
    })
    .await;
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(p.probe("consumer-0").counter("in_flight"));
    }
    assert!(peak > 0, "nothing was read");
    assert!(
        peak <= 500,
        "in flight reached {peak}, above the bound of 500"
    );
    assert!(p.written().is_empty());
    p.sink.set_mode(SinkMode::Accept);
    // Reading the whole topic means the bound kept reopening: each time it was reached the
    // buffers were flushed although no batch was full and no age flush was due.
    until(Duration::from_secs(60), "the whole topic read", || async {
        p.probe("consumer-0").counter("records") == 6000
    })
    .await;
    until(
        Duration::from_secs(10),
        "all but the tail written",
        || async {
            p.written_set().len() + p.probe("consumer-0").counter("in_flight") as usize == 6000
        },
    )
    .await;
    // The tail waits for its age flush (an hour away); a graceful stop flushes it.
    let sink = p.sink.clone();
    p.stop().await;
    assert_eq!(
        sink.written()
            .iter()
            .map(|(_, r)| r.0)
            .collect::<BTreeSet<i64>>(),
        (0..6000).collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_reaches_the_dlq_with_context_and_an_outage_sends_nothing_there() {
    let k = embedded("events", 1);
    let sink = SinkControl::new(|r: &Rec| r.0 < 0);
    sink.set_mode(SinkMode::Down);
    let p = TestPath::start_with(k.bootstrap(), PathOptions::new("events"), sink).await;
    produce_raw(
        k.bootstrap(),
        "events",
        &[
            r#"{"n":1}"#,
            "not json",
            r#"{"n":2}"#,
            r#"{"other":true}"#,
            r#"{"n":-5}"#,
            r#"{"n":3}"#,
        ],
    )
    .await;
    // The sink is down for a while: retries, restarts, but nothing good goes to the DLQ.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(p.written().is_empty());
    p.sink.set_mode(SinkMode::Accept);
    until(Duration::from_secs(60), "the good records", || async {
        p.written_set() == BTreeSet::from([1, 2, 3])
    })
    .await;
    let offsets = |read: &Read| -> BTreeSet<String> {
        read.iter()
            .map(|(_, h)| {
                h.iter()
                    .find(|(k, _)| k == "__connect.errors.offset")
                    .unwrap()
                    .1
                    .clone()
            })
            .collect()
    };
    let want: BTreeSet<String> = ["1", "3", "4"].map(String::from).into();
    let dlq = read_until(k.bootstrap(), "events-dlq", |r| offsets(r) == want);
    // Every poison record is dead-lettered (at least once: a restart during the outage may
    // replay one), and no good record ever is.
    assert_eq!(offsets(&dlq), want, "{dlq:#?}");

    let (body, headers) = dlq
        .iter()
        .find(|(_, h)| h.contains(&("__connect.errors.offset".into(), "1".into())))
        .unwrap();
    let keys: BTreeSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["original_message", "error", "timestamp", "retry_count"])
    );
    assert_eq!(body["original_message"], "not json");
    assert!(
        body["error"].as_str().unwrap().starts_with("JsonError: "),
        "{body}"
    );
    assert_eq!(body["retry_count"], 0);
    let ts = body["timestamp"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
        "{ts}"
    );
    let h: BTreeMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(h["__connect.errors.topic"], "events");
    assert_eq!(h["__connect.errors.partition"], "0");
    assert_eq!(h["__connect.errors.stage"], "VALUE_CONVERTER");
    assert_eq!(h["__connect.errors.exception.class.name"], "JsonError");
    assert!(!h["__connect.errors.exception.message"].is_empty());

    let (missing, _) = dlq
        .iter()
        .find(|(_, h)| h.contains(&("__connect.errors.offset".into(), "3".into())))
        .unwrap();
    assert_eq!(
        missing["original_message"],
        serde_json::json!({"other": true})
    );
    assert_eq!(missing["error"], "MissingField: field `n` is missing");

    let (rejected, rh) = dlq
        .iter()
        .find(|(_, h)| h.contains(&("__connect.errors.offset".into(), "4".into())))
        .unwrap();
    assert_eq!(rejected["original_message"], serde_json::json!({"n": -5}));
    assert!(rh.contains(&("__connect.errors.stage".into(), "TASK_PUT".into())));
    p.stop().await;
}

/// Writes 100 records an hour old and 50 new ones, starts a path at the boundary, checks that
/// exactly the new ones arrive, and returns how many older records the consumer skipped itself.
async fn start_at_time(bootstrap: &str, topic: &str) -> u64 {
    let old = 1_700_000_000_000;
    let new = old + 3_600_000;
    produce(bootstrap, topic, 0..100, Some(old)).await;
    produce(bootstrap, topic, 100..150, Some(new)).await;
    let opts = PathOptions {
        start: StartFrom::Timestamp(new - 1000),
        ..PathOptions::new(topic)
    };
    let p = TestPath::start(bootstrap, opts).await;
    until(Duration::from_secs(60), "the newer records", || async {
        p.written_set().len() == 50
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p.written_set(), (100..150).collect());
    let skipped = p.probe("consumer-0").counter("skipped_older");
    p.stop().await;
    skipped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_time_skips_older_records_even_where_the_broker_cannot_look_it_up() {
    // The mock cluster answers End to every time look-up: the consumer scans and filters.
    let k = embedded("temps", 2);
    assert_eq!(
        start_at_time(k.bootstrap(), "temps").await,
        100,
        "the fallback scans from the beginning"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_time_is_looked_up_on_a_broker_that_can() {
    let broker = Tansu::start();
    broker.create_topic("readings", 2);
    assert_eq!(
        start_at_time(broker.bootstrap(), "readings").await,
        0,
        "the broker positioned the consumer"
    );
}

struct FixedOffsets(BTreeMap<i32, i64>);

impl actord::sources::kafka::OffsetSource for FixedOffsets {
    fn next_offsets(&self, partitions: &[(&str, i32)]) -> Result<Vec<Option<i64>>, String> {
        Ok(partitions
            .iter()
            .map(|(_, p)| self.0.get(p).copied())
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_kept_by_the_sink_win_over_the_group_at_assignment() {
    let k = embedded("ledger", 2);
    let topic = "ledger";
    // One partition per half, so the offsets are known: 0..50 on partition 0, 50..100 on 1.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", k.bootstrap())
        .create()
        .unwrap();
    for i in 0..100i64 {
        let payload = format!("{{\"n\":{i}}}");
        producer
            .send(
                FutureRecord::<str, str>::to(topic)
                    .payload(&payload)
                    .partition((i / 50) as i32),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // The sink already holds partition 0 up to offset 30; it knows nothing of partition 1,
    // where the group's committed offset (none) and then `earliest` apply.
    let opts = PathOptions {
        start: StartFrom::Sink(Arc::new(FixedOffsets(BTreeMap::from([(0, 30)])))),
        ..PathOptions::new(topic)
    };
    let p = TestPath::start(k.bootstrap(), opts).await;
    until(
        Duration::from_secs(30),
        "the records after the sink's offsets",
        || async { p.written_set().len() == 70 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.written_set(), (30..100).collect());
    assert_eq!(
        p.written().len(),
        70,
        "nothing before the sink's offset was read"
    );
    p.stop().await;
}
