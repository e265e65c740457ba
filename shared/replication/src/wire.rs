//! Bytes from the server into backend messages, and the replication payloads inside CopyData; no I/O.
//!
//! Everything here is a pure function of a byte buffer, so the fuzz tests (`fuzz_tests.rs`) can feed it random
//! and damaged input: each decoder returns a value or a [`ReplicationError::Protocol`], never panics, and never
//! buffers a message larger than [`MAX_MESSAGE_LEN`] (its length is checked from the 5-byte header, before the
//! body is waited for).
//!
//! Frontend messages are framed by `postgres_protocol::message::frontend`; the one this crate builds itself is
//! the standby status update, which that crate does not know.

use bytes::{Buf, Bytes, BytesMut};
use strata_pg::Lsn;

use crate::error::{ReplicationError, ServerMessage};

/// The largest backend message accepted: a walsender's CopyData carries at most 128 kB of WAL
/// (`MAX_SEND_SIZE`), a timeline history file a few kB; anything near this bound is a broken or hostile peer,
/// refused before it is buffered.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), for the status update's clock field.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// An authentication request ('R').
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthRequest {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    /// Kerberos, GSS, SSPI...: the request code.
    Unsupported(i32),
}

/// One message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BackendMessage {
    Authentication(AuthRequest),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData,
    ReadyForQuery,
    RowDescription {
        columns: Vec<String>,
    },
    DataRow {
        values: Vec<Option<Bytes>>,
    },
    CommandComplete {
        tag: String,
    },
    EmptyQueryResponse,
    ErrorResponse(ServerMessage),
    NoticeResponse(ServerMessage),
    CopyBothResponse,
    CopyOutResponse,
    CopyInResponse,
    CopyData(Bytes),
    CopyDone,
    NotificationResponse,
    NegotiateProtocolVersion,
    /// A tag this client does not know.
    Other(u8),
}

/// The replication message inside a CopyData of a physical stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CopyPayload {
    /// 'w': WAL starting at `start`; `server_end` is the server's end of WAL when it sent this.
    XLogData {
        start: Lsn,
        server_end: Lsn,
        data: Bytes,
    },
    /// 'k': primary keepalive.
    Keepalive {
        server_end: Lsn,
        reply_requested: bool,
    },
}

fn short(what: &str) -> ReplicationError {
    ReplicationError::protocol(format!("{what} is truncated"))
}

/// A cursor over one message's body whose every read checks what is left.
struct Body {
    bytes: Bytes,
    what: &'static str,
}

impl Body {
    fn u8(&mut self) -> Result<u8, ReplicationError> {
        if self.bytes.remaining() < 1 {
            return Err(short(self.what));
        }
        Ok(self.bytes.get_u8())
    }
    fn i16(&mut self) -> Result<i16, ReplicationError> {
        if self.bytes.remaining() < 2 {
            return Err(short(self.what));
        }
        Ok(self.bytes.get_i16())
    }
    fn i32(&mut self) -> Result<i32, ReplicationError> {
        if self.bytes.remaining() < 4 {
            return Err(short(self.what));
        }
        Ok(self.bytes.get_i32())
    }
    fn u64(&mut self) -> Result<u64, ReplicationError> {
        if self.bytes.remaining() < 8 {
            return Err(short(self.what));
        }
        Ok(self.bytes.get_u64())
    }
    fn take(&mut self, n: usize) -> Result<Bytes, ReplicationError> {
        if self.bytes.remaining() < n {
            return Err(short(self.what));
        }
        Ok(self.bytes.split_to(n))
    }
    /// A NUL-terminated string (lossily UTF-8: error texts come in the server's encoding).
    fn cstr(&mut self) -> Result<String, ReplicationError> {
        let nul = self.bytes.iter().position(|&b| b == 0).ok_or_else(|| {
            ReplicationError::protocol(format!(
                "{} has a string without its terminating NUL",
                self.what
            ))
        })?;
        let s = String::from_utf8_lossy(&self.bytes[..nul]).into_owned();
        self.bytes.advance(nul + 1);
        Ok(s)
    }
    fn rest(self) -> Bytes {
        self.bytes
    }
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Takes the first complete message off `buf`: `Ok(None)` when `buf` holds only part of one (read more and
/// call again). A message whose header declares a length under 4 or over [`MAX_MESSAGE_LEN`] is an error
/// at once.
pub(crate) fn decode_message(
    buf: &mut BytesMut,
) -> Result<Option<BackendMessage>, ReplicationError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ReplicationError::protocol(format!(
            "message {:?} declares length {len}",
            tag as char
        )));
    }
    let len = len as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(ReplicationError::protocol(format!(
            "message {:?} of {len} bytes is over the {MAX_MESSAGE_LEN}-byte bound",
            tag as char
        )));
    }
    if buf.len() < 1 + len {
        // Room for the rest, so that the reads that follow fill one buffer.
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(1 + len);
    frame.advance(5);
    parse_body(tag, frame.freeze()).map(Some)
}

/// Parses the body of a message with tag `tag`.
pub(crate) fn parse_body(tag: u8, bytes: Bytes) -> Result<BackendMessage, ReplicationError> {
    let what = match tag {
        b'R' => "Authentication",
        b'S' => "ParameterStatus",
        b'T' => "RowDescription",
        b'D' => "DataRow",
        b'C' => "CommandComplete",
        b'E' => "ErrorResponse",
        b'N' => "NoticeResponse",
        _ => "message",
    };
    let mut body = Body { bytes, what };
    let message = match tag {
        b'R' => BackendMessage::Authentication(match body.i32()? {
            0 => AuthRequest::Ok,
            3 => AuthRequest::CleartextPassword,
            5 => {
                let salt = body.take(4)?;
                AuthRequest::Md5Password {
                    salt: [salt[0], salt[1], salt[2], salt[3]],
                }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = body.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                AuthRequest::Sasl { mechanisms }
            }
            11 => AuthRequest::SaslContinue(body.rest()),
            12 => AuthRequest::SaslFinal(body.rest()),
            other => AuthRequest::Unsupported(other),
        }),
        b'S' => BackendMessage::ParameterStatus {
            name: body.cstr()?,
            value: body.cstr()?,
        },
        b'K' => BackendMessage::BackendKeyData,
        b'Z' => BackendMessage::ReadyForQuery,
        b'T' => {
            let count = body.i16()?;
            if count < 0 {
                return Err(ReplicationError::protocol(format!(
                    "RowDescription with {count} columns"
                )));
            }
            let mut columns = Vec::with_capacity(count as usize);
            for _ in 0..count {
                columns.push(body.cstr()?);
                // table oid, column number, type oid, type length, type modifier, format
                body.take(18)?;
            }
            BackendMessage::RowDescription { columns }
        }
        b'D' => {
            let count = body.i16()?;
            if count < 0 {
                return Err(ReplicationError::protocol(format!(
                    "DataRow with {count} values"
                )));
            }
            let mut values = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let len = body.i32()?;
                values.push(match len {
                    -1 => None,
                    n if n < 0 => {
                        return Err(ReplicationError::protocol(format!(
                            "DataRow value of length {n}"
                        )))
                    }
                    n => Some(body.take(n as usize)?),
                });
            }
            BackendMessage::DataRow { values }
        }
        b'C' => BackendMessage::CommandComplete { tag: body.cstr()? },
        b'I' => BackendMessage::EmptyQueryResponse,
        b'E' => BackendMessage::ErrorResponse(server_message(&mut body)?),
        b'N' => BackendMessage::NoticeResponse(server_message(&mut body)?),
        b'W' => BackendMessage::CopyBothResponse,
        b'H' => BackendMessage::CopyOutResponse,
        b'G' => BackendMessage::CopyInResponse,
        b'd' => BackendMessage::CopyData(body.rest()),
        b'c' => BackendMessage::CopyDone,
        b'A' => BackendMessage::NotificationResponse,
        b'v' => BackendMessage::NegotiateProtocolVersion,
        other => BackendMessage::Other(other),
    };
    Ok(message)
}

/// The fields of an ErrorResponse or NoticeResponse: (code byte, string) pairs ending with a zero byte.
fn server_message(body: &mut Body) -> Result<ServerMessage, ReplicationError> {
    let mut m = ServerMessage::default();
    let mut localized_severity = String::new();
    loop {
        let field = body.u8()?;
        if field == 0 {
            break;
        }
        let value = body.cstr()?;
        match field {
            b'S' => localized_severity = value,
            b'V' => m.severity = value,
            b'C' => m.code = value,
            b'M' => m.message = value,
            b'D' => m.detail = Some(value),
            b'H' => m.hint = Some(value),
            _ => {}
        }
    }
    if m.severity.is_empty() {
        m.severity = localized_severity;
    }
    if m.code.is_empty() {
        // Every server since 7.4 sends a code; XX000 is internal_error.
        m.code = "XX000".to_string();
    }
    Ok(m)
}

/// Parses the replication message inside a CopyData of a physical stream.
pub(crate) fn parse_copy_payload(payload: Bytes) -> Result<CopyPayload, ReplicationError> {
    let mut body = Body {
        bytes: payload,
        what: "replication message",
    };
    match body.u8()? {
        b'w' => {
            let start = Lsn(body.u64()?);
            let server_end = Lsn(body.u64()?);
            let _send_time = body.u64()?;
            let data = body.rest();
            if start.checked_add(data.len() as u64).is_none() {
                return Err(ReplicationError::protocol(format!(
                    "XLogData of {} bytes at {start} runs past the end of the WAL address space",
                    data.len()
                )));
            }
            Ok(CopyPayload::XLogData {
                start,
                server_end,
                data,
            })
        }
        b'k' => {
            let server_end = Lsn(body.u64()?);
            let _send_time = body.u64()?;
            let reply_requested = match body.u8()? {
                0 => false,
                1 => true,
                other => {
                    return Err(ReplicationError::protocol(format!(
                        "keepalive with reply flag {other}"
                    )));
                }
            };
            if !body.is_empty() {
                return Err(ReplicationError::protocol("keepalive longer than 18 bytes"));
            }
            Ok(CopyPayload::Keepalive {
                server_end,
                reply_requested,
            })
        }
        other => Err(ReplicationError::protocol(format!(
            "unknown replication message {:?} in a physical stream",
            other as char
        ))),
    }
}

/// A CopyData message holding a standby status update ('r').
pub(crate) fn standby_status_update(
    written: Lsn,
    flushed: Lsn,
    applied: Lsn,
    reply_requested: bool,
    unix_micros: i64,
    out: &mut BytesMut,
) {
    use bytes::BufMut;
    let body_len: i32 = 1 + 8 * 4 + 1;
    out.put_u8(b'd');
    out.put_i32(4 + body_len);
    out.put_u8(b'r');
    out.put_u64(written.0);
    out.put_u64(flushed.0);
    out.put_u64(applied.0);
    out.put_i64(unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS));
    out.put_u8(reply_requested as u8);
}

/// The server version number of a `server_version` text: `15.4 (Debian 15.4-1.pgdg120+1)` is 150004,
/// `16beta1` 160000, `9.6.3` 90603.
pub(crate) fn parse_server_version(text: &str) -> Option<u32> {
    let numeric: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = numeric
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let second = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        major.checked_mul(10_000)?.checked_add(second.min(9_999))
    } else {
        let third = parts.next().flatten().unwrap_or(0);
        Some(major * 10_000 + second.min(99) * 100 + third.min(99))
    }
}

#[cfg(test)]
pub(crate) mod tests;
