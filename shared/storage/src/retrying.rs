//! [`RetryingStorage`]: retries a backend's transient failures, for backends that do not retry themselves.
//!
//! # Why a decorator
//! A POSIX repository is often not a local disk but NFS or a mounted volume, where a write can fail with
//! `EIO` or time out and succeed a moment later. pgBackRest retries such failures; Strata's POSIX backend
//! did not, so one hiccup failed a whole backup. The backend stays a plain translation of the trait to
//! system calls; this layer adds the retries (through `strata_retry`, the workspace's one retry loop) and
//! is stacked by whoever opens a repository. S3 does not need it: it retries request by request inside
//! (a multipart upload then resends one part, not the object).
//!
//! # Writes that may have happened
//! An attempt can fail after its effect took place (the rename was done, then the directory fsync failed).
//! Every operation is safe to repeat: `put` replaces, reads read. Two need care, because the repeat sees
//! the first attempt's effect: a `put_new` (or `put_verified` with `if_absent`) that finds its name taken on
//! a later attempt succeeds when the object holds exactly its bytes (it wrote them) and fails as taken
//! otherwise; a `delete` that finds nothing on a later attempt has done its work.

use super::{Capacity, Features, ObjectInfo, Result, Storage, StorageError, StorageStats, Written};
use async_trait::async_trait;
use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_retry::RetryPolicy;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A sensible policy for a file system: three attempts within about a second.
pub const POSIX_RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    first_pause: std::time::Duration::from_millis(200),
    max_pause: std::time::Duration::from_secs(1),
    give_up_after: None,
};

/// Retries the inner storage's transient errors; see the module docs.
pub struct RetryingStorage {
    inner: Arc<dyn Storage>,
    policy: RetryPolicy,
    cancel: CancellationToken,
    retries: AtomicU64,
}

impl RetryingStorage {
    /// Wraps `inner`; `cancel` ends a pause between attempts (the call then fails with its last error).
    pub fn new(inner: Arc<dyn Storage>, policy: RetryPolicy, cancel: CancellationToken) -> RetryingStorage {
        RetryingStorage { inner, policy, cancel, retries: AtomicU64::new(0) }
    }

    /// Runs `attempt(n)` (n counts from 1) under the policy; the final error carries the attempt count.
    async fn run<T, F, Fut>(&self, path: &str, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut n = 0;
        strata_retry::retry(
            &self.policy,
            &self.cancel,
            StorageError::is_permanent,
            |attempt, error, pause| {
                self.retries.fetch_add(1, Ordering::Relaxed);
                warn!(path, what, attempt, error = %error, "repository request failed; retrying in {pause:?}");
            },
            || {
                n += 1;
                attempt(n)
            },
        )
        .await
        .map_err(|gave_up| {
            let note = gave_up.attempts_note();
            gave_up.last.with_note(&note)
        })
    }

    /// After a later attempt of a put-if-absent found `path` taken: whether it holds `data` (what the
    /// earlier attempt wrote before its failure was reported).
    async fn holds(&self, path: &str, data: &Bytes) -> bool {
        matches!(self.inner.get(path).await, Ok(stored) if stored == *data)
    }
}

#[async_trait]
impl Storage for RetryingStorage {
    fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed) + self.inner.retries()
    }

    fn stats(&self) -> Option<StorageStats> {
        self.inner.stats()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn features(&self) -> Features {
        self.inner.features()
    }

    async fn check_writable(&self) -> Result<()> {
        self.run("", "check", |_| self.inner.check_writable()).await
    }

    async fn put(&self, path: &str, data: Bytes) -> Result<()> {
        self.run(path, "put", |_| self.inner.put(path, data.clone())).await
    }

    async fn put_new(&self, path: &str, data: Bytes) -> Result<()> {
        self.run(path, "put_new", |n| {
            let data = data.clone();
            async move {
                match self.inner.put_new(path, data.clone()).await {
                    Err(StorageError::AlreadyExists { .. }) if n > 1 && self.holds(path, &data).await => Ok(()),
                    other => other,
                }
            }
        })
        .await
    }

    async fn put_verified(&self, path: &str, data: Bytes, if_absent: bool) -> Result<Written> {
        self.run(path, "put_verified", |n| {
            let data = data.clone();
            async move {
                match self.inner.put_verified(path, data.clone(), if_absent).await {
                    Err(StorageError::AlreadyExists { .. }) if n > 1 && self.holds(path, &data).await => Ok(Written::Verified),
                    other => other,
                }
            }
        })
        .await
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        self.run(path, "get", |_| self.inner.get(path)).await
    }

    async fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes> {
        self.run(path, "get_range", |_| self.inner.get_range(path, offset, len)).await
    }

    async fn size(&self, path: &str) -> Result<Option<u64>> {
        self.run(path, "size", |_| self.inner.size(path)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.run(prefix, "list", |_| self.inner.list(prefix)).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.run(path, "delete", |n| async move {
            match self.inner.delete(path).await {
                Err(StorageError::NotFound { .. }) if n > 1 => Ok(()),
                other => other,
            }
        })
        .await
    }

    async fn list_temporary(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.run(prefix, "list_temporary", |_| self.inner.list_temporary(prefix)).await
    }

    async fn capacity(&self) -> Result<Option<Capacity>> {
        self.run("", "capacity", |_| self.inner.capacity()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A storage whose calls fail with the queued errors first, then act on a map, and which can be told to
    /// store a `put_new` before failing it (an fsync error after the link).
    #[derive(Default)]
    struct Flaky {
        failures: Mutex<Vec<StorageError>>,
        store_then_fail: Mutex<bool>,
        objects: Mutex<std::collections::BTreeMap<String, Bytes>>,
        calls: AtomicU64,
    }

    fn eio(path: &str) -> StorageError {
        StorageError::Io { path: path.into(), source: std::io::Error::other("EIO") }
    }

    impl Flaky {
        fn failing(errors: Vec<StorageError>) -> Arc<Flaky> {
            Arc::new(Flaky { failures: Mutex::new(errors), ..Default::default() })
        }
        fn next_failure(&self) -> Option<StorageError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut f = self.failures.lock().unwrap();
            (!f.is_empty()).then(|| f.remove(0))
        }
    }

    #[async_trait]
    impl Storage for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn features(&self) -> Features {
            Features { directories: false }
        }
        async fn check_writable(&self) -> Result<()> {
            Ok(())
        }
        async fn put(&self, path: &str, data: Bytes) -> Result<()> {
            if let Some(e) = self.next_failure() {
                return Err(e);
            }
            self.objects.lock().unwrap().insert(path.into(), data);
            Ok(())
        }
        async fn put_new(&self, path: &str, data: Bytes) -> Result<()> {
            if std::mem::take(&mut *self.store_then_fail.lock().unwrap()) {
                self.objects.lock().unwrap().insert(path.into(), data);
                return Err(eio(path));
            }
            if let Some(e) = self.next_failure() {
                return Err(e);
            }
            let mut objects = self.objects.lock().unwrap();
            if objects.contains_key(path) {
                return Err(StorageError::AlreadyExists { path: path.into() });
            }
            objects.insert(path.into(), data);
            Ok(())
        }
        async fn get(&self, path: &str) -> Result<Bytes> {
            if let Some(e) = self.next_failure() {
                return Err(e);
            }
            self.objects.lock().unwrap().get(path).cloned().ok_or(StorageError::NotFound { path: path.into() })
        }
        async fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes> {
            let whole = self.get(path).await?;
            let start = (offset as usize).min(whole.len());
            Ok(whole.slice(start..(start + len as usize).min(whole.len())))
        }
        async fn size(&self, path: &str) -> Result<Option<u64>> {
            Ok(self.objects.lock().unwrap().get(path).map(|b| b.len() as u64))
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
            let objects = self.objects.lock().unwrap();
            let under = objects.iter().filter(|(p, _)| p.starts_with(prefix));
            Ok(under.map(|(p, b)| ObjectInfo { path: p.clone(), size: b.len() as u64, modified: 0 }).collect())
        }
        async fn delete(&self, path: &str) -> Result<()> {
            if let Some(e) = self.next_failure() {
                return Err(e);
            }
            self.objects.lock().unwrap().remove(path).map(|_| ()).ok_or(StorageError::NotFound { path: path.into() })
        }
    }

    fn retrying(inner: Arc<Flaky>) -> RetryingStorage {
        RetryingStorage::new(inner, POSIX_RETRY, CancellationToken::new())
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_and_counted() {
        let inner = Flaky::failing(vec![eio("a"), eio("a")]);
        let storage = retrying(inner.clone());
        storage.put("a", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::Relaxed), 3);
        assert_eq!(storage.retries(), 2);
        assert_eq!(storage.get("a").await.unwrap(), Bytes::from_static(b"x"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_final_error_says_how_many_attempts_were_made_and_stays_transient() {
        let storage = retrying(Flaky::failing(vec![eio("a"), eio("a"), eio("a"), eio("a")]));
        let err = storage.get("a").await.unwrap_err();
        assert!(!err.is_permanent());
        assert!(err.to_string().ends_with("EIO (3 attempts in 0.6 s)"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_reported_at_once_unchanged() {
        let inner = Flaky::failing(vec![StorageError::PermissionDenied { path: "a".into() }]);
        let storage = retrying(inner.clone());
        let err = storage.get("a").await.unwrap_err();
        assert_eq!(err.to_string(), "a: permission denied");
        assert_eq!(inner.calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_put_new_whose_first_attempt_stored_the_object_succeeds_on_the_retry() {
        let inner = Flaky::failing(vec![]);
        *inner.store_then_fail.lock().unwrap() = true;
        let storage = retrying(inner.clone());
        storage.put_new("wal", Bytes::from_static(b"segment")).await.unwrap();
        assert_eq!(storage.retries(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_put_new_of_a_name_taken_by_other_bytes_still_fails_as_taken() {
        let inner = Flaky::failing(vec![]);
        inner.objects.lock().unwrap().insert("wal".into(), Bytes::from_static(b"other"));
        let storage = retrying(inner.clone());
        // First attempt: taken, which is permanent; no retry hides it.
        assert!(matches!(storage.put_new("wal", Bytes::from_static(b"mine")).await, Err(StorageError::AlreadyExists { .. })));
        // A transient failure first, then taken by other bytes: still taken.
        inner.failures.lock().unwrap().push(eio("wal"));
        assert!(matches!(storage.put_new("wal", Bytes::from_static(b"mine")).await, Err(StorageError::AlreadyExists { .. })));
        assert_eq!(inner.objects.lock().unwrap()["wal"], Bytes::from_static(b"other"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delete_retried_after_it_took_effect_succeeds() {
        let inner = Flaky::failing(vec![]);
        inner.objects.lock().unwrap().insert("x".into(), Bytes::new());
        let storage = retrying(inner.clone());
        // The object goes; the error comes after, as an fsync of the directory would.
        inner.objects.lock().unwrap().remove("x");
        inner.failures.lock().unwrap().push(eio("x"));
        storage.delete("x").await.unwrap();
        // With nothing there from the start, a delete is still an error.
        assert!(storage.delete("x").await.unwrap_err().is_not_found());
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_the_retries() {
        let cancel = CancellationToken::new();
        let policy = RetryPolicy { attempts: 10, first_pause: Duration::from_secs(60), ..POSIX_RETRY };
        let storage = RetryingStorage::new(Flaky::failing((0..10).map(|_| eio("a")).collect()), policy, cancel.clone());
        cancel.cancel();
        let err = storage.get("a").await.unwrap_err();
        assert!(err.to_string().contains("cancelled after 1 attempt"), "{err}");
    }
}
