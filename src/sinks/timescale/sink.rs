//! `TimescaleSink`: one writer's handle on the database: a batch's rows by binary COPY and its
//! partitions' next offsets in one transaction, fenced by the stored offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actord_actors::record::{DeadLetter, Envelope};
use actord_actors::sink::{Sink, SinkError};
use actord_actors::ErrorKind;
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};
use tracing::error;

use super::error::{pg, run_error};
use super::{schema, Shared};
use crate::pipelines::recorder::model::Market;
use crate::telemetry::names;

/// One writer's handle on the database.
pub struct TimescaleSink {
    shared: Arc<Shared>,
}

impl TimescaleSink {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        TimescaleSink { shared }
    }

    async fn write_batch(&self, records: &[Envelope<Market>]) -> Result<u64, SinkError> {
        let pool = self.shared.pool().await?;
        let mut conn = pool.get().await.map_err(run_error)?;
        let s = schema::ident(&self.shared.settings.schema);
        let tx = conn.transaction().await.map_err(pg)?;

        // The partitions in this batch and the offset after each one's last record.
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for e in records {
            let o = &e.source.origin;
            let n = next.entry((o.topic.as_str(), o.partition)).or_insert(0);
            *n = (*n).max(o.offset + 1);
        }
        let topics: Vec<&str> = next.keys().map(|(t, _)| *t).collect();
        let partitions: Vec<i32> = next.keys().map(|(_, p)| *p).collect();
        let group = &self.shared.group;
        tx.execute(
            &format!(
                "INSERT INTO {s}.actord_offsets (consumer_group, topic, partition, next_offset) \
                 SELECT $1, t, p, -1 FROM unnest($2::text[], $3::int[]) AS u(t, p) ON CONFLICT DO NOTHING"
            ),
            &[group, &topics, &partitions],
        )
        .await
        .map_err(pg)?;
        let rows = tx
            .query(
                &format!(
                    "SELECT topic, partition, next_offset FROM {s}.actord_offsets \
                     WHERE consumer_group = $1 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[])) \
                     ORDER BY topic, partition FOR UPDATE"
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
            if let Some(wrote) = self.shared.ledger.ahead_of(topic, *partition, *n) {
                self.shared.ledger.report(
                    topic,
                    *partition,
                    *n,
                    wrote,
                    "not writing past the hole; the path restarts from the table's offset",
                );
                self.shared.ledger.restart_from(topic, *partition, *n);
                return Err(SinkError::fatal(format!(
                    "offset regression on {topic}[{partition}]: the offsets table says {n}, this process saw or wrote up to {wrote}"
                )));
            }
            self.shared.ledger.observed(topic, *partition, *n);
        }
        let fresh = |e: &&Envelope<Market>| {
            let o = &e.source.origin;
            o.offset
                >= stored
                    .get(&(o.topic.as_str().to_owned(), o.partition))
                    .copied()
                    .unwrap_or(-1)
        };

        let mut written = 0u64;
        {
            let copy = tx
                .copy_in(&format!(
                    "COPY {s}.tick_data (time, symbol, price, volume, change, change_rate) FROM STDIN (FORMAT binary)"
                ))
                .await
                .map_err(pg)?;
            let w = BinaryCopyInWriter::new(
                copy,
                &[
                    Type::TIMESTAMPTZ,
                    Type::TEXT,
                    Type::FLOAT8,
                    Type::INT8,
                    Type::FLOAT8,
                    Type::FLOAT8,
                ],
            );
            pin_mut!(w);
            for e in records.iter().filter(fresh) {
                if let Market::Tick(t) = &e.record {
                    w.as_mut()
                        .write(&[
                            &t.time,
                            &t.symbol,
                            &t.price,
                            &t.volume,
                            &t.change,
                            &t.change_rate,
                        ])
                        .await
                        .map_err(pg)?;
                    written += 1;
                }
            }
            w.finish().await.map_err(pg)?;
        }
        {
            let copy = tx
                .copy_in(&format!(
                    "COPY {s}.orderbook (time, symbol, bids, asks) FROM STDIN (FORMAT binary)"
                ))
                .await
                .map_err(pg)?;
            let w = BinaryCopyInWriter::new(
                copy,
                &[Type::TIMESTAMPTZ, Type::TEXT, Type::JSONB, Type::JSONB],
            );
            pin_mut!(w);
            for e in records.iter().filter(fresh) {
                if let Market::OrderBook(o) = &e.record {
                    w.as_mut()
                        .write(&[&o.time, &o.symbol, &Json(&o.bids), &Json(&o.asks)])
                        .await
                        .map_err(pg)?;
                    written += 1;
                }
            }
            w.finish().await.map_err(pg)?;
        }

        let new: Vec<i64> = next
            .iter()
            .map(|((t, p), n)| (*n).max(stored.get(&((*t).to_owned(), *p)).copied().unwrap_or(-1)))
            .collect();
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
            self.shared.ledger.wrote(t, *p, *n);
        }
        Ok(written)
    }
}

impl Sink<Market> for TimescaleSink {
    /// Undecodable records count as refused, so a topic of unreadable messages stops the
    /// path like a table that rejects every row (see [`super::breaker`]).
    fn undecodable(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let mut breaker = self.shared.breaker.lock().expect("breaker lock");
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

    async fn write(&mut self, records: &[Envelope<Market>]) -> Result<(), SinkError> {
        let err = match self.write_batch(records).await {
            Ok(rows) => {
                self.shared.succeeded();
                self.shared
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
        self.shared.failed(&err);
        Err(err)
    }
}

impl TimescaleSink {
    /// A poison error for `n` records: the writer splits the batch until single records are
    /// rejected, so each rejection of one record counts once. With the breaker open, poison
    /// turns fatal and nothing more is dead-lettered.
    fn judge(&self, n: usize, err: SinkError) -> Result<(), SinkError> {
        let mut breaker = self.shared.breaker.lock().expect("breaker lock");
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
        let state = self.shared.breaker.lock().expect("breaker lock").describe();
        if !was_open {
            error!(rejections = %state, last = %last, "rejection breaker open: most records are refused, stopping the path instead of dead-lettering the topic");
            metrics::counter!(names::TIMESCALE_REJECTION_BREAKER_TRIPS_TOTAL).increment(1);
        }
        SinkError::fatal(format!("rejection breaker open: {state}; {last}"))
    }
}
