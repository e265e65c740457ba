//! PostgreSQL knowledge for Strata, and nothing else.
//!
//! This crate owns the facts about PostgreSQL 15's on-disk formats that the rest of Strata must agree on: log
//! sequence numbers ([`Lsn`]), WAL segment and archive file names ([`wal`]), the data page header and its checksum
//! ([`page`]), the head of `pg_control` ([`control`]), which files of a data directory a base backup copies ([`datadir`]), and how version numbers are
//! spelled ([`version`]). Other crates ask these questions here instead of carrying their own copy of a PostgreSQL
//! header, the way neon keeps `postgres_ffi` as the one place that knows WAL layout.
//!
//! What it must not know: how files are read, how the server is reached, or how Strata stores anything. Every
//! function takes bytes, names or paths that the caller already has, and performs no I/O, so it can be tested
//! without a server and used from any runtime.
//!
//! Byte order: PostgreSQL writes its files in the server's native byte order. Strata supports little-endian
//! servers (x86-64, AArch64), so every multi-byte field is read as little-endian whatever the host.

pub mod backup_history;
pub mod control;
pub mod datadir;
pub mod lsn;
pub mod page;
pub mod version;
pub mod timeline;
pub mod wal;
pub mod walscan;

#[cfg(test)]
mod fuzz_tests;

pub use lsn::{Lsn, LsnParseError};
pub use wal::WalSegment;

/// A timeline id, as in PostgreSQL's `TimeLineID`. A cluster starts on timeline 1; each promotion starts a new one.
pub type TimelineId = u32;

/// Size of a data page (`BLCKSZ`). Strata supports only the default build, as do the packaged servers.
pub const PAGE_SIZE: usize = 8192;

/// Blocks per relation segment file (`RELSEG_SIZE`): a relation is split into 1 GiB files `N`, `N.1`, `N.2`, ...
/// The block number mixed into a page checksum counts from the start of the relation, not of the segment file.
pub const RELSEG_BLOCKS: u32 = 131072;

/// WAL segment size chosen by `initdb` unless `--wal-segsize` says otherwise.
pub const DEFAULT_WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// Size of a WAL page (`XLOG_BLCKSZ`) in the default build.
pub const WAL_PAGE_SIZE: usize = 8192;
