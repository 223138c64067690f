//! The Parquet object sink: writes a batch of a pipeline's records as Parquet objects, one per
//! (stream, partition, period), each encoded off the async workers and streamed to the store.
//! The pipeline brings a [`ParquetFormat`] (stream, time, schema and rows of its records) and a
//! [`Layout`] (prefix, time zone, hour or day); everything below is the sink's, once for every
//! pipeline:
//!
//! ```ignore
//! let objects = Objects::open(target, MyFormat, Layout::new("prefix", tz, Granularity::Day),
//!     Settings { row_group_rows, path: root.child("s3").to_string(), replay_since: None });
//! let path = KafkaPath::<MyRecord, ParquetSink<MyFormat>> { sink: objects.factory(), .. };
//! ```
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
//!   The objects to look at are found by listing the period directories of the batch's own
//!   records: an old object is named after its first record, which is in the new batch with
//!   the same time.
//! - The first batch of an assignment also looks for an object that starts before the batch
//!   and reaches into it (a replay starting inside an uncommitted object, after retention moved
//!   the log start): the footer of that object names its last offset and that record's time;
//!   the batch's records up to it are already stored and are not written again.
//! - Ownership (see `ledger`): the first write of each assignment takes the partition's next
//!   generation (per stream), which names every object it writes. Before an object becomes
//!   visible and again after, the sink checks the path's fence (the partition was not revoked
//!   in this process) and the ledger (no newer generation exists); a writer that lost its
//!   partition gives up the upload, or removes the object it just completed, and never removes
//!   an object of a newer generation. Taking a generation aborts the multipart uploads older
//!   generations left behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actord_actors::record::Envelope;
use actord_actors::sink::{Progress, Sink, SinkError, SinkFactory};
use actord_actors::Fence;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader};
use tracing::{debug, info, warn};

use super::keys::{self, Group, Layout};
use super::ledger::Ledger;
use super::parquet::{properties_with, ParquetFormat};
use super::upload::{encoder, Encoder, Parts, Rows, Upload};
use crate::telemetry::names;

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_OK: u8 = 1;
const HEALTH_FAILING: u8 = 2;

/// Objects of one batch written at the same time. Each holds at most a row group, the
/// encoder's row group and two parts in memory, so this bounds a writer's memory too; and it
/// overlaps one object's encoding with another's upload and the fsyncs of a local directory.
const UPLOADS_AT_ONCE: usize = 4;

/// Footer metadata: the offset of the object's last record and that record's time (ns).
const META_LAST_OFFSET: &str = "actord.last_offset";
const META_LAST_NANOS: &str = "actord.last_nanos";

/// Where the objects of a sink go.
#[derive(Clone)]
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

/// How a sink writes, beside its format and layout.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Rows per Parquet row group (bounds the encoder's memory); also the rows per Arrow batch
    /// asked of the format.
    pub row_group_rows: usize,
    /// The path's actor path, the `path` label of the metrics.
    pub path: String,
    /// When set, only objects modified since this time may be removed as stale. With the
    /// embedded broker every run starts its offsets at zero again, so objects of an earlier
    /// run share offsets with this one's without being a replay of them.
    pub replay_since: Option<DateTime<Utc>>,
}

/// What a sink's objects hold, see [`Objects::written`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub objects: u64,
    pub records: u64,
    /// Bytes of the objects (Parquet files), not of the messages.
    pub bytes: u64,
    /// The earliest and the latest record time in those objects.
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
}

impl Written {
    fn add(&mut self, records: u64, bytes: u64, first: DateTime<Utc>, last: DateTime<Utc>) {
        self.objects += 1;
        self.records += records;
        self.bytes += bytes;
        self.first = Some(self.first.map_or(first, |f| f.min(first)));
        self.last = Some(self.last.map_or(last, |l| l.max(last)));
    }

    /// An object this sink made visible is gone again (replaced or removed); the time range
    /// stays, as whatever replaces it holds the same records.
    fn remove(&mut self, records: u64, bytes: u64) {
        self.objects = self.objects.saturating_sub(1);
        self.records = self.records.saturating_sub(records);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// State shared by the writers of one path.
pub struct Objects<F: ParquetFormat> {
    format: F,
    layout: Layout,
    store: Arc<dyn ObjectStore>,
    parts: Parts,
    part_size: usize,
    ledger: Ledger,
    row_group_rows: usize,
    path: String,
    replay_since: Option<DateTime<Utc>>,
    health: AtomicU8,
    /// The objects made visible since the sink was opened and still in the store.
    written: Mutex<Written>,
    /// Every (stream, partition, generation) this sink took: the objects of those generations
    /// are its own, counted in `written`.
    taken: Mutex<HashSet<(String, i32, u64)>>,
    /// By (stream, partition).
    owners: Mutex<HashMap<(String, i32), Owner>>,
}

impl<F: ParquetFormat> Objects<F> {
    /// The shared state of one path's writers on `target`; sweeps the staging files killed
    /// writers left under the layout's prefix in a local directory.
    pub fn open(target: Target, format: F, layout: Layout, settings: Settings) -> Arc<Self> {
        if let Some(dir) = &target.dir {
            sweep_staging(&dir.join(layout.prefix()));
        }
        Arc::new(Objects {
            ledger: Ledger::new(target.store.clone(), layout.prefix()),
            format,
            layout,
            store: target.store,
            parts: target.parts,
            part_size: target.part_size.max(1),
            row_group_rows: settings.row_group_rows.max(1),
            path: settings.path,
            replay_since: settings.replay_since,
            health: AtomicU8::new(HEALTH_UNKNOWN),
            written: Mutex::default(),
            taken: Mutex::default(),
            owners: Mutex::new(HashMap::new()),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn format(&self) -> &F {
        &self.format
    }

    /// What the objects the sink's writers made visible since it was opened hold (a run's
    /// summary): records a replay found already stored are not in it, and an object of its own
    /// that it replaced (a retried or replayed batch) or removed again (its writer lost the
    /// partition) counts no more.
    pub fn written(&self) -> Written {
        *self.written.lock().expect("written lock")
    }

    /// Counts the object of `group` (`bytes` long) that just became visible.
    fn count_visible(&self, group: &Group<'_, F::Record>, bytes: u64) {
        let mut times = group.records.iter().map(|e| self.format.time(&e.record));
        let Some(t0) = times.next() else {
            return;
        };
        let (first, last) = times.fold((t0, t0), |(lo, hi), t| (lo.min(t), hi.max(t)));
        self.written.lock().expect("written lock").add(
            group.records.len() as u64,
            bytes,
            first,
            last,
        );
    }

    /// Whether the object named `name` is of a generation this sink took.
    fn own(&self, stream: &str, name: &keys::ObjectName) -> bool {
        self.taken.lock().expect("taken lock").contains(&(
            stream.to_owned(),
            name.partition,
            name.generation,
        ))
    }

    /// Rows and size of an object of its own this sink is about to replace or remove.
    async fn counted(&self, meta: &ObjectMeta) -> Result<(u64, u64), SinkError> {
        let rows = self
            .footer(meta)
            .await?
            .map_or(0, |m| m.file_metadata().num_rows().max(0) as u64);
        Ok((rows, meta.size))
    }

    /// False while writes fail; true before the first write and after a successful one.
    pub fn healthy(&self) -> bool {
        self.health.load(Ordering::Acquire) != HEALTH_FAILING
    }

    pub fn factory(self: &Arc<Self>) -> SinkFactory<ParquetSink<F>> {
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

    /// The key of a group's object (named after its first record in offset order).
    fn key(&self, g: &Group<'_, F::Record>, generation: u64) -> String {
        self.layout.key(
            g.stream,
            self.format.time(&g.records[0].record),
            g.partition,
            g.first_offset(),
            generation,
        )
    }

    /// The generation this writer holds for the partition under `epoch`, taking the next one
    /// at the first write of an assignment (and aborting the uploads older ones left).
    async fn owner(
        &self,
        stream: &str,
        partition: i32,
        epoch: u64,
        from: i64,
    ) -> Result<Owner, SinkError> {
        let known = self
            .owners
            .lock()
            .expect("owners lock")
            .get(&(stream.to_owned(), partition))
            .copied();
        if let Some(o) = known.filter(|o| o.epoch == epoch) {
            return Ok(o);
        }
        let generation = self
            .ledger
            .take(stream, partition, from)
            .await
            .map_err(store_error)?;
        let stale = self
            .ledger
            .stale_uploads(stream, partition, generation)
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
        self.taken
            .lock()
            .expect("taken lock")
            .insert((stream.to_owned(), partition, generation));
        let owner = Owner {
            epoch,
            generation,
            first: true,
        };
        self.owners
            .lock()
            .expect("owners lock")
            .insert((stream.to_owned(), partition), owner);
        Ok(owner)
    }

    /// Fails with a fenced error when the partition was revoked here or a newer generation
    /// owns it in the store.
    async fn still_owner(
        &self,
        group: &Group<'_, F::Record>,
        generation: u64,
        fence: &Fence,
    ) -> Result<(), SinkError> {
        if fence.any_fenced(group.records.iter().map(|e| &e.source.origin)) {
            return Err(SinkError::fenced(format!(
                "partition {} was revoked",
                group.partition
            )));
        }
        let newer = self
            .ledger
            .newer_than(group.stream, group.partition, generation)
            .await
            .map_err(store_error)?;
        if let Some(latest) = newer {
            metrics::counter!(names::S3_FENCED_TOTAL, "path" => self.path.clone()).increment(1);
            return Err(SinkError::fenced(format!(
                "{}partition {} belongs to generation {latest} now, this writer holds {generation}",
                stream_label(group.stream),
                group.partition
            )));
        }
        Ok(())
    }

    async fn write_batch(
        &self,
        records: &[Envelope<F::Record>],
        progress: &Progress,
        fence: &Fence,
    ) -> Result<(), SinkError> {
        let mut groups = keys::group(&self.format, &self.layout, records);
        if groups.is_empty() {
            return Ok(());
        }
        let mut owners: BTreeMap<(&str, i32), Owner> = BTreeMap::new();
        for g in &groups {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                owners.entry((g.stream, g.partition))
            {
                let from = groups
                    .iter()
                    .filter(|o| (o.stream, o.partition) == (g.stream, g.partition))
                    .map(Group::first_offset)
                    .min()
                    .unwrap_or(g.first_offset());
                let owner = self.owner(g.stream, g.partition, g.epoch(), from).await?;
                slot.insert(owner);
            }
        }
        // Nothing is removed unless this writer still owns every partition of the batch: a
        // writer that lost one must not delete what a newer owner relies on.
        for g in &groups {
            self.still_owner(g, owners[&(g.stream, g.partition)].generation, fence)
                .await?;
        }
        let present = self.remove_stale(&mut groups, &owners).await?;
        // The batch's objects are written a few at a time: each still checks its ownership
        // before and after it becomes visible, and every one started runs to its end (none is
        // dropped half-way when another fails), so a failed batch leaves only whole objects of
        // this writer's generation, which its retry or replay replaces. Once one has failed,
        // the batch has failed: those not yet started are not started.
        let failed = AtomicBool::new(false);
        let mut uploads = Vec::with_capacity(groups.len());
        for group in &groups {
            if !group.records.is_empty() {
                let generation = owners[&(group.stream, group.partition)].generation;
                let (failed, present) = (&failed, &present);
                uploads.push(async move {
                    if failed.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    let result = self
                        .write_object(group, generation, present, progress, fence)
                        .await;
                    if result.is_err() {
                        failed.store(true, Ordering::Release);
                    }
                    result
                });
            }
        }
        let results: Vec<Result<(), SinkError>> = futures::stream::iter(uploads)
            .buffered(UPLOADS_AT_ONCE)
            .collect()
            .await;
        // A fenced object explains the others' failures best: report it first.
        let mut errors: Vec<SinkError> = results.into_iter().filter_map(Result::err).collect();
        errors.sort_by_key(|e| e.class != "Fenced");
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        let mut known = self.owners.lock().expect("owners lock");
        for (k, o) in &owners {
            if let Some(slot) = known
                .get_mut(&(k.0.to_owned(), k.1))
                .filter(|s| s.epoch == o.epoch)
            {
                slot.first = false;
            }
        }
        Ok(())
    }

    /// Writes the object of one group of a batch under `generation`.
    async fn write_object(
        &self,
        group: &Group<'_, F::Record>,
        generation: u64,
        present: &HashMap<String, ObjectMeta>,
        progress: &Progress,
        fence: &Fence,
    ) -> Result<(), SinkError> {
        let key = self.key(group, generation);
        // A retry of a batch whose objects partly completed rewrites them under the same key.
        let replaces = match present.get(&key) {
            Some(meta) => Some(self.counted(meta).await?),
            None => None,
        };
        let started = Instant::now();
        let bytes = self
            .upload(group, &key, generation, replaces, progress, fence)
            .await?;
        metrics::counter!(names::S3_UPLOADS_TOTAL, "path" => self.path.clone()).increment(1);
        metrics::counter!(names::S3_UPLOADED_BYTES_TOTAL, "path" => self.path.clone())
            .increment(bytes);
        debug!(key = %key, records = group.records.len(), bytes, elapsed = ?started.elapsed(), "object written");
        Ok(())
    }

    /// Removes objects of earlier, uncommitted cuts of the records in `groups`, and drops from
    /// the first batch of an assignment the records an uncommitted object already holds (see
    /// the module documentation). Returns the objects of its own already stored under a key
    /// the batch is about to rewrite.
    async fn remove_stale(
        &self,
        groups: &mut [Group<'_, F::Record>],
        owners: &BTreeMap<(&str, i32), Owner>,
    ) -> Result<HashMap<String, ObjectMeta>, SinkError> {
        let mut ranges: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
        let mut fresh: Vec<String> = Vec::new();
        for g in groups.iter() {
            let (lo, hi) = (g.first_offset(), g.last_offset());
            ranges
                .entry((g.stream, g.partition))
                .and_modify(|r| *r = (r.0.min(lo), r.1.max(hi)))
                .or_insert((lo, hi));
            fresh.push(self.key(g, owners[&(g.stream, g.partition)].generation));
        }
        // The batch's records as they are before any is dropped below, each group in offset
        // order: the record time at an offset is looked up (binary search) only for the objects
        // a listing shows, not indexed for every record of the batch.
        let batch: Vec<_> = groups
            .iter()
            .map(|g| (g.stream, g.partition, g.records.clone()))
            .collect();
        let time_at = |stream: &str, partition: i32, offset: i64| {
            batch
                .iter()
                .filter(|(s, p, _)| *s == stream && *p == partition)
                .find_map(|(_, _, records)| {
                    let i = records
                        .binary_search_by_key(&offset, |e| e.source.origin.offset)
                        .ok()?;
                    Some(self.format.time(&records[i].record))
                })
        };
        let mut listings: HashMap<String, Vec<ObjectMeta>> = HashMap::new();
        let mut present: HashMap<String, ObjectMeta> = HashMap::new();
        for g in groups.iter_mut() {
            let dir = self
                .layout
                .dir(g.stream, self.format.time(&g.records[0].record));
            if !listings.contains_key(&dir) {
                let listing: Vec<ObjectMeta> = self
                    .store
                    .list(Some(&Path::from(dir.trim_end_matches('/'))))
                    .try_collect()
                    .await
                    .map_err(store_error)?;
                listings.insert(dir.clone(), listing);
            }
            let owner = owners[&(g.stream, g.partition)];
            let (lo, hi) = ranges[&(g.stream, g.partition)];
            let mut reaching_in: Option<(i64, &ObjectMeta)> = None;
            for meta in &listings[&dir] {
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
                let same_log = time_at(g.stream, g.partition, name.offset)
                    .is_some_and(|t| self.layout.stamp(t) == name.stamp);
                let rewritten = fresh.iter().any(|k| k == meta.location.as_ref());
                if rewritten && self.own(g.stream, &name) {
                    present.insert(meta.location.to_string(), meta.clone());
                }
                let stale = (lo..=hi).contains(&name.offset)
                    && same_log
                    && !rewritten
                    && self.replay_since.is_none_or(|t| meta.last_modified >= t);
                if stale {
                    let own = if self.own(g.stream, &name) {
                        Some(self.counted(meta).await?)
                    } else {
                        None
                    };
                    self.store
                        .delete(&meta.location)
                        .await
                        .map_err(store_error)?;
                    if let Some((rows, size)) = own {
                        self.written
                            .lock()
                            .expect("written lock")
                            .remove(rows, size);
                    }
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
        Ok(present)
    }

    /// How many of the group's first records the object already holds: its footer names its
    /// last offset and that record's time, and the group must have the same record there (or
    /// end before it, its records then lying in the object's time span).
    async fn held_by(
        &self,
        meta: &ObjectMeta,
        g: &Group<'_, F::Record>,
    ) -> Result<usize, SinkError> {
        let Some((last, last_nanos)) = self.footer_last(meta).await? else {
            return Ok(0);
        };
        if last < g.first_offset() {
            return Ok(0);
        }
        let nanos = |e: &Envelope<F::Record>| self.format.time(&e.record).timestamp_nanos_opt();
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
        let Some(parsed) = self.footer(meta).await? else {
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

    /// An object's Parquet footer, if it has a readable one.
    async fn footer(&self, meta: &ObjectMeta) -> Result<Option<ParquetMetaData>, SinkError> {
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
        Ok(ParquetMetaDataReader::decode_metadata(&footer).ok())
    }

    /// Encodes one group on a blocking thread and streams it into `key`: one PUT when it fits
    /// in a part, a multipart upload otherwise. Row groups handed to the encoder and parts sent
    /// are progress, so a long upload that moves is not taken for a stuck one. The object is
    /// made visible only while this writer still owns the partition, and removed again when a
    /// newer owner appeared meanwhile. `replaces` (rows, size) is this sink's object already
    /// under `key`, which the new one replaces in [`Objects::written`]. Returns the object's
    /// size.
    async fn upload(
        &self,
        group: &Group<'_, F::Record>,
        key: &str,
        generation: u64,
        replaces: Option<(u64, u64)>,
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
                self.format
                    .time(&last.record)
                    .timestamp_nanos_opt()
                    .unwrap_or(i64::MAX)
                    .to_string(),
            ),
        ];
        let schema = cpu(|| self.format.schema(&group.records))
            .map_err(|e| SinkError::fatal(format!("cannot decide the schema of {key}: {e}")))?;
        let Encoder {
            rows: rows_tx,
            parts: mut parts_rx,
            done: encoded,
        } = encoder(
            schema.clone(),
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
                let rows = cpu(|| self.format.encode(&schema, chunk))
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
                            group.stream,
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
        {
            let mut written = self.written.lock().expect("written lock");
            if let Some((rows, bytes)) = replaces {
                written.remove(rows, bytes);
            }
        }
        self.count_visible(group, size);
        // A newer owner that appeared meanwhile must not find this object beside its own.
        if let Err(e) = self.still_owner(group, generation, fence).await {
            if e.class == "Fenced" {
                match self.store.delete(path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => self
                        .written
                        .lock()
                        .expect("written lock")
                        .remove(group.records.len() as u64, size),
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

/// Runs the CPU-heavy part of a write that borrows the batch (a schema, a row group's Arrow
/// arrays) so that it does not hold up the async workers: on a multi-threaded runtime the
/// worker first hands its other tasks to another thread. The Parquet encoding itself runs on a
/// blocking thread of its own (see `upload`).
fn cpu<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
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

/// `tick ` for a named stream, nothing for the unnamed one.
fn stream_label(stream: &str) -> String {
    if stream.is_empty() {
        String::new()
    } else {
        format!("{stream} ")
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
pub struct ParquetSink<F: ParquetFormat> {
    shared: Arc<Objects<F>>,
    progress: Progress,
    fence: Fence,
}

impl<F: ParquetFormat> Sink<F::Record> for ParquetSink<F> {
    fn attach_progress(&mut self, progress: Progress) {
        self.progress = progress;
    }

    fn attach_fence(&mut self, fence: Fence) {
        self.fence = fence;
    }

    async fn write(&mut self, records: &[Envelope<F::Record>]) -> Result<(), SinkError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::objects::keys::Granularity;
    use crate::sinks::objects::parquet::tests::{reading, Reading, Readings};
    use actord_actors::scheduler::Tz;
    use object_store::memory::InMemory;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// Key → (column names, rows) of every Parquet object in the store.
    async fn objects_of(store: &Arc<dyn ObjectStore>) -> BTreeMap<String, (Vec<String>, usize)> {
        let listing: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for meta in listing {
            if !meta.location.as_ref().ends_with(".parquet") {
                continue;
            }
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
            let columns = reader
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let rows = reader.metadata().file_metadata().num_rows() as usize;
            out.insert(meta.location.to_string(), (columns, rows));
        }
        out
    }

    /// One process's sink of readings under `sensors/`, by KST day, two rows a row group.
    fn readings_by_kst_day(store: &Arc<dyn ObjectStore>) -> Arc<Objects<Readings>> {
        let target = Target {
            store: store.clone(),
            parts: Parts::Store(store.clone()),
            dir: None,
            part_size: 1 << 20,
        };
        Objects::open(
            target,
            Readings,
            Layout::new("sensors", Tz::Asia__Seoul, Granularity::Day),
            Settings {
                row_group_rows: 2,
                path: "/test/objects".into(),
                replay_since: None,
            },
        )
    }

    #[tokio::test]
    async fn a_format_with_inferred_schemas_writes_daily_objects_in_its_time_zone() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let objects = readings_by_kst_day(&store);
        let mut sink = (objects.factory())().await.unwrap();
        // 23:59 KST on the 19th, then past midnight KST; one reading carries a note.
        let mut batch = vec![
            reading(0, 0, "2025-11-19T14:59:00Z", 1.0),
            reading(0, 1, "2025-11-19T14:59:30Z", 2.0),
            reading(0, 2, "2025-11-19T15:00:00Z", 3.0),
            reading(0, 3, "2025-11-19T15:01:00Z", 4.0),
            reading(0, 4, "2025-11-19T15:02:00Z", 5.0),
        ];
        batch[3].record.note = Some("door open".into());
        sink.write(&batch).await.unwrap();
        assert!(objects.healthy());
        assert_eq!(
            (objects.written().objects, objects.written().records),
            (2, 5)
        );
        let got = objects_of(&store).await;
        let cols = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            BTreeMap::from([
                (
                    "sensors/year=2025/month=11/day=19/data_20251119235900_0_0.g1.parquet"
                        .to_owned(),
                    (cols(&["time_ns", "value"]), 2)
                ),
                (
                    "sensors/year=2025/month=11/day=20/data_20251120000000_0_2.g1.parquet"
                        .to_owned(),
                    (cols(&["time_ns", "value", "note"]), 3)
                ),
            ])
        );
        // The ledger of a format with one stream sits right under the prefix's `_fence/`.
        let ledger = Ledger::new(store.clone(), "sensors");
        assert_eq!(ledger.latest("", 0).await.unwrap(), 1);
        // A rerun in another cut by a new owner replaces the earlier objects.
        let mut sink = (readings_by_kst_day(&store).factory())().await.unwrap();
        sink.write(&batch[..3]).await.unwrap();
        sink.write(&batch[3..]).await.unwrap();
        let rows: Vec<(String, usize)> = objects_of(&store)
            .await
            .into_iter()
            .map(|(k, (_, n))| (k, n))
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    "sensors/year=2025/month=11/day=19/data_20251119235900_0_0.g2.parquet"
                        .to_owned(),
                    2
                ),
                (
                    "sensors/year=2025/month=11/day=20/data_20251120000000_0_2.g2.parquet"
                        .to_owned(),
                    1
                ),
                (
                    "sensors/year=2025/month=11/day=20/data_20251120000100_0_3.g2.parquet"
                        .to_owned(),
                    2
                ),
            ]
        );
    }

    /// What the Parquet objects in the store hold, as [`Written`] counts them.
    async fn stored(store: &Arc<dyn ObjectStore>) -> Written {
        let listing: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
        let mut w = Written::default();
        for meta in listing
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
        {
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let rows = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .metadata()
                .file_metadata()
                .num_rows() as u64;
            w.objects += 1;
            w.records += rows;
            w.bytes += meta.size;
        }
        w
    }

    /// Readings of partition 0 at `times` (UTC, 2025-11-19), offsets from 0, read under
    /// assignment `epoch`.
    fn batch(times: &[&str], epoch: u64) -> Vec<Envelope<Reading>> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut e = reading(0, i as i64, &format!("2025-11-19T{t}:00Z"), i as f64);
                e.source.origin.epoch = epoch;
                e
            })
            .collect()
    }

    fn counts(w: Written) -> (u64, u64, u64) {
        (w.objects, w.records, w.bytes)
    }

    #[tokio::test]
    async fn written_counts_what_the_store_holds_after_a_retry_and_a_replay() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let objects = readings_by_kst_day(&store);
        let mut sink = (objects.factory())().await.unwrap();
        // Three readings before midnight in Seoul (15:00 UTC), three after: two objects.
        let times = ["14:57", "14:58", "14:59", "15:00", "15:01", "15:02"];
        let batch = batch(&times, 1);
        sink.write(&batch).await.unwrap();
        assert_eq!(counts(objects.written()), counts(stored(&store).await));
        assert_eq!(objects.written().objects, 2);
        // The same batch again (a retry after some of its objects completed): the same keys,
        // counted once.
        sink.write(&batch).await.unwrap();
        assert_eq!(counts(objects.written()), counts(stored(&store).await));
        assert_eq!(objects.written().records, 6);
        // A replay of the same records under a new assignment, cut elsewhere: the first
        // assignment's objects are removed and no longer counted.
        let replay = self::batch(&times, 2);
        sink.write(&replay[..2]).await.unwrap();
        sink.write(&replay[2..]).await.unwrap();
        let w = objects.written();
        assert_eq!(counts(w), counts(stored(&store).await));
        assert_eq!((w.objects, w.records), (3, 6));
        assert_eq!(
            (w.first, w.last),
            (Some(batch[0].record.time), Some(batch[5].record.time))
        );
    }

    #[tokio::test]
    async fn records_an_earlier_owner_already_stored_are_not_counted() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let times = [
            "01:00", "01:01", "01:02", "01:03", "01:04", "01:05", "01:06", "01:07",
        ];
        let batch = batch(&times, 1);
        let earlier = readings_by_kst_day(&store);
        (earlier.factory())()
            .await
            .unwrap()
            .write(&batch[..5])
            .await
            .unwrap();
        // Another process replays from offset 2 (the log start moved into the object): 2..=4
        // are in the earlier object already.
        let objects = readings_by_kst_day(&store);
        let mut sink = (objects.factory())().await.unwrap();
        sink.write(&self::batch(&times, 2)[2..]).await.unwrap();
        let w = objects.written();
        assert_eq!((w.objects, w.records), (1, 3));
        assert_eq!(
            (w.first, w.last),
            (Some(batch[5].record.time), Some(batch[7].record.time))
        );
        let all = stored(&store).await;
        assert_eq!((all.objects, all.records), (2, 8));
        assert_eq!(w.bytes + earlier.written().bytes, all.bytes);
    }

    /// A store that refuses writes of Parquet objects whose key contains `refused`, counting
    /// every Parquet object write started (single or multipart). While it refuses, other
    /// Parquet writes wait until the refused one has been tried, so none completes first.
    #[derive(Debug)]
    struct Refusing {
        inner: InMemory,
        refused: Mutex<Option<&'static str>>,
        started: std::sync::atomic::AtomicUsize,
        tried: tokio::sync::watch::Sender<bool>,
    }

    impl std::fmt::Display for Refusing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Refusing({:?})", self.refused.lock().unwrap())
        }
    }

    impl Refusing {
        async fn check(&self, location: &Path) -> object_store::Result<()> {
            if !location.as_ref().ends_with(".parquet") {
                return Ok(());
            }
            self.started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let refused = *self.refused.lock().unwrap();
            match refused {
                Some(r) if location.as_ref().contains(r) => {
                    self.tried.send_replace(true);
                    Err(object_store::Error::Generic {
                        store: "refusing",
                        source: "refused".into(),
                    })
                }
                Some(_) => {
                    let mut tried = self.tried.subscribe();
                    let wait = tried.wait_for(|t| *t);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), wait).await;
                    Ok(())
                }
                None => Ok(()),
            }
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Refusing {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.check(location).await?;
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.check(location).await?;
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_batch_whose_upload_failed_starts_none_of_its_remaining_objects() {
        let refusing = Arc::new(Refusing {
            inner: InMemory::new(),
            // The object of partition 0, the batch's first.
            refused: Mutex::new(Some("_0_0.g")),
            started: Default::default(),
            tried: tokio::sync::watch::channel(false).0,
        });
        let store: Arc<dyn ObjectStore> = refusing.clone();
        let objects = readings_by_kst_day(&store);
        let mut sink = (objects.factory())().await.unwrap();
        // One reading in each of 12 partitions: 12 objects, four uploaded at a time.
        let batch: Vec<Envelope<Reading>> = (0..12)
            .map(|p| reading(p, 0, "2025-11-19T01:00:00Z", p as f64))
            .collect();
        let err = sink.write(&batch).await.unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        // Those started beside the refused one ran; none after it started.
        let started = refusing.started.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            started <= UPLOADS_AT_ONCE,
            "{started} uploads started of a failed batch"
        );
        assert!(stored(&store).await.objects < UPLOADS_AT_ONCE as u64);
        // Its retry, once the store takes them, writes all twelve.
        *refusing.refused.lock().unwrap() = None;
        sink.write(&batch).await.unwrap();
        assert_eq!(
            (objects.written().objects, stored(&store).await.objects),
            (12, 12)
        );
    }
}
