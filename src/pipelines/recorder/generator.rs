//! `Generator`: synthetic market data for the demo — a random walk of prices for a few
//! symbols, published as ticks and order books at a steady rate.

use std::time::Duration;

use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;

use super::model::is_orderbook_topic;
use crate::sources::kafka::producer::{Publication, PublisherMsg};

const SYMBOLS: [&str; 5] = ["005930", "000660", "035420", "051910", "068270"];
const TICK: Duration = Duration::from_millis(100);

pub struct Generator;

pub struct GeneratorArgs {
    pub probe: Probe,
    pub publisher: ActorRef<PublisherMsg>,
    pub topics: Vec<String>,
    /// Records per second.
    pub rate: u32,
}

pub enum GeneratorMsg {
    Tick,
}

pub struct GeneratorState {
    args: GeneratorArgs,
    prices: Vec<f64>,
    seq: u64,
    rng: u64,
}

impl GeneratorState {
    fn next(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn publish(
        &self,
        topic: &str,
        key: &str,
        value: serde_json::Value,
    ) -> Result<(), ActorProcessingErr> {
        let publication = Publication {
            topic: topic.to_owned(),
            key: Some(key.as_bytes().to_vec()),
            payload: serde_json::to_vec(&value)?,
            headers: Vec::new(),
        };
        self.args
            .publisher
            .cast(PublisherMsg::Publish(publication, None))
            .map_err(|_| "the publisher is gone".into())
    }
}

impl Actor for Generator {
    type Msg = GeneratorMsg;
    type State = GeneratorState;
    type Arguments = GeneratorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_after(TICK, || GeneratorMsg::Tick);
        Ok(GeneratorState {
            args,
            prices: vec![71_000.0, 180_000.0, 210_000.0, 350_000.0, 170_000.0],
            seq: 0,
            rng: 0x2545_f491_4f6c_dd1d,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let GeneratorMsg::Tick = message;
        // A paused pipeline's demo publishes nothing (the embedded broker would only drop
        // what nobody reads).
        if state.args.probe.is_paused() {
            myself.send_after(TICK, || GeneratorMsg::Tick);
            return Ok(());
        }
        let per_tick = (state.args.rate as u64).div_ceil(10);
        let now_ms = chrono::Utc::now().timestamp_millis();
        for _ in 0..per_tick {
            state.seq += 1;
            let i = (state.seq as usize) % SYMBOLS.len();
            let step = (state.next() - 0.5) * 0.002;
            let open = state.prices[i];
            state.prices[i] = (open * (1.0 + step)).max(1.0);
            let price = (state.prices[i] * 100.0).round() / 100.0;
            let topics = state.args.topics.clone();
            for topic in &topics {
                let value = if is_orderbook_topic(topic) {
                    let level = |k: f64| json!({"price": (price + k * 10.0).round(), "quantity": 1 + (state.seq % 7)});
                    json!({"symbol": SYMBOLS[i], "timestamp": now_ms, "bids": [level(-1.0), level(-2.0)], "asks": [level(1.0), level(2.0)]})
                } else {
                    json!({
                        "symbol": SYMBOLS[i], "price": price, "volume": 1 + (state.seq % 50) as i64,
                        "change": ((price - 70_000.0) * 100.0).round() / 100.0,
                        "change_rate": (((price / open) - 1.0) * 10_000.0).round() / 100.0,
                        "timestamp": now_ms,
                    })
                };
                state.publish(topic, SYMBOLS[i], value)?;
            }
            state.args.probe.progress(1, 0);
        }
        myself.send_after(TICK, || GeneratorMsg::Tick);
        Ok(())
    }
}
