//! The built-in heartbeat pipeline: a ticker beats on an interval and a counter counts the
//! beats. It gives a fresh install something to supervise, shows the source → sink wiring every
//! pipeline uses (the sink starts first, the source finds it through a shared slot), and serves
//! as a smoke test of the runtime.

mod counter;
mod ticker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actord_actors::{ActorPath, ChildSpec, Status, Strategy};
use ractor::{Actor, ActorRef};

use super::{HealthCheck, Pipeline, PipelineDef};
use crate::config::raw::RawHeartbeat;
use crate::config::{Check, Config, EnvKey, Unit};
use counter::{Counter, CounterArgs, CounterMsg};
use ticker::{Ticker, TickerArgs};

pub const DEF: PipelineDef = PipelineDef {
    name: "heartbeat",
    summary: "a ticker beating every interval into a counter (smoke test of the runtime)",
    env: &[EnvKey::new("INTERVAL_MS", "interval", Unit::Millis)],
    build,
};

#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub interval: Duration,
}

impl HeartbeatConfig {
    pub(crate) fn validate(raw: &RawHeartbeat, check: &mut Check<'_>) -> Self {
        HeartbeatConfig {
            interval: check.positive_duration(
                "pipelines.heartbeat.interval",
                raw.interval.as_deref(),
                Duration::from_secs(1),
            ),
        }
    }
}

/// The counter's current address, set by each incarnation of the counter.
type Slot = Arc<Mutex<Option<ActorRef<CounterMsg>>>>;

fn build(config: &Config) -> anyhow::Result<Pipeline> {
    let root = ActorPath::root().child(DEF.name);
    let interval = config.pipelines.heartbeat.interval;
    let slot: Slot = Arc::default();

    let counter_slot = slot.clone();
    let counter = ChildSpec::worker("counter", move |ctx| {
        let slot = counter_slot.clone();
        async move {
            let (actor, _) = Actor::spawn_linked(
                None,
                Counter,
                CounterArgs { probe: ctx.probe },
                ctx.supervisor,
            )
            .await?;
            *slot.lock().expect("slot lock") = Some(actor.clone());
            Ok(actor.get_cell())
        }
    });
    let ticker = ChildSpec::worker("ticker", move |ctx| {
        let counter = slot.lock().expect("slot lock").clone();
        async move {
            let counter = counter.ok_or_else(|| {
                ractor::SpawnErr::StartupFailed("the counter is not running".into())
            })?;
            let args = TickerArgs {
                probe: ctx.probe,
                interval,
                counter,
            };
            let (actor, _) = Actor::spawn_linked(None, Ticker, args, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    });
    let children = vec![
        config.supervision.child(&root.child("counter"), counter),
        config.supervision.child(&root.child("ticker"), ticker),
    ];
    // The ticker holds the counter's address: when the counter restarts, so must the ticker.
    let spec = config.supervision.child(
        &root,
        ChildSpec::supervisor(
            DEF.name,
            config
                .supervision
                .supervisor_spec(&root, Strategy::RestForOne),
            children,
        ),
    );
    let beating = |path: ActorPath| -> HealthCheck {
        HealthCheck {
            component: if path.name() == "ticker" {
                "ticker"
            } else {
                "counter"
            },
            check: Arc::new(move |registry| {
                registry.get(&path).is_some_and(|p| {
                    p.status() == Status::Running
                        && p.since_progress(tokio::time::Instant::now())
                            .is_none_or(|d| d <= interval * 3 + Duration::from_secs(1))
                })
            }),
        }
    };
    Ok(Pipeline {
        spec,
        health: vec![
            beating(root.child("ticker")),
            beating(root.child("counter")),
        ],
    })
}
