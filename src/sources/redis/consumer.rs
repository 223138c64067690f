//! `RedisConsumer`: reads a stream as one consumer of a group and hands entries downstream,
//! acknowledging (XACK) only what the sink path acknowledged.
//!
//! Guarantees:
//! - The group is created if missing (XGROUP CREATE … MKSTREAM; BUSYGROUP is fine), at start
//!   and whenever Redis says it is gone.
//! - An entry is acked only after its path made it durable or the dead-letter stream holds it.
//!   An ack that Redis does not take is kept and sent again; nothing is dropped.
//! - At start the consumer first takes up the entries its own name still holds (a restart of
//!   the path or the process), without counting them as new deliveries.
//! - Entries another consumer holds and left idle for `claim_idle` (it died or hangs) are taken
//!   over with XAUTOCLAIM. The consumer touches the entries it holds well before that (XCLAIM
//!   JUSTID, which does not count a delivery), so a slow job is never taken from a live one.
//!   The touch is a script that resets only entries the group still lists under this consumer:
//!   an entry another consumer took over while this one could not reach Redis stays with its
//!   new owner (it is forgotten here and acknowledged by that owner), instead of being taken
//!   back and worked on twice from then on.
//! - With a shared name (WORKER_NAME given to several processes), each consumer leases a name
//!   of its own, `<name>-<n>`, so no consumer takes up another live one's entries as its own.
//!   A name leased anew may still hold a dead process's entries: those are taken up as a
//!   takeover (counted, under the delivery limit), not as this consumer's own.
//! - An entry taken over after more than `max_deliveries` deliveries goes to the dead-letter
//!   stream with its delivery count instead of being processed again.
//! - At most `max_in_flight_records` entries / `max_in_flight_bytes` are handed out and
//!   unacknowledged (an entry counts with what it holds in memory while in flight,
//!   [`SourceRecord::in_flight_size`]); at the bound the consumer stops reading and asks every
//!   buffer to flush. A read, a page of this consumer's own pending entries and a page of
//!   entries taken over each take at most `count` entries, so the bytes bound is passed by at
//!   most one of them.
//! - A Redis outage is waited out: the consumer reports itself unhealthy, reconnects with
//!   backoff and goes on where it was; entries in flight stay in flight.
//! - While an operator has paused the pipeline the consumer reads, recovers and claims
//!   nothing; it flushes the buffers once, keeps acking what finishes and keeps touching what it
//!   holds, so in-flight entries finish and stay its own. A read already blocked when the pause
//!   comes (at most `block`) can still return entries; they are handed out like the others.
//! - A graceful stop stops reading, flushes the buffers, waits for acknowledgements (up to the
//!   drain timeout) and sends the last acks. What is left stays pending under its name.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actord_actors::record::{
    Acker, DeadLetter, DlqMsg, Origin, Poison, SourceMsg, SourceRecord, Topic,
};
use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimReply, StreamClaimReply, StreamId, StreamPendingCountReply, StreamRangeReply,
    StreamReadReply,
};
use redis::{RedisError, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{describe, drain, id_millis, is_nogroup, monitor, RedisConnection, StreamSettings};
use crate::sources::lanes;
use crate::telemetry::names;

pub struct RedisConsumer;

pub struct ConsumerArgs {
    pub probe: Probe,
    pub connection: RedisConnection,
    pub settings: StreamSettings,
    /// Which consumer of the path this is: its name, and whether it reads the monitor.
    pub index: usize,
    /// One decoder per lane; each entry goes to the lane holding the fewest.
    pub downstream: Vec<ActorRef<SourceMsg>>,
    /// The path's dead-letter writer, when the path owns its dead letters.
    pub dlq: Option<ActorRef<DlqMsg>>,
    /// The owner written into the name's lease with `lease_name` ([`lease_owner`]).
    pub lease_owner: String,
}

pub enum ConsumerMsg {
    Poll,
}

/// An entry handed downstream and not acknowledged yet.
struct Flight {
    id: String,
    /// The lane working on it (none for an entry sent to the dead-letter stream).
    lane: Option<usize>,
    /// The batch it counts in (see [`super::drain`]), when the path counts batches.
    batch: Option<String>,
    /// When its idle time in Redis was last reset.
    touched: Instant,
    /// What it holds in memory while in flight.
    bytes: usize,
}

pub struct ConsumerState {
    connection: RedisConnection,
    addr: String,
    conn: Option<MultiplexedConnection>,
    settings: StreamSettings,
    /// The configured name; with `lease_name`, the leased name is `<base>-<n>`.
    base: String,
    name: String,
    /// The name is settled: leased (with `lease_name`) or unique already.
    named: bool,
    /// The leased name was free when taken: the entries it holds are a dead process's.
    inherited: bool,
    /// Who holds the name's lease (see [`lease_owner`]).
    owner: String,
    next_renew: Instant,
    index: usize,
    topic: Topic,
    downstream: Vec<ActorRef<SourceMsg>>,
    dlq: Option<ActorRef<DlqMsg>>,
    probe: Probe,
    path: String,
    acks: mpsc::UnboundedReceiver<Vec<Origin>>,
    acker: Acker,
    epoch: u64,
    /// The offset of the last entry handed out: local, increasing, mapped to the entry id.
    seq: i64,
    inflight: HashMap<i64, Flight>,
    /// The sum of `bytes` over `inflight`.
    inflight_bytes: usize,
    /// Ids in `inflight`, so an entry is never handed out twice by this incarnation.
    held: HashSet<String>,
    /// Ids (with their batch) acknowledged by the path and not yet by Redis.
    to_ack: Vec<(String, Option<String>)>,
    next_lane: usize,
    /// Entries in flight per lane.
    lane_load: Vec<usize>,
    group_ready: bool,
    /// Where the look at this consumer's own pending entries goes on; `None` once done.
    recover_from: Option<String>,
    claim_cursor: String,
    next_claim: Instant,
    next_touch: Instant,
    next_monitor: Instant,
    /// Consecutive failed rounds, for the reconnect backoff.
    failures: u32,
    /// Buffers were asked to flush since the bound was reached.
    flushed_at_bound: bool,
    /// An operator paused the pipeline: nothing new is read until it is resumed.
    paused: bool,
}

/// Stream entries with their delivery count where known.
type Entries = Vec<(StreamId, Option<usize>)>;

/// How long a read blocks while entries are in flight, so their acks are not held up.
const SHORT_BLOCK: Duration = Duration::from_millis(100);

/// What a stopping consumer keeps of its stop deadline for the last acks.
const ACK_RESERVE: Duration = Duration::from_secs(1);

/// Entries asked for at once when looking at pending entries.
const PENDING_PAGE: usize = 100;

/// Ids per XACK.
const ACK_CHUNK: usize = 500;

/// Takes or renews the lease of a consumer name: 1 taken anew, 2 already this process's,
/// 0 held by another process.
const LEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 2
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Resets the idle time of the given entries that the group still lists under the consumer
/// ARGV[2] (group ARGV[1]); returns those ids. Entries another consumer took over are left
/// alone.
const TOUCH_OWN: &str = r"
local kept = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept[#kept + 1] = ARGV[i]
  end
end
return kept
";

/// Names tried when leasing `<base>-<n>`.
const MAX_NAMES: usize = 1_000;

/// A new owner for name leases: one per consumer of a path as built (its restarts keep it,
/// so a restarted consumer keeps its name), naming the host and process for `GET`.
pub fn lease_owner() -> String {
    format!(
        "{}-{}",
        super::consumer_name("actord", None),
        uuid::Uuid::new_v4().simple()
    )
}

/// The key holding the lease of consumer `name`.
pub fn name_key(settings: &StreamSettings, name: &str) -> String {
    format!("{}:consumer:{}:{name}", settings.stream, settings.group)
}

fn epoch() -> u64 {
    static EPOCHS: AtomicU64 = AtomicU64::new(0);
    EPOCHS.fetch_add(1, Ordering::Relaxed) + 1
}

/// The bytes of a field value.
fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.as_bytes().to_vec(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Double(d) => d.to_string().into_bytes(),
        Value::VerbatimString { text, .. } => text.as_bytes().to_vec(),
        other => format!("{other:?}").into_bytes(),
    }
}

/// The lane holding the fewest entries by `load`, the first such from lane `from` on (so
/// equals take turns).
fn least_loaded(load: &[usize], from: usize) -> usize {
    let lanes = load.len().max(1);
    (0..lanes)
        .map(|i| (from + i) % lanes)
        .min_by_key(|l| load.get(*l).copied().unwrap_or(0))
        .unwrap_or(0)
}

/// A stream entry as a source record: fields as headers (sorted by name), the payload field or
/// a JSON object of every field as payload, the id as key.
pub fn record(
    entry: &StreamId,
    origin: Origin,
    payload_field: Option<&str>,
    deliveries: Option<usize>,
) -> SourceRecord {
    let mut headers: Vec<(String, Vec<u8>)> = entry
        .map
        .iter()
        .map(|(k, v)| (k.clone(), bytes(v)))
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let payload = match payload_field {
        Some(field) => headers
            .iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.clone()),
        None => {
            let object: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect();
            Some(serde_json::to_vec(&object).unwrap_or_default())
        }
    };
    if let Some(n) = deliveries {
        headers.push(("x-delivery-count".to_owned(), n.to_string().into_bytes()));
    }
    SourceRecord {
        origin,
        key: Some(entry.id.clone().into_bytes()),
        payload,
        timestamp_ms: id_millis(&entry.id),
        headers,
    }
}

impl ConsumerState {
    fn drain_acks(&mut self) {
        while let Ok(origins) = self.acks.try_recv() {
            self.take_acks(origins);
        }
    }

    fn take_acks(&mut self, origins: Vec<Origin>) {
        for o in origins {
            if o.epoch != self.epoch {
                continue;
            }
            if let Some(f) = self.inflight.remove(&o.offset) {
                self.landed(&f);
                self.inflight_bytes -= f.bytes;
                self.held.remove(&f.id);
                self.to_ack.push((f.id, f.batch));
            }
        }
    }

    /// An entry left the flight (acknowledged, or taken over by another consumer).
    fn landed(&mut self, f: &Flight) {
        if let Some(lane) = f.lane {
            self.lane_load[lane] = self.lane_load[lane].saturating_sub(1);
        }
    }

    /// The lane for the next entry: the one holding the fewest, in turn among equals. Entries
    /// are acknowledged one by one, so no lane waits for another, and an entry is not queued
    /// behind a slow one while another lane is free: with one entry in flight per lane, every
    /// entry handed out is one a worker is on (a crash charges a delivery to no entry that was
    /// only waiting).
    fn next_lane(&mut self) -> usize {
        let lane = least_loaded(&self.lane_load, self.next_lane);
        self.next_lane = lane + 1;
        lane
    }

    fn broadcast(&self, make: impl Fn() -> SourceMsg) -> Result<(), ActorProcessingErr> {
        lanes::broadcast(&self.downstream, make)
    }

    fn conn(&mut self) -> &mut MultiplexedConnection {
        self.conn.as_mut().expect("connected")
    }

    fn room(&self) -> usize {
        if self.inflight_bytes >= self.settings.max_in_flight_bytes {
            return 0;
        }
        self.settings
            .max_in_flight_records
            .saturating_sub(self.inflight.len())
    }

    /// Entries a page of recovered or taken-over entries may hold: as many as a read, so that
    /// those pages pass the in-flight bytes bound by no more than a read does.
    fn page(&self, room: usize) -> usize {
        room.min(PENDING_PAGE).min(self.settings.count.max(1))
    }

    async fn ensure_group(&mut self) -> Result<(), RedisError> {
        let (stream, group, start) = (
            self.settings.stream.clone(),
            self.settings.group.clone(),
            self.settings.start_id.clone(),
        );
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(&group)
            .arg(&start)
            .arg("MKSTREAM")
            .query_async(self.conn())
            .await;
        match created {
            Ok(()) => {
                info!(path = %self.path, stream = %stream, group = %group, "consumer group created")
            }
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        self.group_ready = true;
        Ok(())
    }

    async fn send_acks(&mut self) -> Result<(), RedisError> {
        while !self.to_ack.is_empty() {
            let n = self.to_ack.len().min(ACK_CHUNK);
            let (stream, group) = (self.settings.stream.clone(), self.settings.group.clone());
            let chunk = self.to_ack[..n].to_vec();
            let counting = self.settings.drain_counting.as_ref().map(|c| c.ttl);
            let _acked: u64 = match counting {
                // Each ack counted in its batch in the same script.
                Some(ttl) => drain::ack(self.conn(), &stream, &group, ttl, &chunk).await?,
                None => {
                    let ids: Vec<&String> = chunk.iter().map(|(id, _)| id).collect();
                    redis::cmd("XACK")
                        .arg(&stream)
                        .arg(&group)
                        .arg(&ids)
                        .query_async(self.conn())
                        .await?
                }
            };
            self.to_ack.drain(..n);
            metrics::counter!(names::RECORDS_ACKED_TOTAL, "path" => self.path.clone())
                .increment(n as u64);
            self.probe.add_counter("acked", n as u64);
        }
        Ok(())
    }

    fn lease_ttl(&self) -> u64 {
        self.settings.claim_idle.as_millis().max(1_000) as u64
    }

    /// Takes or renews the lease of `name` (see [`LEASE`]).
    async fn lease(&mut self, name: &str) -> Result<i64, RoundError> {
        let (key, ttl) = (name_key(&self.settings, name), self.lease_ttl());
        let owner = self.owner.clone();
        redis::Script::new(LEASE)
            .key(&key)
            .arg(&owner)
            .arg(ttl)
            .invoke_async(self.conn())
            .await
            .map_err(|e| RoundError::from_redis(&self.addr, e))
    }

    /// Leases the lowest free name `<base>-<n>`.
    async fn take_name(&mut self) -> Result<(), RoundError> {
        for n in 0..MAX_NAMES {
            let name = format!("{}-{n}", self.base);
            let got = self.lease(&name).await?;
            if got == 0 {
                continue;
            }
            self.inherited = got == 1;
            info!(path = %self.path, consumer = %name, inherited = self.inherited, "consumer name leased");
            self.name = name;
            self.named = true;
            self.recover_from = Some("-".to_owned());
            self.next_renew = Instant::now() + self.settings.claim_idle / 3;
            return Ok(());
        }
        Err(RoundError::Pipeline(
            format!("no free consumer name {}-<n> below {MAX_NAMES}", self.base).into(),
        ))
    }

    /// Renews the name's lease; a name another process took while this one could not reach
    /// Redis fails the consumer, whose next incarnation leases another.
    async fn renew_name(&mut self) -> Result<(), RoundError> {
        if !self.settings.lease_name || Instant::now() < self.next_renew {
            return Ok(());
        }
        let name = self.name.clone();
        if self.lease(&name).await? == 0 {
            return Err(RoundError::Pipeline(
                format!(
                    "consumer name {} was leased by another process while this one was cut off",
                    self.name
                )
                .into(),
            ));
        }
        self.next_renew = Instant::now() + self.settings.claim_idle / 3;
        Ok(())
    }

    /// Takes up, page by page, the entries this consumer's name still holds from before.
    async fn recover_own(&mut self) -> Result<Entries, RedisError> {
        let Some(from) = self.recover_from.clone() else {
            return Ok(Vec::new());
        };
        let room = self.room();
        if room == 0 {
            return Ok(Vec::new());
        }
        let page = self.page(room);
        let (stream, group, name) = (
            self.settings.stream.clone(),
            self.settings.group.clone(),
            self.name.clone(),
        );
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(&group)
            .arg(&from)
            .arg("+")
            .arg(page)
            .arg(&name)
            .query_async(self.conn())
            .await?;
        self.recover_from = match pending.ids.last() {
            Some(last) if pending.ids.len() == page => Some(format!("({}", last.id)),
            _ => None,
        };
        let ids: Vec<(String, usize)> = pending
            .ids
            .into_iter()
            .filter(|p| !self.held.contains(&p.id))
            .map(|p| (p.id, p.times_delivered))
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if self.inherited {
            return self.inherit(ids).await;
        }
        // XRANGE reads bodies without counting a delivery: a restart is not a failed attempt.
        let mut pipe = redis::pipe();
        for (id, _) in &ids {
            pipe.cmd("XRANGE").arg(&stream).arg(id).arg(id);
        }
        let bodies: Vec<StreamRangeReply> = pipe.query_async(self.conn()).await?;
        let mut entries = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for ((id, deliveries), body) in ids.into_iter().zip(bodies) {
            match body.ids.into_iter().next() {
                Some(entry) => entries.push((entry, Some(deliveries))),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            warn!(path = %self.path, entries = gone.len(), "pending entries were removed from the stream; acknowledging them");
            self.to_ack.extend(gone.into_iter().map(|id| (id, None)));
        }
        if !entries.is_empty() {
            info!(path = %self.path, consumer = %self.name, entries = entries.len(), "taking up this consumer's pending entries");
            self.probe.add_counter("recovered", entries.len() as u64);
        }
        Ok(entries)
    }

    /// Takes up a dead process's entries found under a newly leased name as a takeover: the
    /// claim counts a delivery, and the delivery limit applies.
    async fn inherit(&mut self, ids: Vec<(String, usize)>) -> Result<Entries, RedisError> {
        let (stream, group, name) = (
            self.settings.stream.clone(),
            self.settings.group.clone(),
            self.name.clone(),
        );
        let only: Vec<&String> = ids.iter().map(|(id, _)| id).collect();
        let claimed: StreamClaimReply = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg(&group)
            .arg(&name)
            .arg(0)
            .arg(&only)
            .query_async(self.conn())
            .await?;
        let counts: HashMap<String, usize> = ids.into_iter().collect();
        info!(path = %self.path, consumer = %name, entries = claimed.ids.len(), "taking over entries a dead process left under this name");
        self.probe.add_counter("claimed", claimed.ids.len() as u64);
        Ok(claimed
            .ids
            .into_iter()
            .map(|e| {
                let n = counts.get(&e.id).map(|n| n + 1);
                (e, n)
            })
            .collect())
    }

    /// Resets the idle time of entries held for a while, so no other consumer takes them.
    async fn touch(&mut self) -> Result<(), RedisError> {
        let every = self.settings.claim_idle / 3;
        if Instant::now() < self.next_touch {
            return Ok(());
        }
        self.next_touch = Instant::now() + every;
        let now = Instant::now();
        let old: Vec<i64> = self
            .inflight
            .iter()
            .filter(|(_, f)| now.duration_since(f.touched) >= every)
            .map(|(k, _)| *k)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = old.iter().map(|k| self.inflight[k].id.clone()).collect();
        let (stream, group, name) = (
            self.settings.stream.clone(),
            self.settings.group.clone(),
            self.name.clone(),
        );
        let mut kept: HashSet<String> = HashSet::new();
        for chunk in ids.chunks(ACK_CHUNK) {
            let still: Vec<String> = redis::Script::new(TOUCH_OWN)
                .key(&stream)
                .arg(&group)
                .arg(&name)
                .arg(chunk)
                .invoke_async(self.conn())
                .await?;
            kept.extend(still);
        }
        let mut lost = 0u64;
        for k in old {
            let Some(f) = self.inflight.get_mut(&k) else {
                continue;
            };
            if kept.contains(&f.id) {
                f.touched = now;
            } else {
                // Taken over while this consumer could not reach Redis (or acknowledged
                // elsewhere): its new owner finishes and acknowledges it.
                let id = f.id.clone();
                self.inflight_bytes -= f.bytes;
                if let Some(f) = self.inflight.remove(&k) {
                    self.landed(&f);
                }
                self.held.remove(&id);
                warn!(path = %self.path, consumer = %name, id = %id, "an entry this consumer held was taken over by another; leaving it to its new owner");
                lost += 1;
            }
        }
        if lost > 0 {
            self.probe.add_counter("lost", lost);
        }
        Ok(())
    }

    /// Takes over entries other consumers left idle too long.
    async fn claim(&mut self) -> Result<Entries, RedisError> {
        if Instant::now() < self.next_claim || self.recover_from.is_some() {
            return Ok(Vec::new());
        }
        let room = self.room();
        if room == 0 {
            return Ok(Vec::new());
        }
        let (stream, group, name) = (
            self.settings.stream.clone(),
            self.settings.group.clone(),
            self.name.clone(),
        );
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&stream)
            .arg(&group)
            .arg(&name)
            .arg(self.settings.claim_idle.as_millis() as u64)
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(self.page(room))
            .query_async(self.conn())
            .await?;
        if reply.next_stream_id == "0-0" {
            self.claim_cursor = "0-0".to_owned();
            self.next_claim = Instant::now() + self.settings.claim_interval;
        } else {
            // More to look at: go on in the next round.
            self.claim_cursor = reply.next_stream_id;
        }
        if !reply.deleted_ids.is_empty() {
            warn!(path = %self.path, entries = reply.deleted_ids.len(), "idle pending entries were removed from the stream; dropped from the group");
        }
        let claimed: Vec<StreamId> = reply
            .claimed
            .into_iter()
            .filter(|e| !self.held.contains(&e.id))
            .collect();
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // Delivery counts after the takeover, which counted one more.
        let first = claimed
            .iter()
            .map(|e| e.id.as_str())
            .min_by_key(|id| super::parse_id(id));
        let last = claimed
            .iter()
            .map(|e| e.id.as_str())
            .max_by_key(|id| super::parse_id(id));
        let counts: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(&group)
            .arg(first.unwrap_or("-"))
            .arg(last.unwrap_or("+"))
            .arg(claimed.len() * 2 + PENDING_PAGE)
            .arg(&name)
            .query_async(self.conn())
            .await?;
        let counts: HashMap<String, usize> = counts
            .ids
            .into_iter()
            .map(|p| (p.id, p.times_delivered))
            .collect();
        info!(path = %self.path, consumer = %name, entries = claimed.len(), "took over entries idle in another consumer");
        metrics::counter!(names::REDIS_CLAIMED_TOTAL, "path" => self.path.clone())
            .increment(claimed.len() as u64);
        self.probe.add_counter("claimed", claimed.len() as u64);
        Ok(claimed
            .into_iter()
            .map(|e| {
                let n = counts.get(&e.id).copied();
                (e, n)
            })
            .collect())
    }

    async fn monitor(&mut self) -> Result<(), RedisError> {
        if self.index != 0 || Instant::now() < self.next_monitor {
            return Ok(());
        }
        self.next_monitor = Instant::now() + self.settings.monitor_interval;
        let (stream, group) = (self.settings.stream.clone(), self.settings.group.clone());
        let status = monitor::read(self.conn(), &stream, &group).await?;
        status.publish(&self.path, &stream);
        self.probe.set_counter("stream_length", status.length);
        self.probe.set_counter("stream_pending", status.pending);
        self.probe
            .set_counter("stream_lag", status.lag.unwrap_or_default());
        self.probe.set_counter("stream_consumers", status.consumers);
        Ok(())
    }

    /// Reads new entries, blocking a while when there are none; at the in-flight bound it
    /// waits for acks instead.
    async fn read(&mut self) -> Result<Entries, RoundError> {
        let room = self.room();
        if room == 0 {
            if !self.flushed_at_bound {
                self.flushed_at_bound = true;
                self.broadcast(|| SourceMsg::FlushNow)
                    .map_err(RoundError::Pipeline)?;
            }
            if let Ok(Some(origins)) =
                tokio::time::timeout(Duration::from_millis(50), self.acks.recv()).await
            {
                self.take_acks(origins);
            }
            return Ok(Vec::new());
        }
        self.flushed_at_bound = false;
        let block = if self.inflight.is_empty() && self.to_ack.is_empty() {
            self.settings.block
        } else {
            self.settings.block.min(SHORT_BLOCK)
        };
        let (stream, group, name) = (
            self.settings.stream.clone(),
            self.settings.group.clone(),
            self.name.clone(),
        );
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg(&name)
            .arg("COUNT")
            .arg(room.min(self.settings.count.max(1)))
            .arg("BLOCK")
            .arg((block.as_millis() as u64).max(1))
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(self.conn())
            .await
            .map_err(|e| RoundError::from_redis(&self.addr, e))?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|e| (e, None))
            .collect())
    }

    /// Tracks entries and hands each to the least busy lane; with `limit`, entries delivered
    /// too often go to the dead-letter stream instead.
    fn dispatch(&mut self, entries: Entries, limit: bool) -> Result<(), ActorProcessingErr> {
        if entries.is_empty() {
            return Ok(());
        }
        let lanes = self.downstream.len();
        let mut routed: Vec<Vec<SourceRecord>> = (0..lanes).map(|_| Vec::new()).collect();
        let mut bytes = 0u64;
        let now = Instant::now();
        for (entry, deliveries) in entries {
            if self.held.contains(&entry.id) {
                continue;
            }
            self.seq += 1;
            let over = limit
                && self.dlq.is_some()
                && deliveries.is_some_and(|n| n > self.settings.max_deliveries as usize);
            let lane = (!over).then(|| self.next_lane());
            if let Some(lane) = lane {
                self.lane_load[lane] += 1;
            }
            let origin = Origin {
                topic: self.topic,
                partition: lane.unwrap_or(0) as i32,
                offset: self.seq,
                epoch: self.epoch,
            };
            let r = record(
                &entry,
                origin,
                self.settings.payload_field.as_deref(),
                deliveries,
            );
            self.held.insert(entry.id.clone());
            let batch = self.settings.drain_counting.as_ref().and_then(|c| {
                entry
                    .map
                    .get(&c.field)
                    .map(|v| String::from_utf8_lossy(&self::bytes(v)).into_owned())
            });
            let held = r.in_flight_size();
            self.inflight_bytes += held;
            self.inflight.insert(
                self.seq,
                Flight {
                    id: entry.id.clone(),
                    lane,
                    batch,
                    touched: now,
                    bytes: held,
                },
            );
            let Some(lane) = lane else {
                let Some(dlq) = &self.dlq else { continue };
                let n = deliveries.unwrap_or_default();
                warn!(path = %self.path, id = %entry.id, deliveries = n, "entry delivered too often without an ack, dead-lettering it");
                let letter = DeadLetter {
                    source: r,
                    acker: self.acker.clone(),
                    poison: Poison::new(
                        "DeliveryLimit",
                        format!(
                            "delivered {n} times without being acknowledged (limit {})",
                            self.settings.max_deliveries
                        ),
                    ),
                    stage: "source",
                    retry_count: n.saturating_sub(1) as u32,
                };
                dlq.cast(DlqMsg::Send(letter, None))
                    .map_err(|_| "the dead-letter writer is gone")?;
                continue;
            };
            bytes += r.size() as u64;
            routed[lane].push(r);
        }
        let n: usize = routed.iter().map(Vec::len).sum();
        if n > 0 {
            metrics::counter!(names::RECORDS_CONSUMED_TOTAL, "path" => self.path.clone(), "topic" => self.settings.stream.clone()).increment(n as u64);
            self.probe.progress(n as u64, bytes);
        }
        lanes::hand_out(&self.downstream, routed, &self.acker)
    }

    fn publish_gauges(&self) {
        metrics::gauge!(names::REDIS_IN_FLIGHT_RECORDS, "path" => self.path.clone())
            .set(self.inflight.len() as f64);
        metrics::gauge!(names::REDIS_IN_FLIGHT_BYTES, "path" => self.path.clone())
            .set(self.inflight_bytes as f64);
        self.probe
            .set_counter("in_flight", self.inflight.len() as u64);
        self.probe
            .set_counter("acks_waiting", self.to_ack.len() as u64);
    }

    /// The Redis part of one round.
    async fn work(&mut self) -> Result<(), RoundError> {
        if self.conn.is_none() {
            let conn = self
                .connection
                .connect(self.settings.block + Duration::from_secs(5))
                .await
                .map_err(RoundError::Redis)?;
            self.conn = Some(conn);
        }
        let addr = self.addr.clone();
        let redis = move |e: RedisError| RoundError::from_redis(&addr, e);
        if !self.group_ready {
            self.ensure_group().await.map_err(&redis)?;
        }
        if !self.named {
            self.take_name().await?;
        }
        self.renew_name().await?;
        self.send_acks().await.map_err(&redis)?;
        if self.probe.is_paused() {
            if !self.paused {
                self.paused = true;
                info!(path = %self.path, in_flight = self.inflight.len(), "pipeline paused by an operator, reading nothing new");
                self.broadcast(|| SourceMsg::FlushNow)
                    .map_err(RoundError::Pipeline)?;
            }
            self.touch().await.map_err(&redis)?;
            self.publish_gauges();
            tokio::time::sleep(SHORT_BLOCK).await;
            return Ok(());
        }
        if self.paused {
            self.paused = false;
            info!(path = %self.path, "pipeline resumed by an operator");
        }
        // Own entries are not counted again: the delivery limit applies to takeovers only
        // (and to a dead process's entries found under a newly leased name).
        let own = self.recover_own().await.map_err(&redis)?;
        let inherited = self.inherited;
        self.dispatch(own, inherited)
            .map_err(RoundError::Pipeline)?;
        if self.recover_from.is_none() {
            self.inherited = false;
        }
        self.touch().await.map_err(&redis)?;
        let claimed = self.claim().await.map_err(&redis)?;
        self.dispatch(claimed, true).map_err(RoundError::Pipeline)?;
        self.monitor().await.map_err(&redis)?;
        self.publish_gauges();
        let new = self.read().await?;
        self.dispatch(new, false).map_err(RoundError::Pipeline)
    }

    /// One round; `Some(delay)` when the next one waits (Redis is unreachable).
    async fn round(&mut self) -> Result<Option<Duration>, ActorProcessingErr> {
        self.drain_acks();
        match self.work().await {
            Ok(()) => {
                if self.failures > 0 {
                    info!(path = %self.path, redis = %self.addr, "redis reachable again");
                    self.failures = 0;
                    self.probe.set_unhealthy(None);
                }
                Ok(None)
            }
            Err(RoundError::Pipeline(e)) => Err(e),
            Err(RoundError::NoGroup(e)) => {
                warn!(path = %self.path, error = %e, "consumer group missing, creating it again");
                self.group_ready = false;
                Ok(None)
            }
            Err(RoundError::Redis(e)) => {
                // The connection may be half-broken: make a new one. The group may be gone
                // with a Redis that restarted empty: make sure of it again.
                self.conn = None;
                self.group_ready = false;
                self.failures += 1;
                let delay = self.settings.reconnect.delay(self.failures - 1);
                metrics::counter!(names::REDIS_ERRORS_TOTAL, "path" => self.path.clone())
                    .increment(1);
                warn!(path = %self.path, attempt = self.failures, delay = ?delay, error = %e, "redis unavailable, retrying");
                self.probe.set_unhealthy(Some(e));
                self.publish_gauges();
                Ok(Some(delay))
            }
        }
    }

    /// Graceful stop: flush downstream, wait for acks, send them.
    async fn drain(&mut self) {
        let _ = self.broadcast(|| SourceMsg::FlushNow);
        let mut deadline = Instant::now() + self.settings.drain_timeout;
        if let Some(stop) = self.probe.stop_deadline() {
            deadline = deadline.min(stop.checked_sub(ACK_RESERVE).unwrap_or(stop));
        }
        loop {
            self.drain_acks();
            if self.inflight.is_empty() {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                warn!(path = %self.path, in_flight = self.inflight.len(), "stopping with unacknowledged entries; they stay pending under this consumer");
                break;
            }
            if let Ok(Some(origins)) = tokio::time::timeout(remaining, self.acks.recv()).await {
                self.take_acks(origins);
            }
        }
        if self.to_ack.is_empty() {
            return;
        }
        if self.conn.is_none() {
            self.conn = tokio::time::timeout(ACK_RESERVE, self.connection.connect(ACK_RESERVE))
                .await
                .ok()
                .and_then(Result::ok);
        }
        if self.conn.is_some() {
            match tokio::time::timeout(ACK_RESERVE, self.send_acks()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(path = %self.path, error = %describe(&self.addr, &e), "last acks failed; those entries will be processed again")
                }
                Err(_) => {
                    warn!(path = %self.path, "last acks timed out; those entries will be processed again")
                }
            }
        }
    }
}

/// Why a round ended early.
enum RoundError {
    /// Redis failed or is unreachable: reconnect with backoff.
    Redis(String),
    /// The group is gone: create it again.
    NoGroup(String),
    /// The path itself failed (a decoder is gone): the consumer fails.
    Pipeline(ActorProcessingErr),
}

impl RoundError {
    fn from_redis(addr: &str, e: RedisError) -> RoundError {
        if is_nogroup(&e) {
            RoundError::NoGroup(describe(addr, &e))
        } else {
            RoundError::Redis(describe(addr, &e))
        }
    }
}

impl Actor for RedisConsumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        if args.downstream.is_empty() {
            return Err("a redis consumer needs at least one decoder".into());
        }
        // Checked here so a bad URL fails the start with its reason, not every round.
        args.connection.client()?;
        let path = args.probe.path().to_string();
        let base = args.settings.consumer_of(args.index);
        let named = !args.settings.lease_name;
        let (tx, rx) = mpsc::unbounded_channel::<Vec<Origin>>();
        let acker = Acker::new(move |origins| {
            let _ = tx.send(origins);
        });
        info!(path = %path, stream = %args.settings.stream, group = %args.settings.group, consumer = %base, leased = !named, "redis consumer started");
        myself.cast(ConsumerMsg::Poll)?;
        let now = Instant::now();
        let lane_load = vec![0; args.downstream.len()];
        Ok(ConsumerState {
            addr: args.connection.addr(),
            connection: args.connection,
            conn: None,
            topic: Topic::intern(&args.settings.stream),
            name: base.clone(),
            base,
            named,
            inherited: false,
            owner: args.lease_owner,
            next_renew: now,
            index: args.index,
            downstream: args.downstream,
            dlq: args.dlq,
            probe: args.probe,
            path,
            acks: rx,
            acker,
            epoch: epoch(),
            seq: 0,
            inflight: HashMap::new(),
            inflight_bytes: 0,
            held: HashSet::new(),
            to_ack: Vec::new(),
            next_lane: 0,
            lane_load,
            group_ready: false,
            recover_from: Some("-".to_owned()),
            claim_cursor: "0-0".to_owned(),
            next_claim: now,
            next_touch: now + args.settings.claim_idle / 3,
            next_monitor: now,
            failures: 0,
            flushed_at_bound: false,
            paused: false,
            settings: args.settings,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.drain().await;
        debug!(path = %state.path, "redis consumer stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConsumerMsg::Poll => match state.round().await? {
                // A stopping actor refuses new messages; that ends the loop.
                None => {
                    let _ = myself.cast(ConsumerMsg::Poll);
                }
                Some(delay) => {
                    myself.send_after(delay, || ConsumerMsg::Poll);
                }
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::least_loaded;

    #[test]
    fn an_entry_goes_to_the_least_busy_lane_and_equals_take_turns() {
        // Lane 0 holds a slow job: the next entries go to the free lanes, never behind it.
        assert_eq!(least_loaded(&[1, 0, 0], 0), 1);
        assert_eq!(least_loaded(&[1, 1, 0], 0), 2);
        assert_eq!(least_loaded(&[1, 0, 1], 2), 1);
        // Equals in turn from the lane after the last one used.
        assert_eq!(least_loaded(&[0, 0, 0], 0), 0);
        assert_eq!(least_loaded(&[0, 0, 0], 1), 1);
        assert_eq!(least_loaded(&[2, 2, 2], 5), 2);
        assert_eq!(least_loaded(&[0], 3), 0);
    }
}
