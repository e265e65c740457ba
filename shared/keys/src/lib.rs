//! Repository encryption keys: where the data key comes from, and how it is kept in a repository.
//!
//! A repository set (every `[[repo]]` of a config) shares one 256-bit **data key**, because the replicator
//! copies packs byte for byte. The repository holds the data key only **wrapped** (`keys/strata.keys`): by a
//! KMS key (GenerateDataKey / Decrypt) or by a key derived from a passphrase with a memory-hard KDF. The
//! plain data key lives only in the memory of the processes that seal or unseal chunks; the repository
//! alone, or the config alone, is useless. `strata repo-rekey` rewraps the data key under a new KMS key or
//! passphrase without touching any chunk.
//!
//! From the data key, [`strata_seal::ChunkCipher`] derives the chunk cipher key and the key of the keyed
//! hash that names chunks.
//!
//! # The key file
//! `keys/strata.keys` is JSON ([`KeyFile`]): a format version, when the key was created (and last
//! rewrapped), the [`WrappedKey`] and a **key check value**, the first 16 bytes of
//! `BLAKE3::derive_key("strata key check", data key)` in hex. The check value is what lets a process know
//! that what it unwrapped *is* this repository's key (a KMS or passphrase that "works" on a swapped key
//! file would otherwise give a key that decrypts nothing), and lets two repositories be compared without
//! unwrapping anything. It reveals nothing useful about the key: it is a one-way derivation under its own
//! context, distinct from the contexts the chunk keys are derived under.
//!
//! The file is created with `put_new` (stanza-create), so a second stanza-create, or one racing it, can
//! never replace the key chunks were already sealed with; only rekey replaces it (atomically, with `put`),
//! and only after checking that the new wrap unwraps to the same key check value.
//!
//! Two rekeys at once would both succeed and both tell their operator to use their key, while only the
//! last write counts. So rekey first creates `keys/rekey.lock` (put-if-absent) in every repository with a
//! key file, reads the key files only once it holds them all, and, before replacing a key file, checks it
//! is still byte for byte the one it unwrapped. The loser fails at once naming the holder (host, pid,
//! start); a lock left by a rekey that died on this host (its pid is gone) is taken over, one left from
//! another host is named in the error for the operator to remove.
//!
//! # Providers
//! - [`KmsKeyProvider`]: the data key comes from KMS `GenerateDataKey` (AES_256) and is unwrapped with
//!   `Decrypt`, both under the encryption context `{"strata": "repository data key"}`; rekey wraps it
//!   with `Encrypt` under the new key. KMS keeps the key material and its audit log; losing access to the
//!   KMS key (disabled, deleted, no permission) is losing access to the repository, which is the point.
//! - [`PassphraseKeyProvider`]: Argon2id (64 MiB, 3 passes) over the passphrase and a random salt gives
//!   the key that wraps the data key with AES-256-GCM. The KDF's parameters are stored with the wrap, so
//!   they can be raised later without breaking old key files.
//!
//! # What reads and writes it
//! [`sealer_for`] (every process that opens a repository), [`wait_for_sealer`] (services that may start
//! before stanza-create), [`init_repository`] (stanza-create) and [`rekey`] (`strata repo-rekey`).

mod kms;
mod passphrase;

pub use kms::KmsKeyProvider;
pub use passphrase::{KdfParams, PassphraseKeyProvider, MIN_PASSPHRASE_CHARS};

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use strata_config::{Config, EncryptionConfig, EncryptionType};
use strata_seal::{ChunkCipher, Sealer};
use strata_storage::{Storage, StorageError};

/// Where a repository keeps its wrapped data key.
pub const KEY_FILE: &str = "keys/strata.keys";

/// Held by a running `repo-rekey` (see the crate docs).
pub const REKEY_LOCK: &str = "keys/rekey.lock";

/// The key file format this build writes and reads.
pub const KEY_FILE_FORMAT: u32 = 1;

/// How often [`wait_for_sealer`] looks for the key file.
const WAIT_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// One line the user can act on: wrong passphrase, KMS refused, no key file, ...
    #[error("{0}")]
    Message(String),
}

fn err(msg: impl Into<String>) -> KeyError {
    KeyError::Message(msg.into())
}

/// A plain 256-bit data key (zeroed when dropped).
pub struct DataKey(pub zeroize::Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh key from the system's CSPRNG.
    pub fn random() -> Result<DataKey, KeyError> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(key.as_mut()).map_err(|_| err("the system random generator failed"))?;
        Ok(DataKey(key))
    }

    /// The key check value: hex of the first 16 bytes of `BLAKE3::derive_key("strata key check", key)`.
    pub fn check_value(&self) -> String {
        let derived = zeroize::Zeroizing::new(blake3::derive_key("strata key check", self.0.as_ref()));
        hex::encode(&derived[..16])
    }

    /// The sealer that encrypts with this key.
    pub fn sealer(&self) -> Sealer {
        Sealer::encrypted(ChunkCipher::new(&self.0))
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey(check {})", self.check_value())
    }
}

/// A data key as stored in the repository: which provider wrapped it, with what, and the wrapped bytes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct WrappedKey {
    /// "kms" or "passphrase".
    pub provider: String,
    /// The KMS key id/ARN that wrapped it (kms), or "" (passphrase).
    pub key_id: String,
    /// Hex of the wrapped bytes (KMS CiphertextBlob, or nonce + AES-GCM ciphertext + tag).
    pub blob: String,
    /// Hex of the KDF salt (passphrase).
    #[serde(default)]
    pub salt: String,
    /// The KDF and its parameters (passphrase), so that they can change without breaking old files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfParams>,
}

pub const PROVIDER_KMS: &str = "kms";
pub const PROVIDER_PASSPHRASE: &str = "passphrase";

impl WrappedKey {
    /// "kms key arn:aws:kms:..." or "a passphrase", for messages.
    pub fn describe(&self) -> String {
        match self.provider.as_str() {
            PROVIDER_KMS => format!("kms key {}", self.key_id),
            PROVIDER_PASSPHRASE => "a passphrase".to_string(),
            other => format!("unknown provider '{other}'"),
        }
    }
}

/// Who wraps and unwraps data keys.
#[async_trait::async_trait]
pub trait KeyProvider: Send + Sync {
    /// "kms:<key id>" or "passphrase".
    fn describe(&self) -> String;
    /// A fresh data key and its wrapped form.
    async fn generate(&self) -> Result<(DataKey, WrappedKey), KeyError>;
    /// Wraps an existing data key (rekey).
    async fn wrap(&self, key: &DataKey) -> Result<WrappedKey, KeyError>;
    /// Unwraps a stored key; a wrong key, passphrase or KMS refusal is one clear error.
    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, KeyError>;
}

/// The provider the config describes; `None` for `encryption.type = "none"`.
pub fn provider_from_config(cfg: &EncryptionConfig) -> Result<Option<Arc<dyn KeyProvider>>, KeyError> {
    Ok(match cfg.kind {
        EncryptionType::None => None,
        EncryptionType::Kms => Some(Arc::new(KmsKeyProvider::from_config(cfg)?)),
        EncryptionType::Passphrase => Some(Arc::new(PassphraseKeyProvider::from_config(cfg)?)),
    })
}

/// The content of `keys/strata.keys`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct KeyFile {
    pub format: u32,
    /// When the data key was created (Unix seconds).
    pub created: i64,
    /// When it was last rewrapped by repo-rekey (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrapped: Option<i64>,
    /// See the crate docs: identifies the data key without revealing it.
    pub key_check: String,
    pub wrapped: WrappedKey,
}

impl KeyFile {
    pub fn new(key: &DataKey, wrapped: WrappedKey) -> KeyFile {
        KeyFile { format: KEY_FILE_FORMAT, created: now(), rewrapped: None, key_check: key.check_value(), wrapped }
    }

    pub fn parse(bytes: &[u8]) -> Result<KeyFile, KeyError> {
        #[derive(serde::Deserialize)]
        struct Version {
            format: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| err(format!("{KEY_FILE} is not a Strata key file ({e})")))?;
        if version.format != KEY_FILE_FORMAT {
            return Err(err(format!(
                "{KEY_FILE} has format {}; this build reads format {KEY_FILE_FORMAT}",
                version.format
            )));
        }
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| err(format!("{KEY_FILE} is corrupt ({e})")))?;
        if file.key_check.len() != 32 || hex::decode(&file.key_check).is_err() {
            return Err(err(format!("{KEY_FILE} is corrupt (key_check is not 16 bytes of hex)")));
        }
        Ok(file)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("key file serializes");
        out.push(b'\n');
        out
    }

    /// Unwraps the data key with `provider` and checks it is the one this file describes.
    pub async fn unwrap_with(&self, provider: &dyn KeyProvider) -> Result<DataKey, KeyError> {
        let key = provider.unwrap(&self.wrapped).await?;
        if key.check_value() != self.key_check {
            return Err(err(format!(
                "cannot unwrap the repository's data key: {} gives a key whose check value ({}) is not the key file's ({})",
                self.wrapped.describe(),
                key.check_value(),
                self.key_check
            )));
        }
        Ok(key)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The repository's key file, or `None` when it has none.
pub async fn read_key_file(storage: &dyn Storage) -> Result<Option<(KeyFile, Bytes)>, KeyError> {
    match storage.get(KEY_FILE).await {
        Ok(bytes) => {
            let file = KeyFile::parse(&bytes).map_err(|e| err(format!("{}: {e}", storage.describe())))?;
            Ok(Some((file, bytes)))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(err(format!("cannot read {KEY_FILE} from {}: {e}", storage.describe()))),
    }
}

/// What in the repository shows it already holds data (written unencrypted, since it has no key file),
/// or `None` for a repository stanza-create may still encrypt.
async fn existing_data(storage: &dyn Storage) -> Result<Option<String>, KeyError> {
    let read_err = |e: StorageError| err(format!("cannot read {}: {e}", storage.describe()));
    if storage.size("strata.repo").await.map_err(read_err)?.is_some() {
        return Ok(Some("strata.repo".into()));
    }
    for prefix in ["stanza/", "pack/"] {
        if let Some(first) = storage.list(prefix).await.map_err(read_err)?.into_iter().next() {
            return Ok(Some(first.path));
        }
    }
    Ok(None)
}

fn encrypted_but_not_configured(storage: &dyn Storage, file: &KeyFile) -> KeyError {
    err(format!(
        "repository {} is encrypted ({}); configure [encryption] to read it",
        storage.describe(),
        file.wrapped.describe()
    ))
}

/// Whether `found` (what [`existing_data`] found) was sealed encrypted, by its envelope header (byte 0 the
/// envelope version 1, byte 2 the cipher, 1 for AES-256-GCM: see `strata_seal`). Packs begin with a sealed
/// chunk, and backup and WAL records are sealed whole; `strata.repo` and `stanza.json` are plain JSON.
async fn sealed_encrypted(storage: &dyn Storage, found: &str) -> bool {
    matches!(storage.get_range(found, 0, 8).await, Ok(header) if header.len() == 8 && header[0] == 1 && header[2] == 1)
}

/// The first sealed object (pack, then backup or WAL record) of a repository, if any.
async fn first_sealed_object(storage: &dyn Storage) -> Result<Option<String>, KeyError> {
    let read_err = |e: StorageError| err(format!("cannot read {}: {e}", storage.describe()));
    if let Some(pack) = storage.list("pack/").await.map_err(read_err)?.into_iter().next() {
        return Ok(Some(pack.path));
    }
    let records = storage.list("stanza/").await.map_err(read_err)?;
    Ok(records.into_iter().map(|o| o.path).find(|p| p.ends_with(".record") || p.contains("/wal/")))
}

/// Encryption is configured, the repository has data and no key file: either its key file was deleted
/// (its data is sealed encrypted, and cannot be read until the key file is put back), or it was created
/// unencrypted.
async fn no_key_file_but_data(storage: &dyn Storage, found: &str) -> Result<KeyError, KeyError> {
    if let Some(sealed) = first_sealed_object(storage).await? {
        if sealed_encrypted(storage, &sealed).await {
            return Ok(err(format!(
                "repository {}: the key file {KEY_FILE} is missing, but the repository holds encrypted data (found {sealed}); \
                 put the key file back (from another repository of this config, or a copy) to read it",
                storage.describe()
            )));
        }
    }
    Ok(unencrypted_data(storage, found))
}

fn unencrypted_data(storage: &dyn Storage, found: &str) -> KeyError {
    err(format!(
        "repository {} holds unencrypted data but [encryption] is configured (found {found}; a repository is \
         encrypted only when stanza-create finds it empty)",
        storage.describe()
    ))
}

/// The sealer for a repository: plain when encryption is off and the repository has no key file; with
/// the unwrapped data key when it is on and the repository has one. A mismatch (encrypted repository,
/// no encryption configured; or the reverse) is an error naming it. Encryption on and no key file is
/// accepted (plain sealer) only while the repository holds nothing: that is stanza-create's case, which
/// stores the key file before anything else.
pub async fn sealer_for(cfg: &Config, storage: &dyn Storage) -> Result<Sealer, KeyError> {
    let file = read_key_file(storage).await?;
    let provider = provider_from_config(&cfg.encryption)?;
    match (provider, file) {
        (None, None) => Ok(Sealer::default()),
        (None, Some((file, _))) => Err(encrypted_but_not_configured(storage, &file)),
        (Some(provider), Some((file, _))) => Ok(file.unwrap_with(provider.as_ref()).await?.sealer()),
        (Some(_), None) => match existing_data(storage).await? {
            None => Ok(Sealer::default()),
            Some(found) => Err(no_key_file_but_data(storage, &found).await?),
        },
    }
}

/// [`sealer_for`] for long-running services (collector, sealer, uploader): while encryption is configured
/// and the repository is still empty without a key file, waits (polling every 2 s) for stanza-create to
/// store one, so that a service started first never writes plain chunks into a repository about to be
/// encrypted. Callers that must stop on shutdown race this future against their shutdown signal.
pub async fn wait_for_sealer(cfg: &Config, storage: &dyn Storage) -> Result<Sealer, KeyError> {
    let mut logged = false;
    loop {
        if cfg.encryption.kind != EncryptionType::None
            && read_key_file(storage).await?.is_none()
            && existing_data(storage).await?.is_none()
        {
            if !logged {
                tracing::info!(
                    repository = %storage.describe(),
                    "encryption is configured and the repository has no key file yet; waiting for stanza-create to store {KEY_FILE}"
                );
                logged = true;
            }
            tokio::time::sleep(WAIT_POLL).await;
            continue;
        }
        return sealer_for(cfg, storage).await;
    }
}

/// Called by stanza-create on every repository: with encryption configured and no key file yet, stores
/// one (a new data key on the first repository; `existing`'s on the others so they share it). Refuses a
/// repository that already holds unencrypted data, or a different key. Returns the key file's bytes so
/// the caller can hand them to the next repository.
///
/// A key file already there is confirmed: with `existing`, it must have the same key check value; without,
/// the configured provider must unwrap it. A new data key is unwrapped once before it is stored, so a KMS
/// key that can generate but not decrypt is found before any chunk depends on it.
pub async fn init_repository(cfg: &Config, storage: &dyn Storage, existing: Option<&[u8]>) -> Result<Option<Vec<u8>>, KeyError> {
    let Some(provider) = provider_from_config(&cfg.encryption)? else {
        return match read_key_file(storage).await? {
            Some((file, _)) => Err(encrypted_but_not_configured(storage, &file)),
            None => Ok(None),
        };
    };
    let expected = existing.map(KeyFile::parse).transpose()?;
    if let Some((file, bytes)) = read_key_file(storage).await? {
        confirm(storage, provider.as_ref(), &file, expected.as_ref()).await?;
        return Ok(Some(bytes.to_vec()));
    }
    if let Some(found) = existing_data(storage).await? {
        return Err(no_key_file_but_data(storage, &found).await?);
    }
    let new_bytes = match existing {
        Some(bytes) => bytes.to_vec(),
        None => {
            let (key, wrapped) = provider.generate().await?;
            let file = KeyFile::new(&key, wrapped);
            file.unwrap_with(provider.as_ref()).await?;
            file.to_bytes()
        }
    };
    match storage.put_new(KEY_FILE, Bytes::from(new_bytes.clone())).await {
        Ok(()) => Ok(Some(new_bytes)),
        // Another stanza-create stored one first: it must be the same key, or usable.
        Err(StorageError::AlreadyExists { .. }) => match read_key_file(storage).await? {
            Some((file, bytes)) => {
                confirm(storage, provider.as_ref(), &file, expected.as_ref()).await?;
                Ok(Some(bytes.to_vec()))
            }
            None => Err(err(format!("{KEY_FILE} in {} exists and vanished again; retry", storage.describe()))),
        },
        Err(e) => Err(err(format!("cannot store {KEY_FILE} in {}: {e}", storage.describe()))),
    }
}

async fn confirm(storage: &dyn Storage, provider: &dyn KeyProvider, file: &KeyFile, expected: Option<&KeyFile>) -> Result<(), KeyError> {
    match expected {
        Some(expected) if expected.key_check != file.key_check => Err(err(format!(
            "repository {} already has a different data key (key check {}, the first repository's is {})",
            storage.describe(),
            file.key_check,
            expected.key_check
        ))),
        Some(_) => Ok(()),
        None => file.unwrap_with(provider).await.map(drop),
    }
}

/// Collapses an error chain into one line: each source's message, joined with ": ", newlines removed.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        let text = c.to_string().replace(['\n', '\r'], " ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = c.source();
    }
    parts.join(": ")
}

mod rekey;
#[cfg(test)]
use rekey::LockHolder;
pub use rekey::{rekey, RekeyOutcome, RekeyReport};

#[cfg(test)]
mod tests;
