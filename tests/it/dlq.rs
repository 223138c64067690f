//! The dead-letter producer against a real Kafka-protocol broker (tansu), whose DLQ topics do
//! not exist and are not created by the broker on first use.

use std::time::Duration;

use crate::kafka::{end_offsets, produce_raw, read_until};
use crate::support::{actor, get, tree, unique, until, wait_ready, Process, Tansu};

#[tokio::test]
async fn a_missing_dlq_topic_is_created_and_each_letter_written_once() {
    let tansu = Tansu::start();
    let topic = unique("beats");
    tansu.create_topic(&topic, 1);
    let dlq = format!("{topic}-dlq");
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\n[runtime]\nenable = [\"heartbeat\"]\n[pipelines.heartbeat]\ninterval = \"200ms\"\ntopic = \"{topic}\"\ngroup = \"{}\"\n",
        tansu.bootstrap(),
        unique("group")
    );
    let p = Process::start(&toml, &[], &[]);
    wait_ready(&p.base).await;
    // Beats flow before any poison arrives.
    until(Duration::from_secs(60), "beats read back", || async {
        actor(&tree(&p.base).await, "/heartbeat/beats/writer-0")["counters"]["records"].as_u64()
            > Some(0)
    })
    .await;
    produce_raw(
        tansu.bootstrap(),
        &topic,
        &["not json 0", "not json 1", "not json 2"],
    )
    .await;
    let bootstrap = tansu.bootstrap().to_owned();
    let dlq_topic = dlq.clone();
    let letters =
        tokio::task::spawn_blocking(move || read_until(&bootstrap, &dlq_topic, |r| r.len() >= 3))
            .await
            .unwrap();
    let originals: Vec<String> = letters
        .iter()
        .map(|(body, _)| body["original_message"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        originals,
        ["not json 0", "not json 1", "not json 2"],
        "log:\n{}",
        p.log()
    );
    assert!(p.log().contains("dead-letter topic created"), "{}", p.log());
    // Beats keep flowing, and nothing is written twice.
    let beats = actor(&tree(&p.base).await, "/heartbeat/beats/writer-0")["counters"]["records"]
        .as_u64()
        .unwrap();
    until(Duration::from_secs(30), "more beats", || async {
        actor(&tree(&p.base).await, "/heartbeat/beats/writer-0")["counters"]["records"].as_u64()
            > Some(beats + 5)
    })
    .await;
    let (bootstrap, dlq_topic) = (tansu.bootstrap().to_owned(), dlq.clone());
    let ends = tokio::task::spawn_blocking(move || end_offsets(&bootstrap, &dlq_topic, 1))
        .await
        .unwrap();
    assert_eq!(ends.values().sum::<i64>(), 3, "{ends:?}");
    let t = tree(&p.base).await;
    assert_eq!(actor(&t, "/heartbeat/beats/dlq")["counters"]["records"], 3);
    assert_eq!(actor(&t, "/heartbeat/beats/dlq")["restarts"], 0);
    assert_eq!(get(&p.base, "/ready").await.0, 200);
}

/// A DLQ topic whose own `max.message.bytes` is below the producer's: large poison records'
/// letters are cut to fit the topic, not the producer, and a burst of them is not refused as one
/// batch larger than the topic takes (the broker checks the whole batch).
#[tokio::test]
async fn a_letter_fits_the_dlq_topics_own_message_size() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;

    let tansu = Tansu::start();
    let topic = unique("beats");
    tansu.create_topic(&topic, 1);
    let dlq = format!("{topic}-dlq");
    let limit = 100_000usize;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .create()
        .unwrap();
    let limit_text = limit.to_string();
    let created = admin
        .create_topics(
            [&NewTopic::new(&dlq, 1, TopicReplication::Fixed(1))
                .set("max.message.bytes", &limit_text)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\n[runtime]\nenable = [\"heartbeat\"]\n[pipelines.heartbeat]\ninterval = \"200ms\"\ntopic = \"{topic}\"\ngroup = \"{}\"\n",
        tansu.bootstrap(),
        unique("group")
    );
    let p = Process::start(&toml, &[], &[]);
    wait_ready(&p.base).await;
    // 300 KB each: under the producer's 1 MB, three times the topic's limit; letters that do
    // not compress, so that two of them in one batch would be over the limit.
    let large: Vec<String> = (0..4u64)
        .map(|i| format!("not json {}", noise(i, 300_000)))
        .collect();
    let refs: Vec<&str> = large.iter().map(String::as_str).collect();
    produce_raw(tansu.bootstrap(), &topic, &refs).await;
    let bootstrap = tansu.bootstrap().to_owned();
    let dlq_topic = dlq.clone();
    let letters =
        tokio::task::spawn_blocking(move || read_until(&bootstrap, &dlq_topic, |r| r.len() >= 4))
            .await
            .unwrap();
    assert_eq!(letters.len(), 4, "log:\n{}", p.log());
    for ((body, headers), large) in letters.iter().zip(&large) {
        let size = serde_json::to_vec(body).unwrap().len()
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        assert!(
            size <= limit,
            "a letter of {size} bytes, the topic takes {limit}"
        );
        assert_eq!(body["original_truncated"], true);
        assert_eq!(body["original_bytes"], large.len());
        let kept = body["original_message"].as_str().unwrap();
        assert!(
            large.starts_with(kept) && kept.len() > limit / 2,
            "{}",
            kept.len()
        );
    }
    assert!(
        p.log()
            .contains("dead letters sized by the topic's max.message.bytes"),
        "{}",
        p.log()
    );
    let t = tree(&p.base).await;
    assert_eq!(
        actor(&t, "/heartbeat/beats/dlq")["restarts"],
        0,
        "log:\n{}",
        p.log()
    );
}

/// `len` letters and digits that lz4 cannot shrink, the same for the same `seed`.
fn noise(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}
