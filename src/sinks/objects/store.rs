//! Opening an object store: an S3 bucket (AWS or any S3-compatible server, path style) or a
//! local directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::sink::Target;
use super::upload::{Parts, PART_SIZE};
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

/// Opens the target of an object sink: the store, its multipart uploads and, for a local
/// directory, the directory (files are fsynced, and so are their directories, before a write
/// returns).
pub fn open_target(location: &Location, s3: &S3Config) -> Result<Target, String> {
    match location {
        Location::Dir(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let fs = LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| format!("cannot open {}: {e}", dir.display()))?
                .with_automatic_cleanup(true)
                .with_fsync(true);
            let store: Arc<dyn ObjectStore> = Arc::new(fs);
            Ok(Target {
                parts: Parts::Store(store.clone()),
                store,
                dir: Some(dir.clone()),
                part_size: PART_SIZE,
            })
        }
        Location::Bucket { name, region } => {
            let s3store = Arc::new(bucket(
                name,
                region.as_deref(),
                s3,
                Some(Duration::from_secs(120)),
            )?);
            Ok(Target {
                store: s3store.clone(),
                parts: Parts::S3(s3store),
                dir: None,
                part_size: PART_SIZE,
            })
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
        Location::Bucket { name, region } => Ok(Arc::new(bucket(
            name,
            region.as_deref(),
            s3,
            request_timeout,
        )?)),
    }
}

/// A bucket's client. Credentials, in the order the AWS SDKs look for them: the connection's
/// keys (`AWS_ACCESS_KEY_ID` and the others), then a web identity token
/// (`AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`: EKS/IRSA), then the container credentials
/// endpoint (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`: an ECS task role, EKS Pod
/// Identity), then the instance metadata service.
fn bucket(
    name: &str,
    region: Option<&str>,
    s3: &S3Config,
    request_timeout: Option<Duration>,
) -> Result<AmazonS3, String> {
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
    let mut b = credential_sources(AmazonS3Builder::new())
        .with_bucket_name(name)
        .with_region(region.unwrap_or(&s3.region))
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
    b.build()
        .map_err(|e| format!("cannot configure bucket {name}: {e}"))
}

/// The credential sources of the environment beyond the connection's keys: web identity
/// (IRSA), container credentials (ECS task role, EKS Pod Identity) and the metadata endpoint.
fn credential_sources(mut b: AmazonS3Builder) -> AmazonS3Builder {
    for (var, key) in [
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            AmazonS3ConfigKey::WebIdentityTokenFile,
        ),
        ("AWS_ROLE_ARN", AmazonS3ConfigKey::RoleArn),
        ("AWS_ROLE_SESSION_NAME", AmazonS3ConfigKey::RoleSessionName),
        ("AWS_ENDPOINT_URL_STS", AmazonS3ConfigKey::StsEndpoint),
        (
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
        ),
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            AmazonS3ConfigKey::ContainerCredentialsFullUri,
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            AmazonS3ConfigKey::ContainerAuthorizationTokenFile,
        ),
        ("AWS_METADATA_ENDPOINT", AmazonS3ConfigKey::MetadataEndpoint),
    ] {
        if let Ok(value) = std::env::var(var) {
            if !value.is_empty() {
                b = b.with_config(key, value);
            }
        }
    }
    b
}
