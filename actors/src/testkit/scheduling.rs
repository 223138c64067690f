//! Scheduler fakes: a wall clock driven by tokio's paused time, and a lease store shared by simulated processes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::scheduler::{Acquire, Clock, HeldLease, Lease, LeaseError, LeaseGuard};

/// A wall clock that reads `base` at creation and then moves with tokio's clock. Under
/// `#[tokio::test(start_paused = true)]` a `sleep` of three days passes three days of wall
/// time in milliseconds, and the scheduler's timers and due times stay in step.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ClockInner>,
}

struct ClockInner {
    base: DateTime<Utc>,
    start: Instant,
    /// Jumps of the wall clock that tokio's clock did not make (an NTP step).
    offset: Mutex<TimeDelta>,
}

impl ManualClock {
    pub fn starting_at(base: DateTime<Utc>) -> Self {
        ManualClock {
            inner: Arc::new(ClockInner {
                base,
                start: Instant::now(),
                offset: Mutex::new(TimeDelta::zero()),
            }),
        }
    }

    /// Starts at an RFC 3339 time (`2025-03-08T00:00:00Z`, or with an offset).
    pub fn at(rfc3339: &str) -> Self {
        let base = DateTime::parse_from_rfc3339(rfc3339)
            .unwrap_or_else(|e| panic!("bad time {rfc3339:?}: {e}"))
            .with_timezone(&Utc);
        Self::starting_at(base)
    }

    /// Moves the wall clock by `by` without tokio's time moving.
    pub fn jump(&self, by: TimeDelta) {
        *self.inner.offset.lock().expect("clock lock") += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.inner.start);
        self.inner.base
            + TimeDelta::from_std(elapsed).unwrap_or(TimeDelta::MAX)
            + *self.inner.offset.lock().expect("clock lock")
    }
}

/// An in-memory lease store with the semantics of a real one: expiry by ttl on tokio's clock,
/// renewals only by the holder, and the latest granted due time per key.
///
/// Clones share the store and act as one process. [`MemoryLease::process`] gives another
/// process's view of the same store; [`MemoryLease::crash`] kills a process: its calls never
/// answer again, so its leases are neither renewed nor released and expire.
#[derive(Clone)]
pub struct MemoryLease {
    store: Arc<Mutex<Store>>,
    alive: Arc<AtomicBool>,
}

#[derive(Default)]
struct Store {
    held: HashMap<String, Holding>,
    last_due: HashMap<String, DateTime<Utc>>,
    next_token: u64,
    down: bool,
    grants: u64,
}

struct Holding {
    token: u64,
    until: Instant,
}

impl Default for MemoryLease {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLease {
    pub fn new() -> Self {
        MemoryLease {
            store: Arc::default(),
            alive: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Another process using the same store.
    pub fn process(&self) -> MemoryLease {
        MemoryLease {
            store: self.store.clone(),
            alive: Arc::new(AtomicBool::new(true)),
        }
    }

    /// This process dies: its pending and future calls never answer.
    pub fn crash(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// Makes the store unreachable (every call fails) or reachable again.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Whether an unexpired lease on `key` exists.
    pub fn is_held(&self, key: &str) -> bool {
        let now = Instant::now();
        self.lock().held.get(key).is_some_and(|h| h.until > now)
    }

    /// Leases granted so far, by every process.
    pub fn grants(&self) -> u64 {
        self.lock().grants
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("lease store lock")
    }

    fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// Never answers: a dead process sends nothing.
async fn silence<T>() -> T {
    futures::future::pending().await
}

impl Lease for MemoryLease {
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        due: Option<DateTime<Utc>>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquire, LeaseError>> {
        Box::pin(async move {
            if !self.alive() {
                return silence().await;
            }
            let now = Instant::now();
            let mut store = self.lock();
            if store.down {
                return Err(LeaseError::new("connection refused"));
            }
            if let (Some(due), Some(last)) = (due, store.last_due.get(key)) {
                if due <= *last {
                    return Ok(Acquire::AlreadyRan);
                }
            }
            if store.held.get(key).is_some_and(|h| h.until > now) {
                return Ok(Acquire::HeldElsewhere);
            }
            store.next_token += 1;
            store.grants += 1;
            let token = store.next_token;
            store.held.insert(
                key.to_owned(),
                Holding {
                    token,
                    until: now + ttl,
                },
            );
            if let Some(due) = due {
                store.last_due.insert(key.to_owned(), due);
            }
            Ok(Acquire::Granted(LeaseGuard::new(MemoryHeld {
                lease: self.clone(),
                key: key.to_owned(),
                token,
            })))
        })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

struct MemoryHeld {
    lease: MemoryLease,
    key: String,
    token: u64,
}

impl HeldLease for MemoryHeld {
    fn renew(&mut self, ttl: Duration) -> BoxFuture<'_, Result<bool, LeaseError>> {
        Box::pin(async move {
            if !self.lease.alive() {
                return silence().await;
            }
            let now = Instant::now();
            let mut store = self.lease.lock();
            if store.down {
                return Err(LeaseError::new("connection refused"));
            }
            match store.held.get_mut(&self.key) {
                Some(h) if h.token == self.token && h.until > now => {
                    h.until = now + ttl;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), LeaseError>> {
        Box::pin(async move {
            if !self.lease.alive() {
                return silence().await;
            }
            let mut store = self.lease.lock();
            if store.down {
                return Err(LeaseError::new("connection refused"));
            }
            if store
                .held
                .get(&self.key)
                .is_some_and(|h| h.token == self.token)
            {
                store.held.remove(&self.key);
            }
            Ok(())
        })
    }
}
