//! `PipelineMonitor`: shows, every second, what the pipeline's parts share: the T2A circuit
//! breaker (`t2a_circuit_open`, unhealthy while open) and the drain counters of the run this
//! process drives (`run_id`, `<stage>_enqueued`, `_done`, `_dead_lettered`, `_remaining`), as
//! counters of `/adaptive-card/monitor` in `/api/tree` and as gauges.

use std::sync::Arc;
use std::time::Duration;

use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::names;
use super::status::{Breaker, RunStatus, StageCounts};

const EVERY: Duration = Duration::from_secs(1);

pub struct PipelineMonitor;

pub struct MonitorArgs {
    pub probe: Probe,
    pub breaker: Arc<Breaker>,
    pub runs: Arc<RunStatus>,
}

pub enum MonitorMsg {
    Show,
}

fn show_stage(probe: &Probe, stage: &'static str, c: &StageCounts) {
    for (state, v) in [
        ("enqueued", c.enqueued),
        ("done", c.done),
        ("dead_lettered", c.dead_lettered),
        ("remaining", c.remaining),
    ] {
        probe.set_counter(&format!("{stage}_{state}"), v);
        metrics::gauge!(names::ADAPTIVE_CARD_RUN_JOBS, "stage" => stage, "state" => state)
            .set(v as f64);
    }
}

fn show(args: &MonitorArgs) {
    let open = args.breaker.is_open();
    args.probe.set_counter("t2a_circuit_open", u64::from(open));
    args.probe
        .set_counter("t2a_failures_in_a_row", u64::from(args.breaker.failures()));
    metrics::gauge!(names::ADAPTIVE_CARD_CIRCUIT_OPEN, "dependency" => "t2a").set(if open {
        1.0
    } else {
        0.0
    });
    args.probe.set_unhealthy(open.then(|| {
        format!(
            "T2A circuit open: sales-org workers pause; last error: {}",
            args.breaker.last_error().unwrap_or_default()
        )
    }));
    let run = args.runs.get().unwrap_or_default();
    args.probe.set_counter("run_id", run.run_id.max(0) as u64);
    show_stage(&args.probe, "sales_org", &run.sales_org);
    show_stage(&args.probe, "adaptive_card", &run.adaptive_card);
}

impl Actor for PipelineMonitor {
    type Msg = MonitorMsg;
    type State = MonitorArgs;
    type Arguments = MonitorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        show(&args);
        myself.send_after(EVERY, || MonitorMsg::Show);
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MonitorMsg::Show => {
                show(state);
                myself.send_after(EVERY, || MonitorMsg::Show);
            }
        }
        Ok(())
    }
}
