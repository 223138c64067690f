//! `file`: a local directory as a server. Job paths are inside the directory (`/in/a.csv` is
//! `<root>/in/a.csv`), and a symbolic link never leads a read or a write out of it.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;

use super::{sweep_tree, Listed, Reader, Staged, Staging, TransferError, Transport, Tree, Writer};

pub struct LocalTransport {
    root: PathBuf,
}

impl LocalTransport {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalTransport { root: root.into() }
    }

    fn real(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Refuses `real` when it, or the deepest part of it that exists, resolves outside the root
    /// once symbolic links are followed: a link inside the root must not expose or overwrite
    /// files elsewhere.
    async fn confined(&self, real: &Path, path: &str) -> Result<(), TransferError> {
        let root = tokio::fs::canonicalize(&self.root)
            .await
            .map_err(|e| io_error(e, &self.root.display().to_string()))?;
        let mut at = real.to_path_buf();
        let resolved = loop {
            match tokio::fs::canonicalize(&at).await {
                Ok(resolved) => break resolved,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    if !at.pop() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(io_error(e, path)),
            }
        };
        if resolved.starts_with(&root) {
            Ok(())
        } else {
            Err(TransferError::permanent(
                "PathOutsideRoot",
                format!("{path:?} follows a symbolic link out of the server's directory"),
            ))
        }
    }
}

fn io_error(e: std::io::Error, what: &str) -> TransferError {
    match e.kind() {
        ErrorKind::NotFound => TransferError::permanent("FileNotFound", format!("{what}: {e}")),
        ErrorKind::PermissionDenied => {
            TransferError::permanent("PermissionDenied", format!("{what}: {e}"))
        }
        ErrorKind::IsADirectory | ErrorKind::NotADirectory | ErrorKind::InvalidFilename => {
            TransferError::permanent("InvalidPath", format!("{what}: {e}"))
        }
        _ => TransferError::transient("IoError", format!("{what}: {e}")),
    }
}

impl Transport for LocalTransport {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn size<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<u64>, TransferError>> {
        async move {
            let real = self.real(path);
            self.confined(&real, path).await?;
            let meta = tokio::fs::metadata(&real)
                .await
                .map_err(|e| io_error(e, path))?;
            if !meta.is_file() {
                return Err(TransferError::permanent(
                    "InvalidPath",
                    format!("{path} is not a file"),
                ));
            }
            Ok(Some(meta.len()))
        }
        .boxed()
    }

    fn download<'a>(
        &'a self,
        path: &'a str,
        out: Writer<'a>,
    ) -> BoxFuture<'a, Result<u64, TransferError>> {
        async move {
            let real = self.real(path);
            self.confined(&real, path).await?;
            let mut file = tokio::fs::File::open(&real)
                .await
                .map_err(|e| io_error(e, path))?;
            let n = tokio::io::copy(&mut file, out)
                .await
                .map_err(|e| TransferError::transient("IoError", format!("{path}: {e}")))?;
            out.shutdown()
                .await
                .map_err(|e| TransferError::transient("IoError", format!("{path}: {e}")))?;
            Ok(n)
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
            let real = self.real(&temp);
            if let Some(dir) = real.parent() {
                self.confined(dir, path).await?;
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| io_error(e, path))?;
                // Checked again: a link may have appeared while the directories were made.
                self.confined(dir, path).await?;
            }
            // A direct upload writes the final name: a link there would be followed out of the
            // directory, so it is refused rather than written through.
            if staging == Staging::Direct
                && tokio::fs::symlink_metadata(&real)
                    .await
                    .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(TransferError::permanent(
                    "PathOutsideRoot",
                    format!("{path:?} is a symbolic link"),
                ));
            }
            // A staged name is new by construction; a direct upload replaces what is there.
            let created = match staging {
                Staging::Rename => tokio::fs::File::create_new(&real).await,
                Staging::Direct => tokio::fs::File::create(&real).await,
            };
            let mut file = created.map_err(|e| io_error(e, path))?;
            let copied = async {
                let n = tokio::io::copy(input, &mut file).await?;
                file.sync_all().await?;
                Ok::<_, std::io::Error>(n)
            }
            .await;
            match copied {
                Ok(bytes) => Ok(Staged { temp, bytes }),
                Err(e) => {
                    let _ = tokio::fs::remove_file(&real).await;
                    Err(TransferError::transient("IoError", format!("{path}: {e}")))
                }
            }
        }
        .boxed()
    }

    fn commit<'a>(
        &'a self,
        staged: &'a Staged,
        path: &'a str,
    ) -> BoxFuture<'a, Result<(), TransferError>> {
        async move {
            let target = self.real(path);
            // A link at the final name would be replaced by the file, never followed; a link
            // in its directories is what `confined` catches.
            if let Some(dir) = target.parent() {
                self.confined(dir, path).await?;
            }
            tokio::fs::rename(self.real(&staged.temp), target)
                .await
                .map_err(|e| io_error(e, path))
        }
        .boxed()
    }

    fn discard<'a>(&'a self, staged: &'a Staged) -> BoxFuture<'a, ()> {
        async move {
            let _ = tokio::fs::remove_file(self.real(&staged.temp)).await;
        }
        .boxed()
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), TransferError>> {
        async move {
            let meta = tokio::fs::metadata(&self.root).await.map_err(|e| {
                TransferError::transient("Unavailable", format!("{}: {e}", self.root.display()))
            })?;
            if meta.is_dir() {
                Ok(())
            } else {
                Err(TransferError::transient(
                    "Unavailable",
                    format!("{} is not a directory", self.root.display()),
                ))
            }
        }
        .boxed()
    }

    fn sweep<'a>(
        &'a self,
        dir: &'a str,
        age: std::time::Duration,
    ) -> BoxFuture<'a, Result<usize, TransferError>> {
        async move { sweep_tree(&mut LocalTree(self), dir, age).await }.boxed()
    }
}

/// The served directory as a [`Tree`] for sweeps.
struct LocalTree<'t>(&'t LocalTransport);

impl Tree for LocalTree<'_> {
    fn list<'a>(
        &'a mut self,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<Listed>>, TransferError>> {
        async move {
            let Ok(mut entries) = tokio::fs::read_dir(self.0.real(dir)).await else {
                return Ok(None);
            };
            let mut out = Vec::new();
            while let Ok(Some(entry)) = entries.next_entry().await {
                // The entry's own type: a symbolic link is neither walked nor removed.
                let Ok(kind) = entry.file_type().await else {
                    continue;
                };
                out.push(Listed {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    is_dir: kind.is_dir(),
                    is_file: kind.is_file(),
                    modified: entry.metadata().await.and_then(|m| m.modified()).ok(),
                });
            }
            Ok(Some(out))
        }
        .boxed()
    }

    fn remove<'a>(&'a mut self, path: &'a str) -> BoxFuture<'a, bool> {
        async move { tokio::fs::remove_file(self.0.real(path)).await.is_ok() }.boxed()
    }
}
