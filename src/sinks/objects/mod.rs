//! The Parquet object sink every pipeline shares: Parquet files under Hive-style time
//! partitions, in an S3 bucket or a local directory, every record in exactly one object.
//!
//! A pipeline brings three things, and nothing else:
//!
//! - a [`ParquetFormat`](parquet::ParquetFormat) for its record type: the stream of a record
//!   (a directory level such as `tick`, or none), its time, the Arrow schema of an object
//!   (fixed, or inferred from the object's records: the sink asks once per object, before
//!   encoding, so every row group of a file has the same schema) and the Arrow batch of a run
//!   of records;
//! - a [`Layout`](keys::Layout): key prefix, time zone, and hour or day partitions
//!   (`year=/month=/day=[/hour=]`); objects are named
//!   `data_<first record time>_<partition>_<first offset>.g<generation>.parquet`;
//! - [`Settings`](sink::Settings): row group size, the path's actor path (metric label), and
//!   whether only recent objects may be replaced (the embedded broker).
//!
//! [`Objects::open`](sink::Objects::open) gives the shared state of a path and its
//! `factory()`, the [`SinkFactory`](actord_actors::sink::SinkFactory) of
//! [`ParquetSink<F>`](sink::ParquetSink), a `Sink<F::Record>` for a Kafka consumer path;
//! `healthy()` for a health component and `written()` (objects, records, bytes since it was
//! opened) for a run's summary.
//! The sink owns the rest: the ownership fence (generations in the `_fence/` ledger, checked
//! against the path's assignment epochs before and after an object becomes visible), the
//! removal of objects of uncommitted earlier cuts, the replay that starts inside an object
//! (last offset and time in the footer), the Parquet encoding on a blocking thread (snappy),
//! and the streaming multipart upload, aborted when it does not complete.

pub mod keys;
pub mod ledger;
pub mod parquet;
pub mod sink;
pub mod store;
pub mod upload;
