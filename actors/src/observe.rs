//! Observation: every actor owns a [`Probe`] in a shared [`Registry`]; the admin tree, health,
//! metrics and tests read snapshots from it.
//!
//! A probe outlives the incarnations of its actor, so restart counts and the last error survive
//! restarts. Progress is recorded as records or bytes advanced, which is what stuck detection
//! reads: a worker that holds work and stops advancing is stuck, a busy one is not.
//!
//! The probe an incarnation is started with is bound to it: once its supervisor starts the next
//! incarnation, the old handle (held by a task that outlived its actor) records nothing, so a
//! late release or progress report cannot change what the new incarnation holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use ractor::{ActorCell, ActorRef, ActorStatus};
use serde::Serialize;
use tokio::time::Instant;

use crate::path::ActorPath;
use crate::supervision::{Supervision, SupervisionSnapshot};
use crate::supervisor::SupervisorMsg;

/// Lifecycle of an actor as the admin tree shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Status {
    Starting = 0,
    Running = 1,
    /// Failed and waiting for its restart (backoff or cool-down).
    Failed = 2,
    Stopping = 3,
    Stopped = 4,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Starting,
            1 => Status::Running,
            2 => Status::Failed,
            3 => Status::Stopping,
            _ => Status::Stopped,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Failed => "failed",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Supervisor,
    Worker,
}

/// The shared map of every actor's probe, one per running instance of actord.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    created: AtomicU64,
    epoch: Instant,
    epoch_wall: SystemTime,
    probes: RwLock<BTreeMap<ActorPath, Probe>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            inner: Arc::new(RegistryInner {
                created: AtomicU64::new(0),
                epoch: Instant::now(),
                epoch_wall: SystemTime::now(),
                probes: RwLock::new(BTreeMap::new()),
            }),
        }
    }

    /// The probe at `path`, created on first use. Later calls return the same probe.
    pub fn probe(&self, path: &ActorPath, kind: ActorKind) -> Probe {
        if let Some(p) = self.get(path) {
            return p;
        }
        let mut probes = self.inner.probes.write().expect("registry lock");
        probes
            .entry(path.clone())
            .or_insert_with(|| Probe::new(path.clone(), kind, self.clone()))
            .clone()
    }

    pub fn get(&self, path: &ActorPath) -> Option<Probe> {
        self.inner
            .probes
            .read()
            .expect("registry lock")
            .get(path)
            .cloned()
    }

    /// Forgets `path` and everything below it (a removed child).
    pub fn remove_subtree(&self, path: &ActorPath) {
        self.inner
            .probes
            .write()
            .expect("registry lock")
            .retain(|p, _| !p.starts_with(path));
    }

    /// Marks every actor below `path` stopped: they died with the supervisor at `path` (killed,
    /// or stopped when its budget ran out), and none of them runs until it starts them again.
    pub fn mark_stopped_below(&self, path: &ActorPath) {
        for probe in self.below(path) {
            if probe.status() != Status::Stopped {
                probe.set_status(Status::Stopped);
            }
            probe.clear_pending();
            probe.set_control(None);
        }
    }

    /// The probes strictly below `path`, ordered by path.
    pub fn below(&self, path: &ActorPath) -> Vec<Probe> {
        self.inner
            .probes
            .read()
            .expect("registry lock")
            .iter()
            .filter(|(p, _)| p.starts_with(path) && *p != path)
            .map(|(_, probe)| probe.clone())
            .collect()
    }

    /// The actors at or below `path` that keep it from being up, with why: not running and
    /// not stopped on purpose (a transient child that finished, an operator stop), or running
    /// but reporting that it cannot do its work. A subtree whose workers fail, back off or
    /// start again is not up, whatever its supervisor's status.
    pub fn not_up(&self, path: &ActorPath) -> Vec<(ActorPath, String)> {
        let Some(top) = self.get(path) else {
            return vec![(path.clone(), Status::Stopped.as_str().to_owned())];
        };
        let mut out = Vec::new();
        for probe in std::iter::once(top.clone()).chain(self.below(path)) {
            match probe.status() {
                Status::Running => {
                    if let Some(reason) = probe.unhealthy() {
                        out.push((probe.path().clone(), format!("unhealthy: {reason}")));
                    }
                }
                Status::Stopped if probe.path() != path => {}
                other => out.push((probe.path().clone(), other.as_str().to_owned())),
            }
        }
        out
    }

    /// Snapshots of every actor, ordered by path.
    pub fn snapshots(&self) -> Vec<ActorSnapshot> {
        let probes: Vec<Probe> = self
            .inner
            .probes
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        probes.iter().map(Probe::snapshot).collect()
    }

    /// The tree rooted at `/` (or at the shallowest registered paths); siblings appear in the
    /// order they were first started.
    pub fn tree(&self) -> Vec<TreeNode> {
        let mut probes: Vec<Probe> = self
            .inner
            .probes
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        // Parents before children (path order), then siblings by first start.
        probes.sort_by_key(|p| (p.path().segments().count(), p.inner.seq));
        let mut nodes: Vec<TreeNode> = Vec::new();
        for p in probes {
            insert_node(&mut nodes, p.snapshot());
        }
        nodes
    }

    fn millis_since_epoch(&self, at: Instant) -> u64 {
        // 0 means "never", so a real instant is stored as at least 1.
        (at.saturating_duration_since(self.inner.epoch).as_millis() as u64).max(1)
    }

    fn wall_clock(&self, millis: u64) -> SystemTime {
        self.inner.epoch_wall + Duration::from_millis(millis)
    }

    fn instant(&self, millis: u64) -> Instant {
        self.inner.epoch + Duration::from_millis(millis)
    }
}

fn insert_node(nodes: &mut Vec<TreeNode>, snap: ActorSnapshot) {
    for node in nodes.iter_mut() {
        if snap.path.starts_with(&node.actor.path) && snap.path != node.actor.path {
            insert_node(&mut node.children, snap);
            return;
        }
    }
    nodes.push(TreeNode {
        actor: snap,
        children: Vec::new(),
    });
}

/// One actor and its children, as `/api/tree` serves it.
#[derive(Clone, Debug, Serialize)]
pub struct TreeNode {
    #[serde(flatten)]
    pub actor: ActorSnapshot,
    pub children: Vec<TreeNode>,
}

/// The observable state of one actor.
#[derive(Clone, Debug, Serialize)]
pub struct ActorSnapshot {
    pub path: ActorPath,
    pub name: String,
    pub kind: ActorKind,
    pub status: Status,
    pub restarts: u64,
    pub last_error: Option<LastError>,
    /// Why the running actor cannot do its work, if it said so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<String>,
    pub counters: BTreeMap<String, u64>,
    /// RFC 3339 time of the last recorded progress, if any.
    pub last_progress: Option<String>,
    /// Units of work the actor holds and has not finished.
    pub pending: u64,
    /// State, backoff, progress age and budget, as the supervisor and the clock see them.
    #[serde(flatten)]
    pub supervision: SupervisionSnapshot,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LastError {
    pub message: String,
    /// RFC 3339 time the error was recorded.
    pub at: String,
}

/// An actor's handle on its own observable state. Cheap to clone; safe from any thread.
#[derive(Clone)]
pub struct Probe {
    inner: Arc<ProbeInner>,
    /// The incarnation this handle belongs to; `None` for the supervisor's own handle.
    bound: Option<u64>,
}

struct ProbeInner {
    /// Creation order, for listing siblings in start order.
    seq: u64,
    path: ActorPath,
    kind: ActorKind,
    registry: Registry,
    status: AtomicU8,
    restarts: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    pending: AtomicU64,
    last_progress_ms: AtomicU64,
    busy_since_ms: AtomicU64,
    last_error: Mutex<Option<LastError>>,
    /// Why a running actor cannot do its work (a topic it must write is missing), if so.
    unhealthy: Mutex<Option<String>>,
    counters: Mutex<BTreeMap<String, u64>>,
    control: Mutex<Option<ActorRef<SupervisorMsg>>>,
    /// The incarnation bound handles must match to record anything.
    incarnation: AtomicU64,
    /// An earlier incarnation that did not end when it was killed (a handler blocked in
    /// synchronous code); no new one starts while it runs.
    lingering: Mutex<Option<ActorCell>>,
    /// The time this actor's subtree may take to stop, for a supervisor (0: unset).
    stop_budget_ms: AtomicU64,
    /// When the stop under way must be over, set by the parent before it stops a supervisor.
    stop_deadline: Mutex<Option<Instant>>,
    /// What the supervisor tells observers: a scheduled restart, the stuck threshold, a budget.
    supervision: Mutex<Supervision>,
}

impl Probe {
    fn new(path: ActorPath, kind: ActorKind, registry: Registry) -> Self {
        let seq = registry.inner.created.fetch_add(1, Ordering::Relaxed);
        Probe {
            inner: Arc::new(ProbeInner {
                seq,
                path,
                kind,
                registry,
                status: AtomicU8::new(Status::Starting as u8),
                restarts: AtomicU64::new(0),
                records: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                pending: AtomicU64::new(0),
                last_progress_ms: AtomicU64::new(0),
                busy_since_ms: AtomicU64::new(0),
                last_error: Mutex::new(None),
                unhealthy: Mutex::new(None),
                counters: Mutex::new(BTreeMap::new()),
                control: Mutex::new(None),
                incarnation: AtomicU64::new(0),
                lingering: Mutex::new(None),
                stop_budget_ms: AtomicU64::new(0),
                stop_deadline: Mutex::new(None),
                supervision: Mutex::new(Supervision::default()),
            }),
            bound: None,
        }
    }

    /// Starts a new incarnation and returns the handle bound to it; handles of earlier
    /// incarnations stop recording.
    pub(crate) fn next_incarnation(&self) -> Probe {
        let n = self.inner.incarnation.fetch_add(1, Ordering::AcqRel) + 1;
        Probe {
            inner: self.inner.clone(),
            bound: Some(n),
        }
    }

    /// False for a handle of an incarnation that was replaced: it must not record anything.
    pub fn is_current(&self) -> bool {
        self.bound
            .is_none_or(|b| b == self.inner.incarnation.load(Ordering::Acquire))
    }

    /// An earlier incarnation still running after it was killed, if any.
    pub fn lingering(&self) -> Option<ActorCell> {
        let mut slot = self.inner.lingering.lock().expect("probe lock");
        if slot
            .as_ref()
            .is_some_and(|c| c.get_status() == ActorStatus::Stopped)
        {
            *slot = None;
        }
        slot.clone()
    }

    pub(crate) fn set_lingering(&self, cell: Option<ActorCell>) {
        *self.inner.lingering.lock().expect("probe lock") = cell;
    }

    /// How long this supervisor's subtree may take to stop (its shutdown timeout).
    pub fn stop_budget(&self) -> Option<Duration> {
        match self.inner.stop_budget_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub fn set_stop_budget(&self, budget: Duration) {
        let ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX).max(1);
        self.inner.stop_budget_ms.store(ms, Ordering::Relaxed);
    }

    /// Sets when the stop about to begin must be over; the supervisor reads it as it stops.
    pub fn set_stop_deadline(&self, deadline: Option<Instant>) {
        *self.inner.stop_deadline.lock().expect("probe lock") = deadline;
    }

    /// When the stop under way must be over, if its parent set a deadline: an actor with a
    /// long `post_stop` (a consumer's drain) fits its work into it.
    pub fn stop_deadline(&self) -> Option<Instant> {
        *self.inner.stop_deadline.lock().expect("probe lock")
    }

    pub(crate) fn take_stop_deadline(&self) -> Option<Instant> {
        self.inner.stop_deadline.lock().expect("probe lock").take()
    }

    pub fn path(&self) -> &ActorPath {
        &self.inner.path
    }

    pub(crate) fn supervision(&self) -> std::sync::MutexGuard<'_, Supervision> {
        self.inner.supervision.lock().expect("probe lock")
    }

    pub fn kind(&self) -> ActorKind {
        self.inner.kind
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn status(&self) -> Status {
        Status::from_u8(self.inner.status.load(Ordering::Acquire))
    }

    pub fn set_status(&self, status: Status) {
        self.inner.status.store(status as u8, Ordering::Release);
    }

    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    pub(crate) fn count_restart(&self) {
        self.inner.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::names::ACTOR_RESTARTS_TOTAL, "path" => self.inner.path.to_string())
            .increment(1);
    }

    pub fn set_error(&self, message: impl Into<String>) {
        if !self.is_current() {
            return;
        }
        let at = chrono_like_rfc3339(SystemTime::now());
        *self.inner.last_error.lock().expect("probe lock") = Some(LastError {
            message: message.into(),
            at,
        });
    }

    /// Reports that the running actor cannot do its work, and why (`None`: it can again). The
    /// pipeline is not up meanwhile; a new incarnation starts without it.
    pub fn set_unhealthy(&self, reason: Option<String>) {
        if !self.is_current() {
            return;
        }
        *self.inner.unhealthy.lock().expect("probe lock") = reason;
    }

    pub fn unhealthy(&self) -> Option<String> {
        self.inner.unhealthy.lock().expect("probe lock").clone()
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.inner.last_error.lock().expect("probe lock").clone()
    }

    /// Records work advanced: `records` handled and `bytes` moved since the last call.
    pub fn progress(&self, records: u64, bytes: u64) {
        if !self.is_current() {
            return;
        }
        if records > 0 {
            self.inner.records.fetch_add(records, Ordering::Relaxed);
        }
        if bytes > 0 {
            self.inner.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        let now = self.inner.registry.millis_since_epoch(Instant::now());
        self.inner.last_progress_ms.store(now, Ordering::Relaxed);
    }

    /// Declares `units` more work held (records buffered, a transfer in flight, …).
    pub fn hold(&self, units: u64) {
        if units == 0 || !self.is_current() {
            return;
        }
        let before = self.inner.pending.fetch_add(units, Ordering::AcqRel);
        if before == 0 {
            let now = self.inner.registry.millis_since_epoch(Instant::now());
            self.inner.busy_since_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Declares `units` of held work finished (or handed on).
    pub fn release(&self, units: u64) {
        if !self.is_current() {
            return;
        }
        let _ = self
            .inner
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(units))
            });
    }

    /// Forgets all held work (a fresh incarnation starts empty).
    pub fn clear_pending(&self) {
        if !self.is_current() {
            return;
        }
        self.inner.pending.store(0, Ordering::Release);
    }

    pub fn pending(&self) -> u64 {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// How long the actor has held work without advancing, `None` when it holds none.
    pub fn stalled_for(&self, now: Instant) -> Option<Duration> {
        if self.pending() == 0 {
            return None;
        }
        let last = self
            .inner
            .last_progress_ms
            .load(Ordering::Relaxed)
            .max(self.inner.busy_since_ms.load(Ordering::Relaxed));
        Some(now.saturating_duration_since(self.inner.registry.instant(last)))
    }

    /// Time since the last recorded progress, `None` if there was none yet.
    pub fn since_progress(&self, now: Instant) -> Option<Duration> {
        match self.inner.last_progress_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.inner.registry.instant(ms))),
        }
    }

    /// Sets a named counter shown in the admin tree (e.g. `files`, `batches`).
    pub fn set_counter(&self, name: &str, value: u64) {
        if !self.is_current() {
            return;
        }
        self.inner
            .counters
            .lock()
            .expect("probe lock")
            .insert(name.to_owned(), value);
    }

    pub fn add_counter(&self, name: &str, delta: u64) {
        if !self.is_current() {
            return;
        }
        *self
            .inner
            .counters
            .lock()
            .expect("probe lock")
            .entry(name.to_owned())
            .or_default() += delta;
    }

    pub fn counter(&self, name: &str) -> u64 {
        match name {
            "records" => self.inner.records.load(Ordering::Relaxed),
            "bytes" => self.inner.bytes.load(Ordering::Relaxed),
            _ => self
                .inner
                .counters
                .lock()
                .expect("probe lock")
                .get(name)
                .copied()
                .unwrap_or(0),
        }
    }

    /// The supervisor running at this path, if this actor is one.
    pub fn control(&self) -> Option<ActorRef<SupervisorMsg>> {
        self.inner.control.lock().expect("probe lock").clone()
    }

    pub(crate) fn set_control(&self, control: Option<ActorRef<SupervisorMsg>>) {
        if !self.is_current() {
            return;
        }
        *self.inner.control.lock().expect("probe lock") = control;
    }

    pub fn snapshot(&self) -> ActorSnapshot {
        let mut counters = self.inner.counters.lock().expect("probe lock").clone();
        counters.insert(
            "records".to_owned(),
            self.inner.records.load(Ordering::Relaxed),
        );
        counters.insert("bytes".to_owned(), self.inner.bytes.load(Ordering::Relaxed));
        let progress = self.inner.last_progress_ms.load(Ordering::Relaxed);
        ActorSnapshot {
            path: self.inner.path.clone(),
            name: self.inner.path.name().to_owned(),
            kind: self.inner.kind,
            status: self.status(),
            restarts: self.restarts(),
            last_error: self.last_error(),
            unhealthy: self.unhealthy(),
            counters,
            last_progress: (progress > 0)
                .then(|| chrono_like_rfc3339(self.inner.registry.wall_clock(progress))),
            pending: self.pending(),
            supervision: self.supervision_snapshot(),
        }
    }
}

/// RFC 3339 in UTC with millisecond precision, without pulling a calendar crate into `actors/`.
pub fn chrono_like_rfc3339(t: SystemTime) -> String {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs() as i64;
    let millis = since.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_763_568_754_123);
        assert_eq!(chrono_like_rfc3339(t), "2025-11-19T16:12:34.123Z");
        assert_eq!(
            chrono_like_rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn probes_survive_lookup_and_build_a_tree() {
        let reg = Registry::new();
        let root = ActorPath::root();
        let a = root.child("a");
        reg.probe(&root, ActorKind::Supervisor);
        reg.probe(&a, ActorKind::Supervisor).count_restart();
        reg.probe(&a.child("w"), ActorKind::Worker);
        reg.probe(&root.child("b"), ActorKind::Worker);
        assert_eq!(reg.probe(&a, ActorKind::Supervisor).restarts(), 1);
        let tree = reg.tree();
        assert_eq!(tree.len(), 1);
        assert_eq!(tree[0].children.len(), 2);
        assert_eq!(tree[0].children[0].children[0].actor.name, "w");
        reg.remove_subtree(&a);
        assert!(reg.get(&a.child("w")).is_none());
        assert!(reg.get(&root.child("b")).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn stall_is_measured_only_while_holding_work() {
        let reg = Registry::new();
        let p = reg.probe(&ActorPath::root().child("w"), ActorKind::Worker);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(p.stalled_for(Instant::now()), None);
        p.hold(3);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(p.stalled_for(Instant::now()), Some(Duration::from_secs(2)));
        p.progress(1, 10);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(p.stalled_for(Instant::now()), Some(Duration::from_secs(1)));
        p.release(3);
        assert_eq!(p.stalled_for(Instant::now()), None);
        assert_eq!(p.counter("records"), 1);
        assert_eq!(p.counter("bytes"), 10);
    }
}
