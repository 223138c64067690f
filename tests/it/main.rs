//! Integration tests: the runtime in-process and the actord binary, driven from outside
//! through the admin port as an operator would.

mod adaptive_card;
mod admin;
mod backfill;
mod binary;
mod commerce;
mod crash;
mod deploy;
mod dlq;
mod ftp_sync;
mod kafka;
mod leases;
mod live_view;
mod object_group;
mod objects;
mod outages;
mod overload;
mod poison;
mod postgres_sink;
mod rebalance;
mod recorder;
mod recorder_s3;
mod redis_streams;
mod reload;
mod schedules;
mod secrets;
mod support;
