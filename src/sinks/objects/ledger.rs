//! The ownership ledger of an object sink: per (stream, partition), the generations of the
//! processes that owned the partition, and the multipart uploads they started.
//!
//! ```text
//! <prefix>/_fence/<stream>/<partition>/gen/00000000000000000007   {"from":1234,"nonce":"…","at":"…"}
//! <prefix>/_fence/<stream>/<partition>/uploads/00000000000000000007-<hex upload id>   <object key>
//! ```
//!
//! An empty stream (a pipeline with one kind of record) leaves out its level, an empty prefix
//! puts `_fence/` at the root.
//!
//! A writer that starts writing a partition under a new assignment takes the next generation:
//! it lists the generations and creates the next one with put-if-absent (`If-None-Match: *` on
//! S3, an exclusive link on a local directory), then reads it back and checks its own nonce: on a
//! store without the condition that settles two takers whose PUTs both land before the first
//! read-back, not a PUT that lands after it. Every
//! object the writer makes carries its generation in its name; before and after making an
//! object visible it checks that no newer generation exists. A writer that finds a newer one
//! stops writing the partition (its process lost it) and removes what it made itself, and never
//! removes objects of a newer generation. Each multipart upload is recorded under `uploads/`
//! before its first part and forgotten after it completes or is aborted; whoever takes a newer
//! generation aborts the uploads of older ones (a killed writer's incomplete uploads).

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tracing::{info, warn};

#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn ObjectStore>,
    /// `<prefix>/_fence`
    root: String,
}

/// An upload that a writer started and did not finish.
pub struct OpenUpload {
    pub marker: Path,
    pub generation: u64,
    pub key: String,
    pub upload_id: String,
}

impl Ledger {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Ledger {
            store,
            root: if prefix.is_empty() {
                "_fence".to_owned()
            } else {
                format!("{prefix}/_fence")
            },
        }
    }

    fn dir(&self, stream: &str, partition: i32, what: &str) -> String {
        if stream.is_empty() {
            format!("{}/{partition}/{what}", self.root)
        } else {
            format!("{}/{stream}/{partition}/{what}", self.root)
        }
    }

    /// The newest generation of the partition (0 when none was taken).
    pub async fn latest(
        &self,
        stream: impl AsRef<str>,
        partition: i32,
    ) -> object_store::Result<u64> {
        let dir = Path::from(self.dir(stream.as_ref(), partition, "gen"));
        let listing: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        Ok(listing
            .iter()
            .filter_map(|m| m.location.filename()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0))
    }

    /// The newest generation when one newer than `generation` was taken, `None` when there is
    /// none. Generations are taken one after another (each taker creates the one after the
    /// newest it lists) and never removed, so a newer one exists exactly when `generation + 1`
    /// does: one HEAD answers the usual case, and the directory is listed only when a newer
    /// owner is there. (A listing costs more than a HEAD on S3, and some S3-compatible servers
    /// walk the whole bucket for it.)
    pub async fn newer_than(
        &self,
        stream: impl AsRef<str>,
        partition: i32,
        generation: u64,
    ) -> object_store::Result<Option<u64>> {
        let next = Path::from(format!(
            "{}/{:020}",
            self.dir(stream.as_ref(), partition, "gen"),
            generation + 1
        ));
        match self.store.head(&next).await {
            Ok(_) => Ok(Some(self.latest(stream, partition).await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the next generation of the partition for a writer whose first record is at
    /// offset `from`.
    pub async fn take(
        &self,
        stream: impl AsRef<str>,
        partition: i32,
        from: i64,
    ) -> object_store::Result<u64> {
        let nonce = uuid::Uuid::new_v4().to_string();
        loop {
            let next = self.latest(stream.as_ref(), partition).await? + 1;
            let path = Path::from(format!(
                "{}/{next:020}",
                self.dir(stream.as_ref(), partition, "gen")
            ));
            let body = serde_json::json!({
                "from": from,
                "nonce": nonce,
                "at": chrono::Utc::now().to_rfc3339(),
            })
            .to_string();
            let put = self
                .store
                .put_opts(
                    &path,
                    PutPayload::from(body.clone().into_bytes()),
                    PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    },
                )
                .await;
            match put {
                Ok(_) => {}
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. }) => {
                    // A store without conditional writes: a plain put, settled by the read-back.
                    self.store
                        .put(&path, PutPayload::from(body.clone().into_bytes()))
                        .await?;
                }
                Err(e) => return Err(e),
            }
            let back = self.store.get(&path).await?.bytes().await?;
            let ours = serde_json::from_slice::<serde_json::Value>(&back)
                .ok()
                .is_some_and(|v| v["nonce"] == nonce.as_str());
            if ours {
                info!(
                    stream = stream.as_ref(),
                    partition,
                    generation = next,
                    from,
                    "took the partition's next ownership generation"
                );
                return Ok(next);
            }
        }
    }

    /// Where an upload is recorded.
    pub fn upload_marker(
        &self,
        stream: impl AsRef<str>,
        partition: i32,
        generation: u64,
        upload_id: &str,
    ) -> Path {
        let hex: String = upload_id.bytes().map(|b| format!("{b:02x}")).collect();
        Path::from(format!(
            "{}/{generation:020}-{hex}",
            self.dir(stream.as_ref(), partition, "uploads")
        ))
    }

    /// Records an upload before its first part.
    pub async fn open_upload(
        &self,
        stream: impl AsRef<str>,
        partition: i32,
        generation: u64,
        key: &str,
        upload_id: &str,
    ) -> object_store::Result<Path> {
        let marker = self.upload_marker(stream.as_ref(), partition, generation, upload_id);
        self.store
            .put(&marker, PutPayload::from(key.as_bytes().to_vec()))
            .await?;
        Ok(marker)
    }

    /// Forgets an upload that completed or was aborted.
    pub async fn close_upload(&self, marker: &Path) {
        if let Err(e) = self.store.delete(marker).await {
            if !matches!(e, object_store::Error::NotFound { .. }) {
                warn!(marker = %marker, error = %e, "cannot remove an upload marker; the next owner of the partition cleans it");
            }
        }
    }

    /// Uploads of the partition recorded by generations older than `generation`.
    pub async fn stale_uploads(
        &self,
        stream: impl AsRef<str>,
        partition: i32,
        generation: u64,
    ) -> object_store::Result<Vec<OpenUpload>> {
        let dir = Path::from(self.dir(stream.as_ref(), partition, "uploads"));
        let listing: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        let mut out = Vec::new();
        for meta in listing {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let Some((g, hex)) = name.split_once('-') else {
                continue;
            };
            let Ok(g) = g.parse::<u64>() else { continue };
            if g >= generation {
                continue;
            }
            let Some(upload_id) = unhex(hex) else {
                continue;
            };
            let key = match self.store.get(&meta.location).await {
                Ok(r) => String::from_utf8_lossy(&r.bytes().await?).into_owned(),
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            out.push(OpenUpload {
                marker: meta.location,
                generation: g,
                key,
                upload_id,
            });
        }
        Ok(out)
    }
}

fn unhex(hex: &str) -> Option<String> {
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn generations_increase_and_uploads_of_older_ones_are_stale() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let ledger = Ledger::new(store, "market-data");
        assert_eq!(ledger.latest("tick", 0).await.unwrap(), 0);
        assert_eq!(ledger.take("tick", 0, 10).await.unwrap(), 1);
        assert_eq!(ledger.take("tick", 0, 20).await.unwrap(), 2);
        assert_eq!(ledger.take("tick", 1, 0).await.unwrap(), 1);
        assert_eq!(ledger.take("orderbook", 0, 0).await.unwrap(), 1);
        assert_eq!(ledger.latest("tick", 0).await.unwrap(), 2);
        assert_eq!(ledger.newer_than("tick", 0, 2).await.unwrap(), None);
        assert_eq!(ledger.take("tick", 0, 30).await.unwrap(), 3);
        assert_eq!(ledger.newer_than("tick", 0, 1).await.unwrap(), Some(3));
        assert_eq!(ledger.newer_than("tick", 0, 2).await.unwrap(), Some(3));
        assert_eq!(ledger.newer_than("tick", 0, 3).await.unwrap(), None);
        assert_eq!(ledger.newer_than("tick", 1, 1).await.unwrap(), None);
        assert_eq!(ledger.newer_than("tick", 2, 0).await.unwrap(), None);
        assert_eq!(ledger.newer_than("orderbook", 0, 0).await.unwrap(), Some(1));
        let marker = ledger
            .open_upload("tick", 0, 1, "a/b.parquet", "id/with+odd=chars")
            .await
            .unwrap();
        ledger
            .open_upload("tick", 0, 2, "a/c.parquet", "current")
            .await
            .unwrap();
        let stale = ledger.stale_uploads("tick", 0, 2).await.unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(
            (stale[0].key.as_str(), stale[0].upload_id.as_str()),
            ("a/b.parquet", "id/with+odd=chars")
        );
        ledger.close_upload(&marker).await;
        assert!(ledger.stale_uploads("tick", 0, 2).await.unwrap().is_empty());
    }
}
