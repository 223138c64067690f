//! `Lease`: a run's claim that no other process runs the same entry at the same time, or the same due time again.
//!
//! The scheduler takes a lease before every run, renews it every `ttl / 3` while the run lasts and
//! releases it at the end. A holder that dies stops renewing, so its lease expires after `ttl` and
//! another process may run the entry. A run whose lease cannot be renewed before it would expire
//! is cancelled, so two processes never run an entry at once.
//!
//! Implementations live with their stores (PostgreSQL, Redis) in the binary; this crate has
//! [`NoLease`] for single-process entries and an in-memory store in the testkit.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use thiserror::Error;

/// The store could not answer (connection refused, timeout). The run is skipped, not failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct LeaseError(pub String);

impl LeaseError {
    pub fn new(message: impl Into<String>) -> Self {
        LeaseError(message.into())
    }
}

/// The answer to a claim.
pub enum Acquire {
    /// The lease is ours until `ttl` passes without a renewal.
    Granted(LeaseGuard),
    /// Another holder's lease has not expired: a run is going on elsewhere.
    HeldElsewhere,
    /// Another process already claimed this due time (or a later one).
    AlreadyRan,
}

impl std::fmt::Debug for Acquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Acquire::Granted(_) => "Granted",
            Acquire::HeldElsewhere => "HeldElsewhere",
            Acquire::AlreadyRan => "AlreadyRan",
        })
    }
}

/// A store of leases shared by the processes that may run the same entries.
///
/// Contract for an implementation:
/// - `key` is `<pipeline>/<entry>`, the same in every process.
/// - Grant only when no unexpired lease on `key` exists; the lease expires `ttl` after it was
///   granted or last renewed (Redis: `SET key token NX PX ttl`; PostgreSQL: an advisory lock
///   held by a session, or a row with an expiry).
/// - `due` is the scheduled time the run is for, `None` for an operator's "run now". The store
///   remembers the latest `due` it granted per key (kept at least as long as the longest gap
///   between due times) and answers [`Acquire::AlreadyRan`] for a `due` at or before it. Every
///   process computes the same due times from the same schedule, so a process whose timer fires
///   after another one's short run has ended does not run that due time a second time.
/// - A store that cannot answer returns `Err`; the scheduler skips the run and logs a warning.
pub trait Lease: Send + Sync + 'static {
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        due: Option<DateTime<Utc>>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquire, LeaseError>>;

    /// A short name for the admin view and logs (`none`, `redis`, `postgres`).
    fn kind(&self) -> &'static str {
        "custom"
    }
}

/// A lease while it is held.
pub trait HeldLease: Send + 'static {
    /// Extends the lease to `ttl` from now. `Ok(false)` when it is no longer ours (it expired,
    /// and may have been taken).
    fn renew(&mut self, ttl: Duration) -> BoxFuture<'_, Result<bool, LeaseError>>;

    /// Gives the lease up (only if it is still ours).
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), LeaseError>>;
}

/// A held lease, as the scheduler keeps it during a run.
pub struct LeaseGuard(Box<dyn HeldLease>);

impl LeaseGuard {
    pub fn new(held: impl HeldLease) -> Self {
        LeaseGuard(Box::new(held))
    }

    pub async fn renew(&mut self, ttl: Duration) -> Result<bool, LeaseError> {
        self.0.renew(ttl).await
    }

    pub async fn release(self) -> Result<(), LeaseError> {
        self.0.release().await
    }
}

/// Always grants: for entries that only one process runs. The scheduler itself never runs an
/// entry twice at once, so nothing needs to be stored.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLease;

struct NoHold;

impl HeldLease for NoHold {
    fn renew(&mut self, _ttl: Duration) -> BoxFuture<'_, Result<bool, LeaseError>> {
        Box::pin(async { Ok(true) })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), LeaseError>> {
        Box::pin(async { Ok(()) })
    }
}

impl Lease for NoLease {
    fn try_acquire<'a>(
        &'a self,
        _key: &'a str,
        _due: Option<DateTime<Utc>>,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquire, LeaseError>> {
        Box::pin(async { Ok(Acquire::Granted(LeaseGuard::new(NoHold))) })
    }

    fn kind(&self) -> &'static str {
        "none"
    }
}
