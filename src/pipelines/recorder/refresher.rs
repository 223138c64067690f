//! `Refresher`: refreshes the plain-PostgreSQL aggregate views on a schedule. Under
//! TimescaleDB the continuous aggregate policies do this and the refresher stays idle.

use std::sync::Arc;
use std::time::Duration;

use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, warn};

use super::timescale::{refresh as refresh_statements, Mode, RecorderTables};
use crate::sinks::postgres::{describe, Database};

pub struct Refresher;

pub struct RefresherArgs {
    pub probe: Probe,
    pub db: Arc<Database>,
    pub tables: Arc<RecorderTables>,
    pub interval: Duration,
}

pub enum RefresherMsg {
    Refresh,
}

impl Actor for Refresher {
    type Msg = RefresherMsg;
    type State = RefresherArgs;
    type Arguments = RefresherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_after(args.interval, || RefresherMsg::Refresh);
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let RefresherMsg::Refresh = message;
        if state.tables.mode() == Mode::Plain {
            match refresh(&state.db).await {
                Ok(()) => {
                    state.probe.progress(1, 0);
                    debug!(path = %state.probe.path(), "aggregates refreshed");
                }
                // The database being away is the writers' business; try again next time.
                Err(e) => {
                    warn!(path = %state.probe.path(), error = %e, "refreshing aggregates failed")
                }
            }
        }
        myself.send_after(state.interval, || RefresherMsg::Refresh);
        Ok(())
    }
}

async fn refresh(db: &Database) -> Result<(), String> {
    let pool = db.pool().await.map_err(|e| e.to_string())?;
    let mut conn = pool.get().await.map_err(|e| match e {
        bb8::RunError::User(e) => describe(&e),
        bb8::RunError::TimedOut => "timed out waiting for a database connection".to_owned(),
    })?;
    for stmt in refresh_statements(db.schema()) {
        // A refresh reads the whole table: the writers' statement timeout does not apply.
        let tx = conn.transaction().await.map_err(|e| describe(&e))?;
        tx.batch_execute(&format!("SET LOCAL statement_timeout = 0; {stmt}"))
            .await
            .map_err(|e| describe(&e))?;
        tx.commit().await.map_err(|e| describe(&e))?;
    }
    Ok(())
}
