//! `PostgresSink`: one writer's handle on the database. A batch is written by the pipeline's
//! [`Writes`] inside one transaction; on a Kafka path the transaction also locks and moves the
//! batch's partitions' stored offsets, and drops records below them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use actord_actors::record::{DeadLetter, Envelope};
use actord_actors::sink::{Progress, Sink, SinkError};
use actord_actors::ErrorKind;
use tracing::error;

use super::check::ident;
use super::session::Tx;
use super::{Classifier, Database};
use crate::telemetry::names;

/// The per-pipeline part of a PostgreSQL path: writes one batch inside the transaction the sink
/// opened (and commits). It must leave the transaction usable on success; an error aborts it.
pub trait Writes<R>: Send + Sync + 'static {
    /// Writes `records` into the tables of `schema`; returns the rows written. A long write
    /// reports through `progress` as it moves; errors are read with `errors` (the path's
    /// classes). Statements run through `tx` are prepared once per connection.
    fn write(
        &self,
        tx: &Tx<'_>,
        schema: &str,
        records: &[&Envelope<R>],
        progress: &Progress,
        errors: &Classifier,
    ) -> impl Future<Output = Result<u64, SinkError>> + Send;
}

/// Batches queued behind each other a writer commits in one transaction.
pub const GROUP_BATCHES: usize = 8;

/// One writer's handle on the database.
pub struct PostgresSink<R, W> {
    db: Arc<Database>,
    writes: Arc<W>,
    progress: Progress,
    _records: std::marker::PhantomData<fn() -> R>,
}

impl<R, W> PostgresSink<R, W>
where
    R: Send + Sync + 'static,
    W: Writes<R>,
{
    pub(super) fn new(db: Arc<Database>, writes: Arc<W>) -> Self {
        PostgresSink {
            db,
            writes,
            progress: Progress::none(),
            _records: std::marker::PhantomData,
        }
    }

    async fn write_batch(&self, records: &[Envelope<R>]) -> Result<u64, SinkError> {
        let errors = &self.db.errors;
        let pool = self.db.pool().await?;
        let mut conn = pool.get().await.map_err(|e| errors.run_error(e))?;
        match self.in_transaction(&mut conn, records).await {
            Ok(rows) => {
                conn.alive();
                Ok(rows)
            }
            // A kept statement gone stale (a table altered under it) is cured by preparing it
            // afresh: retried, whatever the path's classes say of its SQLSTATE.
            Err(e) if conn.statements().failed(&e.class) => Err(SinkError::transient(format!(
                "a prepared statement went stale, preparing it again: {}",
                e.message
            ))),
            Err(e) => Err(e),
        }
    }

    async fn in_transaction(
        &self,
        conn: &mut super::Session,
        records: &[Envelope<R>],
    ) -> Result<u64, SinkError> {
        let errors = &self.db.errors;
        let pg = |e: tokio_postgres::Error| errors.sink_error(&e);
        let schema = self.db.schema();
        let s = ident(schema);
        let tx = conn.begin().await.map_err(pg)?;
        let Some(offsets) = &self.db.offsets else {
            let all: Vec<&Envelope<R>> = records.iter().collect();
            let rows = self
                .writes
                .write(&tx, schema, &all, &self.progress, errors)
                .await?;
            tx.commit().await.map_err(pg)?;
            return Ok(rows);
        };

        // The partitions in this batch and the offset after each one's last record.
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for e in records {
            let o = &e.source.origin;
            let n = next.entry((o.topic.as_str(), o.partition)).or_insert(0);
            *n = (*n).max(o.offset + 1);
        }
        let topics: Vec<&str> = next.keys().map(|(t, _)| *t).collect();
        let partitions: Vec<i32> = next.keys().map(|(_, p)| *p).collect();
        let group = &offsets.group;
        // One statement creates the rows missing, locks every row of the batch's partitions
        // (in the arrays' order, the same for every writer) and returns the stored offsets.
        let rows = tx
            .query(
                &format!(
                    "INSERT INTO {s}.actord_offsets AS o (consumer_group, topic, partition, next_offset) \
                     SELECT $1, t, p, -1 FROM unnest($2::text[], $3::int[]) AS u(t, p) \
                     ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = o.next_offset \
                     RETURNING o.topic, o.partition, o.next_offset"
                ),
                &[group, &topics, &partitions],
            )
            .await
            .map_err(pg)?;
        let stored: HashMap<(String, i32), i64> = rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        // The table's offsets only grow: one behind what this process committed or saw there
        // means the database lost commits. Writing on would leave the lost rows out for good.
        for ((topic, partition), n) in &stored {
            if let Some(wrote) = offsets.ledger.ahead_of(topic, *partition, *n) {
                offsets.ledger.report(
                    topic,
                    *partition,
                    *n,
                    wrote,
                    "not writing past the hole; the path restarts from the table's offset",
                );
                offsets.ledger.restart_from(topic, *partition, *n);
                return Err(SinkError::fatal(format!(
                    "offset regression on {topic}[{partition}]: the offsets table says {n}, this process saw or wrote up to {wrote}"
                )));
            }
            offsets.ledger.observed(topic, *partition, *n);
        }
        // The stored offset of each of the batch's partitions, keyed as the records are (no
        // string per record).
        let floor: BTreeMap<(&str, i32), i64> = next
            .keys()
            .map(|&(t, p)| {
                let at = stored.get(&(t.to_owned(), p)).copied().unwrap_or(-1);
                ((t, p), at)
            })
            .collect();
        let fresh: Vec<&Envelope<R>> = records
            .iter()
            .filter(|e| {
                let o = &e.source.origin;
                o.offset >= floor[&(o.topic.as_str(), o.partition)]
            })
            .collect();
        let written = if fresh.is_empty() {
            0
        } else {
            self.writes
                .write(&tx, schema, &fresh, &self.progress, errors)
                .await?
        };

        let new: Vec<i64> = next.iter().map(|(k, n)| (*n).max(floor[k])).collect();
        tx.execute(
            &format!(
                "UPDATE {s}.actord_offsets o SET next_offset = u.n, updated_at = now() \
                 FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, n) \
                 WHERE o.consumer_group = $1 AND o.topic = u.t AND o.partition = u.p"
            ),
            &[group, &topics, &partitions, &new],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        for (((t, p), _), n) in next.iter().zip(&new) {
            offsets.ledger.wrote(t, *p, *n);
        }
        Ok(written)
    }

    /// A poison error for `n` records: the writer splits the batch until single records are
    /// rejected, so each rejection of one record counts once. With the breaker open, poison
    /// turns fatal and nothing more is dead-lettered.
    fn judge(&self, n: usize, err: SinkError) -> Result<(), SinkError> {
        let mut breaker = self.db.breaker.lock().expect("breaker lock");
        let was_open = breaker.is_open();
        let open = if n == 1 {
            breaker.rejected()
        } else {
            breaker.is_open()
        };
        drop(breaker);
        if !open {
            return Err(err);
        }
        Err(self.tripped(was_open, &format!("last rejection: {}", err.message)))
    }

    /// The error that stops the path once the breaker is open; logged and counted when it
    /// opens now.
    fn tripped(&self, was_open: bool, last: &str) -> SinkError {
        let state = self.db.breaker.lock().expect("breaker lock").describe();
        if !was_open {
            error!(rejections = %state, last = %last, "rejection breaker open: most records are refused, stopping the path instead of dead-lettering the topic");
            metrics::counter!(names::TIMESCALE_REJECTION_BREAKER_TRIPS_TOTAL).increment(1);
        }
        SinkError::fatal(format!("rejection breaker open: {state}; {last}"))
    }
}

impl<R, W> Sink<R> for PostgresSink<R, W>
where
    R: Send + Sync + 'static,
    W: Writes<R>,
{
    async fn write(&mut self, records: &[Envelope<R>]) -> Result<(), SinkError> {
        let err = match self.write_batch(records).await {
            Ok(rows) => {
                self.db.succeeded();
                self.db
                    .breaker
                    .lock()
                    .expect("breaker lock")
                    .accepted(records.len());
                metrics::counter!(names::TIMESCALE_INSERTS_TOTAL).increment(rows);
                return Ok(());
            }
            Err(e) => e,
        };
        metrics::counter!(names::TIMESCALE_ERRORS_TOTAL, "error_kind" => err.kind.as_str())
            .increment(1);
        if err.kind == ErrorKind::Poison {
            // A rejected record says nothing about the database's health; the breaker (which
            // /health shows) judges how many there are.
            return self.judge(records.len(), err);
        }
        self.db.failed(&err);
        Err(err)
    }

    fn attach_progress(&mut self, progress: Progress) {
        self.progress = progress;
    }

    /// Batches waiting behind each other commit together: one transaction, one set of offset
    /// rows and one fsync for the group instead of one per batch.
    fn group_batches(&self) -> usize {
        GROUP_BATCHES
    }

    /// Undecodable records count as refused, so a topic of unreadable messages stops the
    /// path like a table that rejects every row (see [`super::breaker`]).
    fn undecodable(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let mut breaker = self.db.breaker.lock().expect("breaker lock");
        let was_open = breaker.is_open();
        let open = breaker.undecodable(letters.len());
        drop(breaker);
        if !open {
            return Ok(());
        }
        let last = letters
            .last()
            .map(|l| format!("last undecodable record: {}", l.poison))
            .unwrap_or_default();
        Err(self.tripped(was_open, &last))
    }
}
