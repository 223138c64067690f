//! `s3`: a bucket as a server (object_store). Paths are keys (`/in/a.csv` is `in/a.csv`).
//! Uploads stream through a multipart upload under a temporary key, then are copied into place
//! (streamed into place above `copy_limit`, since S3 copies at most 5 GiB in one request).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use super::{is_staged_name, Reader, Staged, Staging, TransferError, Transport, Writer};

pub struct S3Transport {
    store: Arc<dyn ObjectStore>,
    describe: String,
    /// The longest wait for the next chunk of a download.
    idle: Duration,
    /// Objects above this size are streamed into place on commit instead of copied.
    copy_limit: u64,
}

impl S3Transport {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        describe: String,
        idle: Duration,
        copy_limit: u64,
    ) -> Self {
        S3Transport {
            store,
            describe,
            idle,
            copy_limit,
        }
    }

    /// Streams `from` into a multipart upload of `to`.
    async fn stream_copy(&self, from: &str, to: &str) -> Result<u64, TransferError> {
        let got = self
            .store
            .get(&key(from))
            .await
            .map_err(|e| store_error(from, e))?;
        let mut stream = got.into_stream();
        let mut w =
            BufWriter::with_capacity(self.store.clone(), key(to), 8 << 20).with_max_concurrency(2);
        let mut n = 0u64;
        let copied = async {
            while let Some(chunk) = self.next_chunk(&mut stream, from).await? {
                n += chunk.len() as u64;
                w.write_all(&chunk).await.map_err(|e| {
                    TransferError::transient("ObjectStoreError", format!("{to}: {e}"))
                })?;
            }
            w.shutdown()
                .await
                .map_err(|e| TransferError::transient("ObjectStoreError", format!("{to}: {e}")))
        }
        .await;
        if let Err(e) = copied {
            let _ = w.abort().await;
            return Err(e);
        }
        Ok(n)
    }

    /// The next chunk of a download, failing when none comes within the idle timeout.
    async fn next_chunk<B>(
        &self,
        stream: &mut (impl futures::Stream<Item = object_store::Result<B>> + Unpin),
        path: &str,
    ) -> Result<Option<B>, TransferError> {
        match tokio::time::timeout(self.idle, stream.next()).await {
            Err(_) => Err(TransferError::transient(
                "Timeout",
                format!("{path}: no data within {:?}", self.idle),
            )),
            Ok(None) => Ok(None),
            Ok(Some(chunk)) => chunk.map(Some).map_err(|e| store_error(path, e)),
        }
    }
}

fn key(path: &str) -> Path {
    Path::from(path.trim_start_matches('/'))
}

fn store_error(path: &str, e: object_store::Error) -> TransferError {
    match e {
        object_store::Error::NotFound { .. } => {
            TransferError::permanent("FileNotFound", format!("{path}: not found"))
        }
        other => TransferError::transient("ObjectStoreError", format!("{path}: {other}")),
    }
}

impl Transport for S3Transport {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn size<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<u64>, TransferError>> {
        async move {
            let meta = self
                .store
                .head(&key(path))
                .await
                .map_err(|e| store_error(path, e))?;
            Ok(Some(meta.size))
        }
        .boxed()
    }

    fn download<'a>(
        &'a self,
        path: &'a str,
        out: Writer<'a>,
    ) -> BoxFuture<'a, Result<u64, TransferError>> {
        async move {
            let got = self
                .store
                .get(&key(path))
                .await
                .map_err(|e| store_error(path, e))?;
            let mut stream = got.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = self.next_chunk(&mut stream, path).await? {
                n += chunk.len() as u64;
                out.write_all(&chunk)
                    .await
                    .map_err(|e| TransferError::transient("IoError", format!("{path}: {e}")))?;
            }
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
            let mut w = BufWriter::with_capacity(self.store.clone(), key(&temp), 8 << 20)
                .with_max_concurrency(2);
            let copied = async {
                let n = tokio::io::copy(input, &mut w).await?;
                w.shutdown().await?;
                Ok::<_, std::io::Error>(n)
            }
            .await;
            match copied {
                Ok(bytes) => {
                    let held = self
                        .store
                        .head(&key(&temp))
                        .await
                        .map_err(|e| store_error(path, e))?
                        .size;
                    if held != bytes {
                        let _ = self.store.delete(&key(&temp)).await;
                        return Err(TransferError::transient(
                            "SizeMismatch",
                            format!("{path}: sent {bytes} bytes, the store holds {held}"),
                        ));
                    }
                    Ok(Staged { temp, bytes })
                }
                Err(e) => {
                    let _ = w.abort().await;
                    Err(TransferError::transient(
                        "ObjectStoreError",
                        format!("{path}: {e}"),
                    ))
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
            if staged.bytes <= self.copy_limit {
                return self
                    .store
                    .rename(&key(&staged.temp), &key(path))
                    .await
                    .map_err(|e| store_error(path, e));
            }
            let n = self.stream_copy(&staged.temp, path).await?;
            if n != staged.bytes {
                return Err(TransferError::transient(
                    "SizeMismatch",
                    format!("{path}: {n} of {} bytes reached their place", staged.bytes),
                ));
            }
            // The copy is in place; a leftover staged object only costs space.
            let _ = self.store.delete(&key(&staged.temp)).await;
            Ok(())
        }
        .boxed()
    }

    fn discard<'a>(&'a self, staged: &'a Staged) -> BoxFuture<'a, ()> {
        async move {
            let _ = self.store.delete(&key(&staged.temp)).await;
        }
        .boxed()
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), TransferError>> {
        async move {
            match self.store.list_with_delimiter(None).await {
                Ok(_) => Ok(()),
                // The store answered: a listing may be refused (a user allowed under a prefix
                // only) while reads and writes of jobs' keys work.
                Err(object_store::Error::NotFound { .. })
                | Err(object_store::Error::PermissionDenied { .. }) => Ok(()),
                Err(e) => Err(TransferError::transient("Unavailable", e.to_string())),
            }
        }
        .boxed()
    }

    fn sweep<'a>(
        &'a self,
        dir: &'a str,
        age: Duration,
    ) -> BoxFuture<'a, Result<usize, TransferError>> {
        async move {
            let cutoff = chrono::Utc::now() - age;
            let prefix = key(dir);
            let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
            let mut listing = self.store.list(prefix.as_ref());
            let mut removed = 0;
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| store_error(dir, e))?;
                let staged = meta.location.filename().is_some_and(is_staged_name);
                if staged
                    && meta.last_modified < cutoff
                    && self.store.delete(&meta.location).await.is_ok()
                {
                    removed += 1;
                }
            }
            Ok(removed)
        }
        .boxed()
    }
}
