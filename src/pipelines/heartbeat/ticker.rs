//! `Ticker`: publishes a beat every interval.

use std::time::Duration;

use actord_actors::observe::rfc3339;
use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::sources::kafka::producer::{Publication, PublisherMsg};

pub struct Ticker;

pub struct TickerArgs {
    pub probe: Probe,
    pub interval: Duration,
    pub publisher: ActorRef<PublisherMsg>,
    pub topic: String,
}

pub enum TickerMsg {
    Tick,
}

pub struct TickerState {
    args: TickerArgs,
    seq: u64,
}

impl Actor for Ticker {
    type Msg = TickerMsg;
    type State = TickerState;
    type Arguments = TickerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_after(args.interval, || TickerMsg::Tick);
        Ok(TickerState { args, seq: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            // A paused pipeline publishes no beats; the next one comes an interval after the
            // resume.
            TickerMsg::Tick if state.args.probe.is_paused() => {
                myself.send_after(state.args.interval, || TickerMsg::Tick);
            }
            TickerMsg::Tick => {
                state.seq += 1;
                let payload = serde_json::json!({"seq": state.seq, "at": rfc3339(std::time::SystemTime::now())});
                let publication = Publication {
                    topic: state.args.topic.clone(),
                    key: None,
                    payload: serde_json::to_vec(&payload)?,
                    headers: Vec::new(),
                };
                // A publisher that went away fails this send; the restart picks up the new one.
                state
                    .args
                    .publisher
                    .cast(PublisherMsg::Publish(publication, None))
                    .map_err(|_| "the publisher is gone")?;
                state.args.probe.progress(1, 0);
                state.args.probe.set_counter("beats", state.seq);
                myself.send_after(state.args.interval, || TickerMsg::Tick);
            }
        }
        Ok(())
    }
}
