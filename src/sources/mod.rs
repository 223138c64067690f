//! Sources: where records come from.

pub mod kafka;
pub mod lanes;
pub mod redis;
pub(crate) mod slot;
