//! `Publisher`: an idempotent Kafka producer for pipelines that publish records.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::warn;

use actord_actors::Probe;

use super::dlq::{idempotent_producer, owned_headers};
use super::KafkaConnection;
use crate::telemetry::names;

pub struct Publisher;

/// One record to publish.
#[derive(Clone, Debug)]
pub struct Publication {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Where a published record landed: (partition, offset).
pub type Delivered = Result<(i32, i64), String>;

pub enum PublisherMsg {
    /// Publish; `done` (if given) learns where the record landed once the broker holds it.
    Publish(Publication, Option<RpcReplyPort<Delivered>>),
}

pub struct PublisherArgs {
    pub probe: Probe,
    pub connection: KafkaConnection,
}

pub struct PublisherState {
    producer: FutureProducer,
    probe: Probe,
    path: String,
}

impl Actor for Publisher {
    type Msg = PublisherMsg;
    type State = PublisherState;
    type Arguments = PublisherArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let producer = idempotent_producer(&args.connection)
            .map_err(|e| format!("cannot create the producer: {e}"))?;
        let path = args.probe.path().to_string();
        Ok(PublisherState {
            producer,
            probe: args.probe,
            path,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let PublisherMsg::Publish(p, done) = message;
        let mut record = FutureRecord::to(&p.topic)
            .payload(&p.payload)
            .headers(owned_headers(&p.headers, 0));
        if let Some(key) = &p.key {
            record = record.key(key);
        }
        let bytes = p.payload.len() as u64;
        match state.producer.send_result(record) {
            Ok(delivery) => {
                let probe = state.probe.clone();
                let path = state.path.clone();
                let topic = p.topic.clone();
                tokio::spawn(async move {
                    let result = match delivery.await {
                        Ok(Ok(d)) => {
                            probe.progress(1, bytes);
                            metrics::counter!(names::RECORDS_PRODUCED_TOTAL, "path" => path, "topic" => topic).increment(1);
                            Ok((d.partition, d.offset))
                        }
                        Ok(Err((e, _))) => {
                            warn!(path = %path, error = %e, "publish failed");
                            Err(e.to_string())
                        }
                        Err(_) => Err("the producer was dropped".to_owned()),
                    };
                    if let Some(done) = done {
                        let _ = done.send(result);
                    }
                });
            }
            Err((e, _)) => {
                if let Some(done) = done {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
        Ok(())
    }
}

/// Where the running publisher of a subtree is found by the actors started after it.
#[derive(Clone, Default)]
pub struct PublisherSlot(std::sync::Arc<std::sync::Mutex<Option<ActorRef<PublisherMsg>>>>);

impl PublisherSlot {
    /// A `publisher` child that fills this slot each time it starts.
    pub fn child(&self, connection: KafkaConnection) -> actord_actors::ChildSpec {
        let slot = self.clone();
        actord_actors::ChildSpec::worker("publisher", move |ctx| {
            let (connection, slot) = (connection.clone(), slot.clone());
            async move {
                let args = PublisherArgs {
                    probe: ctx.probe,
                    connection,
                };
                let (actor, _) = Actor::spawn_linked(None, Publisher, args, ctx.supervisor).await?;
                *slot.0.lock().expect("slot lock") = Some(actor.clone());
                Ok(actor.get_cell())
            }
        })
    }

    /// The running publisher, for a child that starts after it.
    pub fn get(&self) -> Result<ActorRef<PublisherMsg>, ractor::SpawnErr> {
        self.0
            .lock()
            .expect("slot lock")
            .clone()
            .filter(|a| a.get_status() < ractor::ActorStatus::Stopping)
            .ok_or_else(|| ractor::SpawnErr::StartupFailed("the publisher is not running".into()))
    }
}
