//! TimescaleDB (or plain PostgreSQL) sink: binary COPY of ticks and order books, exactly once.
//!
//! Guarantees:
//! - A batch's rows and its partitions' next offsets (`actord_offsets`) commit in one
//!   transaction, so after any crash the table and the offsets agree.
//! - Before copying, the batch's offset rows are locked (`FOR UPDATE`) and records below the
//!   stored offset are dropped: a replay, or a writer still finishing a batch of a partition
//!   that moved to another consumer, can never write a row twice.
//! - The consumer starts each partition from the stored offsets ([`StoredOffsets`]), applied
//!   when partitions are assigned.
//! - Connection failures, timeouts, serialization failures and a shutting-down server are
//!   transient (retried, never dead-lettered); data errors (SQLSTATE 22, 23502, 23514) are
//!   poison; anything else is fatal (a bug or a schema mismatch).

pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actord_actors::record::Envelope;
use actord_actors::sink::{Sink, SinkError, SinkFactory};
use actord_actors::ErrorKind;
use bb8::Pool;
use bb8_postgres::PostgresConnectionManager;
use futures::pin_mut;
use tokio::sync::OnceCell;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};
use tokio_postgres::NoTls;
use tracing::{info, warn};

use crate::config::Secret;
use crate::pipelines::recorder::model::Market;
use crate::sources::kafka::OffsetSource;
use crate::telemetry::names;

type PgPool = Pool<PostgresConnectionManager<NoTls>>;

/// Where the database is.
#[derive(Clone, Debug)]
pub struct DbSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub database: String,
    pub schema: String,
    /// Connections in the pool (one per writer plus one).
    pub pool_size: u32,
    /// Drop this group's stored offsets at start: the embedded broker begins empty on every
    /// run, so offsets kept from an earlier run would skip its records.
    pub forget_offsets: bool,
}

/// How the schema was set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Unknown = 0,
    Timescale = 1,
    Plain = 2,
}

/// State shared by every writer of one path, the consumer's offset hook and health.
pub struct Shared {
    settings: DbSettings,
    group: String,
    pool: OnceCell<PgPool>,
    offsets: Mutex<HashMap<(String, i32), i64>>,
    mode: AtomicU8,
    healthy: AtomicBool,
}

impl Shared {
    pub fn new(settings: DbSettings, group: String) -> Arc<Shared> {
        Arc::new(Shared {
            settings,
            group,
            pool: OnceCell::new(),
            offsets: Mutex::new(HashMap::new()),
            mode: AtomicU8::new(Mode::Unknown as u8),
            healthy: AtomicBool::new(false),
        })
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::Timescale,
            2 => Mode::Plain,
            _ => Mode::Unknown,
        }
    }

    /// The database answered the last connect or write.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn schema(&self) -> &str {
        &self.settings.schema
    }

    /// The pool, created and the schema migrated on first use (retried on the next call if
    /// that fails), with the stored offsets loaded.
    pub async fn pool(&self) -> Result<&PgPool, SinkError> {
        let pool = self
            .pool
            .get_or_try_init(|| async {
                let pool = self.connect().await?;
                self.migrate(&pool).await?;
                Ok::<_, SinkError>(pool)
            })
            .await;
        if pool.is_err() {
            self.healthy.store(false, Ordering::Release);
        }
        pool
    }

    async fn connect(&self) -> Result<PgPool, SinkError> {
        let s = &self.settings;
        let mut c = tokio_postgres::Config::new();
        c.host(&s.host)
            .port(s.port)
            .user(&s.user)
            .dbname(&s.database)
            .application_name("actord")
            .connect_timeout(Duration::from_secs(5));
        if let Some(p) = &s.password {
            c.password(p.expose());
        }
        Pool::builder()
            .max_size(s.pool_size.max(1))
            // A database that does not answer within this is down: report it, retry later.
            .connection_timeout(Duration::from_secs(3))
            .build(PostgresConnectionManager::new(c, NoTls))
            .await
            .map_err(|e| {
                SinkError::transient(format!("cannot connect to {}:{}: {e}", s.host, s.port))
            })
    }

    async fn migrate(&self, pool: &PgPool) -> Result<(), SinkError> {
        let mut conn = pool.get().await.map_err(run_error)?;
        let schema = &self.settings.schema;
        {
            // One migration at a time, across writers and processes.
            let tx = conn.transaction().await.map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock(7302451)", &[])
                .await
                .map_err(pg)?;
            for stmt in schema::tables(schema) {
                tx.batch_execute(&stmt).await.map_err(pg)?;
            }
            tx.commit().await.map_err(pg)?;
        }
        let available = conn
            .query_opt(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'",
                &[],
            )
            .await
            .map_err(pg)?
            .is_some();
        let mut mode = Mode::Plain;
        if available {
            match run_all(&conn, &schema::timescale(schema)).await {
                Ok(()) => mode = Mode::Timescale,
                Err(e) => {
                    warn!(error = %e, "the timescaledb extension is available but could not be set up; using plain tables")
                }
            }
        }
        if mode == Mode::Plain {
            run_all(&conn, &schema::plain(schema)).await.map_err(pg)?;
            info!(schema = %schema, "timescaledb is not available: plain PostgreSQL tables, (symbol, time) indexes and materialized views refreshed on a schedule");
        } else {
            info!(schema = %schema, "timescaledb: hypertables and continuous aggregates");
        }
        self.mode.store(mode as u8, Ordering::Release);
        if self.settings.forget_offsets {
            let gone = conn
                .execute(
                    &format!(
                        "DELETE FROM {}.actord_offsets WHERE consumer_group = $1",
                        schema::ident(schema)
                    ),
                    &[&self.group],
                )
                .await
                .map_err(pg)?;
            if gone > 0 {
                info!(group = %self.group, partitions = gone, "embedded broker: offsets stored by an earlier run no longer apply, forgotten");
            }
        }
        let rows = conn
            .query(
                &format!("SELECT topic, partition, next_offset FROM {}.actord_offsets WHERE consumer_group = $1", schema::ident(schema)),
                &[&self.group],
            )
            .await
            .map_err(pg)?;
        let mut offsets = self.offsets.lock().expect("offsets lock");
        for row in rows {
            let next: i64 = row.get(2);
            if next >= 0 {
                offsets.insert((row.get(0), row.get(1)), next);
            }
        }
        self.healthy.store(true, Ordering::Release);
        Ok(())
    }

    /// A factory for the writers of one path.
    pub fn factory(self: &Arc<Self>) -> SinkFactory<TimescaleSink> {
        let shared = self.clone();
        Arc::new(move || {
            let shared = shared.clone();
            Box::pin(async move {
                shared.pool().await?;
                Ok(TimescaleSink { shared })
            })
        })
    }
}

impl OffsetSource for Shared {
    fn next_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.offsets
            .lock()
            .expect("offsets lock")
            .get(&(topic.to_owned(), partition))
            .copied()
    }
}

async fn run_all(
    conn: &tokio_postgres::Client,
    statements: &[String],
) -> Result<(), tokio_postgres::Error> {
    for stmt in statements {
        conn.batch_execute(stmt).await?;
    }
    Ok(())
}

/// SQLSTATE classes decide: 08 connection, 40 rollback, 53 resources, 57P0x shutdown are
/// transient; 22 data and 23502/23514 constraint failures are poison; the rest is fatal.
pub fn classify(err: &tokio_postgres::Error) -> ErrorKind {
    let Some(db) = err.as_db_error() else {
        return ErrorKind::Transient;
    };
    match db.code().code() {
        c if c.starts_with("08")
            || c.starts_with("40")
            || c.starts_with("53")
            || c.starts_with("57P0") =>
        {
            ErrorKind::Transient
        }
        c if c.starts_with("22") || c == "23502" || c == "23514" => ErrorKind::Poison,
        _ => ErrorKind::Fatal,
    }
}

fn pg(err: tokio_postgres::Error) -> SinkError {
    let class = err
        .as_db_error()
        .map(|d| format!("SqlState{}", d.code().code()))
        .unwrap_or_else(|| "ConnectionError".to_owned());
    let message = match err.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => err.to_string(),
    };
    SinkError::new(classify(&err), class, message)
}

fn run_error(err: bb8::RunError<tokio_postgres::Error>) -> SinkError {
    match err {
        bb8::RunError::User(e) => pg(e),
        bb8::RunError::TimedOut => {
            SinkError::transient("timed out waiting for a database connection")
        }
    }
}

/// One writer's handle on the database.
pub struct TimescaleSink {
    shared: Arc<Shared>,
}

impl TimescaleSink {
    async fn write_batch(&self, records: &[Envelope<Market>]) -> Result<u64, SinkError> {
        let pool = self.shared.pool().await?;
        let mut conn = pool.get().await.map_err(run_error)?;
        let s = schema::ident(&self.shared.settings.schema);
        let tx = conn.transaction().await.map_err(pg)?;

        // The partitions in this batch and the offset after each one's last record.
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for e in records {
            let o = &e.source.origin;
            let n = next.entry((o.topic.as_str(), o.partition)).or_insert(0);
            *n = (*n).max(o.offset + 1);
        }
        let topics: Vec<&str> = next.keys().map(|(t, _)| *t).collect();
        let partitions: Vec<i32> = next.keys().map(|(_, p)| *p).collect();
        let group = &self.shared.group;
        tx.execute(
            &format!(
                "INSERT INTO {s}.actord_offsets (consumer_group, topic, partition, next_offset) \
                 SELECT $1, t, p, -1 FROM unnest($2::text[], $3::int[]) AS u(t, p) ON CONFLICT DO NOTHING"
            ),
            &[group, &topics, &partitions],
        )
        .await
        .map_err(pg)?;
        let rows = tx
            .query(
                &format!(
                    "SELECT topic, partition, next_offset FROM {s}.actord_offsets \
                     WHERE consumer_group = $1 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[])) \
                     ORDER BY topic, partition FOR UPDATE"
                ),
                &[group, &topics, &partitions],
            )
            .await
            .map_err(pg)?;
        let stored: HashMap<(String, i32), i64> = rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let fresh = |e: &&Envelope<Market>| {
            let o = &e.source.origin;
            o.offset
                >= stored
                    .get(&(o.topic.as_str().to_owned(), o.partition))
                    .copied()
                    .unwrap_or(-1)
        };

        let mut written = 0u64;
        {
            let copy = tx
                .copy_in(&format!(
                    "COPY {s}.tick_data (time, symbol, price, volume, change, change_rate) FROM STDIN (FORMAT binary)"
                ))
                .await
                .map_err(pg)?;
            let w = BinaryCopyInWriter::new(
                copy,
                &[
                    Type::TIMESTAMPTZ,
                    Type::TEXT,
                    Type::FLOAT8,
                    Type::INT8,
                    Type::FLOAT8,
                    Type::FLOAT8,
                ],
            );
            pin_mut!(w);
            for e in records.iter().filter(fresh) {
                if let Market::Tick(t) = &e.record {
                    w.as_mut()
                        .write(&[
                            &t.time,
                            &t.symbol,
                            &t.price,
                            &t.volume,
                            &t.change,
                            &t.change_rate,
                        ])
                        .await
                        .map_err(pg)?;
                    written += 1;
                }
            }
            w.finish().await.map_err(pg)?;
        }
        {
            let copy = tx
                .copy_in(&format!(
                    "COPY {s}.orderbook (time, symbol, bids, asks) FROM STDIN (FORMAT binary)"
                ))
                .await
                .map_err(pg)?;
            let w = BinaryCopyInWriter::new(
                copy,
                &[Type::TIMESTAMPTZ, Type::TEXT, Type::JSONB, Type::JSONB],
            );
            pin_mut!(w);
            for e in records.iter().filter(fresh) {
                if let Market::OrderBook(o) = &e.record {
                    w.as_mut()
                        .write(&[&o.time, &o.symbol, &Json(&o.bids), &Json(&o.asks)])
                        .await
                        .map_err(pg)?;
                    written += 1;
                }
            }
            w.finish().await.map_err(pg)?;
        }

        let new: Vec<i64> = next
            .iter()
            .map(|((t, p), n)| (*n).max(stored.get(&((*t).to_owned(), *p)).copied().unwrap_or(-1)))
            .collect();
        tx.execute(
            &format!(
                "UPDATE {s}.actord_offsets o SET next_offset = u.n, updated_at = now() \
                 FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, n) \
                 WHERE o.consumer_group = $1 AND o.topic = u.t AND o.partition = u.p"
            ),
            &[group, &topics, &partitions, &new],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;

        let mut cache = self.shared.offsets.lock().expect("offsets lock");
        for (((t, p), _), n) in next.iter().zip(&new) {
            cache.insert(((*t).to_owned(), *p), *n);
        }
        Ok(written)
    }
}

impl Sink<Market> for TimescaleSink {
    async fn write(&mut self, records: &[Envelope<Market>]) -> Result<(), SinkError> {
        match self.write_batch(records).await {
            Ok(rows) => {
                self.shared.healthy.store(true, Ordering::Release);
                metrics::counter!(names::TIMESCALE_INSERTS_TOTAL).increment(rows);
                Ok(())
            }
            Err(e) => {
                if e.kind == ErrorKind::Transient {
                    self.shared.healthy.store(false, Ordering::Release);
                }
                metrics::counter!(names::TIMESCALE_ERRORS_TOTAL, "error_kind" => e.kind.as_str())
                    .increment(1);
                Err(e)
            }
        }
    }
}
