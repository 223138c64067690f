//! The scheduled entry `run`: one run of both stages, driven by the process holding the run's
//! lease (workers in every process take the jobs).
//!
//! 1. Enqueue one sales-org job per organisation into `sales_org_queue` (field `data`).
//! 2. Wait until the stage is drained: the group has no pending entry and no undelivered one
//!    (`XINFO GROUPS` pending and lag; XLEN does not shrink on XACK, so the seed's
//!    `xlen == 0 and pending == 0` test would never fire). Dead-lettered jobs are acked, so they
//!    count as done.
//! 3. Merge the run's per-organisation files into `Material.csv` and `GSCM.csv` (at the top of
//!    the output and under `runs/<run_id>/`).
//! 4. Enqueue one job per user (from the users table) into `adaptive_card_queue` and wait
//!    until that stage is drained.
//! 5. Trim both streams (`XTRIM MINID` at the lower of the oldest pending entry and the entry
//!    after the last delivered one, over every group; see `sources::redis::trim`): no pending or
//!    undelivered job is ever trimmed, and Redis memory stays bounded.
//!
//! The run id is the due time in Unix milliseconds: the same in every process for one due time.

use std::sync::Arc;
use std::time::Duration;

use actord_actors::scheduler::{Job, RunContext, RunSummary};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use redis::aio::MultiplexedConnection;
use tracing::info;

use super::csv::Table;
use super::status::{RunCounts, RunStatus, StageCounts};
use super::t2a::DATASETS;
use super::{
    card, database, reset, AdaptiveCardConfig, ADAPTIVE_CARD_GROUP, ADAPTIVE_CARD_QUEUE,
    SALES_ORG_GROUP, SALES_ORG_QUEUE,
};
use crate::sources::redis::trim::trim_consumed;
use crate::sources::redis::{monitor, RedisConnection};

/// The entry's name: its lease key is `adaptive-card/run`.
pub const ENTRY: &str = "run";

pub fn job(
    config: Arc<AdaptiveCardConfig>,
    connection: RedisConnection,
    store: Arc<dyn ObjectStore>,
    runs: Arc<RunStatus>,
) -> Job {
    Job::new(move |ctx| {
        let (config, connection, store, runs) = (
            config.clone(),
            connection.clone(),
            store.clone(),
            runs.clone(),
        );
        async move { run(ctx, &config, &connection, store, &runs).await }
    })
}

/// Which stage's counters a drain updates.
#[derive(Clone, Copy)]
enum Stage {
    SalesOrg,
    AdaptiveCard,
}

impl Stage {
    fn counts(self, c: &mut RunCounts) -> &mut StageCounts {
        match self {
            Stage::SalesOrg => &mut c.sales_org,
            Stage::AdaptiveCard => &mut c.adaptive_card,
        }
    }
}

/// Entries in a stream (0 when it does not exist): a stage's dead letters are what its
/// dead-letter stream gained during the run.
async fn xlen(conn: &mut MultiplexedConnection, stream: &str) -> Result<u64, String> {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(redis_err)
}

fn redis_err(e: redis::RedisError) -> String {
    format!("redis: {e}")
}

async fn ensure_group(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Result<(), String> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(redis_err(e)),
        _ => Ok(()),
    }
}

async fn enqueue(
    conn: &mut MultiplexedConnection,
    stream: &str,
    jobs: &[serde_json::Value],
) -> Result<(), String> {
    for chunk in jobs.chunks(500) {
        let mut pipe = redis::pipe();
        for j in chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("data")
                .arg(j.to_string())
                .ignore();
        }
        let () = pipe.query_async(conn).await.map_err(redis_err)?;
    }
    Ok(())
}

/// Waits until the group holds nothing pending or undelivered; reports progress as it shrinks,
/// and the stage's drain counters (`enqueued` set by the caller) in `runs`.
#[allow(clippy::too_many_arguments)]
async fn drained(
    ctx: &RunContext,
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    timeout: Duration,
    runs: &RunStatus,
    stage: Stage,
    dlq_before: u64,
) -> Result<monitor::StreamStatus, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = u64::MAX;
    let dlq = format!("{stream}:dlq");
    loop {
        let s = monitor::read(conn, stream, group)
            .await
            .map_err(redis_err)?;
        let dead = xlen(conn, &dlq).await?.saturating_sub(dlq_before);
        let left = s.pending + s.lag.unwrap_or(u64::MAX / 2);
        runs.update(|c| {
            let counts = stage.counts(c);
            counts.remaining = left.min(counts.enqueued);
            counts.dead_lettered = dead;
            counts.done = counts
                .enqueued
                .saturating_sub(counts.remaining)
                .saturating_sub(dead);
        });
        if s.group_exists && left == 0 {
            return Ok(s);
        }
        if left < last {
            if last != u64::MAX {
                ctx.progress(last - left, 0);
            }
            last = left;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{stream} not drained within {timeout:?}: {} pending, {:?} undelivered",
                s.pending, s.lag
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = ctx.stopped() => return Err("the scheduler is stopping".to_owned()),
        }
    }
}

/// Merges the run's per-organisation files of each dataset; returns the rows merged.
async fn merge(store: &Arc<dyn ObjectStore>, run_id: i64) -> Result<u64, String> {
    let mut rows = 0u64;
    for (dataset, file) in DATASETS {
        let prefix = ObjectPath::from(format!("runs/{run_id}/{dataset}"));
        let mut metas: Vec<_> = store
            .list(Some(&prefix))
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| format!("listing {prefix}: {e}"))?;
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let mut tables = Vec::with_capacity(metas.len());
        for m in metas {
            let bytes = store
                .get(&m.location)
                .await
                .map_err(|e| format!("reading {}: {e}", m.location))?
                .bytes()
                .await
                .map_err(|e| format!("reading {}: {e}", m.location))?;
            tables.push(
                Table::parse(&String::from_utf8_lossy(&bytes))
                    .map_err(|e| format!("{}: {e}", m.location))?,
            );
        }
        let merged = Table::merge(&tables);
        rows += merged.rows.len() as u64;
        let text = merged.render().into_bytes();
        for path in [card::merged_file(run_id, file), ObjectPath::from(file)] {
            store
                .put(&path, PutPayload::from(text.clone()))
                .await
                .map_err(|e| format!("writing {path}: {e}"))?;
        }
    }
    Ok(rows)
}

async fn run(
    ctx: RunContext,
    config: &AdaptiveCardConfig,
    connection: &RedisConnection,
    store: Arc<dyn ObjectStore>,
    runs: &RunStatus,
) -> Result<RunSummary, String> {
    let run_id = ctx.due.timestamp_millis();
    let mut conn = connection.connect(Duration::from_secs(10)).await?;
    // Both stages may take their whole timeout; the mark expires after that.
    let ttl = config.stage_timeout * 2 + Duration::from_secs(60);
    if !reset::mark_active(&mut conn, run_id, ttl)
        .await
        .map_err(redis_err)?
    {
        return Err("another run is active (adaptive_card:active_run is set)".to_owned());
    }
    runs.start(run_id);
    let outcome = stages(&ctx, config, &mut conn, store, run_id, runs).await;
    let cleared = reset::clear_active(&mut conn, run_id).await;
    let summary = outcome?;
    cleared.map_err(redis_err)?;
    Ok(summary)
}

async fn stages(
    ctx: &RunContext,
    config: &AdaptiveCardConfig,
    conn: &mut MultiplexedConnection,
    store: Arc<dyn ObjectStore>,
    run_id: i64,
    runs: &RunStatus,
) -> Result<RunSummary, String> {
    ensure_group(conn, SALES_ORG_QUEUE, SALES_ORG_GROUP).await?;
    ensure_group(conn, ADAPTIVE_CARD_QUEUE, ADAPTIVE_CARD_GROUP).await?;
    let db = card::connect(config).await.map_err(|e| e.message)?;
    database::prepare(&db, config).await?;
    let orgs = database::sales_orgs(&db, config).await?;

    let jobs: Vec<serde_json::Value> = orgs
        .iter()
        .map(|o| serde_json::json!({"run_id": run_id, "sales_org": o}))
        .collect();
    let dlq_before = xlen(conn, &format!("{SALES_ORG_QUEUE}:dlq")).await?;
    runs.update(|c| c.sales_org.enqueued = jobs.len() as u64);
    enqueue(conn, SALES_ORG_QUEUE, &jobs).await?;
    info!(
        run_id,
        sales_orgs = jobs.len(),
        "adaptive-card run: stage 1 enqueued"
    );
    drained(
        ctx,
        conn,
        SALES_ORG_QUEUE,
        SALES_ORG_GROUP,
        config.stage_timeout,
        runs,
        Stage::SalesOrg,
        dlq_before,
    )
    .await?;
    let rows = merge(&store, run_id).await?;
    let trimmed = trim_consumed(conn, SALES_ORG_QUEUE)
        .await
        .map_err(redis_err)?;
    ctx.progress(rows, 0);
    info!(
        run_id,
        rows, "adaptive-card run: stage 1 drained, files merged"
    );

    let users = db
        .query(
            &format!(
                "SELECT user_id, sales_org FROM {} ORDER BY user_id",
                config.users_table
            ),
            &[],
        )
        .await
        .map_err(|e| format!("reading users from {}: {e}", config.users_table))?;
    let jobs: Vec<serde_json::Value> = users
        .iter()
        .map(|r| {
            serde_json::json!({"run_id": run_id, "user_id": r.get::<_, String>(0), "sales_org": r.get::<_, String>(1)})
        })
        .collect();
    let dlq_before = xlen(conn, &format!("{ADAPTIVE_CARD_QUEUE}:dlq")).await?;
    runs.update(|c| c.adaptive_card.enqueued = jobs.len() as u64);
    enqueue(conn, ADAPTIVE_CARD_QUEUE, &jobs).await?;
    info!(
        run_id,
        users = jobs.len(),
        "adaptive-card run: stage 2 enqueued"
    );
    drained(
        ctx,
        conn,
        ADAPTIVE_CARD_QUEUE,
        ADAPTIVE_CARD_GROUP,
        config.stage_timeout,
        runs,
        Stage::AdaptiveCard,
        dlq_before,
    )
    .await?;
    let trimmed = trimmed
        + trim_consumed(conn, ADAPTIVE_CARD_QUEUE)
            .await
            .map_err(redis_err)?;
    Ok(RunSummary {
        records: (orgs.len() + jobs.len()) as u64,
        bytes: 0,
        note: Some(format!(
            "run {run_id}: {} sales orgs, {rows} merged rows, {} users; {trimmed} stream entries trimmed",
            orgs.len(),
            jobs.len()
        )),
    })
}
