//! Stage 2: a user job evaluates every scenario against the merged rows of the user's sales
//! organisation and upserts one Adaptive Card (schema 1.5) per scenario that applies into
//! `user_scenario_result`, keyed by (user_id, scenario_id); cards of scenarios that no longer
//! apply to the user are removed, so a rerun updates rows and never duplicates them.
//!
//! The job is the stream field `data`: `{"run_id": 1733450400000, "user_id": "u1",
//! "sales_org": "1000"}`.
//!
//! The writes of a batch are one transaction (the shared PostgreSQL sink takes this over when
//! it lands): SQLSTATE classes 08, 40, 53 and 57P0x are transient (a restarting database never
//! sends jobs to the DLQ), 22 and 23502/23514 poison, the rest fatal.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actord_actors::record::{Envelope, Poison, SourceRecord};
use actord_actors::sink::{Progress, Sink, SinkError, SinkFactory};
use actord_actors::ErrorKind;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::warn;

use super::csv::Table;
use super::t2a::DATASETS;
use super::AdaptiveCardConfig;
use crate::telemetry::names;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserJob {
    pub run_id: i64,
    pub user_id: String,
    pub sales_org: String,
}

pub fn decode(r: &SourceRecord) -> Result<UserJob, Poison> {
    let job: UserJob = serde_json::from_slice(r.payload.as_deref().unwrap_or_default())
        .map_err(|e| Poison::new("JsonError", e.to_string()))?;
    if job.user_id.is_empty() {
        return Err(Poison::new("MissingField", "user_id is empty"));
    }
    Ok(job)
}

/// A condition on one column of a row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub field: String,
    /// eq, ne, lt, le, gt, ge (numeric when both sides are numbers) or contains.
    pub op: String,
    pub value: String,
}

/// A scenario: which merged rows apply to a user, and the card made from them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub id: String,
    /// The card's title; `{sales_org}`, `{user_id}` and `{count}` are filled in.
    pub title: String,
    /// `material` (Material.csv) or `gscm` (GSCM.csv).
    pub dataset: String,
    /// Every filter must hold; the user's sales organisation always must.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Columns shown for each row.
    pub facts: Vec<String>,
    /// Rows shown at most, default 10.
    #[serde(default = "ten")]
    pub max_rows: usize,
}

fn ten() -> usize {
    10
}

const BUILT_IN: &str = r#"[
  {"id": "low_stock", "title": "Low stock in sales org {sales_org}: {count} material(s)",
   "dataset": "material", "filters": [{"field": "stock", "op": "lt", "value": "10"}],
   "facts": ["material", "description", "stock"]},
  {"id": "delayed_delivery", "title": "{count} delayed delivery(ies) for sales org {sales_org}",
   "dataset": "gscm", "filters": [{"field": "status", "op": "eq", "value": "DELAYED"}],
   "facts": ["order", "material", "eta"]}
]"#;

/// The scenarios of `path` (a JSON array), or the built-in ones.
pub fn load_scenarios(path: Option<&str>) -> anyhow::Result<Vec<Scenario>> {
    let (origin, text) = match path {
        Some(p) => (
            p.to_owned(),
            std::fs::read_to_string(p).map_err(|e| {
                anyhow::anyhow!("pipelines.adaptive-card.scenarios: cannot read {p}: {e}")
            })?,
        ),
        None => ("built-in".to_owned(), BUILT_IN.to_owned()),
    };
    let scenarios: Vec<Scenario> = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "pipelines.adaptive-card.scenarios: {origin}: expected a JSON array of scenarios: {e}"
        )
    })?;
    for s in &scenarios {
        if !DATASETS.iter().any(|(d, _)| *d == s.dataset) {
            anyhow::bail!(
                "pipelines.adaptive-card.scenarios: {origin}: scenario {}: dataset must be material or gscm, found {:?}",
                s.id,
                s.dataset
            );
        }
        if let Some(f) = s
            .filters
            .iter()
            .find(|f| !["eq", "ne", "lt", "le", "gt", "ge", "contains"].contains(&f.op.as_str()))
        {
            anyhow::bail!(
                "pipelines.adaptive-card.scenarios: {origin}: scenario {}: unknown op {:?}",
                s.id,
                f.op
            );
        }
    }
    Ok(scenarios)
}

fn holds(f: &Filter, row: &BTreeMap<String, String>) -> bool {
    let Some(v) = row.get(&f.field) else {
        return false;
    };
    if f.op == "contains" {
        return v.contains(&f.value);
    }
    let ord = match (v.trim().parse::<f64>(), f.value.trim().parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b),
        _ => Some(v.as_str().cmp(f.value.as_str())),
    };
    let Some(ord) = ord else { return false };
    use std::cmp::Ordering::*;
    match f.op.as_str() {
        "eq" => ord == Equal,
        "ne" => ord != Equal,
        "lt" => ord == Less,
        "le" => ord != Greater,
        "gt" => ord == Greater,
        _ => ord != Less,
    }
}

/// The card of `scenario` for `job`, or `None` when no row applies.
pub fn evaluate(
    scenario: &Scenario,
    job: &UserJob,
    rows: &[BTreeMap<String, String>],
) -> Option<Value> {
    let matching: Vec<&BTreeMap<String, String>> = rows
        .iter()
        .filter(|r| r.get("sales_org") == Some(&job.sales_org))
        .filter(|r| scenario.filters.iter().all(|f| holds(f, r)))
        .collect();
    if matching.is_empty() {
        return None;
    }
    let title = scenario
        .title
        .replace("{sales_org}", &job.sales_org)
        .replace("{user_id}", &job.user_id)
        .replace("{count}", &matching.len().to_string());
    let mut body = vec![
        json!({"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true}),
    ];
    for r in matching.iter().take(scenario.max_rows) {
        let facts: Vec<Value> = scenario
            .facts
            .iter()
            .map(|f| json!({"title": f, "value": r.get(f).cloned().unwrap_or_default()}))
            .collect();
        body.push(json!({"type": "FactSet", "separator": true, "facts": facts}));
    }
    if matching.len() > scenario.max_rows {
        body.push(json!({"type": "TextBlock", "text": format!("and {} more", matching.len() - scenario.max_rows), "isSubtle": true}));
    }
    Some(json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.5",
        "body": body,
        "metadata": {"scenario_id": scenario.id, "run_id": job.run_id, "user_id": job.user_id},
    }))
}

/// Where a run's merged file of one dataset is.
pub fn merged_file(run_id: i64, file: &str) -> ObjectPath {
    ObjectPath::from(format!("runs/{run_id}/{file}"))
}

pub fn classify(err: &tokio_postgres::Error) -> ErrorKind {
    let Some(db) = err.as_db_error() else {
        return ErrorKind::Transient;
    };
    match db.code().code() {
        c if c.starts_with("08")
            || c.starts_with("40")
            || c.starts_with("53")
            || c.starts_with("57P0") =>
        {
            ErrorKind::Transient
        }
        c if c.starts_with("22") || c == "23502" || c == "23514" => ErrorKind::Poison,
        _ => ErrorKind::Fatal,
    }
}

fn pg_error(context: &str, e: &tokio_postgres::Error) -> SinkError {
    let message = match e.as_db_error() {
        Some(db) => format!("{context}: {} ({})", db.message(), db.code().code()),
        None => format!("{context}: {e}"),
    };
    let class = e
        .as_db_error()
        .map(|d| format!("SqlState{}", d.code().code()))
        .unwrap_or_else(|| "Connection".to_owned());
    SinkError::new(classify(e), class, message)
}

/// Creates the tables and the seed's indexes if missing.
pub async fn ensure_schema(
    client: &tokio_postgres::Client,
    results: &str,
    users: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {results} (
                user_id text NOT NULL,
                scenario_id text NOT NULL,
                run_id bigint NOT NULL,
                card jsonb NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (user_id, scenario_id));
             CREATE INDEX IF NOT EXISTS idx_user_id ON {results}(user_id);
             CREATE INDEX IF NOT EXISTS idx_created_at ON {results}(created_at);
             CREATE TABLE IF NOT EXISTS {users} (
                user_id text PRIMARY KEY,
                sales_org text NOT NULL);"
        ))
        .await
}

/// Connects to the pipeline's database; a missing database is a configuration error.
pub async fn connect(config: &AdaptiveCardConfig) -> Result<tokio_postgres::Client, SinkError> {
    let (client, conn) = config
        .db
        .pg_config()
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| {
            if e.as_db_error().is_some_and(|d| d.code().code() == "3D000") {
                SinkError::fatal(format!(
                    "database {} does not exist on {}:{}: create it (createdb {}) or set DB_NAME",
                    config.db.name, config.db.host, config.db.port, config.db.name
                ))
            } else {
                pg_error(
                    &format!("connecting to {}:{}", config.db.host, config.db.port),
                    &e,
                )
            }
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            warn!(error = %e, "adaptive-card database connection ended");
        }
    });
    Ok(client)
}

/// A run's merged rows, by dataset.
type Merged = HashMap<String, Vec<BTreeMap<String, String>>>;

pub struct CardSink {
    config: Arc<AdaptiveCardConfig>,
    store: Arc<dyn ObjectStore>,
    scenarios: Arc<Vec<Scenario>>,
    db: tokio_postgres::Client,
    /// The merged rows of the last run read, by dataset.
    merged: Option<(i64, Arc<Merged>)>,
    progress: Progress,
}

impl CardSink {
    pub fn factory(
        config: Arc<AdaptiveCardConfig>,
        store: Arc<dyn ObjectStore>,
        scenarios: Arc<Vec<Scenario>>,
    ) -> SinkFactory<CardSink> {
        Arc::new(move || {
            let (config, store, scenarios) = (config.clone(), store.clone(), scenarios.clone());
            Box::pin(async move {
                let db = connect(&config).await?;
                ensure_schema(&db, &config.results_table, &config.users_table)
                    .await
                    .map_err(|e| pg_error("creating the tables", &e))?;
                Ok(CardSink {
                    config,
                    store,
                    scenarios,
                    db,
                    merged: None,
                    progress: Progress::none(),
                })
            })
        })
    }

    async fn merged(&mut self, run_id: i64) -> Result<Arc<Merged>, SinkError> {
        if let Some((id, m)) = &self.merged {
            if *id == run_id {
                return Ok(m.clone());
            }
        }
        let mut out = HashMap::new();
        for (dataset, file) in DATASETS {
            let path = merged_file(run_id, file);
            let bytes = match self.store.get(&path).await {
                Ok(got) => got
                    .bytes()
                    .await
                    .map_err(|e| SinkError::transient(format!("reading {path}: {e}")))?,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(SinkError::poison(
                        "NoMergedFile",
                        format!("{path} does not exist: run {run_id} has no merged rows"),
                    ))
                }
                Err(e) => return Err(SinkError::transient(format!("reading {path}: {e}"))),
            };
            let table = Table::parse(&String::from_utf8_lossy(&bytes))
                .map_err(|e| SinkError::poison("BadCsv", format!("{path}: {e}")))?;
            out.insert(dataset.to_owned(), table.records());
        }
        let m = Arc::new(out);
        self.merged = Some((run_id, m.clone()));
        Ok(m)
    }
}

impl Sink<UserJob> for CardSink {
    fn attach_progress(&mut self, progress: Progress) {
        self.progress = progress;
    }

    async fn write(&mut self, records: &[Envelope<UserJob>]) -> Result<(), SinkError> {
        let mut cards: Vec<(&UserJob, Vec<(String, Value)>)> = Vec::new();
        for e in records {
            let merged = self.merged(e.record.run_id).await?;
            let mut mine = Vec::new();
            for s in self.scenarios.iter() {
                let rows = merged
                    .get(&s.dataset)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if let Some(card) = evaluate(s, &e.record, rows) {
                    mine.push((s.id.clone(), card));
                }
            }
            cards.push((&e.record, mine));
        }
        let results = &self.config.results_table;
        let tx = self
            .db
            .transaction()
            .await
            .map_err(|e| pg_error("starting a transaction", &e))?;
        let upsert = format!(
            "INSERT INTO {results} (user_id, scenario_id, run_id, card, created_at)
             VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (user_id, scenario_id)
             DO UPDATE SET run_id = EXCLUDED.run_id, card = EXCLUDED.card, created_at = EXCLUDED.created_at"
        );
        let stale =
            format!("DELETE FROM {results} WHERE user_id = $1 AND NOT (scenario_id = ANY($2))");
        let mut written = 0u64;
        for (job, mine) in &cards {
            for (scenario, card) in mine {
                tx.execute(&upsert, &[&job.user_id, scenario, &job.run_id, card])
                    .await
                    .map_err(|e| pg_error("upserting a card", &e))?;
                written += 1;
            }
            let ids: Vec<&str> = mine.iter().map(|(s, _)| s.as_str()).collect();
            tx.execute(&stale, &[&job.user_id, &ids])
                .await
                .map_err(|e| pg_error("removing stale cards", &e))?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_error("committing cards", &e))?;
        self.progress.advanced(written.max(1), 0);
        metrics::counter!(names::ADAPTIVE_CARD_JOBS_TOTAL, "stage" => "adaptive_card", "outcome" => "done").increment(records.len() as u64);
        metrics::counter!(names::ADAPTIVE_CARD_CARDS_TOTAL).increment(written);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_fills_its_card_from_the_users_rows() {
        let scenarios = load_scenarios(None).unwrap();
        let low = &scenarios[0];
        let row = |org: &str, m: &str, stock: &str| -> BTreeMap<String, String> {
            [
                ("sales_org", org),
                ("material", m),
                ("description", "d"),
                ("stock", stock),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
        };
        let rows = vec![
            row("1000", "M-1", "3"),
            row("1000", "M-2", "30"),
            row("2000", "M-3", "1"),
        ];
        let job = UserJob {
            run_id: 7,
            user_id: "u1".into(),
            sales_org: "1000".into(),
        };
        let card = evaluate(low, &job, &rows).unwrap();
        assert_eq!(card["version"], "1.5");
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(
            card["body"][0]["text"],
            "Low stock in sales org 1000: 1 material(s)"
        );
        assert_eq!(card["body"][1]["facts"][0]["value"], "M-1");
        assert_eq!(card["body"].as_array().unwrap().len(), 2);
        let none = UserJob {
            sales_org: "3000".into(),
            ..job
        };
        assert!(evaluate(low, &none, &rows).is_none());
    }
}
