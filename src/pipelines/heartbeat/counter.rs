//! `Counter`: counts beats into the admin tree and `actord_heartbeat_beats_total`.

use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::debug;

use crate::telemetry::names;

pub struct Counter;

pub struct CounterArgs {
    pub probe: Probe,
}

pub enum CounterMsg {
    Beat,
}

pub struct CounterState {
    probe: Probe,
    beats: u64,
}

impl Actor for Counter {
    type Msg = CounterMsg;
    type State = CounterState;
    type Arguments = CounterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(CounterState {
            probe: args.probe,
            beats: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CounterMsg::Beat => {
                state.beats += 1;
                state.probe.progress(1, 0);
                state.probe.set_counter("beats", state.beats);
                metrics::counter!(names::HEARTBEAT_BEATS_TOTAL).increment(1);
                debug!(path = %state.probe.path(), beats = state.beats, "beat");
            }
        }
        Ok(())
    }
}
