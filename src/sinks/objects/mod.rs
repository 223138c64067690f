//! The recorder's cold path into object storage: Parquet files under Hive-style hour
//! partitions. This module holds the file layout and encoding; the uploading writer builds on it.

pub mod keys;
pub mod parquet;
