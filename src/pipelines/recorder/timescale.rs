//! The recorder's PostgreSQL part: the seed's tables, the 1 min / 5 min / 1 h aggregates (as
//! TimescaleDB hypertables and continuous aggregates when the extension loads, else plain tables,
//! (symbol, time) indexes and ordinary materialized views), and the binary COPY of a batch.
//!
//! Two TimescaleDB states besides a working one are common: the extension absent (plain mode,
//! said in the log and on /health), and its files installed without the library in
//! `shared_preload_libraries`. In the second, CREATE EXTENSION answers FATAL and the server
//! closes the connection: the set-up falls back to plain tables on a fresh connection, once,
//! and says how to enable the extension.

use std::sync::atomic::{AtomicU8, Ordering};

use actord_actors::record::Envelope;
use actord_actors::sink::{Progress, SinkError};
use actord_actors::ErrorKind;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{pin_mut, SinkExt};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::copy::{CopyRows, EncodeError, ORDER_BOOK_COLUMNS, TICK_COLUMNS};
use super::model::Market;
use crate::sinks::postgres::check::{col, FLOAT8, INT8, JSONB, TEXT, TIMESTAMPTZ};
use crate::sinks::postgres::error::pg;
use crate::sinks::postgres::{
    connect_once, describe, ident, Classifier, DbSettings, Setup, Table, Tx, Writes,
};

/// Statements that hold in both modes, run in one transaction.
pub fn tables(schema: &str) -> Vec<String> {
    let s = ident(schema);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.tick_data (time TIMESTAMPTZ NOT NULL, symbol TEXT NOT NULL, \
             price DOUBLE PRECISION, volume BIGINT, change DOUBLE PRECISION, change_rate DOUBLE PRECISION)"
        ),
        format!("CREATE TABLE IF NOT EXISTS {s}.orderbook (time TIMESTAMPTZ NOT NULL, symbol TEXT NOT NULL, bids JSONB, asks JSONB)"),
        format!("CREATE INDEX IF NOT EXISTS tick_data_symbol_time_idx ON {s}.tick_data (symbol, time DESC)"),
        format!("CREATE INDEX IF NOT EXISTS orderbook_symbol_time_idx ON {s}.orderbook (symbol, time DESC)"),
    ]
}

/// What each table must hold for the binary COPY to fit: the binary format carries no type
/// conversion, so a column of another type fails every row alike.
pub const COLUMNS: [Table; 2] = [
    Table {
        name: "tick_data",
        columns: &[
            col("time", TIMESTAMPTZ, "timestamp with time zone"),
            col("symbol", TEXT, "text"),
            col("price", FLOAT8, "double precision"),
            col("volume", INT8, "bigint"),
            col("change", FLOAT8, "double precision"),
            col("change_rate", FLOAT8, "double precision"),
        ],
        strict: true,
    },
    Table {
        name: "orderbook",
        columns: &[
            col("time", TIMESTAMPTZ, "timestamp with time zone"),
            col("symbol", TEXT, "text"),
            col("bids", JSONB, "jsonb"),
            col("asks", JSONB, "jsonb"),
        ],
        strict: true,
    },
];

/// The aggregates: name, bucket width as an interval, and the refresh policy's start offset.
pub const AGGREGATES: [(&str, &str, &str); 3] = [
    ("tick_1min", "1 minute", "1 hour"),
    ("tick_5min", "5 minutes", "1 day"),
    ("tick_1hour", "1 hour", "7 days"),
];

/// The extension's name.
pub const EXTENSION: &str = "timescaledb";

/// TimescaleDB 2.x: hypertables, continuous aggregates and their refresh policies. Continuous
/// aggregates cannot be created inside a transaction, so each statement runs on its own.
///
/// The aggregates answer with real-time aggregation (`materialized_only = false`: buckets not
/// yet materialized are computed from the table, as new aggregates otherwise answer nothing
/// until their first refresh), and `WITH DATA` materializes the rows that existed before them.
/// `extension` is [`EXTENSION`] except in tests.
pub fn timescale(schema: &str, extension: &str) -> Vec<String> {
    let s = ident(schema);
    let mut out = vec![
        format!("CREATE EXTENSION IF NOT EXISTS {}", ident(extension)),
        format!("SELECT create_hypertable('{s}.tick_data', 'time', if_not_exists => TRUE)"),
        format!("SELECT create_hypertable('{s}.orderbook', 'time', if_not_exists => TRUE)"),
    ];
    for (name, width, start) in AGGREGATES {
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {s}.{name} \
             WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS \
             SELECT time_bucket(INTERVAL '{width}', time) AS bucket, symbol, \
             first(price, time) AS open, max(price) AS high, min(price) AS low, last(price, time) AS close, \
             sum(volume) AS volume FROM {s}.tick_data GROUP BY bucket, symbol WITH DATA"
        ));
        // An aggregate created by an earlier version keeps its options through IF NOT EXISTS.
        out.push(format!(
            "ALTER MATERIALIZED VIEW {s}.{name} SET (timescaledb.materialized_only = false)"
        ));
        out.push(format!(
            "SELECT add_continuous_aggregate_policy('{s}.{name}', start_offset => INTERVAL '{start}', \
             end_offset => INTERVAL '{width}', schedule_interval => INTERVAL '{width}', if_not_exists => TRUE)"
        ));
    }
    out
}

/// Plain PostgreSQL: materialized views of the same names and columns, refreshed on a schedule;
/// a unique (bucket, symbol) index lets them refresh concurrently.
pub fn plain(schema: &str) -> Vec<String> {
    let s = ident(schema);
    let mut out = Vec::new();
    for (name, width, _) in AGGREGATES {
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {s}.{name} AS \
             SELECT date_bin(INTERVAL '{width}', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, symbol, \
             (array_agg(price ORDER BY time))[1] AS open, max(price) AS high, min(price) AS low, \
             (array_agg(price ORDER BY time DESC))[1] AS close, sum(volume)::BIGINT AS volume \
             FROM {s}.tick_data GROUP BY bucket, symbol"
        ));
        out.push(format!("CREATE UNIQUE INDEX IF NOT EXISTS {name}_bucket_symbol_idx ON {s}.{name} (bucket, symbol)"));
    }
    out
}

/// Refreshes of the plain-mode views.
pub fn refresh(schema: &str) -> Vec<String> {
    let s = ident(schema);
    AGGREGATES
        .iter()
        .map(|(name, _, _)| format!("REFRESH MATERIALIZED VIEW CONCURRENTLY {s}.{name}"))
        .collect()
}

/// How the schema was set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Unknown = 0,
    Timescale = 1,
    Plain = 2,
}

/// Names the extension the set-up probes instead of `timescaledb`. Only the tests use it: they
/// install a stub under another name, so that a fake `timescaledb` in the shared server's
/// extension directory does not change what every other test sees.
const TEST_EXTENSION_VAR: &str = "ACTORD_TEST_TIMESCALEDB_EXTENSION";

fn extension_name() -> String {
    std::env::var(TEST_EXTENSION_VAR)
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| EXTENSION.to_owned())
}

/// The recorder's tables, and how they were set up.
#[derive(Default)]
pub struct RecorderTables {
    mode: AtomicU8,
}

impl RecorderTables {
    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::Timescale,
            2 => Mode::Plain,
            _ => Mode::Unknown,
        }
    }

    /// TimescaleDB where it loads, plain tables and views otherwise; the mode and its note.
    async fn aggregates(
        &self,
        settings: &DbSettings,
        mut client: Client,
    ) -> Result<(Mode, String), SinkError> {
        let schema_name = &settings.schema;
        let extension = extension_name();
        let available = client
            .query_opt(
                "SELECT 1 FROM pg_available_extensions WHERE name = $1",
                &[&extension],
            )
            .await
            .map_err(pg)?
            .is_some();
        let mut note =
            "timescaledb: extension not available, plain PostgreSQL tables and materialized views"
                .to_owned();
        if available {
            match run_all(&client, &timescale(schema_name, &extension)).await {
                Ok(()) => {
                    info!(schema = %schema_name, "timescaledb: hypertables and continuous aggregates");
                    return Ok((
                        Mode::Timescale,
                        "timescaledb: hypertables and continuous aggregates".to_owned(),
                    ));
                }
                Err(e) => {
                    let closed = client.is_closed()
                        || e.is_closed()
                        || e.as_db_error().is_some_and(|d| d.severity() == "FATAL");
                    if closed {
                        let fix = format!("add {extension} to shared_preload_libraries in postgresql.conf and restart PostgreSQL");
                        warn!(schema = %schema_name, extension = %extension, error = %describe(&e), fix = %fix, "the timescaledb extension is installed but the server closed the connection while loading it, as it does when the library is not preloaded; using plain tables");
                        note = format!("timescaledb: installed but not loaded ({fix}), plain PostgreSQL tables and materialized views");
                    } else {
                        warn!(schema = %schema_name, extension = %extension, error = %describe(&e), "the timescaledb extension is available but could not be set up; using plain tables");
                        note = format!("timescaledb: available but could not be set up ({}), plain PostgreSQL tables and materialized views", describe(&e));
                    }
                    // The failed statement may have ended the session, and a half-run set-up
                    // must not leave an aborted state behind: the plain set-up gets a fresh
                    // connection.
                    client = connect_once(settings, None).await?;
                }
            }
        }
        run_all(&client, &plain(schema_name)).await.map_err(pg)?;
        info!(schema = %schema_name, "timescaledb is not in use: plain PostgreSQL tables, (symbol, time) indexes and materialized views refreshed on a schedule");
        Ok((Mode::Plain, note))
    }
}

async fn run_all(client: &Client, statements: &[String]) -> Result<(), tokio_postgres::Error> {
    for stmt in statements {
        client.batch_execute(stmt).await?;
    }
    Ok(())
}

impl Setup for RecorderTables {
    fn tables(&self, schema: &str) -> Vec<String> {
        tables(schema)
    }

    fn columns(&self) -> Vec<Table> {
        COLUMNS.to_vec()
    }

    fn finish<'a>(
        &'a self,
        settings: &'a DbSettings,
        client: Client,
    ) -> BoxFuture<'a, Result<Option<String>, SinkError>> {
        Box::pin(async move {
            let (mode, note) = self.aggregates(settings, client).await?;
            self.mode.store(mode as u8, Ordering::Release);
            Ok(Some(note))
        })
    }
}

/// A COPY's bytes are sent once more than this has been encoded (as `tokio_postgres`'s binary
/// COPY writer does).
const CHUNK_BYTES: usize = 4096;

/// A row that has no binary form reads as the client library's own encoding error did: not
/// from the server, so transient.
fn encode_error(e: EncodeError) -> SinkError {
    SinkError::new(ErrorKind::Transient, "ConnectionError", e.to_string())
}

/// Rows sent to a COPY between two progress reports.
pub const PROGRESS_EVERY: usize = 10_000;

/// The recorder's batch: ticks and order books by binary COPY, reporting progress every
/// `progress_every` rows sent, so a long COPY that moves is not taken for a stuck one.
pub struct MarketCopy {
    pub progress_every: usize,
}

impl Default for MarketCopy {
    fn default() -> Self {
        MarketCopy {
            progress_every: PROGRESS_EVERY,
        }
    }
}

/// Counts rows sent and reports every `every` of them.
struct Sent<'a> {
    progress: &'a Progress,
    every: u64,
    pending: u64,
}

impl Sent<'_> {
    fn one(&mut self) {
        self.pending += 1;
        if self.pending >= self.every {
            self.progress.advanced(self.pending, 0);
            self.pending = 0;
        }
    }
}

impl Writes<Market> for MarketCopy {
    async fn write(
        &self,
        tx: &Tx<'_>,
        schema: &str,
        records: &[&Envelope<Market>],
        progress: &Progress,
        errors: &Classifier,
    ) -> Result<u64, SinkError> {
        let pg = |e: tokio_postgres::Error| errors.sink_error(&e);
        let s = ident(schema);
        let mut sent = Sent {
            progress,
            every: self.progress_every.max(1) as u64,
            pending: 0,
        };
        let mut written = 0u64;
        let ticks = records.iter().any(|e| matches!(e.record, Market::Tick(_)));
        let books = records
            .iter()
            .any(|e| matches!(e.record, Market::OrderBook(_)));
        // A COPY without rows is a round trip for nothing.
        if ticks {
            let copy = tx
                .copy_in::<Bytes>(&format!(
                    "COPY {s}.tick_data ({TICK_COLUMNS}) FROM STDIN (FORMAT binary)"
                ))
                .await
                .map_err(pg)?;
            pin_mut!(copy);
            let mut rows = CopyRows::new();
            for e in records {
                if let Market::Tick(t) = &e.record {
                    rows.tick(t).map_err(encode_error)?;
                    if rows.len() > CHUNK_BYTES {
                        copy.send(rows.take()).await.map_err(pg)?;
                    }
                    written += 1;
                    sent.one();
                }
            }
            copy.send(rows.finish()).await.map_err(pg)?;
            copy.finish().await.map_err(pg)?;
        }
        if books {
            let copy = tx
                .copy_in::<Bytes>(&format!(
                    "COPY {s}.orderbook ({ORDER_BOOK_COLUMNS}) FROM STDIN (FORMAT binary)"
                ))
                .await
                .map_err(pg)?;
            pin_mut!(copy);
            let mut rows = CopyRows::new();
            for e in records {
                if let Market::OrderBook(o) = &e.record {
                    rows.order_book(o).map_err(encode_error)?;
                    if rows.len() > CHUNK_BYTES {
                        copy.send(rows.take()).await.map_err(pg)?;
                    }
                    written += 1;
                    sent.one();
                }
            }
            copy.send(rows.finish()).await.map_err(pg)?;
            copy.finish().await.map_err(pg)?;
        }
        if sent.pending > 0 {
            progress.advanced(sent.pending, 0);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timescale_statements_use_the_2x_api() {
        let sql = timescale("market", EXTENSION).join(";\n");
        assert!(sql
            .contains("create_hypertable('\"market\".tick_data', 'time', if_not_exists => TRUE)"));
        assert!(sql.contains("CREATE MATERIALIZED VIEW IF NOT EXISTS \"market\".tick_1min WITH (timescaledb.continuous"));
        assert!(sql.contains("time_bucket(INTERVAL '5 minutes', time)"));
        assert!(sql.contains("first(price, time) AS open"));
        assert!(sql.contains("last(price, time) AS close"));
        assert!(sql.starts_with("CREATE EXTENSION IF NOT EXISTS \"timescaledb\""));
        assert!(sql.contains(
            "add_continuous_aggregate_policy('\"market\".tick_1hour', start_offset => INTERVAL '7 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE)"
        ));
        // Each continuous aggregate is its own statement (never inside a transaction block).
        assert_eq!(
            timescale("market", EXTENSION)
                .iter()
                .filter(|s| s.contains("timescaledb.continuous"))
                .count(),
            3
        );
    }

    #[test]
    fn continuous_aggregates_answer_with_recent_data_and_materialize_existing_data() {
        let statements = timescale("public", EXTENSION);
        for (name, _, _) in AGGREGATES {
            let create = statements
                .iter()
                .find(|s| {
                    s.starts_with(&format!(
                        "CREATE MATERIALIZED VIEW IF NOT EXISTS \"public\".{name} "
                    ))
                })
                .unwrap();
            assert!(
                create.contains(
                    "WITH (timescaledb.continuous, timescaledb.materialized_only = false)"
                ),
                "{create}"
            );
            assert!(create.ends_with(" WITH DATA"), "{create}");
            // An aggregate made by an earlier version keeps its options unless altered.
            assert!(statements.contains(&format!(
                "ALTER MATERIALIZED VIEW \"public\".{name} SET (timescaledb.materialized_only = false)"
            )));
        }
        assert!(!statements.join(";").contains("WITH NO DATA"));
    }
}
