//! `Decoder`: turns source records into typed records and routes them to buffer lanes.
//!
//! A partition always goes to the same lane (and so the same writer), which keeps its batches
//! in offset order. Poison records travel in their partition's lane to the writer, which
//! dead-letters them before writing anything after them; a path that does not own the DLQ
//! acknowledges them at once instead.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::buffer::BufferMsg;
use crate::names;
use crate::observe::Probe;
use crate::record::{DeadLetter, Envelope, Item, Poison, SourceMsg, SourceRecord};

pub type DecodeFn<R> = Arc<dyn Fn(&SourceRecord) -> Result<R, Poison> + Send + Sync>;

pub struct Decoder<R>(std::marker::PhantomData<fn() -> R>);

impl<R> Default for Decoder<R> {
    fn default() -> Self {
        Decoder(std::marker::PhantomData)
    }
}

pub struct DecoderArgs<R: Send + 'static> {
    pub probe: Probe,
    pub decode: DecodeFn<R>,
    pub lanes: Vec<ActorRef<BufferMsg<R>>>,
    /// Whether this path writes dead letters for its input.
    pub owns_dlq: bool,
}

pub struct DecoderState<R: Send + 'static> {
    args: DecoderArgs<R>,
    path: String,
}

/// The lane of a partition: stable for the life of the process.
pub fn lane_of(topic: &str, partition: i32, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    partition.hash(&mut h);
    (h.finish() % lanes.max(1) as u64) as usize
}

impl<R: Send + 'static> Actor for Decoder<R> {
    type Msg = SourceMsg;
    type State = DecoderState<R>;
    type Arguments = DecoderArgs<R>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        if args.lanes.is_empty() {
            return Err("a decoder needs at least one lane".into());
        }
        let path = args.probe.path().to_string();
        Ok(DecoderState { args, path })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let lanes = &state.args.lanes;
        match message {
            SourceMsg::Records(records, acker) => {
                let n = records.len() as u64;
                let mut routed: Vec<Vec<Item<R>>> = (0..lanes.len()).map(|_| Vec::new()).collect();
                let mut poison = 0u64;
                let mut skipped = Vec::new();
                // Records come in runs of one partition: hash once per run.
                let mut last: Option<(crate::record::Topic, i32, usize)> = None;
                for source in records {
                    let (topic, partition) = (source.origin.topic, source.origin.partition);
                    let lane = match last {
                        Some((t, p, lane)) if t == topic && p == partition => lane,
                        _ => {
                            let lane = lane_of(topic.as_str(), partition, lanes.len());
                            last = Some((topic, partition, lane));
                            lane
                        }
                    };
                    match (state.args.decode)(&source) {
                        Ok(record) => routed[lane].push(Item::Good(Envelope {
                            record,
                            bytes: source.size(),
                            source,
                            acker: acker.clone(),
                        })),
                        Err(p) => {
                            poison += 1;
                            if state.args.owns_dlq {
                                routed[lane].push(Item::Poison(DeadLetter {
                                    source,
                                    acker: acker.clone(),
                                    poison: p,
                                    stage: "decode",
                                    retry_count: 0,
                                }));
                            } else {
                                skipped.push(source.origin);
                            }
                        }
                    }
                }
                if poison > 0 {
                    metrics::counter!(names::RECORDS_POISON_TOTAL, "path" => state.path.clone())
                        .increment(poison);
                }
                if !skipped.is_empty() {
                    metrics::counter!(names::RECORDS_SKIPPED_TOTAL, "path" => state.path.clone())
                        .increment(skipped.len() as u64);
                    acker.ack(skipped);
                }
                for (lane, items) in routed.into_iter().enumerate() {
                    if !items.is_empty() {
                        lanes[lane]
                            .cast(BufferMsg::Push(items))
                            .map_err(|_| "a buffer is gone")?;
                    }
                }
                state.args.probe.progress(n, 0);
            }
            SourceMsg::Revoked(revoked) => {
                for lane in lanes {
                    lane.cast(BufferMsg::Discard(revoked.clone()))
                        .map_err(|_| "a buffer is gone")?;
                }
            }
            SourceMsg::FlushNow => {
                for lane in lanes {
                    lane.cast(BufferMsg::FlushNow)
                        .map_err(|_| "a buffer is gone")?;
                }
            }
        }
        Ok(())
    }
}
