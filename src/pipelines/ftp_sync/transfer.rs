//! `TransferSink`: runs the jobs of a batch, `concurrency` at a time, each streaming from its
//! source server into its destination server.
//!
//! Failures are sorted by whose they are. A permanent failure (the source file is missing, a
//! path is refused) is the job's: it is rejected at once and dead-lettered. A transient failure
//! (refused connection, timeout, 4xx reply, lost login) counts against the server: enough of them
//! in a row, across jobs, open the server's circuit breaker, and jobs that need an open server
//! wait — without spending their attempts — until a probe of the server succeeds. An outage
//! therefore holds the batch (and, through backpressure, the consumer) instead of emptying the
//! topic into the DLQ. A job that keeps failing while its servers are otherwise healthy is
//! dead-lettered after `max_retries` attempts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use actord_actors::record::Envelope;
use actord_actors::sink::{Rejection, Sink, SinkError, SinkFactory};
use actord_actors::Backoff;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use super::job::Job;
use crate::sinks::files::{Staged, TransferError, Transport};
use crate::telemetry::names;

/// Verification after the bytes moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The destination holds as many bytes as the source sent (always done).
    Size,
    /// Also the SHA-256 of the stream equals that of the destination file, re-read.
    Sha256,
}

/// A server and its circuit breaker.
pub struct Server {
    pub name: String,
    pub transport: Arc<dyn Transport>,
    failures: AtomicU32,
    open: AtomicBool,
}

impl Server {
    pub fn new(name: impl Into<String>, transport: Arc<dyn Transport>) -> Self {
        Server {
            name: name.into(),
            transport,
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open.swap(false, Ordering::AcqRel) {
            info!(server = %self.name, "circuit closed: the server answers again");
            metrics::gauge!(names::FTP_CIRCUIT_OPEN, "server" => self.name.clone()).set(0.0);
        }
    }

    /// Records a transient failure; true when it opened the circuit.
    fn failed(&self, threshold: u32, error: &TransferError) -> bool {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= threshold && !self.open.swap(true, Ordering::AcqRel) {
            warn!(server = %self.name, failures = n, error = %error, "circuit opened: pausing jobs for this server until a probe succeeds");
            metrics::gauge!(names::FTP_CIRCUIT_OPEN, "server" => self.name.clone()).set(1.0);
            return true;
        }
        false
    }
}

pub struct Settings {
    pub concurrency: usize,
    pub max_retries: u32,
    pub backoff: Backoff,
    pub breaker_threshold: u32,
    pub verify: Verify,
}

/// What every writer of the pipeline shares: the servers (with their pools and breakers).
pub struct Transfers {
    pub servers: BTreeMap<String, Arc<Server>>,
    pub settings: Settings,
}

impl Transfers {
    pub fn factory(self: &Arc<Self>) -> SinkFactory<TransferSink> {
        let shared = self.clone();
        Arc::new(move || {
            let shared = shared.clone();
            Box::pin(async move {
                Ok(TransferSink {
                    shared,
                    done: HashSet::new(),
                    attempts: HashMap::new(),
                })
            })
        })
    }

    /// True when no server's circuit is open.
    pub fn healthy(&self) -> bool {
        self.servers.values().all(|s| !s.is_open())
    }

    fn server(&self, name: &str) -> &Arc<Server> {
        &self.servers[name]
    }
}

/// A job's place in its source, which identifies it across retries of the same batch.
type Key = (&'static str, i32, i64);

fn key(e: &Envelope<Job>) -> Key {
    let o = &e.source.origin;
    (o.topic.as_str(), o.partition, o.offset)
}

enum Outcome {
    Done,
    /// The job cannot succeed.
    Rejected(TransferError),
    /// It failed on `server`, which may recover.
    Failed(TransferError, String),
    /// A server it needs has an open circuit; not attempted.
    Waiting,
}

pub struct TransferSink {
    shared: Arc<Transfers>,
    /// Jobs of the current batch already transferred (a retried batch skips them).
    done: HashSet<Key>,
    /// Attempts per job that failed while its servers were healthy.
    attempts: HashMap<Key, u32>,
}

impl Sink<Job> for TransferSink {
    async fn write(&mut self, records: &[Envelope<Job>]) -> Result<(), SinkError> {
        let shared = self.shared.clone();
        let s = &shared.settings;
        let mut rejected: Vec<Rejection> = Vec::new();
        let mut round = 0u32;
        loop {
            let pending: Vec<usize> = (0..records.len())
                .filter(|i| {
                    let k = key(&records[*i]);
                    !self.done.contains(&k) && !rejected.iter().any(|r| r.index == *i)
                })
                .collect();
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                tokio::time::sleep(s.backoff.delay(round - 1)).await;
            }
            round = round.saturating_add(1);
            let outcomes: Vec<(usize, Outcome)> = futures::stream::iter(pending)
                .map(|i| {
                    let shared = shared.clone();
                    let job = records[i].record.clone();
                    let topic = records[i].source.origin.topic.as_str();
                    async move { (i, run(&shared, &job, topic).await) }
                })
                .buffer_unordered(s.concurrency.max(1))
                .collect()
                .await;
            let mut waiting = false;
            for (i, outcome) in outcomes {
                let e = &records[i];
                let k = key(e);
                let topic = e.source.origin.topic.as_str().to_owned();
                match outcome {
                    Outcome::Done => {
                        self.attempts.remove(&k);
                        self.done.insert(k);
                    }
                    Outcome::Rejected(err) => {
                        let attempts = self.attempts.remove(&k).unwrap_or(0) + 1;
                        warn!(job = %e.record.id, error = %err, "transfer failed permanently");
                        rejected.push(Rejection {
                            index: i,
                            class: err.class.to_owned(),
                            message: err.message,
                            attempts,
                        });
                    }
                    Outcome::Failed(err, server) => {
                        metrics::counter!(names::FTP_JOBS_TOTAL, "topic" => topic, "outcome" => "failed").increment(1);
                        let server = shared.server(&server);
                        let opened = server.failed(s.breaker_threshold, &err);
                        // Only failures on a server that is otherwise healthy count against
                        // the job; those that open the circuit, or meet it open, are the
                        // server's.
                        if opened || server.is_open() {
                            waiting = true;
                            continue;
                        }
                        let n = self.attempts.entry(k).or_insert(0);
                        *n += 1;
                        warn!(job = %e.record.id, attempt = *n, error = %err, "transfer failed, retrying");
                        if *n >= s.max_retries {
                            rejected.push(Rejection {
                                index: i,
                                class: err.class.to_owned(),
                                message: format!("{} (after {} attempts)", err.message, *n),
                                attempts: *n,
                            });
                            self.attempts.remove(&k);
                        }
                    }
                    Outcome::Waiting => waiting = true,
                }
            }
            if waiting {
                probe_open(&shared).await;
            }
        }
        self.done.clear();
        for r in &rejected {
            let topic = records[r.index].source.origin.topic.as_str().to_owned();
            metrics::counter!(names::FTP_JOBS_TOTAL, "topic" => topic, "outcome" => "dlq")
                .increment(1);
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(SinkError::rejected(rejected))
        }
    }
}

/// Probes every server whose circuit is open; a success closes it.
async fn probe_open(shared: &Transfers) {
    for server in shared.servers.values().filter(|s| s.is_open()) {
        match server.transport.probe().await {
            Ok(()) => server.succeeded(),
            Err(e) => info!(server = %server.name, error = %e, "circuit still open"),
        }
    }
}

async fn run(shared: &Transfers, job: &Job, topic: &str) -> Outcome {
    let src = shared.server(&job.source.hostname);
    let dst = shared.server(&job.destination.hostname);
    if src.is_open() || dst.is_open() {
        return Outcome::Waiting;
    }
    metrics::gauge!(names::FTP_IN_FLIGHT).increment(1.0);
    let started = Instant::now();
    let result = transfer(
        src.transport.as_ref(),
        &job.source.path,
        dst.transport.as_ref(),
        &job.destination.path,
        shared.settings.verify,
    )
    .await;
    metrics::gauge!(names::FTP_IN_FLIGHT).decrement(1.0);
    match result {
        Ok(bytes) => {
            src.succeeded();
            dst.succeeded();
            let elapsed = started.elapsed();
            metrics::histogram!(names::FTP_TRANSFER_DURATION_SECONDS, "topic" => topic.to_owned())
                .record(elapsed.as_secs_f64());
            metrics::counter!(names::FTP_BYTES_TOTAL, "topic" => topic.to_owned()).increment(bytes);
            metrics::counter!(names::FTP_JOBS_TOTAL, "topic" => topic.to_owned(), "outcome" => "done")
                .increment(1);
            info!(job = %job.id, source = %job.source.hostname, from = %job.source.path, destination = %job.destination.hostname, to = %job.destination.path, bytes, elapsed = ?elapsed, "transferred");
            Outcome::Done
        }
        Err((err, _)) if err.permanent => Outcome::Rejected(err),
        Err((err, Side::Source)) => Outcome::Failed(err, job.source.hostname.clone()),
        Err((err, Side::Destination)) => Outcome::Failed(err, job.destination.hostname.clone()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Hashes what passes through on its way to `inner`, and notes when the reader went away.
struct Hashing<W> {
    inner: W,
    hash: Option<Sha256>,
    /// A write failed because the upload had already ended and dropped its end of the pipe:
    /// the download's error is then a consequence, and the upload's error is the cause.
    reader_gone: bool,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Hashing<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        match &poll {
            Poll::Ready(Ok(n)) => {
                if let Some(h) = self.hash.as_mut() {
                    h.update(&buf[..*n]);
                }
            }
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.reader_gone = true;
            }
            _ => {}
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A sink for re-reading a destination: only hashes.
struct HashOnly(Sha256);

impl AsyncWrite for HashOnly {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.update(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The size of the pipe between the download and the upload: the memory one transfer holds.
const PIPE: usize = 256 << 10;

/// Streams `src_path` into `dst_path`: staged under a temporary name, verified, then renamed
/// into place. Returns the bytes moved, or the error and the side it came from.
pub async fn transfer(
    src: &dyn Transport,
    src_path: &str,
    dst: &dyn Transport,
    dst_path: &str,
    verify: Verify,
) -> Result<u64, (TransferError, Side)> {
    let expected = src.size(src_path).await.map_err(|e| (e, Side::Source))?;
    let (pipe_in, pipe_out) = tokio::io::duplex(PIPE);
    let mut hashing = Hashing {
        inner: pipe_in,
        hash: (verify == Verify::Sha256).then(Sha256::new),
        reader_gone: false,
    };
    let download = async {
        let result = src.download(src_path, &mut hashing).await;
        // Whatever happened, the upload must see the end of the stream.
        let _ = hashing.inner.shutdown().await;
        result
    };
    // The upload owns its end of the pipe and drops it when it ends, so an upload that fails
    // before reading everything (refused connection or login, 550 on STOR) makes the download's
    // next write fail instead of waiting forever for room in a full pipe.
    let upload = async move {
        let mut pipe_out = pipe_out;
        dst.upload(dst_path, &mut pipe_out).await
    };
    let (down, up) = tokio::join!(download, upload);
    let staged: Staged = match (down, up) {
        (Ok(_), Ok(staged)) => staged,
        (Err(_), Err(e)) if hashing.reader_gone => return Err((e, Side::Destination)),
        (Err(e), up) => {
            if let Ok(staged) = up {
                dst.discard(&staged).await;
            }
            return Err((e, Side::Source));
        }
        (Ok(_), Err(e)) => return Err((e, Side::Destination)),
    };
    let fail = |e: TransferError| (e, Side::Destination);
    if let Some(n) = expected {
        if staged.bytes != n {
            dst.discard(&staged).await;
            return Err(fail(TransferError::transient(
                "SizeMismatch",
                format!("{src_path} has {n} bytes, {} arrived", staged.bytes),
            )));
        }
    }
    if let Some(hash) = hashing.hash.take() {
        let sent = hash.finalize();
        let mut reread = HashOnly(Sha256::new());
        if let Err(e) = dst.download(&staged.temp, &mut reread).await {
            dst.discard(&staged).await;
            return Err(fail(e));
        }
        if reread.0.finalize() != sent {
            dst.discard(&staged).await;
            return Err(fail(TransferError::transient(
                "ChecksumMismatch",
                format!("{dst_path}: the destination's SHA-256 differs from the source stream's"),
            )));
        }
    }
    if let Err(e) = dst.commit(&staged, dst_path).await {
        dst.discard(&staged).await;
        return Err(fail(e));
    }
    Ok(staged.bytes)
}
