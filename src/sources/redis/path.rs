//! The wiring of one Redis Streams path: `dlq`, `writer-N`, `buffer-N`, `decoder-N`,
//! `consumer-N` under one `rest_for_one` supervisor, with the same buffer, writer and retry
//! core as a Kafka path.
//!
//! Children start sink first, so each upstream actor finds its downstream's address when it
//! starts; a restart of one restarts everything started after it. Every consumer spreads its
//! entries over all lanes in turn: stream entries are acknowledged one by one, so no lane
//! waits for another.

use std::time::Duration;

use actord_actors::buffer::{Buffer, BufferArgs, BufferLimits, BufferMsg};
use actord_actors::decoder::{DecodeFn, Decoder, DecoderArgs};
use actord_actors::fence::Fence;
use actord_actors::record::{DlqMsg, SourceMsg};
use actord_actors::sink::{Sink, SinkFactory};
use actord_actors::writer::{RetryPolicy, Writer, WriterArgs, WriterMsg};
use actord_actors::{ActorPath, ChildSpec, Strategy};
use ractor::Actor;

use super::consumer::{lease_owner, ConsumerArgs, RedisConsumer};
use super::dlq::{DlqArgs, RedisDlq};
use super::{RedisConnection, StreamSettings};
use crate::config::Supervision;
use crate::sources::slot::{fill, slot, take, Slot};

/// The graceful stop of a decoder or buffer: handing on what it holds, no I/O.
const STOP_QUICK: Duration = Duration::from_secs(1);

/// The graceful stop of the dead-letter writer once the consumers drained.
const STOP_DLQ: Duration = Duration::from_secs(2);

/// What a consumer's stop adds to its drain timeout: the last acks.
const STOP_AFTER_DRAIN: Duration = Duration::from_secs(2);

/// Everything one Redis Streams path needs.
pub struct RedisPath<R, S> {
    /// The path's name under its pipeline, e.g. `sales-org`.
    pub id: String,
    pub connection: RedisConnection,
    pub source: StreamSettings,
    pub decode: DecodeFn<R>,
    pub sink: SinkFactory<S>,
    /// Buffer + writer pairs: the path's parallel workers.
    pub lanes: usize,
    pub buffer: BufferLimits,
    pub retry: RetryPolicy,
    /// `Some(suffix)` when this path writes the dead letters of its stream to
    /// `<stream><suffix>`.
    pub dlq_suffix: Option<String>,
}

impl<R, S> RedisPath<R, S>
where
    R: Send + Sync + 'static,
    S: Sink<R>,
{
    /// The supervised subtree at `<parent>/<id>`.
    pub fn child_spec(self, parent: &ActorPath, supervision: &Supervision) -> ChildSpec {
        let root = parent.child(&self.id);
        let lanes = self.lanes.max(1);
        let dlq_slot: Slot<DlqMsg> = slot();
        let writer_slots: Vec<Slot<WriterMsg<R>>> = (0..lanes).map(|_| slot()).collect();
        let buffer_slots: Vec<Slot<BufferMsg<R>>> = (0..lanes).map(|_| slot()).collect();
        let decoder_slots: Vec<Slot<SourceMsg>> = (0..lanes).map(|_| slot()).collect();
        let mut children = Vec::new();

        let owns_dlq = self.dlq_suffix.is_some();
        if let Some(suffix) = self.dlq_suffix.clone() {
            let (connection, out) = (self.connection.clone(), dlq_slot.clone());
            let (group, counting) = (
                self.source.group.clone(),
                self.source.drain_counting.clone(),
            );
            let spec = ChildSpec::worker("dlq", move |ctx| {
                let args = DlqArgs {
                    probe: ctx.probe,
                    connection: connection.clone(),
                    suffix: suffix.clone(),
                    group: group.clone(),
                    counting: counting.clone(),
                };
                let out = out.clone();
                async move {
                    let (actor, _) =
                        Actor::spawn_linked(None, RedisDlq, args, ctx.supervisor).await?;
                    fill(&out, &actor);
                    Ok(actor.get_cell())
                }
            })
            .shutdown(STOP_DLQ);
            children.push(supervision.child(&root.child("dlq"), spec));
        }
        for (i, out) in writer_slots.iter().enumerate() {
            let id = format!("writer-{i}");
            let (sink, retry, out) = (self.sink.clone(), self.retry, out.clone());
            let dlq = owns_dlq.then(|| dlq_slot.clone());
            let spec = ChildSpec::worker(id.clone(), move |ctx| {
                let dlq = dlq.as_ref().map(|s| take(s, "the dead-letter writer"));
                let (sink, out) = (sink.clone(), out.clone());
                async move {
                    let args = WriterArgs {
                        probe: ctx.probe,
                        sink,
                        dlq: dlq.transpose()?,
                        retry,
                        // Stream entries are not assigned and revoked: nothing is ever fenced.
                        fence: Fence::new(),
                    };
                    let (actor, _) =
                        Actor::spawn_linked(None, Writer::<R, S>::default(), args, ctx.supervisor)
                            .await?;
                    fill(&out, &actor);
                    Ok(actor.get_cell())
                }
            });
            children.push(supervision.child(&root.child(&id), spec));
        }
        for (i, out) in buffer_slots.iter().enumerate() {
            let id = format!("buffer-{i}");
            let (writer, out, limits) = (writer_slots[i].clone(), out.clone(), self.buffer);
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
                        Actor::spawn_linked(None, Buffer::<R>::default(), args, ctx.supervisor)
                            .await?;
                    fill(&out, &actor);
                    Ok(actor.get_cell())
                }
            })
            .shutdown(STOP_QUICK);
            children.push(supervision.child(&root.child(&id), spec));
        }
        for (i, out) in decoder_slots.iter().enumerate() {
            let id = format!("decoder-{i}");
            let (buffer, decode, out) = (buffer_slots[i].clone(), self.decode.clone(), out.clone());
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
        let consumer_stop = self.source.drain_timeout + STOP_AFTER_DRAIN;
        for i in 0..self.source.consumers.max(1) {
            let id = format!("consumer-{i}");
            let (decoders, connection, settings) = (
                decoder_slots.clone(),
                self.connection.clone(),
                self.source.clone(),
            );
            let dlq = owns_dlq.then(|| dlq_slot.clone());
            let lease_owner = lease_owner();
            let spec = ChildSpec::worker(id.clone(), move |ctx| {
                let lease_owner = lease_owner.clone();
                let decoders: Result<Vec<_>, _> =
                    decoders.iter().map(|d| take(d, "a decoder")).collect();
                let dlq = dlq.as_ref().map(|s| take(s, "the dead-letter writer"));
                let (connection, settings) = (connection.clone(), settings.clone());
                async move {
                    let args = ConsumerArgs {
                        probe: ctx.probe,
                        connection,
                        settings,
                        index: i,
                        downstream: decoders?,
                        dlq: dlq.transpose()?,
                        lease_owner,
                    };
                    let (actor, _) =
                        Actor::spawn_linked(None, RedisConsumer, args, ctx.supervisor).await?;
                    Ok(actor.get_cell())
                }
            })
            .shutdown(consumer_stop);
            children.push(supervision.child(&root.child(&id), spec));
        }
        let spec = supervision.supervisor_spec(&root, Strategy::RestForOne);
        supervision.child(
            &root,
            ChildSpec::supervisor(self.id, spec, children).wiring(Strategy::RestForOne),
        )
    }
}
