//! Encoding an object off the async workers and streaming it to the store.
//!
//! The Parquet encoder (column encoding and snappy, the CPU-heavy part) runs on a blocking
//! thread; the async side hands it one Arrow batch per row group and takes back chunks of
//! encoded bytes of one part each, through channels of one slot, so memory holds a row group and
//! two parts at most. An object that fits in one part is written with one PUT; a larger one
//! through a multipart upload. An upload that does not complete (an error, a revoked
//! partition, the writer stopped or killed mid-upload) is aborted: explicitly, or by the guard
//! when its future is dropped.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;
use tracing::warn;

use super::ledger::Ledger;

/// Multipart part size: S3 needs at least 5 MiB per part but the last.
pub const PART_SIZE: usize = 8 << 20;

/// What the async side sends the encoder.
pub enum Rows {
    Batch(RecordBatch),
    /// Everything was sent: write the footer. Without it the encoder gives up.
    Finish,
}

/// Collects encoded bytes and hands them on a part at a time.
struct Chunker {
    buf: Vec<u8>,
    part_size: usize,
    out: mpsc::Sender<Vec<u8>>,
}

impl Chunker {
    fn send(&mut self, chunk: Vec<u8>) -> std::io::Result<()> {
        self.out
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload gave up"))
    }
}

impl std::io::Write for Chunker {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= self.part_size {
            let rest = self.buf.split_off(self.part_size);
            let chunk = std::mem::replace(&mut self.buf, rest);
            self.send(chunk)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The ends of an encoder running on a blocking thread.
pub struct Encoder {
    /// Row groups in.
    pub rows: mpsc::Sender<Rows>,
    /// Encoded parts out.
    pub parts: mpsc::Receiver<Vec<u8>>,
    /// The object's size once the footer is written.
    pub done: tokio::task::JoinHandle<Result<u64, String>>,
}

/// Starts the encoder of one object on a blocking thread; it hands on parts of `part_size`.
pub fn encoder(schema: SchemaRef, props: WriterProperties, part_size: usize) -> Encoder {
    let (rows_tx, mut rows_rx) = mpsc::channel::<Rows>(1);
    let (bytes_tx, bytes_rx) = mpsc::channel::<Vec<u8>>(1);
    let handle = tokio::task::spawn_blocking(move || {
        // The buffer grows with what is written: most objects are far smaller than a part, and
        // reserving a whole part up front cost each of them 8 MiB of address space.
        let out = Chunker {
            buf: Vec::new(),
            part_size,
            out: bytes_tx,
        };
        let mut writer = ArrowWriter::try_new(out, schema, Some(props))
            .map_err(|e| format!("cannot start a Parquet file: {e}"))?;
        loop {
            match rows_rx.blocking_recv() {
                Some(Rows::Batch(rows)) => writer
                    .write(&rows)
                    .map_err(|e| format!("cannot encode a row group: {e}"))?,
                Some(Rows::Finish) => break,
                None => return Err("the upload gave up".to_owned()),
            }
        }
        let size = writer.bytes_written() as u64;
        let mut out = writer
            .into_inner()
            .map_err(|e| format!("cannot finish a Parquet file: {e}"))?;
        let size = size.max(out.buf.len() as u64);
        let rest = std::mem::take(&mut out.buf);
        if !rest.is_empty() {
            out.send(rest).map_err(|e| e.to_string())?;
        }
        Ok(size)
    });
    Encoder {
        rows: rows_tx,
        parts: bytes_rx,
        done: handle,
    }
}

/// Where multipart uploads go.
#[derive(Clone)]
pub enum Parts {
    /// S3: the multipart API, each upload recorded in the ledger until it ends.
    S3(Arc<dyn MultipartStore>),
    /// Any other store (a local directory: a staging file created exclusively, fsynced and
    /// renamed into place on completion, removed when the upload is dropped).
    Store(Arc<dyn ObjectStore>),
}

/// One multipart upload in progress; aborted when dropped before it completed.
pub struct Upload {
    inner: Option<Inner>,
}

enum Inner {
    S3 {
        store: Arc<dyn MultipartStore>,
        path: Path,
        id: String,
        parts: Vec<PartId>,
        ledger: Ledger,
        marker: Path,
    },
    Store(Box<dyn MultipartUpload>),
}

impl Upload {
    pub async fn start(
        parts: &Parts,
        ledger: &Ledger,
        path: &Path,
        stream: &str,
        partition: i32,
        generation: u64,
    ) -> object_store::Result<Upload> {
        match parts {
            Parts::S3(store) => {
                let id = store.create_multipart(path).await?;
                // The guard exists before the upload is recorded: dropped while recording, it
                // still aborts the upload.
                let upload = Upload {
                    inner: Some(Inner::S3 {
                        store: store.clone(),
                        path: path.clone(),
                        id: id.clone(),
                        parts: Vec::new(),
                        ledger: ledger.clone(),
                        marker: ledger.upload_marker(stream, partition, generation, &id),
                    }),
                };
                ledger
                    .open_upload(stream, partition, generation, path.as_ref(), &id)
                    .await?;
                Ok(upload)
            }
            Parts::Store(store) => Ok(Upload {
                inner: Some(Inner::Store(store.put_multipart(path).await?)),
            }),
        }
    }

    pub async fn put_part(&mut self, data: Vec<u8>) -> object_store::Result<()> {
        match self.inner.as_mut().expect("upload in progress") {
            Inner::S3 {
                store,
                path,
                id,
                parts,
                ..
            } => {
                let part = store
                    .put_part(path, id, parts.len(), PutPayload::from(data))
                    .await?;
                parts.push(part);
            }
            Inner::Store(upload) => upload.put_part(PutPayload::from(data)).await?,
        }
        Ok(())
    }

    pub async fn complete(mut self) -> object_store::Result<()> {
        match self.inner.take().expect("upload in progress") {
            Inner::S3 {
                store,
                path,
                id,
                parts,
                ledger,
                marker,
            } => {
                let done = store.complete_multipart(&path, &id, parts).await;
                if done.is_err() {
                    let _ = store.abort_multipart(&path, &id).await;
                }
                ledger.close_upload(&marker).await;
                done.map(|_| ())
            }
            Inner::Store(mut upload) => upload.complete().await.map(|_| ()),
        }
    }

    pub async fn abort(mut self) {
        if let Some(inner) = self.inner.take() {
            abort(inner).await;
        }
    }
}

async fn abort(inner: Inner) {
    match inner {
        Inner::S3 {
            store,
            path,
            id,
            ledger,
            marker,
            ..
        } => match store.abort_multipart(&path, &id).await {
            Ok(()) => ledger.close_upload(&marker).await,
            Err(e) => {
                warn!(key = %path, error = %e, "cannot abort a multipart upload; the partition's next owner aborts it");
            }
        },
        Inner::Store(mut upload) => {
            let _ = upload.abort().await;
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // The writer stopped or was killed mid-upload: abort on the runtime, if it still runs.
        if let Some(inner) = self.inner.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(abort(inner));
            }
        }
    }
}
