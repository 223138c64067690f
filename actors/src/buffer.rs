//! `Buffer`: collects items and hands batches to its writer by count, bytes or age.
//!
//! A flush timer carries the id of the batch it was set for, so a tick for a batch that already
//! left by size is ignored; the timer of a batch that left is cancelled too, so a busy buffer
//! does not pile up sleeping timers (one per batch, each holding the actor). Reaching the source's in-flight bound forces a flush, so
//! backpressure cannot deadlock on a half-full batch.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr};

use crate::names;
use crate::observe::Probe;
use crate::record::{Batch, Item, Queued, Topic};
use crate::writer::WriterMsg;

pub struct Buffer<R>(std::marker::PhantomData<fn() -> R>);

impl<R> Default for Buffer<R> {
    fn default() -> Self {
        Buffer(std::marker::PhantomData)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BufferLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

pub struct BufferArgs<R: Send + 'static> {
    pub probe: Probe,
    pub limits: BufferLimits,
    pub writer: ActorRef<WriterMsg<R>>,
}

pub enum BufferMsg<R> {
    Push(Vec<Item<R>>),
    FlushTick {
        batch_id: u64,
    },
    FlushNow,
    /// Drops buffered items of partitions taken away, for assignments up to `epoch`.
    Discard(Vec<(Topic, i32, u64)>),
}

pub struct BufferState<R: Send + 'static> {
    args: BufferArgs<R>,
    pending: Vec<Item<R>>,
    bytes: usize,
    batch_id: u64,
    path: String,
    /// The flush timer of the pending batch.
    timer: Option<JoinHandle<Result<(), MessagingErr<BufferMsg<R>>>>>,
    /// Batches sent to the writer, so it sees when more wait behind the one it handles.
    sent: Arc<AtomicU64>,
}

impl<R: Send + 'static> BufferState<R> {
    /// Starts a new batch with its own age timer, cancelling the previous batch's timer.
    fn new_batch(&mut self, myself: &ActorRef<BufferMsg<R>>) {
        self.batch_id += 1;
        let id = self.batch_id;
        self.cancel_timer();
        self.timer =
            Some(
                myself.send_after(self.args.limits.max_age, move || BufferMsg::FlushTick {
                    batch_id: id,
                }),
            );
    }

    fn cancel_timer(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }

    fn flush(&mut self, reason: &'static str) -> Result<(), ActorProcessingErr> {
        self.flush_first(self.pending.len(), reason)
    }

    /// Sends the first `n` pending items as one batch; the rest stay.
    fn flush_first(&mut self, n: usize, reason: &'static str) -> Result<(), ActorProcessingErr> {
        if self.pending.is_empty() || n == 0 {
            return Ok(());
        }
        let items: Vec<Item<R>> = if n >= self.pending.len() {
            std::mem::take(&mut self.pending)
        } else {
            let rest = self.pending.split_off(n);
            std::mem::replace(&mut self.pending, rest)
        };
        let bytes: usize = if self.pending.is_empty() {
            std::mem::replace(&mut self.bytes, 0)
        } else {
            let b: usize = items.iter().map(Item::bytes).sum();
            self.bytes -= b;
            b
        };
        if self.pending.is_empty() {
            self.cancel_timer();
        }
        let records = items.len() as u64;
        metrics::counter!(names::BUFFER_FLUSHED_RECORDS_TOTAL, "path" => self.path.clone())
            .increment(records);
        metrics::counter!(names::BUFFER_FLUSHED_BYTES_TOTAL, "path" => self.path.clone())
            .increment(bytes as u64);
        metrics::counter!(names::BUFFER_FLUSHES_TOTAL, "path" => self.path.clone(), "reason" => reason).increment(1);
        self.report_fill();
        self.args.probe.progress(records, bytes as u64);
        self.args
            .writer
            .cast(WriterMsg::Write(Batch {
                id: self.batch_id,
                items,
                bytes,
                queued: Queued::next(&self.sent),
            }))
            .map_err(|_| "the writer is gone")?;
        Ok(())
    }

    fn full(&self) -> bool {
        self.pending.len() >= self.args.limits.max_records
            || self.bytes >= self.args.limits.max_bytes
    }

    /// Items waiting, and how full the batch is against its size limits (1 flushes it).
    fn report_fill(&self) {
        metrics::gauge!(names::BUFFER_RECORDS, "path" => self.path.clone())
            .set(self.pending.len() as f64);
        let limits = &self.args.limits;
        let fill = (self.pending.len() as f64 / limits.max_records.max(1) as f64)
            .max(self.bytes as f64 / limits.max_bytes.max(1) as f64)
            .min(1.0);
        metrics::gauge!(names::BUFFER_FILL_RATIO, "path" => self.path.clone()).set(fill);
    }
}

impl<R: Send + 'static> Actor for Buffer<R> {
    type Msg = BufferMsg<R>;
    type State = BufferState<R>;
    type Arguments = BufferArgs<R>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let path = args.probe.path().to_string();
        let state = BufferState {
            args,
            pending: Vec::new(),
            bytes: 0,
            batch_id: 0,
            path,
            timer: None,
            sent: Arc::new(AtomicU64::new(0)),
        };
        // Present at 0 from the start, so a dashboard sees an empty buffer, not a missing one.
        state.report_fill();
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Whatever is left goes to the writer; unacknowledged items are replayed anyway.
        let _ = state.flush("shutdown");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            BufferMsg::Push(items) => {
                if items.is_empty() {
                    return Ok(());
                }
                if state.pending.is_empty() {
                    state.new_batch(&myself);
                }
                let bytes: usize = items.iter().map(Item::bytes).sum();
                metrics::counter!(names::BUFFER_PUSHED_RECORDS_TOTAL, "path" => state.path.clone())
                    .increment(items.len() as u64);
                metrics::counter!(names::BUFFER_PUSHED_BYTES_TOTAL, "path" => state.path.clone())
                    .increment(bytes as u64);
                state.bytes += bytes;
                state.pending.extend(items);
                state.report_fill();
                // Batches hold at most `max_records`, however large the pushes.
                let max = state.args.limits.max_records.max(1);
                let mut cut = false;
                while state.pending.len() >= max {
                    state.flush_first(max, "size")?;
                    cut = true;
                }
                if state.full() {
                    state.flush("size")?;
                }
                if cut && !state.pending.is_empty() {
                    // What stayed behind starts a new batch with its own age.
                    state.new_batch(&myself);
                }
            }
            BufferMsg::FlushTick { batch_id } if batch_id == state.batch_id => {
                state.flush("age")?
            }
            BufferMsg::FlushTick { .. } => {} // that batch already left by size
            BufferMsg::FlushNow => state.flush("forced")?,
            BufferMsg::Discard(revoked) => {
                // The writer may hold records of these partitions beyond its current batch.
                let _ = state.args.writer.cast(WriterMsg::Revoked(revoked.clone()));
                let before = state.pending.len();
                state.pending.retain(|item| {
                    let o = item.origin();
                    !revoked
                        .iter()
                        .any(|(t, p, e)| *t == o.topic && *p == o.partition && o.epoch <= *e)
                });
                if state.pending.len() != before {
                    state.bytes = state.pending.iter().map(Item::bytes).sum();
                    if state.pending.is_empty() {
                        state.cancel_timer();
                    }
                }
            }
        }
        Ok(())
    }
}
