//! The config as the rest of Strata sees it: validated, with each choice a type.
//!
//! A repository is posix or S3 ([`RepoKind`]), with only its kind's settings and S3's defaults already
//! resolved; the bus is local or NATS ([`BusConfig`]), parsed once; secrets are values ([`Secret`]),
//! whether they were written inline or in a file. A consumer matches on these instead of checking which
//! of a struct's optional fields are set, so a combination the file allows but Strata does not (a bucket on
//! a posix repository, half a credential pair) cannot reach it: `validate` refused it with one line.

use crate::sections::*;
use crate::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the stages exchange work.
    pub bus: BusConfig,
    /// How a NATS bus is reached and how its streams are laid out; ignored with [`BusConfig::Local`].
    pub nats: NatsConfig,
    pub pipeline: PipelineConfig,
    /// How `archive-push` archives: one segment per call, or through a long-running shipper.
    pub archive: ArchiveConfig,
    /// WAL streaming over the replication protocol (`strata wal-stream`), for an RPO of about a second.
    pub wal_stream: WalStreamConfig,
    pub stanza: BTreeMap<String, StanzaConfig>,
    /// At least one; names are unique.
    pub repo: Vec<RepoConfig>,
    /// How chunks, manifests and WAL are encrypted; one key set for every repository, since the replicator
    /// copies packs byte for byte.
    pub encryption: EncryptionConfig,
    /// What the replicator service copies, and where (every name is a `[[repo]]`).
    pub replicator: ReplicatorConfig,
    /// What the verifier service checks, and how often.
    pub verifier: VerifierConfig,
    /// Restore tests: where they run, how long they may take, and the queries that decide pass or fail.
    pub restore_test: RestoreTestConfig,
    /// Alert thresholds and the webhooks alerts are delivered to.
    pub alerts: AlertsConfig,
    /// The audit log: one JSON line per backup, restore, expire, verify, restore test and config change.
    pub audit: AuditConfig,
    /// Prometheus endpoints of the pipeline services (the replicator's is `replicator.metrics_listen`).
    pub metrics: MetricsConfig,
}

/// Where the stages exchange work (`bus = "local"` or `bus = "nats://..."`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusConfig {
    /// Every stage runs inside the process that needs it (single-host mode).
    Local,
    /// A NATS server with JetStream: the `bus` value, one or more `nats://` or `tls://` URLs separated by
    /// commas (a cluster's servers), e.g. `nats://127.0.0.1:4222`.
    Nats(String),
}

#[derive(Debug, Clone)]
pub struct RepoConfig {
    pub name: String,
    /// Where the repository is, and how it is reached.
    pub kind: RepoKind,
    /// How many full backups `expire` keeps (with the diff and incr backups that depend on them).
    pub retention_full: Option<u32>,
    /// Days of full backups `expire` keeps: every full started within them, and the newest one before,
    /// so that the whole period stays restorable. With `retention_full` too, a full either keeps stays.
    pub retention_full_days: Option<u32>,
    /// Compliance floor: `expire` removes no backup younger than this many days (nor what it depends
    /// on), whatever the other settings say.
    pub retention_min_age_days: Option<u32>,
    /// How many differential backups `expire` keeps (newest first), with the incrementals that depend on
    /// them; unset: every diff of a kept full.
    pub retention_diff: Option<u32>,
    /// Days of WAL `expire` keeps beyond what the kept backups need.
    pub retention_archive_extra_days: Option<u32>,
    /// Run `expire` on this repository after every successful backup.
    pub expire_auto: bool,
    /// What the repository is for ("hot", "warm", "cold"): shown by `info`, no effect on behaviour.
    pub tier: Option<String>,
    /// Whether `archive-push` fails when this repository does not have the segment (default true). A
    /// repository that is not required gets the segment from the replicator later.
    pub archive_required: bool,
}

/// A repository's backend (`type = "posix"` or `"s3"`).
#[derive(Debug, Clone)]
pub enum RepoKind {
    /// A directory, local or mounted.
    Posix { path: PathBuf },
    S3(S3Repo),
}

/// An S3 (or S3-compatible) repository, its defaults resolved.
#[derive(Debug, Clone)]
pub struct S3Repo {
    pub bucket: String,
    /// Key prefix of the repository in the bucket.
    pub prefix: String,
    /// `region`; default us-east-1.
    pub region: String,
    /// Endpoint of an S3-compatible server, e.g. "http://127.0.0.1:9000"; `None`: AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing; default: on with a custom endpoint, off for AWS.
    pub path_style: bool,
    /// Static credentials; `None`: the usual AWS chain (environment, profile, instance role).
    pub credentials: Option<StaticCredentials>,
    /// Storage class of new objects, e.g. "STANDARD_IA".
    pub storage_class: Option<String>,
    /// Send the SDK's CRC checksum headers; default: on for AWS, off for a custom endpoint, since some
    /// S3-compatible servers reject them.
    pub checksums: bool,
}

/// An AWS access key pair, each part given inline or from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
}

impl StaticCredentials {
    /// The pair as the storage and KMS clients take it.
    pub fn to_pair(&self) -> (String, String) {
        (self.access_key_id.expose().to_string(), self.secret_access_key.expose().to_string())
    }
}

/// Where the data key comes from. The repository holds only the wrapped key (`keys/strata.keys`).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionType {
    /// Chunks are compressed, not encrypted.
    #[default]
    None,
    /// AWS KMS (or a KMS-compatible endpoint) wraps the data key: GenerateDataKey, Decrypt.
    Kms,
    /// A passphrase (from a file or an environment variable) derives the key that wraps the data key.
    Passphrase,
}

#[derive(Debug, Clone, Default)]
pub struct EncryptionConfig {
    pub kind: EncryptionType,
    /// KMS key id, ARN or alias that wraps new data keys (kms).
    pub kms_key_id: Option<String>,
    /// KMS region (kms); default us-east-1.
    pub kms_region: Option<String>,
    /// A KMS-compatible endpoint, e.g. "http://127.0.0.1:4566" (kms); unset: AWS.
    pub kms_endpoint: Option<String>,
    /// Static credentials for KMS; unset: the AWS chain.
    pub kms_credentials: Option<StaticCredentials>,
    /// File holding the passphrase (passphrase); its first line is used. Read, and its mode checked, by
    /// the key provider, since `repo-rekey` names new passphrase files the same way.
    pub passphrase_file: Option<PathBuf>,
    /// Environment variable holding the passphrase (passphrase), when no file is given.
    pub passphrase_env: Option<String>,
}

/// Alert rules' thresholds, and where alerts go. Every alert is logged; each tier may also have a webhook
/// (a JSON POST whose body Slack accepts), given inline or from a file (`webhook_<tier>_file`).
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub webhook_critical: Option<String>,
    pub webhook_warning: Option<String>,
    pub webhook_info: Option<String>,
    /// A firing alert is sent again after this many seconds while it lasts.
    pub resend_secs: u64,
    /// Critical when the newest backup is older than the stanza's `rpo_secs` times this.
    pub backup_late_factor: f64,
    /// Repository use (percent of its filesystem) for a warning, and for a critical alert.
    pub repo_full_warning_percent: f64,
    pub repo_full_critical_percent: f64,
    /// Warning when the newest archived segment is this many seconds behind the cluster's WAL.
    pub archive_lag_warning_secs: u64,
    /// Warning when the average duration of a type of backup over the last 7 days exceeds the week
    /// before's by this percent.
    pub backup_duration_increase_percent: f64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_critical: None,
            webhook_warning: None,
            webhook_info: None,
            resend_secs: 3600,
            backup_late_factor: 1.5,
            repo_full_warning_percent: 70.0,
            repo_full_critical_percent: 90.0,
            archive_lag_warning_secs: 3600,
            backup_duration_increase_percent: 30.0,
        }
    }
}
