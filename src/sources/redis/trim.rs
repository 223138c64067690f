//! Trimming a job stream without losing a job: `XTRIM <stream> MINID <floor>`, where the floor
//! is, over every group of the stream, the lower of its oldest pending entry and the entry
//! after its last delivered one. Entries below it were delivered to every group and
//! acknowledged, so no pending and no undelivered entry is ever trimmed, and the stream's
//! memory stays bounded by what is still waiting or in work.
//!
//! The floor is read before the trim; since pending entries only leave and delivery only moves
//! forward, a floor read a moment earlier is lower than the current one, never higher.

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamInfoGroupsReply, StreamPendingReply};
use redis::RedisError;

use super::parse_id;

/// The id of the first entry a trim keeps, `None` when nothing may be trimmed (the stream or
/// its groups do not exist, or a group delivered nothing yet).
pub async fn floor(
    conn: &mut MultiplexedConnection,
    stream: &str,
) -> Result<Option<(u64, u64)>, RedisError> {
    let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(conn).await?;
    if !exists {
        return Ok(None);
    }
    let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    if groups.groups.is_empty() {
        return Ok(None);
    }
    let mut floor: Option<(u64, u64)> = None;
    for g in &groups.groups {
        let Some((ms, seq)) = parse_id(&g.last_delivered_id) else {
            return Ok(None);
        };
        // The entry after the last delivered one: nothing from there on was read by the group.
        let mut group_floor = (ms, seq.saturating_add(1));
        if g.pending > 0 {
            let pending: StreamPendingReply = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&g.name)
                .query_async(conn)
                .await?;
            let StreamPendingReply::Data(d) = &pending else {
                // Acknowledged since XINFO was read: the entry after the last delivered one
                // stands.
                floor = Some(floor.map_or(group_floor, |f| f.min(group_floor)));
                continue;
            };
            match parse_id(&d.start_id) {
                Some(oldest) => group_floor = group_floor.min(oldest),
                // An id that does not parse: trim nothing rather than guess.
                None => return Ok(None),
            }
        }
        floor = Some(floor.map_or(group_floor, |f| f.min(group_floor)));
    }
    Ok(floor)
}

/// Trims `stream` below its [`floor`]; returns the entries removed.
pub async fn trim_consumed(
    conn: &mut MultiplexedConnection,
    stream: &str,
) -> Result<u64, RedisError> {
    let Some((ms, seq)) = floor(conn, stream).await? else {
        return Ok(0);
    };
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(format!("{ms}-{seq}"))
        .query_async(conn)
        .await
}
