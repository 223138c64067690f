//! `actord backfill --mode incremental|fresh|continue [--from-date D]`: one run in the
//! foreground, as the seed's `python app.py --mode incremental` was.
//!
//! It starts the backfill pipeline alone (no admin port, no schedule firing, no demo) and
//! asks its scheduler for a run of the entry `run`, so the run takes the same lease as a
//! scheduled one and never runs beside a scheduled run of the same group in another process
//! sharing that lease. Without a lease store (`schedule.lease = "none"`, the default) nothing
//! can see runs of other processes: it says so on stderr before it starts. Progress goes to a
//! terminal on stderr; the summary to stdout.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use actord_actors::scheduler::{Outcome as RunOutcome, RunNowError};

use super::{BackfillConfig, DEF, ENTRY};
use crate::config::Config;
use crate::leases::LeaseKind;
use crate::runtime;

/// How the foreground run ended, as the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: everything up to the watermarks is archived and committed.
    Done,
    /// 1: the run failed; offsets are committed up to the last durable batch.
    Failed,
    /// 3: another run of the group holds the lease (here or in another process).
    Busy,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Failed => 1,
            Exit::Busy => 3,
        }
    }
}

/// The environment overrides that turn a configuration into a foreground run's: the mode
/// and date as given, no run at start, no demo generator.
pub fn overrides(mode: &str, from_date: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![
        ("ACTORD_BACKFILL_MODE".to_owned(), mode.to_owned()),
        (
            "ACTORD_BACKFILL_RUN_ON_START".to_owned(),
            "false".to_owned(),
        ),
        ("ACTORD_BACKFILL_DEMO".to_owned(), "false".to_owned()),
    ];
    env.push((
        "ACTORD_BACKFILL_FROM_DATE".to_owned(),
        from_date.unwrap_or_default().to_owned(),
    ));
    env
}

/// The warning a foreground run prints when its lease cannot exclude runs of other processes.
pub fn lease_warning(config: &Config) -> Option<String> {
    let c = config.pipelines.get::<BackfillConfig>();
    let lease = c.schedule.as_ref().map_or(LeaseKind::None, |s| s.lease);
    (lease == LeaseKind::None).then(|| {
        format!(
            "pipelines.backfill.schedule.lease is \"none\": this run cannot see runs of other \
             processes, so a scheduled backfill of the group {} in a running actord, or another \
             `actord backfill`, may run at the same time; set lease = \"redis\" or \"postgres\" \
             (and lease_url) in [pipelines.backfill.schedule] of every process that runs backfill",
            c.group
        )
    })
}

/// Runs one backfill with `config` (already carrying [`overrides`]) and reports it.
pub async fn run(config: Config) -> Exit {
    if let Some(w) = lease_warning(&config) {
        eprintln!("warning: {w}");
    }
    let mut running = match runtime::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the backfill pipeline: {e:#}");
            return Exit::Failed;
        }
    };
    let Some(handle) = running.schedules.get(DEF.name).cloned() else {
        eprintln!("error: the backfill pipeline has no scheduler");
        return Exit::Failed;
    };
    let began = Instant::now();
    // The scheduler starts with the tree; ask again until it answers.
    let run_id = loop {
        match handle.run_now(Some(ENTRY)).await {
            Ok(id) => break Ok(id),
            Err(RunNowError::NotRunning | RunNowError::Stopping)
                if began.elapsed() < Duration::from_secs(60) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => break Err(e),
        }
    };
    let exit = match run_id {
        Err(e @ (RunNowError::Active { .. } | RunNowError::LeaseHeld(_))) => {
            eprintln!("error: {e}: another backfill run of this group is active");
            Exit::Busy
        }
        Err(e) => {
            eprintln!("error: cannot start a run: {e}");
            Exit::Failed
        }
        Ok(run_id) => {
            let terminal = std::io::stderr().is_terminal();
            let outcome = loop {
                let entry = handle.entry(ENTRY);
                let done = entry.as_ref().and_then(|e| match &e.last_outcome {
                    Some(
                        o @ (RunOutcome::Succeeded { run_id: id, .. }
                        | RunOutcome::Failed { run_id: id, .. }),
                    ) if *id == run_id && e.active.is_none() => Some(o.clone()),
                    _ => None,
                });
                if let Some(o) = done {
                    break o;
                }
                if terminal {
                    if let Some(active) = entry.and_then(|e| e.active) {
                        eprint!(
                            "\rbackfill: {} records, {} bytes archived, {:.0}s   ",
                            active.records,
                            active.bytes,
                            began.elapsed().as_secs_f64()
                        );
                        let _ = std::io::stderr().flush();
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            if terminal {
                eprintln!();
            }
            match outcome {
                RunOutcome::Succeeded { summary, .. } => {
                    println!(
                        "{}",
                        summary
                            .note
                            .unwrap_or_else(|| format!("{} records", summary.records))
                    );
                    Exit::Done
                }
                RunOutcome::Failed { error, .. } => {
                    eprintln!("error: the backfill run failed: {error}");
                    Exit::Failed
                }
                RunOutcome::Skipped { .. } => Exit::Busy,
            }
        }
    };
    running.until(std::future::ready(())).await;
    exit
}
