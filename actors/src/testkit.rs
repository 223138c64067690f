//! Fakes for tests: a scriptable worker, an event log, polling helpers, a manual clock and an in-memory lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::observe::Probe;
use crate::path::ActorPath;
use crate::spec::ChildSpec;

mod scheduling;
pub use scheduling::{ManualClock, MemoryLease};

/// What a [`TestWorker`] can be told to do.
pub enum TestMsg {
    /// Return an error from the handler.
    Fail(String),
    /// Stop normally.
    Exit,
    /// Take `n` units of work and never finish them.
    Hold(u64),
    /// Advance by `n` records.
    Progress(u64),
    /// Block the handler for a long time (a hung connection).
    Hang,
    /// Spawn a task that takes `units` of work `after` this long, with this incarnation's probe
    /// (a task that outlives its actor).
    HoldLater {
        units: u64,
        after: Duration,
    },
    /// Block the handler's thread in synchronous code for this long (a blocking client call):
    /// a kill cannot take effect before it returns.
    Block(Duration),
    Ping(RpcReplyPort<()>),
}

/// A worker whose behaviour a test scripts through [`TestMsg`].
pub struct TestWorker;

pub struct TestWorkerArgs {
    pub probe: Probe,
    pub workers: TestWorkers,
    /// Fail in `pre_start` with this message (a child that cannot start).
    pub fail_start: Option<String>,
    /// Time `post_stop` takes (a slow graceful shutdown).
    pub stop_delay: Duration,
    /// What `pre_start` does before it succeeds (a hung or blocking start).
    pub start_delay: StartDelay,
}

/// How a [`TestWorker`]'s `pre_start` is held up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartDelay {
    None,
    /// Awaits forever (a connection that never answers).
    Hang,
    /// Blocks its thread in synchronous code for this long.
    Block(Duration),
}

pub struct TestWorkerState {
    probe: Probe,
    workers: TestWorkers,
    stop_delay: Duration,
}

impl Drop for TestWorkerState {
    fn drop(&mut self) {
        // Runs however the incarnation ends, killed or stopped, once its handler has returned.
        let mut inner = self.workers.inner.lock().expect("testkit lock");
        if let Some(n) = inner.alive.get_mut(self.probe.path()) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Actor for TestWorker {
    type Msg = TestMsg;
    type State = TestWorkerState;
    type Arguments = TestWorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        if let Some(reason) = args.fail_start {
            return Err(reason.into());
        }
        match args.start_delay {
            StartDelay::None => {}
            StartDelay::Hang => std::future::pending::<()>().await,
            StartDelay::Block(d) => std::thread::sleep(d),
        }
        let path = args.probe.path().clone();
        args.workers.record(format!("start {path}"));
        let mut inner = args.workers.inner.lock().expect("testkit lock");
        *inner.alive.entry(path.clone()).or_default() += 1;
        inner.refs.insert(path, myself);
        drop(inner);
        Ok(TestWorkerState {
            probe: args.probe,
            workers: args.workers,
            stop_delay: args.stop_delay,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        tokio::time::sleep(state.stop_delay).await;
        state.workers.record(format!("stop {}", state.probe.path()));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TestMsg::Fail(reason) => return Err(reason.into()),
            TestMsg::Exit => myself.stop(None),
            TestMsg::Hold(n) => state.probe.hold(n),
            TestMsg::Progress(n) => state.probe.progress(n, 0),
            TestMsg::Hang => tokio::time::sleep(Duration::from_secs(86_400)).await,
            TestMsg::Block(d) => std::thread::sleep(d),
            TestMsg::HoldLater { units, after } => {
                let probe = state.probe.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    probe.hold(units);
                });
            }
            TestMsg::Ping(reply) => {
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

/// Shared view of every [`TestWorker`] a test started: their current refs and an event log.
#[derive(Clone, Default)]
pub struct TestWorkers {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    events: Vec<String>,
    refs: HashMap<ActorPath, ActorRef<TestMsg>>,
    fail_starts: HashMap<String, u32>,
    delayed_starts: HashMap<String, (u32, StartDelay)>,
    alive: HashMap<ActorPath, usize>,
}

impl TestWorkers {
    pub fn new() -> Self {
        Self::default()
    }

    fn record(&self, event: String) {
        self.inner.lock().expect("testkit lock").events.push(event);
    }

    /// Events in order: `start <path>` and `stop <path>` (graceful stops only).
    pub fn events(&self) -> Vec<String> {
        self.inner.lock().expect("testkit lock").events.clone()
    }

    pub fn clear_events(&self) {
        self.inner.lock().expect("testkit lock").events.clear();
    }

    /// The newest incarnation of the worker at `path`.
    pub fn get(&self, path: &str) -> ActorRef<TestMsg> {
        let path = ActorPath::parse(path).expect("valid path");
        self.inner
            .lock()
            .expect("testkit lock")
            .refs
            .get(&path)
            .cloned()
            .unwrap_or_else(|| panic!("no worker started at {path}"))
    }

    /// Incarnations of the worker at `path` that started and have not ended yet.
    pub fn alive(&self, path: &str) -> usize {
        let path = ActorPath::parse(path).expect("valid path");
        self.inner
            .lock()
            .expect("testkit lock")
            .alive
            .get(&path)
            .copied()
            .unwrap_or(0)
    }

    /// Makes the next `times` starts of child `id` fail in `pre_start`.
    pub fn fail_next_starts(&self, id: &str, times: u32) {
        self.inner
            .lock()
            .expect("testkit lock")
            .fail_starts
            .insert(id.to_owned(), times);
    }

    /// Makes the next `times` starts of child `id` hang or block in `pre_start`.
    pub fn delay_next_starts(&self, id: &str, times: u32, delay: StartDelay) {
        self.inner
            .lock()
            .expect("testkit lock")
            .delayed_starts
            .insert(id.to_owned(), (times, delay));
    }

    /// A child spec for a test worker named `id`.
    pub fn spec(&self, id: &str) -> ChildSpec {
        self.spec_with_stop_delay(id, Duration::ZERO)
    }

    pub fn spec_with_stop_delay(&self, id: &str, stop_delay: Duration) -> ChildSpec {
        let workers = self.clone();
        let id_owned = id.to_owned();
        ChildSpec::worker(id, move |ctx| {
            let workers = workers.clone();
            let (fail_start, start_delay) = {
                let mut inner = workers.inner.lock().expect("testkit lock");
                let fail = match inner.fail_starts.get_mut(&id_owned) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        Some(format!("{id_owned} refused to start"))
                    }
                    _ => None,
                };
                let delay = match inner.delayed_starts.get_mut(&id_owned) {
                    Some((n, delay)) if *n > 0 => {
                        *n -= 1;
                        *delay
                    }
                    _ => StartDelay::None,
                };
                (fail, delay)
            };
            async move {
                let args = TestWorkerArgs {
                    probe: ctx.probe,
                    workers,
                    fail_start,
                    stop_delay,
                    start_delay,
                };
                let (actor, _) =
                    Actor::spawn_linked(None, TestWorker, args, ctx.supervisor).await?;
                Ok(actor.get_cell())
            }
        })
    }
}

/// Polls `cond` every 10 ms (of possibly paused time) until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a [`RecordingSink`] does with the next writes.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkMode {
    /// Accept everything (except records matching the poison predicate).
    Accept,
    /// Write every record but those matching the poison predicate, and reject those one by
    /// one (a partial rejection, after `attempts` tries each).
    RejectEach { attempts: u32 },
    /// Fail every write as transient (the dependency is down).
    Down,
    /// Fail every write as fatal.
    Broken,
    /// Hold every write until the mode changes.
    Blocked,
    /// Take `steps × step` for each write, reporting progress after every step (a long COPY
    /// that keeps sending rows), then accept it.
    Trickle { steps: u32, step: Duration },
}

/// A sink that records what it was given and can be switched between behaviours.
pub struct RecordingSink<R> {
    control: SinkControl<R>,
    progress: crate::sink::Progress,
    fence: crate::fence::Fence,
}

/// The handle a test keeps on its [`RecordingSink`]s.
pub struct SinkControl<R> {
    inner: Arc<Mutex<SinkInner<R>>>,
    mode: Arc<tokio::sync::watch::Sender<SinkMode>>,
    poison: Arc<dyn Fn(&R) -> bool + Send + Sync>,
}

impl<R> Clone for SinkControl<R> {
    fn clone(&self) -> Self {
        SinkControl {
            inner: self.inner.clone(),
            mode: self.mode.clone(),
            poison: self.poison.clone(),
        }
    }
}

struct SinkInner<R> {
    written: Vec<(crate::record::Origin, R)>,
    attempts: u64,
    /// Undecodable records shown to the sink, and whether it refuses them.
    undecodable: u64,
    refuse_undecodable: bool,
    /// What the sink answers to [`crate::sink::Sink::group_batches`].
    group_batches: usize,
}

impl<R: Clone + Send + Sync + 'static> SinkControl<R> {
    /// `poison` marks records the sink rejects as poison.
    pub fn new(poison: impl Fn(&R) -> bool + Send + Sync + 'static) -> Self {
        SinkControl {
            inner: Arc::new(Mutex::new(SinkInner {
                written: Vec::new(),
                attempts: 0,
                undecodable: 0,
                refuse_undecodable: false,
                group_batches: 1,
            })),
            mode: Arc::new(tokio::sync::watch::channel(SinkMode::Accept).0),
            poison: Arc::new(poison),
        }
    }

    pub fn set_mode(&self, mode: SinkMode) {
        self.mode.send_replace(mode);
    }

    /// Every record written, in write order.
    pub fn written(&self) -> Vec<(crate::record::Origin, R)> {
        self.inner.lock().expect("sink lock").written.clone()
    }

    /// Makes the sink refuse (a fatal error) undecodable records it is shown.
    pub fn refuse_undecodable(&self, refuse: bool) {
        self.inner.lock().expect("sink lock").refuse_undecodable = refuse;
    }

    /// How many queued batches the sink takes in one write (1 by default).
    pub fn set_group_batches(&self, n: usize) {
        self.inner.lock().expect("sink lock").group_batches = n;
    }

    /// Undecodable records the writer showed the sink.
    pub fn undecodable(&self) -> u64 {
        self.inner.lock().expect("sink lock").undecodable
    }

    /// Write attempts so far, failed ones included.
    pub fn attempts(&self) -> u64 {
        self.inner.lock().expect("sink lock").attempts
    }

    /// A factory for writers: each incarnation gets a sink sharing this control.
    pub fn factory(&self) -> crate::sink::SinkFactory<RecordingSink<R>> {
        let control = self.clone();
        Arc::new(move || {
            let control = control.clone();
            Box::pin(async move {
                Ok(RecordingSink {
                    control,
                    progress: crate::sink::Progress::none(),
                    fence: crate::fence::Fence::new(),
                })
            })
        })
    }
}

impl<R: Clone + Send + Sync + 'static> crate::sink::Sink<R> for RecordingSink<R> {
    fn attach_progress(&mut self, progress: crate::sink::Progress) {
        self.progress = progress;
    }

    fn attach_fence(&mut self, fence: crate::fence::Fence) {
        self.fence = fence;
    }

    fn group_batches(&self) -> usize {
        self.control.inner.lock().expect("sink lock").group_batches
    }

    fn undecodable(
        &mut self,
        letters: &[crate::record::DeadLetter],
    ) -> Result<(), crate::sink::SinkError> {
        let mut inner = self.control.inner.lock().expect("sink lock");
        inner.undecodable += letters.len() as u64;
        if inner.refuse_undecodable {
            return Err(crate::sink::SinkError::fatal(
                "too many undecodable records",
            ));
        }
        Ok(())
    }

    async fn write(
        &mut self,
        records: &[crate::record::Envelope<R>],
    ) -> Result<(), crate::sink::SinkError> {
        use crate::sink::SinkError;
        self.control.inner.lock().expect("sink lock").attempts += 1;
        let mut rx = self.control.mode.subscribe();
        loop {
            let mode = rx.borrow_and_update().clone();
            match mode {
                SinkMode::Blocked => {
                    // Like an upload in flight: given up when a partition of it is revoked.
                    tokio::select! {
                        changed = rx.changed() => {
                            if changed.is_err() {
                                return Err(SinkError::transient("sink control dropped"));
                            }
                        }
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                    if self
                        .fence
                        .any_fenced(records.iter().map(|e| &e.source.origin))
                    {
                        return Err(SinkError::fenced("a partition of the write was revoked"));
                    }
                }
                SinkMode::Down => return Err(SinkError::transient("connection refused")),
                SinkMode::Broken => return Err(SinkError::fatal("schema mismatch")),
                SinkMode::Accept => break,
                SinkMode::Trickle { steps, step } => {
                    for _ in 0..steps {
                        tokio::time::sleep(step).await;
                        self.progress
                            .advanced((records.len() as u64).div_ceil(u64::from(steps)).max(1), 0);
                    }
                    break;
                }
                SinkMode::RejectEach { attempts } => {
                    let mut rejected = Vec::new();
                    let mut inner = self.control.inner.lock().expect("sink lock");
                    for (index, e) in records.iter().enumerate() {
                        if (self.control.poison)(&e.record) {
                            rejected.push(crate::sink::Rejection {
                                index,
                                class: "FileUnavailable".into(),
                                message: format!("record {index} cannot be written"),
                                attempts,
                            });
                        } else {
                            inner.written.push((e.source.origin, e.record.clone()));
                        }
                    }
                    return if rejected.is_empty() {
                        Ok(())
                    } else {
                        Err(SinkError::rejected(rejected))
                    };
                }
            }
        }
        if records.iter().any(|e| (self.control.poison)(&e.record)) {
            return Err(SinkError::poison("Rejected", "value violates a constraint"));
        }
        let mut inner = self.control.inner.lock().expect("sink lock");
        inner
            .written
            .extend(records.iter().map(|e| (e.source.origin, e.record.clone())));
        Ok(())
    }
}

/// A dead-letter queue that keeps letters in memory, acknowledges them and confirms.
pub struct RecordingDlq;

pub type DeadLetters = Arc<Mutex<Vec<crate::record::DeadLetter>>>;

impl Actor for RecordingDlq {
    type Msg = crate::record::DlqMsg;
    type State = DeadLetters;
    type Arguments = DeadLetters;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        letters: DeadLetters,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(letters)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            crate::record::DlqMsg::Send(letter, done) => {
                letter.acker.ack(vec![letter.source.origin]);
                state.lock().expect("dlq lock").push(letter);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            crate::record::DlqMsg::Failed(reason) => return Err(reason.into()),
        }
        Ok(())
    }
}
