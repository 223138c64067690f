//! actord: data pipelines as a supervision tree of actors, with an admin port.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod leases;
pub mod pipelines;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod telemetry;
pub mod tree_view;
