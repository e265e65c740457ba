//! [`MeteredStorage`]: counts a repository's requests, failures, bytes and retries, for metrics.
//!
//! # Why a decorator
//! Metrics about a repository (how many requests failed, how many were retried) used to need the concrete
//! backend type next to the trait object, so only S3 had them and each service wired them by hand. The
//! count now sits in the storage stack that opens every repository: any backend, any service, read through
//! [`Storage::stats`] on the trait object.

use super::{Capacity, Features, ObjectInfo, Result, Storage, Written};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The kinds of request a repository is asked for, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    List,
    Delete,
    /// `size`, `check_writable` and `capacity`.
    Probe,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Put, Op::Get, Op::List, Op::Delete, Op::Probe];

    pub fn label(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Probe => "probe",
        }
    }
}

#[derive(Default)]
struct Counts {
    requests: [AtomicU64; Op::ALL.len()],
    failures: [AtomicU64; Op::ALL.len()],
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
}

/// A live view of one repository's counts (cheap to clone).
#[derive(Clone)]
pub struct StorageStats {
    counts: Arc<Counts>,
    /// The layers below the meter, which count their own retries.
    below: Arc<dyn Storage>,
}

impl StorageStats {
    /// Requests of kind `op` made so far, failed ones included.
    pub fn requests(&self, op: Op) -> u64 {
        self.counts.requests[op as usize].load(Ordering::Relaxed)
    }
    /// Requests of kind `op` that failed (after every retry).
    pub fn failures(&self, op: Op) -> u64 {
        self.counts.failures[op as usize].load(Ordering::Relaxed)
    }
    pub fn bytes_written(&self) -> u64 {
        self.counts.bytes_written.load(Ordering::Relaxed)
    }
    pub fn bytes_read(&self) -> u64 {
        self.counts.bytes_read.load(Ordering::Relaxed)
    }
    /// Attempts repeated below the meter (a request retried twice counts 2).
    pub fn retries(&self) -> u64 {
        self.below.retries()
    }
}

/// Counts what passes through to the inner storage; see the module docs.
pub struct MeteredStorage {
    inner: Arc<dyn Storage>,
    stats: StorageStats,
}

impl MeteredStorage {
    pub fn new(inner: Arc<dyn Storage>) -> MeteredStorage {
        let stats = StorageStats { counts: Arc::default(), below: inner.clone() };
        MeteredStorage { inner, stats }
    }

    fn count<T>(&self, op: Op, result: Result<T>) -> Result<T> {
        self.stats.counts.requests[op as usize].fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.stats.counts.failures[op as usize].fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn read(&self, result: Result<Bytes>) -> Result<Bytes> {
        if let Ok(bytes) = &result {
            self.stats.counts.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        self.count(Op::Get, result)
    }

    fn written<T>(&self, len: usize, result: Result<T>) -> Result<T> {
        if result.is_ok() {
            self.stats.counts.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
        }
        self.count(Op::Put, result)
    }
}

#[async_trait]
impl Storage for MeteredStorage {
    fn retries(&self) -> u64 {
        self.inner.retries()
    }
    fn stats(&self) -> Option<StorageStats> {
        Some(self.stats.clone())
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
    async fn check_writable(&self) -> Result<()> {
        let r = self.inner.check_writable().await;
        self.count(Op::Probe, r)
    }
    async fn put(&self, path: &str, data: Bytes) -> Result<()> {
        let len = data.len();
        let r = self.inner.put(path, data).await;
        self.written(len, r)
    }
    async fn put_new(&self, path: &str, data: Bytes) -> Result<()> {
        let len = data.len();
        let r = self.inner.put_new(path, data).await;
        self.written(len, r)
    }
    async fn put_verified(&self, path: &str, data: Bytes, if_absent: bool) -> Result<Written> {
        let len = data.len();
        let r = self.inner.put_verified(path, data, if_absent).await;
        self.written(len, r)
    }
    async fn get(&self, path: &str) -> Result<Bytes> {
        let r = self.inner.get(path).await;
        self.read(r)
    }
    async fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes> {
        let r = self.inner.get_range(path, offset, len).await;
        self.read(r)
    }
    async fn size(&self, path: &str) -> Result<Option<u64>> {
        let r = self.inner.size(path).await;
        self.count(Op::Probe, r)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let r = self.inner.list(prefix).await;
        self.count(Op::List, r)
    }
    async fn delete(&self, path: &str) -> Result<()> {
        let r = self.inner.delete(path).await;
        self.count(Op::Delete, r)
    }
    async fn list_temporary(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let r = self.inner.list_temporary(prefix).await;
        self.count(Op::List, r)
    }
    async fn capacity(&self) -> Result<Option<Capacity>> {
        let r = self.inner.capacity().await;
        self.count(Op::Probe, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PosixStorage;

    #[tokio::test]
    async fn requests_failures_and_bytes_are_counted_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MeteredStorage::new(Arc::new(PosixStorage::open(dir.path()).unwrap()));
        let stats = storage.stats().unwrap();
        storage.put("a/b", Bytes::from_static(b"12345")).await.unwrap();
        assert!(storage.put_new("a/b", Bytes::from_static(b"1")).await.is_err());
        assert_eq!(storage.get("a/b").await.unwrap().len(), 5);
        assert!(storage.get("a/missing").await.is_err());
        storage.list("a").await.unwrap();
        assert_eq!((stats.requests(Op::Put), stats.failures(Op::Put)), (2, 1));
        assert_eq!((stats.requests(Op::Get), stats.failures(Op::Get)), (2, 1));
        assert_eq!((stats.requests(Op::List), stats.requests(Op::Delete)), (1, 0));
        assert_eq!((stats.bytes_written(), stats.bytes_read()), (5, 5));
        assert_eq!(stats.retries(), 0);
    }
}
