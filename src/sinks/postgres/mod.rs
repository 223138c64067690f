//! PostgreSQL sink, shared by every pipeline that writes PostgreSQL: the connection pool, the
//! error classes, the column-type check, the rejection breaker and, for Kafka paths, exactly-once
//! delivery through an offsets table. A pipeline brings its tables ([`Setup`]) and the part that
//! writes one batch inside the transaction ([`Writes`]): binary COPY for the recorder, upserts or
//! set-based updates elsewhere.
//!
//! Guarantees:
//! - With Kafka offsets ([`Database::kafka`]), a batch's rows and its partitions' next offsets
//!   (`actord_offsets`) commit in one transaction, so after any crash the table and the offsets
//!   agree. Before the batch is written, its offset rows are locked (`FOR UPDATE`) and records
//!   below the stored offset are dropped: a replay, or a writer still finishing a batch of a
//!   partition that moved to another consumer, can never write a row twice.
//! - The consumer starts each partition from the offsets table, read when the partition is
//!   assigned, never from a cache ([`offsets`]). A stored offset found behind what this process
//!   wrote or saw there in this run (the database lost commits) stops the writer instead of
//!   writing past the hole, and the partition starts again from the table's offset.
//! - Without Kafka offsets ([`Database::new`], e.g. a Redis Streams path), each batch is one
//!   transaction; the pipeline's writes must be idempotent (upserts), since a batch whose commit
//!   was not acknowledged is delivered again.
//! - Existing tables are checked against what the pipeline writes ([`check`]) before a single
//!   row is written: a mismatch is a misconfiguration that stops the path (exit 2 when found at
//!   start-up), never a stream of dead letters.
//! - Errors are classified by SQLSTATE ([`error::classify_code`], with a pipeline's override
//!   first): an outage, a timeout or a read-only server is retried and never dead-lettered; a row
//!   the database rejects is dead-lettered, until the rejection breaker ([`breaker`]) finds too
//!   many refused records and stops the path.
//! - Every session carries `lock_timeout` and `statement_timeout`, so a session holding a row
//!   lock (a zombie writer) or a hung statement becomes a retried error, not a stall.

pub mod breaker;
pub mod check;
pub mod error;
mod offsets;
mod session;
mod sink;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actord_actors::sink::{SinkError, SinkFactory};
use bb8::Pool;
use futures::future::BoxFuture;
use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};
use tracing::{error, info};

pub use breaker::BreakerSettings;
pub use check::{ident, Mismatch, Table};
pub use error::{classify, classify_code, describe, Classifier};
pub use session::{Session, Sessions, Tx};
pub use sink::{PostgresSink, Writes};

use crate::config::Secret;
use crate::sources::kafka::OffsetSource;

pub type PgPool = Pool<Sessions>;

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
    /// The embedded broker's address, when the path reads it: it begins empty on every run, so
    /// this group's offsets kept from an earlier run would skip its records. They are dropped
    /// once per broker (the first set-up on it), never again while it lives: a restarted or
    /// reloaded path keeps what it stored on the same broker.
    pub forget_offsets: Option<String>,
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
            forget_offsets: None,
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
            // A server that vanished without closing the socket (a moved address, a cut
            // network) is found within about 25 s instead of the kernel's hours.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
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
pub async fn connect_once(
    settings: &DbSettings,
    statement_timeout: Option<Duration>,
) -> Result<Client, SinkError> {
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

/// A pipeline's tables: created idempotently and checked at a path's first connection.
pub trait Setup: Send + Sync + 'static {
    /// Statements that create the tables (`IF NOT EXISTS`), run in one transaction.
    fn tables(&self, schema: &str) -> Vec<String>;

    /// What the tables must hold for the pipeline's writes to fit.
    fn columns(&self) -> Vec<Table>;

    /// Further set-up once the tables passed the check (extensions, views), on a session of its
    /// own without a statement timeout; returns a line for /health about it, if any.
    fn finish<'a>(
        &'a self,
        settings: &'a DbSettings,
        client: Client,
    ) -> BoxFuture<'a, Result<Option<String>, SinkError>>;
}

/// What /health says about the path besides healthy or not.
#[derive(Default)]
struct Status {
    /// What the set-up reported.
    setup_note: Option<String>,
    /// The last failure to connect, set up or write; cleared by a success.
    error: Option<String>,
}

/// The Kafka exactly-once bookkeeping of a path.
struct KafkaOffsets {
    group: String,
    ledger: offsets::Ledger,
}

/// One path's database: settings, pool, health, breaker and (for Kafka paths) offsets, shared by
/// its writers, its consumer's offset look-up and /health.
pub struct Database {
    settings: DbSettings,
    /// The name health lines carry, e.g. `timescaledb`.
    component: &'static str,
    setup: Arc<dyn Setup>,
    errors: Classifier,
    offsets: Option<KafkaOffsets>,
    pool: OnceCell<PgPool>,
    healthy: AtomicBool,
    status: Mutex<Status>,
    breaker: Mutex<breaker::Breaker>,
}

/// An arbitrary key for the advisory lock that serializes set-ups across writers and processes.
const SETUP_LOCK: i64 = 7302451;

impl Database {
    /// A path without Kafka offsets: each batch is one transaction of idempotent writes.
    pub fn new(
        settings: DbSettings,
        component: &'static str,
        setup: Arc<dyn Setup>,
        errors: Classifier,
    ) -> Arc<Database> {
        Self::build(settings, component, setup, errors, None)
    }

    /// A Kafka path: batches commit with their offsets in `actord_offsets` under `group`.
    pub fn kafka(
        settings: DbSettings,
        component: &'static str,
        setup: Arc<dyn Setup>,
        errors: Classifier,
        group: String,
    ) -> Arc<Database> {
        let offsets = KafkaOffsets {
            group,
            ledger: offsets::Ledger::default(),
        };
        Self::build(settings, component, setup, errors, Some(offsets))
    }

    fn build(
        settings: DbSettings,
        component: &'static str,
        setup: Arc<dyn Setup>,
        errors: Classifier,
        offsets: Option<KafkaOffsets>,
    ) -> Arc<Database> {
        let breaker = breaker::Breaker::new(settings.rejection);
        Arc::new(Database {
            settings,
            component,
            setup,
            errors,
            offsets,
            pool: OnceCell::new(),
            healthy: AtomicBool::new(false),
            status: Mutex::new(Status::default()),
            breaker: Mutex::new(breaker),
        })
    }

    pub fn settings(&self) -> &DbSettings {
        &self.settings
    }

    pub fn schema(&self) -> &str {
        &self.settings.schema
    }

    pub fn errors(&self) -> &Classifier {
        &self.errors
    }

    /// Every table the path writes, the offsets table included on a Kafka path.
    pub fn tables(&self) -> Vec<Table> {
        let mut tables = self.setup.columns();
        if self.offsets.is_some() {
            tables.push(offsets::TABLE);
        }
        tables
    }

    /// The start-up check of the existing tables (see [`check::preflight`]).
    pub fn preflight(&self) -> Result<(), Vec<Mismatch>> {
        check::preflight(&self.settings, &self.tables())
    }

    /// The database answered the last connect or write, no offset regression is open and the
    /// rejection breaker is closed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
            && !self.offsets.as_ref().is_some_and(|o| o.ledger.has_holes())
            && !self.breaker.lock().expect("breaker lock").is_open()
    }

    /// `/health` lines: the set-up's, then whatever keeps the path from writing.
    pub fn notes(&self) -> Vec<String> {
        let c = self.component;
        let mut out = Vec::new();
        {
            let status = self.status.lock().expect("status lock");
            out.extend(status.setup_note.clone());
            if !self.healthy.load(Ordering::Acquire) {
                out.extend(status.error.as_ref().map(|e| format!("{c}: {e}")));
            }
        }
        let breaker = self.breaker.lock().expect("breaker lock");
        if breaker.is_open() {
            out.push(format!(
                "{c}: rejection breaker open: {}; the path stops instead of dead-lettering the topic",
                breaker.describe()
            ));
        }
        drop(breaker);
        if let Some(o) = &self.offsets {
            out.extend(o.ledger.notes(c));
        }
        out
    }

    fn succeeded(&self) {
        self.healthy.store(true, Ordering::Release);
        self.status.lock().expect("status lock").error = None;
    }

    fn failed(&self, err: &SinkError) {
        self.healthy.store(false, Ordering::Release);
        self.status.lock().expect("status lock").error = Some(err.message.clone());
    }

    /// The pool, created after the tables are set up and checked on first use (both retried on
    /// the next call if they fail).
    pub async fn pool(&self) -> Result<&PgPool, SinkError> {
        let pool = self
            .pool
            .get_or_try_init(|| async {
                let note = self.migrate().await?;
                let pool = self.connect().await?;
                self.status.lock().expect("status lock").setup_note = note;
                self.succeeded();
                Ok::<_, SinkError>(pool)
            })
            .await;
        if let Err(e) = &pool {
            self.failed(e);
        }
        pool
    }

    /// Creates and checks the tables, then lets the pipeline finish its set-up.
    async fn migrate(&self) -> Result<Option<String>, SinkError> {
        let settings = &self.settings;
        let schema_name = &settings.schema;
        // Its own session without a statement timeout: a pipeline's set-up (an aggregate
        // created WITH DATA over a large table) may take long.
        let mut client = connect_once(settings, None).await?;
        {
            let tx = client.transaction().await.map_err(error::pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK])
                .await
                .map_err(error::pg)?;
            let mut statements = vec![format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                ident(schema_name)
            )];
            statements.extend(self.setup.tables(schema_name));
            if self.offsets.is_some() {
                statements.push(offsets::create(schema_name));
            }
            for stmt in statements {
                tx.batch_execute(&stmt).await.map_err(error::pg)?;
            }
            tx.commit().await.map_err(error::pg)?;
        }
        let tables = self.tables();
        let found = check::read_columns(&client, schema_name, &tables)
            .await
            .map_err(error::pg)?;
        let problems = check::mismatches(schema_name, &tables, &found);
        if !problems.is_empty() {
            for problem in &problems {
                error!(schema = %schema_name, problem = %problem, "a table does not take what the path writes");
            }
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            // No restart mends a table: the path stops and stays stopped until an operator
            // fixes the table and restarts it.
            return Err(SinkError::misconfigured(format!(
                "the existing tables do not take what the path writes: {}; alter the columns or set another schema",
                list.join("; ")
            )));
        }
        if let (Some(o), Some(broker)) = (&self.offsets, &settings.forget_offsets) {
            let once = (broker.clone(), schema_name.to_owned(), o.group.clone());
            if !first_on_broker(&once) {
                return self.setup.finish(settings, client).await;
            }
            let gone = client
                .execute(
                    &format!(
                        "DELETE FROM {}.actord_offsets WHERE consumer_group = $1",
                        ident(schema_name)
                    ),
                    &[&o.group],
                )
                .await
                .map_err(error::pg)?;
            o.ledger.forget();
            forgotten_on_broker(once);
            if gone > 0 {
                info!(group = %o.group, partitions = gone, "embedded broker: offsets stored by an earlier run no longer apply, forgotten");
            }
        }
        self.setup.finish(settings, client).await
    }

    async fn connect(&self) -> Result<PgPool, SinkError> {
        let s = &self.settings;
        let config = s.pg_config(Some(s.statement_timeout));
        Pool::builder()
            .max_size(s.pool_size.max(1))
            // A database that does not answer within this is down: report it, retry later.
            .connection_timeout(Duration::from_secs(3))
            .build(Sessions::new(config))
            .await
            .map_err(|e| {
                SinkError::new(
                    classify(&e),
                    "ConnectionError",
                    format!("cannot connect to {}:{}: {}", s.host, s.port, describe(&e)),
                )
            })
    }

    /// A factory for the writers of one path; `writes` writes one batch inside the transaction.
    pub fn factory<R, W>(self: &Arc<Self>, writes: Arc<W>) -> SinkFactory<PostgresSink<R, W>>
    where
        R: Send + Sync + 'static,
        W: Writes<R>,
    {
        let db = self.clone();
        Arc::new(move || {
            let (db, writes) = (db.clone(), writes.clone());
            Box::pin(async move {
                db.pool().await?;
                Ok(PostgresSink::new(db, writes))
            })
        })
    }
}

impl OffsetSource for Database {
    fn next_offsets(&self, partitions: &[(&str, i32)]) -> Result<Vec<Option<i64>>, String> {
        let Some(o) = &self.offsets else {
            return Err("this path keeps no Kafka offsets".to_owned());
        };
        let config = self.settings.pg_config(Some(offsets::LOOKUP_TIMEOUT));
        let stored =
            offsets::read_blocking(&config, &self.settings.schema, &o.group, partitions)
                .map_err(|e| format!("reading {}.actord_offsets: {e}", self.settings.schema))?;
        Ok(partitions
            .iter()
            .map(|(topic, partition)| {
                let found = stored.get(&((*topic).to_owned(), *partition)).copied();
                // The table lost commits this process made or saw: start where the table is, so
                // the lost records are read and written again. A table that lost the
                // partition's row lost all of its rows (they commit together): start from the
                // beginning, not from the group's committed offset, which is past the hole.
                let from = found.unwrap_or(0);
                if let Some(written) = o.ledger.ahead_of(topic, *partition, found.unwrap_or(-1)) {
                    o.ledger.report(
                        topic,
                        *partition,
                        found.unwrap_or(-1),
                        written,
                        &format!("the partition starts again at {from}, and the lost records are written again"),
                    );
                    o.ledger.restart_from(topic, *partition, found.unwrap_or(-1));
                    return Some(from);
                }
                if o.ledger.in_hole(topic, *partition) {
                    return Some(from);
                }
                if let Some(n) = found {
                    o.ledger.observed(topic, *partition, n);
                }
                found
            })
            .collect())
    }
}

/// (broker, schema, group) whose offsets of an earlier broker were already dropped by this
/// process.
type BrokerGroup = (String, String, String);

fn forgotten() -> &'static std::sync::Mutex<std::collections::HashSet<BrokerGroup>> {
    static FORGOTTEN: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashSet<BrokerGroup>>,
    > = std::sync::OnceLock::new();
    FORGOTTEN.get_or_init(Default::default)
}

/// Whether the group's offsets were not yet dropped for this broker.
fn first_on_broker(key: &BrokerGroup) -> bool {
    !forgotten().lock().expect("forgotten lock").contains(key)
}

fn forgotten_on_broker(key: BrokerGroup) {
    forgotten().lock().expect("forgotten lock").insert(key);
}
