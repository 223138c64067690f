//! `Clock`: the wall clock the scheduler reads due times from, injected so tests can move days in milliseconds.

use chrono::{DateTime, Utc};

/// Where the scheduler reads the current wall-clock time. It still sleeps with tokio's timer;
/// the clock only decides which due times have come.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The host's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
