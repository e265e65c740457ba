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

// API skeleton; implemented in this crate (see the functions' docs).

use std::sync::Arc;
use strata_config::{Config, EncryptionConfig};
use strata_seal::Sealer;
use strata_storage::Storage;

/// Where a repository keeps its wrapped data key.
pub const KEY_FILE: &str = "keys/strata.keys";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// One line the user can act on: wrong passphrase, KMS refused, no key file, ...
    #[error("{0}")]
    Message(String),
}

/// A plain 256-bit data key (zeroed when dropped).
pub struct DataKey(pub zeroize::Zeroizing<[u8; 32]>);

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
pub fn provider_from_config(_cfg: &EncryptionConfig) -> Result<Option<Arc<dyn KeyProvider>>, KeyError> {
    Ok(None)
}

/// The sealer for a repository: plain when encryption is off and the repository has no key file; with
/// the unwrapped data key when it is on and the repository has one. A mismatch (encrypted repository,
/// no encryption configured; or the reverse) is an error naming it.
pub async fn sealer_for(_cfg: &Config, _storage: &dyn Storage) -> Result<Sealer, KeyError> {
    Ok(Sealer::default())
}

/// [`sealer_for`] for long-running services: while encryption is configured and the repository has no key
/// file yet, waits (polling) instead of answering with a plain sealer.
pub async fn wait_for_sealer(cfg: &Config, storage: &dyn Storage) -> Result<Sealer, KeyError> {
    sealer_for(cfg, storage).await
}

/// Called by stanza-create on every repository: with encryption configured and no key file yet, stores
/// one (a new data key on the first repository; `existing`'s on the others so they share it). Refuses a
/// repository that already holds unencrypted data, or a different key. Returns the key file's bytes so
/// the caller can hand them to the next repository.
pub async fn init_repository(_cfg: &Config, _storage: &dyn Storage, _existing: Option<&[u8]>) -> Result<Option<Vec<u8>>, KeyError> {
    Ok(None)
}
