//! Sinks: where records become durable.

pub mod objects;
pub mod timescale;
