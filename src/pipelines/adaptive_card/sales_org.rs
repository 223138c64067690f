//! Stage 1: a sales-org job fetches the organisation's rows of each dataset from the T2A API
//! and writes them as `runs/<run_id>/<dataset>/<sales_org>.csv`.
//!
//! The job is the stream field `data`: `{"run_id": 1733450400000, "sales_org": "1000"}`. A
//! failure of the job itself (an organisation the API does not know, a body that is not rows) is
//! retried with backoff up to `max_retries` attempts, then the job goes to `sales_org_queue:dlq`.
//! An API that is down (refused, timeout, 5xx, 429) is the writer's transient failure, retried;
//! when it repeats across jobs (`BREAKER_THRESHOLD` in a row) the T2A circuit opens and every
//! worker holds its job and retries it as a probe (1 s doubling to 30 s) until the API answers;
//! such a job is never dead-lettered.

use std::sync::Arc;

use actord_actors::record::{Envelope, Poison, SourceRecord};
use actord_actors::sink::{Progress, Rejection, Sink, SinkError, SinkFactory};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::csv::Table;
use super::names;
use super::status::{Breaker, PROBE_BACKOFF};
use super::t2a::{FetchError, T2a, DATASETS};
use super::AdaptiveCardConfig;
use crate::pipelines::from_json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SalesOrgJob {
    pub run_id: i64,
    pub sales_org: String,
}

pub fn decode(r: &SourceRecord) -> Result<SalesOrgJob, Poison> {
    let job: SalesOrgJob = from_json(r.payload.as_deref().unwrap_or_default())
        .map_err(|e| Poison::new("JsonError", e))?;
    if job.sales_org.is_empty() || job.sales_org.contains('/') {
        return Err(Poison::new("BadSalesOrg", format!("{:?}", job.sales_org)));
    }
    Ok(job)
}

/// Where a job's file of one dataset goes.
pub fn org_file(run_id: i64, dataset: &str, sales_org: &str) -> ObjectPath {
    ObjectPath::from(format!("runs/{run_id}/{dataset}/{sales_org}.csv"))
}

pub struct SalesOrgSink {
    config: Arc<AdaptiveCardConfig>,
    breaker: Arc<Breaker>,
    t2a: T2a,
    store: Arc<dyn ObjectStore>,
    progress: Progress,
}

enum Failure {
    Unavailable(String),
    Job { class: String, message: String },
}

impl SalesOrgSink {
    pub fn factory(
        config: Arc<AdaptiveCardConfig>,
        store: Arc<dyn ObjectStore>,
        breaker: Arc<Breaker>,
    ) -> SinkFactory<SalesOrgSink> {
        Arc::new(move || {
            let (config, store, breaker) = (config.clone(), store.clone(), breaker.clone());
            Box::pin(async move {
                let t2a = T2a::new(config.t2a.clone()).map_err(SinkError::fatal)?;
                Ok(SalesOrgSink {
                    config,
                    breaker,
                    t2a,
                    store,
                    progress: Progress::none(),
                })
            })
        })
    }

    async fn process(&self, job: &SalesOrgJob) -> Result<u64, Failure> {
        let mut bytes = 0u64;
        for (dataset, _) in DATASETS {
            let rows = self
                .t2a
                .fetch(dataset, &job.sales_org)
                .await
                .map_err(|e| match e {
                    FetchError::Unavailable(m) => Failure::Unavailable(m),
                    FetchError::Job { class, message } => Failure::Job { class, message },
                })?;
            let text = Table::from_json(&job.sales_org, &rows).render();
            bytes += text.len() as u64;
            let path = org_file(job.run_id, dataset, &job.sales_org);
            self.store
                .put(&path, PutPayload::from(text.into_bytes()))
                .await
                .map_err(|e| Failure::Unavailable(format!("writing {path}: {e}")))?;
            self.progress.advanced(rows.len() as u64, 0);
        }
        Ok(bytes)
    }
}

impl Sink<SalesOrgJob> for SalesOrgSink {
    fn attach_progress(&mut self, progress: Progress) {
        self.progress = progress;
    }

    async fn write(&mut self, records: &[Envelope<SalesOrgJob>]) -> Result<(), SinkError> {
        let mut rejected = Vec::new();
        for (index, e) in records.iter().enumerate() {
            let mut attempt = 0u32;
            let mut probes = 0u32;
            loop {
                attempt += 1;
                match self.process(&e.record).await {
                    Ok(_) => {
                        self.breaker.succeeded();
                        metrics::counter!(names::ADAPTIVE_CARD_JOBS_TOTAL, "stage" => "sales_org", "outcome" => "done").increment(1);
                        break;
                    }
                    Err(Failure::Unavailable(m)) => {
                        metrics::counter!(names::ADAPTIVE_CARD_JOBS_TOTAL, "stage" => "sales_org", "outcome" => "unavailable").increment(1);
                        if !self.breaker.failed(&m) {
                            return Err(SinkError::transient(m));
                        }
                        // The circuit is open: hold the job and try it again as a probe. An
                        // outage costs the job no attempt; each answered probe shows the
                        // worker is waiting, not hung.
                        attempt -= 1;
                        let delay = PROBE_BACKOFF.delay(probes);
                        probes = probes.saturating_add(1);
                        self.progress.advanced(1, 0);
                        tokio::time::sleep(delay).await;
                    }
                    Err(Failure::Job { class, message }) => {
                        // The API answered: it is up.
                        self.breaker.succeeded();
                        metrics::counter!(names::ADAPTIVE_CARD_JOBS_TOTAL, "stage" => "sales_org", "outcome" => "failed").increment(1);
                        if attempt >= self.config.max_retries {
                            rejected.push(Rejection {
                                index,
                                class,
                                message,
                                attempts: attempt,
                            });
                            break;
                        }
                        let delay = self.config.retry.delay(attempt - 1);
                        warn!(sales_org = %e.record.sales_org, attempt, delay = ?delay, error = %message, "sales-org job failed, retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(SinkError::rejected(rejected))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pipelines::poison::{self, Field, Rng, Shape};
    use serde_json::{json, Map, Value};

    fn good_job(rng: &mut Rng) -> (Map<String, Value>, SalesOrgJob) {
        let job = SalesOrgJob {
            run_id: rng.next_u64() as i64,
            sales_org: rng.text(8),
        };
        let m = json!({"run_id": job.run_id, "sales_org": job.sales_org});
        (m.as_object().unwrap().clone(), job)
    }

    #[test]
    fn generated_malformed_sales_org_jobs_are_all_poison_and_good_ones_decode() {
        let shape = Shape {
            fields: vec![("run_id", Field::Int), ("sales_org", Field::Text)],
            rules: vec![
                ("sales_org", json!("")),
                ("sales_org", json!("10/00")),
                ("sales_org", json!("../x")),
            ],
        };
        let tally = poison::run(52, &shape, good_job, |p| {
            decode(&poison::record("sales_org_queue", p))
        });
        eprintln!("sales-org jobs: {tally:?}");
    }
}
