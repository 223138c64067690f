//! The Parquet object sink driven directly, as the writers of two processes would drive it,
//! against an s3s-fs server and a local directory: ownership fences between an old and a new
//! owner of a partition, replays, a topic created again, and uploads left behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actord::config::{S3Config, Secret};
use actord::pipelines::recorder::model::{Market, Tick};
use actord::pipelines::recorder::parquet::{Kind, Objects, ParquetSink};
use actord::sinks::objects::ledger::Ledger;
use actord::sinks::objects::sink::Target;
use actord::sinks::objects::store::{self, Location};
use actord_actors::record::{Acker, Envelope, Origin, SourceRecord, Topic};
use actord_actors::sink::{Sink, SinkError};
use actord_actors::Fence;
use arrow_array::{Array, Int64Array};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::support::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};

/// 2025-11-19T16:00:00Z
const HOUR: i64 = 1_763_568_000;

/// A tick at `offset` of partition `partition`, read under assignment `epoch`; its volume is
/// `volume` and its time `second` seconds into the hour.
fn tick(partition: i32, offset: i64, epoch: u64, volume: i64, second: i64) -> Envelope<Market> {
    Envelope {
        record: Market::Tick(Tick {
            time: DateTime::<Utc>::from_timestamp(HOUR + second, 0).unwrap(),
            symbol: "005930".into(),
            price: 71_000.0,
            volume,
            change: 0.0,
            change_rate: 0.0,
        }),
        source: SourceRecord {
            origin: Origin {
                topic: Topic::intern("market.tick"),
                partition,
                offset,
                epoch,
            },
            key: None,
            payload: None,
            timestamp_ms: None,
            headers: Vec::new(),
        },
        acker: Acker::new(|_| {}),
        bytes: 0,
    }
}

/// Offsets `range` of partition 0 with volume = offset and one second per offset.
fn ticks(range: std::ops::Range<i64>, epoch: u64) -> Vec<Envelope<Market>> {
    range.map(|o| tick(0, o, epoch, o, o)).collect()
}

/// One process's sink on a target.
async fn sink(target: Target, fence: &Fence) -> ParquetSink {
    let objects = Objects::new(target, "market-data", 1_000, "/test/s3", None);
    let mut sink = (objects.factory())().await.unwrap();
    sink.attach_fence(fence.clone());
    sink
}

fn s3_config(s3: &S3Server) -> S3Config {
    S3Config {
        endpoint: Some(s3.endpoint()),
        region: "us-east-1".into(),
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(Secret::new(S3_SECRET_KEY)),
        session_token: None,
        allow_http: true,
        virtual_hosted: false,
    }
}

/// Parts of 64 KiB (s3s-fs does not hold parts to S3's 5 MiB), so a few thousand records make
/// a multipart upload.
const PART: usize = 64 << 10;

fn bucket(s3: &S3Server) -> Target {
    let location = Location::Bucket {
        name: s3.bucket.clone(),
        region: None,
    };
    let mut target = store::open_target(&location, &s3_config(s3)).unwrap();
    target.part_size = PART;
    target
}

fn dir(path: &std::path::Path) -> Target {
    let mut target =
        store::open_target(&Location::Dir(path.to_owned()), &S3Config::default()).unwrap();
    target.part_size = PART;
    target
}

/// Parquet objects under `market-data/`: key → tick volumes in file order.
async fn volumes(store: &Arc<dyn ObjectStore>) -> BTreeMap<String, Vec<i64>> {
    let listing: Vec<_> = store
        .list(Some(&Path::from("market-data")))
        .try_collect()
        .await
        .unwrap();
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
        let mut v = Vec::new();
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let col = batch
                .column_by_name("volume")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            v.extend((0..col.len()).map(|i| col.value(i)));
        }
        out.insert(meta.location.to_string(), v);
    }
    out
}

/// Every volume in `expected` is in exactly one object, and nothing else is.
fn assert_each_once(objects: &BTreeMap<String, Vec<i64>>, expected: impl Iterator<Item = i64>) {
    let mut seen: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for (key, vs) in objects {
        for v in vs {
            seen.entry(*v).or_default().push(key);
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, k)| k.len() > 1).collect();
    assert!(twice.is_empty(), "records in two objects: {twice:?}");
    let expected: Vec<i64> = expected.collect();
    let got: Vec<i64> = seen.keys().copied().collect();
    assert_eq!(got, expected, "objects: {:?}", objects.keys());
}

fn is_fenced(result: Result<(), SinkError>) -> bool {
    matches!(result, Err(e) if e.class == "Fenced")
}

/// The old owner keeps writing after a new owner took its partition: its batches neither
/// land beside the new owner's objects nor remove them, whatever their cut.
async fn a_zombie_neither_removes_nor_shadows(target: impl Fn() -> Target) {
    let store = target().store.clone();
    let (old_fence, new_fence) = (Fence::new(), Fence::new());
    let mut old = sink(target(), &old_fence).await;
    let mut new = sink(target(), &new_fence).await;
    // The old owner writes a batch and loses the partition before committing it.
    old.write(&ticks(0..100, 1)).await.unwrap();
    // The new owner replays from the last commit in its own cut.
    new.write(&ticks(0..150, 1)).await.unwrap();
    let after_new = volumes(&store).await;
    assert_each_once(&after_new, 0..150);
    assert!(
        after_new.keys().all(|k| k.ends_with(".g2.parquet")),
        "{after_new:?}"
    );
    // The old owner, cut off from the group but not from the store, goes on.
    assert!(is_fenced(old.write(&ticks(100..200, 1)).await));
    assert!(is_fenced(old.write(&ticks(0..40, 1)).await));
    assert_eq!(
        volumes(&store).await,
        after_new,
        "the old owner changed the store"
    );
    // The new owner carries on.
    new.write(&ticks(150..200, 1)).await.unwrap();
    assert_each_once(&volumes(&store).await, 0..200);
}

#[tokio::test]
async fn s3_a_zombie_neither_removes_nor_shadows_the_new_owners_objects() {
    let s3 = S3Server::start("zombie");
    a_zombie_neither_removes_nor_shadows(|| bucket(&s3)).await;
}

#[tokio::test]
async fn dir_a_zombie_neither_removes_nor_shadows_the_new_owners_objects() {
    let d = tempfile::tempdir().unwrap();
    a_zombie_neither_removes_nor_shadows(|| dir(d.path())).await;
}

/// A write in flight when its partition is revoked in the process is given up, and nothing of
/// it is visible.
#[tokio::test]
async fn s3_a_revoked_partition_is_not_written() {
    let s3 = S3Server::start("revoked");
    let fence = Fence::new();
    let mut sink = sink(bucket(&s3), &fence).await;
    fence.revoke(&[(Topic::intern("market.tick"), 0, 1)]);
    assert!(is_fenced(sink.write(&ticks(0..10, 1)).await));
    assert!(volumes(&s3.client()).await.is_empty());
    // The next assignment writes.
    sink.write(&ticks(0..10, 2)).await.unwrap();
    assert_each_once(&volumes(&s3.client()).await, 0..10);
}

/// A replay that starts inside an uncommitted object (retention moved the log start past its
/// first records) keeps that object and writes only what follows it.
async fn a_replay_inside_an_object_does_not_duplicate(target: impl Fn() -> Target) {
    let store = target().store.clone();
    let mut first = sink(target(), &Fence::new()).await;
    first.write(&ticks(0..100, 1)).await.unwrap();
    // Offsets below 50 are gone from the log; the next run starts at 50.
    let mut second = sink(target(), &Fence::new()).await;
    second.write(&ticks(50..150, 1)).await.unwrap();
    let objects = volumes(&store).await;
    assert_each_once(&objects, 0..150);
    assert_eq!(objects.len(), 2, "{objects:?}");
    // Later batches of the run are not affected.
    second.write(&ticks(150..170, 1)).await.unwrap();
    assert_each_once(&volumes(&store).await, 0..170);
}

#[tokio::test]
async fn s3_a_replay_starting_inside_an_object_does_not_duplicate_it() {
    let s3 = S3Server::start("inside");
    a_replay_inside_an_object_does_not_duplicate(|| bucket(&s3)).await;
}

#[tokio::test]
async fn dir_a_replay_starting_inside_an_object_does_not_duplicate_it() {
    let d = tempfile::tempdir().unwrap();
    a_replay_inside_an_object_does_not_duplicate(|| dir(d.path())).await;
}

/// A topic deleted and created again starts its offsets anew: the new topic's records at the
/// old offsets are other records, and the old topic's objects stay.
#[tokio::test]
async fn s3_a_topic_created_again_keeps_the_old_topics_objects() {
    let s3 = S3Server::start("recreated");
    let store = s3.client();
    let mut before = sink(bucket(&s3), &Fence::new()).await;
    before.write(&ticks(0..100, 1)).await.unwrap();
    // Same hour, same offsets, other records (half a second later each, other volumes).
    let again: Vec<Envelope<Market>> = (0..60).map(|o| tick(0, o, 1, 1_000 + o, 200 + o)).collect();
    let mut after = sink(bucket(&s3), &Fence::new()).await;
    after.write(&again).await.unwrap();
    assert_each_once(&volumes(&store).await, (0..100).chain(1_000..1_060));
}

/// A rerun of the same records in other cuts replaces the earlier objects.
#[tokio::test]
async fn dir_a_rerun_in_other_cuts_replaces_the_earlier_objects() {
    let d = tempfile::tempdir().unwrap();
    let store = dir(d.path()).store.clone();
    let mut one = sink(dir(d.path()), &Fence::new()).await;
    for r in [0..30, 30..60, 60..90] {
        one.write(&ticks(r, 1)).await.unwrap();
    }
    let mut two = sink(dir(d.path()), &Fence::new()).await;
    for r in [0..45, 45..90] {
        two.write(&ticks(r, 1)).await.unwrap();
    }
    let objects = volumes(&store).await;
    assert_each_once(&objects, 0..90);
    assert_eq!(objects.len(), 2, "{objects:?}");
}

/// Ticks enough for an object of several parts (random-looking volumes do not compress).
fn big(n: i64, epoch: u64) -> Vec<Envelope<Market>> {
    (0..n)
        .map(|o| {
            let mut t = tick(0, o, epoch, o, o % 3000);
            if let Market::Tick(t) = &mut t.record {
                t.price = (o.wrapping_mul(2_654_435_761) % 1_000_003) as f64 / 7.0;
                t.symbol = format!("{:016x}", (o as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            }
            t
        })
        .collect()
}

/// A writer stopped mid-upload aborts its multipart upload; one killed leaves it behind, and
/// the partition's next owner aborts it before writing.
#[tokio::test]
async fn s3_uploads_of_stopped_and_killed_writers_are_aborted() {
    let s3 = S3Server::start("aborted");
    let records = big(60_000, 1);
    let target = bucket(&s3);
    let ledger = Ledger::new(target.store.clone(), "market-data");
    let mut stopped = sink(bucket(&s3), &Fence::new()).await;
    // Stop the write once its multipart upload is under way (it is recorded in the ledger).
    {
        let write = stopped.write(&records);
        tokio::pin!(write);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            tokio::select! {
                r = &mut write => panic!("the write ended before it was stopped: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if !ledger
                .stale_uploads(Kind::Tick, 0, u64::MAX)
                .await
                .unwrap()
                .is_empty()
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no upload started");
        }
    }
    drop(stopped);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ledger
        .stale_uploads(Kind::Tick, 0, u64::MAX)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload was not aborted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A killed writer: an upload started and recorded, never finished.
    let multipart: Arc<dyn MultipartStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(s3.endpoint())
            .with_bucket_name(&s3.bucket)
            .with_region("us-east-1")
            .with_access_key_id(S3_ACCESS_KEY)
            .with_secret_access_key(S3_SECRET_KEY)
            .with_allow_http(true)
            .build()
            .unwrap(),
    );
    let key = Path::from(
        "market-data/tick/year=2025/month=11/day=19/hour=16/data_20251119160000_0_0.g1.parquet",
    );
    let id = multipart.create_multipart(&key).await.unwrap();
    let part = vec![7u8; PART];
    multipart
        .put_part(&key, &id, 0, part.clone().into())
        .await
        .unwrap();
    let latest = ledger.latest(Kind::Tick, 0).await.unwrap();
    ledger
        .open_upload(Kind::Tick, 0, latest, key.as_ref(), &id)
        .await
        .unwrap();
    let mut next = sink(bucket(&s3), &Fence::new()).await;
    next.write(&ticks(0..10, 1)).await.unwrap();
    assert!(ledger
        .stale_uploads(Kind::Tick, 0, u64::MAX)
        .await
        .unwrap()
        .is_empty());
    assert!(
        multipart.put_part(&key, &id, 1, part.into()).await.is_err(),
        "the killed writer's upload is still open"
    );
    assert_each_once(&volumes(&s3.client()).await, 0..10);
}

/// A local directory: a writer stopped mid-write leaves no staging file, and the staging files
/// of killed writers are swept at start.
#[tokio::test]
async fn dir_staging_files_of_stopped_and_killed_writers_are_removed() {
    let d = tempfile::tempdir().unwrap();
    let records = big(60_000, 1);
    let staging = |root: &std::path::Path| -> Vec<String> {
        fn walk(p: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                } else if e.file_name().to_string_lossy().contains('#') {
                    out.push(e.path().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(root, &mut out);
        out
    };
    let mut stopped = sink(dir(d.path()), &Fence::new()).await;
    {
        let write = stopped.write(&records);
        tokio::pin!(write);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            tokio::select! {
                r = &mut write => panic!("the write ended before it was stopped: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if !staging(d.path()).is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no staging file appeared"
            );
        }
    }
    drop(stopped);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !staging(d.path()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            staging(d.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What a killed writer leaves.
    let hour = d
        .path()
        .join("market-data/tick/year=2025/month=11/day=19/hour=16");
    std::fs::create_dir_all(&hour).unwrap();
    std::fs::write(
        hour.join("data_20251119160000_0_0.g1.parquet#3"),
        b"partial",
    )
    .unwrap();
    assert_eq!(staging(d.path()).len(), 1);
    let _ = sink(dir(d.path()), &Fence::new()).await;
    assert!(staging(d.path()).is_empty());
}
