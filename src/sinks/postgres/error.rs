//! PostgreSQL errors: what a SQLSTATE means for a batch, and how an error reads in a log line
//! or on /health (the server's message, SQLSTATE and detail, never a bare "db error").

use std::sync::Arc;

use actord_actors::sink::SinkError;
use actord_actors::ErrorKind;
use tokio_postgres::error::DbError;

/// A pipeline's own reading of some SQLSTATEs, consulted before [`classify_code`]; `None` leaves
/// the code to the default. Commerce, whose orders may arrive before the customer they name,
/// makes a foreign-key violation (23503) transient.
pub type Override = Arc<dyn Fn(&str) -> Option<ErrorKind> + Send + Sync>;

/// How a path's sink reads errors: the default classes, with a pipeline's override first.
#[derive(Clone, Default)]
pub struct Classifier {
    over: Option<Override>,
}

impl Classifier {
    /// `over` is asked first for every SQLSTATE.
    pub fn with_override(over: impl Fn(&str) -> Option<ErrorKind> + Send + Sync + 'static) -> Self {
        Classifier {
            over: Some(Arc::new(over)),
        }
    }

    pub fn code(&self, code: &str) -> ErrorKind {
        self.over
            .as_ref()
            .and_then(|f| f(code))
            .unwrap_or_else(|| classify_code(code))
    }

    /// The kind of a client error; one that never reached the server is transient.
    pub fn kind(&self, err: &tokio_postgres::Error) -> ErrorKind {
        match err.as_db_error() {
            Some(db) => self.code(db.code().code()),
            None => ErrorKind::Transient,
        }
    }

    /// A write or query error as a writer sees it: its kind, a class for the DLQ
    /// (`SqlState23514`) and the described message.
    ///
    /// 22P03 and 42804 say the table holds columns of other types than the pipeline writes
    /// (altered while the path ran): a misconfiguration, so the path stops and stays stopped
    /// instead of failing every batch alike under its restart budget.
    pub fn sink_error(&self, err: &tokio_postgres::Error) -> SinkError {
        let code = err.as_db_error().map(|d| d.code().code());
        let class = code
            .map(|c| format!("SqlState{c}"))
            .unwrap_or_else(|| "ConnectionError".to_owned());
        let kind = self.kind(err);
        let message = match code {
            Some(c) if kind == ErrorKind::Fatal && TABLE_MISMATCH.contains(&c) => {
                actord_actors::error::misconfigured(format!(
                    "the table does not take what the path writes: {}",
                    describe(err)
                ))
            }
            _ => describe(err),
        };
        SinkError::new(kind, class, message)
    }

    /// A failure to get a pooled connection.
    pub fn run_error(&self, err: bb8::RunError<tokio_postgres::Error>) -> SinkError {
        match err {
            bb8::RunError::User(e) => self.sink_error(&e),
            bb8::RunError::TimedOut => {
                SinkError::transient("timed out waiting for a database connection")
            }
        }
    }
}

/// SQLSTATEs that mean the table's columns are of other types than the pipeline writes.
const TABLE_MISMATCH: [&str; 2] = ["22P03", "42804"];

/// What an error with this SQLSTATE means for the batch that met it.
///
/// Transient (retried, never dead-lettered): 08 connection, 40 rollback, 53 resources,
/// 57P0x shutdown, 57014 a statement cancelled by `statement_timeout`, 55P03 a lock not
/// granted within `lock_timeout`, 25006 a read-only transaction (a failover left the session
/// on a standby, or the new primary is not promoted yet). Poison: 22 data and 23502/23514
/// constraint failures. Fatal: 22P03 (binary COPY data that does not fit the column's type)
/// and 42804 (a column of another type) mean the table differs from what actord writes, so
/// every row would fail alike; the rest of 42 is a bug; anything unknown stops the path.
pub fn classify_code(code: &str) -> ErrorKind {
    match code {
        "22P03" | "42804" => ErrorKind::Fatal,
        "57014" | "55P03" | "25006" => ErrorKind::Transient,
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

/// The kind of a client error; one that never reached the server (refused, closed, timed out)
/// is transient.
pub fn classify(err: &tokio_postgres::Error) -> ErrorKind {
    match err.as_db_error() {
        Some(db) => classify_code(db.code().code()),
        None => ErrorKind::Transient,
    }
}

/// One line for logs and /health: `SEVERITY: message (SQLSTATE xxxxx); detail: …; hint: …`
/// for a server error, the client's own description (with its cause) otherwise.
pub fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => describe_db(db),
        // Display already appends the cause: "error connecting to server: Connection refused".
        None => err.to_string(),
    }
}

fn describe_db(db: &DbError) -> String {
    let mut out = format!(
        "{}: {} (SQLSTATE {})",
        db.severity(),
        db.message(),
        db.code().code()
    );
    let mut add = |label: &str, value: Option<&str>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.push_str(&format!("; {label}: {}", v.replace('\n', " ")));
        }
    };
    add("detail", db.detail());
    add("hint", db.hint());
    add("table", db.table());
    add("column", db.column());
    add("constraint", db.constraint());
    add("where", db.where_());
    out
}

/// A set-up or query error with the default classes (see [`Classifier::sink_error`]).
pub fn pg(err: tokio_postgres::Error) -> SinkError {
    Classifier::default().sink_error(&err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_of_other_types_is_fatal_not_poison() {
        assert_eq!(classify_code("22P03"), ErrorKind::Fatal);
        assert_eq!(classify_code("42804"), ErrorKind::Fatal);
        // Other data errors stay poison: one bad row, not a bad table.
        assert_eq!(classify_code("22003"), ErrorKind::Poison);
        assert_eq!(classify_code("23514"), ErrorKind::Poison);
        assert_eq!(classify_code("42P01"), ErrorKind::Fatal);
    }

    #[test]
    fn a_pipeline_override_comes_first() {
        let c = Classifier::with_override(|code| (code == "23503").then_some(ErrorKind::Transient));
        assert_eq!(c.code("23503"), ErrorKind::Transient);
        assert_eq!(Classifier::default().code("23503"), ErrorKind::Fatal);
        assert_eq!(c.code("23514"), ErrorKind::Poison, "the rest as by default");
    }

    #[test]
    fn timeouts_and_a_read_only_server_are_transient() {
        for code in [
            "57014", "55P03", "25006", "57P01", "08006", "40001", "53300",
        ] {
            assert_eq!(classify_code(code), ErrorKind::Transient, "{code}");
        }
    }
}
