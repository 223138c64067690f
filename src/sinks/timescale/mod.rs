//! TimescaleDB (or plain PostgreSQL) sink: binary COPY of ticks and order books, exactly once.
//!
//! Guarantees:
//! - A batch's rows and its partitions' next offsets (`actord_offsets`) commit in one
//!   transaction, so after any crash the table and the offsets agree.
//! - Before copying, the batch's offset rows are locked (`FOR UPDATE`) and records below the
//!   stored offset are dropped: a replay, or a writer still finishing a batch of a partition
//!   that moved to another consumer, can never write a row twice.
//! - The consumer starts each partition from the offsets table, read when the partition is
//!   assigned, never from a cache ([`offsets`]). A stored offset found behind what this process
//!   wrote or saw there in this run (the database lost commits) stops the writer instead of
//!   writing past the hole, and the partition starts again from the table's offset.
//! - Existing tables are checked at start-up against what the COPY writes ([`migrate`]): a
//!   mismatch stops the path with a message naming the table, the column and both types, before
//!   a single row is dead-lettered.
//! - Errors are classified by SQLSTATE ([`error::classify_code`]): an outage, a timeout or a
//!   read-only server is retried and never dead-lettered; a row the database rejects is
//!   dead-lettered, until the rejection breaker ([`breaker`]) finds too many and stops the path.
//! - Every session carries `lock_timeout` and `statement_timeout`, so a session holding a row
//!   lock (a zombie writer) or a hung statement becomes a retried error, not a stall.

pub mod breaker;
pub mod error;
mod migrate;
mod offsets;
pub mod schema;
mod sink;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actord_actors::sink::{SinkError, SinkFactory};
use bb8::Pool;
use bb8_postgres::PostgresConnectionManager;
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

pub use breaker::BreakerSettings;
pub use error::{classify, classify_code, describe};
pub use migrate::preflight;
pub use schema::Mismatch;
pub use sink::TimescaleSink;

use crate::config::Secret;
use crate::sources::kafka::OffsetSource;

type PgPool = Pool<PostgresConnectionManager<NoTls>>;

/// Where the database is and how sessions behave.
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
    /// `lock_timeout` of every session.
    pub lock_timeout: Duration,
    /// `statement_timeout` of the writers' sessions (the schema set-up runs without one).
    pub statement_timeout: Duration,
    /// When the rejection breaker stops the path.
    pub rejection: BreakerSettings,
}

impl Default for DbSettings {
    fn default() -> Self {
        DbSettings {
            host: "localhost".to_owned(),
            port: 5432,
            user: "postgres".to_owned(),
            password: None,
            database: "postgres".to_owned(),
            schema: "public".to_owned(),
            pool_size: 3,
            forget_offsets: false,
            lock_timeout: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(300),
            rejection: BreakerSettings::default(),
        }
    }
}

/// A duration as PostgreSQL's milliseconds; zero turns the timeout off.
fn millis(d: Duration) -> u128 {
    if d.is_zero() {
        0
    } else {
        d.as_millis().max(1)
    }
}

impl DbSettings {
    /// A session's configuration; `statement_timeout` `None` means no limit.
    fn pg_config(&self, statement_timeout: Option<Duration>) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database)
            .application_name("actord")
            .connect_timeout(Duration::from_secs(5))
            .options(format!(
                "-c lock_timeout={} -c statement_timeout={}",
                millis(self.lock_timeout),
                millis(statement_timeout.unwrap_or(Duration::ZERO))
            ));
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        c
    }
}

/// A connection of its own (not from the pool), driven on the current runtime;
/// `statement_timeout` `None` means no limit.
async fn connect_once(
    settings: &DbSettings,
    statement_timeout: Option<Duration>,
) -> Result<tokio_postgres::Client, SinkError> {
    let (client, connection) = settings
        .pg_config(statement_timeout)
        .connect(NoTls)
        .await
        .map_err(|e| {
            SinkError::new(
                classify(&e),
                "ConnectionError",
                format!(
                    "cannot connect to {}:{}: {}",
                    settings.host,
                    settings.port,
                    describe(&e)
                ),
            )
        })?;
    tokio::spawn(connection);
    Ok(client)
}

/// How the schema was set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Unknown = 0,
    Timescale = 1,
    Plain = 2,
}

/// What /health says about the path besides healthy or not.
#[derive(Default)]
struct Status {
    /// How the schema was set up.
    mode_note: Option<String>,
    /// The last failure to connect, set up or write; cleared by a success.
    error: Option<String>,
}

/// State shared by every writer of one path, the consumer's offset look-up and health.
pub struct Shared {
    settings: DbSettings,
    group: String,
    pool: OnceCell<PgPool>,
    mode: AtomicU8,
    healthy: AtomicBool,
    status: Mutex<Status>,
    ledger: offsets::Ledger,
    breaker: Mutex<breaker::Breaker>,
}

impl Shared {
    pub fn new(settings: DbSettings, group: String) -> Arc<Shared> {
        let breaker = breaker::Breaker::new(settings.rejection);
        Arc::new(Shared {
            settings,
            group,
            pool: OnceCell::new(),
            mode: AtomicU8::new(Mode::Unknown as u8),
            healthy: AtomicBool::new(false),
            status: Mutex::new(Status::default()),
            ledger: offsets::Ledger::default(),
            breaker: Mutex::new(breaker),
        })
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::Timescale,
            2 => Mode::Plain,
            _ => Mode::Unknown,
        }
    }

    /// The database answered the last connect or write, no offset regression is open and the
    /// rejection breaker is closed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
            && !self.ledger.has_holes()
            && !self.breaker.lock().expect("breaker lock").is_open()
    }

    /// `/health` lines: the mode, then whatever keeps the path from writing.
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        {
            let status = self.status.lock().expect("status lock");
            out.extend(status.mode_note.clone());
            if !self.healthy.load(Ordering::Acquire) {
                out.extend(status.error.as_ref().map(|e| format!("timescaledb: {e}")));
            }
        }
        let breaker = self.breaker.lock().expect("breaker lock");
        if breaker.is_open() {
            out.push(format!(
                "timescaledb: rejection breaker open: {}; the path stops instead of dead-lettering the topic",
                breaker.describe()
            ));
        }
        drop(breaker);
        out.extend(self.ledger.notes());
        out
    }

    pub fn schema(&self) -> &str {
        &self.settings.schema
    }

    fn succeeded(&self) {
        self.healthy.store(true, Ordering::Release);
        self.status.lock().expect("status lock").error = None;
    }

    fn failed(&self, err: &SinkError) {
        self.healthy.store(false, Ordering::Release);
        self.status.lock().expect("status lock").error = Some(err.message.clone());
    }

    /// The pool, created after the schema is set up on first use (both retried on the next
    /// call if they fail).
    pub async fn pool(&self) -> Result<&PgPool, SinkError> {
        let pool = self
            .pool
            .get_or_try_init(|| async {
                let (mode, note) = migrate::migrate(self).await?;
                let pool = self.connect().await?;
                self.mode.store(mode as u8, Ordering::Release);
                self.status.lock().expect("status lock").mode_note = Some(note);
                self.succeeded();
                Ok::<_, SinkError>(pool)
            })
            .await;
        if let Err(e) = &pool {
            self.failed(e);
        }
        pool
    }

    async fn connect(&self) -> Result<PgPool, SinkError> {
        let s = &self.settings;
        let config = s.pg_config(Some(s.statement_timeout));
        Pool::builder()
            .max_size(s.pool_size.max(1))
            // A database that does not answer within this is down: report it, retry later.
            .connection_timeout(Duration::from_secs(3))
            .build(PostgresConnectionManager::new(config, NoTls))
            .await
            .map_err(|e| {
                SinkError::new(
                    classify(&e),
                    "ConnectionError",
                    format!("cannot connect to {}:{}: {}", s.host, s.port, describe(&e)),
                )
            })
    }

    /// A factory for the writers of one path.
    pub fn factory(self: &Arc<Self>) -> SinkFactory<TimescaleSink> {
        let shared = self.clone();
        Arc::new(move || {
            let shared = shared.clone();
            Box::pin(async move {
                shared.pool().await?;
                Ok(TimescaleSink::new(shared))
            })
        })
    }
}

impl OffsetSource for Shared {
    fn next_offsets(&self, partitions: &[(&str, i32)]) -> Result<Vec<Option<i64>>, String> {
        let config = self.settings.pg_config(Some(offsets::LOOKUP_TIMEOUT));
        let stored =
            offsets::read_blocking(&config, &self.settings.schema, &self.group, partitions)
                .map_err(|e| format!("reading {}.actord_offsets: {e}", self.settings.schema))?;
        Ok(partitions
            .iter()
            .map(|(topic, partition)| {
                let found = stored.get(&((*topic).to_owned(), *partition)).copied();
                // The table lost commits this process made: start where the table is, so the
                // lost records are read and written again. A table that lost the partition's
                // row lost all of its rows (they commit together): start from the beginning,
                // not from the group's committed offset, which is past the hole.
                let from = found.unwrap_or(0);
                if let Some(written) =
                    self.ledger.ahead_of(topic, *partition, found.unwrap_or(-1))
                {
                    self.ledger.report(
                        topic,
                        *partition,
                        found.unwrap_or(-1),
                        written,
                        &format!("the partition starts again at {from}, and the lost records are written again"),
                    );
                    self.ledger.restart_from(topic, *partition, found.unwrap_or(-1));
                    return Some(from);
                }
                if self.ledger.in_hole(topic, *partition) {
                    return Some(from);
                }
                if let Some(n) = found {
                    self.ledger.observed(topic, *partition, n);
                }
                found
            })
            .collect())
    }
}
