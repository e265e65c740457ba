//! Rekeying: wrapping every repository's data key under a new key provider, under a lock, so that a
//! rekey killed between repositories is finished by the next one; apart from reading and creating keys,
//! which every command does, because only `strata rekey` does this.

use super::*;

/// What [`rekey`] did to one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RekeyOutcome {
    /// The key file was replaced by one wrapped with the new key.
    Rewrapped { repo: String },
    /// The repository has no key file (not stanza-created, or unencrypted); nothing was written.
    NoKeyFile { repo: String },
}

/// What [`rekey`] did.
#[derive(Debug)]
pub struct RekeyReport {
    pub key_check: String,
    /// How the data key is wrapped now ("kms key arn:..." or "a passphrase").
    pub wrapped_by: String,
    /// One per repository, in the order given.
    pub repos: Vec<RekeyOutcome>,
}

/// `strata repo-rekey`: unwraps the data key from the first repository's key file with the configured
/// provider, wraps it with `new` (a whole `[encryption]` section for the new key), checks that the new
/// wrap unwraps to the same key check value, then replaces the key file of every repository that has one,
/// in the order given (the primary first). No chunk is read or written: the data key does not change.
///
/// Every check (old key usable, new key usable, every key file the same key) runs before the first write,
/// so a failure there writes nothing. A storage failure during the writes names the repositories already
/// rewritten.
pub async fn rekey(cfg: &Config, repos: &[(String, Arc<dyn Storage>)], new: &EncryptionConfig) -> Result<RekeyReport, KeyError> {
    let old = provider_from_config(&cfg.encryption)?
        .ok_or_else(|| err("repo-rekey needs the current key configured in [encryption] (type is \"none\")"))?;
    let new = provider_from_config(new)?.ok_or_else(|| err("repo-rekey needs a new KMS key or passphrase"))?;
    let lock = RekeyLock::take(repos).await?;
    let result = rekey_locked(repos, old.as_ref(), new.as_ref()).await;
    lock.release().await;
    result
}

/// [`rekey`]'s work, once every repository's [`REKEY_LOCK`] is held.
pub(crate) async fn rekey_locked(repos: &[(String, Arc<dyn Storage>)], old: &dyn KeyProvider, new: &dyn KeyProvider) -> Result<RekeyReport, KeyError> {
    let mut files = Vec::with_capacity(repos.len());
    for (name, storage) in repos {
        files.push(read_key_file(storage.as_ref()).await.map_err(|e| err(format!("repository '{name}': {e}")))?);
    }
    let Some((first_index, (primary, _))) = files.iter().enumerate().find_map(|(i, f)| f.as_ref().map(|f| (i, f))) else {
        return Err(err(format!("no configured repository has a key file ({KEY_FILE}); run stanza-create first")));
    };
    let primary_name = &repos[first_index].0;
    let key = unwrap_any(repos, &files, first_index, old).await?;
    for ((name, _), file) in repos.iter().zip(&files) {
        if let Some((file, _)) = file {
            if file.key_check != primary.key_check {
                return Err(err(format!(
                    "repository '{name}' has a different data key (key check {}) than repository '{primary_name}' ({}); nothing was rewrapped",
                    file.key_check, primary.key_check
                )));
            }
        }
    }
    let wrapped = new.wrap(&key).await?;
    let mut replacement = KeyFile { rewrapped: Some(now()), wrapped, ..primary.clone() };
    replacement.format = KEY_FILE_FORMAT;
    replacement
        .unwrap_with(new)
        .await
        .map_err(|e| err(format!("the new wrap does not unwrap, nothing was rewrapped: {e}")))?;
    let bytes = Bytes::from(replacement.to_bytes());
    let mut outcomes = Vec::with_capacity(repos.len());
    for ((name, storage), file) in repos.iter().zip(&files) {
        let Some((_, read)) = file else {
            outcomes.push(RekeyOutcome::NoKeyFile { repo: name.clone() });
            continue;
        };
        let done = || {
            let done: Vec<String> = outcomes
                .iter()
                .filter_map(|o| match o {
                    RekeyOutcome::Rewrapped { repo } => Some(format!("'{repo}'")),
                    RekeyOutcome::NoKeyFile { .. } => None,
                })
                .collect();
            if done.is_empty() { "none".to_string() } else { done.join(", ") }
        };
        // Compare before swapping: a key file changed since it was read (by anything that ignores the
        // lock) is left as it is.
        let current = storage.get(KEY_FILE).await.map_err(|e| err(format!("repository '{name}': cannot read {KEY_FILE} again: {e}")))?;
        if current != *read {
            return Err(err(format!(
                "repository '{name}': {KEY_FILE} changed while repo-rekey ran, and is left as it is (already rewrapped under {}: {}; run repo-rekey again)",
                replacement.wrapped.describe(),
                done()
            )));
        }
        if let Err(e) = storage.put(KEY_FILE, bytes.clone()).await {
            return Err(err(format!(
                "repository '{name}': cannot replace {KEY_FILE}: {e} (already rewrapped under {}: {}; run repo-rekey again)",
                replacement.wrapped.describe(),
                done()
            )));
        }
        outcomes.push(RekeyOutcome::Rewrapped { repo: name.clone() });
        // This repository has the new wrap, the next ones still the old: either key opens some of them,
        // and the next repo-rekey (with either) finishes the work.
        strata_crashpoint::hit("rekey.after-repository");
    }
    Ok(RekeyReport { key_check: replacement.key_check.clone(), wrapped_by: replacement.wrapped.describe(), repos: outcomes })
}

/// Who holds a [`REKEY_LOCK`]: the body of the lock object, for the message that names the holder.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct LockHolder {
    pub(crate) host: String,
    pub(crate) pid: u32,
    /// Unix seconds, by the holder's clock.
    pub(crate) since: i64,
}

impl LockHolder {
    pub(crate) fn me() -> LockHolder {
        LockHolder { host: strata_stamp::host_name().to_string(), pid: std::process::id(), since: now() }
    }

    /// A holder on this host whose process is gone: its lock is left over from a rekey that died.
    pub(crate) fn is_dead(&self) -> bool {
        self.host == strata_stamp::host_name() && self.pid != 0 && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    pub(crate) fn describe(&self) -> String {
        format!("host {}, pid {}, since {}", self.host, self.pid, strata_stamp::format_rfc3339(self.since))
    }
}


/// The [`REKEY_LOCK`]s one rekey holds: one per repository with a key file, taken in the repositories'
/// order, so that of two rekeys one finds the other's lock.
struct RekeyLock {
    held: Vec<Arc<dyn Storage>>,
}

impl RekeyLock {
    async fn take(repos: &[(String, Arc<dyn Storage>)]) -> Result<RekeyLock, KeyError> {
        let body = Bytes::from(serde_json::to_vec(&LockHolder::me()).expect("lock body serializes"));
        let mut lock = RekeyLock { held: Vec::new() };
        for (name, storage) in repos {
            match storage.size(KEY_FILE).await {
                Ok(Some(_)) => {}
                Ok(None) => continue,
                Err(e) => {
                    lock.release().await;
                    return Err(err(format!("repository '{name}': cannot read {KEY_FILE}: {e}")));
                }
            }
            if let Err(e) = Self::take_one(name, storage.as_ref(), &body).await {
                lock.release().await;
                return Err(e);
            }
            lock.held.push(storage.clone());
        }
        Ok(lock)
    }

    /// Creates the lock object; takes over one whose holder died on this host (once).
    async fn take_one(name: &str, storage: &dyn Storage, body: &Bytes) -> Result<(), KeyError> {
        for _ in 0..2 {
            match storage.put_new(REKEY_LOCK, body.clone()).await {
                Ok(()) => return Ok(()),
                Err(StorageError::AlreadyExists { .. }) => {}
                Err(e) => return Err(err(format!("repository '{name}': cannot create {REKEY_LOCK}: {e}"))),
            }
            let holder = match storage.get(REKEY_LOCK).await {
                Ok(bytes) => serde_json::from_slice::<LockHolder>(&bytes).ok(),
                // Released meanwhile: try again.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(err(format!("repository '{name}': cannot read {REKEY_LOCK}: {e}"))),
            };
            match holder {
                Some(h) if h.is_dead() => {
                    tracing::warn!(repository = name, holder = %h.describe(), "taking over the lock of a repo-rekey that is no longer running");
                    storage.delete(REKEY_LOCK).await.map_err(|e| err(format!("repository '{name}': cannot remove {REKEY_LOCK}: {e}")))?;
                }
                Some(h) => {
                    return Err(err(format!(
                        "another repo-rekey is running on repository '{name}' ({}); nothing was rewrapped (if it is no longer running, remove {REKEY_LOCK} from the repository)",
                        h.describe()
                    )))
                }
                None => {
                    return Err(err(format!(
                        "repository '{name}' holds an unreadable {REKEY_LOCK}: another repo-rekey may be running; nothing was rewrapped (if none is, remove that file)"
                    )))
                }
            }
        }
        Err(err(format!("repository '{name}': another repo-rekey keeps taking {REKEY_LOCK}; nothing was rewrapped")))
    }

    async fn release(self) {
        for storage in self.held {
            if let Err(e) = storage.delete(REKEY_LOCK).await {
                tracing::warn!(repository = %storage.describe(), error = %e, "could not remove {REKEY_LOCK}; remove it before the next repo-rekey");
            }
        }
    }
}

/// The data key, from the first key file (in `repos` order) that `provider` unwraps: normally the primary's;
/// after a rekey that failed half-way, a repository not yet rewrapped, so running it again completes it.
/// The error is the primary's when none does.
pub(crate) async fn unwrap_any(
    repos: &[(String, Arc<dyn Storage>)],
    files: &[Option<(KeyFile, Bytes)>],
    first_index: usize,
    provider: &dyn KeyProvider,
) -> Result<DataKey, KeyError> {
    let primary = &files[first_index].as_ref().expect("first key file").0;
    let first_error = match primary.unwrap_with(provider).await {
        Ok(key) => return Ok(key),
        Err(e) => err(format!("repository '{}': {e}", repos[first_index].0)),
    };
    for (file, _) in files.iter().skip(first_index + 1).flatten() {
        if file.wrapped != primary.wrapped && file.key_check == primary.key_check {
            if let Ok(key) = file.unwrap_with(provider).await {
                return Ok(key);
            }
        }
    }
    Err(first_error)
}

