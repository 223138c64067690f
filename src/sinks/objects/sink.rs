//! `ParquetSink`: writes a batch of market records as Parquet objects, one per
//! (kind, partition, UTC hour), streaming each through a multipart upload.
//!
//! Every record ends up in exactly one object, after any crash or replay. Offsets are committed
//! only after a batch's objects are complete, so a replay starts at a batch boundary; but the
//! replay may cut its batches at other offsets (flushes by age), so rewriting the same keys is
//! not enough. Before writing, the sink removes every object of the same partition whose first
//! offset lies inside the new batch's offset range and whose key it is not about to rewrite:
//! such an object holds records of an uncommitted batch that the new batch now covers. Committed
//! objects start below the replay's first offset and are never touched. The objects to look at
//! are found by listing the hour prefixes of the batch's own records: an old object is named
//! after its first record, which is in the new batch with the same time.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actord_actors::record::Envelope;
use actord_actors::sink::{Progress, Sink, SinkError, SinkFactory};
use actord_actors::Fence;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use tracing::{debug, info};

use super::keys::{self, Group, Kind};
use super::parquet::{batch, properties, schema};
use crate::pipelines::recorder::model::Market;
use crate::telemetry::names;

/// Multipart part size: S3 needs at least 5 MiB per part but the last.
const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once per object.
const PART_CONCURRENCY: usize = 2;

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_OK: u8 = 1;
const HEALTH_FAILING: u8 = 2;

/// State shared by the writers of one path.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// The key prefix above `tick/` and `orderbook/`, e.g. `market-data`.
    prefix: String,
    row_group_rows: usize,
    /// The path's actor path, the `path` label of the metrics.
    path: String,
    /// When set, only objects modified since this time may be removed as stale. With the
    /// embedded broker every run starts its offsets at zero again, so objects of an earlier
    /// run share offsets with this one's without being a replay of them.
    replay_since: Option<DateTime<Utc>>,
    health: AtomicU8,
}

impl Objects {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: impl Into<String>,
        row_group_rows: usize,
        path: impl Into<String>,
        replay_since: Option<DateTime<Utc>>,
    ) -> Arc<Self> {
        Arc::new(Objects {
            store,
            prefix: prefix.into().trim_matches('/').to_owned(),
            row_group_rows: row_group_rows.max(1),
            path: path.into(),
            replay_since,
            health: AtomicU8::new(HEALTH_UNKNOWN),
        })
    }

    /// False while writes fail; true before the first write and after a successful one.
    pub fn healthy(&self) -> bool {
        self.health.load(Ordering::Acquire) != HEALTH_FAILING
    }

    pub fn factory(self: &Arc<Self>) -> SinkFactory<ParquetSink> {
        let shared = self.clone();
        Arc::new(move || {
            let shared = shared.clone();
            Box::pin(async move {
                Ok(ParquetSink {
                    shared,
                    progress: Progress::none(),
                    fence: Fence::new(),
                })
            })
        })
    }

    async fn write_batch(
        &self,
        records: &[Envelope<Market>],
        progress: &Progress,
        fence: &Fence,
    ) -> Result<(), SinkError> {
        let groups = keys::group(records);
        if groups.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = groups.iter().map(|g| g.key(&self.prefix)).collect();
        self.remove_stale(&groups, &keys).await?;
        for (group, key) in groups.iter().zip(&keys) {
            let started = Instant::now();
            let bytes = self.upload(group, key, progress, fence).await?;
            progress.advanced(0, bytes);
            metrics::counter!(names::S3_UPLOADS_TOTAL, "path" => self.path.clone()).increment(1);
            metrics::counter!(names::S3_UPLOADED_BYTES_TOTAL, "path" => self.path.clone())
                .increment(bytes);
            debug!(key = %key, records = group.records.len(), bytes, elapsed = ?started.elapsed(), "object written");
        }
        Ok(())
    }

    /// Removes objects of earlier, uncommitted cuts of the records in `groups` (see the module
    /// documentation).
    async fn remove_stale(&self, groups: &[Group<'_>], fresh: &[String]) -> Result<(), SinkError> {
        let mut ranges: BTreeMap<(Kind, i32), (i64, i64)> = BTreeMap::new();
        let mut prefixes: BTreeSet<(Kind, i32, String)> = BTreeSet::new();
        for g in groups {
            let first = g.records[0];
            let last = g.records[g.records.len() - 1];
            let (lo, hi) = (first.source.origin.offset, last.source.origin.offset);
            ranges
                .entry((g.kind, g.partition))
                .and_modify(|r| *r = (r.0.min(lo), r.1.max(hi)))
                .or_insert((lo, hi));
            let hour = keys::hour_prefix(&self.prefix, g.kind, first.record.time());
            prefixes.insert((g.kind, g.partition, hour));
        }
        let fresh: HashSet<&str> = fresh.iter().map(String::as_str).collect();
        for (kind, partition, hour) in prefixes {
            let (lo, hi) = ranges[&(kind, partition)];
            let listing: Vec<_> = self
                .store
                .list(Some(&Path::from(hour.trim_end_matches('/'))))
                .try_collect()
                .await
                .map_err(store_error)?;
            for meta in listing {
                let Some(name) = meta.location.filename() else {
                    continue;
                };
                let Some((p, offset)) = keys::parse_object_name(name) else {
                    continue;
                };
                let stale = p == partition
                    && (lo..=hi).contains(&offset)
                    && !fresh.contains(meta.location.as_ref())
                    && self.replay_since.is_none_or(|t| meta.last_modified >= t);
                if stale {
                    self.store
                        .delete(&meta.location)
                        .await
                        .map_err(store_error)?;
                    metrics::counter!(names::S3_OBJECTS_REPLACED_TOTAL, "path" => self.path.clone())
                        .increment(1);
                    info!(key = %meta.location, "removed an object of an uncommitted batch before rewriting its records");
                }
            }
        }
        Ok(())
    }

    /// Streams one group into `key`: row groups are encoded and handed to a multipart upload
    /// as they fill, so memory holds one row group and a few parts, not the file. Each row
    /// group handed on is progress, so a long upload that moves is not taken for a stuck one.
    /// Returns the object's size.
    async fn upload(
        &self,
        group: &Group<'_>,
        key: &str,
        progress: &Progress,
        fence: &Fence,
    ) -> Result<u64, SinkError> {
        let out = BufWriter::with_capacity(self.store.clone(), Path::from(key), PART_SIZE)
            .with_max_concurrency(PART_CONCURRENCY);
        let props = properties(self.row_group_rows);
        let mut writer = AsyncArrowWriter::try_new(out, schema(group.kind), Some(props))
            .map_err(|e| SinkError::fatal(format!("cannot start a Parquet file: {e}")))?;
        let written = async {
            let origins = || group.records.iter().map(|e| &e.source.origin);
            for chunk in group.records.chunks(self.row_group_rows) {
                if fence.any_fenced(origins()) {
                    return Err(fenced(key));
                }
                let rows = batch(group.kind, chunk)
                    .map_err(|e| SinkError::fatal(format!("cannot build a record batch: {e}")))?;
                writer.write(&rows).await.map_err(parquet_error)?;
                progress.advanced(chunk.len() as u64, 0);
            }
            if fence.any_fenced(origins()) {
                return Err(fenced(key));
            }
            writer.finish().await.map_err(parquet_error)?;
            Ok(writer.bytes_written() as u64)
        }
        .await;
        if written.is_err() {
            // Best effort: drop the parts of an unfinished multipart upload.
            let _ = writer.into_inner().abort().await;
        }
        written
    }
}

/// Every store failure is retried: an outage, a throttle or a permissions problem the operator
/// fixes; none of them makes the records themselves unwritable.
fn store_error(e: object_store::Error) -> SinkError {
    SinkError::new(
        actord_actors::ErrorKind::Transient,
        "ObjectStore",
        e.to_string(),
    )
}

fn fenced(key: &str) -> SinkError {
    SinkError::fenced(format!(
        "gave up {key}: a partition of its records was revoked"
    ))
}

fn parquet_error(e: parquet::errors::ParquetError) -> SinkError {
    SinkError::new(
        actord_actors::ErrorKind::Transient,
        "ObjectStore",
        e.to_string(),
    )
}

/// One writer's handle on the shared state.
pub struct ParquetSink {
    shared: Arc<Objects>,
    progress: Progress,
    fence: Fence,
}

impl Sink<Market> for ParquetSink {
    fn attach_progress(&mut self, progress: Progress) {
        self.progress = progress;
    }

    fn attach_fence(&mut self, fence: Fence) {
        self.fence = fence;
    }

    async fn write(&mut self, records: &[Envelope<Market>]) -> Result<(), SinkError> {
        let result = self
            .shared
            .write_batch(records, &self.progress, &self.fence)
            .await;
        let health = match &result {
            Ok(()) => HEALTH_OK,
            Err(e) if e.class == "Fenced" => HEALTH_OK,
            Err(_) => {
                metrics::counter!(names::S3_UPLOAD_ERRORS_TOTAL, "path" => self.shared.path.clone())
                    .increment(1);
                HEALTH_FAILING
            }
        };
        self.shared.health.store(health, Ordering::Release);
        result
    }
}
