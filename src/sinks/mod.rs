//! Sinks: where records become durable.

pub mod files;
pub mod objects;
pub mod postgres;
