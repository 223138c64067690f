//! A pooled connection that keeps the statements prepared on it, and the transaction a batch is
//! written in.
//!
//! Guarantees:
//! - A statement is parsed and planned once per connection, not once per batch: [`Tx`]'s
//!   `execute`, `query` and `copy_in` take SQL text and prepare it on the connection's first use
//!   of that text. A failed batch empties the connection's statements (a table altered under a
//!   prepared statement is prepared again on the next attempt).
//! - A connection handed out by the pool is checked with a round trip only when it has not
//!   completed a statement for [`FRESH_FOR`]: a busy writer's checkout costs nothing, one that
//!   sat idle (through a restart of the server, say) is tested first. A socket that closed is
//!   dropped by the pool either way.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Buf;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, CopyInSink, Error, NoTls, Row, Statement, Transaction};

/// How long a connection that completed a statement counts as alive without a test.
pub const FRESH_FOR: Duration = Duration::from_secs(5);

/// Distinct statements kept per connection; more (SQL built per call) starts the set afresh.
const MAX_STATEMENTS: usize = 64;

/// A connection and the statements prepared on it.
pub struct Session {
    client: Client,
    statements: Statements,
    /// When a statement on this connection last completed.
    alive_at: Mutex<Instant>,
}

/// Prepared statements by their SQL text.
#[derive(Default)]
pub struct Statements(Mutex<HashMap<String, Statement>>);

impl Statements {
    fn get(&self, sql: &str) -> Option<Statement> {
        self.0.lock().expect("statements lock").get(sql).cloned()
    }

    fn keep(&self, sql: &str, statement: Statement) {
        let mut map = self.0.lock().expect("statements lock");
        if map.len() >= MAX_STATEMENTS {
            map.clear();
        }
        map.insert(sql.to_owned(), statement);
    }

    /// Forgets every statement (they are prepared again on next use).
    pub fn clear(&self) {
        self.0.lock().expect("statements lock").clear();
    }

    /// How many statements are kept.
    pub fn len(&self) -> usize {
        self.0.lock().expect("statements lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Session {
    fn new(client: Client) -> Self {
        Session {
            client,
            statements: Statements::default(),
            alive_at: Mutex::new(Instant::now()),
        }
    }

    /// A statement completed on this connection just now.
    pub fn alive(&self) {
        *self.alive_at.lock().expect("alive lock") = Instant::now();
    }

    fn fresh(&self) -> bool {
        self.alive_at.lock().expect("alive lock").elapsed() < FRESH_FOR
    }

    /// The statements prepared on this connection.
    pub fn statements(&self) -> &Statements {
        &self.statements
    }

    /// Opens a transaction whose statements are prepared once per connection.
    pub async fn begin(&mut self) -> Result<Tx<'_>, Error> {
        let Session {
            client, statements, ..
        } = self;
        let tx = client.transaction().await?;
        Ok(Tx { tx, statements })
    }
}

impl Deref for Session {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// A transaction whose `execute`, `query` and `copy_in` reuse the connection's prepared
/// statements; everything else of [`Transaction`] is reached through it.
pub struct Tx<'a> {
    tx: Transaction<'a>,
    statements: &'a Statements,
}

impl<'a> Tx<'a> {
    /// The statement for `sql`, prepared on this connection's first use of it.
    pub async fn prepared(&self, sql: &str) -> Result<Statement, Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s);
        }
        let s = self.tx.prepare(sql).await?;
        self.statements.keep(sql, s.clone());
        Ok(s)
    }

    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let s = self.prepared(sql).await?;
        self.tx.execute(&s, params).await
    }

    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let s = self.prepared(sql).await?;
        self.tx.query(&s, params).await
    }

    pub async fn copy_in<U>(&self, sql: &str) -> Result<CopyInSink<U>, Error>
    where
        U: Buf + 'static + Send,
    {
        let s = self.prepared(sql).await?;
        self.tx.copy_in(&s).await
    }

    pub async fn commit(self) -> Result<(), Error> {
        self.tx.commit().await
    }
}

impl<'a> Deref for Tx<'a> {
    type Target = Transaction<'a>;

    fn deref(&self) -> &Transaction<'a> {
        &self.tx
    }
}

/// The pool's connection manager: sessions over plain TCP.
pub struct Sessions {
    config: Config,
}

impl Sessions {
    pub fn new(config: Config) -> Self {
        Sessions { config }
    }
}

impl bb8::ManageConnection for Sessions {
    type Connection = Session;
    type Error = Error;

    async fn connect(&self) -> Result<Session, Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(connection);
        Ok(Session::new(client))
    }

    async fn is_valid(&self, session: &mut Session) -> Result<(), Error> {
        if session.fresh() {
            return Ok(());
        }
        session.client.simple_query("").await?;
        session.alive();
        Ok(())
    }

    fn has_broken(&self, session: &mut Session) -> bool {
        session.client.is_closed()
    }
}
