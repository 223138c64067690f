//! The wiring of one consumer path: `dlq`, `writer-N`, `buffer-N`, `decoder-N`, `consumer-N`
//! under one `rest_for_one` supervisor (see [`crate::sources::lanes`]). Each partition is
//! pinned to one lane (decoder, buffer, writer), so its batches are written and acknowledged
//! in offset order.

use std::sync::Arc;

use actord_actors::buffer::BufferLimits;
use actord_actors::decoder::DecodeFn;
use actord_actors::sink::{Sink, SinkFactory};
use actord_actors::writer::RetryPolicy;
use actord_actors::{ActorPath, ChildSpec, Fence};
use ractor::Actor;

use super::consumer::{ConsumerArgs, KafkaConsumer};
use super::dlq::{DlqArgs, DlqProducer};
use super::{KafkaConnection, SourceSettings};
use crate::config::Supervision;
use crate::sources::lanes::{batch_writer, PathTree, SpawnDlq};
pub use crate::sources::lanes::{SpawnWriter, STOP_AFTER_DRAIN, STOP_DLQ, STOP_QUICK};
use crate::sources::slot::take;

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
        let fence = Fence::new();
        let writer = batch_writer(self.sink, self.retry, fence.clone());
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
    let mut tree = PathTree::new(parent, this.id, supervision);
    if let Some(suffix) = this.dlq_suffix.clone() {
        let connection = this.connection.clone();
        let topics = this.source.topics.clone();
        let spawn: SpawnDlq = Arc::new(move |probe, supervisor| {
            let args = DlqArgs {
                probe,
                connection: connection.clone(),
                suffix: suffix.clone(),
                topics: topics.clone(),
            };
            Box::pin(async move {
                let (actor, _) = Actor::spawn_linked(None, DlqProducer, args, supervisor).await?;
                Ok(actor)
            })
        });
        tree.dlq(spawn);
    }
    let decoder_slots = tree.lanes(this.lanes, writer, this.buffer, this.decode.clone());
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
        tree.push(&id, spec);
    }
    tree.finish()
}
