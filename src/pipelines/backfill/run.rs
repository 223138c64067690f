//! One backfill run: read the topic from the mode's start up to the high watermarks captured
//! when the run starts, hand the records to the run's subtree (buffer → writer → Parquet
//! objects; poison → dead-letter producer), commit what is durable, and report a summary.
//!
//! Guarantees:
//! - Nothing is committed before the objects (or the dead-letter topic) hold it: commits follow
//!   the acknowledgements of the run's writer, in offset order per partition ([`Tracker`]).
//! - The run ends at the watermarks it captured: records produced meanwhile are left for the
//!   next run, so a run always finishes.
//! - A `continue` run skips records older than its from-date on the client, whatever offset
//!   the broker answered for that time (the end, 0, or nothing): the result does not depend on
//!   the broker's time index.
//! - When the run's subtree restarts (an object store outage outlasting the writer's retries),
//!   the reader goes back to the last committed offsets of this run and reads on; the sink
//!   replaces the objects of the uncommitted batches, so nothing is lost or written twice.
//!   A subtree that gives up (its restart budget spent) or makes no progress for the stall
//!   limit fails the run, with everything up to its last commit kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actord_actors::buffer::BufferMsg;
use actord_actors::offsets::Tracker;
use actord_actors::record::{Acker, DeadLetter, Envelope, Item, Origin, SourceRecord, Topic};
use chrono::{DateTime, Utc};
use ractor::ActorRef;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::mode::{Mode, KST};
use super::reading::{self, Names, Reading};
use crate::sinks::objects::sink::Written;
use crate::sources::kafka::consumer::source_record;
use crate::sources::kafka::KafkaConnection;

/// How long a metadata, watermark or offset request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Records pushed to the buffer in one message.
const CHUNK: usize = 1_000;

/// What a run reads, and how.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub connection: KafkaConnection,
    pub topic: String,
    pub group: String,
    pub mode: Mode,
    pub timestamp_field: Option<String>,
    /// Records per object batch; the reader keeps at most twice this in flight.
    pub batch_size: usize,
    /// A run that acknowledges nothing for this long while it waits fails.
    pub stall_limit: Duration,
}

/// One partition's part of a run.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    /// The log-start offset when the run began.
    pub low: i64,
    /// Where the run started reading.
    pub start: i64,
    /// The high watermark captured at the start: the run reads up to it (exclusive).
    pub end: i64,
}

/// What a run did, for the log, the terminal and the admin view. Records, objects, bytes and
/// the time range are what the object sink made visible during the run and the store still
/// holds: records an earlier run's object already held are not in them, nor are objects the
/// run replaced itself (a retried or replayed batch).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub mode: String,
    pub records: u64,
    pub objects: u64,
    /// Bytes of the Parquet objects written.
    pub bytes: u64,
    pub skipped: u64,
    pub dead_letters: u64,
    /// Times of the earliest and the latest record written (RFC 3339, Asia/Seoul).
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    pub duration_seconds: f64,
    pub partitions: Vec<PartitionRange>,
}

impl Summary {
    /// One line: `fresh: 1200 records in 4 objects (96000 bytes), 2 dead letters, …`.
    pub fn line(&self) -> String {
        let range = match (&self.first_time, &self.last_time) {
            (Some(a), Some(b)) => format!(", records from {a} to {b}"),
            _ => String::new(),
        };
        format!(
            "{}: {} records in {} objects ({} bytes), {} skipped, {} dead letters{range}, {:.1}s",
            self.mode,
            self.records,
            self.objects,
            self.bytes,
            self.skipped,
            self.dead_letters,
            self.duration_seconds
        )
    }
}

/// The run's subtree as the reader sees it: where records go, and how it is doing.
pub trait Downstream: Send + Sync {
    /// The buffer of the subtree's current incarnation, if it runs.
    fn buffer(&self) -> Option<ActorRef<BufferMsg<Reading>>>;
    /// Why the subtree is not running, once it gave up for good.
    fn gave_up(&self) -> Option<String>;
    /// What the run's objects hold so far, as the object sink counts them.
    fn written(&self) -> Written;
}

/// Reports progress (records, object bytes newly written) to the scheduler's run context.
pub type Report = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Reads one run and returns its summary. `stop` resolving asks the run to end early: it then
/// fails without committing past what is durable.
pub async fn execute(
    settings: &RunSettings,
    downstream: &dyn Downstream,
    report: Report,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary, String> {
    let started = Instant::now();
    let consumer = Arc::new(consumer(settings)?);
    let ranges = plan(&consumer, settings).await?;
    info!(pipeline = "backfill", mode = %settings.mode, topic = %settings.topic, group = %settings.group, partitions = ?ranges, "backfill run started");
    let mut reader = Reader::new(settings, consumer.clone(), ranges.clone());
    let outcome = tokio::select! {
        r = reader.run(downstream, &report) => r,
        () = stop => Err("stopped before the run finished".to_owned()),
    };
    reader.report_written(downstream, &report);
    outcome?;
    // Everything up to each watermark is durable (written, dead-lettered or skipped).
    let ends: Vec<(i32, i64)> = ranges.iter().map(|r| (r.partition, r.end)).collect();
    commit(&consumer, &settings.topic, &ends).await?;
    let kst = |t: DateTime<Utc>| {
        t.with_timezone(&KST)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
    };
    let written = downstream.written();
    Ok(Summary {
        mode: settings.mode.to_string(),
        records: written.records,
        objects: written.objects,
        bytes: written.bytes,
        skipped: reader.skipped,
        dead_letters: reader.dead_letters,
        first_time: written.first.map(kst),
        last_time: written.last.map(kst),
        duration_seconds: started.elapsed().as_secs_f64(),
        partitions: ranges,
    })
}

/// A consumer of the run's group that is assigned partitions by hand: it joins no group,
/// reads where it is told and commits under the group's name.
fn consumer(settings: &RunSettings) -> Result<BaseConsumer, String> {
    let mut config = settings.connection.client_config();
    config
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    crate::sources::kafka::consumer::limit_prefetch(&mut config, &settings.connection.properties);
    for (k, v) in &settings.connection.properties {
        config.set(k, v);
    }
    config
        .create()
        .map_err(|e| format!("cannot create the kafka consumer: {e}"))
}

/// Runs a blocking client call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a kafka request panicked: {e}"))?
}

/// The partitions, their watermarks and where this run starts in each.
async fn plan(
    consumer: &Arc<BaseConsumer>,
    settings: &RunSettings,
) -> Result<Vec<PartitionRange>, String> {
    let (c, topic, mode) = (consumer.clone(), settings.topic.clone(), settings.mode);
    blocking(move || {
        let meta = c
            .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("cannot read the metadata of {topic}: {e}"))?;
        let t = meta
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| format!("topic {topic} does not exist"))?;
        if let Some(e) = t.error() {
            return Err(format!("topic {topic}: {e:?}"));
        }
        let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        partitions.sort_unstable();
        if partitions.is_empty() {
            return Err(format!("topic {topic} has no partitions"));
        }
        let mut marks = BTreeMap::new();
        for &p in &partitions {
            let (low, high) = c
                .fetch_watermarks(&topic, p, REQUEST_TIMEOUT)
                .map_err(|e| format!("cannot read the watermarks of {topic}/{p}: {e}"))?;
            marks.insert(p, (low.max(0), high.max(0)));
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = match mode {
            Mode::Fresh | Mode::Continue(Some(_)) => BTreeMap::new(),
            Mode::Incremental | Mode::Continue(None) => {
                let list = c
                    .committed_offsets(tpl.clone(), REQUEST_TIMEOUT)
                    .map_err(|e| format!("cannot read the committed offsets: {e}"))?;
                list.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((e.partition(), o)),
                        _ => None,
                    })
                    .collect()
            }
        };
        let by_time: BTreeMap<i32, i64> = match mode.from() {
            None => BTreeMap::new(),
            Some(from) => {
                let mut q = TopicPartitionList::new();
                for &p in &partitions {
                    q.add_partition_offset(&topic, p, Offset::Offset(from.timestamp_millis()))
                        .map_err(|e| e.to_string())?;
                }
                match c.offsets_for_times(q, REQUEST_TIMEOUT) {
                    Ok(list) => list
                        .elements()
                        .iter()
                        .filter_map(|e| match e.offset() {
                            Offset::Offset(o) => Some((e.partition(), o)),
                            _ => None,
                        })
                        .collect(),
                    Err(e) => {
                        warn!(pipeline = "backfill", error = %e, "the broker cannot look offsets up by time; reading from the beginning and skipping older records");
                        BTreeMap::new()
                    }
                }
            }
        };
        Ok(partitions
            .iter()
            .map(|p| {
                let (low, high) = marks[p];
                let start = match mode {
                    Mode::Fresh => low,
                    Mode::Continue(Some(_)) => by_time.get(p).copied().unwrap_or(low),
                    Mode::Incremental | Mode::Continue(None) => {
                        committed.get(p).copied().unwrap_or(low)
                    }
                };
                // Retention may have passed a committed offset; a recreated topic may be
                // shorter than one; a broker may answer a time with an offset out of range.
                let start = if start > high { low } else { start.max(low) };
                PartitionRange {
                    partition: *p,
                    low,
                    start,
                    end: high,
                }
            })
            .collect())
    })
    .await
}

/// Commits `offsets` (next offset to read, per partition) under the run's group.
async fn commit(
    consumer: &Arc<BaseConsumer>,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), String> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(|e| e.to_string())?;
    }
    let c = consumer.clone();
    blocking(move || {
        c.commit(&tpl, CommitMode::Sync)
            .map_err(|e| format!("cannot commit offsets: {e}"))
    })
    .await
}

/// The reading side of a run.
struct Reader {
    settings: RunSettings,
    consumer: Arc<BaseConsumer>,
    topic: Topic,
    ranges: Vec<PartitionRange>,
    /// Where each partition resumes after its subtree restarted: the last commit of this run.
    resume: HashMap<i32, i64>,
    /// Next offset expected per partition; a partition at its end is done.
    next: HashMap<i32, i64>,
    tracker: Tracker,
    acks: mpsc::UnboundedReceiver<Vec<Origin>>,
    acker: Acker,
    /// Chunks being decoded on blocking threads, in the order they were read.
    decoding: VecDeque<tokio::task::JoinHandle<Decoded>>,
    /// Field names shared by the readings (handed to each decoding chunk and back).
    names: Names,
    skipped: u64,
    dead_letters: u64,
    /// Records and object bytes reported so far.
    reported: (u64, u64),
}

impl Reader {
    fn new(
        settings: &RunSettings,
        consumer: Arc<BaseConsumer>,
        ranges: Vec<PartitionRange>,
    ) -> Self {
        let (tx, acks) = mpsc::unbounded_channel();
        let acker = Acker::new(move |origins| {
            let _ = tx.send(origins);
        });
        Reader {
            topic: Topic::intern(&settings.topic),
            settings: settings.clone(),
            consumer,
            resume: ranges.iter().map(|r| (r.partition, r.start)).collect(),
            next: HashMap::new(),
            ranges,
            tracker: Tracker::new(),
            acks,
            acker,
            decoding: VecDeque::new(),
            names: Names::default(),
            skipped: 0,
            dead_letters: 0,
            reported: (0, 0),
        }
    }

    /// Reports what the run's objects gained since the last report. The sink's totals shrink
    /// when it replaces an object of its own, and grow back as the replacement lands: only
    /// growth past what was reported counts.
    fn report_written(&mut self, downstream: &dyn Downstream, report: &Report) {
        let w = downstream.written();
        let (records, bytes) = (
            w.records.saturating_sub(self.reported.0),
            w.bytes.saturating_sub(self.reported.1),
        );
        if records > 0 || bytes > 0 {
            report(records, bytes);
        }
        self.reported = (self.reported.0.max(w.records), self.reported.1.max(w.bytes));
    }

    fn end(&self, partition: i32) -> i64 {
        self.ranges
            .iter()
            .find(|r| r.partition == partition)
            .map_or(0, |r| r.end)
    }

    fn all_read(&self) -> bool {
        self.ranges
            .iter()
            .all(|r| self.next.get(&r.partition).copied().unwrap_or(r.end) >= r.end)
    }

    /// (Re)assigns every unfinished partition at its resume point, under new epochs: acks of
    /// records handed to an earlier incarnation of the subtree no longer count.
    fn assign(&mut self) -> Result<(), String> {
        self.tracker = Tracker::new();
        self.next.clear();
        let mut tpl = TopicPartitionList::new();
        for r in &self.ranges {
            let at = self.resume[&r.partition];
            self.tracker.assign(self.topic, r.partition);
            if at < r.end {
                tpl.add_partition_offset(&self.settings.topic, r.partition, Offset::Offset(at))
                    .map_err(|e| e.to_string())?;
                self.next.insert(r.partition, at);
            }
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| format!("cannot assign the partitions: {e}"))
    }

    fn take_acks(&mut self) -> bool {
        let mut any = false;
        while let Ok(origins) = self.acks.try_recv() {
            for o in &origins {
                any |= self.tracker.ack(o);
            }
        }
        any
    }

    /// Commits what became committable and moves the resume points there.
    async fn commit_progress(&mut self) -> Result<(), String> {
        let commits = self.tracker.take_commits();
        if commits.is_empty() {
            return Ok(());
        }
        let offsets: Vec<(i32, i64)> = commits.iter().map(|(_, p, o)| (*p, *o)).collect();
        if let Err(e) = commit(&self.consumer, &self.settings.topic, &offsets).await {
            for (t, p, o) in commits {
                self.tracker.uncommit(t, p, o);
            }
            return Err(e);
        }
        for (p, o) in offsets {
            self.resume.insert(p, o);
        }
        Ok(())
    }

    async fn run(&mut self, downstream: &dyn Downstream, report: &Report) -> Result<(), String> {
        let mut buffer = self.wait_for(downstream, None).await?;
        self.assign()?;
        let max_in_flight = self.settings.batch_size.saturating_mul(2).max(CHUNK);
        let mut pending: Vec<Item<Reading>> = Vec::with_capacity(CHUNK);
        let mut raw: Vec<SourceRecord> = Vec::with_capacity(CHUNK);
        let mut last_ack = Instant::now();
        let mut flushed = false;
        loop {
            if self.take_acks() {
                last_ack = Instant::now();
                self.commit_progress().await?;
            }
            self.report_written(downstream, report);
            let current = downstream.buffer();
            if current.as_ref().map(|b| b.get_id()) != Some(buffer.get_id()) {
                // The subtree restarted: what it held is gone. Read again from the last commit.
                warn!(
                    pipeline = "backfill",
                    "the run's writer restarted; reading again from the last committed offsets"
                );
                buffer = self.wait_for(downstream, Some(&buffer)).await?;
                self.assign()?;
                pending.clear();
                raw.clear();
                // Chunks read for the old subtree: their results are dropped unseen.
                self.decoding.clear();
                flushed = false;
                last_ack = Instant::now();
                continue;
            }
            let done_reading = self.all_read();
            if done_reading
                && pending.is_empty()
                && raw.is_empty()
                && self.decoding.is_empty()
                && self.tracker.in_flight_records() == 0
            {
                return Ok(());
            }
            let full = self.tracker.in_flight_records() >= max_in_flight;
            if done_reading || full {
                // Everything read goes to the buffer before it is flushed.
                if !raw.is_empty() {
                    self.decode(std::mem::take(&mut raw));
                }
                while !self.decoding.is_empty() {
                    self.take_decoded(&mut pending).await?;
                }
                if !pending.is_empty() {
                    let items = std::mem::take(&mut pending);
                    buffer
                        .cast(BufferMsg::Push(items))
                        .map_err(|_| "the run's buffer is gone".to_owned())?;
                }
                if !flushed {
                    let _ = buffer.cast(BufferMsg::FlushNow);
                    flushed = true;
                }
                if last_ack.elapsed() > self.settings.stall_limit {
                    return Err(format!(
                        "no records became durable for {:?}; giving up (committed up to the last durable batch)",
                        self.settings.stall_limit
                    ));
                }
                if let Some(reason) = downstream.gave_up() {
                    return Err(reason);
                }
                tokio::select! {
                    Some(origins) = self.acks.recv() => {
                        for o in &origins {
                            if self.tracker.ack(o) {
                                last_ack = Instant::now();
                            }
                        }
                        self.commit_progress().await?;
                    }
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            flushed = false;
            // Read what librdkafka has fetched; wait briefly when it has nothing.
            let mut got = 0;
            while got < CHUNK {
                let Some(message) = self.consumer.poll(Duration::ZERO) else {
                    break;
                };
                let m = message.map_err(|e| format!("reading {}: {e}", self.settings.topic))?;
                got += 1;
                let (p, offset) = (m.partition(), m.offset());
                let end = self.end(p);
                let Some(next) = self.next.get(&p).copied() else {
                    continue;
                };
                if offset >= end || offset < next {
                    continue;
                }
                self.next.insert(p, offset + 1);
                let source = source_record(&m, self.topic);
                let bytes = source.in_flight_size();
                let Some(epoch) = self.tracker.dispatched(self.topic, p, offset, bytes) else {
                    continue;
                };
                raw.push(SourceRecord {
                    origin: Origin {
                        epoch,
                        ..source.origin
                    },
                    ..source
                });
                if offset + 1 >= end {
                    self.next.insert(p, end);
                }
            }
            if raw.len() >= CHUNK || (got == 0 && !raw.is_empty()) {
                if self.decoding.len() >= DECODING {
                    self.take_decoded(&mut pending).await?;
                }
                self.decode(std::mem::replace(&mut raw, Vec::with_capacity(CHUNK)));
            }
            while self.decoding.front().is_some_and(|d| d.is_finished()) {
                self.take_decoded(&mut pending).await?;
            }
            if pending.len() >= CHUNK || (got == 0 && !pending.is_empty()) {
                let items = std::mem::take(&mut pending);
                buffer
                    .cast(BufferMsg::Push(items))
                    .map_err(|_| "the run's buffer is gone".to_owned())?;
            }
            if got == 0 {
                self.catch_up_positions();
                tokio::select! {
                    Some(origins) = self.acks.recv() => {
                        for o in &origins {
                            if self.tracker.ack(o) {
                                last_ack = Instant::now();
                            }
                        }
                    }
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }

    /// Decodes `records` on a blocking thread; [`Reader::take_decoded`] takes the results in
    /// the order the chunks were read, so every partition reaches the buffer in offset order.
    fn decode(&mut self, records: Vec<SourceRecord>) {
        let field = self.settings.timestamp_field.clone();
        let from = self.settings.mode.from();
        let acker = self.acker.clone();
        let names = self.names.clone();
        self.decoding
            .push_back(tokio::task::spawn_blocking(move || {
                decode_chunk(records, field.as_deref(), from, &acker, names)
            }));
    }

    /// Waits for the oldest chunk being decoded and adds its records to `pending`.
    async fn take_decoded(&mut self, pending: &mut Vec<Item<Reading>>) -> Result<(), String> {
        let Some(job) = self.decoding.pop_front() else {
            return Ok(());
        };
        let decoded = job
            .await
            .map_err(|e| format!("decoding a chunk of readings panicked: {e}"))?;
        for origin in &decoded.skipped {
            self.tracker.ack(origin);
        }
        self.skipped += decoded.skipped.len() as u64;
        self.dead_letters += decoded.poison;
        if decoded.names.len() > self.names.len() {
            self.names = decoded.names;
        }
        pending.extend(decoded.items);
        Ok(())
    }

    /// Partitions whose position passed their end without a record at the end's last offset
    /// (a transaction marker, a compacted record) are done too: the position is one past the
    /// last message handed to this consumer, so everything below it was seen.
    fn catch_up_positions(&mut self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for e in positions.elements() {
            if let Offset::Offset(o) = e.offset() {
                let end = self.end(e.partition());
                if let Some(next) = self.next.get_mut(&e.partition()) {
                    if o >= end && *next < end {
                        *next = end;
                    }
                }
            }
        }
    }

    /// Waits until the subtree runs a buffer other than `old`.
    async fn wait_for(
        &self,
        downstream: &dyn Downstream,
        old: Option<&ActorRef<BufferMsg<Reading>>>,
    ) -> Result<ActorRef<BufferMsg<Reading>>, String> {
        let since = Instant::now();
        loop {
            if let Some(b) = downstream.buffer() {
                if old.is_none_or(|o| o.get_id() != b.get_id()) {
                    return Ok(b);
                }
            }
            if let Some(reason) = downstream.gave_up() {
                return Err(reason);
            }
            if since.elapsed() > self.settings.stall_limit {
                return Err(format!(
                    "the run's writer did not start within {:?}",
                    self.settings.stall_limit
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Chunks decoded at the same time, each of up to [`CHUNK`] records: the reader goes on
/// reading while they decode.
const DECODING: usize = 4;

/// A decoded chunk.
struct Decoded {
    /// Readings and dead letters, in the chunk's order.
    items: Vec<Item<Reading>>,
    /// Records older than the run's from-date: acknowledged without being written.
    skipped: Vec<Origin>,
    poison: u64,
    names: Names,
}

/// Decodes a chunk of records (on a blocking thread).
fn decode_chunk(
    records: Vec<SourceRecord>,
    field: Option<&str>,
    from: Option<DateTime<Utc>>,
    acker: &Acker,
    mut names: Names,
) -> Decoded {
    let mut out = Decoded {
        items: Vec::with_capacity(records.len()),
        skipped: Vec::new(),
        poison: 0,
        names: Names::default(),
    };
    for source in records {
        match reading::decode_with(&source, field, &mut names) {
            Ok(r) if from.is_some_and(|from| r.time < from) => out.skipped.push(source.origin),
            Ok(record) => out.items.push(Item::Good(Envelope {
                record,
                bytes: source.payload.as_ref().map_or(0, Vec::len),
                source,
                acker: acker.clone(),
            })),
            Err(poison) => {
                out.poison += 1;
                let (partition, offset) = (source.origin.partition, source.origin.offset);
                warn!(pipeline = "backfill", partition, offset, error = %poison, "message without a usable timestamp, dead-lettering it");
                out.items.push(Item::Poison(DeadLetter {
                    source,
                    acker: acker.clone(),
                    poison,
                    stage: "decode",
                    retry_count: 0,
                }));
            }
        }
    }
    out.names = names;
    out
}
