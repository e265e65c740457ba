//! Secrets, and the files they come from.
//!
//! Every secret the file can hold inline (S3 and KMS credentials, webhook URLs, which carry their token) can
//! instead come from a `<key>_file`, so that the config itself can be readable by every user that runs
//! `strata` while the secret is not (garage's `*_file` keys). Such a file is read at load, once, and is
//! refused when its group or others may read it: a secret in a file anyone can read is no secret, and it is
//! better found at load than after a breach. Giving a secret both ways is refused rather than resolved by a
//! precedence rule nobody remembers. Secrets that were file-only before (the NATS keys, the passphrase)
//! follow the same mode rule; those are read by the bus and the key provider when they need them.

use crate::InvalidConfig;
use std::path::{Path, PathBuf};

/// A secret read from the config: kept out of `Debug` output, so that logging a config leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that hands it to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The name a key has in error messages: `repository 'x' secret_access_key` (as the range errors name a
/// repository's keys) or `encryption.kms_secret_access_key`.
pub(crate) fn key_path(section: &str, key: &str) -> String {
    if section.starts_with("repository ") {
        format!("{section} {key}")
    } else {
        format!("{section}.{key}")
    }
}

/// Checks `path` (the value of `key`) is a file this process can open; returns its mode bits.
pub(crate) fn readable_file(key: &str, path: &Path) -> Result<u32, InvalidConfig> {
    use std::os::unix::fs::PermissionsExt;
    let (key, path_buf) = (key.to_string(), path.to_path_buf());
    let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => InvalidConfig::FileMissing { key: key.clone(), path: path_buf.clone() },
        _ => InvalidConfig::FileUnusable { key: key.clone(), path: path_buf.clone(), source },
    })?;
    if !meta.is_file() {
        return Err(InvalidConfig::NotAFile { key, path: path_buf });
    }
    std::fs::File::open(path).map_err(|source| InvalidConfig::FileCannotOpen { key: key.clone(), path: path_buf.clone(), source })?;
    Ok(meta.permissions().mode() & 0o7777)
}

/// Checks `path` is a file only its owner may read (see the module docs).
pub(crate) fn owner_only_file(key: &str, path: &Path) -> Result<(), InvalidConfig> {
    let mode = readable_file(key, path)?;
    if mode & 0o077 != 0 {
        return Err(InvalidConfig::SecretOpenToOthers { key: key.to_string(), path: path.to_path_buf(), mode });
    }
    Ok(())
}

/// The first line of an owner-only file (without its line ending), which must not be empty.
fn read_secret_file(key: &str, path: &Path) -> Result<Secret, InvalidConfig> {
    owner_only_file(key, path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|source| InvalidConfig::FileUnusable { key: key.to_string(), path: path.to_path_buf(), source })?;
    let first = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if first.trim().is_empty() {
        return Err(InvalidConfig::SecretFileEmpty { key: key.to_string(), path: path.to_path_buf() });
    }
    Ok(Secret::new(first))
}

/// The secret `section`'s `key` gives, inline or from `<key>_file`; not both.
pub(crate) fn inline_or_file(
    section: &str,
    key: &'static str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<Secret>, InvalidConfig> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(InvalidConfig::SecretTwice { section: section.to_string(), key }),
        (Some(value), None) => Ok(Some(Secret::new(value))),
        (None, Some(path)) => read_secret_file(&key_path(section, &format!("{key}_file")), &path).map(Some),
        (None, None) => Ok(None),
    }
}
