//! `repo-rekey`: moves the repositories' data key under a new KMS key or passphrase, so the old one can be
//! disabled or forgotten (a rotation, or a passphrase that leaked) without re-encrypting any data: only
//! `keys/strata.keys` is rewritten, in every configured repository that has one. The checks and the rules
//! (nothing written unless the old key unwraps and the new wrap unwraps to the same key) are
//! [`strata_keys::rekey`]'s.

use std::path::PathBuf;
use std::sync::Arc;
use strata_config::{Config, EncryptionConfig, EncryptionType};
use strata_keys::RekeyOutcome;

/// The key to rewrap under: exactly one of these (the command line enforces it).
#[derive(Debug, Clone)]
pub enum NewKey {
    Kms(String),
    PassphraseFile(PathBuf),
    PassphraseEnv(String),
}

impl NewKey {
    pub fn from_args(kms_key_id: Option<String>, passphrase_file: Option<PathBuf>, passphrase_env: Option<String>) -> anyhow::Result<NewKey> {
        match (kms_key_id, passphrase_file, passphrase_env) {
            (Some(id), None, None) => Ok(NewKey::Kms(id)),
            (None, Some(file), None) => Ok(NewKey::PassphraseFile(file)),
            (None, None, Some(var)) => Ok(NewKey::PassphraseEnv(var)),
            _ => anyhow::bail!("repo-rekey needs exactly one of --new-kms-key-id, --new-passphrase-file, --new-passphrase-env"),
        }
    }

    /// The `[encryption]` section that describes the new key: the current one (region, endpoint,
    /// credentials) with the key replaced.
    fn encryption(&self, current: &EncryptionConfig) -> EncryptionConfig {
        let mut new = current.clone();
        match self {
            NewKey::Kms(id) => {
                new.kind = EncryptionType::Kms;
                new.kms_key_id = Some(id.clone());
            }
            NewKey::PassphraseFile(file) => {
                new.kind = EncryptionType::Passphrase;
                new.passphrase_file = Some(file.clone());
                new.passphrase_env = None;
            }
            NewKey::PassphraseEnv(var) => {
                new.kind = EncryptionType::Passphrase;
                new.passphrase_file = None;
                new.passphrase_env = Some(var.clone());
            }
        }
        new
    }

    /// What the config must say from now on.
    fn config_reminder(&self) -> String {
        match self {
            NewKey::Kms(id) => format!("encryption.type = \"kms\" and encryption.kms_key_id = \"{id}\""),
            NewKey::PassphraseFile(file) => {
                format!("encryption.type = \"passphrase\" and encryption.passphrase_file = \"{}\"", file.display())
            }
            NewKey::PassphraseEnv(var) => format!("encryption.type = \"passphrase\" and encryption.passphrase_env = \"{var}\""),
        }
    }
}

pub async fn run(cfg: &Config, new: &NewKey) -> anyhow::Result<()> {
    let mut repos: Vec<(String, Arc<dyn strata_storage::Storage>)> = Vec::with_capacity(cfg.repo.len());
    for repo in &cfg.repo {
        repos.push((repo.name.clone(), strata_runtime::open_storage(repo).await?));
    }
    let report = strata_keys::rekey(cfg, &repos, &new.encryption(&cfg.encryption)).await?;
    for outcome in &report.repos {
        match outcome {
            RekeyOutcome::Rewrapped { repo } => {
                println!("repository '{repo}': data key rewrapped under {} (key check {})", report.wrapped_by, report.key_check)
            }
            RekeyOutcome::NoKeyFile { repo } => println!("repository '{repo}': no key file, nothing to rewrap"),
        }
    }
    println!(
        "now set {} in the config; no data was re-encrypted, and the old key is no longer needed to read these repositories",
        new.config_reminder()
    );
    Ok(())
}
