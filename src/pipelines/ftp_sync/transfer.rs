//! One transfer: streaming a file from its source server into its destination server, and the
//! servers with their circuit breakers and configuration state.
//!
//! Failures are sorted by whose they are. A permanent failure (the source file is missing, a
//! path is refused) is the job's. A transient failure (refused connection, timeout, 4xx reply)
//! counts against the server: enough of them in a row, across jobs, open the server's circuit.
//! A misconfiguration (a refused login, a host key or certificate that does not verify) marks the
//! server `misconfigured` at once. The dispatcher decides what each means for the job.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actord_actors::Backoff;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{error, info, warn};

use super::job::Job;
use super::names;
use crate::sinks::files::{Staged, Staging, TransferError, Transport};

/// Verification after the bytes moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The destination holds as many bytes as the source sent (always done).
    Size,
    /// Also the SHA-256 of the stream equals that of the destination file, re-read.
    Sha256,
}

/// A server: its transport, its circuit breaker and whether it is misconfigured.
pub struct Server {
    pub name: String,
    pub transport: Arc<dyn Transport>,
    /// Jobs parked for this server longer than this are dead-lettered (off: they wait).
    pub dead_letter_after: Option<Duration>,
    /// How uploads to this server reach their final name.
    pub staging: Staging,
    /// Where stale staged uploads are swept at start: the server's root, if it has one (a
    /// server without one is not walked: its tree is not this pipeline's).
    pub sweep_dir: Option<String>,
    failures: AtomicU32,
    open: AtomicBool,
    misconfigured: Mutex<Option<String>>,
    /// The last attempt on this server succeeded. Until one does (at start, after a failure)
    /// only one attempt at a time goes to it, so a server that fails slowly (a login refused
    /// after a delay) ties up one transfer slot, not all of them.
    trusted: AtomicBool,
}

impl Server {
    pub fn new(name: impl Into<String>, transport: Arc<dyn Transport>) -> Self {
        let name = name.into();
        // Present at 0 from the start, so dashboards and alerts see every server.
        metrics::gauge!(names::FTP_CIRCUIT_OPEN, "server" => name.clone()).set(0.0);
        metrics::gauge!(names::FTP_SERVER_MISCONFIGURED, "server" => name.clone()).set(0.0);
        Server {
            name,
            transport,
            dead_letter_after: None,
            staging: Staging::Rename,
            sweep_dir: None,
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            misconfigured: Mutex::new(None),
            trusted: AtomicBool::new(false),
        }
    }

    pub fn trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Why the server cannot be used as configured, if it cannot.
    pub fn misconfigured(&self) -> Option<String> {
        self.misconfigured
            .lock()
            .expect("server state lock")
            .clone()
    }

    /// Neither an open circuit nor a misconfiguration stands in the way of a transfer.
    pub fn available(&self) -> bool {
        !self.is_open() && self.misconfigured().is_none()
    }

    /// `closed`, `open` or `misconfigured: <reason>`, for `/health` and the tree.
    pub fn state(&self) -> String {
        match (self.misconfigured(), self.is_open()) {
            (Some(reason), _) => format!("misconfigured: {reason}"),
            (None, true) => "circuit open".to_owned(),
            (None, false) => "circuit closed".to_owned(),
        }
    }

    /// A transfer succeeded: the server is proven again.
    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
        self.trusted.store(true, Ordering::Release);
        self.probe_succeeded();
    }

    /// A probe got through: jobs may try again. The server is not trusted yet, and its failure
    /// count stays: only a transfer that succeeds proves it well, so the first failure after a
    /// probe opens the circuit again instead of costing jobs their attempts.
    pub fn probe_succeeded(&self) {
        if self.open.swap(false, Ordering::AcqRel) {
            info!(server = %self.name, "circuit closed: the server answers again");
            metrics::gauge!(names::FTP_CIRCUIT_OPEN, "server" => self.name.clone()).set(0.0);
        }
        if self
            .misconfigured
            .lock()
            .expect("server state lock")
            .take()
            .is_some()
        {
            info!(server = %self.name, "the server accepts the configuration again");
            metrics::gauge!(names::FTP_SERVER_MISCONFIGURED, "server" => self.name.clone())
                .set(0.0);
        }
    }

    /// Marks the server misconfigured; true when it was not already.
    pub fn set_misconfigured(&self, error: &TransferError) -> bool {
        self.trusted.store(false, Ordering::Release);
        let mut state = self.misconfigured.lock().expect("server state lock");
        let first = state.is_none();
        *state = Some(error.to_string());
        if first {
            error!(server = %self.name, error = %error, "server misconfigured: its jobs are parked until a probe succeeds; fix the configuration");
            metrics::gauge!(names::FTP_SERVER_MISCONFIGURED, "server" => self.name.clone())
                .set(1.0);
        }
        first
    }

    /// Records a transient failure; true when it opened the circuit.
    pub fn failed(&self, threshold: u32, error: &TransferError) -> bool {
        self.trusted.store(false, Ordering::Release);
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
    /// Staged uploads older than this are removed at start (`None`: never).
    pub sweep_after: Option<Duration>,
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
    /// The sweep of stale staged uploads has been started in this process.
    pub swept: AtomicBool,
}

impl Transfers {
    pub fn new(servers: BTreeMap<String, Arc<Server>>, settings: Settings) -> Self {
        Transfers {
            servers,
            settings,
            swept: AtomicBool::new(false),
        }
    }

    /// Once per process: removes staged uploads older than `sweep_after` that a process which
    /// died mid-upload left on the servers. In the background; failures are only logged.
    pub fn sweep_once(self: &Arc<Self>) {
        let Some(age) = self.settings.sweep_after else {
            return;
        };
        if self.swept.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            for server in shared.servers.values() {
                let Some(dir) = &server.sweep_dir else {
                    continue;
                };
                match server.transport.sweep(dir, age).await {
                    Ok(0) => {}
                    Ok(n) => {
                        info!(server = %server.name, dir = %dir, removed = n, "removed stale staged uploads")
                    }
                    Err(e) => {
                        warn!(server = %server.name, dir = %dir, error = %e, "could not sweep stale staged uploads")
                    }
                }
            }
        });
    }

    /// True when every server can be used.
    pub fn healthy(&self) -> bool {
        self.servers.values().all(|s| s.available())
    }

    pub fn server(&self, name: &str) -> &Arc<Server> {
        &self.servers[name]
    }
}

/// What one attempt of a job came to.
pub enum Outcome {
    Done,
    /// The job cannot succeed.
    Rejected(TransferError),
    /// It failed on `server`, which may recover (or is misconfigured).
    Failed(TransferError, String),
    /// A server it needs is unavailable; not attempted.
    Waiting,
}

/// One attempt of `job`; `progress` hears of every chunk that moves.
pub async fn run(shared: &Transfers, job: &Job, topic: &str, progress: &Progress) -> Outcome {
    let src = shared.server(&job.source.hostname);
    let dst = shared.server(&job.destination.hostname);
    if !src.available() || !dst.available() {
        return Outcome::Waiting;
    }
    metrics::gauge!(names::FTP_IN_FLIGHT).increment(1.0);
    let started = Instant::now();
    let result = transfer(
        src.transport.as_ref(),
        &job.source.path,
        dst.transport.as_ref(),
        &job.destination.path,
        dst.staging,
        shared.settings.verify,
        progress,
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

/// Called with the bytes of each chunk that moves, so a long transfer shows progress.
pub type Progress = dyn Fn(u64) + Send + Sync;

/// Hashes what passes through on its way to `inner`, and notes when the reader went away.
struct Hashing<'p, W> {
    inner: W,
    progress: &'p Progress,
    hash: Option<Sha256>,
    /// A write failed because the upload had already ended and dropped its end of the pipe:
    /// the download's error is then a consequence, and the upload's error is the cause.
    reader_gone: bool,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Hashing<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        match &poll {
            Poll::Ready(Ok(n)) => {
                (self.progress)(*n as u64);
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

/// A sink for re-reading a destination: only hashes, and reports progress as it goes (a
/// re-read of a large file is as long as its transfer).
struct HashOnly<'p>(Sha256, &'p Progress);

impl AsyncWrite for HashOnly<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.update(buf);
        (self.1)(buf.len() as u64);
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
    staging: Staging,
    verify: Verify,
    progress: &Progress,
) -> Result<u64, (TransferError, Side)> {
    let expected = src.size(src_path).await.map_err(|e| (e, Side::Source))?;
    let (pipe_in, pipe_out) = tokio::io::duplex(PIPE);
    let mut hashing = Hashing {
        inner: pipe_in,
        progress,
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
        dst.upload(dst_path, &mut pipe_out, staging).await
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
        let mut reread = HashOnly(Sha256::new(), progress);
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
    if staging == Staging::Direct {
        return Ok(staged.bytes);
    }
    if let Err(e) = dst.commit(&staged, dst_path).await {
        dst.discard(&staged).await;
        return Err(fail(e));
    }
    Ok(staged.bytes)
}
