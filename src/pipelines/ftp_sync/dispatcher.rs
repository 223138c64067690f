//! `Dispatcher`: ftp-sync's writer stage, a continuous pool of transfers that acknowledges each
//! job when it is done.
//!
//! Guarantees:
//! - A job is acknowledged only once its file is in place, or once the DLQ holds it. The source
//!   commits the contiguous prefix of acknowledged offsets, so a job still running or parked holds
//!   the commit of its partition (a crash replays it and what follows; a replay rewrites the same
//!   files) while later jobs run on.
//! - `concurrency` transfers run at once, and a slot is refilled as soon as a transfer ends: no
//!   job waits for a slower one.
//! - Jobs whose server is unavailable (open circuit, misconfigured) are parked and hold no slot.
//!   They stay unacknowledged, so they count against the consumer's in-flight bound and memory
//!   stays bounded. A probe of the server brings them back; a misconfigured server is probed
//!   slowly, never in a tight loop.
//! - Outages never reach the DLQ. A job goes there when it cannot succeed (a missing file, a
//!   refused path), when it keeps failing on healthy servers for `max_retries` attempts, or when
//!   it was parked longer than its server's `dead_letter_after`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actord_actors::record::{Acker, DeadLetter, DlqMsg, Envelope, Item, Poison, Topic};
use actord_actors::writer::WriterMsg;
use actord_actors::Probe;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::job::Job;
use super::names;
use super::transfer::{run, Outcome, Server, Transfers};
use crate::sinks::files::TransferError;

/// How often a misconfigured server is probed: a configuration changes by hand, not by itself.
const MISCONFIGURED_PROBE: Duration = Duration::from_secs(30);

pub struct Dispatcher;

pub struct DispatcherArgs {
    pub probe: Probe,
    pub transfers: Arc<Transfers>,
    /// Where rejected jobs go; `None` when nothing dead-letters here (they are skipped).
    pub dlq: Option<ActorRef<DlqMsg>>,
}

/// What the actor hands its engine.
enum Input {
    Job(Box<Envelope<Job>>),
    /// Partitions taken away, up to each assignment epoch.
    Revoked(Vec<(Topic, i32, u64)>),
}

pub struct DispatcherState {
    jobs: mpsc::UnboundedSender<Input>,
    engine: JoinHandle<()>,
    dlq: Option<ActorRef<DlqMsg>>,
    probe: Probe,
}

impl Actor for Dispatcher {
    type Msg = WriterMsg<Job>;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (tx, rx) = mpsc::unbounded_channel();
        args.transfers.sweep_once();
        let engine = Engine::new(args.transfers, args.dlq.clone(), args.probe.clone());
        Ok(DispatcherState {
            jobs: tx,
            engine: tokio::spawn(engine.run(rx)),
            dlq: args.dlq,
            probe: args.probe,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let batch = match message {
            WriterMsg::Write(batch) => batch,
            WriterMsg::Revoked(revoked) => {
                return state
                    .jobs
                    .send(Input::Revoked(revoked))
                    .map_err(|_| "the transfer engine stopped".into());
            }
        };
        for item in batch.items {
            match item {
                // The DLQ acknowledges it once it holds it; later jobs of its partition cannot
                // be committed past it before then.
                Item::Poison(letter) => dead_letter(&state.dlq, &state.probe, letter),
                Item::Good(envelope) => {
                    if state.jobs.send(Input::Job(Box::new(envelope))).is_err() {
                        return Err("the transfer engine stopped".into());
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Unfinished jobs are not acknowledged: the next owner of their partitions runs them.
        state.engine.abort();
        state.probe.clear_pending();
        Ok(())
    }
}

fn dead_letter(dlq: &Option<ActorRef<DlqMsg>>, probe: &Probe, letter: DeadLetter) {
    match dlq {
        Some(dlq) => {
            if let Err(e) = dlq.cast(DlqMsg::Send(letter, None)) {
                // Unacknowledged, so the job is read again once the path restarts.
                warn!(path = %probe.path(), error = %e, "the DLQ producer is gone; the job will be read again");
            }
        }
        None => {
            letter.acker.ack(vec![letter.source.origin]);
            metrics::counter!(crate::telemetry::names::RECORDS_SKIPPED_TOTAL, "path" => probe.path().to_string())
                .increment(1);
        }
    }
}

/// A job on its way through the pool.
struct Pending {
    envelope: Envelope<Job>,
    /// Attempts that failed on healthy servers.
    failures: u32,
    last_error: Option<TransferError>,
    /// Since when it waits for a server. A parked job is not work this actor holds: stuck
    /// detection must not restart the pool because a server is down.
    parked_at: Option<Instant>,
}

/// When a server that stands in a parked job's way is probed next.
struct ProbePlan {
    server: Arc<Server>,
    due: Instant,
    failures: u32,
}

struct Engine {
    transfers: Arc<Transfers>,
    dlq: Option<ActorRef<DlqMsg>>,
    probe: Probe,
    path: String,
    ready: VecDeque<Pending>,
    parked: Vec<Pending>,
    delayed: Vec<(Instant, Pending)>,
    plans: Vec<ProbePlan>,
    /// Attempts under way per server name.
    attempts: HashMap<String, u32>,
    /// The acknowledger of the consumer that reads now; jobs read by an earlier consumer
    /// (it restarted) are read again by this one and dropped here.
    reader: Option<Acker>,
    /// The latest assignment epoch revoked per partition: jobs read under it belong to
    /// another member now and are dropped, never acknowledged or dead-lettered here.
    revoked: HashMap<(Topic, i32), u64>,
}

type Running = FuturesUnordered<BoxFuture<'static, (Pending, Outcome)>>;
type Probing = FuturesUnordered<BoxFuture<'static, (Arc<Server>, Result<(), TransferError>)>>;

impl Engine {
    fn new(transfers: Arc<Transfers>, dlq: Option<ActorRef<DlqMsg>>, probe: Probe) -> Self {
        metrics::gauge!(names::FTP_PARKED_JOBS).set(0.0);
        Engine {
            path: probe.path().to_string(),
            transfers,
            dlq,
            probe,
            ready: VecDeque::new(),
            parked: Vec::new(),
            delayed: Vec::new(),
            plans: Vec::new(),
            attempts: HashMap::new(),
            reader: None,
            revoked: HashMap::new(),
        }
    }

    /// The job was read by a consumer that is gone, or under an assignment that was revoked.
    fn stale(&self, e: &Envelope<Job>) -> bool {
        let o = &e.source.origin;
        self.reader.as_ref().is_some_and(|r| !r.same(&e.acker))
            || self
                .revoked
                .get(&(o.topic, o.partition))
                .is_some_and(|epoch| o.epoch <= *epoch)
    }

    /// Drops every queued job that is stale (see [`Engine::stale`]); running ones are
    /// dropped when they finish.
    fn drop_stale(&mut self) {
        let before = self.ready.len() + self.delayed.len() + self.parked.len();
        let ready: Vec<Pending> = std::mem::take(&mut self.ready).into();
        let mut held = 0;
        for p in ready {
            if self.stale(&p.envelope) {
                held += 1;
            } else {
                self.ready.push_back(p);
            }
        }
        let delayed = std::mem::take(&mut self.delayed);
        for (at, p) in delayed {
            if self.stale(&p.envelope) {
                held += 1;
            } else {
                self.delayed.push((at, p));
            }
        }
        let parked = std::mem::take(&mut self.parked);
        for p in parked {
            if !self.stale(&p.envelope) {
                self.parked.push(p);
            }
        }
        // Parked jobs hold no work; the others do.
        self.probe.release(held);
        let dropped = before - (self.ready.len() + self.delayed.len() + self.parked.len());
        if dropped > 0 {
            info!(path = %self.path, jobs = dropped, "dropped jobs of partitions this process no longer reads");
        }
    }

    async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Input>) {
        let mut running: Running = FuturesUnordered::new();
        let mut probing: Probing = FuturesUnordered::new();
        let concurrency = self.transfers.settings.concurrency.max(1);
        loop {
            // Oldest first; a job whose untrusted server already has an attempt under way
            // waits in line without taking a slot, and younger jobs go ahead of it.
            let mut i = 0;
            while running.len() < concurrency && i < self.ready.len() {
                let job = &self.ready[i].envelope.record;
                if self.blocked(job).is_some() {
                    let p = self.ready.remove(i).expect("index in range");
                    self.park(p);
                } else if self.startable(job) {
                    let p = self.ready.remove(i).expect("index in range");
                    running.push(self.attempt(p));
                } else {
                    i += 1;
                }
            }
            for plan in self.plans.iter_mut() {
                if plan.due <= Instant::now() {
                    // Far off until the probe answers, so a server is never probed twice at once.
                    plan.due = Instant::now() + Duration::from_secs(3600);
                    probing.push(probe_server(plan.server.clone()));
                }
            }
            self.publish();
            let wake = self
                .delayed
                .iter()
                .map(|(at, _)| *at)
                .chain(self.plans.iter().map(|p| p.due))
                .chain(self.parked_deadlines())
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some((p, outcome)) = running.next(), if !running.is_empty() => {
                    for name in servers_of(&p.envelope.record) {
                        if let Some(n) = self.attempts.get_mut(name) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    self.finished(p, outcome);
                }
                Some((server, result)) = probing.next(), if !probing.is_empty() => {
                    self.probed(&server, result);
                }
                input = jobs.recv() => match input {
                    Some(Input::Job(envelope)) => {
                        let envelope = *envelope;
                        if !self.reader.as_ref().is_some_and(|r| r.same(&envelope.acker)) {
                            // A new consumer: what the old one read comes again through it.
                            self.reader = Some(envelope.acker.clone());
                            self.drop_stale();
                        }
                        self.probe.hold(1);
                        self.ready.push_back(Pending {
                            envelope,
                            failures: 0,
                            last_error: None,
                            parked_at: None,
                        });
                    }
                    Some(Input::Revoked(revoked)) => {
                        for (topic, partition, epoch) in revoked {
                            let at = self.revoked.entry((topic, partition)).or_insert(epoch);
                            *at = (*at).max(epoch);
                        }
                        self.drop_stale();
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(wake) => self.timers(),
            }
        }
    }

    /// The first server of `job` that cannot be used now.
    fn blocked(&self, job: &Job) -> Option<Arc<Server>> {
        servers_of(job)
            .map(|name| self.transfers.server(name))
            .find(|s| !s.available())
            .cloned()
    }

    /// Every server of `job` is trusted, or has no attempt under way.
    fn startable(&self, job: &Job) -> bool {
        servers_of(job).all(|name| {
            self.transfers.server(name).trusted()
                || self.attempts.get(name).copied().unwrap_or(0) == 0
        })
    }

    fn attempt(&mut self, p: Pending) -> BoxFuture<'static, (Pending, Outcome)> {
        for name in servers_of(&p.envelope.record) {
            *self.attempts.entry(name.clone()).or_insert(0) += 1;
        }
        let transfers = self.transfers.clone();
        let probe = self.probe.clone();
        Box::pin(async move {
            let topic = p.envelope.source.origin.topic.as_str();
            let progress = move |bytes: u64| probe.progress(0, bytes);
            let outcome = run(&transfers, &p.envelope.record, topic, &progress).await;
            (p, outcome)
        })
    }

    fn park(&mut self, mut p: Pending) {
        if p.parked_at.is_none() {
            p.parked_at = Some(Instant::now());
            self.probe.release(1);
        }
        if let Some(server) = self.blocked(&p.envelope.record) {
            self.plan_probe(&server);
        }
        self.parked.push(p);
    }

    /// Makes sure `server` has a probe planned.
    fn plan_probe(&mut self, server: &Arc<Server>) {
        if self.plans.iter().any(|p| Arc::ptr_eq(&p.server, server)) {
            return;
        }
        let delay = if server.misconfigured().is_some() {
            MISCONFIGURED_PROBE
        } else {
            self.transfers.settings.backoff.delay(0)
        };
        self.plans.push(ProbePlan {
            server: server.clone(),
            due: Instant::now() + delay,
            failures: 0,
        });
    }

    fn finished(&mut self, mut p: Pending, outcome: Outcome) {
        if self.stale(&p.envelope) {
            // Its partition's new owner transfers it (again, to the same name) and answers
            // for it; an acknowledgement or a dead letter from here would be a second one.
            self.probe.release(1);
            return;
        }
        let settings = &self.transfers.settings;
        let job_id = p.envelope.record.id.clone();
        match outcome {
            Outcome::Done => {
                self.probe.release(1);
                self.probe.progress(1, 0);
                let origin = p.envelope.source.origin;
                p.envelope.acker.ack(vec![origin]);
            }
            Outcome::Rejected(err) => {
                warn!(path = %self.path, job = %job_id, error = %err, "transfer failed permanently");
                let retries = p.failures;
                self.reject(p, &err, retries);
            }
            Outcome::Waiting => self.park(p),
            Outcome::Failed(err, server) => {
                metrics::counter!(names::FTP_JOBS_TOTAL, "topic" => p.envelope.source.origin.topic.as_str(), "outcome" => "failed").increment(1);
                let server = self.transfers.server(&server).clone();
                p.last_error = Some(err.clone());
                if err.misconfigured {
                    if server.set_misconfigured(&err) {
                        self.probe
                            .set_error(format!("server {}: {err}", server.name));
                    }
                    self.park(p);
                    return;
                }
                // Whether a transfer succeeded on this server since its last failure: until one
                // does, a failure says nothing about the job.
                let proven = server.trusted();
                let opened = server.failed(settings.breaker_threshold, &err);
                // Failures that open the circuit, or meet it open, are the server's: the job
                // waits for it without spending its attempts.
                if opened || server.is_open() {
                    self.park(p);
                    return;
                }
                if !proven {
                    let at = Instant::now() + settings.backoff.delay(0);
                    self.delayed.push((at, p));
                    return;
                }
                p.failures += 1;
                if p.failures >= settings.max_retries {
                    let retries = p.failures - 1;
                    let err = TransferError {
                        message: format!("{} (after {} attempts)", err.message, p.failures),
                        ..err
                    };
                    self.reject(p, &err, retries);
                } else {
                    warn!(path = %self.path, job = %job_id, attempt = p.failures, error = %err, "transfer failed, retrying");
                    let at = Instant::now() + settings.backoff.delay(p.failures - 1);
                    self.delayed.push((at, p));
                }
            }
        }
    }

    fn reject(&mut self, p: Pending, err: &TransferError, retries: u32) {
        if p.parked_at.is_none() {
            self.probe.release(1);
        }
        metrics::counter!(names::FTP_JOBS_TOTAL, "topic" => p.envelope.source.origin.topic.as_str(), "outcome" => "dlq").increment(1);
        let letter = DeadLetter {
            source: p.envelope.source,
            acker: p.envelope.acker,
            poison: Poison::new(err.class, err.message.clone()),
            stage: "sink",
            retry_count: retries,
        };
        dead_letter(&self.dlq, &self.probe, letter);
    }

    fn probed(&mut self, server: &Arc<Server>, result: Result<(), TransferError>) {
        let Some(i) = self
            .plans
            .iter()
            .position(|p| Arc::ptr_eq(&p.server, server))
        else {
            return;
        };
        match result {
            Ok(()) => {
                server.probe_succeeded();
                self.plans.swap_remove(i);
                // Everything that waited for this server goes back in line, oldest first.
                let (back, still): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.parked)
                    .into_iter()
                    .partition(|p| self.blocked(&p.envelope.record).is_none());
                if !back.is_empty() {
                    info!(path = %self.path, server = %server.name, jobs = back.len(), "server available again: resuming its parked jobs");
                }
                for mut p in back {
                    p.parked_at = None;
                    self.probe.hold(1);
                    self.ready.push_back(p);
                }
                self.parked = still;
                for p in &self.parked {
                    if let Some(s) = self.blocked(&p.envelope.record) {
                        if !self.plans.iter().any(|pl| Arc::ptr_eq(&pl.server, &s)) {
                            self.plans.push(ProbePlan {
                                server: s,
                                due: Instant::now(),
                                failures: 0,
                            });
                        }
                    }
                }
            }
            Err(err) => {
                let plan = &mut self.plans[i];
                plan.failures += 1;
                if err.misconfigured {
                    server.set_misconfigured(&err);
                }
                let delay = if server.misconfigured().is_some() {
                    MISCONFIGURED_PROBE
                } else {
                    self.transfers.settings.backoff.delay(plan.failures)
                };
                plan.due = Instant::now() + delay;
                info!(path = %self.path, server = %server.name, error = %err, next_probe = ?delay, "server still unavailable");
            }
        }
    }

    /// Due retries go back in line; jobs parked past their server's `dead_letter_after` go to
    /// the DLQ with the last error.
    fn timers(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.delayed = later;
        self.ready.extend(due.into_iter().map(|(_, p)| p));
        let mut kept = Vec::with_capacity(self.parked.len());
        for p in std::mem::take(&mut self.parked) {
            match self.expired(&p, now) {
                Some(server) => {
                    let waited = p.parked_at.map(|t| now - t).unwrap_or_default();
                    let cause = p
                        .last_error
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| server.state());
                    let err = TransferError::transient(
                        "ServerUnavailable",
                        format!(
                            "{} unavailable for {waited:?} (dead_letter_after): {cause}",
                            server.name
                        ),
                    );
                    warn!(path = %self.path, job = %p.envelope.record.id, server = %server.name, "job parked past dead_letter_after, dead-lettering it");
                    let retries = p.failures;
                    self.reject(p, &err, retries);
                }
                None => kept.push(p),
            }
        }
        self.parked = kept;
    }

    /// The server whose `dead_letter_after` this parked job has outlived.
    fn expired(&self, p: &Pending, now: Instant) -> Option<Arc<Server>> {
        let since = p.parked_at?;
        let server = self.blocked(&p.envelope.record)?;
        let limit = server.dead_letter_after?;
        (now - since >= limit).then_some(server)
    }

    fn parked_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.parked.iter().filter_map(|p| {
            let server = self.blocked(&p.envelope.record)?;
            Some(p.parked_at? + server.dead_letter_after?)
        })
    }

    fn publish(&self) {
        let parked = self.parked.len() as u64;
        self.probe.set_counter("parked", parked);
        metrics::gauge!(names::FTP_PARKED_JOBS).set(parked as f64);
    }
}

fn servers_of(job: &Job) -> impl Iterator<Item = &String> {
    [&job.source.hostname, &job.destination.hostname].into_iter()
}

fn probe_server(
    server: Arc<Server>,
) -> BoxFuture<'static, (Arc<Server>, Result<(), TransferError>)> {
    Box::pin(async move {
        let result = server.transport.probe().await;
        (server, result)
    })
}
