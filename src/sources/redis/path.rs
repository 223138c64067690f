//! The wiring of one Redis Streams path: `dlq`, `writer-N`, `buffer-N`, `decoder-N`,
//! `consumer-N` under one `rest_for_one` supervisor, with the same lanes, buffer, writer and
//! retry core as a Kafka path (see [`crate::sources::lanes`]). Every consumer hands each entry
//! to the lane holding the fewest (in turn among equals): stream entries are acknowledged one
//! by one, so no lane waits for another.

use std::sync::Arc;

use actord_actors::buffer::BufferLimits;
use actord_actors::decoder::DecodeFn;
use actord_actors::sink::{Sink, SinkFactory};
use actord_actors::writer::RetryPolicy;
use actord_actors::{ActorPath, ChildSpec, Fence};
use ractor::Actor;

use super::consumer::{lease_owner, ConsumerArgs, RedisConsumer};
use super::dlq::{DlqArgs, RedisDlq};
use super::{RedisConnection, StreamSettings};
use crate::config::Supervision;
use crate::sources::lanes::{batch_writer, PathTree, SpawnDlq, STOP_AFTER_DRAIN};
use crate::sources::slot::take;

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
        let mut tree = PathTree::new(parent, self.id, supervision);
        if let Some(suffix) = self.dlq_suffix.clone() {
            let connection = self.connection.clone();
            let (group, counting) = (
                self.source.group.clone(),
                self.source.drain_counting.clone(),
            );
            let spawn: SpawnDlq = Arc::new(move |probe, supervisor| {
                let args = DlqArgs {
                    probe,
                    connection: connection.clone(),
                    suffix: suffix.clone(),
                    group: group.clone(),
                    counting: counting.clone(),
                };
                Box::pin(async move {
                    let (actor, _) = Actor::spawn_linked(None, RedisDlq, args, supervisor).await?;
                    Ok(actor)
                })
            });
            tree.dlq(spawn);
        }
        // Stream entries are not assigned and revoked: nothing is ever fenced.
        let writer = batch_writer(self.sink, self.retry, Fence::new());
        let decoder_slots = tree.lanes(self.lanes, writer, self.buffer, self.decode);
        let dlq_slot = tree.dlq_slot();
        let consumer_stop = self.source.drain_timeout + STOP_AFTER_DRAIN;
        for i in 0..self.source.consumers.max(1) {
            let id = format!("consumer-{i}");
            let (decoders, connection, settings) = (
                decoder_slots.clone(),
                self.connection.clone(),
                self.source.clone(),
            );
            let dlq = dlq_slot.clone();
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
            tree.push(&id, spec);
        }
        tree.finish()
    }
}
