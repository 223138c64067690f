//! Start offsets read from the offsets table when partitions are assigned, and the ledger of
//! what this process wrote, which tells a table that lost commits from one that moved on.
//!
//! Guarantees:
//! - Every assignment reads the table: a partition that another process wrote in the meantime
//!   starts where that process left it, never where this process's memory of it stopped.
//! - The look-up runs inside librdkafka's rebalance callback, which cannot await. It runs on a
//!   thread of its own, with its own small runtime and a fresh connection, so it works under
//!   any runtime the consumer runs on and never waits for the writers' pool; it is bounded by
//!   [`LOOKUP_TIMEOUT`], and a failure fails the consumer instead of guessing an offset.
//! - The table's offsets only grow (every commit stores the larger of the batch's next offset
//!   and the stored one). So one found below the highest value this process has seen for the
//!   partition within this run, whoever wrote it, means the database lost commits (a failover
//!   to a standby that lacked them, a restore): the writer refuses to write past the hole (a
//!   fatal error, logged, counted and shown on /health), and the next assignment starts from
//!   the table's offset, so the lost rows are read from Kafka again and written once. "Seen"
//!   covers this process's own commits, the values it read at each assignment and the values
//!   it locked before each batch, so a partition written by another member in between is
//!   covered as soon as this process has looked at it.
//!
//! Limits: the marks live in memory for one run. A loss that happened before this process
//! first looked at a partition, or while it ran without looking (another member owned the
//! partition and this process neither held nor read it), is invisible here; so is everything
//! after a restart. Lowering a stored offset by hand while the path runs (to replay) reads as
//! a regression too: the path reports it and re-reads from the lowered offset, which is what
//! the replay asks for. With `forget_offsets` (the embedded broker, once per broker) the marks are dropped with
//! the rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::NoTls;
use tracing::error;

use super::check::{col, ident, Table, INT4, INT8, TEXT};
use super::error::describe;
use crate::telemetry::names;

/// The offsets table's columns as the sink reads and writes them.
pub const TABLE: Table = Table {
    name: "actord_offsets",
    columns: &[
        col("consumer_group", TEXT, "text"),
        col("topic", TEXT, "text"),
        col("partition", INT4, "integer"),
        col("next_offset", INT8, "bigint"),
    ],
    strict: false,
};

/// Creates the offsets table in `schema`.
pub fn create(schema: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.actord_offsets (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, \
         partition INT NOT NULL, next_offset BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
         PRIMARY KEY (consumer_group, topic, partition))",
        ident(schema)
    )
}

/// How long an assignment may wait for its start offsets.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A partition whose stored offset fell behind what this process wrote, until the table
/// catches up again.
#[derive(Clone, Debug)]
struct Hole {
    stored: i64,
    written: i64,
    at: chrono::DateTime<chrono::Utc>,
}

/// The highest next offset this process saw per partition (committed itself, or read from the
/// table), and the regressions found.
#[derive(Default)]
pub struct Ledger {
    written: Mutex<HashMap<(String, i32), i64>>,
    holes: Mutex<BTreeMap<(String, i32), Hole>>,
    /// The last regression, kept for /health after its hole is refilled.
    last: Mutex<Option<String>>,
}

impl Ledger {
    /// This process committed `next` as the partition's next offset.
    pub fn wrote(&self, topic: &str, partition: i32, next: i64) {
        let key = (topic.to_owned(), partition);
        let mut written = self.written.lock().expect("ledger lock");
        let w = written.entry(key.clone()).or_insert(next);
        *w = (*w).max(next);
        drop(written);
        let mut holes = self.holes.lock().expect("ledger lock");
        if holes.get(&key).is_some_and(|h| next >= h.written) {
            holes.remove(&key);
        }
    }

    /// The table held `stored` for the partition (read at an assignment or locked before a
    /// batch): the table never goes below it again unless it loses commits. Call it after
    /// [`Ledger::ahead_of`] found no regression.
    pub fn observed(&self, topic: &str, partition: i32, stored: i64) {
        if stored >= 0 {
            self.wrote(topic, partition, stored);
        }
    }

    /// The marks are void: this process deleted the group's stored offsets.
    pub fn forget(&self) {
        self.written.lock().expect("ledger lock").clear();
        self.holes.lock().expect("ledger lock").clear();
    }

    /// The highest offset this process saw for the partition, if it is above `stored`.
    pub fn ahead_of(&self, topic: &str, partition: i32, stored: i64) -> Option<i64> {
        self.written
            .lock()
            .expect("ledger lock")
            .get(&(topic.to_owned(), partition))
            .copied()
            .filter(|w| *w > stored)
    }

    /// Logs, counts and records a regression. `then` says what happens next.
    pub fn report(&self, topic: &str, partition: i32, stored: i64, written: i64, then: &str) {
        let at = chrono::Utc::now();
        error!(topic = %topic, partition, stored, written, then = %then, "offset regression: the offsets table is behind what this process saw or wrote there (the database lost commits: a failover to a standby that lacked them, or a restore)");
        metrics::counter!(names::TIMESCALE_OFFSET_REGRESSIONS_TOTAL).increment(1);
        self.holes.lock().expect("ledger lock").insert(
            (topic.to_owned(), partition),
            Hole {
                stored,
                written,
                at,
            },
        );
        *self.last.lock().expect("ledger lock") = Some(format!(
            "last offset regression at {}: {topic}[{partition}] stored {stored}, written {written}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }

    /// The partition starts again from the table's offset: what this process wrote above it
    /// is gone and will be written again.
    pub fn restart_from(&self, topic: &str, partition: i32, stored: i64) {
        self.written
            .lock()
            .expect("ledger lock")
            .insert((topic.to_owned(), partition), stored);
    }

    /// True while the partition's hole is not refilled.
    pub fn in_hole(&self, topic: &str, partition: i32) -> bool {
        self.holes
            .lock()
            .expect("ledger lock")
            .contains_key(&(topic.to_owned(), partition))
    }

    /// True while a hole is not refilled.
    pub fn has_holes(&self) -> bool {
        !self.holes.lock().expect("ledger lock").is_empty()
    }

    /// /health lines under `component`: open holes, then the last regression.
    pub fn notes(&self, component: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .holes
            .lock()
            .expect("ledger lock")
            .iter()
            .map(|((t, p), h)| {
                format!(
                    "{component}: offset regression on {t}[{p}] since {}: the table said {}, this process had seen or written up to {}; re-reading from the table's offset",
                    h.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    h.stored,
                    h.written
                )
            })
            .collect();
        if out.is_empty() {
            if let Some(last) = self.last.lock().expect("ledger lock").clone() {
                out.push(format!("{component}: {last} (refilled)"));
            }
        }
        out
    }
}

/// Reads the stored next offsets of `partitions` for `group`, blocking the calling thread.
/// Rows holding -1 (created by a write that never committed an offset) count as absent.
pub fn read_blocking(
    config: &tokio_postgres::Config,
    schema_name: &str,
    group: &str,
    partitions: &[(&str, i32)],
) -> Result<HashMap<(String, i32), i64>, String> {
    let topics: Vec<String> = partitions.iter().map(|(t, _)| (*t).to_owned()).collect();
    let parts: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
    let sql = format!(
        "SELECT topic, partition, next_offset FROM {}.actord_offsets \
         WHERE consumer_group = $1 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[]))",
        ident(schema_name)
    );
    std::thread::scope(|scope| {
        let lookup = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the offset look-up: {e}"))?;
            runtime.block_on(async {
                let read = async {
                    let (client, connection) =
                        config.connect(NoTls).await.map_err(|e| describe(&e))?;
                    tokio::spawn(connection);
                    let rows = client
                        .query(&sql, &[&group, &topics, &parts])
                        .await
                        .map_err(|e| describe(&e))?;
                    Ok(rows
                        .iter()
                        .map(|r| ((r.get(0), r.get(1)), r.get::<_, i64>(2)))
                        .filter(|(_, n)| *n >= 0)
                        .collect())
                };
                match tokio::time::timeout(LOOKUP_TIMEOUT, read).await {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "the offsets table did not answer within {LOOKUP_TIMEOUT:?}"
                    )),
                }
            })
        });
        lookup
            .join()
            .map_err(|_| "the offset look-up thread panicked".to_owned())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_behind_what_was_written_is_a_hole_until_refilled() {
        let ledger = Ledger::default();
        ledger.wrote("t", 0, 100);
        assert_eq!(ledger.ahead_of("t", 0, 60), Some(100));
        assert_eq!(ledger.ahead_of("t", 0, 100), None);
        assert_eq!(ledger.ahead_of("t", 1, 0), None, "never written here");
        ledger.report("t", 0, 60, 100, "re-reading");
        ledger.restart_from("t", 0, 60);
        assert!(ledger.has_holes());
        assert_eq!(ledger.ahead_of("t", 0, 60), None);
        ledger.wrote("t", 0, 80);
        assert!(ledger.has_holes(), "not yet back at 100");
        ledger.wrote("t", 0, 120);
        assert!(!ledger.has_holes());
        assert!(ledger.notes("timescaledb")[0].contains("t[0] stored 60, written 100 (refilled)"));
    }

    #[test]
    fn a_table_below_a_value_seen_there_is_a_regression() {
        let ledger = Ledger::default();
        // Another member wrote the partition up to 200; this process read it at assignment.
        assert_eq!(ledger.ahead_of("t", 0, 200), None);
        ledger.observed("t", 0, 200);
        assert_eq!(ledger.ahead_of("t", 0, 150), Some(200));
        ledger.observed("t", 0, -1);
        assert_eq!(ledger.ahead_of("t", 0, 199), Some(200), "-1 is no value");
        ledger.forget();
        assert_eq!(ledger.ahead_of("t", 0, 0), None);
    }

    #[test]
    fn another_process_moving_the_table_on_is_no_regression() {
        let ledger = Ledger::default();
        ledger.wrote("t", 0, 100);
        assert_eq!(ledger.ahead_of("t", 0, 250), None);
        ledger.wrote("t", 0, 40);
        assert_eq!(
            ledger.ahead_of("t", 0, 99),
            Some(100),
            "what was written stays the mark"
        );
    }
}
