//! A pooled connection that keeps the statements prepared on it, and the transaction a batch is
//! written in.
//!
//! Guarantees:
//! - A statement is parsed and planned once per connection, not once per batch: [`Tx`]'s
//!   `execute`, `query` and `copy_in` take SQL text and prepare it on the connection's first use
//!   of that text. A failed batch empties the connection's statements, and the failure a
//!   statement kept too long causes (a table altered under it: SQLSTATE 0A000 "cached plan must
//!   not change result type"; a statement the server does not know: 26000) is retried, not
//!   fatal. A server that forgets statements between transactions (a transaction-pooling proxy
//!   in front of it) turns keeping them off for the connection.
//! - A connection handed out by the pool is checked with a round trip only when it has not
//!   completed a statement for [`FRESH_FOR`] or its socket closed: a busy writer's checkout
//!   costs nothing, one that sat idle (through a restart of the server, say) is tested first.
//!   A peer that vanished without closing (a moved address, a cut network) is found by TCP
//!   keepalives on every session (see `DbSettings::pg_config`).

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
pub struct Statements {
    kept: Mutex<HashMap<String, Statement>>,
    /// The server forgot a kept statement: prepare in every transaction from now on.
    off: std::sync::atomic::AtomicBool,
}

/// SQLSTATEs a statement kept across transactions can cause and a fresh one cures.
const STALE_STATEMENT: [&str; 2] = ["0A000", "26000"];

impl Statements {
    fn get(&self, sql: &str) -> Option<Statement> {
        self.kept.lock().expect("statements lock").get(sql).cloned()
    }

    fn keep(&self, sql: &str, statement: Statement) {
        if self.off.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut map = self.kept.lock().expect("statements lock");
        if map.len() >= MAX_STATEMENTS {
            map.clear();
        }
        map.insert(sql.to_owned(), statement);
    }

    /// Forgets every statement (they are prepared again on next use).
    pub fn clear(&self) {
        self.kept.lock().expect("statements lock").clear();
    }

    /// After a failed batch: forgets every statement, and says whether the failure came from a
    /// kept statement gone stale (SQLSTATE `class` `SqlState0A000` or `SqlState26000` while
    /// statements were kept), which a retry with fresh statements cures. A statement the
    /// server no longer knows turns keeping off for good.
    pub fn failed(&self, class: &str) -> bool {
        let had = !self.is_empty();
        self.clear();
        let code = class.strip_prefix("SqlState").unwrap_or_default();
        if code == "26000" {
            self.off.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        had && STALE_STATEMENT.contains(&code)
    }

    /// How many statements are kept.
    pub fn len(&self) -> usize {
        self.kept.lock().expect("statements lock").len()
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
        if session.fresh() && !session.client.is_closed() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bb8::ManageConnection;

    fn local() -> Config {
        let mut c = Config::new();
        c.host("127.0.0.1")
            .port(5432)
            .user("postgres")
            .dbname("postgres");
        c
    }

    fn class(e: &Error) -> String {
        format!(
            "SqlState{}",
            e.as_db_error().expect("a server error").code().code()
        )
    }

    /// Against the local PostgreSQL: a kept statement whose table changed under it fails with
    /// 0A000 once and works prepared afresh; a server that forgot the statements (DEALLOCATE,
    /// as a transaction-pooling proxy does) fails with 26000 once and keeping turns off.
    #[tokio::test]
    async fn stale_statements_are_retried_fresh_and_forgotten_ones_turn_keeping_off() {
        let table = format!("actord_session_test_{}", std::process::id());
        let mut session = Sessions::new(local())
            .connect()
            .await
            .expect("local PostgreSQL");
        session
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (a int); INSERT INTO {table} VALUES (1)"
            ))
            .await
            .unwrap();
        let select = format!("SELECT a FROM {table}");
        {
            let tx = session.begin().await.unwrap();
            assert_eq!(tx.query(&select, &[]).await.unwrap().len(), 1);
            tx.commit().await.unwrap();
        }
        assert_eq!(session.statements().len(), 1, "kept");
        session
            .batch_execute(&format!("ALTER TABLE {table} ALTER COLUMN a TYPE bigint"))
            .await
            .unwrap();
        let err = {
            let tx = session.begin().await.unwrap();
            tx.query(&select, &[]).await.unwrap_err()
        };
        assert!(session.statements().failed(&class(&err)), "{err:?}");
        {
            let tx = session.begin().await.unwrap();
            let rows = tx.query(&select, &[]).await.unwrap();
            assert_eq!(rows[0].get::<_, i64>(0), 1);
            tx.commit().await.unwrap();
        }
        assert_eq!(session.statements().len(), 1, "kept afresh");
        // Keep one again, then let the server forget it.
        {
            let tx = session.begin().await.unwrap();
            tx.query(&select, &[]).await.unwrap();
            tx.commit().await.unwrap();
        }
        session.batch_execute("DEALLOCATE ALL").await.unwrap();
        let err = {
            let tx = session.begin().await.unwrap();
            tx.query(&select, &[]).await.unwrap_err()
        };
        assert_eq!(class(&err), "SqlState26000", "{err:?}");
        assert!(session.statements().failed(&class(&err)));
        {
            let tx = session.begin().await.unwrap();
            tx.query(&select, &[]).await.unwrap();
            tx.commit().await.unwrap();
        }
        assert!(session.statements().is_empty(), "keeping is off");
        assert!(
            !session.statements().failed("SqlState23505"),
            "other errors are not retried as stale"
        );
        session
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    }
}
