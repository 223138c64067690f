//! The recorder's schema: tables, the offsets table, and the 1 min / 5 min / 1 h aggregates,
//! as TimescaleDB hypertables and continuous aggregates when the extension is available, else
//! plain tables, (symbol, time) indexes and ordinary materialized views.

/// Quotes an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Statements that hold in both modes, run in one transaction.
pub fn tables(schema: &str) -> Vec<String> {
    let s = ident(schema);
    vec![
        format!("CREATE SCHEMA IF NOT EXISTS {s}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.tick_data (time TIMESTAMPTZ NOT NULL, symbol TEXT NOT NULL, \
             price DOUBLE PRECISION, volume BIGINT, change DOUBLE PRECISION, change_rate DOUBLE PRECISION)"
        ),
        format!("CREATE TABLE IF NOT EXISTS {s}.orderbook (time TIMESTAMPTZ NOT NULL, symbol TEXT NOT NULL, bids JSONB, asks JSONB)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.actord_offsets (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, \
             partition INT NOT NULL, next_offset BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
             PRIMARY KEY (consumer_group, topic, partition))"
        ),
        format!("CREATE INDEX IF NOT EXISTS tick_data_symbol_time_idx ON {s}.tick_data (symbol, time DESC)"),
        format!("CREATE INDEX IF NOT EXISTS orderbook_symbol_time_idx ON {s}.orderbook (symbol, time DESC)"),
    ]
}

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

/// A column the COPY (or the offsets bookkeeping) writes: its name, the `pg_type` names it
/// accepts, and the type as PostgreSQL prints it.
pub struct Column {
    pub name: &'static str,
    pub accepts: &'static [&'static str],
    pub expected: &'static str,
}

const fn col(
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

const TIME: &[&str] = &["timestamptz"];
const TEXT: &[&str] = &["text", "varchar"];
const FLOAT8: &[&str] = &["float8"];
const INT8: &[&str] = &["int8"];
const JSONB: &[&str] = &["jsonb"];

/// What each table must hold for the binary COPY to fit: the binary format carries no type
/// conversion, so a column of another type fails every row alike.
pub const COLUMNS: &[(&str, &[Column])] = &[
    (
        "tick_data",
        &[
            col("time", TIME, "timestamp with time zone"),
            col("symbol", TEXT, "text"),
            col("price", FLOAT8, "double precision"),
            col("volume", INT8, "bigint"),
            col("change", FLOAT8, "double precision"),
            col("change_rate", FLOAT8, "double precision"),
        ],
    ),
    (
        "orderbook",
        &[
            col("time", TIME, "timestamp with time zone"),
            col("symbol", TEXT, "text"),
            col("bids", JSONB, "jsonb"),
            col("asks", JSONB, "jsonb"),
        ],
    ),
    (
        "actord_offsets",
        &[
            col("consumer_group", TEXT, "text"),
            col("topic", TEXT, "text"),
            col("partition", &["int4"], "integer"),
            col("next_offset", INT8, "bigint"),
        ],
    ),
];

/// Reads the columns of the recorder's tables in `$1` (the schema): table, column, `pg_type`
/// name, the type as printed, NOT NULL, and whether the server fills it (default, identity,
/// generated).
pub const COLUMNS_QUERY: &str = "SELECT c.relname::text, a.attname::text, t.typname::text, \
    format_type(a.atttypid, a.atttypmod), a.attnotnull, \
    (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') \
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid \
    WHERE n.nspname = $1 AND c.relname IN ('tick_data', 'orderbook', 'actord_offsets') \
    AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum";

/// One column of an existing table, as [`COLUMNS_QUERY`] reads it.
#[derive(Clone, Debug)]
pub struct FoundColumn {
    pub table: String,
    pub column: String,
    pub type_name: String,
    pub printed: String,
    pub not_null: bool,
    pub filled: bool,
}

/// A table that does not take what actord writes.
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

/// Compares the tables found in `schema` with [`COLUMNS`]; a table with no columns found does
/// not exist yet and is skipped.
pub fn mismatches(schema: &str, found: &[FoundColumn]) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for (table, columns) in COLUMNS {
        let have: Vec<&FoundColumn> = found.iter().filter(|f| f.table == *table).collect();
        if have.is_empty() {
            continue;
        }
        let qualified = format!("{schema}.{table}");
        for c in *columns {
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
            let written = columns.iter().any(|c| c.name == f.column);
            if !written && f.not_null && !f.filled && *table != "actord_offsets" {
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
        let got = mismatches("public", &cols);
        assert_eq!(
            got.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "column public.tick_data.volume has type integer, expected bigint",
                "column public.tick_data.change_rate is missing, expected double precision",
                "column public.tick_data.venue (text) is NOT NULL without a default, and actord does not write it",
            ]
        );
    }

    #[test]
    fn matching_and_absent_tables_pass() {
        let mut cols = Vec::new();
        for (table, columns) in COLUMNS.iter().take(2) {
            for c in *columns {
                cols.extend(found(table, &[(c.name, c.accepts[0], c.expected)]));
            }
        }
        assert_eq!(mismatches("public", &cols), []);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
