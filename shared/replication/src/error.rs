//! What can go wrong on a replication connection, and whether trying again can help.
//!
//! [`ReplicationError::is_permanent`] is the retry decision (STYLE.md habit 4): a WAL receiver reconnects with
//! backoff after a transient error (the server restarted, the network dropped, too many connections) and stops
//! and alerts on a permanent one (wrong password, no pg_hba.conf entry, a bad connection string, WAL that the
//! server has already removed), which no retry can fix.

use std::io;
use std::time::Duration;

/// A field of a server's ErrorResponse or NoticeResponse, as PostgreSQL sends it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerMessage {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`... (the non-localized `V` field when present).
    pub severity: String,
    /// The SQLSTATE, five characters (`28P01` for a wrong password).
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The optional `DETAIL`.
    pub detail: Option<String>,
    /// The optional `HINT`.
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (DETAIL: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (HINT: {hint})")?;
        }
        Ok(())
    }
}

/// An error of [`crate::ReplicationClient`] or [`crate::WalStream`].
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The connection string is not usable: unparsable, no host or user, or `sslmode=require`.
    #[error("invalid replication connection string: {0}")]
    Config(String),

    /// No socket could be opened to any host of the connection string.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The socket path or `host:port` tried last.
        target: String,
        source: io::Error,
    },

    /// The connection (socket, startup and authentication), or an operation bounded in time, took too long.
    #[error("timed out after {}s while {what}", after.as_secs())]
    Timeout { what: &'static str, after: Duration },

    /// The server asked for a password and the connection string has none.
    #[error("the server asks for a password ({method}) and the connection string gives none (HINT: add password=...)")]
    PasswordRequired { method: &'static str },

    /// The server asked for an authentication method this client does not implement.
    #[error("unsupported authentication method {0} (HINT: use trust, password, md5 or scram-sha-256 in pg_hba.conf)")]
    UnsupportedAuth(String),

    /// SCRAM failed on the client side: a malformed server message, or a server signature that does not match
    /// (the server does not know the password, or someone is in the middle).
    #[error("SCRAM-SHA-256 authentication failed: {0}")]
    Scram(String),

    /// The server sent an ErrorResponse.
    #[error("server error {code}: {message}{}{}", detail.as_deref().map(|d| format!(" (DETAIL: {d})")).unwrap_or_default(), hint.as_deref().map(|h| format!(" (HINT: {h})")).unwrap_or_default())]
    Server {
        /// `ERROR` or `FATAL` (a FATAL error also ends the connection).
        severity: String,
        /// The SQLSTATE.
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },

    /// A name (slot, setting) that cannot go into a replication command as is.
    #[error("invalid {what} {name:?}: {why}")]
    InvalidIdentifier {
        what: &'static str,
        name: String,
        why: &'static str,
    },

    /// The server sent bytes that are not the protocol, or a message this state does not expect.
    #[error("replication protocol error: {0}")]
    Protocol(String),

    /// The server closed the connection.
    #[error("the server closed the replication connection")]
    ConnectionClosed,

    /// Reading or writing the socket failed.
    #[error("replication connection i/o error: {0}")]
    Io(#[from] io::Error),
}

/// SQLSTATE classes and codes that no retry fixes: the request itself is wrong, or the server refuses this
/// client for good.
const PERMANENT_SQLSTATE_CLASSES: &[&str] = &[
    "28", // invalid authorization: wrong password, no pg_hba.conf entry, role may not replicate
    "42", // syntax error or access rule violation: a bad command, a missing slot (42704), no privilege
    "3D", // invalid catalog name: the database does not exist
    "0A", // feature not supported
    "22", // data exception: an invalid value in the command
];
/// `58P01` (undefined_file): "requested WAL segment ... has already been removed". Starting again at the same
/// position fails the same way; the caller must pick another start (or a slot should have kept the WAL).
const PERMANENT_SQLSTATES: &[&str] = &["58P01"];

impl ReplicationError {
    /// Whether retrying the same operation cannot help: authentication failures, a bad connection string or
    /// command, WAL the server no longer has. Connection loss, timeouts, server restarts, too many connections
    /// and protocol errors (a reconnect starts from a clean state) are transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            ReplicationError::Config(_)
            | ReplicationError::PasswordRequired { .. }
            | ReplicationError::UnsupportedAuth(_)
            | ReplicationError::Scram(_)
            | ReplicationError::InvalidIdentifier { .. } => true,
            ReplicationError::Server { code, .. } => {
                PERMANENT_SQLSTATES.contains(&code.as_str())
                    || PERMANENT_SQLSTATE_CLASSES
                        .iter()
                        .any(|class| code.starts_with(class))
            }
            ReplicationError::Connect { .. }
            | ReplicationError::Timeout { .. }
            | ReplicationError::Protocol(_)
            | ReplicationError::ConnectionClosed
            | ReplicationError::Io(_) => false,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn protocol(text: impl Into<String>) -> ReplicationError {
        ReplicationError::Protocol(text.into())
    }
}

impl From<ServerMessage> for ReplicationError {
    fn from(m: ServerMessage) -> Self {
        ReplicationError::Server {
            severity: m.severity,
            code: m.code,
            message: m.message,
            detail: m.detail,
            hint: m.hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> ReplicationError {
        ServerMessage {
            severity: "FATAL".into(),
            code: code.into(),
            message: "m".into(),
            ..Default::default()
        }
        .into()
    }

    #[test]
    fn auth_and_config_failures_are_permanent_connection_loss_is_not() {
        assert!(server("28P01").is_permanent());
        assert!(server("28000").is_permanent());
        assert!(server("42704").is_permanent());
        assert!(server("58P01").is_permanent());
        assert!(!server("53300").is_permanent()); // too many connections
        assert!(!server("57P01").is_permanent()); // admin shutdown
        assert!(!server("55006").is_permanent()); // slot active for another pid
        assert!(!ReplicationError::ConnectionClosed.is_permanent());
        assert!(ReplicationError::Config("x".into()).is_permanent());
        assert_eq!(server("28P01").sqlstate(), Some("28P01"));
    }

    #[test]
    fn a_server_error_shows_its_code_detail_and_hint() {
        let e: ReplicationError = ServerMessage {
            severity: "ERROR".into(),
            code: "42710".into(),
            message: "replication slot \"s\" already exists".into(),
            detail: None,
            hint: Some("h".into()),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "server error 42710: replication slot \"s\" already exists (HINT: h)"
        );
    }
}
