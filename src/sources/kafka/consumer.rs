//! `KafkaConsumer`: reads a group's partitions and hands records downstream, committing only
//! what the sink path acknowledged.
//!
//! Guarantees:
//! - An offset is committed only when every earlier offset of its partition was acknowledged
//!   (a per-partition watermark; acks may come in any order). Commits are batched by time.
//! - Start offsets (committed, beginning, by time, or from the sink) are applied in the
//!   rebalance callback when partitions are assigned, before anything is fetched.
//! - Revoked partitions commit their acknowledged prefix and drop the rest, which the next
//!   owner reads again; acks that arrive later for the old assignment are ignored. Before it
//!   commits, a revoke fences the partitions it gives up (writers drop their records and give up
//!   uploads of them) and waits, bounded by `revoke_wait`, until no write of them is in flight,
//!   so a write that completes in time is committed rather than written again by the next owner.
//! - At most `max_in_flight_records` / `max_in_flight_bytes` are handed out and unacknowledged.
//!   A record counts with what it holds in memory while in flight, its bytes and the fixed
//!   cost of a decoded record ([`SourceRecord::in_flight_size`]).
//!   A chunk stops at the bytes bound too, so the bytes pass it by one record at most.
//!   At the bound the consumer pauses its partitions (librdkafka then drops its prefetch) and
//!   asks every buffer to flush, so a half-full batch cannot hold the bound closed. It keeps
//!   polling while paused so that it stays in the group.
//! - librdkafka's own hold is set, not left to its defaults: at most [`PREFETCH_RECORDS`]
//!   records or [`PREFETCH_KBYTES`] of payload queued, and one response of at most
//!   [`FETCH_MAX_BYTES`] from each broker leading assigned partitions on top (each broker is
//!   fetched from on its own); each record it holds costs [`PREFETCHED_RECORD_OVERHEAD`]
//!   besides its decompressed bytes (README, Bounded memory, gives the whole bound).
//! - An operator pause of the pipeline (its subtree paused in the registry) flushes the
//!   buffers, pauses the partitions (new assignments too) and reads nothing until resumed; acks
//!   and commits go on meanwhile, so in-flight batches finish and their offsets are committed.
//! - A graceful stop stops reading, flushes the buffers, waits for acknowledgements (up to the
//!   drain timeout) and commits before leaving the group.
//! - librdkafka calls that block on the network (synchronous commits; the offset look-ups and
//!   the commit of a rebalance, which runs inside a poll) go through [`off_worker`], so the
//!   other tasks of the async worker keep running meanwhile.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actord_actors::decoder::lane_of;
use actord_actors::record::{Acker, Origin, SourceMsg, SourceRecord, Topic};
use actord_actors::{Fence, Probe};
use futures::{FutureExt, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::context::{PathContext, Shared};
use super::{KafkaConnection, SourceSettings, StartFrom};
use crate::sources::lanes;
use crate::telemetry::names;

pub struct KafkaConsumer;

pub struct ConsumerArgs {
    pub probe: Probe,
    pub connection: KafkaConnection,
    pub settings: SourceSettings,
    /// One decoder per lane; a partition always goes to the same lane.
    pub downstream: Vec<ActorRef<SourceMsg>>,
    /// The path's fence, shared with its writers.
    pub fence: Fence,
}

pub enum ConsumerMsg {
    Poll,
}

pub struct ConsumerState {
    /// Taken in `post_stop`, so that closing it (leaving the group, which can wait on the
    /// broker) happens off the async workers.
    consumer: Option<StreamConsumer<PathContext>>,
    shared: Arc<Shared>,
    acker: Acker,
    settings: SourceSettings,
    downstream: Vec<ActorRef<SourceMsg>>,
    probe: Probe,
    path: String,
    last_commit: Instant,
    /// Records delivered after a pause took effect; handed out on resume.
    stash: VecDeque<SourceRecord>,
    paused: bool,
    /// An operator paused the pipeline; the partitions stay paused until it is resumed.
    held: bool,
    /// Since when the in-flight bound has been reached without pausing the partitions.
    full_since: Option<Instant>,
}

/// Runs blocking librdkafka work without holding up the other tasks of the async worker it
/// runs on: on a multi-threaded runtime the worker hands them to another thread first. The
/// calling task itself waits, as it must (a rebalance callback has to finish before the poll
/// returns). On a single-threaded runtime, where nothing can take over, the work just runs.
pub(super) fn off_worker<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// What a stopping consumer keeps of its stop deadline for the final commit.
const COMMIT_RESERVE: Duration = Duration::from_secs(1);

/// How long one poll waits for the first record.
const POLL_WAIT: Duration = Duration::from_millis(20);

/// How long the consumer may sit at its in-flight bound without reading before it pauses its
/// partitions. Pausing drops librdkafka's prefetch, which costs a refetch on resume; a short
/// saturation is cheaper to wait out, a long one (a stalled sink) must not keep fetching.
const PAUSE_AFTER: Duration = Duration::from_millis(250);

/// Records librdkafka prefetches ahead of the consumer (`queued.min.messages`): it stops
/// fetching once its queue holds this many records or [`PREFETCH_KBYTES`] of payload. Each
/// queued record costs librdkafka [`PREFETCHED_RECORD_OVERHEAD`] besides its bytes, so for
/// small records the count, not the kilobytes, decides what the queue holds: at librdkafka's
/// default of 100,000 it held about 48 MiB of ticks. 10,000 is five chunks ahead, and the
/// consumer reads as fast.
pub const PREFETCH_RECORDS: usize = 10_000;

/// Payload librdkafka prefetches at most, in KiB (`queued.max.messages.kbytes`); it counts
/// decompressed values only.
pub const PREFETCH_KBYTES: usize = 16_384;

/// The largest fetch response in bytes (`fetch.max.bytes`, compressed as it travels): one
/// response from each broker leading assigned partitions may land on top of a full prefetch
/// queue (librdkafka fetches from each broker on its own). Left alone, librdkafka allows as much
/// as [`PREFETCH_KBYTES`], and 16 MiB of small compressed records is hundreds of MiB once each
/// of them is queued. librdkafka refuses less than `message.max.bytes`, so that wins when a
/// larger one is configured.
pub const FETCH_MAX_BYTES: usize = 1 << 20;

/// What librdkafka holds for one prefetched record besides its decompressed bytes: the 304-byte
/// operation that carries it through its queue, as allocated. Compressed batches decompress
/// into a buffer four times their compressed size when their frame does not say (lz4 as
/// librdkafka's producer writes it), which the batch's records share until the last of them is
/// read.
pub const PREFETCHED_RECORD_OVERHEAD: usize = 320;

/// Sets librdkafka's prefetch limits ([`PREFETCH_RECORDS`], [`PREFETCH_KBYTES`], the fetch
/// response size and a short backoff after a full queue) on a consumer's config, for every
/// consumer actord creates; the extra `properties` are applied after and win.
pub fn limit_prefetch(
    config: &mut rdkafka::ClientConfig,
    properties: &std::collections::BTreeMap<String, String>,
) {
    config
        .set("queued.min.messages", PREFETCH_RECORDS.to_string())
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES.to_string())
        .set("fetch.max.bytes", fetch_max_bytes(properties).to_string())
        // With a full prefetch queue librdkafka would wait a whole second before fetching
        // again; the queue drains in milliseconds, so look again soon.
        .set("fetch.queue.backoff.ms", "20");
}

/// `fetch.max.bytes` for the consumer: [`FETCH_MAX_BYTES`], or `message.max.bytes` from the
/// extra properties when that is larger (librdkafka refuses a smaller one).
fn fetch_max_bytes(properties: &std::collections::BTreeMap<String, String>) -> usize {
    properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(FETCH_MAX_BYTES, |m| m.max(FETCH_MAX_BYTES))
}

impl ConsumerState {
    fn consumer(&self) -> &StreamConsumer<PathContext> {
        self.consumer
            .as_ref()
            .expect("the consumer lives until post_stop")
    }

    fn drain_acks(&mut self) {
        let acked = self.shared.drain_acks();
        if acked > 0 {
            metrics::counter!(names::RECORDS_ACKED_TOTAL, "path" => self.path.clone())
                .increment(acked);
        }
    }

    /// Sends a control message to every lane, even when one of them is gone.
    fn broadcast(&self, make: impl Fn() -> SourceMsg) -> Result<(), ActorProcessingErr> {
        lanes::broadcast(&self.downstream, make)
    }

    fn forward_revoked(&mut self) -> Result<(), ActorProcessingErr> {
        let revoked = std::mem::take(&mut *self.shared.revoked.lock().expect("revoked lock"));
        if !revoked.is_empty() {
            self.stash.retain(|r| {
                !revoked
                    .iter()
                    .any(|(t, p, _)| *t == r.origin.topic && *p == r.origin.partition)
            });
            self.broadcast(|| SourceMsg::Revoked(revoked.clone()))?;
        }
        Ok(())
    }

    fn commit(&mut self, mode: CommitMode) {
        let commits = self
            .shared
            .tracker
            .lock()
            .expect("tracker lock")
            .take_commits();
        self.last_commit = Instant::now();
        if commits.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in &commits {
            let _ = tpl.add_partition_offset(topic.as_str(), *partition, Offset::Offset(*next));
        }
        let consumer = self.consumer();
        match off_worker(|| consumer.commit(&tpl, mode)) {
            Ok(()) => {
                metrics::counter!(names::OFFSETS_COMMITTED_TOTAL, "path" => self.path.clone())
                    .increment(commits.len() as u64);
                debug!(path = %self.path, partitions = commits.len(), "offsets committed");
            }
            Err(e) => {
                warn!(path = %self.path, error = %e, "offset commit failed; it is sent again with the next commit");
                let mut tracker = self.shared.tracker.lock().expect("tracker lock");
                for (topic, partition, next) in commits {
                    tracker.uncommit(topic, partition, next);
                }
            }
        }
    }

    fn over_bound(&self) -> bool {
        let t = self.shared.tracker.lock().expect("tracker lock");
        t.in_flight_records() >= self.settings.max_in_flight_records
            || t.in_flight_bytes() >= self.settings.max_in_flight_bytes
    }

    fn below_resume_mark(&self) -> bool {
        let t = self.shared.tracker.lock().expect("tracker lock");
        t.in_flight_records() <= self.settings.max_in_flight_records / 2
            && t.in_flight_bytes() <= self.settings.max_in_flight_bytes / 2
    }

    fn assignment(&self) -> TopicPartitionList {
        self.consumer().assignment().unwrap_or_default()
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), ActorProcessingErr> {
        let tpl = self.assignment();
        if paused {
            self.consumer().pause(&tpl)?;
            let reason = if self.held {
                "operator"
            } else {
                "backpressure"
            };
            metrics::counter!(names::KAFKA_PAUSES_TOTAL, "path" => self.path.clone(), "reason" => reason)
                .increment(1);
            if self.held {
                info!(path = %self.path, partitions = tpl.count(), "pipeline paused by an operator, pausing partitions");
            } else {
                info!(path = %self.path, partitions = tpl.count(), "in-flight bound held, pausing partitions");
            }
        } else {
            self.consumer().resume(&tpl)?;
            debug!(path = %self.path, "resuming");
        }
        self.paused = paused;
        self.shared.paused.store(paused, Ordering::Release);
        metrics::gauge!(names::KAFKA_PAUSED_PARTITIONS, "path" => self.path.clone())
            .set(if paused { tpl.count() as f64 } else { 0.0 });
        Ok(())
    }

    /// Copies a fetched message into an owned record. `last` caches the interned topic.
    fn record(m: &rdkafka::message::BorrowedMessage<'_>, last: &mut Option<Topic>) -> SourceRecord {
        let topic = match *last {
            Some(t) if t.as_str() == m.topic() => t,
            _ => {
                let t = Topic::intern(m.topic());
                *last = Some(t);
                t
            }
        };
        source_record(m, topic)
    }

    /// Tracks records and hands them downstream; records older than a start time are acked.
    fn dispatch(&mut self, records: Vec<SourceRecord>) -> Result<(), ActorProcessingErr> {
        if records.is_empty() {
            return Ok(());
        }
        let min_ts = match self.shared.start {
            StartFrom::Timestamp(ms) => Some(ms),
            _ => None,
        };
        let mut out = Vec::with_capacity(records.len());
        let mut bytes = 0u64;
        let mut older = 0u64;
        let mut per_topic: Vec<(Topic, u64)> = Vec::new();
        {
            let mut tracker = self.shared.tracker.lock().expect("tracker lock");
            for mut r in records {
                let size = r.size();
                let Some(epoch) = tracker.dispatched(
                    r.origin.topic,
                    r.origin.partition,
                    r.origin.offset,
                    r.in_flight_size(),
                ) else {
                    continue; // fetched before a revoke: the new owner reads it
                };
                r.origin.epoch = epoch;
                if let (Some(min), Some(ts)) = (min_ts, r.timestamp_ms) {
                    if ts < min {
                        tracker.ack(&r.origin);
                        older += 1;
                        continue;
                    }
                }
                match per_topic.iter_mut().find(|(t, _)| *t == r.origin.topic) {
                    Some((_, n)) => *n += 1,
                    None => per_topic.push((r.origin.topic, 1)),
                }
                bytes += size as u64;
                out.push(r);
            }
        }
        if older > 0 {
            self.probe.add_counter("skipped_older", older);
        }
        for (topic, n) in per_topic {
            metrics::counter!(names::RECORDS_CONSUMED_TOTAL, "path" => self.path.clone(), "topic" => topic.to_string()).increment(n);
        }
        if out.is_empty() {
            return Ok(());
        }
        self.probe.progress(out.len() as u64, bytes);
        let lanes = self.downstream.len();
        if lanes == 1 {
            return self.downstream[0]
                .cast(SourceMsg::Records(out, self.acker.clone()))
                .map_err(|_| "the decoder is gone".into());
        }
        let mut routed: Vec<Vec<SourceRecord>> = (0..lanes).map(|_| Vec::new()).collect();
        let mut last: Option<(Topic, i32, usize)> = None;
        for r in out {
            let (t, p) = (r.origin.topic, r.origin.partition);
            let lane = match last {
                Some((lt, lp, lane)) if lt == t && lp == p => lane,
                _ => {
                    let lane = lane_of(t.as_str(), p, lanes);
                    last = Some((t, p, lane));
                    lane
                }
            };
            routed[lane].push(r);
        }
        lanes::hand_out(&self.downstream, routed, &self.acker)
    }

    fn publish_gauges(&self) {
        let t = self.shared.tracker.lock().expect("tracker lock");
        metrics::gauge!(names::KAFKA_IN_FLIGHT_RECORDS, "path" => self.path.clone())
            .set(t.in_flight_records() as f64);
        metrics::gauge!(names::KAFKA_IN_FLIGHT_BYTES, "path" => self.path.clone())
            .set(t.in_flight_bytes() as f64);
        self.probe
            .set_counter("in_flight", t.in_flight_records() as u64);
        self.probe
            .set_counter("partitions", t.assigned().len() as u64);
    }

    /// One round: acks, revocations, commits, backpressure, then up to one chunk of records.
    async fn poll(&mut self) -> Result<(), ActorProcessingErr> {
        if let Some(e) = self.shared.failure.lock().expect("failure lock").take() {
            return Err(e.into());
        }
        self.drain_acks();
        self.forward_revoked()?;
        if self.last_commit.elapsed() >= self.settings.commit_interval {
            self.commit(CommitMode::Async);
        }
        // An operator pause: in-flight batches are flushed and finish, nothing new is read.
        let held = self.probe.is_paused();
        if held != self.held {
            self.held = held;
            if held {
                self.broadcast(|| SourceMsg::FlushNow)?;
                if !self.paused {
                    self.set_paused(true)?;
                }
            } else {
                info!(path = %self.path, "pipeline resumed by an operator");
                if self.paused && self.full_since.is_none() {
                    self.set_paused(false)?;
                }
            }
        }
        // At the bound: flush every buffer at once (a half-full batch must not hold the bound
        // closed), stop reading, and pause the partitions if it lasts.
        if self.over_bound() {
            match self.full_since {
                None => {
                    self.full_since = Some(Instant::now());
                    self.broadcast(|| SourceMsg::FlushNow)?;
                }
                Some(since) if !self.paused && since.elapsed() >= PAUSE_AFTER => {
                    self.set_paused(true)?
                }
                Some(_) => {}
            }
        } else if self.full_since.is_some() && (!self.paused || self.below_resume_mark()) {
            self.full_since = None;
            if self.paused && !self.held {
                self.set_paused(false)?;
            }
        }
        self.publish_gauges();
        if self.full_since.is_some() && !self.paused {
            self.wait_for_acks().await;
            return Ok(());
        }

        if self.paused {
            // Serve group events and wait for acks; anything still delivered is kept.
            let mut last = None;
            let mut stream = self
                .consumer
                .as_ref()
                .expect("the consumer lives until post_stop")
                .stream();
            while let Some(Some(Ok(m))) = stream.next().now_or_never() {
                self.stash.push_back(Self::record(&m, &mut last));
            }
            drop(stream);
            self.wait_for_acks().await;
            return Ok(());
        }

        // A chunk stops at the bytes bound as well as at the records bound, so the bytes in
        // flight pass `max_in_flight_bytes` by one record at most.
        let (room, mut byte_room) = {
            let t = self.shared.tracker.lock().expect("tracker lock");
            (
                self.settings
                    .max_in_flight_records
                    .saturating_sub(t.in_flight_records())
                    .min(self.settings.chunk),
                self.settings
                    .max_in_flight_bytes
                    .saturating_sub(t.in_flight_bytes()),
            )
        };
        let mut chunk: Vec<SourceRecord> = Vec::new();
        let mut take = |chunk: &mut Vec<SourceRecord>, r: SourceRecord| {
            byte_room = byte_room.saturating_sub(r.in_flight_size());
            chunk.push(r);
            chunk.len() < room && byte_room > 0
        };
        let mut more = true;
        while more {
            match self.stash.pop_front() {
                Some(r) => more = take(&mut chunk, r),
                None => break,
            }
        }
        // One stream for the whole chunk: registering a waker per message is costly.
        let mut last = None;
        let mut stream = self
            .consumer
            .as_ref()
            .expect("the consumer lives until post_stop")
            .stream();
        if chunk.is_empty() {
            match tokio::time::timeout(POLL_WAIT, stream.next()).await {
                Ok(Some(Ok(m))) => more = take(&mut chunk, Self::record(&m, &mut last)),
                Ok(Some(Err(e))) => {
                    warn!(path = %self.path, error = %e, "kafka consume error");
                    metrics::counter!(names::KAFKA_CONSUME_ERRORS_TOTAL, "path" => self.path.clone()).increment(1);
                }
                Ok(None) | Err(_) => {}
            }
        }
        while more {
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => more = take(&mut chunk, Self::record(&m, &mut last)),
                Some(Some(Err(e))) => {
                    warn!(path = %self.path, error = %e, "kafka consume error");
                    break;
                }
                Some(None) | None => break,
            }
        }
        drop(stream);
        // A rebalance may have run inside recv: forward it before records of the new epoch.
        self.forward_revoked()?;
        self.dispatch(chunk)
    }

    /// Waits a little for acknowledgements to free room.
    async fn wait_for_acks(&mut self) {
        let _ = tokio::time::timeout(POLL_WAIT, self.shared.acked.notified()).await;
        self.drain_acks();
    }

    /// Graceful stop: flush downstream, wait for acks, commit. The wait ends at the drain
    /// timeout, or earlier when the supervisor's stop deadline leaves less, so that the commit
    /// still happens before the consumer is killed.
    async fn drain(&mut self) {
        let _ = self.consumer().pause(&self.assignment());
        let _ = self.broadcast(|| SourceMsg::FlushNow);
        let mut deadline = Instant::now() + self.settings.drain_timeout;
        if let Some(stop) = self.probe.stop_deadline() {
            deadline = deadline.min(stop.checked_sub(COMMIT_RESERVE).unwrap_or(stop));
        }
        loop {
            self.drain_acks();
            let left = self
                .shared
                .tracker
                .lock()
                .expect("tracker lock")
                .in_flight_records();
            if left == 0 {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                warn!(path = %self.path, in_flight = left, "stopping with unacknowledged records; they will be read again");
                break;
            }
            let _ = tokio::time::timeout(remaining, self.shared.acked.notified()).await;
        }
        self.commit(CommitMode::Sync);
        self.consumer().unsubscribe();
    }
}

impl Actor for KafkaConsumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let path = args.probe.path().to_string();
        let mut shared = Shared::new(args.settings.start.clone(), path.clone());
        shared.probe = Some(args.probe.clone());
        shared.lag_per_partition = args.connection.lag_per_partition;
        shared.fence = args.fence;
        // A revoke runs while the group rebalances, and a coordinator may count only the
        // heartbeats it answers without an error, none of which come during a rebalance (the
        // embedded broker does): a member silent for the session timeout is dropped from the
        // group. The member learns of the rebalance up to a heartbeat interval (a third of the
        // session timeout) after its last counted heartbeat, and the wait ends at another
        // third, so it rejoins in time. The session timeout is the one librdkafka is given.
        let session = args
            .connection
            .properties
            .get("session.timeout.ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(args.settings.session_timeout);
        shared.revoke_wait = args.settings.revoke_wait.min(session / 3);
        shared.migrate_from = args
            .settings
            .migrate_from_group
            .as_ref()
            .filter(|g| **g != args.settings.group)
            .map(|g| {
                let mut c = args.connection.client_config();
                c.set("group.id", g).set("enable.auto.commit", "false");
                (g.clone(), c)
            });
        let shared = Arc::new(shared);
        let mut config = args.connection.client_config();
        let earliest = !matches!(
            args.settings.start,
            StartFrom::Committed { earliest: false }
        );
        config
            .set("group.id", &args.settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if earliest { "earliest" } else { "latest" },
            )
            .set("partition.assignment.strategy", "range,roundrobin")
            .set(
                "session.timeout.ms",
                args.settings.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (args.settings.session_timeout.as_millis() / 3)
                    .max(100)
                    .to_string(),
            )
            .set("statistics.interval.ms", "5000");
        // Prefetch stays small: the in-flight bound, not librdkafka's queue, holds memory.
        limit_prefetch(&mut config, &args.connection.properties);
        for (k, v) in &args.connection.properties {
            config.set(k, v);
        }
        let consumer: StreamConsumer<PathContext> = config
            .create_with_context(PathContext {
                shared: shared.clone(),
            })
            .map_err(|e| format!("cannot create the kafka consumer: {e}"))?;
        let topics: Vec<&str> = args.settings.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| format!("cannot subscribe to {topics:?}: {e}"))?;
        let weak = Arc::downgrade(&shared);
        let acker = Acker::new(move |origins| {
            if let Some(shared) = weak.upgrade() {
                shared.push_acks(origins);
            }
        });
        metrics::gauge!(names::KAFKA_PAUSED_PARTITIONS, "path" => path.clone()).set(0.0);
        for reason in ["backpressure", "operator"] {
            metrics::counter!(names::KAFKA_PAUSES_TOTAL, "path" => path.clone(), "reason" => reason)
                .increment(0);
        }
        info!(path = %path, group = %args.settings.group, topics = ?args.settings.topics, start = ?args.settings.start, "consumer started");
        myself.cast(ConsumerMsg::Poll)?;
        Ok(ConsumerState {
            consumer: Some(consumer),
            shared,
            acker,
            settings: args.settings,
            downstream: args.downstream,
            probe: args.probe,
            path,
            last_commit: Instant::now(),
            stash: VecDeque::new(),
            paused: false,
            held: false,
            full_since: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.drain().await;
        if let Some(consumer) = state.consumer.take() {
            off_worker(move || drop(consumer));
        }
        info!(path = %state.path, "consumer stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConsumerMsg::Poll => {
                state.poll().await?;
                // A stopping actor refuses new messages; that ends the loop.
                let _ = myself.cast(ConsumerMsg::Poll);
            }
        }
        Ok(())
    }
}

/// Copies a fetched message of `topic` into an owned record (epoch 0: the reader sets it).
pub(crate) fn source_record(
    m: &rdkafka::message::BorrowedMessage<'_>,
    topic: Topic,
) -> SourceRecord {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    SourceRecord {
        origin: Origin {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            epoch: 0,
        },
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        timestamp_ms: m.timestamp().to_millis(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use actord_actors::{ActorKind, ActorPath, Registry};
    use ractor::ActorProcessingErr;

    use super::*;
    use crate::sources::kafka::embedded::EmbeddedKafka;
    use crate::sources::kafka::OffsetSource;

    /// Start offsets from a sink whose look-up blocks its thread for a while, as a query to a
    /// slow database does.
    struct SlowSource {
        took: Duration,
        done: Arc<AtomicBool>,
    }

    impl OffsetSource for SlowSource {
        fn next_offsets(&self, partitions: &[(&str, i32)]) -> Result<Vec<Option<i64>>, String> {
            std::thread::sleep(self.took);
            self.done.store(true, Ordering::Release);
            Ok(vec![None; partitions.len()])
        }
    }

    struct Ignore;

    impl Actor for Ignore {
        type Msg = SourceMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            _args: (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    /// One async worker: a rebalance that blocks inside the consumer's poll must not stall the
    /// other tasks of the process.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_blocking_lookup_at_assignment_leaves_the_worker_to_other_tasks() {
        let kafka = EmbeddedKafka::start().unwrap();
        kafka.create_topic("slow-start", 1).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let mut settings = SourceSettings::new(vec!["slow-start".into()], "slow-start-group");
        settings.session_timeout = Duration::from_secs(3);
        settings.start = StartFrom::Sink(Arc::new(SlowSource {
            took: Duration::from_secs(2),
            done: done.clone(),
        }));
        // A task that should run every 10 ms; its longest gap shows a stalled worker.
        let longest = Arc::new(AtomicU64::new(0));
        let gap = longest.clone();
        let watch_done = done.clone();
        let ticker = tokio::spawn(async move {
            let mut last = std::time::Instant::now();
            while !watch_done.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = std::time::Instant::now();
                gap.fetch_max((now - last).as_millis() as u64, Ordering::Relaxed);
                last = now;
            }
        });
        let (ignore, _) = Actor::spawn(None, Ignore, ()).await.unwrap();
        let registry = Registry::new();
        let probe = registry.probe(
            &ActorPath::parse("/t/consumer-0").unwrap(),
            ActorKind::Worker,
        );
        let (consumer, _) = Actor::spawn(
            None,
            KafkaConsumer,
            ConsumerArgs {
                probe,
                connection: KafkaConnection::new(kafka.bootstrap()),
                settings,
                downstream: vec![ignore],
                fence: Fence::new(),
            },
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(60), ticker)
            .await
            .expect("the partitions were assigned")
            .unwrap();
        let longest = longest.load(Ordering::Relaxed);
        assert!(longest < 1_000, "the worker stalled for {longest} ms");
        consumer.stop(None);
    }

    #[test]
    fn fetch_max_bytes_is_at_least_a_configured_message_max_bytes() {
        let mut properties = std::collections::BTreeMap::new();
        assert_eq!(fetch_max_bytes(&properties), FETCH_MAX_BYTES);
        properties.insert("message.max.bytes".to_owned(), "500000".to_owned());
        assert_eq!(fetch_max_bytes(&properties), FETCH_MAX_BYTES);
        properties.insert("message.max.bytes".to_owned(), "8000000".to_owned());
        assert_eq!(fetch_max_bytes(&properties), 8_000_000);
    }
}
