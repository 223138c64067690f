//! `actord adaptive-card reset`: deletes the job streams with their groups (the seed's test
//! tool, option 2), refusing while a run is active.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::{AdaptiveCardConfig, ADAPTIVE_CARD_QUEUE, SALES_ORG_QUEUE};
use crate::sources::redis::RedisConnection;

/// The key a run holds while it lasts: its run id. The run renews it every [`MARK_RENEW`], so a
/// run whose process died blocks the next run and a reset for at most [`MARK_TTL`].
pub const ACTIVE_RUN_KEY: &str = "adaptive_card:active_run";

/// How long a run's mark outlives its last renewal.
pub const MARK_TTL: Duration = Duration::from_secs(60);

/// How often a live run renews its mark: several renewals fit in [`MARK_TTL`], so a Redis that
/// answers late or restarts briefly does not let the mark lapse under a live run.
pub const MARK_RENEW: Duration = Duration::from_secs(5);

/// Sets the mark to the run's id for another [`MARK_TTL`] when it is the run's own or has
/// lapsed; 0 when another run holds it.
const RENEW: &str = r#"
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Marks a run active; `false` when another run already is.
pub async fn mark_active(
    conn: &mut MultiplexedConnection,
    run_id: i64,
) -> Result<bool, redis::RedisError> {
    let set: Option<String> = redis::cmd("SET")
        .arg(ACTIVE_RUN_KEY)
        .arg(run_id)
        .arg("NX")
        .arg("PX")
        .arg(MARK_TTL.as_millis() as u64)
        .query_async(conn)
        .await?;
    Ok(set.is_some())
}

/// Renews the run's mark (taking it again if it lapsed meanwhile, say across a Redis restart);
/// `false` when another run holds it.
pub async fn renew_active(
    conn: &mut MultiplexedConnection,
    run_id: i64,
) -> Result<bool, redis::RedisError> {
    let renewed: i64 = redis::Script::new(RENEW)
        .key(ACTIVE_RUN_KEY)
        .arg(run_id)
        .arg(MARK_TTL.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(renewed == 1)
}

/// Deletes the mark when it is the run's own.
const CLEAR: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Clears the mark of `run_id` (and only of it).
pub async fn clear_active(
    conn: &mut MultiplexedConnection,
    run_id: i64,
) -> Result<(), redis::RedisError> {
    let _: i64 = redis::Script::new(CLEAR)
        .key(ACTIVE_RUN_KEY)
        .arg(run_id)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// What a reset deleted.
#[derive(Debug, Default)]
pub struct Deleted {
    pub streams: Vec<String>,
    /// Drain counter hashes of earlier runs (`<stream>:drain:<run_id>`).
    pub drain_counters: usize,
}

/// Deletes both job streams (their groups go with them) and their runs' drain counters; with
/// `dlq`, their dead-letter streams too.
pub async fn reset(config: &AdaptiveCardConfig, dlq: bool) -> Result<Deleted, String> {
    let connection = RedisConnection::new(config.redis_url.clone());
    let mut conn = connection
        .connect(std::time::Duration::from_secs(5))
        .await?;
    let active: Option<String> = redis::cmd("GET")
        .arg(ACTIVE_RUN_KEY)
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("redis {}: {e}", connection.addr()))?;
    if let Some(run) = active {
        return Err(format!(
            "run {run} is active; wait for it to end (a run whose process died holds \
             {ACTIVE_RUN_KEY} for at most {} s more)",
            MARK_TTL.as_secs()
        ));
    }
    let mut streams = vec![SALES_ORG_QUEUE.to_owned(), ADAPTIVE_CARD_QUEUE.to_owned()];
    if dlq {
        streams.push(format!("{SALES_ORG_QUEUE}:dlq"));
        streams.push(format!("{ADAPTIVE_CARD_QUEUE}:dlq"));
    }
    let failed = |e: redis::RedisError| format!("redis {}: {e}", connection.addr());
    let mut deleted = Deleted::default();
    for s in streams {
        let n: i64 = redis::cmd("DEL")
            .arg(&s)
            .query_async(&mut conn)
            .await
            .map_err(failed)?;
        if n > 0 {
            deleted.streams.push(s);
        }
    }
    // The counts of runs whose entries are gone with the streams.
    for stream in [SALES_ORG_QUEUE, ADAPTIVE_CARD_QUEUE] {
        let pattern = crate::sources::redis::drain::key(stream, "*");
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(failed)?;
            if !keys.is_empty() {
                let n: usize = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                deleted.drain_counters += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(deleted)
}
