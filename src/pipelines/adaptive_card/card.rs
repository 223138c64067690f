//! Stage 2: a user job evaluates every scenario against the merged rows of the user's sales
//! organisation and upserts one Adaptive Card (schema 1.5) per scenario that applies into
//! `user_scenario_result`, keyed by (user_id, scenario_id); cards of scenarios that no longer
//! apply to the user are removed, so a rerun updates rows and never duplicates them.
//!
//! The job is the stream field `data`: `{"run_id": 1733450400000, "user_id": "u1",
//! "sales_org": "1000"}`.
//!
//! The writes go through the shared PostgreSQL sink (`src/sinks/postgres`): its pool, error
//! classes (an outage is retried, never dead-lettered), column check of an existing results
//! table, and one transaction per batch of idempotent upserts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actord_actors::record::{Envelope, Poison, SourceRecord};
use actord_actors::sink::{Progress, SinkError, SinkFactory};
use futures::future::BoxFuture;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use tracing::warn;

use super::csv::Table;
use super::names;
use super::t2a::DATASETS;
use super::AdaptiveCardConfig;
use crate::pipelines::from_json;
use crate::sinks::postgres::check::{col, Column, INT8, JSONB, TEXT};
use crate::sinks::postgres::{
    classify, ident, Classifier, Database, DbSettings as PgSettings, PostgresSink, Setup,
    Table as PgTable, Tx, Writes,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserJob {
    pub run_id: i64,
    pub user_id: String,
    pub sales_org: String,
}

pub fn decode(r: &SourceRecord) -> Result<UserJob, Poison> {
    let job: UserJob = from_json(r.payload.as_deref().unwrap_or_default())
        .map_err(|e| Poison::new("JsonError", e))?;
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

/// The results table as the cards are written into it.
const RESULT_COLUMNS: &[Column] = &[
    col("user_id", TEXT, "text"),
    col("scenario_id", TEXT, "text"),
    col("run_id", INT8, "bigint"),
    col("card", JSONB, "jsonb"),
];

/// The pipeline's tables for the shared PostgreSQL sink.
struct CardTables {
    results: &'static str,
    users: &'static str,
}

impl Setup for CardTables {
    fn tables(&self, schema: &str) -> Vec<String> {
        let s = ident(schema);
        let (results, users) = (self.results, self.users);
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.{results} (user_id text NOT NULL, \
                 scenario_id text NOT NULL, run_id bigint NOT NULL, card jsonb NOT NULL, \
                 created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (user_id, scenario_id))"
            ),
            format!("CREATE INDEX IF NOT EXISTS idx_user_id ON {s}.{results} (user_id)"),
            format!("CREATE INDEX IF NOT EXISTS idx_created_at ON {s}.{results} (created_at)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.{users} (user_id text PRIMARY KEY, sales_org text NOT NULL)"
            ),
        ]
    }

    fn columns(&self) -> Vec<PgTable> {
        vec![PgTable {
            name: self.results,
            columns: RESULT_COLUMNS,
            strict: true,
        }]
    }

    fn finish<'a>(
        &'a self,
        _settings: &'a PgSettings,
        _client: tokio_postgres::Client,
    ) -> BoxFuture<'a, Result<Option<String>, SinkError>> {
        Box::pin(async { Ok(None) })
    }
}

/// What a batch of user jobs writes inside the shared sink's transaction: idempotent upserts,
/// and the removal of the users' cards of scenarios that no longer apply.
pub struct CardWrites {
    results: &'static str,
    store: Arc<dyn ObjectStore>,
    scenarios: Arc<Vec<Scenario>>,
    /// The merged rows of the last run read.
    merged: tokio::sync::Mutex<Option<(i64, Arc<Merged>)>>,
}

/// The sink of stage 2: the shared PostgreSQL sink with the card writes.
pub type CardSink = PostgresSink<UserJob, CardWrites>;

/// The database settings of the shared sink.
pub fn pg_settings(config: &AdaptiveCardConfig) -> PgSettings {
    PgSettings {
        host: config.db.host.clone(),
        port: config.db.port,
        user: config.db.user.clone(),
        password: config.db.password.clone(),
        database: config.db.name.clone(),
        pool_size: config.max_workers_adaptive as u32 + 1,
        ..PgSettings::default()
    }
}

/// The writers' factory; table names live for the process (they name the checked tables).
pub fn factory(
    config: Arc<AdaptiveCardConfig>,
    store: Arc<dyn ObjectStore>,
    scenarios: Arc<Vec<Scenario>>,
) -> SinkFactory<CardSink> {
    let results: &'static str = Box::leak(config.results_table.clone().into_boxed_str());
    let users: &'static str = Box::leak(config.users_table.clone().into_boxed_str());
    let db = Database::new(
        pg_settings(&config),
        "postgres",
        Arc::new(CardTables { results, users }),
        Classifier::default(),
    );
    db.factory(Arc::new(CardWrites {
        results,
        store,
        scenarios,
        merged: tokio::sync::Mutex::new(None),
    }))
}

impl CardWrites {
    async fn merged(&self, run_id: i64) -> Result<Arc<Merged>, SinkError> {
        let mut cache = self.merged.lock().await;
        if let Some((id, m)) = &*cache {
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
        *cache = Some((run_id, m.clone()));
        Ok(m)
    }
}

impl Writes<UserJob> for CardWrites {
    async fn write(
        &self,
        tx: &Tx<'_>,
        schema: &str,
        records: &[&Envelope<UserJob>],
        progress: &Progress,
        errors: &Classifier,
    ) -> Result<u64, SinkError> {
        let table = format!("{}.{}", ident(schema), self.results);
        let upsert = format!(
            "INSERT INTO {table} (user_id, scenario_id, run_id, card, created_at) \
             VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (user_id, scenario_id) \
             DO UPDATE SET run_id = EXCLUDED.run_id, card = EXCLUDED.card, created_at = EXCLUDED.created_at"
        );
        let stale =
            format!("DELETE FROM {table} WHERE user_id = $1 AND NOT (scenario_id = ANY($2))");
        let mut written = 0u64;
        for e in records {
            let job = &e.record;
            let merged = self.merged(job.run_id).await?;
            let mut ids: Vec<&str> = Vec::new();
            for s in self.scenarios.iter() {
                let rows = merged
                    .get(&s.dataset)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if let Some(card) = evaluate(s, job, rows) {
                    tx.execute(&upsert, &[&job.user_id, &s.id, &job.run_id, &card])
                        .await
                        .map_err(|e| errors.sink_error(&e))?;
                    ids.push(&s.id);
                    written += 1;
                }
            }
            tx.execute(&stale, &[&job.user_id, &ids])
                .await
                .map_err(|e| errors.sink_error(&e))?;
            progress.advanced(1, 0);
        }
        metrics::counter!(names::ADAPTIVE_CARD_JOBS_TOTAL, "stage" => "adaptive_card", "outcome" => "done").increment(records.len() as u64);
        metrics::counter!(names::ADAPTIVE_CARD_CARDS_TOTAL).increment(written);
        Ok(written)
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

    use crate::pipelines::poison::{self, Field, Rng, Shape};
    use serde_json::Map;

    fn good_job(rng: &mut Rng) -> (Map<String, Value>, UserJob) {
        let job = UserJob {
            run_id: rng.next_u64() as i64,
            user_id: rng.text(16),
            sales_org: rng.alnum(6),
        };
        let m = json!({"run_id": job.run_id, "user_id": job.user_id, "sales_org": job.sales_org});
        (m.as_object().unwrap().clone(), job)
    }

    #[test]
    fn generated_malformed_user_jobs_are_all_poison_and_good_ones_decode() {
        let shape = Shape {
            fields: vec![
                ("run_id", Field::Int),
                ("user_id", Field::Text),
                ("sales_org", Field::Text),
            ],
            rules: vec![("user_id", json!("")), ("run_id", json!(1.5))],
        };
        let tally = poison::run(51, &shape, good_job, |p| {
            decode(&poison::record("user_queue", p))
        });
        eprintln!("user jobs: {tally:?}");
    }
}
