//! The passphrase key provider, for sites without a KMS: the data key is wrapped with a key derived from a
//! passphrase, so the repository alone (which holds only the wrap and the salt) cannot be read.
//!
//! The derivation is Argon2id with 64 MiB and 3 passes: memory-hard, so that guessing passphrases against
//! a stolen key file costs memory as well as time on any hardware. The salt is random per wrap (a rekey
//! to the same passphrase gives a different wrap), and the parameters are stored in the [`WrappedKey`] so
//! that raising them later does not strand old key files. The derived key wraps the data key with
//! AES-256-GCM; the associated data binds the KDF parameters, so a key file edited to weaker ones fails
//! to unwrap instead of being rewrapped weaker.
//!
//! The wrap can be attacked offline by anyone who can read the key file, so two rules keep the passphrase
//! out of reach: a new wrap (stanza-create, repo-rekey) needs at least [`MIN_PASSPHRASE_CHARS`] characters,
//! and a passphrase file that anyone but its owner may read is refused, as ssh refuses such a private key.
//! A shorter passphrase still opens a key file wrapped before the rule existed, so that an existing
//! repository stays readable and can be rekeyed to a longer one.

use crate::{err, DataKey, KeyError, KeyProvider, WrappedKey, KEY_FILE, PROVIDER_PASSPHRASE};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use std::path::Path;
use strata_config::EncryptionConfig;
use zeroize::Zeroizing;

const SALT_LEN: usize = 16;
const TAG_LEN: usize = 16;
const ARGON2ID: &str = "argon2id";
/// Bounds on parameters read from a key file, so a tampered file cannot make a process allocate terabytes.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 64;
/// The shortest passphrase accepted: 16 characters, about 80 bits for random lowercase letters and digits,
/// well beyond guessing through Argon2id's cost.
pub const MIN_PASSPHRASE_CHARS: usize = 16;

/// The KDF that turned the passphrase into the wrapping key, as stored in the key file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// "argon2id".
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// Argon2id, m = 64 MiB, t = 3, p = 1 (RFC 9106's second recommendation, with one lane).
    fn default() -> Self {
        KdfParams { algorithm: ARGON2ID.into(), memory_kib: 64 * 1024, iterations: 3, parallelism: 1 }
    }
}

impl KdfParams {
    fn argon2(&self) -> Result<argon2::Argon2<'static>, KeyError> {
        if self.algorithm != ARGON2ID {
            return Err(err(format!("{KEY_FILE} uses KDF '{}'; this build knows {ARGON2ID}", self.algorithm)));
        }
        if self.memory_kib > MAX_MEMORY_KIB || self.iterations > MAX_ITERATIONS || self.parallelism > MAX_PARALLELISM {
            return Err(err(format!("{KEY_FILE} asks for implausible KDF parameters ({self:?})")));
        }
        let params = argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| err(format!("{KEY_FILE} has invalid KDF parameters ({e})")))?;
        Ok(argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params))
    }

    fn aad(&self) -> String {
        format!("strata repository data key|{} m={} t={} p={}", self.algorithm, self.memory_kib, self.iterations, self.parallelism)
    }
}

pub struct PassphraseKeyProvider {
    passphrase: Zeroizing<Vec<u8>>,
    /// Where the passphrase came from, for messages ("file /etc/strata/passphrase").
    source: String,
    /// What new wraps use.
    params: KdfParams,
}

impl PassphraseKeyProvider {
    /// From `passphrase_file` (its first line), else from the variable `passphrase_env` names.
    pub fn from_config(cfg: &EncryptionConfig) -> Result<PassphraseKeyProvider, KeyError> {
        if let Some(path) = &cfg.passphrase_file {
            return Self::from_file(path);
        }
        if let Some(var) = &cfg.passphrase_env {
            return Self::from_env(var);
        }
        Err(err("encryption.type = \"passphrase\" needs encryption.passphrase_file or encryption.passphrase_env"))
    }

    pub fn from_file(path: &Path) -> Result<PassphraseKeyProvider, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read the passphrase file {}: {e}", path.display())))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "the passphrase file {} is open to group or others (mode {mode:04o}); allow only its owner (chmod 600)",
                path.display()
            )));
        }
        let bytes = Zeroizing::new(
            std::fs::read(path).map_err(|e| err(format!("cannot read the passphrase file {}: {e}", path.display())))?,
        );
        let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Err(err(format!("the passphrase file {} is empty (its first line is the passphrase)", path.display())));
        }
        Self::new(line.to_vec(), format!("file {}", path.display()))
    }

    pub fn from_env(var: &str) -> Result<PassphraseKeyProvider, KeyError> {
        let value = std::env::var_os(var)
            .ok_or_else(|| err(format!("the passphrase variable {var} (encryption.passphrase_env) is not set")))?;
        let bytes = Zeroizing::new(value.into_encoded_bytes());
        if bytes.is_empty() {
            return Err(err(format!("the passphrase variable {var} (encryption.passphrase_env) is empty")));
        }
        Self::new(bytes.to_vec(), format!("environment variable {var}"))
    }

    /// `source` says where the passphrase came from, for messages.
    pub fn new(passphrase: Vec<u8>, source: String) -> Result<PassphraseKeyProvider, KeyError> {
        let passphrase = Zeroizing::new(passphrase);
        if passphrase.is_empty() {
            return Err(err(format!("the passphrase from {source} is empty")));
        }
        Ok(PassphraseKeyProvider { passphrase, source, params: KdfParams::default() })
    }

    /// The same provider, wrapping with other KDF parameters (stored with each wrap).
    pub fn with_params(mut self, params: KdfParams) -> PassphraseKeyProvider {
        self.params = params;
        self
    }

    /// The AES-256-GCM key the passphrase, `salt` and `params` give (Argon2id runs on a blocking thread).
    async fn wrapping_key(&self, salt: &[u8], params: &KdfParams) -> Result<LessSafeKey, KeyError> {
        let argon2 = params.argon2()?;
        let passphrase = self.passphrase.clone();
        let salt = salt.to_vec();
        let derived = tokio::task::spawn_blocking(move || {
            let mut out = Zeroizing::new([0u8; 32]);
            argon2.hash_password_into(&passphrase, &salt, out.as_mut()).map(|()| out)
        })
        .await
        .map_err(|e| err(format!("the key derivation task failed: {e}")))?
        .map_err(|e| err(format!("the key derivation failed: {e}")))?;
        let unbound = UnboundKey::new(&AES_256_GCM, derived.as_ref()).map_err(|_| err("AES-256-GCM refused a 32-byte key"))?;
        Ok(LessSafeKey::new(unbound))
    }
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| err("the system random generator failed"))?;
    Ok(out)
}

#[async_trait::async_trait]
impl KeyProvider for PassphraseKeyProvider {
    fn describe(&self) -> String {
        "passphrase".into()
    }

    async fn generate(&self) -> Result<(DataKey, WrappedKey), KeyError> {
        let key = DataKey::random()?;
        let wrapped = self.wrap(&key).await?;
        Ok((key, wrapped))
    }

    async fn wrap(&self, key: &DataKey) -> Result<WrappedKey, KeyError> {
        let chars = String::from_utf8_lossy(&self.passphrase).chars().count();
        if chars < MIN_PASSPHRASE_CHARS {
            return Err(err(format!(
                "the passphrase from {} has {chars} characters; at least {MIN_PASSPHRASE_CHARS} are required to wrap a key",
                self.source
            )));
        }
        let salt = random::<SALT_LEN>()?;
        let nonce = random::<NONCE_LEN>()?;
        let aead = self.wrapping_key(&salt, &self.params).await?;
        let mut sealed = Zeroizing::new(key.0.to_vec());
        aead.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(self.params.aad()), &mut *sealed)
            .map_err(|_| err("AES-256-GCM failed to wrap the data key"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(WrappedKey {
            provider: PROVIDER_PASSPHRASE.into(),
            key_id: String::new(),
            blob: hex::encode(blob),
            salt: hex::encode(salt),
            kdf: Some(self.params.clone()),
        })
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, KeyError> {
        const WHAT: &str = "cannot unwrap the repository's data key";
        if wrapped.provider != PROVIDER_PASSPHRASE {
            return Err(err(format!("{WHAT}: it is wrapped by {}, but encryption.type is \"passphrase\"", wrapped.describe())));
        }
        let corrupt = |what: &str| err(format!("{WHAT}: {KEY_FILE} is corrupt ({what})"));
        let params = wrapped.kdf.as_ref().ok_or_else(|| corrupt("no KDF parameters"))?;
        let salt = hex::decode(&wrapped.salt).ok().filter(|s| s.len() >= 8).ok_or_else(|| corrupt("bad salt"))?;
        let blob = hex::decode(&wrapped.blob).ok().filter(|b| b.len() == NONCE_LEN + 32 + TAG_LEN).ok_or_else(|| corrupt("bad blob"))?;
        let aead = self.wrapping_key(&salt, params).await?;
        let nonce = Nonce::try_assume_unique_for_key(&blob[..NONCE_LEN]).map_err(|_| corrupt("bad nonce"))?;
        let mut sealed = Zeroizing::new(blob[NONCE_LEN..].to_vec());
        let plain = aead.open_in_place(nonce, Aad::from(params.aad()), &mut sealed).map_err(|_| {
            err(format!(
                "wrong passphrase for the repository's data key (the passphrase from {} does not unwrap {KEY_FILE}, or the file was altered)",
                self.source
            ))
        })?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(plain);
        Ok(DataKey(key))
    }
}
