//! `PostgresLease`: one row per lease key with the holder's token, an expiry and the latest granted due time; every change is one conditional statement.
//!
//! Expiry is measured on the database's clock (`now()`), so processes whose clocks disagree
//! still agree on who holds a lease. Rows are never deleted: a released lease keeps its
//! `last_due`, which must outlive the gap between due times.

use std::sync::Arc;
use std::time::Duration;

use actord_actors::scheduler::{Acquire, HeldLease, Lease, LeaseError, LeaseGuard};
use bb8::{Pool, RunError};
use bb8_postgres::PostgresConnectionManager;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

type PgPool = Pool<PostgresConnectionManager<NoTls>>;

/// Leases in a PostgreSQL table (default `actord_leases`, created if missing). Cheap to clone;
/// connections are made on the first claim.
#[derive(Clone)]
pub struct PostgresLease {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    /// `host:port`, for messages: the connection string may carry a password.
    addr: String,
    /// The quoted, possibly schema-qualified table name.
    table: String,
    pool: OnceCell<PgPool>,
    sql: Sql,
}

/// The statements, with the table name filled in.
struct Sql {
    create: String,
    acquire: String,
    refused: String,
    renew: String,
    release: String,
}

impl Sql {
    fn new(t: &str) -> Sql {
        Sql {
            // Two processes creating the table at once can both fail the IF NOT EXISTS check
            // and one then violates a catalog constraint: a transaction lock serializes them.
            create: format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(hashtext('actord lease table {t}'));
                 CREATE TABLE IF NOT EXISTS {t} (
                    key text PRIMARY KEY,
                    token text,
                    expires_at timestamptz NOT NULL,
                    last_due timestamptz
                 );
                 COMMIT;"
            ),
            // Granted when the key is new, or its lease was released or expired, and the due
            // time (if any) comes after the last granted one. A "run now" (no due time) keeps
            // the last due time as it is.
            acquire: format!(
                "INSERT INTO {t} AS l (key, token, expires_at, last_due)
                 VALUES ($1, $2, now() + make_interval(secs => $3), $4)
                 ON CONFLICT (key) DO UPDATE
                 SET token = EXCLUDED.token,
                     expires_at = EXCLUDED.expires_at,
                     last_due = COALESCE(EXCLUDED.last_due, l.last_due)
                 WHERE (l.token IS NULL OR l.expires_at <= now())
                   AND (EXCLUDED.last_due IS NULL OR l.last_due IS NULL
                        OR l.last_due < EXCLUDED.last_due)
                 RETURNING l.token"
            ),
            refused: format!("SELECT last_due FROM {t} WHERE key = $1"),
            renew: format!(
                "UPDATE {t} SET expires_at = now() + make_interval(secs => $3)
                 WHERE key = $1 AND token = $2 AND expires_at > now()"
            ),
            release: format!(
                "UPDATE {t} SET token = NULL, expires_at = now() WHERE key = $1 AND token = $2"
            ),
        }
    }
}

impl PostgresLease {
    /// A store at `conninfo`: a `postgres://` URL or `host=… user=… dbname=…`. Only its syntax
    /// is checked here.
    pub fn new(conninfo: &str) -> Result<PostgresLease, LeaseError> {
        let config: tokio_postgres::Config = conninfo
            .parse()
            .map_err(|e| LeaseError::new(format!("invalid postgres connection string: {e}")))?;
        Ok(PostgresLease::from_config(config))
    }

    /// A store reached with `config`, for a pipeline that already has its connection settings.
    pub fn from_config(mut config: tokio_postgres::Config) -> PostgresLease {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(3));
        }
        if config.get_application_name().is_none() {
            config.application_name("actord");
        }
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let table = quote("actord_leases");
        PostgresLease {
            inner: Arc::new(Inner {
                addr: format!("{host}:{port}"),
                sql: Sql::new(&table),
                table,
                config,
                pool: OnceCell::new(),
            }),
        }
    }

    /// Keeps the leases in `table` (`name` or `schema.name`) instead of `actord_leases`.
    pub fn table(self, table: &str) -> Result<PostgresLease, LeaseError> {
        let valid = !table.is_empty()
            && table.split('.').count() <= 2
            && table.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !valid {
            return Err(LeaseError::new(format!(
                "invalid lease table name {table:?}: expected name or schema.name (letters, digits, _)"
            )));
        }
        let quoted = table.split('.').map(quote).collect::<Vec<_>>().join(".");
        Ok(PostgresLease {
            inner: Arc::new(Inner {
                config: self.inner.config.clone(),
                addr: self.inner.addr.clone(),
                sql: Sql::new(&quoted),
                table: quoted,
                pool: OnceCell::new(),
            }),
        })
    }

    /// The quoted table name.
    pub fn table_name(&self) -> &str {
        &self.inner.table
    }
}

fn quote(ident: &str) -> String {
    format!("\"{ident}\"")
}

impl Inner {
    /// The pool, with the table created; both retried on the next call after a failure.
    async fn pool(&self) -> Result<&PgPool, LeaseError> {
        self.pool
            .get_or_try_init(|| async {
                let pool = Pool::builder()
                    .max_size(2)
                    // A server that refuses or does not answer fails this claim at once; the
                    // scheduler skips the run and asks again at the next due time.
                    .retry_connection(false)
                    .connection_timeout(Duration::from_secs(3))
                    .build_unchecked(PostgresConnectionManager::new(self.config.clone(), NoTls));
                let conn = pool.get().await.map_err(|e| self.run_error(e))?;
                conn.batch_execute(&self.sql.create)
                    .await
                    .map_err(|e| self.error(e))?;
                drop(conn);
                Ok(pool)
            })
            .await
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, LeaseError> {
        let conn = self
            .pool()
            .await?
            .get()
            .await
            .map_err(|e| self.run_error(e))?;
        conn.execute(sql, params).await.map_err(|e| self.error(e))
    }

    fn error(&self, e: tokio_postgres::Error) -> LeaseError {
        // The server's own message says what is wrong; the bare Display may be "db error".
        match e.as_db_error() {
            Some(db) => LeaseError::new(format!(
                "postgres {}: {} ({})",
                self.addr,
                db.message(),
                db.code().code()
            )),
            None => LeaseError::new(format!("postgres {}: {e}", self.addr)),
        }
    }

    fn run_error(&self, e: RunError<tokio_postgres::Error>) -> LeaseError {
        match e {
            RunError::User(e) => self.error(e),
            RunError::TimedOut => {
                LeaseError::new(format!("postgres {}: timed out connecting", self.addr))
            }
        }
    }
}

impl Lease for PostgresLease {
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        due: Option<DateTime<Utc>>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquire, LeaseError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let conn = inner
                .pool()
                .await?
                .get()
                .await
                .map_err(|e| inner.run_error(e))?;
            let token = super::token();
            let granted = conn
                .query_opt(
                    &inner.sql.acquire,
                    &[&key, &token, &ttl.as_secs_f64(), &due],
                )
                .await
                .map_err(|e| inner.error(e))?;
            if granted.is_some() {
                return Ok(Acquire::Granted(LeaseGuard::new(PostgresHeld {
                    lease: self.clone(),
                    key: key.to_owned(),
                    token,
                })));
            }
            // Refused: a due time at or before the last granted one already ran, anything else
            // means the lease is held.
            let last: Option<DateTime<Utc>> = conn
                .query_opt(&inner.sql.refused, &[&key])
                .await
                .map_err(|e| inner.error(e))?
                .and_then(|row| row.get(0));
            Ok(match (due, last) {
                (Some(due), Some(last)) if due <= last => Acquire::AlreadyRan,
                _ => Acquire::HeldElsewhere,
            })
        })
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

/// A granted PostgreSQL lease: its key and the token that proves it is ours.
struct PostgresHeld {
    lease: PostgresLease,
    key: String,
    token: String,
}

impl HeldLease for PostgresHeld {
    fn renew(&mut self, ttl: Duration) -> BoxFuture<'_, Result<bool, LeaseError>> {
        Box::pin(async move {
            let inner = &self.lease.inner;
            let rows = inner
                .execute(
                    &inner.sql.renew,
                    &[&self.key, &self.token, &ttl.as_secs_f64()],
                )
                .await?;
            Ok(rows == 1)
        })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), LeaseError>> {
        Box::pin(async move {
            let inner = &self.lease.inner;
            // No row changed means the lease expired already: nothing to give up.
            inner
                .execute(&inner.sql.release, &[&self.key, &self.token])
                .await?;
            Ok(())
        })
    }
}
