//! `ftp` and `ftps` (explicit TLS): a pooled set of logged-in control connections per server.
//! Binary mode always; passive mode unless configured otherwise.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::pool::{Lease, Pool};
use super::{
    split, sweep_tree, Listed, Reader, Staged, Staging, TransferError, Transport, Tree, Writer,
};
use crate::config::Secret;

/// How a pooled FTP server is reached.
#[derive(Clone, Debug)]
pub struct FtpSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub passive: bool,
    /// Passive data connections go to the address in the PASV reply; by default they go to the
    /// control connection's address, which also works for a server behind NAT that announces
    /// its private address.
    pub passive_reply_address: bool,
    /// Explicit TLS (`AUTH TLS`) before login.
    pub tls: bool,
    /// Accept any certificate (self-signed test servers); never the default.
    pub insecure_tls: bool,
    pub max_connections: usize,
    /// The longest wait for one network step: connect, banner, TLS, login, a reply, an idle
    /// read or write of the data.
    pub timeout: Duration,
}

type Conn = AsyncRustlsFtpStream;

/// The longest an idle pooled connection may take to answer `NOOP`: a connection the server
/// dropped meanwhile is found out in seconds, whatever the step timeout.
const NOOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs one network step, failing it as a transient `Timeout` after `limit`.
async fn within<T, E>(
    limit: Duration,
    what: impl FnOnce() -> String,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<Result<T, E>, TransferError> {
    tokio::time::timeout(limit, step).await.map_err(|_| {
        TransferError::transient("Timeout", format!("{}: no answer within {limit:?}", what()))
    })
}

/// Which side of a copy is the server's data connection: only that side is timed, so a slow
/// peer on the other side of the pipe is not blamed on this server.
#[derive(Clone, Copy)]
enum Server {
    Reads,
    Writes,
}

/// Copies `from` into `to` like `tokio::io::copy`, but fails when the server's side makes no
/// progress for `idle`: a stalled data connection ends instead of holding a slot forever.
async fn copy_idle(
    from: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    to: &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
    server: Server,
    idle: Duration,
    context: &str,
) -> Result<u64, TransferError> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let read = from.read(&mut buf);
        let n = match server {
            Server::Reads => within(idle, || format!("{context}: reading data"), read).await?,
            Server::Writes => read.await,
        }
        .map_err(|e| connection_error(context, e))?;
        if n == 0 {
            return Ok(total);
        }
        let write = to.write_all(&buf[..n]);
        match server {
            Server::Writes => within(idle, || format!("{context}: writing data"), write).await?,
            Server::Reads => write.await,
        }
        .map_err(|e| connection_error(context, e))?;
        total += n as u64;
    }
}

pub struct FtpTransport {
    settings: FtpSettings,
    pool: Pool<Conn>,
}

impl FtpTransport {
    pub fn new(settings: FtpSettings) -> Self {
        FtpTransport {
            pool: Pool::new(settings.max_connections),
            settings,
        }
    }

    async fn connect(&self) -> Result<Conn, TransferError> {
        let s = &self.settings;
        let addr = format!("{}:{}", s.host, s.port);
        let tcp = tokio::time::timeout(s.timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| TransferError::transient("Timeout", format!("connecting to {addr}")))?
            .map_err(|e| connection_error(&addr, e))?;
        let limit = s.timeout;
        let mut conn = within(
            limit,
            || format!("{addr}: banner"),
            Conn::connect_with_stream(tcp),
        )
        .await?
        .map_err(|e| ftp_error(&addr, e))?;
        if s.tls {
            conn = within(
                limit,
                || format!("{addr}: TLS handshake"),
                conn.into_secure(tls_connector(s.insecure_tls), &s.host),
            )
            .await?
            .map_err(|e| {
                let message = format!("{addr}: {e}");
                // A certificate that does not verify stays so until the configuration
                // changes; an interrupted handshake is the network's.
                if message.to_ascii_lowercase().contains("certificate") {
                    TransferError::misconfigured("TlsVerificationFailed", message)
                } else {
                    TransferError::transient("TlsError", message)
                }
            })?;
        }
        if !s.passive {
            conn = conn.active_mode(s.timeout);
        } else {
            conn.set_mode(Mode::Passive);
            conn.set_passive_nat_workaround(!s.passive_reply_address);
        }
        let password = s.password.as_ref().map(Secret::expose).unwrap_or("");
        within(
            limit,
            || format!("{addr}: login"),
            conn.login(s.user.as_str(), password),
        )
        .await?
        .map_err(|e| match e {
            // 530/532: the credentials are wrong, which only a configuration change fixes;
            // any other refusal (421 too many users) is the server's capacity.
            FtpError::UnexpectedResponse(r) if matches!(r.status.code(), 530 | 532) => {
                TransferError::misconfigured(
                    "LoginFailed",
                    format!("{addr}: login as {} refused ({})", s.user, r.status.code()),
                )
            }
            FtpError::UnexpectedResponse(r) => TransferError::transient(
                "LoginRefused",
                format!("{addr}: login as {} refused ({})", s.user, r.status.code()),
            ),
            other => ftp_error(&addr, other),
        })?;
        within(
            limit,
            || format!("{addr}: TYPE I"),
            conn.transfer_type(FileType::Binary),
        )
        .await?
        .map_err(|e| ftp_error(&addr, e))?;
        Ok(conn)
    }

    async fn lease(&self) -> Result<Lease<Conn>, TransferError> {
        let timeout = self.settings.timeout.min(NOOP_TIMEOUT);
        self.pool
            .lease(
                |mut conn: Conn| async move {
                    let ok = tokio::time::timeout(timeout, conn.noop())
                        .await
                        .is_ok_and(|r| r.is_ok());
                    ok.then_some(conn)
                },
                || self.connect(),
            )
            .await
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// Creates `dir` and its parents, one level at a time (FTP has no `mkdir -p`).
    async fn make_dirs(&self, conn: &mut Conn, dir: &str) -> Result<(), TransferError> {
        let levels = self.pool.dirs_to_make(dir);
        for at in &levels {
            // An error here usually means the directory exists; a real problem shows up as
            // the upload's own error.
            let _ = self.step(at, "MKD", conn.mkdir(at)).await?;
        }
        self.pool.made(levels);
        Ok(())
    }

    /// One control step on `path` under the step timeout, its error classified.
    async fn step<T>(
        &self,
        path: &str,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, FtpError>>,
    ) -> Result<Result<T, TransferError>, TransferError> {
        let r = within(self.settings.timeout, || format!("{path}: {what}"), fut).await?;
        Ok(r.map_err(|e| ftp_error(path, e)))
    }

    fn settle<T>(&self, lease: Lease<Conn>, result: &Result<T, TransferError>) {
        self.pool.settle(lease, result)
    }
}

fn tls_connector(insecure: bool) -> AsyncRustlsConnector {
    use suppaftp::tokio_rustls::rustls::ClientConfig;
    let provider = Arc::new(suppaftp::tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth()
    } else {
        let mut roots = suppaftp::tokio_rustls::rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    AsyncRustlsConnector::from(suppaftp::tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Accepts any server certificate: for self-signed test servers when `insecure_tls` is set.
#[derive(Debug)]
struct AcceptAny;

impl suppaftp::tokio_rustls::rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &suppaftp::tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _: &[suppaftp::tokio_rustls::rustls::pki_types::CertificateDer<'_>],
        _: &suppaftp::tokio_rustls::rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: suppaftp::tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<
        suppaftp::tokio_rustls::rustls::client::danger::ServerCertVerified,
        suppaftp::tokio_rustls::rustls::Error,
    > {
        Ok(suppaftp::tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &suppaftp::tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _: &suppaftp::tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        suppaftp::tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        suppaftp::tokio_rustls::rustls::Error,
    > {
        Ok(suppaftp::tokio_rustls::rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &suppaftp::tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _: &suppaftp::tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        suppaftp::tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        suppaftp::tokio_rustls::rustls::Error,
    > {
        Ok(suppaftp::tokio_rustls::rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<suppaftp::tokio_rustls::rustls::SignatureScheme> {
        suppaftp::tokio_rustls::rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn connection_error(addr: &str, e: std::io::Error) -> TransferError {
    let class = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "ConnectionRefused",
        std::io::ErrorKind::TimedOut => "Timeout",
        _ => "ConnectionError",
    };
    TransferError::transient(class, format!("{addr}: {e}"))
}

/// Reply codes decide: 4xx and connection problems are the server's (retried), 5xx refusals
/// of a path are the job's (550 missing or denied, 553 name not allowed).
fn ftp_error(context: &str, e: FtpError) -> TransferError {
    match e {
        FtpError::ConnectionError(io) => connection_error(context, io),
        FtpError::UnexpectedResponse(r) => {
            let code = r.status.code();
            let text = String::from_utf8_lossy(&r.body).trim().to_owned();
            let message = format!("{context}: {text}");
            match code {
                550 => TransferError::permanent("FileUnavailable", message),
                553 => TransferError::permanent("FileNameNotAllowed", message),
                530 | 532 => TransferError::transient("LoginFailed", message),
                500..=599 => TransferError::permanent("Refused", message),
                _ => TransferError::transient("ServerBusy", message),
            }
        }
        other => TransferError::transient("ProtocolError", format!("{context}: {other}")),
    }
}

impl Transport for FtpTransport {
    fn describe(&self) -> String {
        let scheme = if self.settings.tls { "ftps" } else { "ftp" };
        format!("{scheme}://{}@{}", self.settings.user, self.addr())
    }

    fn size<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<u64>, TransferError>> {
        async move {
            let mut lease = self.lease().await?;
            let limit = self.settings.timeout;
            let answer = within(limit, || format!("{path}: SIZE"), lease.conn.size(path)).await;
            let result = match answer {
                Err(timeout) => Err(timeout),
                Ok(Ok(n)) => Ok(Some(n as u64)),
                // SIZE not implemented: the byte count has to do.
                Ok(Err(FtpError::UnexpectedResponse(r)))
                    if matches!(r.status.code(), 500 | 502 | 504) =>
                {
                    Ok(None)
                }
                Ok(Err(e)) => Err(ftp_error(path, e)),
            };
            self.settle(lease, &result);
            result
        }
        .boxed()
    }

    fn download<'a>(
        &'a self,
        path: &'a str,
        out: Writer<'a>,
    ) -> BoxFuture<'a, Result<u64, TransferError>> {
        async move {
            let mut lease = self.lease().await?;
            let result = async {
                let limit = self.settings.timeout;
                let mut stream = self
                    .step(path, "RETR", lease.conn.retr_as_stream(path))
                    .await??;
                let copied = copy_idle(&mut stream, out, Server::Reads, limit, path).await;
                let finished = self.step(path, "end of RETR", stream.finish()).await;
                let n = copied?;
                finished??;
                within(
                    limit,
                    || format!("{path}: closing the pipe"),
                    out.shutdown(),
                )
                .await?
                .map_err(|e| connection_error(path, e))?;
                Ok(n)
            }
            .await;
            self.settle(lease, &result);
            result
        }
        .boxed()
    }

    fn upload<'a>(
        &'a self,
        path: &'a str,
        input: Reader<'a>,
        staging: Staging,
    ) -> BoxFuture<'a, Result<Staged, TransferError>> {
        async move {
            let temp = staging.name(path);
            let mut lease = self.lease().await?;
            let result = async {
                let conn = &mut lease.conn;
                let limit = self.settings.timeout;
                self.make_dirs(conn, split(path).0).await?;
                let mut stream = match self.step(path, "STOR", conn.put_with_stream(&temp)).await? {
                    Ok(stream) => stream,
                    Err(e) if !e.permanent => return Err(e),
                    // The directory may have gone since it was made here: make it again and
                    // try once more before the refusal counts.
                    Err(_) => {
                        self.pool.forget(split(path).0);
                        self.make_dirs(conn, split(path).0).await?;
                        self.step(path, "STOR", conn.put_with_stream(&temp))
                            .await??
                    }
                };
                let copied = copy_idle(input, &mut stream, Server::Writes, limit, path).await;
                let finished = self.step(path, "end of STOR", stream.finish()).await;
                let bytes = copied?;
                finished??;
                // The destination's own idea of the size, after the transfer closed.
                let answer = within(limit, || format!("{path}: SIZE"), conn.size(&temp)).await?;
                match answer {
                    Ok(n) if n as u64 == bytes => Ok(Staged {
                        temp: temp.clone(),
                        bytes,
                    }),
                    Ok(n) => {
                        let _ = within(limit, || temp.clone(), conn.rm(&temp)).await;
                        Err(TransferError::transient(
                            "SizeMismatch",
                            format!("{path}: sent {bytes} bytes, the server holds {n}"),
                        ))
                    }
                    Err(FtpError::UnexpectedResponse(r))
                        if matches!(r.status.code(), 500 | 502 | 504) =>
                    {
                        Ok(Staged {
                            temp: temp.clone(),
                            bytes,
                        })
                    }
                    Err(e) => Err(ftp_error(path, e)),
                }
            }
            .await;
            self.settle(lease, &result);
            result
        }
        .boxed()
    }

    fn commit<'a>(
        &'a self,
        staged: &'a Staged,
        path: &'a str,
    ) -> BoxFuture<'a, Result<(), TransferError>> {
        async move {
            let mut lease = self.lease().await?;
            let result = self
                .step(
                    path,
                    "RNFR/RNTO",
                    lease.conn.rename(staged.temp.as_str(), path),
                )
                .await
                .and_then(|r| r);
            self.settle(lease, &result);
            result
        }
        .boxed()
    }

    fn discard<'a>(&'a self, staged: &'a Staged) -> BoxFuture<'a, ()> {
        async move {
            if let Ok(mut lease) = self.lease().await {
                let result = self
                    .step(&staged.temp, "DELE", lease.conn.rm(staged.temp.as_str()))
                    .await
                    .and_then(|r| r);
                self.settle(lease, &result);
            }
        }
        .boxed()
    }

    /// Connects, logs in and opens a passive data connection (a name listing): what a
    /// transfer needs, not only a login.
    fn probe(&self) -> BoxFuture<'_, Result<(), TransferError>> {
        async move {
            let mut conn = self.connect().await?;
            let limit = self.settings.timeout;
            let listed = within(limit, || "NLST".to_owned(), conn.nlst(None)).await?;
            let _ = within(limit, || "QUIT".to_owned(), conn.quit()).await;
            match listed {
                Ok(_) => Ok(()),
                // 421, 425 and 426: the data connection (or the server) is not there.
                Err(FtpError::UnexpectedResponse(r))
                    if matches!(r.status.code(), 421 | 425 | 426) =>
                {
                    Err(ftp_error(&self.addr(), FtpError::UnexpectedResponse(r)))
                }
                // Any other answer to the listing itself ("450 No files found" on an empty
                // directory, a refusal): the server and its data connections answer.
                Err(FtpError::UnexpectedResponse(_)) => Ok(()),
                Err(e) => Err(ftp_error(&self.addr(), e)),
            }
        }
        .boxed()
    }

    /// Walks `dir` with `MLSD` (machine-readable listings with modification times).
    fn sweep<'a>(
        &'a self,
        dir: &'a str,
        age: Duration,
    ) -> BoxFuture<'a, Result<usize, TransferError>> {
        async move {
            let mut lease = self.lease().await?;
            let result = sweep_tree(
                &mut FtpTree {
                    transport: self,
                    conn: &mut lease.conn,
                },
                dir,
                age,
            )
            .await;
            self.settle(lease, &result);
            result
        }
        .boxed()
    }
}

/// An FTP control connection as a [`Tree`] for sweeps.
struct FtpTree<'c> {
    transport: &'c FtpTransport,
    conn: &'c mut Conn,
}

impl Tree for FtpTree<'_> {
    fn list<'a>(
        &'a mut self,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<Listed>>, TransferError>> {
        async move {
            // A directory that cannot be listed is skipped, not an error of the sweep.
            let Ok(lines) = self
                .transport
                .step(dir, "MLSD", self.conn.mlsd(Some(dir)))
                .await?
            else {
                return Ok(None);
            };
            Ok(Some(
                lines
                    .iter()
                    .filter_map(|line| suppaftp::list::ListParser::parse_mlsd(line).ok())
                    .map(|f| Listed {
                        name: f.name().to_owned(),
                        is_dir: f.is_directory(),
                        is_file: f.is_file(),
                        // Without a `modify` fact the parser says 1970: unknown, so kept.
                        modified: Some(f.modified())
                            .filter(|m| *m != std::time::SystemTime::UNIX_EPOCH),
                    })
                    .collect(),
            ))
        }
        .boxed()
    }

    fn remove<'a>(&'a mut self, path: &'a str) -> BoxFuture<'a, bool> {
        async move {
            matches!(
                self.transport.step(path, "DELE", self.conn.rm(path)).await,
                Ok(Ok(()))
            )
        }
        .boxed()
    }
}
