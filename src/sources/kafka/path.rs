//! The wiring of one consumer path: `dlq`, `writer-N`, `buffer-N`, `decoder-N`, `consumer-N`
//! under one `rest_for_one` supervisor.
//!
//! Children start sink first, so each upstream actor finds its downstream's address in a slot
//! when it starts; when a downstream actor restarts, everything started after it restarts too
//! and picks up the new address. Each partition is pinned to one lane (decoder, buffer, writer), so its
//! batches are written and acknowledged in offset order.

use std::sync::{Arc, Mutex};

use actord_actors::buffer::{Buffer, BufferArgs, BufferLimits, BufferMsg};
use actord_actors::decoder::{DecodeFn, Decoder, DecoderArgs};
use actord_actors::record::{DlqMsg, SourceMsg};
use actord_actors::sink::{Sink, SinkFactory};
use actord_actors::writer::{RetryPolicy, Writer, WriterArgs, WriterMsg};
use actord_actors::{ActorPath, ChildSpec, Strategy};
use ractor::{Actor, ActorRef, SpawnErr};

use super::consumer::{ConsumerArgs, KafkaConsumer};
use super::dlq::{DlqArgs, DlqProducer};
use super::{KafkaConnection, SourceSettings};
use crate::config::Supervision;

type Slot<T> = Arc<Mutex<Option<ActorRef<T>>>>;

fn slot<T>() -> Slot<T> {
    Arc::new(Mutex::new(None))
}

fn fill<T>(slot: &Slot<T>, actor: &ActorRef<T>) {
    *slot.lock().expect("slot lock") = Some(actor.clone());
}

/// The address in `slot`, if that actor still runs (a stale address would fail the first send).
fn take<T>(slot: &Slot<T>, what: &str) -> Result<ActorRef<T>, SpawnErr> {
    slot.lock()
        .expect("slot lock")
        .clone()
        .filter(|a| a.get_status() < ractor::ActorStatus::Stopping)
        .ok_or_else(|| SpawnErr::StartupFailed(format!("{what} is not running").into()))
}

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

impl<R, S> KafkaPath<R, S>
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
            let connection = self.connection.clone();
            let out = dlq_slot.clone();
            let spec = ChildSpec::worker("dlq", move |ctx| {
                let args = DlqArgs {
                    probe: ctx.probe,
                    connection: connection.clone(),
                    suffix: suffix.clone(),
                };
                let out = out.clone();
                async move {
                    let (actor, _) =
                        Actor::spawn_linked(None, DlqProducer, args, ctx.supervisor).await?;
                    fill(&out, &actor);
                    Ok(actor.get_cell())
                }
            });
            children.push(supervision.child(&root.child("dlq"), spec));
        }
        for (i, out) in writer_slots.iter().enumerate() {
            let id = format!("writer-{i}");
            let (sink, retry, out) = (self.sink.clone(), self.retry, out.clone());
            let dlq = owns_dlq.then(|| dlq_slot.clone());
            let spec = ChildSpec::worker(id.clone(), move |ctx| {
                let dlq = dlq.as_ref().map(|s| take(s, "the DLQ producer"));
                let (sink, out) = (sink.clone(), out.clone());
                async move {
                    let args = WriterArgs {
                        probe: ctx.probe,
                        sink,
                        dlq: dlq.transpose()?,
                        retry,
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
            });
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
            });
            children.push(supervision.child(&root.child(&id), spec));
        }
        for i in 0..self.source.consumers.max(1) {
            let id = format!("consumer-{i}");
            let (decoders, connection, settings) = (
                decoder_slots.clone(),
                self.connection.clone(),
                self.source.clone(),
            );
            let spec = ChildSpec::worker(id.clone(), move |ctx| {
                let decoders: Result<Vec<_>, _> =
                    decoders.iter().map(|d| take(d, "a decoder")).collect();
                let (connection, settings) = (connection.clone(), settings.clone());
                async move {
                    let args = ConsumerArgs {
                        probe: ctx.probe,
                        connection,
                        settings,
                        downstream: decoders?,
                    };
                    let (actor, _) =
                        Actor::spawn_linked(None, KafkaConsumer, args, ctx.supervisor).await?;
                    Ok(actor.get_cell())
                }
            });
            children.push(supervision.child(&root.child(&id), spec));
        }
        let spec = supervision.supervisor_spec(&root, Strategy::RestForOne);
        supervision.child(&root, ChildSpec::supervisor(self.id, spec, children))
    }
}
