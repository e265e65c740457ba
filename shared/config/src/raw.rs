//! The file as written: what serde reads, before anything is checked or resolved.
//!
//! These structs mirror the TOML keys one for one (every one denies unknown fields, so a misspelt key is
//! an error naming it) and may hold combinations that make no sense: S3 keys on a posix repository, a secret
//! given inline and from a file, a bus URL of any scheme. `validate` turns them into the types of `typed`,
//! where those cannot be expressed, so that no consumer checks or re-parses a setting. Sections with nothing
//! to resolve are read straight into their final types (`sections`).

use crate::sections::*;
use crate::typed::{AlertsConfig, EncryptionType};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default = "default_bus")]
    pub bus: String,
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub archive: ArchiveConfig,
    #[serde(default)]
    pub wal_stream: WalStreamConfig,
    #[serde(default)]
    pub stanza: BTreeMap<String, StanzaConfig>,
    #[serde(default)]
    pub repo: Vec<RawRepo>,
    #[serde(default)]
    pub encryption: RawEncryption,
    #[serde(default)]
    pub replicator: ReplicatorConfig,
    #[serde(default)]
    pub verifier: VerifierConfig,
    #[serde(default)]
    pub restore_test: RestoreTestConfig,
    #[serde(default)]
    pub alerts: RawAlerts,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

fn default_bus() -> String {
    "local".into()
}

fn default_true() -> bool {
    true
}

/// A `[[repo]]`: the keys of every kind side by side (see `typed::RepoConfig` for their meaning).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRepo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: RawRepoType,
    #[serde(default)]
    pub path: PathBuf,
    #[serde(default)]
    pub retention_full: Option<u32>,
    #[serde(default)]
    pub retention_full_days: Option<u32>,
    #[serde(default)]
    pub retention_min_age_days: Option<u32>,
    #[serde(default)]
    pub retention_diff: Option<u32>,
    #[serde(default)]
    pub retention_archive_extra_days: Option<u32>,
    #[serde(default)]
    pub expire_auto: bool,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default = "default_true")]
    pub archive_required: bool,
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub path_style: Option<bool>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub checksums: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawRepoType {
    Posix,
    S3,
}

/// `[encryption]` (see `typed::EncryptionConfig`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawEncryption {
    #[serde(rename = "type")]
    pub kind: EncryptionType,
    pub kms_key_id: Option<String>,
    pub kms_region: Option<String>,
    pub kms_endpoint: Option<String>,
    pub kms_access_key_id: Option<String>,
    pub kms_access_key_id_file: Option<PathBuf>,
    pub kms_secret_access_key: Option<String>,
    pub kms_secret_access_key_file: Option<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
    pub passphrase_env: Option<String>,
}

/// `[alerts]` (see `typed::AlertsConfig`): each webhook inline or from a file, since a webhook URL (Slack's)
/// is its own credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAlerts {
    pub webhook_critical: Option<String>,
    pub webhook_critical_file: Option<PathBuf>,
    pub webhook_warning: Option<String>,
    pub webhook_warning_file: Option<PathBuf>,
    pub webhook_info: Option<String>,
    pub webhook_info_file: Option<PathBuf>,
    pub resend_secs: u64,
    pub backup_late_factor: f64,
    pub repo_full_warning_percent: f64,
    pub repo_full_critical_percent: f64,
    pub archive_lag_warning_secs: u64,
    pub backup_duration_increase_percent: f64,
}

impl Default for RawAlerts {
    /// The typed defaults, so that they are written once.
    fn default() -> Self {
        let d = AlertsConfig::default();
        RawAlerts {
            webhook_critical: d.webhook_critical,
            webhook_critical_file: None,
            webhook_warning: d.webhook_warning,
            webhook_warning_file: None,
            webhook_info: d.webhook_info,
            webhook_info_file: None,
            resend_secs: d.resend_secs,
            backup_late_factor: d.backup_late_factor,
            repo_full_warning_percent: d.repo_full_warning_percent,
            repo_full_critical_percent: d.repo_full_critical_percent,
            archive_lag_warning_secs: d.archive_lag_warning_secs,
            backup_duration_increase_percent: d.backup_duration_increase_percent,
        }
    }
}
