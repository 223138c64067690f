//! `RedisLease`: a lease is `SET key token NX PX ttl`; renew and release are scripts that act only while the token matches.
//!
//! Keys, for a lease key `pipeline/entry` under the default prefix:
//! - `actord:lease:{pipeline/entry}` holds the holder's token and expires with the lease;
//! - `actord:lease:{pipeline/entry}:last_due` holds the latest granted due time (Unix
//!   milliseconds) and never expires, so it outlives any gap between due times.
//!
//! The braces make both keys hash to the same cluster slot, which a script touching both needs.
//! Claiming is one script, so checking the last due time, setting the lease and recording the
//! new due time happen atomically.

use std::sync::Arc;
use std::time::Duration;

use actord_actors::scheduler::{Acquire, HeldLease, Lease, LeaseError, LeaseGuard};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::sync::OnceCell;

/// KEYS[1] lease, KEYS[2] last due; ARGV[1] token, ARGV[2] ttl ms, ARGV[3] due ms or "".
/// Returns 1 granted, 0 held elsewhere, 2 already ran.
const ACQUIRE: &str = r#"
if ARGV[3] ~= '' then
  local last = redis.call('GET', KEYS[2])
  if last and tonumber(last) >= tonumber(ARGV[3]) then
    return 2
  end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[3] ~= '' then
    redis.call('SET', KEYS[2], ARGV[3])
  end
  return 1
end
return 0
"#;

/// KEYS[1] lease; ARGV[1] token, ARGV[2] ttl ms. Returns 1 when renewed.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// KEYS[1] lease; ARGV[1] token. Returns 1 when released.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Leases in one Redis server. Cheap to clone; the connection is made on the first claim and
/// re-made after a failure.
#[derive(Clone)]
pub struct RedisLease {
    inner: Arc<Inner>,
    prefix: Arc<str>,
}

struct Inner {
    client: Client,
    /// `host:port`, for messages: the URL may carry a password.
    addr: String,
    conn: OnceCell<ConnectionManager>,
    acquire: Script,
    renew: Script,
    release: Script,
}

impl RedisLease {
    /// A store at `url` (`redis://[:password@]host[:port][/db]`). Only the URL's syntax is
    /// checked here.
    pub fn new(url: &str) -> Result<RedisLease, LeaseError> {
        let client =
            Client::open(url).map_err(|e| LeaseError::new(format!("invalid redis url: {e}")))?;
        let addr = client.get_connection_info().addr().to_string();
        Ok(RedisLease {
            inner: Arc::new(Inner {
                client,
                addr,
                conn: OnceCell::new(),
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
            }),
            prefix: Arc::from("actord:lease:"),
        })
    }

    /// Puts the keys under another prefix than `actord:lease:`.
    pub fn prefix(self, prefix: &str) -> RedisLease {
        RedisLease {
            prefix: Arc::from(prefix),
            ..self
        }
    }

    /// The Redis key holding the lease on `key`'s token.
    pub fn lease_key(&self, key: &str) -> String {
        format!("{}{{{key}}}", self.prefix)
    }

    /// The Redis key holding `key`'s latest granted due time.
    pub fn last_due_key(&self, key: &str) -> String {
        format!("{}:last_due", self.lease_key(key))
    }
}

impl Inner {
    async fn conn(&self) -> Result<ConnectionManager, LeaseError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                // Few quick attempts: a store that is down skips this run; the scheduler asks
                // again at the next due time, and the manager reconnects then.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(100))
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(3)));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .map_err(|e| self.error(e))
            })
            .await?;
        Ok(conn.clone())
    }

    fn error(&self, e: redis::RedisError) -> LeaseError {
        LeaseError::new(format!("redis {}: {e}", self.addr))
    }
}

impl Lease for RedisLease {
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        due: Option<DateTime<Utc>>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquire, LeaseError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut conn = inner.conn().await?;
            let token = super::token();
            let due_ms = due.map(|d| d.timestamp_millis().to_string());
            let answer: i64 = inner
                .acquire
                .key(self.lease_key(key))
                .key(self.last_due_key(key))
                .arg(&token)
                .arg(ttl_millis(ttl))
                .arg(due_ms.unwrap_or_default())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| inner.error(e))?;
            Ok(match answer {
                1 => Acquire::Granted(LeaseGuard::new(RedisHeld {
                    lease: self.clone(),
                    key: self.lease_key(key),
                    token,
                })),
                2 => Acquire::AlreadyRan,
                _ => Acquire::HeldElsewhere,
            })
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// A granted Redis lease: its key and the token that proves it is ours.
struct RedisHeld {
    lease: RedisLease,
    key: String,
    token: String,
}

impl HeldLease for RedisHeld {
    fn renew(&mut self, ttl: Duration) -> BoxFuture<'_, Result<bool, LeaseError>> {
        Box::pin(async move {
            let inner = &self.lease.inner;
            let mut conn = inner.conn().await?;
            let renewed: i64 = inner
                .renew
                .key(&self.key)
                .arg(&self.token)
                .arg(ttl_millis(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| inner.error(e))?;
            Ok(renewed == 1)
        })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), LeaseError>> {
        Box::pin(async move {
            let inner = &self.lease.inner;
            let mut conn = inner.conn().await?;
            // 0 means it expired already, perhaps taken by another holder: nothing to give up.
            let _released: i64 = inner
                .release
                .key(&self.key)
                .arg(&self.token)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| inner.error(e))?;
            Ok(())
        })
    }
}

/// PX takes whole milliseconds, at least one.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
