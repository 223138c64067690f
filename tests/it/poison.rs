//! Poison input through the actord binary, per transport: generated malformed messages
//! interleaved with good ones. Every malformed one reaches the DLQ with its error, every good
//! one lands exactly once. (The decoders' own property tests, 10,000 malformed inputs each,
//! are unit tests beside them.)
//!
//! `ACTORD_POISON_MESSAGES` sets how many malformed messages each run sends.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::recorder::{drop_schema, fresh_schema, recorder_config, tick, BASE};
use crate::support::{flatten, pg, tree, unique, until, wait_ready, MockBroker, Process};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (SplitMix64): a failing run is reproduced by its seed.
pub struct Rng(u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// `json` with `field` set to the raw text `raw`.
fn with_raw(json: &Value, field: &str, raw: &[u8]) -> Vec<u8> {
    let mut v = json.clone();
    v[field] = json!("@@mark@@");
    let text = serde_json::to_vec(&v).unwrap();
    let mark = b"\"@@mark@@\"";
    let at = text.windows(mark.len()).position(|w| w == mark).unwrap();
    [&text[..at], raw, &text[at + mark.len()..]].concat()
}

/// One malformed message made from the good JSON object `good` whose required fields are
/// `fields`: its kind and body (`None`: a record without a value).
/// `near_limit` makes it a large one close to the broker's limit.
pub fn malformed(
    rng: &mut Rng,
    good: &Value,
    fields: &[&str],
    near_limit: bool,
) -> (&'static str, Option<Vec<u8>>) {
    let field = fields[rng.below(fields.len())];
    let text = serde_json::to_vec(good).unwrap();
    // The embedded broker keeps 5 MiB per partition: large ones are rarer here than in the
    // decoders' own tests.
    const KINDS: [usize; 23] = [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11,
    ];
    let kind = if near_limit {
        6
    } else {
        KINDS[rng.below(KINDS.len())]
    };
    match kind {
        0 => ("truncated", Some(text[..rng.below(text.len())].to_vec())),
        1 => {
            let wrong = [json!(true), json!([1]), json!({"a": 1}), Value::Null];
            let mut v = good.clone();
            v[field] = wrong[rng.below(wrong.len())].clone();
            ("wrong type", Some(serde_json::to_vec(&v).unwrap()))
        }
        2 => {
            let mut v = good.clone();
            v.as_object_mut().unwrap().remove(field);
            ("missing field", Some(serde_json::to_vec(&v).unwrap()))
        }
        3 => {
            // Out of range of a 64-bit float, so of every number field.
            let huge = match rng.below(3) {
                0 => b"1e400".to_vec(),
                1 => b"-1e999".to_vec(),
                _ => format!("1{}", "0".repeat(400)).into_bytes(),
            };
            ("huge number", Some(with_raw(good, field, &huge)))
        }
        4 => {
            // In a field that is read, or in one that is skipped.
            let at = if rng.below(2) == 0 { field } else { "note" };
            (
                "invalid UTF-8",
                Some(with_raw(good, at, b"\"ab\xff\xfe\xc0\x80cd\"")),
            )
        }
        5 => {
            let depth = [129, 5_000, 100_000][rng.below(3)];
            let mut deep = vec![b'['; depth];
            deep.extend(std::iter::repeat_n(b']', depth));
            ("deep nesting", Some(with_raw(good, field, &deep)))
        }
        6 => {
            // Large, under the broker's message.max.bytes: a long text, and a flaw. Close to
            // the limit, its letter would not fit unless cut.
            let size = if near_limit {
                900_000 + rng.below(80_000)
            } else {
                20_000 + rng.below(100_000)
            };
            let body = match rng.below(3) {
                0 => with_raw(
                    good,
                    field,
                    format!("\"{}\\u0000\"", "A".repeat(size)).as_bytes(),
                ),
                1 => {
                    let mut v = good.clone();
                    v.as_object_mut().unwrap().remove(field);
                    v["filler"] = json!("x".repeat(size));
                    serde_json::to_vec(&v).unwrap()
                }
                // Bytes that are no text at all.
                _ => rng.bytes(size),
            };
            ("large", Some(body))
        }
        7 => ("empty", [None, Some(Vec::new())][rng.below(2)].clone()),
        8 => {
            let n = 1 + rng.below(2048);
            ("random bytes", Some(rng.bytes(n)))
        }
        9 => {
            let shapes = [
                json!([]),
                json!(7),
                json!("text"),
                json!([good]),
                json!(good.to_string()),
            ];
            let v = &shapes[rng.below(shapes.len())];
            ("wrong shape", Some(serde_json::to_vec(v).unwrap()))
        }
        10 => ("empty", Some(b"   ".to_vec())),
        _ => {
            let mut v = good.clone();
            v[field] = json!("");
            ("rule", Some(serde_json::to_vec(&v).unwrap()))
        }
    }
}

/// A sent message: its body, and whether it is good.
struct Sent {
    body: Option<Vec<u8>>,
    kind: &'static str,
}

/// Produces every message to `topic` and returns where each landed, by (partition, offset).
async fn produce(
    bootstrap: &str,
    topic: &str,
    partitions: usize,
    messages: Vec<Sent>,
) -> BTreeMap<(i32, i64), Sent> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let mut placed = BTreeMap::new();
    let mut n = 0usize;
    for chunk in messages.chunks(500).map(|c| c.iter().collect::<Vec<_>>()) {
        let mut waits = Vec::new();
        for m in &chunk {
            // Spread evenly (the embedded broker keeps 5 MiB per partition), keyed so that
            // the letters spread as well.
            let key = format!("k{n}");
            let mut record = FutureRecord::<str, [u8]>::to(topic)
                .key(&key)
                .partition((n % partitions) as i32);
            n += 1;
            if let Some(body) = &m.body {
                record = record.payload(body);
            }
            waits.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for (w, m) in waits.into_iter().zip(chunk) {
            let d = w.await.unwrap().map_err(|(e, _)| e).unwrap();
            placed.insert(
                (d.partition, d.offset),
                Sent {
                    body: m.body.clone(),
                    kind: m.kind,
                },
            );
        }
    }
    placed
}

/// A DLQ letter: its body and its Kafka Connect headers.
struct Letter {
    body: Value,
    headers: BTreeMap<String, String>,
}

/// Reads `topic` from the beginning until `n` letters arrived or `within` passed.
fn read_letters(bootstrap: &str, topic: &str, n: usize, within: Duration) -> Vec<Letter> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + within;
    while out.len() < n && std::time::Instant::now() < deadline {
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
            out.push(Letter { body, headers });
        }
    }
    out
}

/// What the DLQ keeps of a body: the JSON when it parses, else the text (lossy).
fn as_original(body: &Option<Vec<u8>>) -> Value {
    match body {
        None => Value::Null,
        Some(b) => serde_json::from_slice(b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ticks_all_reach_the_dlq_with_their_error_and_good_ticks_land_once() {
    let bad = setting("ACTORD_POISON_MESSAGES", 2_000);
    let good = bad / 2;
    let mut rng = Rng(2026);
    let fields = [
        "symbol",
        "price",
        "volume",
        "change",
        "change_rate",
        "timestamp",
    ];
    let mut messages = Vec::new();
    let (mut g, mut b) = (0, 0);
    while g < good || b < bad {
        if b >= bad || (g < good && rng.below(3) == 0) {
            messages.push(Sent {
                body: Some(tick(g as i64, BASE).into_bytes()),
                kind: "good",
            });
            g += 1;
        } else {
            let template: Value = serde_json::from_str(&tick(1_000_000 + b as i64, BASE)).unwrap();
            let (kind, body) = malformed(&mut rng, &template, &fields, b % 500 == 250);
            messages.push(Sent { body, kind });
            b += 1;
        }
    }
    let broker = MockBroker::start(&[
        ("market.tick", 8),
        ("market.orderbook", 1),
        ("market.tick-dlq", 8),
        ("market.orderbook-dlq", 1),
    ]);
    let schema = fresh_schema();
    // Two thirds poison would open the rejection breaker, which stops the path rather than
    // empty a topic into the DLQ (see the recorder's tests); here it must all go there.
    let toml = recorder_config(&schema, 5432, "demo = false").replace(
        "refresh_interval = \"1s\"",
        "refresh_interval = \"1s\"\nrejection_share = 1.0",
    );
    let p = Process::start(
        &toml,
        &[],
        &[
            ("KAFKA_BROKERS", broker.bootstrap()),
            ("S3_WRITE_ENABLED", "false"),
        ],
    );
    wait_ready(&p.base).await;
    let started = std::time::Instant::now();
    let placed = produce(broker.bootstrap(), "market.tick", 8, messages).await;
    let (bootstrap, n) = (broker.bootstrap().to_owned(), bad);
    let letters = tokio::task::spawn_blocking(move || {
        read_letters(&bootstrap, "market.tick-dlq", n, Duration::from_secs(120))
    })
    .await
    .unwrap();

    // Every malformed message once in the DLQ, with its error and its original.
    let mut seen = BTreeSet::new();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &letters {
        let at = (
            l.headers["__connect.errors.partition"]
                .parse::<i32>()
                .unwrap(),
            l.headers["__connect.errors.offset"].parse::<i64>().unwrap(),
        );
        let sent = placed
            .get(&at)
            .unwrap_or_else(|| panic!("a letter for nothing sent at {at:?}"));
        assert_ne!(sent.kind, "good", "a good tick dead-lettered: {}", l.body);
        let error = l.body["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{}", l.body);
        assert!(
            !l.headers["__connect.errors.exception.class.name"].is_empty(),
            "{:?}",
            l.headers
        );
        if l.body.get("original_truncated").is_none() {
            assert_eq!(
                l.body["original_message"],
                as_original(&sent.body),
                "{}",
                sent.kind
            );
        }
        if seen.insert(at) {
            *by_kind.entry(sent.kind).or_default() += 1;
        }
    }
    let missing: Vec<_> = placed
        .iter()
        .filter(|(at, s)| s.kind != "good" && !seen.contains(at))
        .map(|(at, s)| (*at, s.kind, s.body.as_ref().map(Vec::len)))
        .take(20)
        .collect();
    if !missing.is_empty() {
        let tail: Vec<String> = p.log().lines().rev().take(30).map(str::to_owned).collect();
        let actors: Vec<String> = flatten(&tree(&p.base).await)
            .iter()
            .map(|a| {
                format!(
                    "{} {} restarts={} counters={} unhealthy={} last_error={}",
                    a["path"],
                    a["status"],
                    a["restarts"],
                    a["counters"],
                    a["unhealthy"],
                    a["last_error"]
                )
            })
            .collect();
        panic!(
            "{} letters; not in the DLQ: {missing:?}\n{tail:#?}\n{actors:#?}",
            letters.len()
        );
    }
    assert_eq!(seen.len(), bad);

    // Every good tick exactly once in PostgreSQL.
    let db = pg().await;
    let q = format!("SELECT count(*), count(DISTINCT volume) FROM \"{schema}\".tick_data");
    until(Duration::from_secs(60), "every good tick", || async {
        db.query_one(&q, &[])
            .await
            .map(|r| r.get::<_, i64>(1))
            .unwrap_or(0)
            >= good as i64
    })
    .await;
    let elapsed = started.elapsed();
    let row = db.query_one(&q, &[]).await.unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (good as i64, good as i64)
    );
    let restarts: u64 = flatten(&tree(&p.base).await)
        .iter()
        .filter(|a| {
            a["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/recorder"))
        })
        .map(|a| a["restarts"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(restarts, 0, "poison restarts nothing");
    eprintln!(
        "poison run (recorder): {bad} malformed {by_kind:?} and {good} good ticks; every \
         malformed one in market.tick-dlq ({} letters), every good one once in PostgreSQL, \
         after {:.1}s",
        letters.len(),
        elapsed.as_secs_f64()
    );
    drop(p);
    drop_schema(&schema).await;
}

/// The adaptive-card user-job stream (`adaptive_card_queue`, the job in the field `data`) on a
/// Redis of the test's own: malformed entries among good jobs of a finished run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stream_jobs_all_reach_the_stream_dlq_and_good_jobs_land_once() {
    // Poison stays a minority here: the stage's sink stops at half of its last 1,000 records
    // rejected (its rejection breaker) rather than empty the stream into the DLQ.
    let bad = setting("ACTORD_POISON_MESSAGES", 2_000) / 4;
    let good = bad * 2;
    let redis = crate::secrets::RedisWithPassword::start("poison-pw");
    let url = format!("redis://:poison-pw@127.0.0.1:{}/0", redis.port);
    let (users, results) = (
        unique("pz_users").replace('-', "_"),
        unique("pz_results").replace('-', "_"),
    );
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE {users} (user_id text PRIMARY KEY, sales_org text NOT NULL); \
         INSERT INTO {users} VALUES ('u-1000-0', '1000')"
    ))
    .await
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let toml = format!(
        "[runtime]\nenable = [\"adaptive-card\"]\ncool_down = \"1s\"\n\
         [pipelines.adaptive-card]\nredis_url = \"{url}\"\nt2a_standin = true\n\
         sales_orgs = [\"1000\"]\nusers_table = \"{users}\"\nresults_table = \"{results}\"\n\
         output = \"{}\"\nretry_backoff = \"50ms\"\n\
         [pipelines.adaptive-card.t2a]\nurl = \"standin\"\n\
         [pipelines.adaptive-card.db]\nhost = \"127.0.0.1\"\nname = \"postgres\"\n\
         [pipelines.adaptive-card.schedule]\ncron = \"0 0 1 1 *\"\nrun_on_start = false\n",
        out.path().display()
    );
    let p = Process::start(&toml, &[], &[]);
    wait_ready(&p.base).await;
    // A run, so that the good jobs have merged rows to read.
    let (status, body) =
        crate::support::post(&p.base, "/api/pipelines/adaptive-card/run", None).await;
    assert_eq!(status, 200, "{body}");
    let q = format!("SELECT max(run_id), count(*) FROM {results}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let run_id: i64 = loop {
        if let Ok(r) = db.query_one(&q, &[]).await {
            if r.get::<_, i64>(1) > 0 {
                break r.get(0);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cards of the run\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    let mut rng = Rng(22);
    let template = json!({"run_id": run_id, "user_id": "x", "sales_org": "1000"});
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut sent_bad = BTreeMap::new();
    let (mut g, mut b) = (0, 0);
    while g < good || b < bad {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("adaptive_card_queue").arg("*");
        let kind = if b >= bad || (g < good && rng.below(3) != 0) {
            let job = json!({"run_id": run_id, "user_id": format!("g-{g}"), "sales_org": "1000"});
            cmd.arg("data").arg(job.to_string());
            g += 1;
            "good"
        } else {
            // Only run_id: any user id and sales org are a job's own business.
            let (kind, body) = malformed(&mut rng, &template, &["run_id"], false);
            match body {
                Some(body) => cmd.arg("data").arg(body),
                None => cmd.arg("note").arg("no data field"),
            };
            b += 1;
            kind
        };
        let id: String = cmd.query_async(&mut c).await.unwrap();
        if kind != "good" {
            sent_bad.insert(id, kind);
        }
    }

    let started = std::time::Instant::now();
    let cards =
        format!("SELECT count(DISTINCT user_id), count(*) FROM {results} WHERE user_id LIKE 'g-%'");
    let letters = || async {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("adaptive_card_queue:dlq")
            .arg("-")
            .arg("+")
            .query_async(&mut c.clone())
            .await
            .unwrap();
        reply
            .ids
            .into_iter()
            .map(|e| {
                let field = |k: &str| {
                    e.map
                        .get(k)
                        .map(|v| redis::from_redis_value_ref::<Vec<u8>>(v).unwrap())
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_default()
                };
                (field("original_id"), field("error"))
            })
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = db.query_one(&cards, &[]).await.unwrap();
        let landed: i64 = row.get(0);
        let got = letters().await;
        if landed >= good as i64 && got.len() >= bad {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{landed} of {good} good jobs, {} of {bad} letters\n{}",
            got.len(),
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let got = letters().await;
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let ids: BTreeSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    for (id, error) in &got {
        let kind = sent_bad
            .get(id)
            .unwrap_or_else(|| panic!("a letter for {id:?}, no malformed entry: {error}"));
        assert!(!error.is_empty(), "{id} ({kind}) without an error");
        *by_kind.entry(kind).or_default() += 1;
    }
    assert_eq!(ids.len(), bad, "every malformed entry has a letter");
    assert_eq!(got.len(), bad, "and one only");
    let row = db.query_one(&cards, &[]).await.unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (good as i64, 2 * good as i64),
        "two cards (one per scenario) for each good job"
    );
    eprintln!(
        "poison run (adaptive-card stream): {bad} malformed {by_kind:?} and {good} good jobs; every \
         malformed one in adaptive_card_queue:dlq with its error, every good one's cards once, \
         after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    drop(p);
    let _ = db
        .batch_execute(&format!("DROP TABLE IF EXISTS {users}, {results}"))
        .await;
}
