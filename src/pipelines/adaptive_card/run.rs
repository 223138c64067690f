//! The scheduled entry `run`: one run of both stages, driven by the process holding the run's
//! lease (workers in every process take the jobs).
//!
//! 1. Enqueue one sales-org job per organisation into `sales_org_queue` (field `data`, and the
//!    run id in field `run_id`), raising the run's `enqueued` counter in the same transaction.
//! 2. Wait until the stage is drained: acked + dead-lettered == enqueued for the run id, as
//!    counted in Redis in `<stream>:drain:<run_id>` by the workers of every process, each count
//!    in the same script as its XACK (see `sources::redis::drain`). Neither XLEN (it does not
//!    shrink on XACK, so the seed's `xlen == 0 and pending == 0` test would never fire) nor
//!    the group's pending and lag (they cover every run's entries) tell when one run is done.
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
use tracing::{info, warn};

use super::csv::Table;
use super::status::{RunCounts, RunStatus, StageCounts};
use super::t2a::DATASETS;
use super::{
    card, database, drain_counting, reset, AdaptiveCardConfig, ADAPTIVE_CARD_GROUP,
    ADAPTIVE_CARD_QUEUE, SALES_ORG_GROUP, SALES_ORG_QUEUE,
};
use crate::sources::redis::drain::{self, DrainCounts};
use crate::sources::redis::trim::trim_consumed;
use crate::sources::redis::RedisConnection;

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

fn redis_err(e: redis::RedisError) -> String {
    format!("redis: {e}")
}

/// True when an error says Redis is unreachable or the connection broke (an outage to wait
/// out), not that it refused the command.
fn unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
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

/// Waits until the run's jobs of `stream` are all acknowledged or dead-lettered, as counted
/// in Redis; reports progress as they finish, and the counters in `runs`. A Redis outage is
/// waited out within the stage's timeout: the workers resume the jobs once it is back, and
/// `conn` is replaced by a fresh connection.
#[allow(clippy::too_many_arguments)]
async fn drained(
    ctx: &RunContext,
    connection: &RedisConnection,
    conn: &mut MultiplexedConnection,
    stream: &str,
    run_id: i64,
    timeout: Duration,
    runs: &RunStatus,
    stage: Stage,
) -> Result<DrainCounts, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let batch = run_id.to_string();
    let mut finished = 0;
    let mut outage: Option<tokio::time::Instant> = None;
    loop {
        let c = match drain::read(conn, stream, &batch).await {
            Ok(c) => c,
            Err(e) if unavailable(&e) => {
                let since = *outage.get_or_insert_with(|| {
                    warn!(run_id, stream, error = %e, "adaptive-card run: Redis unavailable while the stage drains; waiting for it within the stage timeout");
                    tokio::time::Instant::now()
                });
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "{stream} not drained within {timeout:?}: Redis unavailable for the last {:?}: {}",
                        since.elapsed(),
                        redis_err(e)
                    ));
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = ctx.stopped() => return Err("the scheduler is stopping".to_owned()),
                }
                if let Ok(fresh) = connection.connect(Duration::from_secs(10)).await {
                    *conn = fresh;
                }
                continue;
            }
            Err(e) => return Err(redis_err(e)),
        };
        if let Some(since) = outage.take() {
            info!(run_id, stream, after = ?since.elapsed(), "adaptive-card run: Redis is back; the stage drains on");
        }
        runs.update(|r| {
            *stage.counts(r) = StageCounts {
                enqueued: c.enqueued,
                done: c.acked,
                dead_lettered: c.dead_lettered,
                remaining: c.remaining(),
            }
        });
        let now = c.acked + c.dead_lettered;
        if now > finished {
            ctx.progress(now - finished, 0);
            finished = now;
        }
        if c.drained() {
            return Ok(c);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{stream} not drained within {timeout:?}: of {} jobs of run {run_id}, {} done, {} dead-lettered, {} left",
                c.enqueued,
                c.acked,
                c.dead_lettered,
                c.remaining()
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = ctx.stopped() => return Err("the scheduler is stopping".to_owned()),
        }
    }
}

/// Enqueues the run's jobs, counted under the run id.
async fn enqueue(
    conn: &mut MultiplexedConnection,
    config: &AdaptiveCardConfig,
    stream: &str,
    run_id: i64,
    jobs: &[serde_json::Value],
) -> Result<(), String> {
    let jobs: Vec<String> = jobs.iter().map(serde_json::Value::to_string).collect();
    drain::enqueue(
        conn,
        stream,
        &drain_counting(config),
        &run_id.to_string(),
        "data",
        &jobs,
    )
    .await
    .map_err(redis_err)?;
    Ok(())
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
    take_mark(&ctx, &mut conn, run_id).await?;
    // Renewed while the run lasts; a killed process stops renewing and its mark lapses.
    let renewing = Renewer::start(connection.clone(), conn.clone(), run_id);
    runs.start(run_id);
    let outcome = stages(&ctx, config, connection, &mut conn, store, run_id, runs).await;
    // No renewal comes after this, so none can set the mark again once it is cleared.
    renewing.stop().await;
    let cleared = reset::clear_active(&mut conn, run_id).await;
    let summary = outcome?;
    cleared.map_err(redis_err)?;
    Ok(summary)
}

/// Takes the run's mark. Another run's mark is waited out for as long as a mark outlives its
/// last renewal: the mark of a run whose process died lapses within that, a live run's does
/// not, and then this run fails.
async fn take_mark(
    ctx: &RunContext,
    conn: &mut MultiplexedConnection,
    run_id: i64,
) -> Result<(), String> {
    let since = std::time::Instant::now();
    let mut waiting = false;
    loop {
        if reset::mark_active(conn, run_id).await.map_err(redis_err)? {
            if waiting {
                info!(
                    run_id,
                    waited_ms = since.elapsed().as_millis() as u64,
                    "adaptive-card run: the earlier run's mark lapsed"
                );
            }
            return Ok(());
        }
        let held: Option<String> = redis::cmd("GET")
            .arg(reset::ACTIVE_RUN_KEY)
            .query_async(conn)
            .await
            .map_err(redis_err)?;
        let held = held.unwrap_or_default();
        if since.elapsed() > reset::MARK_TTL + reset::MARK_RENEW || ctx.stopping() {
            return Err(format!(
                "another run is active ({} holds run {held} and keeps renewing it)",
                reset::ACTIVE_RUN_KEY
            ));
        }
        if !waiting {
            waiting = true;
            info!(run_id, held = %held, "adaptive-card run: another run's mark is set; waiting for it to end or lapse");
        }
        // Counts as progress: waiting out a dead run's mark is not a stuck run.
        ctx.progress(0, 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Renews a run's mark every [`reset::MARK_RENEW`] on a task of its own until stopped, or
/// until dropped (the run's future dropped mid-run: the task is aborted).
struct Renewer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Renewer {
    fn start(connection: RedisConnection, conn: MultiplexedConnection, run_id: i64) -> Renewer {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        Renewer {
            stop: Some(stop),
            task: tokio::spawn(keep_mark(connection, conn, run_id, stopped)),
        }
    }

    /// Stops renewing and waits until a renewal under way has ended.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How soon a connection made again renews the mark: the mark outlives several missed
/// renewals, not a long outage.
const RENEW_AFTER_RECONNECT: Duration = Duration::from_millis(250);

/// The renewals: Redis failures are logged and the connection made again, which renews soon
/// ([`RENEW_AFTER_RECONNECT`]) rather than a whole period later.
async fn keep_mark(
    connection: RedisConnection,
    mut conn: MultiplexedConnection,
    run_id: i64,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(reset::MARK_RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        match reset::renew_active(&mut conn, run_id).await {
            Ok(true) => {}
            Ok(false) => warn!(
                run_id,
                "adaptive-card run: another run took {} while this one lasts (Redis was away longer than the mark lasts)",
                reset::ACTIVE_RUN_KEY
            ),
            Err(e) => {
                warn!(run_id, error = %e, "adaptive-card run: renewing the run's mark failed; trying again");
                if let Ok(fresh) = connection.connect(Duration::from_secs(5)).await {
                    conn = fresh;
                    tick.reset_after(RENEW_AFTER_RECONNECT);
                }
            }
        }
    }
}

async fn stages(
    ctx: &RunContext,
    config: &AdaptiveCardConfig,
    connection: &RedisConnection,
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
    enqueue(conn, config, SALES_ORG_QUEUE, run_id, &jobs).await?;
    info!(
        run_id,
        sales_orgs = jobs.len(),
        "adaptive-card run: stage 1 enqueued"
    );
    let sales = drained(
        ctx,
        connection,
        conn,
        SALES_ORG_QUEUE,
        run_id,
        config.stage_timeout,
        runs,
        Stage::SalesOrg,
    )
    .await?;
    let rows = merge(&store, run_id).await?;
    let trimmed = trim_consumed(conn, SALES_ORG_QUEUE)
        .await
        .map_err(redis_err)?;
    ctx.progress(rows, 0);
    info!(
        run_id,
        rows,
        dead_lettered = sales.dead_lettered,
        "adaptive-card run: stage 1 drained, files merged"
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
    enqueue(conn, config, ADAPTIVE_CARD_QUEUE, run_id, &jobs).await?;
    info!(
        run_id,
        users = jobs.len(),
        "adaptive-card run: stage 2 enqueued"
    );
    let cards = drained(
        ctx,
        connection,
        conn,
        ADAPTIVE_CARD_QUEUE,
        run_id,
        config.stage_timeout,
        runs,
        Stage::AdaptiveCard,
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
            "run {run_id}: {} sales orgs ({} dead-lettered), {rows} merged rows, {} users ({} dead-lettered); {trimmed} stream entries trimmed",
            orgs.len(),
            sales.dead_lettered,
            jobs.len(),
            cards.dead_lettered
        )),
    })
}
