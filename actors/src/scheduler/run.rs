//! One run of an entry, as its own task: take the lease, run the job while renewing, release, record.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use ractor::RpcReplyPort;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};
use tracing::{info, warn};

use super::clock::Clock;
use super::entry::{Entry, RunContext, RunId, RunProgress, Trigger};
use super::handle::{SchedulerHandle, SkipReason};
use super::lease::{Acquire, LeaseGuard};
use super::RunNowError;
use crate::observe::Probe;

/// Everything a run task needs; built by the scheduler when it claims a run.
pub(crate) struct Run {
    pub(crate) pipeline: String,
    pub(crate) entry: Entry,
    pub(crate) idx: usize,
    pub(crate) run_id: RunId,
    pub(crate) trigger: Trigger,
    pub(crate) due: DateTime<Utc>,
    pub(crate) progress: Arc<RunProgress>,
    pub(crate) handle: SchedulerHandle,
    pub(crate) probe: Probe,
    pub(crate) clock: Arc<dyn Clock>,
    /// `true` asks the job to finish; the sender dropped means stop now.
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) reply: Option<RpcReplyPort<Result<RunId, RunNowError>>>,
}

enum Ended {
    Done(Result<crate::scheduler::RunSummary, String>),
    /// The scheduler went away without a graceful stop; its pending work was cleared.
    Dropped,
}

impl Run {
    pub(crate) async fn execute(mut self) {
        let key = format!("{}/{}", self.pipeline, self.entry.name);
        let ttl = self.entry.lease_ttl;
        let claim_due = (self.trigger == Trigger::Schedule).then_some(self.due);
        let lease = self.entry.lease.clone();
        let mut stop = self.stop.clone();
        let acquired = tokio::select! {
            biased;
            () = hard_stop(&mut stop) => None,
            answer = timeout(ttl, lease.try_acquire(&key, claim_due, ttl)) => Some(answer),
        };
        let guard = match acquired {
            None => {
                self.handle.abandon(self.idx, self.run_id);
                self.answer(Err(RunNowError::Stopping));
                return;
            }
            Some(Ok(Ok(Acquire::Granted(guard)))) => guard,
            Some(Ok(Ok(Acquire::HeldElsewhere))) => {
                info!(pipeline = %self.pipeline, entry = %self.entry.name, due = %self.due, "run skipped, lease held elsewhere");
                self.skip(SkipReason::LeaseHeld, None);
                let entry = self.entry.name.clone();
                self.answer(Err(RunNowError::LeaseHeld(entry)));
                return;
            }
            Some(Ok(Ok(Acquire::AlreadyRan))) => {
                info!(pipeline = %self.pipeline, entry = %self.entry.name, due = %self.due, "run skipped, this due time already ran elsewhere");
                self.skip(SkipReason::RanElsewhere, None);
                let entry = self.entry.name.clone();
                self.answer(Err(RunNowError::LeaseHeld(entry)));
                return;
            }
            Some(answer) => {
                let error = match answer {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {ttl:?}"),
                };
                warn!(pipeline = %self.pipeline, entry = %self.entry.name, due = %self.due, error = %error, "run skipped, lease unavailable");
                self.skip(SkipReason::LeaseUnavailable, Some(error.clone()));
                let entry = self.entry.name.clone();
                self.answer(Err(RunNowError::LeaseUnavailable { entry, error }));
                return;
            }
        };

        let started = self.clock.now();
        let began = Instant::now();
        self.handle
            .started(&self.probe, self.idx, self.run_id, started);
        self.probe.hold(1);
        self.answer(Ok(self.run_id));
        info!(pipeline = %self.pipeline, entry = %self.entry.name, run_id = %self.run_id, trigger = self.trigger.as_str(), due = %self.due, "run started");

        let ctx = RunContext {
            pipeline: self.pipeline.clone(),
            entry: self.entry.name.clone(),
            run_id: self.run_id,
            trigger: self.trigger,
            due: self.due,
            started,
            probe: self.probe.clone(),
            progress: self.progress.clone(),
            stop: self.stop.clone(),
        };
        let mut guard = guard;
        let job = AssertUnwindSafe(self.entry.job.call(ctx)).catch_unwind();
        let ended = tokio::select! {
            result = job => Ended::Done(match result {
                Ok(result) => result,
                Err(panic) => Err(format!("the job panicked: {}", panic_message(&*panic))),
            }),
            lost = keep(&mut guard, ttl) => Ended::Done(Err(format!("cancelled, the lease was lost: {lost}"))),
            () = hard_stop(&mut stop) => Ended::Dropped,
        };
        if let Err(e) = timeout(renew_period(ttl), guard.release())
            .await
            .unwrap_or_else(|_| Err(super::lease::LeaseError::new("no answer to the release")))
        {
            // The lease expires by itself after its ttl.
            warn!(pipeline = %self.pipeline, entry = %self.entry.name, run_id = %self.run_id, error = %e, "lease release failed");
        }
        let took = began.elapsed();
        let result = match ended {
            Ended::Done(result) => {
                self.probe.release(1);
                match &result {
                    Ok(summary) => {
                        info!(pipeline = %self.pipeline, entry = %self.entry.name, run_id = %self.run_id, took = ?took, records = summary.records, "run succeeded")
                    }
                    Err(error) => {
                        warn!(pipeline = %self.pipeline, entry = %self.entry.name, run_id = %self.run_id, took = ?took, error = %error, "run failed");
                        self.probe.set_error(format!(
                            "{}: run {} failed: {error}",
                            self.entry.name, self.run_id
                        ));
                    }
                }
                result
            }
            Ended::Dropped => {
                // The supervisor records why the scheduler went away; the probe keeps that.
                warn!(pipeline = %self.pipeline, entry = %self.entry.name, run_id = %self.run_id, took = ?took, "run interrupted, the scheduler stopped");
                Err("interrupted, the scheduler stopped".to_owned())
            }
        };
        let at = self.clock.now();
        self.handle
            .finished(&self.probe, self.idx, self.run_id, result, took, at);
    }

    /// Counts a due time that did not run; a refused "run now" only gets its answer.
    fn skip(&self, reason: SkipReason, detail: Option<String>) {
        if self.trigger == Trigger::Manual {
            self.handle.abandon(self.idx, self.run_id);
            return;
        }
        self.handle.skipped(
            &self.probe,
            self.idx,
            Some(self.run_id),
            reason,
            self.due,
            detail,
        );
    }

    fn answer(&mut self, answer: Result<RunId, RunNowError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(answer);
        }
    }
}

/// Renewal period: three chances to renew within one ttl.
fn renew_period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(1))
}

/// Renews the lease every `ttl / 3`; returns only when the lease is lost. A renewal that fails
/// is retried, but once the next chance would come after the lease expires, the run gives up
/// before another process can take the lease and start a second run.
async fn keep(guard: &mut LeaseGuard, ttl: Duration) -> String {
    let period = renew_period(ttl);
    let mut valid_until = Instant::now() + ttl;
    loop {
        sleep(period).await;
        let asked = Instant::now();
        match timeout(period, guard.renew(ttl)).await {
            Ok(Ok(true)) => {
                valid_until = asked + ttl;
                continue;
            }
            Ok(Ok(false)) => return "it expired and is no longer ours".to_owned(),
            Ok(Err(e)) => warn!(error = %e, "lease renewal failed, retrying"),
            Err(_) => warn!(timeout = ?period, "lease renewal timed out, retrying"),
        }
        if Instant::now() + period >= valid_until {
            return format!("not renewed for {:?}", ttl.saturating_sub(period));
        }
    }
}

/// Resolves when the stop sender is dropped (the scheduler incarnation is gone).
async fn hard_stop(stop: &mut watch::Receiver<bool>) {
    while stop.changed().await.is_ok() {}
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string payload".to_owned()
    }
}
