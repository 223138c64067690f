//! Per-partition offset tracking: what may be committed, and how much is in flight.
//!
//! Guarantees:
//! - An offset becomes committable only when every earlier offset the source handed out for
//!   that partition has been acknowledged: acks may arrive in any order, commits never skip.
//! - Acks from an earlier assignment of a partition (a stale epoch) change nothing.
//! - In flight counts every record handed out and not yet behind the commit point, so an
//!   unacknowledged record at the head of a partition keeps the bound closed.

use crate::record::{Origin, Topic};
use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
struct Entry {
    offset: i64,
    bytes: usize,
    acked: bool,
}

#[derive(Debug)]
struct Partition {
    epoch: u64,
    inflight: VecDeque<Entry>,
    /// The next offset to commit (one past the last contiguous ack), once known.
    committable: Option<i64>,
    /// The last offset committed to the source.
    committed: Option<i64>,
}

/// Offsets handed out, acknowledged and committable, per partition.
#[derive(Debug, Default)]
pub struct Tracker {
    partitions: HashMap<(Topic, i32), Partition>,
    records: usize,
    bytes: usize,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a newly assigned partition; returns its epoch.
    pub fn assign(&mut self, topic: Topic, partition: i32) -> u64 {
        // Epochs are unique in the process: consumers of one path share its buffers, and a
        // revoke by one must never match another's newer assignment of the same partition.
        static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let epoch = EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(old) = self.partitions.insert(
            (topic, partition),
            Partition {
                epoch,
                inflight: VecDeque::new(),
                committable: None,
                committed: None,
            },
        ) {
            self.forget(&old);
        }
        epoch
    }

    /// Stops tracking a revoked partition; returns its epoch and an offset to commit, if any
    /// acknowledged work was not committed yet.
    pub fn revoke(&mut self, topic: Topic, partition: i32) -> Option<(u64, Option<i64>)> {
        let p = self.partitions.remove(&(topic, partition))?;
        self.forget(&p);
        // Committed again even if sent before: an earlier asynchronous commit may have failed.
        Some((p.epoch, p.committable))
    }

    fn forget(&mut self, p: &Partition) {
        self.records -= p.inflight.len();
        self.bytes -= p.inflight.iter().map(|e| e.bytes).sum::<usize>();
    }

    /// The epoch of a partition, if assigned.
    pub fn epoch(&self, topic: Topic, partition: i32) -> Option<u64> {
        self.partitions.get(&(topic, partition)).map(|p| p.epoch)
    }

    /// Records a record handed downstream, holding `bytes` of memory while in flight
    /// ([`crate::record::SourceRecord::in_flight_size`]). Offsets of one partition must
    /// increase.
    pub fn dispatched(
        &mut self,
        topic: Topic,
        partition: i32,
        offset: i64,
        bytes: usize,
    ) -> Option<u64> {
        let p = self.partitions.get_mut(&(topic, partition))?;
        debug_assert!(p.inflight.back().is_none_or(|e| e.offset < offset));
        p.inflight.push_back(Entry {
            offset,
            bytes,
            acked: false,
        });
        self.records += 1;
        self.bytes += bytes;
        Some(p.epoch)
    }

    /// Records an acknowledgement; false when it is stale or unknown.
    pub fn ack(&mut self, origin: &Origin) -> bool {
        let Some(p) = self.partitions.get_mut(&(origin.topic, origin.partition)) else {
            return false;
        };
        if p.epoch != origin.epoch {
            return false;
        }
        let Ok(idx) = p
            .inflight
            .binary_search_by_key(&origin.offset, |e| e.offset)
        else {
            return false;
        };
        if p.inflight[idx].acked {
            return false;
        }
        p.inflight[idx].acked = true;
        while p.inflight.front().is_some_and(|e| e.acked) {
            let e = p.inflight.pop_front().expect("front exists");
            p.committable = Some(e.offset + 1);
            self.records -= 1;
            self.bytes -= e.bytes;
        }
        true
    }

    /// Marks a commit as failed, so the next [`Tracker::take_commits`] sends it again.
    pub fn uncommit(&mut self, topic: Topic, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&(topic, partition)) {
            if p.committed == Some(offset) {
                p.committed = None;
            }
        }
    }

    /// Partitions whose commit point moved since the last call, with the offset to commit.
    pub fn take_commits(&mut self) -> Vec<(Topic, i32, i64)> {
        let mut out = Vec::new();
        for ((topic, partition), p) in &mut self.partitions {
            if let Some(c) = p.committable {
                if p.committed != Some(c) {
                    p.committed = Some(c);
                    out.push((*topic, *partition, c));
                }
            }
        }
        out.sort_by_key(|a| (a.0, a.1));
        out
    }

    /// Records handed out and not yet behind the commit point.
    pub fn in_flight_records(&self) -> usize {
        self.records
    }

    pub fn in_flight_bytes(&self) -> usize {
        self.bytes
    }

    /// Assigned partitions, sorted.
    pub fn assigned(&self) -> Vec<(Topic, i32)> {
        let mut v: Vec<_> = self.partitions.keys().copied().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(topic: &Topic, partition: i32, offset: i64, epoch: u64) -> Origin {
        Origin {
            topic: *topic,
            partition,
            offset,
            epoch,
        }
    }

    #[test]
    fn out_of_order_acks_commit_only_the_contiguous_prefix() {
        let t = Topic::intern("t");
        let mut tr = Tracker::new();
        let e = tr.assign(t, 0);
        for off in 10..15 {
            tr.dispatched(t, 0, off, 100);
        }
        assert_eq!(tr.in_flight_records(), 5);
        assert!(tr.ack(&origin(&t, 0, 12, e)));
        assert!(tr.ack(&origin(&t, 0, 11, e)));
        assert!(tr.take_commits().is_empty(), "10 is still missing");
        assert!(tr.ack(&origin(&t, 0, 10, e)));
        assert_eq!(tr.take_commits(), vec![(t, 0, 13)]);
        assert_eq!(tr.in_flight_records(), 2);
        assert_eq!(tr.in_flight_bytes(), 200);
        assert!(tr.ack(&origin(&t, 0, 14, e)));
        assert!(tr.take_commits().is_empty(), "13 is still missing");
        assert!(tr.ack(&origin(&t, 0, 13, e)));
        assert_eq!(tr.take_commits(), vec![(t, 0, 15)]);
        assert!(tr.take_commits().is_empty());
        assert_eq!(tr.in_flight_records(), 0);
    }

    #[test]
    fn partitions_are_independent_and_gaps_in_offsets_are_fine() {
        let t = Topic::intern("t");
        let mut tr = Tracker::new();
        let e0 = tr.assign(t, 0);
        let e1 = tr.assign(t, 1);
        tr.dispatched(t, 0, 5, 1);
        tr.dispatched(t, 0, 9, 1); // compacted or transactional gaps
        tr.dispatched(t, 1, 0, 1);
        tr.ack(&origin(&t, 1, 0, e1));
        tr.ack(&origin(&t, 0, 9, e0));
        assert_eq!(tr.take_commits(), vec![(t, 1, 1)]);
        tr.ack(&origin(&t, 0, 5, e0));
        assert_eq!(tr.take_commits(), vec![(t, 0, 10)]);
    }

    #[test]
    fn stale_and_duplicate_acks_change_nothing() {
        let t = Topic::intern("t");
        let mut tr = Tracker::new();
        let old = tr.assign(t, 0);
        tr.dispatched(t, 0, 0, 1);
        tr.ack(&origin(&t, 0, 0, old));
        assert_eq!(tr.revoke(t, 0), Some((old, Some(1))));
        let new = tr.assign(t, 0);
        assert_ne!(old, new);
        tr.dispatched(t, 0, 1, 1);
        assert!(
            !tr.ack(&origin(&t, 0, 1, old)),
            "ack from the old assignment"
        );
        assert!(tr.ack(&origin(&t, 0, 1, new)));
        assert!(!tr.ack(&origin(&t, 0, 1, new)), "duplicate");
        assert!(!tr.ack(&origin(&t, 3, 1, new)), "unknown partition");
        assert_eq!(tr.take_commits(), vec![(t, 0, 2)]);
    }

    #[test]
    fn a_failed_commit_is_sent_again() {
        let t = Topic::intern("t");
        let mut tr = Tracker::new();
        let e = tr.assign(t, 0);
        tr.dispatched(t, 0, 0, 1);
        tr.ack(&origin(&t, 0, 0, e));
        assert_eq!(tr.take_commits(), vec![(t, 0, 1)]);
        assert!(tr.take_commits().is_empty());
        tr.uncommit(t, 0, 1);
        assert_eq!(tr.take_commits(), vec![(t, 0, 1)]);
    }

    #[test]
    fn revoking_releases_in_flight_without_committing_unacked_work() {
        let t = Topic::intern("t");
        let mut tr = Tracker::new();
        let e = tr.assign(t, 0);
        for off in 0..4 {
            tr.dispatched(t, 0, off, 10);
        }
        tr.ack(&origin(&t, 0, 0, e));
        tr.ack(&origin(&t, 0, 2, e));
        assert_eq!(tr.take_commits(), vec![(t, 0, 1)]);
        // Revoking commits the acknowledged prefix again, in case the last commit failed.
        assert_eq!(tr.revoke(t, 0), Some((e, Some(1))));
        assert_eq!(tr.in_flight_records(), 0);
        assert_eq!(tr.in_flight_bytes(), 0);
        assert_eq!(tr.revoke(t, 0), None);
        assert!(tr.dispatched(t, 0, 5, 1).is_none(), "not assigned");
    }
}
