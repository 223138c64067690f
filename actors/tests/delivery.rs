//! Decoder → buffer → writer → sink, with a recording sink and DLQ, on paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actord_actors::buffer::{Buffer, BufferArgs, BufferLimits, BufferMsg};
use actord_actors::decoder::{Decoder, DecoderArgs};
use actord_actors::observe::{ActorKind, Registry};
use actord_actors::record::{Acker, Origin, Poison, SourceMsg, SourceRecord, Topic};
use actord_actors::testkit::{
    eventually, DeadLetters, RecordingDlq, RecordingSink, SinkControl, SinkMode,
};
use actord_actors::writer::{RetryPolicy, Writer, WriterArgs};
use actord_actors::{ActorPath, Backoff, Fence};
use ractor::{Actor, ActorRef, ActorStatus};

#[derive(Clone, Debug, PartialEq)]
struct Rec(i64);

fn decode(r: &SourceRecord) -> Result<Rec, Poison> {
    let text = std::str::from_utf8(r.payload.as_deref().unwrap_or_default())
        .map_err(|e| Poison::new("Utf8", e.to_string()))?;
    text.parse::<i64>()
        .map(Rec)
        .map_err(|e| Poison::new("ParseInt", format!("{text:?}: {e}")))
}

fn source(partition: i32, offset: i64, payload: &str) -> SourceRecord {
    SourceRecord {
        origin: Origin {
            topic: Topic::intern("t"),
            partition,
            offset,
            epoch: 1,
        },
        key: None,
        payload: Some(payload.as_bytes().to_vec()),
        timestamp_ms: None,
        headers: Vec::new(),
    }
}

struct Chain {
    decoder: ActorRef<SourceMsg>,
    buffer: ActorRef<BufferMsg<Rec>>,
    writer: ActorRef<actord_actors::writer::WriterMsg<Rec>>,
    sink: SinkControl<Rec>,
    dlq: DeadLetters,
    acked: Arc<Mutex<Vec<Origin>>>,
    acker: Acker,
    fence: Fence,
}

impl Chain {
    async fn start(limits: BufferLimits, owns_dlq: bool, max_attempts: u32) -> Chain {
        let registry = Registry::new();
        let probe = |name: &str| {
            registry.probe(
                &ActorPath::parse(&format!("/p/{name}")).unwrap(),
                ActorKind::Worker,
            )
        };
        let sink = SinkControl::new(|r: &Rec| r.0 < 0);
        let dlq_letters: DeadLetters = Arc::default();
        let (dlq, _) = Actor::spawn(None, RecordingDlq, dlq_letters.clone())
            .await
            .unwrap();
        let fence = Fence::new();
        let (writer, _) = Actor::spawn(
            None,
            Writer::<Rec, RecordingSink<Rec>>::default(),
            WriterArgs {
                probe: probe("writer"),
                sink: sink.factory(),
                dlq: owns_dlq.then_some(dlq),
                retry: RetryPolicy {
                    backoff: Backoff {
                        initial: Duration::from_millis(100),
                        max: Duration::from_secs(1),
                        factor: 2.0,
                    },
                    max_attempts,
                },
                fence: fence.clone(),
            },
        )
        .await
        .unwrap();
        let (buffer, _) = Actor::spawn(
            None,
            Buffer::<Rec>::default(),
            BufferArgs {
                probe: probe("buffer"),
                limits,
                writer: writer.clone(),
            },
        )
        .await
        .unwrap();
        let (decoder, _) = Actor::spawn(
            None,
            Decoder::<Rec>::default(),
            DecoderArgs {
                probe: probe("decoder"),
                decode: Arc::new(decode),
                lanes: vec![buffer.clone()],
                owns_dlq,
            },
        )
        .await
        .unwrap();
        let acked: Arc<Mutex<Vec<Origin>>> = Arc::default();
        let sink_acked = acked.clone();
        let acker = Acker::new(move |o| sink_acked.lock().unwrap().extend(o));
        Chain {
            decoder,
            buffer,
            writer,
            sink,
            dlq: dlq_letters,
            acked,
            acker,
            fence,
        }
    }

    fn send(&self, records: Vec<SourceRecord>) {
        self.decoder
            .cast(SourceMsg::Records(records, self.acker.clone()))
            .unwrap();
    }

    fn acked_offsets(&self) -> Vec<i64> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .map(|o| o.offset)
            .collect()
    }

    fn written(&self) -> Vec<i64> {
        self.sink.written().iter().map(|(_, r)| r.0).collect()
    }
}

fn limits(max_records: usize, max_age_secs: u64) -> BufferLimits {
    BufferLimits {
        max_records,
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(max_age_secs),
    }
}

fn numbers(partition: i32, range: std::ops::Range<i64>) -> Vec<SourceRecord> {
    range
        .map(|i| source(partition, i, &i.to_string()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn flushes_by_size_and_ignores_the_stale_age_tick() {
    let c = Chain::start(limits(5, 10), true, 3).await;
    c.send(numbers(0, 0..5));
    assert!(eventually(Duration::from_secs(1), || c.written().len() == 5).await);
    // The age tick of that batch fires at 10 s and must not flush the next batch early.
    tokio::time::sleep(Duration::from_secs(9)).await;
    c.send(numbers(0, 5..7));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.written().len(), 5, "the stale tick flushed the new batch");
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(c.written(), (0..7).collect::<Vec<_>>());
    assert_eq!(c.acked_offsets(), (0..7).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn flushes_by_age_when_under_size() {
    let c = Chain::start(limits(100, 5), true, 3).await;
    c.send(numbers(0, 0..3));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(c.written().is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.written(), vec![0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn flushes_by_bytes_and_when_forced() {
    let c = Chain::start(
        BufferLimits {
            max_records: 1000,
            max_bytes: 3 * 65,
            max_age: Duration::from_secs(3600),
        },
        true,
        3,
    )
    .await;
    c.send(numbers(0, 0..3)); // 3 records of 65 bytes each (1 payload byte + 64)
    assert!(eventually(Duration::from_secs(1), || c.written().len() == 3).await);
    c.send(numbers(0, 3..4));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.written().len(), 3);
    c.decoder.cast(SourceMsg::FlushNow).unwrap();
    assert!(eventually(Duration::from_secs(1), || c.written().len() == 4).await);
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_retried_and_never_dead_lettered() {
    let c = Chain::start(limits(10, 1), true, 50).await;
    c.sink.set_mode(SinkMode::Down);
    c.send(numbers(0, 0..10));
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(c.sink.attempts() > 5);
    assert!(c.acked_offsets().is_empty(), "nothing acked while down");
    c.sink.set_mode(SinkMode::Accept);
    assert!(eventually(Duration::from_secs(5), || c.written().len() == 10).await);
    assert!(
        c.dlq.lock().unwrap().is_empty(),
        "an outage sent records to the DLQ"
    );
    assert_eq!(c.acked_offsets(), (0..10).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_writer_out_of_retries_fails_without_acking() {
    let c = Chain::start(limits(10, 1), true, 3).await;
    c.sink.set_mode(SinkMode::Down);
    c.send(numbers(0, 0..10));
    assert!(
        eventually(Duration::from_secs(30), || c.writer.get_status()
            == ActorStatus::Stopped)
        .await
    );
    assert_eq!(c.sink.attempts(), 3);
    assert!(c.acked_offsets().is_empty());
    assert!(c.dlq.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_fatal_sink_error_fails_the_writer_at_once() {
    let c = Chain::start(limits(1, 1), true, 10).await;
    c.sink.set_mode(SinkMode::Broken);
    c.send(numbers(0, 0..1));
    assert!(
        eventually(Duration::from_secs(5), || c.writer.get_status()
            == ActorStatus::Stopped)
        .await
    );
    assert_eq!(c.sink.attempts(), 1);
    assert!(c.acked_offsets().is_empty());
}

#[tokio::test(start_paused = true)]
async fn poison_rows_are_isolated_and_the_rest_is_written_in_order() {
    let c = Chain::start(limits(10, 1), true, 3).await;
    // -3 and -7 are rejected by the sink; "x" cannot be decoded.
    let mut recs = numbers(0, 0..10);
    recs[3] = source(0, 3, "-3");
    recs[7] = source(0, 7, "-7");
    recs[5] = source(0, 5, "x");
    c.send(recs);
    assert!(eventually(Duration::from_secs(5), || c.acked_offsets().len() == 10).await);
    assert_eq!(c.written(), vec![0, 1, 2, 4, 6, 8, 9]);
    let dlq = c.dlq.lock().unwrap();
    let summary: Vec<(i64, &str, &str, u32)> = dlq
        .iter()
        .map(|d| {
            (
                d.source.origin.offset,
                d.stage,
                d.poison.class.as_str(),
                d.retry_count,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (5, "decode", "ParseInt", 0),
            (3, "sink", "Rejected", 0),
            (7, "sink", "Rejected", 0)
        ]
    );
    assert_eq!(dlq[0].source.payload.as_deref(), Some(&b"x"[..]));
}

#[tokio::test(start_paused = true)]
async fn undecodable_records_are_shown_to_the_sink_before_they_are_dead_lettered() {
    let c = Chain::start(limits(4, 1), true, 3).await;
    c.send(vec![
        source(0, 0, "1"),
        source(0, 1, "bad"),
        source(0, 2, "worse"),
        source(0, 3, "3"),
    ]);
    assert!(eventually(Duration::from_secs(5), || c.acked_offsets().len() == 4).await);
    assert_eq!(c.sink.undecodable(), 2);
    assert_eq!(c.dlq.lock().unwrap().len(), 2);

    // A sink that refuses them (its rejection breaker is open) stops the writer: nothing of
    // the batch is dead-lettered, written or acknowledged.
    c.sink.refuse_undecodable(true);
    c.send(vec![
        source(0, 4, "4"),
        source(0, 5, "bad"),
        source(0, 6, "6"),
        source(0, 7, "7"),
    ]);
    assert!(
        eventually(Duration::from_secs(5), || c.writer.get_status()
            == ActorStatus::Stopped)
        .await
    );
    assert_eq!(c.sink.undecodable(), 3);
    assert_eq!(c.dlq.lock().unwrap().len(), 2);
    assert_eq!(c.acked_offsets().len(), 4);
    assert_eq!(c.written(), vec![1, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_path_without_the_dlq_skips_poison_and_acks_it() {
    let c = Chain::start(limits(4, 1), false, 3).await;
    c.send(vec![
        source(0, 0, "1"),
        source(0, 1, "bad"),
        source(0, 2, "-2"),
        source(0, 3, "3"),
    ]);
    assert!(eventually(Duration::from_secs(5), || c.acked_offsets().len() == 4).await);
    assert_eq!(c.written(), vec![1, 3]);
    assert!(c.dlq.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn discarded_partitions_leave_the_buffer() {
    let c = Chain::start(limits(100, 5), true, 3).await;
    let mut recs = numbers(0, 0..3);
    recs.extend(numbers(1, 0..3));
    c.send(recs);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.buffer
        .cast(BufferMsg::Discard(vec![(Topic::intern("t"), 1, 1)]))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let partitions: Vec<i32> = c.sink.written().iter().map(|(o, _)| o.partition).collect();
    assert_eq!(partitions, vec![0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_push_larger_than_the_batch_is_cut_into_exact_batches() {
    let c = Chain::start(limits(4, 10), true, 3).await;
    c.sink.set_mode(SinkMode::Blocked);
    c.send(numbers(0, 0..10));
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.sink.set_mode(SinkMode::Accept);
    assert!(eventually(Duration::from_secs(1), || c.written().len() == 8).await);
    // Two full batches of 4; the last 2 wait for their own age.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(c.written().len(), 8);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(c.written(), (0..10).collect::<Vec<_>>());
    assert_eq!(c.sink.attempts(), 3, "batches of 4, 4 and 2");
}

#[tokio::test(start_paused = true)]
async fn batches_queued_behind_each_other_are_written_together_up_to_the_sinks_limit() {
    let c = Chain::start(limits(4, 10), true, 3).await;
    c.sink.set_group_batches(8);
    // One push cuts six batches of 4: all six wait for the writer, which writes them at once.
    c.send(numbers(0, 0..24));
    assert!(eventually(Duration::from_secs(1), || c.acked_offsets().len() == 24).await);
    assert_eq!(c.written(), (0..24).collect::<Vec<_>>());
    assert_eq!(c.sink.attempts(), 1, "six queued batches, one write");
    // A lone batch is written as it arrives; nothing waits for batches that were not sent.
    c.send(numbers(0, 24..28));
    assert!(eventually(Duration::from_secs(1), || c.written().len() == 28).await);
    assert_eq!(c.sink.attempts(), 2);
    // The sink's limit caps a group: six batches in groups of at most 4.
    c.sink.set_group_batches(4);
    c.send(numbers(0, 28..52));
    assert!(eventually(Duration::from_secs(1), || c.acked_offsets().len() == 52).await);
    assert_eq!(c.written(), (0..52).collect::<Vec<_>>());
    assert_eq!(c.sink.attempts(), 4, "groups of 4 and 2 batches");
}

#[tokio::test(start_paused = true)]
async fn a_poison_record_in_a_group_is_isolated_and_the_groups_other_batches_land() {
    let c = Chain::start(limits(4, 10), true, 3).await;
    c.sink.set_group_batches(8);
    let mut records = numbers(0, 0..12);
    records[6] = source(0, 6, "-6");
    c.send(records);
    assert!(eventually(Duration::from_secs(1), || c.acked_offsets().len() == 12).await);
    assert_eq!(c.written(), (0..12).filter(|i| *i != 6).collect::<Vec<_>>());
    let letters = c.dlq.lock().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].source.origin.offset, 6);
}

#[tokio::test(start_paused = true)]
async fn a_batch_with_undecodable_records_is_written_on_its_own() {
    let c = Chain::start(limits(4, 10), true, 3).await;
    c.sink.set_group_batches(8);
    let mut records = numbers(0, 0..12);
    records[5] = source(0, 5, "bad");
    c.send(records);
    assert!(eventually(Duration::from_secs(1), || c.acked_offsets().len() == 12).await);
    assert_eq!(c.written(), (0..12).filter(|i| *i != 5).collect::<Vec<_>>());
    // The first batch is written before the one holding the undecodable record, which goes
    // alone (the sink judges it beside its own batch's records), then the last.
    assert_eq!(c.sink.attempts(), 3);
    assert_eq!(c.sink.undecodable(), 1);
    assert_eq!(c.dlq.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn records_a_sink_rejects_one_by_one_are_dead_lettered_and_the_rest_acked_once() {
    let c = Chain::start(limits(6, 10), true, 3).await;
    c.sink.set_mode(SinkMode::RejectEach { attempts: 2 });
    let mut records = numbers(0, 0..4);
    records.insert(1, source(0, 100, "-1"));
    records.insert(3, source(0, 101, "-2"));
    c.send(records);
    assert!(eventually(Duration::from_secs(1), || c.acked_offsets().len() == 6).await);
    assert_eq!(c.written(), vec![0, 1, 2, 3]);
    assert_eq!(c.sink.attempts(), 1, "nothing written twice");
    let letters = c.dlq.lock().unwrap();
    let offsets: Vec<i64> = letters.iter().map(|l| l.source.origin.offset).collect();
    assert_eq!(offsets, vec![100, 101]);
    assert!(letters
        .iter()
        .all(|l| l.retry_count == 2 && l.stage == "sink"));
    assert_eq!(letters[0].poison.class, "FileUnavailable");
}

#[tokio::test(start_paused = true)]
async fn timers_of_batches_that_left_by_size_are_cancelled() {
    let c = Chain::start(limits(5, 3600), true, 3).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = metrics.num_alive_tasks();
    // 200 batches leave by size; each would leave an hour-long age timer behind.
    for n in 0..200 {
        c.send(numbers(0, n * 5..n * 5 + 5));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(eventually(Duration::from_secs(5), || c.written().len() == 1000).await);
    let after = metrics.num_alive_tasks();
    assert!(
        after <= before + 2,
        "{} tasks still alive after 200 batches, {before} before",
        after
    );
}

#[tokio::test(start_paused = true)]
async fn a_revoked_partition_is_neither_written_nor_acked_and_its_upload_gives_up() {
    let c = Chain::start(limits(4, 1), true, 3).await;
    c.sink.set_mode(SinkMode::Blocked);
    // The first batch is in flight (blocked), the second waits in the writer's mailbox.
    let mut first = numbers(0, 0..2);
    first.extend(numbers(1, 0..2));
    c.send(first);
    assert!(eventually(Duration::from_secs(1), || c.sink.attempts() == 1).await);
    c.send(numbers(0, 2..6));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(c.fence.in_flight() > 0);
    c.fence.revoke(&[(Topic::intern("t"), 0, 1)]);
    // The write in flight gives up at once (no backoff, no attempt counted against the budget),
    // and what is left of it, partition 1, is written by the retry.
    c.sink.set_mode(SinkMode::Accept);
    assert!(eventually(Duration::from_secs(1), || c.written() == vec![0, 1]).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written: Vec<(i32, i64)> = c
        .sink
        .written()
        .iter()
        .map(|(o, _)| (o.partition, o.offset))
        .collect();
    assert_eq!(
        written,
        vec![(1, 0), (1, 1)],
        "records of partition 0 were written"
    );
    let acked: Vec<(i32, i64)> = c
        .acked
        .lock()
        .unwrap()
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    assert_eq!(acked, vec![(1, 0), (1, 1)]);
    assert_eq!(c.fence.in_flight(), 0);
    assert_eq!(c.writer.get_status(), ActorStatus::Running);
    // A later assignment of the same partition is not fenced.
    let mut later = numbers(0, 6..10);
    for r in &mut later {
        r.origin.epoch = 2;
    }
    c.send(later);
    assert!(eventually(Duration::from_secs(5), || c.written().len() == 6).await);
}

#[tokio::test(start_paused = true)]
async fn a_revoke_waits_for_the_write_in_flight_and_finds_it_acknowledged() {
    let c = Chain::start(limits(4, 1), true, 3).await;
    c.sink.set_mode(SinkMode::Trickle {
        steps: 5,
        step: Duration::from_secs(1),
    });
    c.send(numbers(0, 0..4));
    assert!(eventually(Duration::from_secs(1), || c.fence.in_flight() == 1).await);
    let (fence, acked) = (c.fence.clone(), c.acked.clone());
    // The revoke callback blocks its thread, as librdkafka's rebalance callback does.
    let waiter = std::thread::spawn(move || {
        let idle = fence.wait_idle(&[(Topic::intern("t"), 0, 1)], Duration::from_secs(60));
        (idle, acked.lock().unwrap().len())
    });
    assert!(eventually(Duration::from_secs(30), || waiter.is_finished()).await);
    assert_eq!(waiter.join().unwrap(), (true, 4));
}
