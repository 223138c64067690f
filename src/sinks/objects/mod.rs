//! The recorder's cold path into object storage: Parquet files under Hive-style hour
//! partitions, in an S3 bucket or a local directory.

pub mod keys;
pub mod ledger;
pub mod parquet;
pub mod sink;
pub mod store;
pub mod upload;
