//! The subtree of one source path, whatever the source: `dlq`, then `writer-N`, `buffer-N`,
//! `decoder-N` for each lane, then the source's consumers, under one `rest_for_one`
//! supervisor.
//!
//! Children start sink first, so each upstream actor finds its downstream's address in a slot
//! when it starts; when a downstream actor restarts, everything started after it restarts too
//! and picks up the new address. Children stop in reverse: the consumers first, whose drain
//! flushes the buffers and waits for the writers' acknowledgements, so what stops after them
//! has little left to do. Their shutdown timeouts say so (see [`STOP_QUICK`]).

use std::sync::Arc;
use std::time::Duration;

use actord_actors::buffer::{Buffer, BufferArgs, BufferLimits, BufferMsg};
use actord_actors::decoder::{DecodeFn, Decoder, DecoderArgs};
use actord_actors::record::{Acker, DlqMsg, SourceMsg, SourceRecord};
use actord_actors::sink::{Sink, SinkFactory};
use actord_actors::writer::{RetryPolicy, Writer, WriterArgs, WriterMsg};
use actord_actors::{ActorPath, ChildSpec, Fence, Probe, Strategy};
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};

use crate::config::Supervision;
use crate::sources::slot::{fill, slot, take, Slot};

/// The graceful stop of a decoder or buffer: handing on what it holds, no I/O.
pub const STOP_QUICK: Duration = Duration::from_secs(1);

/// The graceful stop of the dead-letter writer once the consumers drained.
pub const STOP_DLQ: Duration = Duration::from_secs(2);

/// What a consumer's stop adds to its drain timeout: the last acknowledgements or commit.
pub const STOP_AFTER_DRAIN: Duration = Duration::from_secs(2);

/// Spawns the stage that takes a lane's batches, linked to `supervisor` and reporting to
/// `probe`; `dlq` is the path's dead-letter writer when the path owns its dead letters.
pub type SpawnWriter<R> = Arc<
    dyn Fn(
            Probe,
            ActorCell,
            Option<ActorRef<DlqMsg>>,
        ) -> BoxFuture<'static, Result<ActorRef<WriterMsg<R>>, SpawnErr>>
        + Send
        + Sync,
>;

/// Spawns a path's dead-letter writer, linked to `supervisor` and reporting to `probe`.
pub type SpawnDlq = Arc<
    dyn Fn(Probe, ActorCell) -> BoxFuture<'static, Result<ActorRef<DlqMsg>, SpawnErr>>
        + Send
        + Sync,
>;

/// The shared batch writer over `sink`, retrying with `retry`; `fence` drops writes of
/// partitions the process gave up (a fresh fence for a source without assignments).
pub fn batch_writer<R, S>(sink: SinkFactory<S>, retry: RetryPolicy, fence: Fence) -> SpawnWriter<R>
where
    R: Send + Sync + 'static,
    S: Sink<R>,
{
    Arc::new(move |probe, supervisor, dlq| {
        let args = WriterArgs {
            probe,
            sink: sink.clone(),
            dlq,
            retry,
            fence: fence.clone(),
        };
        Box::pin(async move {
            let (actor, _) =
                Actor::spawn_linked(None, Writer::<R, S>::default(), args, supervisor).await?;
            Ok(actor)
        })
    })
}

/// Sends each lane's decoder its records, one message a lane; the consumer fails when a
/// decoder is gone (the path restarts).
pub fn hand_out(
    decoders: &[ActorRef<SourceMsg>],
    routed: Vec<Vec<SourceRecord>>,
    acker: &Acker,
) -> Result<(), ActorProcessingErr> {
    for (lane, records) in routed.into_iter().enumerate() {
        if !records.is_empty() {
            decoders[lane]
                .cast(SourceMsg::Records(records, acker.clone()))
                .map_err(|_| "a decoder is gone")?;
        }
    }
    Ok(())
}

/// Sends every lane's decoder the message `make` builds (e.g. `FlushNow`).
pub fn broadcast(
    decoders: &[ActorRef<SourceMsg>],
    make: impl Fn() -> SourceMsg,
) -> Result<(), ActorProcessingErr> {
    let failed = decoders.iter().filter(|d| d.cast(make()).is_err()).count();
    if failed > 0 {
        return Err("a decoder is gone".into());
    }
    Ok(())
}

/// One path's subtree as it is built, sink first.
pub struct PathTree<'a> {
    id: String,
    root: ActorPath,
    supervision: &'a Supervision,
    children: Vec<ChildSpec>,
    dlq: Option<Slot<DlqMsg>>,
}

impl<'a> PathTree<'a> {
    /// The subtree at `<parent>/<id>`.
    pub fn new(parent: &ActorPath, id: String, supervision: &'a Supervision) -> Self {
        PathTree {
            root: parent.child(&id),
            id,
            supervision,
            children: Vec::new(),
            dlq: None,
        }
    }

    /// Adds the dead-letter writer `dlq`: the path owns its dead letters.
    pub fn dlq(&mut self, spawn: SpawnDlq) {
        let out: Slot<DlqMsg> = slot();
        self.dlq = Some(out.clone());
        let spec = ChildSpec::worker("dlq", move |ctx| {
            let (spawn, out) = (spawn.clone(), out.clone());
            async move {
                let actor = spawn(ctx.probe, ctx.supervisor).await?;
                fill(&out, &actor);
                Ok(actor.get_cell())
            }
        })
        .shutdown(STOP_DLQ);
        self.push("dlq", spec);
    }

    /// Where the consumers find the dead-letter writer, when the path has one.
    pub fn dlq_slot(&self) -> Option<Slot<DlqMsg>> {
        self.dlq.clone()
    }

    /// Adds `lanes` writer + buffer + decoder lanes; returns the decoders' slots, one a lane,
    /// for the consumers.
    pub fn lanes<R: Send + Sync + 'static>(
        &mut self,
        lanes: usize,
        writer: SpawnWriter<R>,
        buffer: BufferLimits,
        decode: DecodeFn<R>,
    ) -> Vec<Slot<SourceMsg>> {
        let lanes = lanes.max(1);
        let owns_dlq = self.dlq.is_some();
        let writer_slots: Vec<Slot<WriterMsg<R>>> = (0..lanes).map(|_| slot()).collect();
        let buffer_slots: Vec<Slot<BufferMsg<R>>> = (0..lanes).map(|_| slot()).collect();
        let decoder_slots: Vec<Slot<SourceMsg>> = (0..lanes).map(|_| slot()).collect();
        for (i, out) in writer_slots.iter().enumerate() {
            let (spawn, out, dlq) = (writer.clone(), out.clone(), self.dlq.clone());
            let spec = ChildSpec::worker(format!("writer-{i}"), move |ctx| {
                let dlq = dlq.as_ref().map(|s| take(s, "the dead-letter writer"));
                let (spawn, out) = (spawn.clone(), out.clone());
                async move {
                    let actor = spawn(ctx.probe, ctx.supervisor, dlq.transpose()?).await?;
                    fill(&out, &actor);
                    Ok(actor.get_cell())
                }
            });
            self.push(&format!("writer-{i}"), spec);
        }
        for (i, out) in buffer_slots.iter().enumerate() {
            let (writer, out) = (writer_slots[i].clone(), out.clone());
            let spec = ChildSpec::worker(format!("buffer-{i}"), move |ctx| {
                let writer = take(&writer, "the writer");
                let out = out.clone();
                async move {
                    let args = BufferArgs {
                        probe: ctx.probe,
                        limits: buffer,
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
            self.push(&format!("buffer-{i}"), spec);
        }
        for (i, out) in decoder_slots.iter().enumerate() {
            let (buffer, decode, out) = (buffer_slots[i].clone(), decode.clone(), out.clone());
            let spec = ChildSpec::worker(format!("decoder-{i}"), move |ctx| {
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
            self.push(&format!("decoder-{i}"), spec);
        }
        decoder_slots
    }

    /// Adds a child (a consumer) at `<root>/<id>`.
    pub fn push(&mut self, id: &str, spec: ChildSpec) {
        let child = self.supervision.child(&self.root.child(id), spec);
        self.children.push(child);
    }

    /// The path's supervisor with its children. Upstream actors hold their downstream's
    /// address from their start: a restart of one restarts those started after it.
    pub fn finish(self) -> ChildSpec {
        let spec = self
            .supervision
            .supervisor_spec(&self.root, Strategy::RestForOne);
        self.supervision.child(
            &self.root,
            ChildSpec::supervisor(self.id, spec, self.children).wiring(Strategy::RestForOne),
        )
    }
}
