//! State shared between the pipeline's parts and shown by `/adaptive-card/monitor`: the T2A
//! circuit breaker of this process's sales-org workers, and the drain counters of the run this
//! process drives.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actord_actors::Backoff;
use serde::Serialize;
use tracing::{info, warn};

/// Failures of T2A requests in a row, across jobs and workers, that open the circuit.
pub const BREAKER_THRESHOLD: u32 = 3;

/// Waits between a paused worker's probes while the circuit is open.
pub const PROBE_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
    factor: 2.0,
};

/// The T2A circuit breaker: an outage (refused, timeout, 5xx, 429) that repeats across jobs
/// opens it; the workers then hold their jobs and retry them as probes, with backoff, instead
/// of failing or dead-lettering them; the first success closes it.
#[derive(Default)]
pub struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Breaker {
    /// A request failed as an outage; true when the circuit is (now) open.
    pub fn failed(&self, error: &str) -> bool {
        *self.last_error.lock().expect("breaker lock") = Some(error.to_owned());
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= BREAKER_THRESHOLD && !self.open.swap(true, Ordering::AcqRel) {
            warn!(failures = n, error = %error, "T2A circuit open: sales-org workers pause and probe until the API answers");
        }
        self.is_open()
    }

    /// A request got through: the circuit closes.
    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open.swap(false, Ordering::AcqRel) {
            info!("T2A circuit closed: the API answers again");
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("breaker lock").clone()
    }
}

/// One stage's jobs in the current (or last) run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StageCounts {
    pub enqueued: u64,
    /// Acknowledged after their work was done.
    pub done: u64,
    pub dead_lettered: u64,
    /// Pending in a worker or not delivered yet.
    pub remaining: u64,
}

/// The drain counters of the run this process drives.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunCounts {
    pub run_id: i64,
    pub sales_org: StageCounts,
    pub adaptive_card: StageCounts,
}

/// Where the run job writes its counters and the monitor reads them.
#[derive(Default)]
pub struct RunStatus(Mutex<Option<RunCounts>>);

impl RunStatus {
    pub fn update(&self, f: impl FnOnce(&mut RunCounts)) {
        let mut guard = self.0.lock().expect("run status lock");
        if let Some(counts) = guard.as_mut() {
            f(counts);
        }
    }

    pub fn start(&self, run_id: i64) {
        *self.0.lock().expect("run status lock") = Some(RunCounts {
            run_id,
            ..RunCounts::default()
        });
    }

    pub fn get(&self) -> Option<RunCounts> {
        self.0.lock().expect("run status lock").clone()
    }
}
