//! `sftp`: pooled SSH connections with an SFTP session each (russh + russh-sftp). Password or
//! private-key login; the server's host key is pinned by its SHA-256 fingerprint unless the
//! server is explicitly marked insecure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::{RawSftpSession, SftpSession};
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::AsyncWriteExt;

use super::pool::{Lease, Pool};
use super::{
    split, sweep_tree, Listed, Reader, Staged, Staging, TransferError, Transport, Tree, Writer,
};
use crate::config::Secret;

#[derive(Clone, Debug)]
pub struct SftpSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    /// A private key file (OpenSSH format); used instead of the password when set.
    pub key_file: Option<PathBuf>,
    /// The expected host key, `SHA256:…` as `ssh-keygen -lf` prints it.
    pub host_key: Option<String>,
    /// Accept any host key (test servers only); without it a `host_key` is required.
    pub insecure: bool,
    pub max_connections: usize,
    pub timeout: Duration,
}

struct Client {
    expected: Option<String>,
    insecure: bool,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match (&self.expected, key) {
            (Some(fp), russh::keys::PublicKeyOrCertificate::PublicKey { key, .. }) => {
                key.fingerprint(HashAlg::Sha256).to_string() == *fp
            }
            (Some(_), russh::keys::PublicKeyOrCertificate::Certificate(_)) => false,
            (None, _) => self.insecure,
        })
    }
}

struct Conn {
    _ssh: Handle<Client>,
    sftp: SftpSession,
    /// A second SFTP channel for the server's extensions; set when it offers
    /// `posix-rename@openssh.com`, which replaces the target in one step.
    posix_rename: Option<RawSftpSession>,
}

/// OpenSSH's rename that replaces an existing target atomically.
const POSIX_RENAME: &str = "posix-rename@openssh.com";

/// Two SSH strings (length-prefixed), the request data of `posix-rename@openssh.com`.
fn rename_request(from: &str, to: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(8 + from.len() + to.len());
    for s in [from, to] {
        data.extend_from_slice(&(s.len() as u32).to_be_bytes());
        data.extend_from_slice(s.as_bytes());
    }
    data
}

pub struct SftpTransport {
    settings: SftpSettings,
    pool: Pool<Conn>,
}

fn ssh_error(addr: &str, e: russh::Error) -> TransferError {
    match e {
        russh::Error::IO(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            TransferError::transient("ConnectionRefused", format!("{addr}: {io}"))
        }
        russh::Error::UnknownKey => TransferError::misconfigured(
            "HostKeyMismatch",
            format!("{addr}: the server's host key is not the configured one"),
        ),
        other => TransferError::transient("SshError", format!("{addr}: {other}")),
    }
}

/// SFTP status codes: a missing file or a refused path is the job's, the rest the server's.
fn sftp_error(path: &str, e: SftpError) -> TransferError {
    match e {
        SftpError::Status(s) => match s.status_code {
            StatusCode::NoSuchFile => {
                TransferError::permanent("FileNotFound", format!("{path}: {}", s.error_message))
            }
            StatusCode::PermissionDenied => {
                TransferError::permanent("PermissionDenied", format!("{path}: {}", s.error_message))
            }
            other => TransferError::transient(
                "SftpError",
                format!("{path}: {other}: {}", s.error_message),
            ),
        },
        other => TransferError::transient("SftpError", format!("{path}: {other}")),
    }
}

fn io_error(path: &str, e: std::io::Error) -> TransferError {
    TransferError::transient("IoError", format!("{path}: {e}"))
}

impl SftpTransport {
    pub fn new(settings: SftpSettings) -> Self {
        SftpTransport {
            pool: Pool::new(settings.max_connections),
            settings,
        }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    async fn connect(&self) -> Result<Conn, TransferError> {
        let s = &self.settings;
        let addr = self.addr();
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(300)),
            ..Default::default()
        });
        let handler = Client {
            expected: s.host_key.clone(),
            insecure: s.insecure,
        };
        let mut ssh = tokio::time::timeout(
            s.timeout,
            client::connect(config, (s.host.as_str(), s.port), handler),
        )
        .await
        .map_err(|_| TransferError::transient("Timeout", format!("connecting to {addr}")))?
        .map_err(|e| ssh_error(&addr, e))?;
        let auth = match &s.key_file {
            Some(file) => {
                let key = russh::keys::load_secret_key(file, None).map_err(|e| {
                    TransferError::misconfigured("KeyError", format!("{}: {e}", file.display()))
                })?;
                let hash = ssh
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| ssh_error(&addr, e))?
                    .flatten();
                ssh.authenticate_publickey(
                    s.user.as_str(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
            }
            None => {
                let password = s.password.as_ref().map(Secret::expose).unwrap_or("");
                ssh.authenticate_password(s.user.as_str(), password).await
            }
        }
        .map_err(|e| ssh_error(&addr, e))?;
        if !auth.success() {
            return Err(TransferError::misconfigured(
                "LoginFailed",
                format!("{addr}: login as {} refused", s.user),
            ));
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| ssh_error(&addr, e))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| ssh_error(&addr, e))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| sftp_error(&addr, e))?;
        sftp.set_timeout(s.timeout.as_secs().max(1));
        let posix_rename = self.extensions_channel(&ssh).await;
        Ok(Conn {
            _ssh: ssh,
            sftp,
            posix_rename,
        })
    }

    /// A raw SFTP session for `posix-rename@openssh.com`, if the server offers it. Without it
    /// a replay's rename has to remove the old file first.
    async fn extensions_channel(&self, ssh: &Handle<Client>) -> Option<RawSftpSession> {
        let channel = ssh.channel_open_session().await.ok()?;
        channel.request_subsystem(true, "sftp").await.ok()?;
        let raw = RawSftpSession::new(channel.into_stream());
        raw.set_timeout(self.settings.timeout.as_secs().max(1));
        let version = raw.init().await.ok()?;
        version
            .extensions
            .get(POSIX_RENAME)
            .is_some_and(|v| v == "1")
            .then_some(raw)
    }

    async fn lease(&self) -> Result<Lease<Conn>, TransferError> {
        self.pool
            .lease(
                |conn: Conn| async move { conn.sftp.canonicalize(".").await.is_ok().then_some(conn) },
                || self.connect(),
            )
            .await
    }

    fn settle<T>(&self, lease: Lease<Conn>, result: &Result<T, TransferError>) {
        self.pool.settle(lease, result)
    }

    async fn make_dirs(&self, sftp: &SftpSession, dir: &str) {
        let levels = self.pool.dirs_to_make(dir);
        for at in &levels {
            // Fails when the directory exists; a real problem shows in the upload.
            let _ = sftp.create_dir(at.as_str()).await;
        }
        self.pool.made(levels);
    }
}

impl Transport for SftpTransport {
    fn describe(&self) -> String {
        format!("sftp://{}@{}", self.settings.user, self.addr())
    }

    fn size<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<u64>, TransferError>> {
        async move {
            let lease = self.lease().await?;
            let result = lease
                .conn
                .sftp
                .metadata(path)
                .await
                .map(|m| m.size)
                .map_err(|e| sftp_error(path, e));
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
            let lease = self.lease().await?;
            let result = async {
                let mut file = lease
                    .conn
                    .sftp
                    .open(path)
                    .await
                    .map_err(|e| sftp_error(path, e))?;
                let n = tokio::io::copy(&mut file, out)
                    .await
                    .map_err(|e| io_error(path, e))?;
                let _ = file.shutdown().await;
                out.shutdown().await.map_err(|e| io_error(path, e))?;
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
            let lease = self.lease().await?;
            let result = async {
                let sftp = &lease.conn.sftp;
                self.make_dirs(sftp, split(path).0).await;
                let mut file = match sftp.create(temp.as_str()).await {
                    Ok(file) => file,
                    // The directory may have gone since it was made here: make it again and
                    // try once more before the refusal counts.
                    Err(_) => {
                        self.pool.forget(split(path).0);
                        self.make_dirs(sftp, split(path).0).await;
                        sftp.create(temp.as_str())
                            .await
                            .map_err(|e| sftp_error(path, e))?
                    }
                };
                let bytes = tokio::io::copy(input, &mut file)
                    .await
                    .map_err(|e| io_error(path, e))?;
                file.shutdown().await.map_err(|e| io_error(path, e))?;
                let held = sftp
                    .metadata(temp.as_str())
                    .await
                    .map_err(|e| sftp_error(path, e))?
                    .size;
                if held.is_some_and(|h| h != bytes) {
                    let _ = sftp.remove_file(temp.as_str()).await;
                    return Err(TransferError::transient(
                        "SizeMismatch",
                        format!("{path}: sent {bytes} bytes, the server holds {held:?}"),
                    ));
                }
                Ok(Staged {
                    temp: temp.clone(),
                    bytes,
                })
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
            let lease = self.lease().await?;
            let result = match &lease.conn.posix_rename {
                Some(raw) => {
                    let request = rename_request(&staged.temp, path);
                    match raw.extended(POSIX_RENAME, request).await {
                        Ok(Packet::Status(st)) if st.status_code == StatusCode::Ok => Ok(()),
                        Ok(Packet::Status(st)) => Err(sftp_error(path, SftpError::Status(st))),
                        Ok(_) => Err(TransferError::transient(
                            "SftpError",
                            format!("{path}: unexpected answer to {POSIX_RENAME}"),
                        )),
                        Err(e) => Err(sftp_error(path, e)),
                    }
                }
                None => {
                    let sftp = &lease.conn.sftp;
                    // Plain SFTP rename does not replace an existing file: remove it first.
                    if sftp.try_exists(path).await.unwrap_or(false) {
                        let _ = sftp.remove_file(path).await;
                    }
                    sftp.rename(staged.temp.as_str(), path)
                        .await
                        .map_err(|e| sftp_error(path, e))
                }
            };
            self.settle(lease, &result);
            result
        }
        .boxed()
    }

    fn discard<'a>(&'a self, staged: &'a Staged) -> BoxFuture<'a, ()> {
        async move {
            if let Ok(lease) = self.lease().await {
                let result = lease
                    .conn
                    .sftp
                    .remove_file(staged.temp.as_str())
                    .await
                    .map_err(|e| sftp_error(&staged.temp, e));
                self.settle(lease, &result);
            }
        }
        .boxed()
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), TransferError>> {
        async move {
            let conn = self.connect().await?;
            let _ = conn.sftp.close().await;
            Ok(())
        }
        .boxed()
    }

    fn sweep<'a>(
        &'a self,
        dir: &'a str,
        age: Duration,
    ) -> BoxFuture<'a, Result<usize, TransferError>> {
        async move {
            let lease = self.lease().await?;
            let result = sweep_tree(&mut SftpTree(&lease.conn.sftp), dir, age).await;
            self.settle(lease, &result);
            result
        }
        .boxed()
    }
}

/// An SFTP session as a [`Tree`] for sweeps.
struct SftpTree<'s>(&'s SftpSession);

impl Tree for SftpTree<'_> {
    fn list<'a>(
        &'a mut self,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<Listed>>, TransferError>> {
        async move {
            let Ok(entries) = self.0.read_dir(dir).await else {
                return Ok(None);
            };
            Ok(Some(
                entries
                    .map(|e| {
                        let meta = e.metadata();
                        Listed {
                            name: e.file_name(),
                            is_dir: meta.is_dir(),
                            is_file: meta.is_regular(),
                            modified: meta.modified().ok(),
                        }
                    })
                    .collect(),
            ))
        }
        .boxed()
    }

    fn remove<'a>(&'a mut self, path: &'a str) -> BoxFuture<'a, bool> {
        async move { self.0.remove_file(path).await.is_ok() }.boxed()
    }
}
