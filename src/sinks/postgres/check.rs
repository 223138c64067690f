//! The column-type check: existing tables compared with what a pipeline writes, so a table of
//! other types is a clear configuration error naming the table, the column and both types, never
//! a flood of dead letters.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::info;

use super::{connect_once, DbSettings};

/// Quotes an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A column a pipeline writes: its name, the `pg_type` names it accepts, and the type as
/// PostgreSQL prints it.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub accepts: &'static [&'static str],
    pub expected: &'static str,
}

pub const fn col(
    name: &'static str,
    accepts: &'static [&'static str],
    expected: &'static str,
) -> Column {
    Column {
        name,
        accepts,
        expected,
    }
}

pub const TIMESTAMPTZ: &[&str] = &["timestamptz"];
pub const TEXT: &[&str] = &["text", "varchar"];
pub const FLOAT8: &[&str] = &["float8"];
pub const INT8: &[&str] = &["int8"];
pub const INT4: &[&str] = &["int4"];
pub const JSONB: &[&str] = &["jsonb"];

/// A table and the columns a pipeline writes into it.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// Whether a NOT NULL column without a default that the pipeline does not write is a
    /// mismatch (every insert would fail); off for bookkeeping tables with columns of their own.
    pub strict: bool,
}

/// Reads the columns of the tables `$2` in the schema `$1`: table, column, `pg_type` name, the
/// type as printed, NOT NULL, and whether the server fills it (default, identity, generated).
const COLUMNS_QUERY: &str = "SELECT c.relname::text, a.attname::text, t.typname::text, \
    format_type(a.atttypid, a.atttypmod), a.attnotnull, \
    (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') \
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid \
    WHERE n.nspname = $1 AND c.relname = ANY($2) \
    AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum";

/// One column of an existing table.
#[derive(Clone, Debug)]
pub struct FoundColumn {
    pub table: String,
    pub column: String,
    pub type_name: String,
    pub printed: String,
    pub not_null: bool,
    pub filled: bool,
}

/// A table that does not take what the pipeline writes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("column {table}.{column} has type {found}, expected {expected}")]
    Type {
        table: String,
        column: String,
        found: String,
        expected: String,
    },
    #[error("column {table}.{column} is missing, expected {expected}")]
    Missing {
        table: String,
        column: String,
        expected: String,
    },
    #[error("column {table}.{column} ({found}) is NOT NULL without a default, and actord does not write it")]
    Unwritten {
        table: String,
        column: String,
        found: String,
    },
}

/// Compares the tables found in `schema` with `tables`; a table with no columns found does not
/// exist yet and is skipped.
pub fn mismatches(schema: &str, tables: &[Table], found: &[FoundColumn]) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for table in tables {
        let have: Vec<&FoundColumn> = found.iter().filter(|f| f.table == table.name).collect();
        if have.is_empty() {
            continue;
        }
        let qualified = format!("{schema}.{}", table.name);
        for c in table.columns {
            match have.iter().find(|f| f.column == c.name) {
                None => out.push(Mismatch::Missing {
                    table: qualified.clone(),
                    column: c.name.to_owned(),
                    expected: c.expected.to_owned(),
                }),
                Some(f) if !c.accepts.contains(&f.type_name.as_str()) => out.push(Mismatch::Type {
                    table: qualified.clone(),
                    column: c.name.to_owned(),
                    found: f.printed.clone(),
                    expected: c.expected.to_owned(),
                }),
                Some(_) => {}
            }
        }
        for f in have {
            let written = table.columns.iter().any(|c| c.name == f.column);
            if !written && f.not_null && !f.filled && table.strict {
                out.push(Mismatch::Unwritten {
                    table: qualified.clone(),
                    column: f.column.clone(),
                    found: f.printed.clone(),
                });
            }
        }
    }
    out
}

/// The columns of `tables` as they exist in `schema`.
pub async fn read_columns(
    client: &Client,
    schema: &str,
    tables: &[Table],
) -> Result<Vec<FoundColumn>, tokio_postgres::Error> {
    let names: Vec<&str> = tables.iter().map(|t| t.name).collect();
    let rows = client.query(COLUMNS_QUERY, &[&schema, &names]).await?;
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

/// How long the start-up check waits for the database before leaving the check to the path.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(3);

/// The start-up check: when the database answers within a few seconds, the existing `tables`
/// must take what the pipeline writes. Blocks the calling thread; a database that cannot be
/// reached is left to the path, which checks again when it connects.
pub fn preflight(settings: &DbSettings, tables: &[Table]) -> Result<(), Vec<Mismatch>> {
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
                        read_columns(&client, &settings.schema, tables).await.ok()
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
            let problems = mismatches(&settings.schema, tables, &found);
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems)
            }
        }
        None => {
            info!(host = %settings.host, port = settings.port, "the database does not answer yet; its tables are checked when the path connects");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKS: Table = Table {
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
    };

    fn found(table: &str, columns: &[(&str, &str, &str)]) -> Vec<FoundColumn> {
        columns
            .iter()
            .map(|(column, type_name, printed)| FoundColumn {
                table: table.to_owned(),
                column: (*column).to_owned(),
                type_name: (*type_name).to_owned(),
                printed: (*printed).to_owned(),
                not_null: false,
                filled: false,
            })
            .collect()
    }

    #[test]
    fn a_column_of_another_type_is_named_with_both_types() {
        let mut cols = found(
            "tick_data",
            &[
                ("time", "timestamptz", "timestamp with time zone"),
                ("symbol", "varchar", "character varying(16)"),
                ("price", "float8", "double precision"),
                ("volume", "int4", "integer"),
                ("change", "float8", "double precision"),
            ],
        );
        cols.extend(found("tick_data", &[("venue", "text", "text")]));
        cols.last_mut().unwrap().not_null = true;
        let got = mismatches("public", &[TICKS], &cols);
        assert_eq!(
            got.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "column public.tick_data.volume has type integer, expected bigint",
                "column public.tick_data.change_rate is missing, expected double precision",
                "column public.tick_data.venue (text) is NOT NULL without a default, and actord does not write it",
            ]
        );
        let lax = Table {
            strict: false,
            ..TICKS
        };
        assert_eq!(mismatches("public", &[lax], &cols).len(), 2);
    }

    #[test]
    fn matching_and_absent_tables_pass() {
        let mut cols = Vec::new();
        for c in TICKS.columns {
            cols.extend(found("tick_data", &[(c.name, c.accepts[0], c.expected)]));
        }
        let absent = Table {
            name: "orderbook",
            ..TICKS
        };
        assert_eq!(mismatches("public", &[TICKS, absent], &cols), []);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
