//! The replication connection: socket, startup, authentication, and the walsender's simple-query commands.
//!
//! # Connecting
//! [`ReplicationClient::connect`] opens the first socket of the connection string that accepts (unix socket
//! or TCP, no TLS), sends a startup message with `replication=true`, answers the server's authentication
//! request (trust, cleartext password, MD5, SCRAM-SHA-256 without channel binding) and waits for
//! ReadyForQuery, all within the connect timeout ([`crate::DEFAULT_CONNECT_TIMEOUT`] unless the string sets
//! `connect_timeout`).
//!
//! # Commands
//! Each command is one simple query; names that go into one (slot names, setting names) are checked by
//! [`check_identifier`] first, never quoted or escaped. A server error leaves the connection usable (the
//! walsender sends ReadyForQuery after it), so `create_physical_slot` can turn "already exists" into
//! `Ok(false)`.
//!
//! # Cancel safety
//! The commands are not cancel safe: a command future dropped halfway leaves its response unread, and the
//! connection must be dropped. They have no timeout of their own; a caller that needs one wraps them.

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use strata_pg::{Lsn, TimelineId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::conninfo::{ConnectTarget, SocketTarget};
use crate::error::ReplicationError;
use crate::response::{self, log_notice, QueryCollector, QueryResult};
use crate::stream::WalStream;
use crate::wire::{decode_message, parse_server_version, AuthRequest, BackendMessage};
use crate::{SlotInfo, SystemIdentity};

/// The `application_name` when neither the caller nor the connection string gives one.
pub const DEFAULT_APPLICATION_NAME: &str = "strata";

/// Longest name a command accepts (PostgreSQL's `NAMEDATALEN - 1`).
const MAX_IDENTIFIER_LEN: usize = 63;

/// Checks a name before it goes into a replication command: 1 to 63 characters of `[a-z0-9_]` (and `.` when
/// `dots` is set, for setting names such as `pg_stat_statements.max`). Such a name needs no quoting and
/// cannot end the command or start another.
pub fn check_identifier(
    what: &'static str,
    name: &str,
    dots: bool,
) -> Result<(), ReplicationError> {
    let bad = |why| {
        Err(ReplicationError::InvalidIdentifier {
            what,
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return bad("it is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || (dots && b == b'.'))
    {
        return bad(if dots {
            "only lower-case letters, digits, '_' and '.' are allowed"
        } else {
            "only lower-case letters, digits and '_' are allowed"
        });
    }
    Ok(())
}

pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// A socket with its read buffer, speaking in whole backend messages.
pub(crate) struct Connection {
    socket: Box<dyn Socket>,
    read_buf: BytesMut,
    pub(crate) write_buf: BytesMut,
    /// Set while a write is under way: if its future is dropped there, part of a message may have gone out
    /// and the connection can no longer be used.
    write_interrupted: bool,
}

/// How much room a read asks for at least.
const READ_CHUNK: usize = 64 * 1024;

impl Connection {
    fn new(socket: Box<dyn Socket>) -> Connection {
        Connection {
            socket,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
            write_interrupted: false,
        }
    }

    /// The next message. Cancel safe: bytes read stay in the buffer for the next call.
    pub(crate) async fn read_message(&mut self) -> Result<BackendMessage, ReplicationError> {
        loop {
            if let Some(message) = decode_message(&mut self.read_buf)? {
                return Ok(message);
            }
            if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
                self.read_buf.reserve(READ_CHUNK);
            }
            if self.socket.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ReplicationError::ConnectionClosed);
            }
        }
    }

    /// Sends what is in `write_buf`.
    pub(crate) async fn flush(&mut self) -> Result<(), ReplicationError> {
        if self.write_interrupted {
            return Err(ReplicationError::protocol(
                "an earlier write was cancelled halfway; the connection must be dropped",
            ));
        }
        self.write_interrupted = true;
        let buf = self.write_buf.split();
        self.socket.write_all(&buf).await?;
        self.socket.flush().await?;
        self.write_interrupted = false;
        Ok(())
    }
}

/// One replication connection (a walsender on the server). See the module docs.
pub struct ReplicationClient {
    pub(crate) conn: Connection,
    server_version_num: Option<u32>,
    target: String,
}

impl fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("target", &self.target)
            .field("server_version_num", &self.server_version_num)
            .finish_non_exhaustive()
    }
}

async fn open_socket(target: &SocketTarget) -> std::io::Result<Box<dyn Socket>> {
    Ok(match target {
        SocketTarget::Unix(path) => Box::new(UnixStream::connect(path).await?),
        SocketTarget::Tcp { host, port } => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            // Status updates are small and must not wait for more to send.
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
    })
}

impl ReplicationClient {
    /// Connects and authenticates; see the module docs. `application_name` is what `pg_stat_replication`
    /// shows; when empty, the connection string's `application_name` or [`DEFAULT_APPLICATION_NAME`].
    pub async fn connect(conninfo: &str, application_name: &str) -> Result<Self, ReplicationError> {
        let target = ConnectTarget::parse(conninfo)?;
        let after = target.connect_timeout;
        tokio::time::timeout(after, Self::connect_within(&target, application_name))
            .await
            .map_err(|_| ReplicationError::Timeout {
                what: "connecting and authenticating",
                after,
            })?
    }

    async fn connect_within(
        target: &ConnectTarget,
        application_name: &str,
    ) -> Result<Self, ReplicationError> {
        let mut last_error = None;
        let mut opened = None;
        for socket in &target.sockets {
            match open_socket(socket).await {
                Ok(s) => {
                    opened = Some((s, socket.to_string()));
                    break;
                }
                Err(e) => {
                    last_error = Some(ReplicationError::Connect {
                        target: socket.to_string(),
                        source: e,
                    })
                }
            }
        }
        let Some((socket, shown)) = opened else {
            return Err(last_error.unwrap_or_else(|| ReplicationError::Config("no host".into())));
        };
        let mut conn = Connection::new(socket);

        let application_name = if !application_name.is_empty() {
            application_name
        } else {
            target
                .application_name
                .as_deref()
                .unwrap_or(DEFAULT_APPLICATION_NAME)
        };
        let mut params: Vec<(&str, &str)> = vec![
            ("user", target.user.as_str()),
            ("application_name", application_name),
            ("replication", "true"),
            ("client_encoding", "UTF8"),
        ];
        if let Some(db) = &target.dbname {
            params.push(("database", db.as_str()));
        }
        if let Some(options) = &target.options {
            params.push(("options", options.as_str()));
        }
        frontend::startup_message(params.iter().copied(), &mut conn.write_buf)?;
        conn.flush().await?;

        let password = |method: &'static str| {
            target
                .password
                .as_deref()
                .ok_or(ReplicationError::PasswordRequired { method })
        };
        let mut scram: Option<ScramSha256> = None;
        let mut server_version = None;
        loop {
            match conn.read_message().await? {
                BackendMessage::Authentication(request) => match request {
                    AuthRequest::Ok => {
                        if scram.is_some() {
                            // SCRAM is mutual: without SASLFinal the server never proved it knows the password.
                            return Err(ReplicationError::Scram(
                                "the server skipped its final SCRAM message".into(),
                            ));
                        }
                    }
                    AuthRequest::CleartextPassword => {
                        frontend::password_message(password("password")?, &mut conn.write_buf)?;
                        conn.flush().await?;
                    }
                    AuthRequest::Md5Password { salt } => {
                        let hash = postgres_protocol::authentication::md5_hash(
                            target.user.as_bytes(),
                            password("md5")?,
                            salt,
                        );
                        frontend::password_message(hash.as_bytes(), &mut conn.write_buf)?;
                        conn.flush().await?;
                    }
                    AuthRequest::Sasl { mechanisms } => {
                        if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                            // SCRAM-SHA-256-PLUS alone would need TLS channel binding.
                            return Err(ReplicationError::UnsupportedAuth(format!(
                                "SASL {}",
                                mechanisms.join(", ")
                            )));
                        }
                        let s = ScramSha256::new(
                            password("scram-sha-256")?,
                            ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(
                            SCRAM_SHA_256,
                            s.message(),
                            &mut conn.write_buf,
                        )?;
                        conn.flush().await?;
                        scram = Some(s);
                    }
                    AuthRequest::SaslContinue(data) => {
                        let s = scram.as_mut().ok_or_else(|| {
                            ReplicationError::protocol("SASL continue without SASL")
                        })?;
                        s.update(&data)
                            .map_err(|e| ReplicationError::Scram(e.to_string()))?;
                        frontend::sasl_response(s.message(), &mut conn.write_buf)?;
                        conn.flush().await?;
                    }
                    AuthRequest::SaslFinal(data) => {
                        let mut s = scram
                            .take()
                            .ok_or_else(|| ReplicationError::protocol("SASL final without SASL"))?;
                        // Checks the server's signature: a server that does not know the password fails here.
                        s.finish(&data)
                            .map_err(|e| ReplicationError::Scram(e.to_string()))?;
                    }
                    AuthRequest::Unsupported(code) => {
                        return Err(ReplicationError::UnsupportedAuth(format!(
                            "request code {code}"
                        )));
                    }
                },
                BackendMessage::ParameterStatus { name, value } => {
                    if name == "server_version" {
                        server_version = parse_server_version(&value);
                    }
                }
                BackendMessage::BackendKeyData | BackendMessage::NegotiateProtocolVersion => {}
                BackendMessage::NoticeResponse(m) => log_notice(&m),
                BackendMessage::ErrorResponse(m) => return Err(m.into()),
                BackendMessage::ReadyForQuery => break,
                other => {
                    return Err(ReplicationError::protocol(format!(
                        "unexpected {other:?} during startup"
                    )));
                }
            }
        }
        let mut client = ReplicationClient {
            conn,
            server_version_num: server_version,
            target: shown,
        };
        if client.server_version_num.is_none() {
            let text = client.show("server_version_num").await?;
            client.server_version_num = text.trim().parse().ok();
        }
        Ok(client)
    }

    /// Runs one simple query and gathers its result (or the server's error).
    async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, ReplicationError> {
        frontend::query(sql, &mut self.conn.write_buf)?;
        self.conn.flush().await?;
        let mut collector = QueryCollector::default();
        loop {
            let message = self.conn.read_message().await?;
            if collector.push(message)? {
                return collector.finish();
            }
        }
    }

    /// IDENTIFY_SYSTEM: the cluster's system identifier, current timeline and WAL flush position.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        response::identify_system(&self.simple_query("IDENTIFY_SYSTEM").await?)
    }

    /// `SHOW setting` (a walsender answers it, e.g. for `wal_segment_size`): the setting's text as the server
    /// shows it (`16MB`). `setting` must pass [`check_identifier`] (with dots).
    pub async fn show(&mut self, setting: &str) -> Result<String, ReplicationError> {
        check_identifier("setting name", setting, true)?;
        response::show(&self.simple_query(&format!("SHOW {setting}")).await?)
    }

    /// `server_version_num` (150004 for 15.4), from the `server_version` the server reported at startup, or
    /// `SHOW server_version_num` when it reported none.
    pub fn server_version_num(&self) -> Option<u32> {
        self.server_version_num
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL RESERVE_WAL`: `Ok(true)` if created, `Ok(false)` if a slot of
    /// that name already exists (SQLSTATE 42710; its kind and position are not checked, see
    /// [`ReplicationClient::read_slot`]).
    pub async fn create_physical_slot(&mut self, name: &str) -> Result<bool, ReplicationError> {
        check_identifier("slot name", name, false)?;
        match self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.sqlstate() == Some("42710") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15 and later): `None` when no slot has that name.
    pub async fn read_slot(&mut self, name: &str) -> Result<Option<SlotInfo>, ReplicationError> {
        check_identifier("slot name", name, false)?;
        response::read_slot(
            &self
                .simple_query(&format!("READ_REPLICATION_SLOT {name}"))
                .await?,
        )
    }

    /// `TIMELINE_HISTORY tli`: the history file's name (`00000002.history`) and content.
    pub async fn timeline_history(
        &mut self,
        tli: TimelineId,
    ) -> Result<(String, Vec<u8>), ReplicationError> {
        response::timeline_history(
            &self
                .simple_query(&format!("TIMELINE_HISTORY {tli}"))
                .await?,
        )
    }

    /// `START_REPLICATION [SLOT name] PHYSICAL start TIMELINE timeline`, then the WAL stream. The server
    /// wants `start` at a WAL page boundary or anywhere it has the WAL for; pg_receivewal starts at the
    /// beginning of a segment.
    pub async fn start_physical(
        self,
        slot: Option<&str>,
        start: Lsn,
        timeline: TimelineId,
    ) -> Result<WalStream, ReplicationError> {
        let slot_clause = match slot {
            Some(name) => {
                check_identifier("slot name", name, false)?;
                format!("SLOT {name} ")
            }
            None => String::new(),
        };
        let command =
            format!("START_REPLICATION {slot_clause}PHYSICAL {start} TIMELINE {timeline}");
        WalStream::start(self, &command).await
    }

    /// Sends Terminate and closes the socket; errors are ignored (the server ends the walsender either way).
    pub async fn close(mut self) {
        frontend::terminate(&mut self.conn.write_buf);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.conn.flush().await;
            let _ = self.conn.socket.shutdown().await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and holds the socket, never sends a byte.
        let holder = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let conninfo = format!("host=127.0.0.1 port={port} user=u connect_timeout=1");
        let e = ReplicationClient::connect(&conninfo, "").await.unwrap_err();
        assert!(
            matches!(e, ReplicationError::Timeout { .. }) && !e.is_permanent(),
            "{e}"
        );
        holder.abort();
    }

    #[test]
    fn identifiers() {
        assert!(check_identifier("slot name", "strata_main_1", false).is_ok());
        assert!(check_identifier("setting name", "pg_stat_statements.max", true).is_ok());
        for bad in [
            "",
            "Strata",
            "a b",
            "a;DROP",
            "a'b",
            "x.y",
            "é",
            &"a".repeat(64),
        ] {
            let e = check_identifier("slot name", bad, false).unwrap_err();
            assert!(e.is_permanent(), "{e}");
        }
        assert!(check_identifier("slot name", &"a".repeat(63), false).is_ok());
    }
}
