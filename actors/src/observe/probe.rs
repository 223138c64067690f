//! An actor's handle on its own observable state: status, progress, held work, errors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ractor::{ActorCell, ActorStatus};
use tokio::time::Instant;

use super::{rfc3339, ActorKind, ActorSnapshot, LastError, Registry, Status};
use crate::path::ActorPath;
use crate::supervision::Supervision;

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
    pub(super) fn new(path: ActorPath, kind: ActorKind, registry: Registry) -> Self {
        let seq = registry.next_seq();
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

    /// Creation order, for listing siblings in start order.
    pub(super) fn seq(&self) -> u64 {
        self.inner.seq
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
        let at = rfc3339(SystemTime::now());
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

    /// Counts a stall from now on: a resumed subtree gets its whole `stuck_after` again.
    pub(super) fn restart_stall_clock(&self) {
        let now = self.inner.registry.millis_since_epoch(Instant::now());
        self.inner.busy_since_ms.store(now, Ordering::Relaxed);
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

    /// Whether an operator paused the subtree this actor is in.
    pub fn is_paused(&self) -> bool {
        self.inner.registry.is_paused(&self.inner.path)
    }

    /// How long the actor has held work without advancing, `None` when it holds none or its
    /// subtree is paused (waiting is then what it was asked to do).
    pub fn stalled_for(&self, now: Instant) -> Option<Duration> {
        if self.pending() == 0 || self.is_paused() {
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
                .then(|| rfc3339(self.inner.registry.wall_clock(progress))),
            pending: self.pending(),
            paused: self.is_paused(),
            supervision: self.supervision_snapshot(),
        }
    }
}
