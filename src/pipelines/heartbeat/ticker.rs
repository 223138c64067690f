//! `Ticker`: sends a beat to the counter every interval.

use std::time::Duration;

use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::counter::CounterMsg;

pub struct Ticker;

pub struct TickerArgs {
    pub probe: Probe,
    pub interval: Duration,
    pub counter: ActorRef<CounterMsg>,
}

pub enum TickerMsg {
    Tick,
}

pub struct TickerState {
    args: TickerArgs,
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
        Ok(TickerState { args })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TickerMsg::Tick => {
                // A counter that went away fails this send; the restart picks up the new one.
                state
                    .args
                    .counter
                    .cast(CounterMsg::Beat)
                    .map_err(|_| "the counter is gone")?;
                state.args.probe.progress(1, 0);
                myself.send_after(state.args.interval, || TickerMsg::Tick);
            }
        }
        Ok(())
    }
}
