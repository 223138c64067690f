//! Opening an object store: an S3 bucket (AWS or any S3-compatible server, path style) or a
//! local directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::config::S3Config;

/// Where objects live.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// A local directory (created when missing).
    Dir(PathBuf),
    /// A bucket; `region` overrides the connection's region.
    Bucket {
        name: String,
        region: Option<String>,
    },
}

impl Location {
    /// For logs and health notes: `s3://bucket (http://127.0.0.1:9010)` or `file:///abs/dir`.
    pub fn describe(&self, s3: &S3Config) -> String {
        match self {
            Location::Dir(dir) => {
                let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                format!("file://{}", abs.display())
            }
            Location::Bucket { name, .. } => match &s3.endpoint {
                Some(e) => format!("s3://{name} ({e})"),
                None => format!("s3://{name}"),
            },
        }
    }
}

/// Opens the store. Nothing is contacted yet: an unreachable server shows up at the first
/// request, where the writer's retries handle it.
pub fn open(location: &Location, s3: &S3Config) -> Result<Arc<dyn ObjectStore>, String> {
    open_with(location, s3, Some(Duration::from_secs(120)))
}

/// [`open`] with a whole-request timeout of `request_timeout`, or none: a download of a large
/// object streams for as long as it takes, and its caller watches it for stalls instead.
pub fn open_with(
    location: &Location,
    s3: &S3Config,
    request_timeout: Option<Duration>,
) -> Result<Arc<dyn ObjectStore>, String> {
    match location {
        Location::Dir(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let fs = LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| format!("cannot open {}: {e}", dir.display()))?
                .with_automatic_cleanup(true);
            Ok(Arc::new(fs))
        }
        Location::Bucket { name, region } => {
            // Few, short client-level retries: outages are retried by the writer, which also
            // reports them in health and metrics.
            let retry = RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: Duration::from_secs(15),
            };
            let client = ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_allow_http(s3.allow_http);
            let client = match request_timeout {
                Some(t) => client.with_timeout(t),
                None => client.with_timeout_disabled(),
            };
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(name)
                .with_region(region.as_deref().unwrap_or(&s3.region))
                .with_virtual_hosted_style_request(s3.virtual_hosted)
                .with_allow_http(s3.allow_http)
                .with_retry(retry)
                .with_client_options(client);
            if let Some(e) = &s3.endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(k) = &s3.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = &s3.secret_access_key {
                b = b.with_secret_access_key(k.expose());
            }
            if let Some(t) = &s3.session_token {
                b = b.with_token(t.expose());
            }
            let store = b
                .build()
                .map_err(|e| format!("cannot configure bucket {name}: {e}"))?;
            Ok(Arc::new(store))
        }
    }
}
