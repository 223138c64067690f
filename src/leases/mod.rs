//! Leases for the scheduler in the stores pipelines already use: Redis and PostgreSQL.
//!
//! Both follow the contract of `actord_actors::scheduler::Lease`: one unexpired holder per key,
//! expiry by the store's own clock, renew and release only by the holder's token, and the latest
//! granted due time per key so that a due time another process already ran answers
//! `AlreadyRan`. Every store error, an unreachable server included, becomes a `LeaseError`: the
//! scheduler skips that run (`lease_unavailable`) and tries again at the next due time.

pub mod postgres;
pub mod redis;

use std::sync::Arc;

use actord_actors::scheduler::{Lease, LeaseError, NoLease};
use serde::Deserialize;

pub use self::postgres::PostgresLease;
pub use self::redis::RedisLease;

/// Where an entry's lease lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseKind {
    /// No shared store: only this process runs the entry.
    #[default]
    None,
    /// `SET key token NX PX ttl` in Redis.
    Redis,
    /// A row with an expiry in a PostgreSQL table.
    Postgres,
}

impl LeaseKind {
    pub const NAMES: &'static [&'static str] = &["none", "redis", "postgres"];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseKind::None => "none",
            LeaseKind::Redis => "redis",
            LeaseKind::Postgres => "postgres",
        }
    }

    /// Whether `url` can address a store of this kind (syntax only, nothing is contacted).
    pub fn check_url(self, url: &str) -> Result<(), String> {
        match self {
            LeaseKind::None => Ok(()),
            LeaseKind::Redis => RedisLease::new(url).map(drop).map_err(|e| e.0),
            LeaseKind::Postgres => PostgresLease::new(url).map(drop).map_err(|e| e.0),
        }
    }
}

/// The namespace of leases unless a deployment picks its own.
pub const DEFAULT_NAMESPACE: &str = "actord";

/// Whether `namespace` can prefix Redis keys and name a PostgreSQL table (`<namespace>_leases`)
/// without quoting surprises.
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    let ok = namespace
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && namespace.len() <= 40
        && namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected lowercase letters, digits and _ (at most 40, not starting with a digit), found {namespace:?}"
        ))
    }
}

/// Opens the lease store `kind` at `url` (a `redis://` URL, or a PostgreSQL URL or
/// `key=value` connection string). `namespace` separates deployments sharing one store: Redis
/// keys start with `<namespace>:lease:`, PostgreSQL rows live in `<namespace>_leases`. Nothing
/// is contacted until the first claim.
pub fn open(
    kind: LeaseKind,
    url: Option<&str>,
    namespace: &str,
) -> Result<Arc<dyn Lease>, LeaseError> {
    check_namespace(namespace).map_err(|e| LeaseError::new(format!("lease namespace: {e}")))?;
    let need = || {
        LeaseError::new(format!(
            "a {} lease needs the store's address",
            kind.as_str()
        ))
    };
    Ok(match kind {
        LeaseKind::None => Arc::new(NoLease),
        LeaseKind::Redis => {
            Arc::new(RedisLease::new(url.ok_or_else(need)?)?.prefix(&format!("{namespace}:lease:")))
        }
        LeaseKind::Postgres => Arc::new(
            PostgresLease::new(url.ok_or_else(need)?)?.table(&format!("{namespace}_leases"))?,
        ),
    })
}

/// A new holder token: random, so a restarted process never renews a lease it held before.
fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
