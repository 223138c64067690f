//! The consumer's librdkafka context: assignment with start offsets applied before the first
//! fetch, a final commit of revoked partitions, and lag from the statistics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actord_actors::offsets::Tracker;
use actord_actors::record::{Origin, Topic};
use actord_actors::{Fence, Probe};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::StartFrom;
use crate::telemetry::names;

/// State the context shares with the consumer actor. Both run on the actor's task: the
/// rebalance callback is served inside the actor's own poll.
pub struct Shared {
    pub tracker: Mutex<Tracker>,
    /// Revoked partitions with the epoch they had, for the actor to pass downstream.
    pub revoked: Mutex<Vec<(Topic, i32, u64)>>,
    pub paused: AtomicBool,
    pub start: StartFrom,
    pub path: String,
    /// The consumer's probe: its `lag` counter is the summary's consumer lag.
    pub probe: Option<Probe>,
    /// Export each partition's lag as well as each topic's.
    pub lag_per_partition: bool,
    /// The client config of the group to migrate from (see `SourceSettings::migrate_from_group`).
    pub migrate_from: Option<(String, ClientConfig)>,
    /// Why an assignment could not be served; the actor fails with it on its next poll.
    pub failure: Mutex<Option<String>>,
    /// Acknowledgements from the writers, not yet applied to the tracker.
    acks: Mutex<Vec<Origin>>,
    /// Woken when acknowledgements arrive.
    pub acked: tokio::sync::Notify,
    /// The path's fence: a revoke marks the partitions it gives up there.
    pub fence: Fence,
    /// How long a revoke waits for writes in flight of the partitions it gives up.
    pub revoke_wait: Duration,
}

impl Shared {
    pub fn new(start: StartFrom, path: String) -> Self {
        Shared {
            tracker: Mutex::new(Tracker::new()),
            revoked: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
            start,
            path,
            probe: None,
            lag_per_partition: false,
            migrate_from: None,
            failure: Mutex::new(None),
            acks: Mutex::new(Vec::new()),
            acked: tokio::sync::Notify::new(),
            fence: Fence::new(),
            revoke_wait: Duration::from_secs(10),
        }
    }

    /// Called by the writers' acker, from any task.
    pub fn push_acks(&self, origins: Vec<Origin>) {
        self.acks.lock().expect("acks lock").extend(origins);
        self.acked.notify_one();
    }

    /// Applies the acknowledgements received so far; returns how many counted.
    pub fn drain_acks(&self) -> u64 {
        let origins = std::mem::take(&mut *self.acks.lock().expect("acks lock"));
        if origins.is_empty() {
            return 0;
        }
        let mut tracker = self.tracker.lock().expect("tracker lock");
        origins.iter().filter(|o| tracker.ack(o)).count() as u64
    }
}

/// How long an offset look-up in the rebalance callback may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PathContext {
    pub shared: Arc<Shared>,
}

impl ClientContext for PathContext {
    fn stats(&self, stats: Statistics) {
        let mut total = 0;
        for (name, topic) in &stats.topics {
            let assigned = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0);
            let mut lag = 0;
            for p in assigned {
                lag += p.consumer_lag;
                if self.shared.lag_per_partition {
                    metrics::gauge!(names::KAFKA_PARTITION_LAG, "path" => self.shared.path.clone(), "topic" => name.clone(), "partition" => p.partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
            total += lag;
            metrics::gauge!(names::KAFKA_CONSUMER_LAG, "path" => self.shared.path.clone(), "topic" => name.clone()).set(lag as f64);
        }
        if let Some(probe) = &self.shared.probe {
            probe.set_counter("lag", u64::try_from(total).unwrap_or(0));
        }
    }
}

impl PathContext {
    fn start_offsets(
        &self,
        base: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> Result<TopicPartitionList, String> {
        let mut out = TopicPartitionList::new();
        match &self.shared.start {
            StartFrom::Committed { .. } => {
                for e in tpl.elements() {
                    let _ = out.add_partition_offset(e.topic(), e.partition(), Offset::Stored);
                }
            }
            StartFrom::Beginning => {
                for e in tpl.elements() {
                    let _ = out.add_partition_offset(e.topic(), e.partition(), Offset::Beginning);
                }
            }
            StartFrom::Sink(source) => {
                let elements = tpl.elements();
                let partitions: Vec<(&str, i32)> = elements
                    .iter()
                    .map(|e| (e.topic(), e.partition()))
                    .collect();
                let found = source.next_offsets(&partitions)?;
                for ((topic, partition), next) in partitions.iter().zip(found) {
                    let offset = next.map(Offset::Offset).unwrap_or(Offset::Stored);
                    let _ = out.add_partition_offset(topic, *partition, offset);
                }
            }
            StartFrom::Timestamp(ms) => {
                let mut query = TopicPartitionList::new();
                for e in tpl.elements() {
                    let _ =
                        query.add_partition_offset(e.topic(), e.partition(), Offset::Offset(*ms));
                }
                let found = base.offsets_for_times(query, Duration::from_secs(10)).ok();
                for e in tpl.elements() {
                    // A broker that answers End (or nothing) for a time gets a full scan; the
                    // consumer skips older records itself.
                    let offset = found
                        .as_ref()
                        .and_then(|f| f.find_partition(e.topic(), e.partition()))
                        .map(|p| p.offset())
                        .filter(|o| matches!(o, Offset::Offset(_)))
                        .unwrap_or(Offset::Beginning);
                    let _ = out.add_partition_offset(e.topic(), e.partition(), offset);
                }
            }
        }
        if let Some((group, config)) = &self.shared.migrate_from {
            self.migrate(base, group, config, &mut out)?;
        }
        Ok(out)
    }

    /// Partitions that would start from this group's committed offset but have none start
    /// from the committed offset of the group being migrated from, where it has one.
    fn migrate(
        &self,
        base: &BaseConsumer<Self>,
        group: &str,
        config: &ClientConfig,
        out: &mut TopicPartitionList,
    ) -> Result<(), String> {
        let mut stored = TopicPartitionList::new();
        for e in out
            .elements()
            .iter()
            .filter(|e| e.offset() == Offset::Stored)
        {
            let _ = stored.add_partition(e.topic(), e.partition());
        }
        if stored.count() == 0 {
            return Ok(());
        }
        // A failed look-up fails the assignment: guessing would replay what the replaced
        // service wrote, or skip what it did not.
        let own = base
            .committed_offsets(stored, LOOKUP_TIMEOUT)
            .map_err(|e| format!("cannot read this group's committed offsets: {e}"))?;
        let mut missing = TopicPartitionList::new();
        for e in own.elements() {
            if !matches!(e.offset(), Offset::Offset(_)) {
                let _ = missing.add_partition(e.topic(), e.partition());
            }
        }
        if missing.count() == 0 {
            return Ok(());
        }
        let found = config
            .create::<BaseConsumer>()
            .and_then(|other| other.committed_offsets(missing, LOOKUP_TIMEOUT));
        let found = found.map_err(|e| {
            format!("cannot read the committed offsets of {group}, the group to migrate from: {e}")
        })?;
        for e in found.elements() {
            if let Offset::Offset(n) = e.offset() {
                let _ = out.set_partition_offset(e.topic(), e.partition(), Offset::Offset(n));
                info!(path = %self.shared.path, group = %group, topic = %e.topic(), partition = e.partition(), offset = n, "no offset of its own: starting from the committed offset of the group it replaces");
            }
        }
        Ok(())
    }

    fn on_assign(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) -> KafkaResult<()> {
        let assignment = match self.start_offsets(base, tpl) {
            Ok(assignment) => assignment,
            Err(e) => {
                // Nothing is assigned: reading from a guessed offset could skip or repeat data.
                error!(path = %self.shared.path, error = %e, "cannot read the start offsets of the assigned partitions; restarting the consumer");
                *self.shared.failure.lock().expect("failure lock") = Some(format!(
                    "cannot read the start offsets of the assigned partitions: {e}"
                ));
                return Ok(());
            }
        };
        {
            let mut tracker = self.shared.tracker.lock().expect("tracker lock");
            for e in tpl.elements() {
                tracker.assign(Topic::intern(e.topic()), e.partition());
            }
        }
        base.assign(&assignment)?;
        if self.shared.paused.load(Ordering::Acquire) {
            base.pause(&assignment)?;
        }
        let parts: Vec<String> = assignment
            .elements()
            .iter()
            .map(|e| format!("{}[{}]@{:?}", e.topic(), e.partition(), e.offset()))
            .collect();
        info!(path = %self.shared.path, partitions = ?parts, "partitions assigned");
        Ok(())
    }

    fn on_revoke(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        // Fence first: writers drop what they hold of these partitions and give up uploads of
        // them; a write past its last check finishes. Wait (bounded) for those, so what they
        // acknowledge is committed below rather than written again by the next owner.
        let going: Vec<(Topic, i32, u64)> = {
            let tracker = self.shared.tracker.lock().expect("tracker lock");
            tpl.elements()
                .iter()
                .filter_map(|e| {
                    let topic = Topic::intern(e.topic());
                    tracker
                        .epoch(topic, e.partition())
                        .map(|epoch| (topic, e.partition(), epoch))
                })
                .collect()
        };
        self.shared.fence.revoke(&going);
        if !self.shared.fence.wait_idle(&going, self.shared.revoke_wait) {
            warn!(path = %self.shared.path, waited = ?self.shared.revoke_wait, "writes of revoked partitions still in flight; giving them up uncommitted");
        }
        self.shared.drain_acks();
        let mut commit = TopicPartitionList::new();
        {
            let mut tracker = self.shared.tracker.lock().expect("tracker lock");
            let mut revoked = self.shared.revoked.lock().expect("revoked lock");
            for e in tpl.elements() {
                if let Some((epoch, next)) = tracker.revoke(Topic::intern(e.topic()), e.partition())
                {
                    revoked.push((Topic::intern(e.topic()), e.partition(), epoch));
                    if let Some(next) = next {
                        let _ = commit.add_partition_offset(
                            e.topic(),
                            e.partition(),
                            Offset::Offset(next),
                        );
                    }
                }
            }
        }
        // Acknowledged work is committed before the partitions go; unacknowledged work is not,
        // so the next owner reads it again.
        if commit.count() > 0 {
            match base.commit(&commit, CommitMode::Sync) {
                Ok(()) => metrics::counter!(names::OFFSETS_COMMITTED_TOTAL, "path" => self.shared.path.clone()).increment(commit.count() as u64),
                Err(e) => warn!(path = %self.shared.path, error = %e, "commit of revoked partitions failed"),
            }
        }
        if let Err(e) = base.unassign() {
            warn!(path = %self.shared.path, error = %e, "unassign failed");
        }
        info!(path = %self.shared.path, partitions = tpl.count(), "partitions revoked");
    }
}

impl ConsumerContext for PathContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            warn!(path = %self.shared.path, error = %e, "offset commit failed; it is sent again with the next commit");
            let mut tracker = self.shared.tracker.lock().expect("tracker lock");
            for el in offsets.elements() {
                if let Offset::Offset(o) = el.offset() {
                    tracker.uncommit(Topic::intern(el.topic()), el.partition(), o);
                }
            }
        }
    }

    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            // Both block on the network (offset look-ups, a synchronous commit) inside the
            // consumer's poll.
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = super::consumer::off_worker(|| self.on_assign(base, tpl)) {
                    error!(path = %self.shared.path, error = %e, "assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                super::consumer::off_worker(|| self.on_revoke(base, tpl))
            }
            other => {
                error!(path = %self.shared.path, error = ?other, "rebalance error");
                let _ = base.unassign();
            }
        }
    }
}
