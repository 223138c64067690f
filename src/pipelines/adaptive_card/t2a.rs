//! The T2A API client: an organisation's rows of one dataset, as a JSON array of objects.

use serde_json::{Map, Value};

use super::T2aSettings;

/// The datasets a sales-org job fetches, with their merged file names.
pub const DATASETS: [(&str, &str); 2] = [("material", "Material.csv"), ("gscm", "GSCM.csv")];

/// Why a request failed: the API is down (every job fails alike) or this job cannot succeed.
#[derive(Debug)]
pub enum FetchError {
    /// Connection refused, timeout, 5xx, 429: retried without limit, never dead-lettered.
    Unavailable(String),
    /// 4xx or a body that is not a JSON array of objects: the job's own failure.
    Job { class: String, message: String },
}

#[derive(Clone)]
pub struct T2a {
    client: reqwest::Client,
    settings: T2aSettings,
}

impl T2a {
    pub fn new(settings: T2aSettings) -> Result<T2a, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| format!("cannot build the T2A client: {e}"))?;
        Ok(T2a { client, settings })
    }

    fn url(&self, dataset: &str, sales_org: &str) -> String {
        let path = match dataset {
            "material" => &self.settings.material_path,
            _ => &self.settings.gscm_path,
        };
        format!(
            "{}{}",
            self.settings.url.trim_end_matches('/'),
            path.replace("{sales_org}", sales_org)
        )
    }

    pub async fn fetch(
        &self,
        dataset: &str,
        sales_org: &str,
    ) -> Result<Vec<Map<String, Value>>, FetchError> {
        let url = self.url(dataset, sales_org);
        let mut req = self.client.get(&url);
        if let Some(t) = &self.settings.token {
            req = req.header(&self.settings.auth_header, format!("Bearer {}", t.expose()));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| FetchError::Unavailable(format!("T2A {url}: {e}")))?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(FetchError::Unavailable(format!("T2A {url}: HTTP {status}")));
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(FetchError::Job {
                class: format!("Http{}", status.as_u16()),
                message: format!(
                    "T2A {url}: HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                ),
            });
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| FetchError::Unavailable(format!("T2A {url}: {e}")))?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| FetchError::Job {
            class: "JsonError".into(),
            message: format!("T2A {url}: not JSON: {e}"),
        })?;
        match value {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::Object(o) => Ok(o),
                    other => Err(FetchError::Job {
                        class: "BadRow".into(),
                        message: format!("T2A {url}: a row is not an object: {other}"),
                    }),
                })
                .collect(),
            _ => Err(FetchError::Job {
                class: "BadBody".into(),
                message: format!("T2A {url}: expected a JSON array of rows"),
            }),
        }
    }
}
