//! `s3`: a bucket as a server (object_store). Paths are keys (`/in/a.csv` is `in/a.csv`).
//! Uploads stream through a multipart upload under a temporary key, then are copied into place.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use super::{temp_name, Reader, Staged, TransferError, Transport, Writer};

pub struct S3Transport {
    store: Arc<dyn ObjectStore>,
    describe: String,
}

impl S3Transport {
    pub fn new(store: Arc<dyn ObjectStore>, describe: String) -> Self {
        S3Transport { store, describe }
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
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| store_error(path, e))?;
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
    ) -> BoxFuture<'a, Result<Staged, TransferError>> {
        async move {
            let temp = temp_name(path);
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
            self.store
                .rename(&key(&staged.temp), &key(path))
                .await
                .map_err(|e| store_error(path, e))
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
            self.store
                .list_with_delimiter(None)
                .await
                .map(|_| ())
                .map_err(|e| TransferError::transient("Unavailable", e.to_string()))
        }
        .boxed()
    }
}
