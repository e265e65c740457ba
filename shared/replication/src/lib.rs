//! A minimal client of PostgreSQL's physical streaming replication protocol: what pg_receivewal speaks.
//!
//! # Why a crate of its own
//! tokio-postgres cannot open a replication connection (`replication=true`) nor speak CopyBoth, which WAL
//! streaming needs. This crate opens the socket itself, and borrows from `postgres-protocol` (the crate under
//! tokio-postgres) only the frontend message framing and the MD5 and SCRAM-SHA-256 computations.
//!
//! # What it does
//! - [`ReplicationClient::connect`]: a libpq connection string (unix socket or TCP, no TLS), startup with
//!   `replication=true`, authentication (trust, password, md5, scram-sha-256), within a connect timeout.
//! - The walsender's commands: IDENTIFY_SYSTEM, SHOW, CREATE_REPLICATION_SLOT (physical), READ_REPLICATION_SLOT,
//!   TIMELINE_HISTORY, START_REPLICATION (physical), each a simple query. Names are checked, never quoted
//!   ([`check_identifier`]).
//! - [`WalStream`]: WAL and keepalives as [`StreamEvent`]s, standby status updates, the end of a timeline, and
//!   the way back to a command connection.
//!
//! What it does not do: decide where WAL goes, when to report it flushed, or when to reconnect. The caller
//! does, guided by [`ReplicationError::is_permanent`].
//!
//! # Hostile input
//! The server's bytes are decoded by pure functions (`wire`, `response`, the stream's state machine) that
//! refuse a message over [`MAX_MESSAGE_LEN`] from its header and return an error, never panic, on anything
//! malformed; `fuzz_tests.rs` feeds them random and damaged input.

mod client;
mod conninfo;
mod error;
mod response;
mod stream;
mod wire;

#[cfg(test)]
mod fuzz_tests;

use bytes::Bytes;
use strata_pg::{Lsn, TimelineId};

pub use client::{check_identifier, ReplicationClient, DEFAULT_APPLICATION_NAME};
pub use conninfo::DEFAULT_CONNECT_TIMEOUT;
pub use error::{ReplicationError, ServerMessage};
pub use stream::{WalStream, FINISH_TIMEOUT};
pub use wire::MAX_MESSAGE_LEN;

/// What IDENTIFY_SYSTEM reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (as in `pg_control_system()`).
    pub system_id: u64,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The server's current WAL flush position.
    pub xlogpos: Lsn,
}

/// What READ_REPLICATION_SLOT reports of an existing physical slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    /// The oldest WAL the slot keeps; `None` for a slot that has reserved none yet.
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`.
    pub restart_tli: Option<TimelineId>,
}

/// One step of a WAL stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// WAL bytes starting at `start`; `server_end` is the server's current end of WAL.
    Data {
        start: Lsn,
        server_end: Lsn,
        data: Bytes,
    },
    /// Primary keepalive; `reply_requested` means send a status update now.
    Keepalive {
        server_end: Lsn,
        reply_requested: bool,
    },
    /// The server ended streaming of this timeline (CopyDone then a result set naming the next
    /// timeline and its start position, when there is one).
    EndOfTimeline {
        next_timeline: Option<TimelineId>,
        next_start: Option<Lsn>,
    },
}
