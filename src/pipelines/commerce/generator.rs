//! `Generator`: new users on an S-curve (about 10 per 10 s at first, then fewer) and a new
//! product every 6–8 s, published to the `users` and `products` topics (never written to the
//! database here: the consumers do that).

use std::time::Duration;

use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use tokio::time::Instant;

use super::config::GeneratorSettings;
use super::names;
use super::propensity::Rng;
use super::synth;
use crate::sources::kafka::producer::{Publication, PublisherMsg};

/// The users' step: each one publishes the curve's rate for 10 s.
const USER_STEP: Duration = Duration::from_secs(10);

pub struct Generator;

pub struct GeneratorArgs {
    pub probe: Probe,
    pub publisher: ActorRef<PublisherMsg>,
    pub users_topic: String,
    pub products_topic: String,
    pub settings: GeneratorSettings,
}

/// How often a paused generator looks whether it was resumed.
pub(super) const PAUSED_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

pub enum GeneratorMsg {
    Users,
    Product,
}

pub struct GeneratorState {
    args: GeneratorArgs,
    rng: Rng,
    started: Instant,
    /// The fraction of a user the curve owes from earlier steps.
    carry: f64,
}

/// Publishes `value` as JSON under `key`.
pub fn publish<T: Serialize>(
    publisher: &ActorRef<PublisherMsg>,
    topic: &str,
    key: &str,
    value: &T,
    kind: &'static str,
) -> Result<(), ActorProcessingErr> {
    let publication = Publication {
        topic: topic.to_owned(),
        key: Some(key.as_bytes().to_vec()),
        payload: serde_json::to_vec(value)?,
        headers: Vec::new(),
    };
    publisher
        .cast(PublisherMsg::Publish(publication, None))
        .map_err(|_| "the publisher is gone")?;
    metrics::counter!(names::COMMERCE_PUBLISHED_TOTAL, "kind" => kind).increment(1);
    Ok(())
}

/// A wait drawn uniformly between the two bounds.
pub fn between(rng: &mut Rng, (lo, hi): (Duration, Duration)) -> Duration {
    let ms = rng.range(lo.as_millis() as i64, hi.as_millis() as i64);
    Duration::from_millis(ms.max(1) as u64)
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
        for kind in ["user", "product", "order"] {
            metrics::counter!(names::COMMERCE_PUBLISHED_TOTAL, "kind" => kind).increment(0);
        }
        let mut rng = Rng::from_clock();
        let _ = myself.cast(GeneratorMsg::Users);
        let first = between(&mut rng, args.settings.product_interval);
        myself.send_after(first, || GeneratorMsg::Product);
        Ok(GeneratorState {
            args,
            rng,
            started: Instant::now(),
            carry: 0.0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.args.probe.is_paused() {
            // Paused: nothing is published; the message comes back after a while.
            myself.send_after(PAUSED_RECHECK, move || message);
            return Ok(());
        }
        let now = chrono::Utc::now();
        match message {
            GeneratorMsg::Users => {
                let due = synth::users_per_10s(&state.args.settings, state.started.elapsed())
                    + state.carry;
                let n = due.floor();
                state.carry = due - n;
                for _ in 0..n as u64 {
                    let u = synth::user(&mut state.rng, now);
                    publish(
                        &state.args.publisher,
                        &state.args.users_topic,
                        &u.user_id,
                        &u,
                        "user",
                    )?;
                    state.args.probe.progress(1, 0);
                }
                myself.send_after(USER_STEP, || GeneratorMsg::Users);
            }
            GeneratorMsg::Product => {
                let p = synth::product(&mut state.rng, now);
                publish(
                    &state.args.publisher,
                    &state.args.products_topic,
                    &p.product_id,
                    &p,
                    "product",
                )?;
                state.args.probe.progress(1, 0);
                let next = between(&mut state.rng, state.args.settings.product_interval);
                myself.send_after(next, || GeneratorMsg::Product);
            }
        }
        Ok(())
    }
}
