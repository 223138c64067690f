//! The backfill pipeline (seed 000, the FMS Collector backfill loader): archives the sensor
//! topic `fms-temphum` into Parquet objects by Seoul day. This part holds what needs no I/O:
//! the run modes and their from-date, the readings and their record time, and the schema a
//! batch of readings gets.

pub mod encode;
pub mod mode;
pub mod names;
pub mod reading;
