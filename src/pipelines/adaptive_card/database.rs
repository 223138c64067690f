//! `DatabaseWatch`: the pipeline's PostgreSQL at start and while it runs.
//!
//! At start it connects (a database that does not exist fails the start with a message that
//! says how to create it), creates the tables if missing and, in the demo, fills the users
//! table. Then it checks the database every few seconds and reports itself unhealthy while the
//! database does not answer, so `/health` (`adaptive-card.database`) and `/api/tree` show an
//! outage that pauses the card workers.

use std::sync::Arc;
use std::time::Duration;

use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::{card, names, AdaptiveCardConfig};

/// How often the database is checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);

pub struct DatabaseWatch;

pub struct DatabaseWatchArgs {
    pub probe: Probe,
    pub config: Arc<AdaptiveCardConfig>,
}

pub enum DatabaseWatchMsg {
    Check,
}

pub struct DatabaseWatchState {
    probe: Probe,
    config: Arc<AdaptiveCardConfig>,
    client: Option<tokio_postgres::Client>,
}

/// The organisations of the sales-org table, if one is configured.
pub async fn table_orgs(
    client: &tokio_postgres::Client,
    config: &AdaptiveCardConfig,
) -> Result<Vec<String>, String> {
    let Some(table) = &config.sales_orgs_table else {
        return Ok(Vec::new());
    };
    let rows = client
        .query(
            &format!("SELECT sales_org FROM {table} ORDER BY sales_org"),
            &[],
        )
        .await
        .map_err(|e| format!("reading sales organisations from {table}: {e}"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The organisations a run fetches: the configured ones, then the table's.
pub async fn sales_orgs(
    client: &tokio_postgres::Client,
    config: &AdaptiveCardConfig,
) -> Result<Vec<String>, String> {
    let mut orgs = config.sales_orgs.clone();
    for o in table_orgs(client, config).await? {
        if !o.trim().is_empty() && !o.contains('/') && !orgs.contains(&o) {
            orgs.push(o);
        }
    }
    Ok(orgs)
}

/// Creates the pipeline's tables if missing.
pub async fn prepare(
    client: &tokio_postgres::Client,
    config: &AdaptiveCardConfig,
) -> Result<(), String> {
    card::ensure_schema(client, &config.results_table, &config.users_table)
        .await
        .map_err(|e| format!("creating the tables: {}", pg_message(&e)))?;
    if let Some(table) = &config.sales_orgs_table {
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (sales_org text PRIMARY KEY)"
            ))
            .await
            .map_err(|e| format!("creating {table}: {}", pg_message(&e)))?;
    }
    Ok(())
}

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// The demo's users: `demo-<org>-<n>` for each organisation, added when missing.
async fn fill_demo_users(
    client: &tokio_postgres::Client,
    config: &AdaptiveCardConfig,
) -> Result<u64, String> {
    let orgs = sales_orgs(client, config).await?;
    let insert = format!(
        "INSERT INTO {} (user_id, sales_org) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING",
        config.users_table
    );
    let mut added = 0;
    for org in &orgs {
        for n in 1..=config.demo_users {
            added += client
                .execute(&insert, &[&format!("demo-{org}-{n}"), org])
                .await
                .map_err(|e| format!("filling {}: {}", config.users_table, pg_message(&e)))?;
        }
    }
    Ok(added)
}

impl DatabaseWatchState {
    async fn check(&mut self) {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        let result = match &self.client {
            Some(c) => tokio::time::timeout(CHECK_EVERY, c.simple_query("SELECT 1"))
                .await
                .map_err(|_| "no answer within 5s".to_owned())
                .and_then(|r| r.map(|_| ()).map_err(|e| pg_message(&e))),
            None => card::connect(&self.config)
                .await
                .map(|c| self.client = Some(c))
                .map_err(|e| e.message),
        };
        let db = &self.config.db;
        match result {
            Ok(()) => {
                if self.probe.unhealthy().is_some() {
                    info!(database = %db.name, "adaptive-card database answers again");
                    self.probe.set_unhealthy(None);
                }
                metrics::gauge!(names::ADAPTIVE_CARD_CIRCUIT_OPEN, "dependency" => "database")
                    .set(0.0);
                self.probe.progress(0, 0);
            }
            Err(e) => {
                self.client = None;
                let reason = format!("database {} on {}:{}: {e}", db.name, db.host, db.port);
                if self.probe.unhealthy().is_none() {
                    warn!(error = %reason, "adaptive-card database unavailable");
                }
                self.probe.set_unhealthy(Some(reason));
                metrics::gauge!(names::ADAPTIVE_CARD_CIRCUIT_OPEN, "dependency" => "database")
                    .set(1.0);
            }
        }
    }
}

impl Actor for DatabaseWatch {
    type Msg = DatabaseWatchMsg;
    type State = DatabaseWatchState;
    type Arguments = DatabaseWatchArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let config = args.config;
        let client = card::connect(&config).await.map_err(|e| e.message)?;
        prepare(&client, &config).await?;
        if config.demo_users > 0 && config.t2a.standin {
            let added = fill_demo_users(&client, &config).await?;
            info!(table = %config.users_table, added, "demo users in place");
        }
        myself.send_after(CHECK_EVERY, || DatabaseWatchMsg::Check);
        Ok(DatabaseWatchState {
            probe: args.probe,
            config,
            client: Some(client),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DatabaseWatchMsg::Check => {
                state.check().await;
                myself.send_after(CHECK_EVERY, || DatabaseWatchMsg::Check);
            }
        }
        Ok(())
    }
}
