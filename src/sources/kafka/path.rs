//! The wiring of one consumer path: `dlq`, `writer-N`, `buffer-N`, `decoder-N`, `consumer-N`
//! under one `rest_for_one` supervisor.
//!
//! Children start sink first, so each upstream actor finds its downstream's address in a slot
//! when it starts; when a downstream actor restarts, everything started after it restarts too
//! and picks up the new address. Each partition is pinned to one lane (decoder, buffer, writer), so its
//! batches are written and acknowledged in offset order.
//!
//! Children stop in reverse: the consumer first, whose drain flushes the buffers and waits for
//! the writers' acknowledgements, so what stops after it has little left to do. Their natural
//! shutdown timeouts say so (see [`STOP_QUICK`]).

use std::sync::Arc;
use std::time::Duration;

use actord_actors::buffer::{Buffer, BufferArgs, BufferLimits, BufferMsg};
use actord_actors::decoder::{DecodeFn, Decoder, DecoderArgs};
use actord_actors::record::{DlqMsg, SourceMsg};
use actord_actors::sink::{Sink, SinkFactory};
use actord_actors::writer::{RetryPolicy, Writer, WriterArgs, WriterMsg};
use actord_actors::{ActorPath, ChildSpec, Fence, Probe, Strategy};
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorRef, SpawnErr};

use super::consumer::{ConsumerArgs, KafkaConsumer};
use super::dlq::{DlqArgs, DlqProducer};
use super::{KafkaConnection, SourceSettings};
use crate::config::Supervision;
use crate::sources::slot::{fill, slot, take, Slot};

/// The graceful stop of a decoder or buffer: handing on what it holds, no I/O.
pub const STOP_QUICK: Duration = Duration::from_secs(1);

/// The graceful stop of the dead-letter producer once the consumer has drained.
pub const STOP_DLQ: Duration = Duration::from_secs(2);

/// What a consumer's stop adds to its drain timeout: the final commit and leaving the group.
pub const STOP_AFTER_DRAIN: Duration = Duration::from_secs(2);

/// Everything one consumer path needs.
pub struct KafkaPath<R, S> {
    /// The path's name under its pipeline, e.g. `timescale`.
    pub id: String,
    pub connection: KafkaConnection,
    pub source: SourceSettings,
    pub decode: DecodeFn<R>,
    pub sink: SinkFactory<S>,
    /// Buffer + writer pairs; partitions are spread over them and pinned.
    pub lanes: usize,
    pub buffer: BufferLimits,
    pub retry: RetryPolicy,
    /// `Some(suffix)` when this path writes the dead letters of its input.
    pub dlq_suffix: Option<String>,
}

/// Spawns the stage that takes a lane's batches, linked to `supervisor` and reporting to
/// `probe`; `dlq` is the path's dead-letter producer when the path owns its dead letters.
pub type SpawnWriter<R> = Arc<
    dyn Fn(
            Probe,
            ActorCell,
            Option<ActorRef<DlqMsg>>,
        ) -> BoxFuture<'static, Result<ActorRef<WriterMsg<R>>, SpawnErr>>
        + Send
        + Sync,
>;

/// A consumer path whose writer stage is the caller's own actor, for sinks that do not write
/// batch by batch (ftp-sync acknowledges each job when it is done). One lane.
pub struct DispatchPath<R> {
    pub id: String,
    pub connection: KafkaConnection,
    pub source: SourceSettings,
    pub decode: DecodeFn<R>,
    pub writer: SpawnWriter<R>,
    pub buffer: BufferLimits,
    pub dlq_suffix: Option<String>,
}

impl<R: Send + Sync + 'static> DispatchPath<R> {
    /// The supervised subtree at `<parent>/<id>`.
    pub fn child_spec(self, parent: &ActorPath, supervision: &Supervision) -> ChildSpec {
        assemble(
            Parts {
                id: self.id,
                connection: self.connection,
                source: self.source,
                decode: self.decode,
                lanes: 1,
                buffer: self.buffer,
                dlq_suffix: self.dlq_suffix,
            },
            self.writer,
            // The caller's writer stage acknowledges job by job; it has no writes to fence.
            Fence::new(),
            parent,
            supervision,
        )
    }
}

impl<R, S> KafkaPath<R, S>
where
    R: Send + Sync + 'static,
    S: Sink<R>,
{
    /// The supervised subtree at `<parent>/<id>`.
    pub fn child_spec(self, parent: &ActorPath, supervision: &Supervision) -> ChildSpec {
        let (sink, retry) = (self.sink, self.retry);
        let fence = Fence::new();
        let writer_fence = fence.clone();
        let writer: SpawnWriter<R> = Arc::new(move |probe, supervisor, dlq| {
            let args = WriterArgs {
                probe,
                sink: sink.clone(),
                dlq,
                retry,
                fence: writer_fence.clone(),
            };
            Box::pin(async move {
                let (actor, _) =
                    Actor::spawn_linked(None, Writer::<R, S>::default(), args, supervisor).await?;
                Ok(actor)
            })
        });
        assemble(
            Parts {
                id: self.id,
                connection: self.connection,
                source: self.source,
                decode: self.decode,
                lanes: self.lanes,
                buffer: self.buffer,
                dlq_suffix: self.dlq_suffix,
            },
            writer,
            fence,
            parent,
            supervision,
        )
    }
}

/// What every consumer path has besides its writer stage.
struct Parts<R> {
    id: String,
    connection: KafkaConnection,
    source: SourceSettings,
    decode: DecodeFn<R>,
    lanes: usize,
    buffer: BufferLimits,
    dlq_suffix: Option<String>,
}

fn assemble<R: Send + Sync + 'static>(
    this: Parts<R>,
    writer: SpawnWriter<R>,
    fence: Fence,
    parent: &ActorPath,
    supervision: &Supervision,
) -> ChildSpec {
    let root = parent.child(&this.id);
    let lanes = this.lanes.max(1);
    let dlq_slot: Slot<DlqMsg> = slot();
    let writer_slots: Vec<Slot<WriterMsg<R>>> = (0..lanes).map(|_| slot()).collect();
    let buffer_slots: Vec<Slot<BufferMsg<R>>> = (0..lanes).map(|_| slot()).collect();
    let decoder_slots: Vec<Slot<SourceMsg>> = (0..lanes).map(|_| slot()).collect();
    let mut children = Vec::new();

    let owns_dlq = this.dlq_suffix.is_some();
    if let Some(suffix) = this.dlq_suffix.clone() {
        let connection = this.connection.clone();
        let out = dlq_slot.clone();
        let topics = this.source.topics.clone();
        let spec = ChildSpec::worker("dlq", move |ctx| {
            let args = DlqArgs {
                probe: ctx.probe,
                connection: connection.clone(),
                suffix: suffix.clone(),
                topics: topics.clone(),
            };
            let out = out.clone();
            async move {
                let (actor, _) =
                    Actor::spawn_linked(None, DlqProducer, args, ctx.supervisor).await?;
                fill(&out, &actor);
                Ok(actor.get_cell())
            }
        })
        .shutdown(STOP_DLQ);
        children.push(supervision.child(&root.child("dlq"), spec));
    }
    for (i, out) in writer_slots.iter().enumerate() {
        let id = format!("writer-{i}");
        let (spawn, out) = (writer.clone(), out.clone());
        let dlq = owns_dlq.then(|| dlq_slot.clone());
        let spec = ChildSpec::worker(id.clone(), move |ctx| {
            let dlq = dlq.as_ref().map(|s| take(s, "the DLQ producer"));
            let (spawn, out) = (spawn.clone(), out.clone());
            async move {
                let actor = spawn(ctx.probe, ctx.supervisor, dlq.transpose()?).await?;
                fill(&out, &actor);
                Ok(actor.get_cell())
            }
        });
        children.push(supervision.child(&root.child(&id), spec));
    }
    for (i, out) in buffer_slots.iter().enumerate() {
        let id = format!("buffer-{i}");
        let (writer, out, limits) = (writer_slots[i].clone(), out.clone(), this.buffer);
        let spec = ChildSpec::worker(id.clone(), move |ctx| {
            let writer = take(&writer, "the writer");
            let out = out.clone();
            async move {
                let args = BufferArgs {
                    probe: ctx.probe,
                    limits,
                    writer: writer?,
                };
                let (actor, _) =
                    Actor::spawn_linked(None, Buffer::<R>::default(), args, ctx.supervisor).await?;
                fill(&out, &actor);
                Ok(actor.get_cell())
            }
        })
        .shutdown(STOP_QUICK);
        children.push(supervision.child(&root.child(&id), spec));
    }
    for (i, out) in decoder_slots.iter().enumerate() {
        let id = format!("decoder-{i}");
        let (buffer, decode, out) = (buffer_slots[i].clone(), this.decode.clone(), out.clone());
        let spec = ChildSpec::worker(id.clone(), move |ctx| {
            let buffer = take(&buffer, "the buffer");
            let (decode, out) = (decode.clone(), out.clone());
            async move {
                let args = DecoderArgs {
                    probe: ctx.probe,
                    decode,
                    lanes: vec![buffer?],
                    owns_dlq,
                };
                let (actor, _) =
                    Actor::spawn_linked(None, Decoder::<R>::default(), args, ctx.supervisor)
                        .await?;
                fill(&out, &actor);
                Ok(actor.get_cell())
            }
        })
        .shutdown(STOP_QUICK);
        children.push(supervision.child(&root.child(&id), spec));
    }
    let consumer_stop = this.source.drain_timeout + STOP_AFTER_DRAIN;
    for i in 0..this.source.consumers.max(1) {
        let id = format!("consumer-{i}");
        let (decoders, connection, settings, fence) = (
            decoder_slots.clone(),
            this.connection.clone(),
            this.source.clone(),
            fence.clone(),
        );
        let spec = ChildSpec::worker(id.clone(), move |ctx| {
            let decoders: Result<Vec<_>, _> =
                decoders.iter().map(|d| take(d, "a decoder")).collect();
            let (connection, settings, fence) =
                (connection.clone(), settings.clone(), fence.clone());
            async move {
                let args = ConsumerArgs {
                    probe: ctx.probe,
                    connection,
                    settings,
                    downstream: decoders?,
                    fence,
                };
                let (actor, _) =
                    Actor::spawn_linked(None, KafkaConsumer, args, ctx.supervisor).await?;
                Ok(actor.get_cell())
            }
        })
        .shutdown(consumer_stop);
        children.push(supervision.child(&root.child(&id), spec));
    }
    let spec = supervision.supervisor_spec(&root, Strategy::RestForOne);
    // Upstream actors hold their downstream's address from their start: a restart of one must
    // restart those started after it.
    supervision.child(
        &root,
        ChildSpec::supervisor(this.id, spec, children).wiring(Strategy::RestForOne),
    )
}
