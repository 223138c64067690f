//! The scheduled entry `run` and the subtree each run starts under `/backfill`:
//! `/backfill/run` (rest_for_one, started sink first) with `dlq` (the dead-letter producer of
//! `<topic>-dlq`), `writer-0` (the shared writer over the shared Parquet object sink) and
//! `buffer-0`. The run's reader feeds the buffer and commits what the writer acknowledges;
//! when the run ends the subtree is removed again, so between runs `/backfill` holds only its
//! scheduler (and the demo generator).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actord_actors::buffer::{Buffer, BufferArgs, BufferLimits, BufferMsg};
use actord_actors::record::DlqMsg;
use actord_actors::scheduler::{
    Job, RunSummary, Scheduler, SchedulerArgs, SchedulerConfig, SchedulerHandle,
};
use actord_actors::writer::{RetryPolicy, Writer, WriterArgs, WriterMsg};
use actord_actors::{ActorPath, ChildSpec, Fence, Probe, Restart, Strategy, SupervisorMsg};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef, ActorStatus};
use tracing::{error, info, warn};

use super::format::Readings;
use super::names;
use super::reading::Reading;
use super::run::{self, Downstream, Report, RunSettings};
use crate::config::Supervision;
use crate::sinks::objects::sink::{Objects, ParquetSink, Written};
use crate::sources::kafka::dlq::{DlqArgs, DlqProducer};
use crate::sources::kafka::path::{STOP_DLQ, STOP_QUICK};
use crate::sources::kafka::KafkaConnection;

/// The entry's name: its lease key is `backfill/run`.
pub const ENTRY: &str = "run";

/// The id of a run's subtree under `/backfill`.
const RUN: &str = "run";

/// How long a call to the pipeline's supervisor may take (a subtree's start or stop).
const CALL_TIMEOUT: Duration = Duration::from_secs(90);

type Cell = Arc<Mutex<Option<ActorCell>>>;

/// Opens the shared Parquet object sink for one run.
pub type OpenObjects = Box<dyn Fn() -> Arc<Objects<Readings>> + Send + Sync>;

/// Everything a run needs besides its settings: the shared sink, the pipeline's supervisor,
/// and what the subtree's actors are wired with.
pub struct Runner {
    pub settings: RunSettings,
    pub connection: KafkaConnection,
    pub dlq_suffix: String,
    /// Each run opens the sink anew: its [`Objects::written`] is then the run's summary.
    pub objects: OpenObjects,
    /// The sink of the current (or last) run, for the health component.
    pub current: Arc<Mutex<Option<Arc<Objects<Readings>>>>>,
    pub supervision: Supervision,
    pub root: ActorPath,
    /// The `/backfill` supervisor, recorded by the scheduler's start.
    pub parent: Cell,
    /// With the demo generator: true once its history is in the topic. A run waits for it (up
    /// to a minute), so the run at start archives the history instead of an empty topic.
    pub demo_ready: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The addresses a run's subtree fills in as its actors start, and the run's sink.
#[derive(Clone)]
struct Slots {
    buffer: Arc<Mutex<Option<ActorRef<BufferMsg<Reading>>>>>,
    supervisor: Cell,
    writer_probe: Arc<Mutex<Option<Probe>>>,
    objects: Arc<Objects<Readings>>,
}

impl Slots {
    fn new(objects: Arc<Objects<Readings>>) -> Self {
        Slots {
            buffer: Arc::default(),
            supervisor: Arc::default(),
            writer_probe: Arc::default(),
            objects,
        }
    }
}

impl Downstream for Slots {
    fn written(&self) -> Written {
        self.objects.written()
    }

    fn buffer(&self) -> Option<ActorRef<BufferMsg<Reading>>> {
        self.buffer
            .lock()
            .expect("slot lock")
            .clone()
            .filter(|b| b.get_status() < ActorStatus::Stopping)
    }

    fn gave_up(&self) -> Option<String> {
        let sup = self.supervisor.lock().expect("slot lock").clone()?;
        if sup.get_status() < ActorStatus::Stopping {
            return None;
        }
        let last = self
            .writer_probe
            .lock()
            .expect("slot lock")
            .as_ref()
            .and_then(|p| p.last_error())
            .map(|e| e.message)
            .unwrap_or_else(|| "no error recorded".to_owned());
        Some(format!(
            "the run's subtree gave up after its restart budget; last writer error: {last}"
        ))
    }
}

impl Runner {
    /// The subtree of one run, writing into `slots`' sink.
    fn subtree(&self, slots: &Slots) -> ChildSpec {
        let root = self.root.child(RUN);
        let sup = &self.supervision;
        let dlq_slot: Arc<Mutex<Option<ActorRef<DlqMsg>>>> = Arc::default();
        let writer_slot: Arc<Mutex<Option<ActorRef<WriterMsg<Reading>>>>> = Arc::default();
        let (connection, suffix, topic) = (
            self.connection.clone(),
            self.dlq_suffix.clone(),
            self.settings.topic.clone(),
        );
        let (out, supervisor) = (dlq_slot.clone(), slots.supervisor.clone());
        let dlq = ChildSpec::worker("dlq", move |ctx| {
            *supervisor.lock().expect("slot lock") = Some(ctx.supervisor.clone());
            let args = DlqArgs {
                probe: ctx.probe,
                connection: connection.clone(),
                suffix: suffix.clone(),
                topics: vec![topic.clone()],
            };
            let out = out.clone();
            async move {
                let (actor, _) =
                    Actor::spawn_linked(None, DlqProducer, args, ctx.supervisor).await?;
                *out.lock().expect("slot lock") = Some(actor.clone());
                Ok(actor.get_cell())
            }
        })
        .shutdown(STOP_DLQ);
        let sink = slots.objects.factory();
        let (dlq_in, out, probe_out) = (
            dlq_slot.clone(),
            writer_slot.clone(),
            slots.writer_probe.clone(),
        );
        let writer = ChildSpec::worker("writer-0", move |ctx| {
            let dlq = dlq_in
                .lock()
                .expect("slot lock")
                .clone()
                .filter(|d| d.get_status() < ActorStatus::Stopping);
            *probe_out.lock().expect("slot lock") = Some(ctx.probe.clone());
            let args = WriterArgs {
                probe: ctx.probe,
                sink: sink.clone(),
                dlq,
                retry: RetryPolicy::default(),
                fence: Fence::new(),
            };
            let out = out.clone();
            async move {
                if args.dlq.is_none() {
                    return Err(ractor::SpawnErr::StartupFailed(
                        "the dead-letter producer is not running".into(),
                    ));
                }
                let (actor, _) = Actor::spawn_linked(
                    None,
                    Writer::<Reading, ParquetSink<Readings>>::default(),
                    args,
                    ctx.supervisor,
                )
                .await?;
                *out.lock().expect("slot lock") = Some(actor.clone());
                Ok(actor.get_cell())
            }
        });
        let limits = BufferLimits {
            max_records: self.settings.batch_size,
            max_bytes: 256 << 20,
            // The reader flushes at the end of the input; age plays no part in a run.
            max_age: Duration::from_secs(3600),
        };
        let (writer_in, out) = (writer_slot.clone(), slots.buffer.clone());
        let buffer = ChildSpec::worker("buffer-0", move |ctx| {
            let writer = writer_in
                .lock()
                .expect("slot lock")
                .clone()
                .filter(|w| w.get_status() < ActorStatus::Stopping);
            let out = out.clone();
            async move {
                let writer = writer.ok_or_else(|| {
                    ractor::SpawnErr::StartupFailed("the writer is not running".into())
                })?;
                let args = BufferArgs {
                    probe: ctx.probe,
                    limits,
                    writer,
                };
                let (actor, _) =
                    Actor::spawn_linked(None, Buffer::<Reading>::default(), args, ctx.supervisor)
                        .await?;
                *out.lock().expect("slot lock") = Some(actor.clone());
                Ok(actor.get_cell())
            }
        })
        .shutdown(STOP_QUICK);
        let children = vec![
            sup.child(&root.child("dlq"), dlq),
            sup.child(&root.child("writer-0"), writer),
            sup.child(&root.child("buffer-0"), buffer),
        ];
        sup.child(
            &root,
            ChildSpec::supervisor(
                RUN,
                sup.supervisor_spec(&root, Strategy::RestForOne),
                children,
            )
            .wiring(Strategy::RestForOne),
        )
        // A run's subtree lives as long as its run; the run decides what a failure means.
        .restart(Restart::Temporary)
    }

    /// One run: start the subtree, read, remove the subtree.
    pub async fn run(
        &self,
        report: Report,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<run::Summary, String> {
        if let Some(ready) = &self.demo_ready {
            let mut ready = ready.clone();
            let _ = tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| *r)).await;
        }
        let parent: ActorRef<SupervisorMsg> = self
            .parent
            .lock()
            .expect("slot lock")
            .clone()
            .ok_or("the backfill pipeline is not running")?
            .into();
        let objects = (self.objects)();
        *self.current.lock().expect("slot lock") = Some(objects.clone());
        let slots = Slots::new(objects);
        let spec = self.subtree(&slots);
        // A subtree left by a run that was dropped (its process kept running) goes first.
        let _ = parent
            .call(
                |r| SupervisorMsg::RemoveChild(RUN.to_owned(), r),
                Some(CALL_TIMEOUT),
            )
            .await;
        match parent
            .call(|r| SupervisorMsg::AddChild(spec, r), Some(CALL_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(Ok(()))) => {}
            Ok(CallResult::Success(Err(e))) => return Err(format!("cannot start the run: {e}")),
            _ => return Err("the backfill supervisor did not answer".to_owned()),
        }
        let result = run::execute(&self.settings, &slots, report, stop).await;
        match parent
            .call(
                |r| SupervisorMsg::RemoveChild(RUN.to_owned(), r),
                Some(CALL_TIMEOUT),
            )
            .await
        {
            Ok(CallResult::Success(Ok(()))) => {}
            other => {
                warn!(pipeline = "backfill", answer = ?other.map(|c| matches!(c, CallResult::Success(_))), "could not remove the run's subtree")
            }
        }
        result
    }
}

/// The scheduler of `/backfill`, which also records the pipeline's supervisor for the runs.
pub fn scheduler(
    config: SchedulerConfig,
    handle: SchedulerHandle,
    parent: Cell,
) -> anyhow::Result<ChildSpec> {
    config.validate()?;
    let shutdown = config.stop_grace + Duration::from_secs(5);
    Ok(ChildSpec::worker("scheduler", move |ctx| {
        *parent.lock().expect("slot lock") = Some(ctx.supervisor.clone());
        let args = SchedulerArgs {
            config: config.clone(),
            handle: handle.clone(),
            probe: ctx.probe,
        };
        async move {
            let (actor, _) = Actor::spawn_linked(None, Scheduler, args, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    })
    .shutdown(shutdown))
}

/// The entry's job: one run per call, counted in the backfill metrics (records and bytes as
/// the run's objects become visible).
pub fn job(runner: Arc<Runner>) -> Job {
    Job::new(move |ctx| {
        let runner = runner.clone();
        async move {
            let ctx = Arc::new(ctx);
            let mode = runner.settings.mode.name();
            metrics::counter!(names::BACKFILL_RUNS_STARTED_TOTAL, "mode" => mode).increment(1);
            let began = Instant::now();
            let progress = ctx.clone();
            let report: Report = Arc::new(move |records, bytes| {
                if records > 0 || bytes > 0 {
                    progress.progress(records, bytes);
                    metrics::counter!(names::BACKFILL_RECORDS_TOTAL).increment(records);
                    metrics::counter!(names::BACKFILL_BYTES_TOTAL).increment(bytes);
                }
            });
            let stopping = ctx.clone();
            let result = runner
                .run(report, async move { stopping.stopped().await })
                .await;
            metrics::histogram!(names::BACKFILL_RUN_DURATION).record(began.elapsed().as_secs_f64());
            match result {
                Ok(summary) => {
                    metrics::counter!(names::BACKFILL_RUNS_SUCCEEDED_TOTAL, "mode" => mode)
                        .increment(1);
                    metrics::counter!(names::BACKFILL_SKIPPED_TOTAL).increment(summary.skipped);
                    metrics::counter!(names::BACKFILL_DEAD_LETTERS_TOTAL)
                        .increment(summary.dead_letters);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or_default();
                    metrics::gauge!(names::BACKFILL_LAST_SUCCESS).set(now);
                    info!(pipeline = "backfill", summary = %summary.line(), "backfill run finished");
                    Ok(RunSummary {
                        records: summary.records,
                        bytes: summary.bytes,
                        note: Some(summary.line()),
                    })
                }
                Err(e) => {
                    metrics::counter!(names::BACKFILL_RUNS_FAILED_TOTAL, "mode" => mode)
                        .increment(1);
                    error!(pipeline = "backfill", error = %e, "backfill run failed");
                    Err(e)
                }
            }
        }
    })
}
