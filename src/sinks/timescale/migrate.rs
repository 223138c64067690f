//! Schema set-up at a path's first connection: the tables, a check that existing tables take
//! what the COPY writes, TimescaleDB where it loads and plain tables where it does not.
//!
//! Two TimescaleDB states besides a working one are common: the extension absent (plain mode,
//! said in the log and on /health), and its files installed without the library in
//! `shared_preload_libraries`. In the second, CREATE EXTENSION answers FATAL and the server
//! closes the connection: the set-up falls back to plain tables on a fresh connection, once,
//! and says how to enable the extension.

use std::time::Duration;

use actord_actors::sink::SinkError;
use tokio_postgres::Client;
use tracing::{error, info, warn};

use super::error::{describe, pg};
use super::schema::{self, FoundColumn, Mismatch};
use super::{connect_once, DbSettings, Mode, Shared};

/// Names the extension the set-up probes instead of `timescaledb`. Only the tests use it: they
/// install a stub under another name, so that a fake `timescaledb` in the shared server's
/// extension directory does not change what every other test sees.
const TEST_EXTENSION_VAR: &str = "ACTORD_TEST_TIMESCALEDB_EXTENSION";

fn extension_name() -> String {
    std::env::var(TEST_EXTENSION_VAR)
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| schema::EXTENSION.to_owned())
}

/// How long the start-up check waits for the database before leaving the check to the path.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(3);

/// Sets up the schema; returns the mode and the line /health shows about it.
pub(super) async fn migrate(shared: &Shared) -> Result<(Mode, String), SinkError> {
    let settings = &shared.settings;
    let schema_name = &settings.schema;
    // Its own session without a statement timeout: a continuous aggregate created WITH DATA
    // over a large table may take long.
    let mut client = connect_once(settings, None).await?;
    {
        // One migration at a time, across writers and processes.
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock(7302451)", &[])
            .await
            .map_err(pg)?;
        for stmt in schema::tables(schema_name) {
            tx.batch_execute(&stmt).await.map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
    }
    let problems = schema::mismatches(
        schema_name,
        &read_columns(&client, schema_name).await.map_err(pg)?,
    );
    if !problems.is_empty() {
        for problem in &problems {
            error!(schema = %schema_name, problem = %problem, "a table does not take what the recorder writes");
        }
        // No restart mends a table: the path stops and stays stopped until an operator fixes
        // the table and restarts it.
        return Err(SinkError::misconfigured(mismatch_message(&problems)));
    }

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
    let mut mode = Mode::Plain;
    if available {
        match run_all(&client, &schema::timescale(schema_name, &extension)).await {
            Ok(()) => mode = Mode::Timescale,
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
                // The failed statement may have ended the session, and a half-run set-up must
                // not leave an aborted state behind: the plain set-up gets a fresh connection.
                client = connect_once(settings, None).await?;
            }
        }
    }
    if mode == Mode::Plain {
        run_all(&client, &schema::plain(schema_name))
            .await
            .map_err(pg)?;
        info!(schema = %schema_name, "timescaledb is not in use: plain PostgreSQL tables, (symbol, time) indexes and materialized views refreshed on a schedule");
    } else {
        note = "timescaledb: hypertables and continuous aggregates".to_owned();
        info!(schema = %schema_name, "timescaledb: hypertables and continuous aggregates");
    }
    if settings.forget_offsets {
        let gone = client
            .execute(
                &format!(
                    "DELETE FROM {}.actord_offsets WHERE consumer_group = $1",
                    schema::ident(schema_name)
                ),
                &[&shared.group],
            )
            .await
            .map_err(pg)?;
        shared.ledger.forget();
        if gone > 0 {
            info!(group = %shared.group, partitions = gone, "embedded broker: offsets stored by an earlier run no longer apply, forgotten");
        }
    }
    Ok((mode, note))
}

async fn run_all(client: &Client, statements: &[String]) -> Result<(), tokio_postgres::Error> {
    for stmt in statements {
        client.batch_execute(stmt).await?;
    }
    Ok(())
}

async fn read_columns(
    client: &Client,
    schema_name: &str,
) -> Result<Vec<FoundColumn>, tokio_postgres::Error> {
    let rows = client.query(schema::COLUMNS_QUERY, &[&schema_name]).await?;
    Ok(rows
        .iter()
        .map(|r| FoundColumn {
            table: r.get(0),
            column: r.get(1),
            type_name: r.get(2),
            printed: r.get(3),
            not_null: r.get(4),
            filled: r.get(5),
        })
        .collect())
}

fn mismatch_message(problems: &[Mismatch]) -> String {
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!(
        "the existing tables do not take what the recorder writes: {}; alter the columns or set another schema (a binary COPY converts no types, so every row would fail)",
        list.join("; ")
    )
}

/// The start-up check: when the database answers within a few seconds, the existing tables
/// must take what the recorder writes. Blocks the calling thread; a database that cannot be
/// reached is left to the path, which checks again when it connects.
pub fn preflight(settings: &DbSettings) -> Result<(), Vec<Mismatch>> {
    let found = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(async {
                    let check = async {
                        let client = connect_once(settings, Some(PREFLIGHT_TIMEOUT)).await.ok()?;
                        read_columns(&client, &settings.schema).await.ok()
                    };
                    tokio::time::timeout(PREFLIGHT_TIMEOUT, check)
                        .await
                        .ok()
                        .flatten()
                })
            })
            .join()
            .ok()
            .flatten()
    });
    match found {
        Some(found) => {
            let problems = schema::mismatches(&settings.schema, &found);
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems)
            }
        }
        None => {
            info!(host = %settings.host, port = settings.port, "the database does not answer yet; its tables are checked when the recorder connects");
            Ok(())
        }
    }
}
