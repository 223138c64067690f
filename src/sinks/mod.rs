//! Sinks: where records become durable.

pub mod timescale;
