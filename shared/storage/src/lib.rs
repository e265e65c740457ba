//! Where repository objects live: the [`Storage`] trait and its backends.
//!
//! A repository is a set of named objects ('/'-separated paths relative to the repository root). Backends
//! promise the same thing whatever they are: a `put` or `put_new` that returned `Ok` is durable and complete
//! (never half-written under its final name), so the repository's commit rule (manifest last) holds on any of
//! them. What differs between backends is declared in [`Features`], not guessed by callers.
//!
//! Errors say what failed ([`StorageError`]) and whether retrying can help ([`StorageError::is_permanent`]).

pub mod metered;
pub mod posix;
pub mod retrying;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;

pub use posix::PosixStorage;
pub use metered::{MeteredStorage, Op, StorageStats};
pub use retrying::RetryingStorage;
pub use s3::{S3Settings, S3Storage};
pub use strata_retry::RetryPolicy;

/// What a backend can do, as data (pgBackRest's `StorageFeature` idea).
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// Directories exist as things that must be created and synced (POSIX), rather than being inferred from
    /// object names (S3).
    pub directories: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub path: String,
    pub size: u64,
    /// Last modification, seconds since the Unix epoch.
    pub modified: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: not found in the repository")]
    NotFound { path: String },
    #[error("{path}: already exists in the repository")]
    AlreadyExists { path: String },
    #[error("{path}: permission denied")]
    PermissionDenied { path: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
}

impl StorageError {
    /// Whether no retry can help: everything but an I/O failure, and I/O failures that say the request
    /// itself is wrong (a path through a file, a read-only file system) rather than that the medium failed
    /// for now (EIO, a timeout, a full disk someone may clear, a dropped connection).
    pub fn is_permanent(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                InvalidInput | Unsupported | NotADirectory | IsADirectory | ReadOnlyFilesystem | InvalidFilename | FileTooLarge
            ),
            _ => true,
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// The same error with `note` (" (3 attempts in 1.2 s)") at the end of its message; unchanged when the
    /// note is empty. The kind, and so [`StorageError::is_permanent`], stays.
    pub fn with_note(self, note: &str) -> StorageError {
        if note.is_empty() {
            return self;
        }
        match self {
            StorageError::NotFound { path } => StorageError::NotFound { path: format!("{path}{note}") },
            StorageError::AlreadyExists { path } => StorageError::AlreadyExists { path: format!("{path}{note}") },
            StorageError::PermissionDenied { path } => StorageError::PermissionDenied { path: format!("{path}{note}") },
            StorageError::Io { path, source } => {
                StorageError::Io { path, source: std::io::Error::new(source.kind(), format!("{source}{note}")) }
            }
            StorageError::Corrupt { path, reason } => StorageError::Corrupt { path, reason: format!("{reason}{note}") },
        }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

#[async_trait]
pub trait Storage: Send + Sync {
    /// Requests retried since this storage was opened, by this layer and those below it (for metrics).
    fn retries(&self) -> u64 {
        0
    }
    /// The request counts of the [`MeteredStorage`] in this stack, if there is one (for metrics).
    fn stats(&self) -> Option<StorageStats> {
        None
    }
    /// Where this storage is, for messages ("posix:/var/lib/strata/repo").
    fn describe(&self) -> String;
    fn features(&self) -> Features;
    /// Checks the repository is reachable and writable (a healthcheck run before any work starts).
    async fn check_writable(&self) -> Result<()>;
    /// Stores `data` at `path`, replacing what was there, atomically and durably.
    async fn put(&self, path: &str, data: Bytes) -> Result<()>;
    /// Stores `data` at `path` only if nothing is there yet ([`StorageError::AlreadyExists`] otherwise),
    /// atomically and durably. The WAL archive's never-overwrite rule rests on this.
    async fn put_new(&self, path: &str, data: Bytes) -> Result<()>;
    /// Stores `data` at `path` as [`Storage::put`] does (or as [`Storage::put_new`] with `if_absent`) and
    /// confirms that the repository now holds exactly those bytes: [`Written::Verified`], or
    /// [`Written::Differs`] when what it holds is something else. The default reads the object back and
    /// compares it; a backend for which a read-back is expensive (S3 across a WAN) overrides it with a
    /// check as strong that needs no second transfer (see [`S3Storage`]).
    async fn put_verified(&self, path: &str, data: Bytes, if_absent: bool) -> Result<Written> {
        if if_absent {
            self.put_new(path, data.clone()).await?;
        } else {
            self.put(path, data.clone()).await?;
        }
        Ok(if self.get(path).await? == data { Written::Verified } else { Written::Differs })
    }
    async fn get(&self, path: &str) -> Result<Bytes>;
    async fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes>;
    /// The object's size, or `None` when it does not exist.
    async fn size(&self, path: &str) -> Result<Option<u64>>;
    /// Every object under the directory `prefix` (recursively), sorted by path.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    async fn delete(&self, path: &str) -> Result<()>;
    /// Temporary objects under `prefix` that a write killed midway left behind (never listed by
    /// [`Storage::list`]); removed with [`Storage::delete`] by expire once they are old. None on a backend
    /// whose writes leave none (an S3 put is atomic).
    async fn list_temporary(&self, _prefix: &str) -> Result<Vec<ObjectInfo>> {
        Ok(Vec::new())
    }
    /// The size and free space of what holds the repository (a POSIX filesystem), or `None` where there is
    /// no such limit to report (an S3 bucket).
    async fn capacity(&self) -> Result<Option<Capacity>> {
        Ok(None)
    }
}

/// What [`Storage::put_verified`] found after its write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The repository holds exactly the bytes written.
    Verified,
    /// It holds something else under the name (a write corrupted on its way, or a faulty server).
    Differs,
}

/// Space of the filesystem a repository lives on, as `statvfs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub size_bytes: u64,
    /// In use by anyone (`f_blocks - f_bfree`).
    pub used_bytes: u64,
    /// Free for an unprivileged writer (`f_bavail`).
    pub free_bytes: u64,
}

impl Capacity {
    /// Percent of the filesystem in use, as `df` counts it: used over used plus available (blocks reserved
    /// for root, or held back by a quota, count as neither).
    pub fn used_percent(&self) -> f64 {
        let total = self.used_bytes + self.free_bytes;
        if total == 0 { 0.0 } else { 100.0 * self.used_bytes as f64 / total as f64 }
    }
}
