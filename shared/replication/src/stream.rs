//! The WAL stream after START_REPLICATION: CopyBoth mode, its end, and the way back to a command connection.
//!
//! # Protocol
//! The walsender answers START_REPLICATION with CopyBothResponse, then sends CopyData messages, each holding
//! WAL (`w`) or a keepalive (`k`); the client sends standby status updates (`r`) in CopyData. When the
//! requested timeline ends on this server (it was promoted away from), the server sends CopyDone; once the
//! client answers with its own CopyDone, the server sends a one-row result set naming the next timeline and
//! where it starts, CommandComplete (twice: START_STREAMING, START_REPLICATION), and ReadyForQuery; a copy
//! the client ends on the current timeline ends the same way without the result set. When START_REPLICATION asks for a historic timeline at
//! exactly its switch point, the server skips the copy and sends that result set straight away.
//!
//! [`StreamMachine`] is that protocol as a pure state machine over decoded messages (fuzzed with the
//! decoders); [`WalStream`] adds the socket.
//!
//! # Cancel safety
//! [`WalStream::next`] is cancel safe while it waits for a message (the usual `select!` against a status
//! update timer): the bytes read so far stay buffered. A write cancelled halfway (`send_status`, or the
//! CopyDone that `next` sends at the end of a timeline) makes every later call fail, since part of a message
//! may have gone out; drop the stream and reconnect.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres_protocol::message::frontend;
use strata_pg::{Lsn, TimelineId};

use crate::client::ReplicationClient;
use crate::error::ReplicationError;
use crate::response::{end_of_timeline_row, log_notice};
use crate::wire::{parse_copy_payload, standby_status_update, BackendMessage, CopyPayload};
use crate::StreamEvent;

/// How long [`WalStream::finish`] waits for the server to end the copy and become ready for commands.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// START_REPLICATION sent, its CopyBothResponse (or immediate result set) not yet received.
    Starting,
    /// In CopyBoth mode.
    Streaming,
    /// The server sent CopyDone (or skipped the copy): the end-of-timeline result set and CommandComplete follow.
    ServerDone,
    /// CommandComplete received; ReadyForQuery follows.
    Ended,
    /// ReadyForQuery received: the connection takes commands again.
    Ready,
}

/// The stream's protocol state; see the module docs.
#[derive(Debug)]
pub(crate) struct StreamMachine {
    pub phase: Phase,
    /// The client has sent CopyDone (or there was no copy to end).
    pub client_done: bool,
    /// [`WalStream::finish`] is ending the stream: WAL still in flight is dropped, and so is the end event.
    pub stopping: bool,
    next_timeline: Option<TimelineId>,
    next_start: Option<Lsn>,
}

impl StreamMachine {
    pub fn new() -> StreamMachine {
        StreamMachine {
            phase: Phase::Starting,
            client_done: false,
            stopping: false,
            next_timeline: None,
            next_start: None,
        }
    }

    /// Whether the client owes the server a CopyDone before reading on.
    pub fn must_send_copy_done(&self) -> bool {
        !self.client_done
            && (self.phase == Phase::ServerDone
                || (self.stopping && self.phase == Phase::Streaming))
    }

    /// Takes the next message; returns the event it makes, if any.
    pub fn on_message(
        &mut self,
        message: BackendMessage,
    ) -> Result<Option<StreamEvent>, ReplicationError> {
        let unexpected = |phase: Phase, m: &BackendMessage| {
            Err(ReplicationError::protocol(format!(
                "unexpected {m:?} in the WAL stream ({phase:?})"
            )))
        };
        match (self.phase, message) {
            (_, BackendMessage::NoticeResponse(m)) => log_notice(&m),
            (_, BackendMessage::ParameterStatus { .. } | BackendMessage::NotificationResponse) => {}
            (_, BackendMessage::ErrorResponse(m)) => return Err(m.into()),
            (Phase::Starting, BackendMessage::CopyBothResponse) => self.phase = Phase::Streaming,
            (Phase::Starting, BackendMessage::RowDescription { columns }) => {
                // A historic timeline requested at its switch point: no copy, the result set right away.
                self.check_columns(columns.len())?;
                self.client_done = true;
                self.phase = Phase::ServerDone;
            }
            (Phase::Streaming, BackendMessage::CopyData(payload)) => {
                let event = match parse_copy_payload(payload)? {
                    CopyPayload::XLogData {
                        start,
                        server_end,
                        data,
                    } => StreamEvent::Data {
                        start,
                        server_end,
                        data,
                    },
                    CopyPayload::Keepalive {
                        server_end,
                        reply_requested,
                    } => StreamEvent::Keepalive {
                        server_end,
                        reply_requested,
                    },
                };
                if !self.stopping {
                    return Ok(Some(event));
                }
            }
            (Phase::Streaming, BackendMessage::CopyDone) => self.phase = Phase::ServerDone,
            (Phase::ServerDone, BackendMessage::RowDescription { columns }) => {
                self.check_columns(columns.len())?
            }
            (Phase::ServerDone, BackendMessage::DataRow { values }) => {
                (self.next_timeline, self.next_start) = end_of_timeline_row(&values)?;
            }
            (Phase::ServerDone, BackendMessage::CommandComplete { .. }) => {
                self.phase = Phase::Ended;
                if !self.stopping {
                    return Ok(Some(StreamEvent::EndOfTimeline {
                        next_timeline: self.next_timeline,
                        next_start: self.next_start,
                    }));
                }
            }
            // PostgreSQL sends CommandComplete twice, START_STREAMING then START_REPLICATION ("dupe, but
            // necessary per libpqrcv_endstreaming", walsender.c).
            (Phase::Ended, BackendMessage::CommandComplete { .. }) => {}
            (Phase::Ended, BackendMessage::ReadyForQuery) => self.phase = Phase::Ready,
            (phase, m) => return unexpected(phase, &m),
        }
        Ok(None)
    }

    fn check_columns(&self, n: usize) -> Result<(), ReplicationError> {
        if n != 2 {
            return Err(ReplicationError::protocol(format!(
                "end-of-timeline result set of {n} columns, expected 2"
            )));
        }
        Ok(())
    }
}

/// WAL from a walsender, after [`ReplicationClient::start_physical`]. See the module docs.
pub struct WalStream {
    client: ReplicationClient,
    machine: StreamMachine,
}

impl fmt::Debug for WalStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalStream")
            .field("client", &self.client)
            .field("phase", &self.machine.phase)
            .finish()
    }
}

impl WalStream {
    /// Sends `command` (a START_REPLICATION) and waits for the server to enter CopyBoth mode (or to answer
    /// with the end-of-timeline result set at once).
    pub(crate) async fn start(
        mut client: ReplicationClient,
        command: &str,
    ) -> Result<WalStream, ReplicationError> {
        frontend::query(command, &mut client.conn.write_buf)?;
        client.conn.flush().await?;
        let mut machine = StreamMachine::new();
        while machine.phase == Phase::Starting {
            let message = client.conn.read_message().await?;
            machine.on_message(message)?;
        }
        Ok(WalStream { client, machine })
    }

    /// The next WAL, keepalive or end of the timeline. After [`StreamEvent::EndOfTimeline`], call
    /// [`WalStream::finish`]; calling `next` again is an error. Cancel safe while waiting (module docs).
    pub async fn next(&mut self) -> Result<StreamEvent, ReplicationError> {
        loop {
            if matches!(self.machine.phase, Phase::Ended | Phase::Ready) {
                return Err(ReplicationError::protocol(
                    "the stream has ended; call finish() for the connection",
                ));
            }
            if self.machine.must_send_copy_done() {
                self.send_copy_done().await?;
            }
            let message = self.client.conn.read_message().await?;
            if let Some(event) = self.machine.on_message(message)? {
                return Ok(event);
            }
        }
    }

    async fn send_copy_done(&mut self) -> Result<(), ReplicationError> {
        frontend::copy_done(&mut self.client.conn.write_buf);
        self.client.conn.flush().await?;
        self.machine.client_done = true;
        Ok(())
    }

    /// Sends a standby status update: WAL written, flushed (what a slot's `restart_lsn` advances to) and
    /// applied up to these positions; `reply_requested` asks the server for a keepalive back.
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        applied: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        if self.machine.phase != Phase::Streaming || self.machine.client_done {
            return Err(ReplicationError::protocol(
                "a status update after the copy has ended",
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        standby_status_update(
            written,
            flushed,
            applied,
            reply_requested,
            now,
            &mut self.client.conn.write_buf,
        );
        self.client.conn.flush().await
    }

    /// Ends the stream (sending CopyDone unless already sent; WAL still in flight is dropped), reads up to
    /// ReadyForQuery and returns the connection for more commands. Bounded by [`FINISH_TIMEOUT`].
    pub async fn finish(mut self) -> Result<ReplicationClient, ReplicationError> {
        self.machine.stopping = true;
        tokio::time::timeout(FINISH_TIMEOUT, async {
            while self.machine.phase != Phase::Ready {
                if self.machine.must_send_copy_done() {
                    self.send_copy_done().await?;
                }
                let message = self.client.conn.read_message().await?;
                self.machine.on_message(message)?;
            }
            Ok::<(), ReplicationError>(())
        })
        .await
        .map_err(|_| ReplicationError::Timeout {
            what: "ending the WAL stream",
            after: FINISH_TIMEOUT,
        })??;
        Ok(self.client)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::{decode_message, tests as enc};
    use bytes::{Bytes, BytesMut};

    /// Runs the machine over `bytes` (messages as the server sends them), answering CopyDone when owed, as
    /// `next` and `finish` do. Returns the events and the final phase.
    pub(crate) fn run(
        bytes: &[u8],
        stop_after: Option<usize>,
    ) -> Result<(Vec<StreamEvent>, Phase), ReplicationError> {
        let mut buf = BytesMut::from(bytes);
        let mut m = StreamMachine::new();
        let mut events = Vec::new();
        while let Some(message) = decode_message(&mut buf)? {
            if m.phase == Phase::Ready {
                return Err(ReplicationError::protocol("bytes after ReadyForQuery"));
            }
            if m.must_send_copy_done() {
                m.client_done = true;
            }
            if let Some(e) = m.on_message(message)? {
                events.push(e);
                if Some(events.len()) == stop_after {
                    m.stopping = true;
                }
            }
        }
        Ok((events, m.phase))
    }

    pub(crate) fn end_of_timeline_stream() -> Vec<u8> {
        [
            enc::message(b'W', &[0, 0, 0]),
            enc::xlog_data(0x3000000, 0x3000100, b"wal bytes"),
            enc::notice("n"),
            enc::keepalive(0x3000100, true),
            enc::parameter_status("in_hot_standby", "off"),
            enc::xlog_data(0x3000009, 0x3000100, b"more"),
            enc::message(b'c', &[]),
            enc::row_description(&["next_tli", "next_tli_startpos"]),
            enc::data_row(&[Some(b"2"), Some(b"0/3000100")]),
            enc::command_complete("START_STREAMING"),
            enc::command_complete("START_REPLICATION"),
            enc::ready(),
        ]
        .concat()
    }

    #[test]
    fn wal_keepalives_and_the_end_of_a_timeline() {
        let (events, phase) = run(&end_of_timeline_stream(), None).unwrap();
        assert_eq!(
            events,
            vec![
                StreamEvent::Data {
                    start: Lsn(0x3000000),
                    server_end: Lsn(0x3000100),
                    data: Bytes::from_static(b"wal bytes")
                },
                StreamEvent::Keepalive {
                    server_end: Lsn(0x3000100),
                    reply_requested: true
                },
                StreamEvent::Data {
                    start: Lsn(0x3000009),
                    server_end: Lsn(0x3000100),
                    data: Bytes::from_static(b"more")
                },
                StreamEvent::EndOfTimeline {
                    next_timeline: Some(2),
                    next_start: Some(Lsn(0x3000100))
                },
            ]
        );
        assert_eq!(phase, Phase::Ready);
    }

    #[test]
    fn stopping_drops_wal_in_flight_and_the_end_event() {
        let (events, phase) = run(&end_of_timeline_stream(), Some(1)).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(phase, Phase::Ready);
    }

    #[test]
    fn a_historic_timeline_at_its_switch_point_ends_without_a_copy() {
        let bytes = [
            enc::row_description(&["next_tli", "next_tli_startpos"]),
            enc::data_row(&[Some(b"3"), Some(b"0/5000000")]),
            enc::command_complete("START_STREAMING"),
            enc::command_complete("START_REPLICATION"),
            enc::ready(),
        ]
        .concat();
        let (events, phase) = run(&bytes, None).unwrap();
        assert_eq!(
            events,
            vec![StreamEvent::EndOfTimeline {
                next_timeline: Some(3),
                next_start: Some(Lsn(0x5000000))
            }]
        );
        assert_eq!(phase, Phase::Ready);
    }

    #[test]
    fn an_error_ends_the_stream_and_stray_messages_are_refused() {
        let bytes = [
            enc::message(b'W', &[0, 0, 0]),
            enc::error(
                "ERROR",
                "58P01",
                "requested WAL segment has already been removed",
            ),
        ]
        .concat();
        let e = run(&bytes, None).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        let bytes = [enc::message(b'W', &[0, 0, 0]), enc::ready()].concat();
        assert!(matches!(
            run(&bytes, None),
            Err(ReplicationError::Protocol(_))
        ));
        let bytes = [enc::message(b'W', &[0, 0, 0]), enc::message(b'd', b"r")].concat();
        assert!(matches!(
            run(&bytes, None),
            Err(ReplicationError::Protocol(_))
        ));
    }
}
