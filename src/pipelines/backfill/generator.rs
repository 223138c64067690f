//! `/backfill/demo`: synthetic FMS temperature and humidity readings published into the
//! topic, so a fresh install has something to archive. Runs only against the embedded broker
//! (the configuration switches `demo` off for a real cluster unless `--demo-into-cluster`).
//! About one reading in 500 carries no timestamp, to show the dead-letter path. At start it
//! publishes three days of history (one reading per sensor every five minutes) and waits until
//! the broker holds it, so the run at start has days to archive.

use std::time::Duration;

use actord_actors::{ActorPath, ChildSpec, Probe};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;

use super::BackfillConfig;
use crate::config::Config;
use crate::pipelines::Resources;
use crate::sources::kafka::producer::{Publication, PublisherMsg, PublisherSlot};

const SENSORS: [&str; 4] = ["fms-01", "fms-02", "fms-03", "fms-04"];
const TICK: Duration = Duration::from_millis(100);

/// The demo subtree; `ready` turns true once the history is in the topic.
pub fn child(
    root: &ActorPath,
    config: &Config,
    resources: &Resources,
    ready: tokio::sync::watch::Sender<bool>,
) -> ChildSpec {
    let ready = std::sync::Arc::new(ready);
    let slot = PublisherSlot::default();
    let publisher = slot.child(resources.kafka.clone());
    let c = config.pipelines.get::<BackfillConfig>().clone();
    let generator = ChildSpec::worker("generator", move |ctx| {
        let publisher = slot.get();
        let (topic, rate, ready) = (c.topic.clone(), c.demo_rate, ready.clone());
        async move {
            let args = SensorsArgs {
                probe: ctx.probe,
                publisher: publisher?,
                topic,
                rate,
                ready,
            };
            let (actor, _) = Actor::spawn_linked(None, Sensors, args, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    });
    crate::pipelines::demo_subtree(root, config, publisher, generator)
}

pub struct Sensors;

pub struct SensorsArgs {
    probe: Probe,
    publisher: ActorRef<PublisherMsg>,
    topic: String,
    /// Readings per second.
    rate: u32,
    ready: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

pub enum SensorsMsg {
    Tick,
}

pub struct SensorsState {
    args: SensorsArgs,
    seq: u64,
}

impl Actor for Sensors {
    type Msg = SensorsMsg;
    type State = SensorsState;
    type Arguments = SensorsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SensorsState { args, seq: 0 };
        let now = chrono::Utc::now();
        let mut waits = Vec::new();
        for step in (1..=HISTORY_STEPS).rev() {
            let at = now - chrono::TimeDelta::minutes(5 * step);
            for _ in SENSORS {
                let (tx, rx) = tokio::sync::oneshot::channel();
                state.publish(at, Some(ractor::RpcReplyPort::from(tx)))?;
                waits.push(rx);
            }
        }
        for rx in waits {
            match rx.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("publishing the demo history: {e}").into()),
                Err(_) => return Err("the publisher stopped".into()),
            }
        }
        state.args.ready.send_replace(true);
        myself.send_after(TICK, || SensorsMsg::Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SensorsMsg::Tick = message;
        let per_tick = (state.args.rate as u64).div_ceil(10);
        let now = chrono::Utc::now();
        for _ in 0..per_tick {
            state.publish(now, None)?;
        }
        myself.send_after(TICK, || SensorsMsg::Tick);
        Ok(())
    }
}

/// Five-minute steps of history published at start: three days.
const HISTORY_STEPS: i64 = 3 * 24 * 12;

impl SensorsState {
    /// Publishes the next reading, taken at `at`.
    fn publish(
        &mut self,
        at: chrono::DateTime<chrono::Utc>,
        done: Option<ractor::RpcReplyPort<crate::sources::kafka::producer::Delivered>>,
    ) -> Result<(), ActorProcessingErr> {
        self.seq += 1;
        let seq = self.seq;
        let sensor = SENSORS[(seq as usize) % SENSORS.len()];
        // A daily wave plus a little noise from the sequence number.
        let wave = ((at.timestamp() % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU).sin();
        let noise = ((seq.wrapping_mul(2_654_435_761)) % 1000) as f64 / 1000.0 - 0.5;
        let value = if seq % 500 == 0 {
            json!({"sensor_id": sensor, "temperature": 21.0, "humidity": 45.0, "seq": seq})
        } else {
            json!({
                "sensor_id": sensor,
                "temperature": ((22.0 + 4.0 * wave + noise) * 100.0).round() / 100.0,
                "humidity": ((50.0 - 10.0 * wave + 2.0 * noise) * 100.0).round() / 100.0,
                "battery": 100 - (seq / 1000 % 100) as i64,
                "seq": seq,
                "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
        };
        let publication = Publication {
            topic: self.args.topic.clone(),
            key: Some(sensor.as_bytes().to_vec()),
            payload: serde_json::to_vec(&value)?,
            headers: Vec::new(),
        };
        self.args
            .publisher
            .cast(PublisherMsg::Publish(publication, done))
            .map_err(|_| "the publisher is gone")?;
        self.args.probe.progress(1, 0);
        Ok(())
    }
}
