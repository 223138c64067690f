//! `Writer`: writes batches into a sink and acknowledges them.
//!
//! Guarantees:
//! - Items are acknowledged only after the sink made them durable (or the DLQ holds them).
//! - Batches are written one at a time in arrival order, so a partition pinned to this writer
//!   is written and acknowledged in offset order.
//! - Group commit: when the sink takes several batches at once ([`Sink::group_batches`]) and
//!   more batches already wait behind the one at hand, the writer holds it and writes the
//!   waiting ones with it in one `write`, up to the sink's limit. An idle writer never waits
//!   for a batch that was not sent: a lone batch is written as soon as it arrives.
//! - Poison items reach the DLQ, and the DLQ has confirmed them, before any later item of the
//!   batch is written.
//! - Transient failures are retried with capped exponential backoff and jitter; when the retry
//!   budget is spent the writer fails, so its supervisor restarts the path and the records are
//!   read again. A transient failure never sends anything to the DLQ.
//! - A poison error for a batch is narrowed down by splitting the batch until the rejected
//!   records are isolated; those go to the DLQ and the rest is written.
//! - A fatal error fails the writer at once.
//! - Records of a revoked assignment are never written: a batch's fenced records are dropped
//!   before each attempt (unacknowledged, so the partition's new owner reads them), and a sink
//!   that watches the fence gives up a write in flight when one of its partitions is revoked.
//!   Each write is registered in flight with the fence until its records are acknowledged, so a
//!   revoke can wait for it before committing.
//! - Undecodable records are shown to the sink before they are dead-lettered
//!   ([`Sink::undecodable`]), so a sink that keeps a rejection breaker counts them too; its
//!   refusal fails the writer with nothing of the batch dead-lettered or acknowledged.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tracing::{error, warn};

use crate::backoff::Backoff;
use crate::error::ErrorKind;
use crate::fence::Fence;
use crate::names;
use crate::observe::Probe;
use crate::record::{Acker, Batch, DeadLetter, DlqMsg, Envelope, Item, Origin, Poison, Topic};
use crate::sink::{Progress, Sink, SinkError, SinkFactory};

pub struct Writer<R, S>(std::marker::PhantomData<fn() -> (R, S)>);

impl<R, S> Default for Writer<R, S> {
    fn default() -> Self {
        Writer(std::marker::PhantomData)
    }
}

/// How transient failures are retried before the writer gives up and fails.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// Attempts per write, the first included.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(10),
                factor: 2.0,
            },
            max_attempts: 8,
        }
    }
}

pub struct WriterArgs<S> {
    pub probe: Probe,
    pub sink: SinkFactory<S>,
    /// Where isolated poison records go; `None` when another path owns the DLQ (they are then
    /// acknowledged and counted as skipped).
    pub dlq: Option<ActorRef<DlqMsg>>,
    pub retry: RetryPolicy,
    /// The path's fence: revoked assignments and writes in flight.
    pub fence: Fence,
}

pub enum WriterMsg<R> {
    Write(Batch<R>),
    /// Partitions taken away (up to each assignment epoch). A writer that holds records
    /// beyond the batch it is writing drops theirs: their new owner handles them.
    Revoked(Vec<(Topic, i32, u64)>),
}

pub struct WriterState<R, S> {
    sink: S,
    _records: std::marker::PhantomData<fn() -> R>,
    dlq: Option<ActorRef<DlqMsg>>,
    retry: RetryPolicy,
    probe: Probe,
    path: String,
    rng: u64,
    fence: Fence,
    /// Batches held for a group commit, with the records they hold.
    group: Vec<Batch<R>>,
    grouped: u64,
}

enum Attempt {
    Written,
    Poison(SinkError, u32),
}

impl<R, S> WriterState<R, S> {
    /// Full jitter on the upper half: a delay between 50% and 100% of the backoff.
    fn jittered(&mut self, attempt: u32) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        self.retry.backoff.delay(attempt).mul_f64(0.5 + unit / 2.0)
    }
}

/// Sends dead letters to the DLQ and waits until it holds them all.
async fn dead_letter(
    dlq: Option<ActorRef<DlqMsg>>,
    path: &str,
    letters: Vec<DeadLetter>,
) -> Result<(), ActorProcessingErr> {
    if letters.is_empty() {
        return Ok(());
    }
    let n = letters.len() as u64;
    let Some(dlq) = dlq else {
        // Another path owns the DLQ for this input: skip, and let the source move on.
        for l in letters {
            l.acker.ack(vec![l.source.origin]);
        }
        metrics::counter!(names::RECORDS_SKIPPED_TOTAL, "path" => path.to_owned()).increment(n);
        return Ok(());
    };
    let mut waits = Vec::with_capacity(letters.len());
    for letter in letters {
        let (tx, rx) = tokio::sync::oneshot::channel();
        dlq.cast(DlqMsg::Send(letter, Some(RpcReplyPort::from(tx))))
            .map_err(|_| "the DLQ actor is gone")?;
        waits.push(rx);
    }
    for rx in waits {
        rx.await
            .map_err(|_| "the DLQ actor stopped before confirming")?;
    }
    Ok(())
}

impl<R, S> WriterState<R, S>
where
    R: Send + Sync + 'static,
    S: Sink<R>,
{
    /// Drops the records of revoked assignments; they are not acknowledged.
    fn drop_fenced(&self, records: &mut Vec<Envelope<R>>) {
        let before = records.len();
        records.retain(|e| !self.fence.is_fenced(&e.source.origin));
        let dropped = before - records.len();
        if dropped > 0 {
            self.probe.add_counter("fenced", dropped as u64);
            warn!(path = %self.path, records = dropped, "dropped records of revoked partitions; their new owner writes them");
        }
    }

    /// Writes `records`, retrying transient failures; stops at a poison error. Records whose
    /// partition is revoked meanwhile are dropped before the next attempt, which does not count
    /// against the retry budget.
    async fn attempt(
        &mut self,
        records: &mut Vec<Envelope<R>>,
    ) -> Result<Attempt, ActorProcessingErr> {
        let mut attempt = 0u32;
        loop {
            self.drop_fenced(records);
            if records.is_empty() {
                return Ok(Attempt::Written);
            }
            attempt += 1;
            let started = Instant::now();
            let result = self.sink.write(records).await;
            metrics::histogram!(names::FLUSH_DURATION_SECONDS, "path" => self.path.clone())
                .record(started.elapsed().as_secs_f64());
            let err = match result {
                Ok(()) => return Ok(Attempt::Written),
                Err(e) => e,
            };
            if self
                .fence
                .any_fenced(records.iter().map(|e| &e.source.origin))
            {
                // The sink gave up (or failed) while a partition of the batch went away.
                attempt -= 1;
                continue;
            }
            match err.kind {
                ErrorKind::Poison => return Ok(Attempt::Poison(err, attempt)),
                ErrorKind::Fatal => {
                    error!(path = %self.path, error = %err, "sink failed fatally");
                    return Err(Box::new(err));
                }
                ErrorKind::Transient => {
                    metrics::counter!(names::SINK_RETRIES_TOTAL, "path" => self.path.clone(), "error_kind" => "transient").increment(1);
                    if attempt >= self.retry.max_attempts {
                        error!(path = %self.path, attempts = attempt, error = %err, "sink still failing, giving up so the path restarts");
                        return Err(format!(
                            "sink unavailable after {attempt} attempts: {}",
                            err.message
                        )
                        .into());
                    }
                    let delay = self.jittered(attempt - 1);
                    warn!(path = %self.path, attempt, delay = ?delay, error = %err, "sink write failed, retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Writes the batches held for a group commit as one.
    async fn write_group(&mut self) -> Result<(), ActorProcessingErr> {
        let group = std::mem::take(&mut self.group);
        let held = std::mem::take(&mut self.grouped);
        if group.len() > 1 {
            metrics::counter!(names::WRITER_GROUPED_BATCHES_TOTAL, "path" => self.path.clone())
                .increment(group.len() as u64);
        }
        let items = if group.len() == 1 {
            group
                .into_iter()
                .next()
                .map(|b| b.items)
                .unwrap_or_default()
        } else {
            group.into_iter().flat_map(|b| b.items).collect()
        };
        let result = self.write_batch(items).await;
        self.probe.release(held);
        result
    }

    async fn write_batch(&mut self, items: Vec<Item<R>>) -> Result<(), ActorProcessingErr> {
        // In flight until this returns, after the acknowledgements.
        let (items, _in_flight) = self.fence.begin(items, Item::origin);
        let mut poison = Vec::new();
        let mut good = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Item::Good(e) => good.push(e),
                Item::Poison(d) => poison.push(d),
            }
        }
        if !poison.is_empty() {
            if let Err(err) = self.sink.undecodable(&poison) {
                error!(path = %self.path, records = poison.len(), error = %err, "the sink refuses to let undecodable records go by");
                return Err(Box::new(err));
            }
        }
        dead_letter(self.dlq.clone(), &self.path, poison).await?;
        // A stack of chunks, left halves on top so offsets stay in order.
        let mut work = vec![good];
        while let Some(mut chunk) = work.pop() {
            if chunk.is_empty() {
                continue;
            }
            match self.attempt(&mut chunk).await? {
                Attempt::Written => {
                    let bytes: usize = chunk.iter().map(|e| e.bytes).sum();
                    self.probe.progress(chunk.len() as u64, bytes as u64);
                    metrics::counter!(names::RECORDS_WRITTEN_TOTAL, "path" => self.path.clone())
                        .increment(chunk.len() as u64);
                    ack_all(chunk.into_iter().map(|e| (e.acker, e.source.origin)));
                }
                Attempt::Poison(err, _) if !err.rejected.is_empty() => {
                    // The sink wrote all but the rejected records: dead-letter those first,
                    // then acknowledge everything.
                    let mut letters = Vec::with_capacity(err.rejected.len());
                    let mut rejected = vec![None; chunk.len()];
                    for r in err.rejected {
                        if let Some(slot) = rejected.get_mut(r.index) {
                            *slot = Some(r);
                        }
                    }
                    let mut written = Vec::with_capacity(chunk.len());
                    for (e, r) in chunk.into_iter().zip(rejected) {
                        match r {
                            Some(r) => {
                                warn!(path = %self.path, topic = %e.source.origin.topic, partition = e.source.origin.partition, offset = e.source.origin.offset, error = %r.message, "sink rejected a record, dead-lettering it");
                                letters.push(DeadLetter {
                                    source: e.source,
                                    acker: e.acker,
                                    poison: Poison::new(r.class, r.message),
                                    stage: "sink",
                                    retry_count: r.attempts,
                                });
                            }
                            None => written.push(e),
                        }
                    }
                    dead_letter(self.dlq.clone(), &self.path, letters).await?;
                    let bytes: usize = written.iter().map(|e| e.bytes).sum();
                    self.probe.progress(written.len() as u64, bytes as u64);
                    metrics::counter!(names::RECORDS_WRITTEN_TOTAL, "path" => self.path.clone())
                        .increment(written.len() as u64);
                    ack_all(written.into_iter().map(|e| (e.acker, e.source.origin)));
                }
                Attempt::Poison(err, attempts) if chunk.len() == 1 => {
                    let e = chunk.pop().expect("one record");
                    warn!(path = %self.path, topic = %e.source.origin.topic, partition = e.source.origin.partition, offset = e.source.origin.offset, error = %err, "sink rejected a record, dead-lettering it");
                    let letter = DeadLetter {
                        source: e.source,
                        acker: e.acker,
                        poison: Poison::new(err.class, err.message),
                        stage: "sink",
                        retry_count: attempts.saturating_sub(1),
                    };
                    dead_letter(self.dlq.clone(), &self.path, vec![letter]).await?;
                }
                Attempt::Poison(..) => {
                    let right = chunk.split_off(chunk.len() / 2);
                    work.push(right);
                    work.push(chunk);
                }
            }
        }
        Ok(())
    }
}

/// Acknowledges origins, one call per source.
pub fn ack_all(items: impl IntoIterator<Item = (Acker, Origin)>) {
    let mut groups: Vec<(Acker, Vec<Origin>)> = Vec::new();
    for (acker, origin) in items {
        match groups.iter_mut().find(|(a, _)| a.same(&acker)) {
            Some((_, v)) => v.push(origin),
            None => groups.push((acker, vec![origin])),
        }
    }
    for (acker, origins) in groups {
        acker.ack(origins);
    }
}

impl<R, S> Actor for Writer<R, S>
where
    R: Send + Sync + 'static,
    S: Sink<R>,
{
    type Msg = WriterMsg<R>;
    type State = WriterState<R, S>;
    type Arguments = WriterArgs<S>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let path = args.probe.path().to_string();
        // The retry counter exists from the start (at zero) for dashboards and alerts.
        metrics::counter!(names::SINK_RETRIES_TOTAL, "path" => path.clone(), "error_kind" => "transient")
            .increment(0);
        let mut sink = (args.sink)()
            .await
            .map_err(|e| format!("cannot open the sink: {e}"))?;
        sink.attach_progress(Progress::new(args.probe.clone()));
        sink.attach_fence(args.fence.clone());
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9)
            | 1;
        // Present from the start: a dashboard sees the sink's latency and written records
        // before its first batch.
        let _ = metrics::histogram!(names::FLUSH_DURATION_SECONDS, "path" => path.clone());
        metrics::counter!(names::RECORDS_WRITTEN_TOTAL, "path" => path.clone()).increment(0);
        metrics::counter!(names::WRITER_GROUPED_BATCHES_TOTAL, "path" => path.clone()).increment(0);
        Ok(WriterState {
            sink,
            _records: std::marker::PhantomData,
            dlq: args.dlq,
            retry: args.retry,
            probe: args.probe,
            path,
            rng: seed,
            fence: args.fence,
            group: Vec::new(),
            grouped: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WriterMsg::Write(batch) => {
                let n = batch.items.len() as u64;
                state.probe.hold(n);
                // A batch holding undecodable records is written on its own, so a sink that
                // judges the share of refused records (a rejection breaker) sees them beside
                // the good records of their own batch, as without grouping.
                let clean = batch.items.iter().all(|i| matches!(i, Item::Good(_)));
                if !clean && !state.group.is_empty() {
                    if let Err(e) = state.write_group().await {
                        state.probe.release(n);
                        return Err(e);
                    }
                }
                let more = batch.queued.more_behind();
                state.grouped += n;
                state.group.push(batch);
                if clean && more && state.group.len() < state.sink.group_batches() {
                    // The next batch is already on its way: write them together.
                    return Ok(());
                }
                state.write_group().await
            }
            // The fence already holds the revocation: batches still queued here drop the
            // records of revoked partitions when their turn comes, and the write in flight gives
            // up or finishes while the revoke callback waits for it.
            WriterMsg::Revoked(_) => Ok(()),
        }
    }
}
