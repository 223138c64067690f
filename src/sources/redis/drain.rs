//! Drain counters: how many entries of one batch (e.g. one run of a job queue) a stream was
//! given, and how many of them its group acknowledged or dead-lettered, counted in Redis.
//!
//! XACK does not shrink a stream (XLEN counts acknowledged entries until they are trimmed),
//! and a group's pending and lag cover every batch in the stream at once, so neither tells
//! when one batch is done while another (or a stale entry of an earlier one) is in the stream
//! too. Instead, every entry of a batch carries the batch's id in a field of its own (e.g.
//! `run_id`), and the hash `<stream>:drain:<batch>` counts:
//!
//! - `enqueued`: set by [`enqueue`] in the same transaction (MULTI) as the entries' XADDs, so
//!   it always equals the entries that reached the stream;
//! - `acked`: raised by the consumer's XACK script ([`ack`]) for each entry whose XACK took
//!   it off the group's pending list;
//! - `dead_lettered`: raised by the dead-letter writer's script ([`dead_letter`]), which adds
//!   the dead letter, acknowledges the entry and counts it in one step.
//!
//! Each count goes up only when the XACK in the same script acknowledged the entry (XACK
//! answers 1), so an entry counts once however often its ack or dead letter is repeated (a
//! lost reply, a takeover, a restart), and a crash can never separate a count from its ack.
//! The batch is drained when `acked + dead_lettered == enqueued`, whichever processes did
//! the work, and the counters outlive a restart of any of them. Each write renews the hash's
//! expiry, so Redis keeps one small hash per recent batch and no more.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::RedisError;
use serde::Serialize;

/// Counting entries per batch: which field of an entry names its batch, and how long a
/// batch's counters are kept after their last change.
#[derive(Clone, Debug)]
pub struct DrainCounting {
    /// The entry field holding the batch id; entries without it are not counted.
    pub field: String,
    pub ttl: Duration,
}

/// One batch's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainCounts {
    pub enqueued: u64,
    pub acked: u64,
    pub dead_lettered: u64,
}

impl DrainCounts {
    /// Entries neither acknowledged nor dead-lettered yet.
    pub fn remaining(&self) -> u64 {
        self.enqueued
            .saturating_sub(self.acked)
            .saturating_sub(self.dead_lettered)
    }

    /// Every entry enqueued was acknowledged or dead-lettered.
    pub fn drained(&self) -> bool {
        self.acked + self.dead_lettered == self.enqueued
    }
}

/// The hash counting batch `batch` of `stream`.
pub fn key(stream: &str, batch: &str) -> String {
    format!("{stream}:drain:{batch}")
}

fn ttl_ms(ttl: Duration) -> u64 {
    ttl.as_millis().clamp(1_000, u64::MAX as u128) as u64
}

/// Acknowledges entries and counts each one XACK took off the pending list in its batch's
/// hash. KEYS[1] the stream, KEYS[2..] the batches' hashes; ARGV[1] the group, ARGV[2] the
/// hashes' expiry (ms), then pairs of entry id and the index of its hash in KEYS (0: none).
/// Returns how many entries were acknowledged.
const ACK: &str = r"
local n = 0
for i = 3, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    n = n + 1
    local k = tonumber(ARGV[i + 1])
    if k > 0 then
      redis.call('HINCRBY', KEYS[k], 'acked', 1)
      redis.call('PEXPIRE', KEYS[k], ARGV[2])
    end
  end
end
return n
";

/// Dead-letters an entry still pending: only when it is pending, XADD of the letter, then XACK
/// and the count. The letter is written before the acknowledgement, so a failing XADD (a
/// script is not rolled back) leaves the entry pending, to be dead-lettered again, never
/// acknowledged without its letter. KEYS[1] the stream, KEYS[2] the dead-letter stream,
/// KEYS[3] the batch's hash (optional); ARGV[1] the group, ARGV[2] the entry id, ARGV[3] the
/// hash's expiry (ms), then the letter's fields and values. Returns 1 when written, 0 when the
/// entry was acknowledged already (its letter or its work is done).
const DEAD_LETTER: &str = r"
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if KEYS[3] then
  redis.call('HINCRBY', KEYS[3], 'dead_lettered', 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return 1
";

/// Acknowledges `entries` (id and batch, when counted) of `stream` for `group`; returns how
/// many XACK took off the pending list.
pub async fn ack(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    ttl: Duration,
    entries: &[(String, Option<String>)],
) -> Result<u64, RedisError> {
    let mut keys: Vec<String> = Vec::new();
    let ack = redis::Script::new(ACK);
    let mut script = ack.prepare_invoke();
    script.key(stream);
    let mut args: Vec<String> = vec![group.to_owned(), ttl_ms(ttl).to_string()];
    for (id, batch) in entries {
        let index = match batch {
            None => 0,
            Some(b) => {
                let k = key(stream, b);
                match keys.iter().position(|x| *x == k) {
                    Some(i) => i + 2,
                    None => {
                        keys.push(k);
                        keys.len() + 1
                    }
                }
            }
        };
        args.push(id.clone());
        args.push(index.to_string());
    }
    for k in &keys {
        script.key(k);
    }
    for a in &args {
        script.arg(a);
    }
    script.invoke_async(conn).await
}

/// Writes the dead letter `fields` of entry `id` to `dlq`, acknowledges the entry and counts
/// it in its batch, in one step; false when the entry had been acknowledged already, and
/// nothing was written.
#[allow(clippy::too_many_arguments)]
pub async fn dead_letter(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    dlq: &str,
    id: &str,
    batch: Option<&str>,
    ttl: Duration,
    fields: &[(String, Vec<u8>)],
) -> Result<bool, RedisError> {
    let script = redis::Script::new(DEAD_LETTER);
    let mut invocation = script.prepare_invoke();
    invocation.key(stream).key(dlq);
    if let Some(b) = batch {
        invocation.key(key(stream, b));
    }
    invocation.arg(group).arg(id).arg(ttl_ms(ttl));
    for (k, v) in fields {
        invocation.arg(k).arg(v.as_slice());
    }
    let written: u64 = invocation.invoke_async(conn).await?;
    Ok(written == 1)
}

/// Adds one entry per job to `stream`, each with `payload_field` holding the job and
/// `counting.field` naming `batch`, and raises the batch's `enqueued` by as many, in one
/// transaction per chunk of jobs. Returns the entries' ids.
pub async fn enqueue(
    conn: &mut MultiplexedConnection,
    stream: &str,
    counting: &DrainCounting,
    batch: &str,
    payload_field: &str,
    jobs: &[String],
) -> Result<Vec<String>, RedisError> {
    let hash = key(stream, batch);
    let mut ids = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(500) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for job in chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg(payload_field)
                .arg(job)
                .arg(&counting.field)
                .arg(batch);
        }
        pipe.cmd("HINCRBY")
            .arg(&hash)
            .arg("enqueued")
            .arg(chunk.len())
            .ignore();
        pipe.cmd("PEXPIRE")
            .arg(&hash)
            .arg(ttl_ms(counting.ttl))
            .ignore();
        let added: Vec<String> = pipe.query_async(conn).await?;
        ids.extend(added);
    }
    Ok(ids)
}

/// The counters of batch `batch` of `stream` (zeros when there are none).
pub async fn read(
    conn: &mut MultiplexedConnection,
    stream: &str,
    batch: &str,
) -> Result<DrainCounts, RedisError> {
    let (enqueued, acked, dead_lettered): (Option<u64>, Option<u64>, Option<u64>) =
        redis::cmd("HMGET")
            .arg(key(stream, batch))
            .arg("enqueued")
            .arg("acked")
            .arg("dead_lettered")
            .query_async(conn)
            .await?;
    Ok(DrainCounts {
        enqueued: enqueued.unwrap_or(0),
        acked: acked.unwrap_or(0),
        dead_lettered: dead_lettered.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_say_what_remains() {
        let c = DrainCounts {
            enqueued: 5,
            acked: 3,
            dead_lettered: 1,
        };
        assert_eq!(c.remaining(), 1);
        assert!(!c.drained());
        assert!(DrainCounts { acked: 4, ..c }.drained());
        assert_eq!(key("q", "17"), "q:drain:17");
    }
}
