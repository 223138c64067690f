//! `ParquetSink`: writes a batch of market records as Parquet objects, one per
//! (kind, partition, UTC hour), each encoded off the async workers and streamed to the store.
//!
//! Every record ends up in exactly one object, after any crash, replay or change of owner:
//!
//! - Offsets are committed only after a batch's objects are complete, so a replay starts at a
//!   batch boundary. The replay may cut its batches at other offsets (flushes by age), so before
//!   writing, the sink removes every object of the same partition whose first offset lies
//!   inside the new batch's offset range, whose key it is not about to rewrite, and whose first
//!   record is the batch's record at that offset (same time in the name: a topic deleted and
//!   created again under the same name starts its offsets anew, and its objects are not the old
//!   topic's). Committed objects start below the replay's first offset and are never touched.
//!   The objects to look at are found by listing the hour prefixes of the batch's own records:
//!   an old object is named after its first record, which is in the new batch with the same time.
//! - The first batch of an assignment also looks for an object that starts before the batch
//!   and reaches into it (a replay starting inside an uncommitted object, after retention moved
//!   the log start): the footer of that object names its last offset and that record's time;
//!   the batch's records up to it are already stored and are not written again.
//! - Ownership (see `ledger`): the first write of each assignment takes the partition's next
//!   generation, which names every object it writes. Before an object becomes visible and again
//!   after, the sink checks the path's fence (the partition was not revoked in this process) and
//!   the ledger (no newer generation exists); a writer that lost its partition gives up the
//!   upload, or removes the object it just completed, and never removes an object of a newer
//!   generation. Taking a generation aborts the multipart uploads older generations left behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actord_actors::record::Envelope;
use actord_actors::sink::{Progress, Sink, SinkError, SinkFactory};
use actord_actors::Fence;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use tracing::{debug, info, warn};

use super::keys::{self, Group, Kind};
use super::ledger::Ledger;
use super::parquet::{batch, properties_with, schema};
use super::upload::{encoder, Encoder, Parts, Rows, Upload};
use crate::pipelines::recorder::model::Market;
use crate::telemetry::names;

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_OK: u8 = 1;
const HEALTH_FAILING: u8 = 2;

/// Footer metadata: the offset of the object's last record and that record's time (ns).
const META_LAST_OFFSET: &str = "actord.last_offset";
const META_LAST_NANOS: &str = "actord.last_nanos";

/// Where the objects of a sink go.
pub struct Target {
    /// Listing, removal, single-part writes and the ledger.
    pub store: Arc<dyn ObjectStore>,
    /// Multipart uploads: S3's multipart API, or the store's own (a local directory's staging
    /// files).
    pub parts: Parts,
    /// A local directory: its staging files of killed writers are swept at start.
    pub dir: Option<std::path::PathBuf>,
    /// Size of a multipart upload's parts ([`super::upload::PART_SIZE`]; S3 needs 5 MiB but
    /// for the last).
    pub part_size: usize,
}

/// The generation a writer holds for a partition under one assignment.
#[derive(Clone, Copy)]
struct Owner {
    epoch: u64,
    generation: u64,
    /// No batch of this assignment was written yet.
    first: bool,
}

/// State shared by the writers of one path.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    parts: Parts,
    part_size: usize,
    ledger: Ledger,
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
    owners: Mutex<HashMap<(Kind, i32), Owner>>,
}

impl Objects {
    pub fn new(
        target: Target,
        prefix: impl Into<String>,
        row_group_rows: usize,
        path: impl Into<String>,
        replay_since: Option<DateTime<Utc>>,
    ) -> Arc<Self> {
        let prefix = prefix.into().trim_matches('/').to_owned();
        if let Some(dir) = &target.dir {
            sweep_staging(&dir.join(&prefix));
        }
        Arc::new(Objects {
            ledger: Ledger::new(target.store.clone(), &prefix),
            store: target.store,
            parts: target.parts,
            part_size: target.part_size.max(1),
            prefix,
            row_group_rows: row_group_rows.max(1),
            path: path.into(),
            replay_since,
            health: AtomicU8::new(HEALTH_UNKNOWN),
            owners: Mutex::new(HashMap::new()),
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

    /// The generation this writer holds for the partition under `epoch`, taking the next one
    /// at the first write of an assignment (and aborting the uploads older ones left).
    async fn owner(
        &self,
        kind: Kind,
        partition: i32,
        epoch: u64,
        from: i64,
    ) -> Result<Owner, SinkError> {
        let known = self
            .owners
            .lock()
            .expect("owners lock")
            .get(&(kind, partition))
            .copied();
        if let Some(o) = known.filter(|o| o.epoch == epoch) {
            return Ok(o);
        }
        let generation = self
            .ledger
            .take(kind, partition, from)
            .await
            .map_err(store_error)?;
        let stale = self
            .ledger
            .stale_uploads(kind, partition, generation)
            .await
            .map_err(store_error)?;
        for u in stale {
            if let Parts::S3(store) = &self.parts {
                match store
                    .abort_multipart(&Path::from(u.key.as_str()), &u.upload_id)
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        warn!(key = %u.key, error = %e, "cannot abort an upload an earlier owner left")
                    }
                }
            }
            info!(key = %u.key, generation = u.generation, "aborted an incomplete upload an earlier owner left");
            self.ledger.close_upload(&u.marker).await;
        }
        let owner = Owner {
            epoch,
            generation,
            first: true,
        };
        self.owners
            .lock()
            .expect("owners lock")
            .insert((kind, partition), owner);
        Ok(owner)
    }

    /// Fails with a fenced error when the partition was revoked here or a newer generation
    /// owns it in the store.
    async fn still_owner(
        &self,
        group: &Group<'_>,
        generation: u64,
        fence: &Fence,
    ) -> Result<(), SinkError> {
        if fence.any_fenced(group.records.iter().map(|e| &e.source.origin)) {
            return Err(SinkError::fenced(format!(
                "partition {} was revoked",
                group.partition
            )));
        }
        let latest = self
            .ledger
            .latest(group.kind, group.partition)
            .await
            .map_err(store_error)?;
        if latest > generation {
            metrics::counter!(names::S3_FENCED_TOTAL, "path" => self.path.clone()).increment(1);
            return Err(SinkError::fenced(format!(
                "{} partition {} belongs to generation {latest} now, this writer holds {generation}",
                group.kind.as_str(),
                group.partition
            )));
        }
        Ok(())
    }

    async fn write_batch(
        &self,
        records: &[Envelope<Market>],
        progress: &Progress,
        fence: &Fence,
    ) -> Result<(), SinkError> {
        let mut groups = keys::group(records);
        if groups.is_empty() {
            return Ok(());
        }
        let mut owners: BTreeMap<(Kind, i32), Owner> = BTreeMap::new();
        for g in &groups {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                owners.entry((g.kind, g.partition))
            {
                let from = groups
                    .iter()
                    .filter(|o| (o.kind, o.partition) == (g.kind, g.partition))
                    .map(Group::first_offset)
                    .min()
                    .unwrap_or(g.first_offset());
                let owner = self.owner(g.kind, g.partition, g.epoch(), from).await?;
                slot.insert(owner);
            }
        }
        // Nothing is removed unless this writer still owns every partition of the batch: a
        // writer that lost one must not delete what a newer owner relies on.
        for g in &groups {
            self.still_owner(g, owners[&(g.kind, g.partition)].generation, fence)
                .await?;
        }
        self.remove_stale(&mut groups, &owners).await?;
        for group in groups.iter().filter(|g| !g.records.is_empty()) {
            let generation = owners[&(group.kind, group.partition)].generation;
            let key = group.key(&self.prefix, generation);
            let started = Instant::now();
            let bytes = self
                .upload(group, &key, generation, progress, fence)
                .await?;
            metrics::counter!(names::S3_UPLOADS_TOTAL, "path" => self.path.clone()).increment(1);
            metrics::counter!(names::S3_UPLOADED_BYTES_TOTAL, "path" => self.path.clone())
                .increment(bytes);
            debug!(key = %key, records = group.records.len(), bytes, elapsed = ?started.elapsed(), "object written");
        }
        let mut known = self.owners.lock().expect("owners lock");
        for (k, o) in &owners {
            if let Some(slot) = known.get_mut(k).filter(|s| s.epoch == o.epoch) {
                slot.first = false;
            }
        }
        Ok(())
    }

    /// Removes objects of earlier, uncommitted cuts of the records in `groups`, and drops from
    /// the first batch of an assignment the records an uncommitted object already holds (see
    /// the module documentation).
    async fn remove_stale(
        &self,
        groups: &mut [Group<'_>],
        owners: &BTreeMap<(Kind, i32), Owner>,
    ) -> Result<(), SinkError> {
        let mut ranges: BTreeMap<(Kind, i32), (i64, i64)> = BTreeMap::new();
        // The record time (to the second) at each offset of the batch, per kind and partition.
        let mut stamps: HashMap<(Kind, i32, i64), String> = HashMap::new();
        let mut fresh: Vec<String> = Vec::new();
        for g in groups.iter() {
            let (lo, hi) = (g.first_offset(), g.last_offset());
            ranges
                .entry((g.kind, g.partition))
                .and_modify(|r| *r = (r.0.min(lo), r.1.max(hi)))
                .or_insert((lo, hi));
            for e in &g.records {
                stamps.insert(
                    (g.kind, g.partition, e.source.origin.offset),
                    keys::stamp(e.record.time()),
                );
            }
            fresh.push(g.key(&self.prefix, owners[&(g.kind, g.partition)].generation));
        }
        let mut listings: HashMap<String, Vec<ObjectMeta>> = HashMap::new();
        for g in groups.iter_mut() {
            let hour = keys::hour_prefix(&self.prefix, g.kind, g.records[0].record.time());
            if !listings.contains_key(&hour) {
                let listing: Vec<ObjectMeta> = self
                    .store
                    .list(Some(&Path::from(hour.trim_end_matches('/'))))
                    .try_collect()
                    .await
                    .map_err(store_error)?;
                listings.insert(hour.clone(), listing);
            }
            let owner = owners[&(g.kind, g.partition)];
            let (lo, hi) = ranges[&(g.kind, g.partition)];
            let mut reaching_in: Option<(i64, &ObjectMeta)> = None;
            for meta in &listings[&hour] {
                let Some(name) = meta.location.filename().and_then(keys::parse_object_name) else {
                    continue;
                };
                if name.partition != g.partition {
                    continue;
                }
                if name.generation > owner.generation {
                    // A newer owner wrote here: this writer lost the partition.
                    metrics::counter!(names::S3_FENCED_TOTAL, "path" => self.path.clone())
                        .increment(1);
                    return Err(SinkError::fenced(format!(
                        "{} is of a newer owner than generation {}",
                        meta.location, owner.generation
                    )));
                }
                let same_log = stamps.get(&(g.kind, g.partition, name.offset)) == Some(&name.stamp);
                let stale = (lo..=hi).contains(&name.offset)
                    && same_log
                    && !fresh.iter().any(|k| k == meta.location.as_ref())
                    && self.replay_since.is_none_or(|t| meta.last_modified >= t);
                if stale {
                    self.store
                        .delete(&meta.location)
                        .await
                        .map_err(store_error)?;
                    metrics::counter!(names::S3_OBJECTS_REPLACED_TOTAL, "path" => self.path.clone())
                        .increment(1);
                    info!(key = %meta.location, "removed an object of an uncommitted batch before rewriting its records");
                } else if owner.first
                    && name.generation < owner.generation
                    && name.offset < g.first_offset()
                    && reaching_in.is_none_or(|(o, _)| o < name.offset)
                    && self.replay_since.is_none_or(|t| meta.last_modified >= t)
                {
                    reaching_in = Some((name.offset, meta));
                }
            }
            if let Some((_, meta)) = reaching_in {
                let held = self.held_by(meta, g).await?;
                if held > 0 {
                    info!(key = %meta.location, records = held, "the replay starts inside an object that holds its first records; they are not written again");
                    g.records.drain(..held);
                }
            }
        }
        Ok(())
    }

    /// How many of the group's first records the object already holds: its footer names its
    /// last offset and that record's time, and the group must have the same record there (or
    /// end before it, its records then lying in the object's time span).
    async fn held_by(&self, meta: &ObjectMeta, g: &Group<'_>) -> Result<usize, SinkError> {
        let Some((last, last_nanos)) = self.footer_last(meta).await? else {
            return Ok(0);
        };
        if last < g.first_offset() {
            return Ok(0);
        }
        let nanos = |e: &Envelope<Market>| e.record.time().timestamp_nanos_opt();
        let same = match g.records.iter().find(|e| e.source.origin.offset == last) {
            Some(e) => nanos(e) == Some(last_nanos),
            None => {
                last > g.last_offset()
                    && g.records
                        .iter()
                        .all(|e| nanos(e).is_some_and(|n| n <= last_nanos))
            }
        };
        if !same {
            return Ok(0);
        }
        Ok(g.records
            .iter()
            .take_while(|e| e.source.origin.offset <= last)
            .count())
    }

    /// The last offset and its record time from an object's footer, if it has them.
    async fn footer_last(&self, meta: &ObjectMeta) -> Result<Option<(i64, i64)>, SinkError> {
        let size = meta.size;
        if size < 12 {
            return Ok(None);
        }
        let tail = self
            .store
            .get_range(&meta.location, size - 8..size)
            .await
            .map_err(store_error)?;
        if &tail[4..] != b"PAR1" {
            return Ok(None);
        }
        let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
        if len + 8 > size {
            return Ok(None);
        }
        let footer = self
            .store
            .get_range(&meta.location, size - 8 - len..size - 8)
            .await
            .map_err(store_error)?;
        let Ok(parsed) = ParquetMetaDataReader::decode_metadata(&footer) else {
            return Ok(None);
        };
        let kv = parsed.file_metadata().key_value_metadata();
        let value = |key: &str| -> Option<i64> {
            kv?.iter()
                .find(|e| e.key == key)?
                .value
                .as_deref()?
                .parse()
                .ok()
        };
        Ok(value(META_LAST_OFFSET).zip(value(META_LAST_NANOS)))
    }

    /// Encodes one group on a blocking thread and streams it into `key`: one PUT when it fits
    /// in a part, a multipart upload otherwise. Row groups handed to the encoder and parts sent
    /// are progress, so a long upload that moves is not taken for a stuck one. The object is
    /// made visible only while this writer still owns the partition, and removed again when a
    /// newer owner appeared meanwhile. Returns the object's size.
    async fn upload(
        &self,
        group: &Group<'_>,
        key: &str,
        generation: u64,
        progress: &Progress,
        fence: &Fence,
    ) -> Result<u64, SinkError> {
        let path = Path::from(key);
        let last = group.records[group.records.len() - 1];
        let meta = vec![
            KeyValue::new(
                META_LAST_OFFSET.to_owned(),
                last.source.origin.offset.to_string(),
            ),
            KeyValue::new(
                META_LAST_NANOS.to_owned(),
                last.record
                    .time()
                    .timestamp_nanos_opt()
                    .unwrap_or(i64::MAX)
                    .to_string(),
            ),
        ];
        let Encoder {
            rows: rows_tx,
            parts: mut parts_rx,
            done: encoded,
        } = encoder(
            schema(group.kind),
            properties_with(self.row_group_rows, meta),
            self.part_size,
        );
        // Each side owns its end of the channels: when one side fails and is dropped, the encoder
        // sees the closed channel and stops instead of waiting for it.
        let path = &path;
        let feed = async move {
            for chunk in group.records.chunks(self.row_group_rows) {
                if fence.any_fenced(group.records.iter().map(|e| &e.source.origin)) {
                    return Err(SinkError::fenced(format!(
                        "gave up {key}: its partition was revoked"
                    )));
                }
                let rows = batch(group.kind, chunk)
                    .map_err(|e| SinkError::fatal(format!("cannot build a record batch: {e}")))?;
                rows_tx
                    .send(Rows::Batch(rows))
                    .await
                    .map_err(|_| SinkError::transient("the Parquet encoder stopped"))?;
                progress.advanced(chunk.len() as u64, 0);
            }
            rows_tx
                .send(Rows::Finish)
                .await
                .map_err(|_| SinkError::transient("the Parquet encoder stopped"))?;
            Ok::<(), SinkError>(())
        };
        let send = async move {
            let mut single: Option<Vec<u8>> = None;
            let mut upload: Option<Upload> = None;
            while let Some(part) = parts_rx.recv().await {
                progress.advanced(0, part.len() as u64);
                match (&mut upload, single.take()) {
                    (None, None) => single = Some(part),
                    (None, Some(first)) => {
                        let mut u = Upload::start(
                            &self.parts,
                            &self.ledger,
                            path,
                            group.kind,
                            group.partition,
                            generation,
                        )
                        .await
                        .map_err(store_error)?;
                        u.put_part(first).await.map_err(store_error)?;
                        u.put_part(part).await.map_err(store_error)?;
                        upload = Some(u);
                    }
                    (Some(u), _) => u.put_part(part).await.map_err(store_error)?,
                }
            }
            Ok::<_, SinkError>((single, upload))
        };
        let sent = tokio::try_join!(feed, send);
        let size = encoded
            .await
            .map_err(|e| SinkError::transient(format!("the Parquet encoder failed: {e}")))?;
        let ((), (single, upload)) = sent?;
        let size = size.map_err(SinkError::fatal)?;
        // Make it visible only while still the owner.
        if let Err(e) = self.still_owner(group, generation, fence).await {
            if let Some(u) = upload {
                u.abort().await;
            }
            return Err(e);
        }
        match (single, upload) {
            (_, Some(u)) => u.complete().await.map_err(store_error)?,
            (Some(bytes), None) => {
                self.store
                    .put(path, PutPayload::from(bytes))
                    .await
                    .map_err(store_error)?;
            }
            (None, None) => return Err(SinkError::fatal("the Parquet encoder produced nothing")),
        }
        // A newer owner that appeared meanwhile must not find this object beside its own.
        if let Err(e) = self.still_owner(group, generation, fence).await {
            if e.class == "Fenced" {
                match self.store.delete(path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(d) => {
                        warn!(key = %key, error = %d, "cannot remove an object written after losing the partition")
                    }
                }
                warn!(key = %key, "lost the partition while writing; removed the object again");
            }
            return Err(e);
        }
        Ok(size)
    }
}

/// Removes the staging files (`data_….parquet#N`) writers killed mid-upload left in a local
/// directory.
fn sweep_staging(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            sweep_staging(&path);
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("data_") && name.contains(".parquet#") {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    info!(file = %path.display(), "removed a staging file a stopped writer left")
                }
                Err(e) => warn!(file = %path.display(), error = %e, "cannot remove a staging file"),
            }
        }
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
