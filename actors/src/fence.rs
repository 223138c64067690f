//! `Fence`: which partition assignments a path still owns, and which writes are in flight for
//! them. Shared by a path's consumers (which revoke) and writers (which write).
//!
//! Guarantees:
//! - An assignment is revoked up to an epoch: every record read under that epoch or an earlier
//!   one of the partition is fenced from then on (epochs are unique and increasing in the
//!   process, so a later assignment of the same partition is never fenced by an earlier revoke).
//! - [`Fence::begin`] drops the fenced records of a batch and registers the rest as in flight in
//!   one step, so a revoke either sees the write in flight or the write sees the revoke.
//! - [`Fence::wait_idle`] lets a revoke wait, bounded, until no write of the partitions it gives
//!   up is in flight: the write finished (and acknowledged) or gave up.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::record::{Origin, Topic};

#[derive(Default)]
struct State {
    /// The highest revoked epoch per partition.
    revoked: HashMap<(Topic, i32), u64>,
    /// Writes in flight per assignment (topic, partition, epoch).
    in_flight: HashMap<(Topic, i32, u64), usize>,
}

impl State {
    fn fenced(&self, o: &Origin) -> bool {
        self.revoked
            .get(&(o.topic, o.partition))
            .is_some_and(|e| o.epoch <= *e)
    }
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    idle: Condvar,
}

/// Cheap to clone; every clone is the same fence.
#[derive(Clone, Default)]
pub struct Fence(Arc<Inner>);

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fence")
    }
}

impl Fence {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes partitions away, each up to its epoch.
    pub fn revoke(&self, partitions: &[(Topic, i32, u64)]) {
        let mut s = self.lock();
        for (t, p, e) in partitions {
            let slot = s.revoked.entry((*t, *p)).or_insert(0);
            *slot = (*slot).max(*e);
        }
    }

    /// True when the record's assignment was revoked.
    pub fn is_fenced(&self, origin: &Origin) -> bool {
        self.lock().fenced(origin)
    }

    /// True when any of the records' assignments was revoked.
    pub fn any_fenced<'a>(&self, origins: impl IntoIterator<Item = &'a Origin>) -> bool {
        let s = self.lock();
        origins.into_iter().any(|o| s.fenced(o))
    }

    /// Keeps the items whose assignment still holds and registers them as one write in flight
    /// until the returned guard is dropped. Returns the kept items and the guard.
    pub fn begin<T>(&self, items: Vec<T>, origin: impl Fn(&T) -> &Origin) -> (Vec<T>, WriteGuard) {
        let mut s = self.lock();
        let kept: Vec<T> = items.into_iter().filter(|i| !s.fenced(origin(i))).collect();
        let mut keys: Vec<(Topic, i32, u64)> = kept
            .iter()
            .map(|i| {
                let o = origin(i);
                (o.topic, o.partition, o.epoch)
            })
            .collect();
        keys.sort();
        keys.dedup();
        for k in &keys {
            *s.in_flight.entry(*k).or_insert(0) += 1;
        }
        drop(s);
        (
            kept,
            WriteGuard {
                fence: self.clone(),
                keys,
            },
        )
    }

    /// Waits until no write of these partitions (at or below each epoch) is in flight, at most
    /// `timeout`. Blocks the calling thread. True when they are idle.
    pub fn wait_idle(&self, partitions: &[(Topic, i32, u64)], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            let busy = s.in_flight.keys().any(|(t, p, e)| {
                partitions
                    .iter()
                    .any(|(rt, rp, re)| rt == t && rp == p && e <= re)
            });
            if !busy {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .0
                .idle
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Writes in flight, counted once per assignment they touch (for tests and snapshots).
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.values().sum()
    }
}

/// A write in flight; dropping it ends the write (after its records were acknowledged).
pub struct WriteGuard {
    fence: Fence,
    keys: Vec<(Topic, i32, u64)>,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let mut s = self.fence.lock();
        for k in &self.keys {
            if let Some(n) = s.in_flight.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    s.in_flight.remove(k);
                }
            }
        }
        drop(s);
        self.fence.0.idle.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(p: i32, epoch: u64) -> Origin {
        Origin {
            topic: Topic::intern("fence-test"),
            partition: p,
            offset: 0,
            epoch,
        }
    }

    #[test]
    fn a_revoke_fences_its_epoch_and_earlier_ones_only() {
        let fence = Fence::new();
        let t = Topic::intern("fence-test");
        fence.revoke(&[(t, 0, 5)]);
        assert!(fence.is_fenced(&origin(0, 5)));
        assert!(fence.is_fenced(&origin(0, 3)));
        assert!(!fence.is_fenced(&origin(0, 6)));
        assert!(!fence.is_fenced(&origin(1, 5)));
        let (kept, _guard) = fence.begin(vec![origin(0, 5), origin(0, 6), origin(1, 2)], |o| o);
        assert_eq!(kept, vec![origin(0, 6), origin(1, 2)]);
    }

    #[test]
    fn wait_idle_returns_when_the_write_ends_and_gives_up_at_its_bound() {
        let fence = Fence::new();
        let t = Topic::intern("fence-test");
        let (_, guard) = fence.begin(vec![origin(0, 1)], |o| o);
        assert_eq!(fence.in_flight(), 1);
        // Another partition is not held up by this write.
        assert!(fence.wait_idle(&[(t, 1, 1)], Duration::ZERO));
        assert!(!fence.wait_idle(&[(t, 0, 1)], Duration::from_millis(20)));
        let waiter = {
            let fence = fence.clone();
            std::thread::spawn(move || fence.wait_idle(&[(t, 0, 1)], Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(guard);
        assert!(waiter.join().unwrap());
        assert_eq!(fence.in_flight(), 0);
    }
}
