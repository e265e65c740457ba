//! Strata's configuration: one TOML file shared by the CLI and every service, each key overridable from the
//! environment.
//!
//! The file is read with the `config` crate into raw structs that mirror it (`raw`), all denying unknown
//! fields: a misspelt key is one clear error naming it, never a silently ignored setting. Environment
//! variables `STRATA_<KEY>` override keys, with `__` between levels (`STRATA_BUS`,
//! `STRATA_PIPELINE__CHUNK_SIZE`, `STRATA_STANZA__MAIN__PG_CONN`). Only variables whose first level is a
//! top-level key of the file are read, so unrelated `STRATA_*` variables (a test harness's, say) do not
//! break parsing.
//!
//! [`Config::load`] then validates what serde cannot (`validate`) into the typed [`Config`] (`typed`): a
//! repository is posix or S3, the bus local or NATS, secrets are read from their files (`secrets`). The
//! split keeps the file's shape, which operators write, apart from the shape the code relies on, so that
//! one can change without the other and no consumer re-checks a setting.

mod error;
mod raw;
mod secrets;
mod sections;
mod typed;
mod validate;

pub use error::{ConfigError, InvalidConfig};
pub use secrets::Secret;
pub use sections::*;
pub use typed::*;
pub use validate::{MAX_COMPRESS_LEVEL, MAX_WORKERS};

use std::path::Path;

const TOP_LEVEL_KEYS: [&str; 14] =
    ["bus", "nats", "pipeline", "archive", "wal_stream", "stanza", "repo", "encryption", "replicator", "verifier", "restore_test", "alerts", "audit", "metrics"];

impl Config {
    /// Reads and validates `path`, with `STRATA_*` overrides taken from `env`. Secret files are read here.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let invalid = |reason: InvalidConfig| ConfigError::Invalid { path: path.display().to_string(), reason };
        if !path.is_file() {
            return Err(invalid(InvalidConfig::NoSuchFile));
        }
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix("STRATA_")
                    .map(|rest| TOP_LEVEL_KEYS.iter().any(|t| rest.to_ascii_lowercase().split("__").next() == Some(t)))
                    .unwrap_or(false)
            })
            .collect();
        let unparsable = |e: config::ConfigError| invalid(InvalidConfig::Unparsable(e.to_string()));
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("STRATA")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(unparsable)?;
        let raw: raw::RawConfig = raw.try_deserialize().map_err(unparsable)?;
        raw.validate().map_err(invalid)
    }

    pub fn stanza(&self, name: &str) -> Result<&StanzaConfig, ConfigError> {
        self.stanza.get(name).ok_or_else(|| ConfigError::UnknownStanza {
            name: name.to_string(),
            known: if self.stanza.is_empty() {
                "none".into()
            } else {
                self.stanza.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }

    /// The repository backups are written to: the first one listed.
    pub fn primary_repo(&self) -> &RepoConfig {
        &self.repo[0]
    }

    /// A repository by name.
    pub fn repo_named(&self, name: &str) -> Option<&RepoConfig> {
        self.repo.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests;
