//! The shared map of every actor's probe, by path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{ActorKind, Probe, Status};
use crate::path::ActorPath;

/// The shared map of every actor's probe, one per running instance of actord.
#[derive(Clone)]
pub struct Registry {
    pub(super) inner: Arc<RegistryInner>,
}

pub(super) struct RegistryInner {
    created: AtomicU64,
    epoch: Instant,
    epoch_wall: SystemTime,
    probes: RwLock<BTreeMap<ActorPath, Probe>>,
    /// Subtrees an operator paused: their consumers read nothing new and their schedulers
    /// skip due runs until resumed. Kept here, not on a probe, so a pause outlives restarts
    /// and replacements of the paused subtree.
    paused: RwLock<BTreeSet<ActorPath>>,
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
                paused: RwLock::new(BTreeSet::new()),
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

    /// Forgets everything strictly below `path`, keeping `path` itself (a replaced child).
    pub fn remove_below(&self, path: &ActorPath) {
        self.inner
            .probes
            .write()
            .expect("registry lock")
            .retain(|p, _| !(p.starts_with(path) && p != path));
    }

    /// Marks every actor below `path` stopped: they died with the supervisor at `path` (killed,
    /// or stopped when its budget ran out), and none of them runs until it starts them again.
    pub fn mark_stopped_below(&self, path: &ActorPath) {
        for probe in self.below(path) {
            if probe.status() != Status::Stopped {
                probe.set_status(Status::Stopped);
            }
            probe.clear_pending();
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

    /// Pauses (`true`) or resumes the subtree at `path`; returns whether that changed anything.
    pub fn set_paused(&self, path: &ActorPath, paused: bool) -> bool {
        let changed = {
            let mut set = self.inner.paused.write().expect("registry lock");
            if paused {
                set.insert(path.clone())
            } else {
                set.remove(path)
            }
        };
        if changed && !paused {
            // Waiting while paused is not a stall: a resumed actor gets its whole
            // `stuck_after` again.
            if let Some(top) = self.get(path) {
                top.restart_stall_clock();
            }
            for probe in self.below(path) {
                probe.restart_stall_clock();
            }
        }
        changed
    }

    /// Whether `path` is in a paused subtree (it or one of its ancestors was paused).
    pub fn is_paused(&self, path: &ActorPath) -> bool {
        let set = self.inner.paused.read().expect("registry lock");
        !set.is_empty() && set.iter().any(|p| path.starts_with(p))
    }

    /// The paused subtrees, ordered by path.
    pub fn paused(&self) -> Vec<ActorPath> {
        self.inner
            .paused
            .read()
            .expect("registry lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Every probe, ordered by path.
    pub(super) fn all(&self) -> Vec<Probe> {
        self.inner
            .probes
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    /// The creation number of a new probe, for listing siblings in start order.
    pub(super) fn next_seq(&self) -> u64 {
        self.inner.created.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn millis_since_epoch(&self, at: Instant) -> u64 {
        // 0 means "never", so a real instant is stored as at least 1.
        (at.saturating_duration_since(self.inner.epoch).as_millis() as u64).max(1)
    }

    pub(super) fn wall_clock(&self, millis: u64) -> SystemTime {
        self.inner.epoch_wall + Duration::from_millis(millis)
    }

    pub(super) fn instant(&self, millis: u64) -> Instant {
        self.inner.epoch + Duration::from_millis(millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test(start_paused = true)]
    async fn a_paused_subtree_is_never_stalled_and_outlives_its_probes() {
        let reg = Registry::new();
        let top = ActorPath::root().child("p");
        let w = reg.probe(&top.child("w"), ActorKind::Worker);
        let other = reg.probe(&ActorPath::root().child("q"), ActorKind::Worker);
        tokio::time::sleep(Duration::from_secs(1)).await;
        w.hold(1);
        other.hold(1);
        assert!(reg.set_paused(&top, true));
        assert!(!reg.set_paused(&top, true));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(w.is_paused());
        assert!(!other.is_paused());
        assert_eq!(w.stalled_for(Instant::now()), None);
        assert_eq!(
            other.stalled_for(Instant::now()),
            Some(Duration::from_secs(5))
        );
        reg.remove_subtree(&top);
        let again = reg.probe(&top.child("w"), ActorKind::Worker);
        assert!(again.is_paused() && again.snapshot().paused);
        assert_eq!(reg.paused(), vec![top.clone()]);
        assert!(reg.set_paused(&top, false));
        assert!(!again.is_paused());
    }
}
