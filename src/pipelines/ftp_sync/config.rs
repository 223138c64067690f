//! `[pipelines.ftp-sync]` as written, and how it is read into [`FtpSyncConfig`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::FtpSyncConfig;
use crate::config::{Check, PipelineConfig, RawSupervision};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFtpSync {
    /// Topics carrying transfer jobs (ACTORD_FTP_SYNC_KAFKA_TOPICS).
    pub topics: Option<Vec<String>>,
    /// Consumer group shared by every process doing this work (ACTORD_FTP_SYNC_KAFKA_GROUP_ID).
    pub group: Option<String>,
    /// Transfers in flight in this process.
    pub concurrency: Option<u32>,
    /// Jobs read and not yet done (running, waiting for a retry or parked for a server) per
    /// process; reaching it pauses reading.
    pub max_in_flight: Option<u32>,
    /// Staged uploads (`.<name>.<tag>.part`) older than this are removed under each server's
    /// root at start, e.g. "24h"; "off" keeps them.
    pub sweep_stale_after: Option<String>,
    /// Where a consumer group without committed offsets starts: "earliest" (every job still
    /// in the topic) or "latest" (only jobs published from now on, as kafka-python's default).
    pub start_from: Option<String>,
    /// Suffix of the dead-letter topic of each input topic (DLQ_TOPIC_SUFFIX).
    pub dlq_suffix: Option<String>,
    /// Attempts for a job whose failures are not explained by a server outage.
    pub max_retries: Option<u32>,
    /// First delay between attempts of a job, e.g. "1s"; doubles up to `retry_backoff_max`.
    pub retry_backoff: Option<String>,
    /// Largest delay between attempts, e.g. "30s".
    pub retry_backoff_max: Option<String>,
    /// Consecutive failures on one server (across jobs) that open its circuit breaker.
    pub breaker_threshold: Option<u32>,
    /// "size" (always) or "sha256" (also hash the stream and re-read the destination).
    pub verify: Option<String>,
    /// Passive mode for FTP servers without their own setting (FTP_PASSIVE_MODE).
    pub passive: Option<bool>,
    /// Runs a generator of files and jobs between two local directories (for the demo).
    pub demo: Option<bool>,
    /// Demo jobs per second.
    pub demo_rate: Option<u32>,
    /// Servers by the hostname jobs use, e.g. `[pipelines.ftp-sync.servers.SRC_FTP_SERVER1]`.
    #[serde(default)]
    pub servers: BTreeMap<String, RawServer>,
    /// Supervision overrides for this pipeline and its paths.
    #[serde(default)]
    pub supervision: RawSupervision,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Dead-letter jobs parked for this server longer than this, e.g. "1h" (off by default:
    /// they wait for the server).
    pub dead_letter_after: Option<String>,
    /// Longest wait for any one network step (connect, banner, login, a reply, an idle read or
    /// write of the data), e.g. "30s".
    pub timeout: Option<String>,
    /// How uploads reach their final name: "rename" (a temporary name, verified, renamed) or
    /// "direct" (straight to the final name, for upload-only accounts).
    pub staging: Option<String>,
    /// Objects above this size are committed on an S3 server by streaming them into place
    /// instead of a server-side copy (S3 copies at most 5 GiB at once), e.g. "5GiB".
    pub copy_limit: Option<u64>,
    /// Where passive data connections go: "control" (the control connection's address, as
    /// Python's ftplib does; survives a server behind NAT) or "reply" (the PASV reply's).
    pub passive_address: Option<String>,
    /// "ftp", "ftps", "sftp", "s3" or "file" ({HOSTNAME}_TYPE).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Host name or address; the bucket for "s3"; unused for "file" ({HOSTNAME}_HOST).
    pub host: Option<String>,
    /// Port ({HOSTNAME}_PORT); 21 by default, 22 for "sftp".
    pub port: Option<u16>,
    /// User ({HOSTNAME}_USER).
    pub user: Option<String>,
    /// Password ({HOSTNAME}_PASS); use "${VAR}" rather than writing it here.
    pub pass: Option<String>,
    /// Directory jobs are confined to; the local directory itself for "file" ({HOSTNAME}_ROOT).
    pub root: Option<String>,
    /// Passive mode for this server; FTP_PASSIVE_MODE otherwise.
    pub passive: Option<bool>,
    /// Accept any TLS certificate ("ftps" against self-signed test servers only).
    pub insecure_tls: Option<bool>,
    /// Private key file for "sftp" ({HOSTNAME}_KEY); the password is used when unset.
    pub key_file: Option<String>,
    /// The "sftp" server's host key fingerprint, "SHA256:..." as `ssh-keygen -lf` prints it.
    pub host_key: Option<String>,
    /// Accept any "sftp" host key (test servers only).
    pub insecure_host_key: Option<bool>,
    /// Connections kept to this server at most; 2 x concurrency by default.
    pub max_connections: Option<u32>,
}

impl PipelineConfig for FtpSyncConfig {
    type Raw = RawFtpSync;

    fn supervision(raw: &RawFtpSync) -> &RawSupervision {
        &raw.supervision
    }

    fn validate(raw: &RawFtpSync, check: &mut Check<'_>) -> Self {
        FtpSyncConfig::validate(raw, check)
    }
}
