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

/// TimescaleDB 2.x: hypertables, continuous aggregates and their refresh policies. Continuous
/// aggregates cannot be created inside a transaction, so each statement runs on its own.
pub fn timescale(schema: &str) -> Vec<String> {
    let s = ident(schema);
    let mut out = vec![
        "CREATE EXTENSION IF NOT EXISTS timescaledb".to_owned(),
        format!("SELECT create_hypertable('{s}.tick_data', 'time', if_not_exists => TRUE)"),
        format!("SELECT create_hypertable('{s}.orderbook', 'time', if_not_exists => TRUE)"),
    ];
    for (name, width, start) in AGGREGATES {
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {s}.{name} WITH (timescaledb.continuous) AS \
             SELECT time_bucket(INTERVAL '{width}', time) AS bucket, symbol, \
             first(price, time) AS open, max(price) AS high, min(price) AS low, last(price, time) AS close, \
             sum(volume) AS volume FROM {s}.tick_data GROUP BY bucket, symbol WITH NO DATA"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timescale_statements_use_the_2x_api() {
        let sql = timescale("market").join(";\n");
        assert!(sql
            .contains("create_hypertable('\"market\".tick_data', 'time', if_not_exists => TRUE)"));
        assert!(sql.contains("CREATE MATERIALIZED VIEW IF NOT EXISTS \"market\".tick_1min WITH (timescaledb.continuous)"));
        assert!(sql.contains("time_bucket(INTERVAL '5 minutes', time)"));
        assert!(sql.contains("first(price, time) AS open"));
        assert!(sql.contains("last(price, time) AS close"));
        assert!(sql.contains("WITH NO DATA"));
        assert!(sql.contains(
            "add_continuous_aggregate_policy('\"market\".tick_1hour', start_offset => INTERVAL '7 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE)"
        ));
        // Each continuous aggregate is its own statement (never inside a transaction block).
        assert_eq!(
            timescale("market")
                .iter()
                .filter(|s| s.contains("timescaledb.continuous"))
                .count(),
            3
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
