//! Backend messages into the results of replication commands; no I/O.
//!
//! A walsender answers a simple query (IDENTIFY_SYSTEM, SHOW, READ_REPLICATION_SLOT, TIMELINE_HISTORY,
//! CREATE_REPLICATION_SLOT) with at most one result set: RowDescription, DataRows, CommandComplete, then
//! ReadyForQuery, or an ErrorResponse before the ReadyForQuery. [`QueryCollector`] gathers that from decoded
//! messages, and the functions below turn a result into this crate's types. Both are pure, so the fuzz tests
//! drive them with decoded random input; a result larger than [`MAX_RESULT_LEN`] is refused.

use bytes::Bytes;
use strata_pg::{Lsn, TimelineId};

use crate::error::{ReplicationError, ServerMessage};
use crate::wire::BackendMessage;
use crate::{SlotInfo, SystemIdentity};

/// The most bytes of values one query result may hold (a timeline history file is a few kB).
pub(crate) const MAX_RESULT_LEN: usize = 64 * 1024 * 1024;

/// A simple query's result set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// The CommandComplete tag.
    pub tag: Option<String>,
}

/// Gathers one simple query's response; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct QueryCollector {
    result: QueryResult,
    described: bool,
    bytes: usize,
    error: Option<ServerMessage>,
}

impl QueryCollector {
    /// Takes the next message: `Ok(true)` once ReadyForQuery ends the response.
    pub fn push(&mut self, message: BackendMessage) -> Result<bool, ReplicationError> {
        match message {
            BackendMessage::RowDescription { columns } => {
                self.result.columns = columns;
                self.described = true;
            }
            BackendMessage::DataRow { values } => {
                if !self.described || values.len() != self.result.columns.len() {
                    return Err(ReplicationError::protocol(format!(
                        "a row of {} values for {} columns",
                        values.len(),
                        self.result.columns.len()
                    )));
                }
                self.bytes = self
                    .bytes
                    .saturating_add(values.iter().flatten().map(Bytes::len).sum::<usize>());
                if self.bytes > MAX_RESULT_LEN {
                    return Err(ReplicationError::protocol(format!(
                        "a query result over the {MAX_RESULT_LEN}-byte bound"
                    )));
                }
                self.result.rows.push(values);
            }
            BackendMessage::CommandComplete { tag } => self.result.tag = Some(tag),
            BackendMessage::EmptyQueryResponse => {}
            BackendMessage::ErrorResponse(m) => self.error = Some(m),
            BackendMessage::NoticeResponse(m) => log_notice(&m),
            BackendMessage::ParameterStatus { .. }
            | BackendMessage::NotificationResponse
            | BackendMessage::BackendKeyData => {}
            BackendMessage::ReadyForQuery => return Ok(true),
            other => {
                return Err(ReplicationError::protocol(format!(
                    "unexpected {other:?} in a query response"
                )));
            }
        }
        Ok(false)
    }

    /// The result, or the server's error.
    pub fn finish(self) -> Result<QueryResult, ReplicationError> {
        match self.error {
            Some(e) => Err(e.into()),
            None => Ok(self.result),
        }
    }
}

/// Logs a NoticeResponse (a WARNING at warn level, the rest at debug).
pub(crate) fn log_notice(m: &ServerMessage) {
    if m.severity == "WARNING" {
        tracing::warn!(code = %m.code, detail = ?m.detail, "server warning on the replication connection: {}", m.message);
    } else {
        tracing::debug!(severity = %m.severity, code = %m.code, "server notice on the replication connection: {}", m.message);
    }
}

fn text<'a>(value: &'a Option<Bytes>, what: &str) -> Result<&'a str, ReplicationError> {
    let bytes = value
        .as_ref()
        .ok_or_else(|| ReplicationError::protocol(format!("{what} is NULL")))?;
    std::str::from_utf8(bytes)
        .map_err(|_| ReplicationError::protocol(format!("{what} is not UTF-8")))
}

fn optional_text<'a>(
    value: &'a Option<Bytes>,
    what: &str,
) -> Result<Option<&'a str>, ReplicationError> {
    match value {
        None => Ok(None),
        Some(_) => text(value, what).map(Some),
    }
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ReplicationError> {
    s.parse()
        .map_err(|_| ReplicationError::protocol(format!("{what} {s:?} is not valid")))
}

/// The one row of a result with at least `min_columns` columns.
fn single_row<'a>(
    result: &'a QueryResult,
    min_columns: usize,
    command: &str,
) -> Result<&'a [Option<Bytes>], ReplicationError> {
    match result.rows.as_slice() {
        [row] if row.len() >= min_columns => Ok(row),
        rows => Err(ReplicationError::protocol(format!(
            "{command} returned {} rows of {} columns, expected one row of at least {min_columns}",
            rows.len(),
            result.columns.len()
        ))),
    }
}

/// IDENTIFY_SYSTEM: systemid, timeline, xlogpos, dbname.
pub(crate) fn identify_system(result: &QueryResult) -> Result<SystemIdentity, ReplicationError> {
    let row = single_row(result, 3, "IDENTIFY_SYSTEM")?;
    Ok(SystemIdentity {
        system_id: parse(text(&row[0], "systemid")?, "systemid")?,
        timeline: parse(text(&row[1], "timeline")?, "timeline")?,
        xlogpos: parse(text(&row[2], "xlogpos")?, "xlogpos")?,
    })
}

/// SHOW: the setting's text.
pub(crate) fn show(result: &QueryResult) -> Result<String, ReplicationError> {
    let row = single_row(result, 1, "SHOW")?;
    Ok(text(&row[0], "the setting")?.to_string())
}

/// READ_REPLICATION_SLOT: slot_type, restart_lsn, restart_tli, all NULL when the slot does not exist.
pub(crate) fn read_slot(result: &QueryResult) -> Result<Option<SlotInfo>, ReplicationError> {
    let row = single_row(result, 3, "READ_REPLICATION_SLOT")?;
    if row[0].is_none() {
        return Ok(None);
    }
    let restart_lsn = optional_text(&row[1], "restart_lsn")?
        .map(|s| parse(s, "restart_lsn"))
        .transpose()?;
    let restart_tli = optional_text(&row[2], "restart_tli")?
        .map(|s| parse(s, "restart_tli"))
        .transpose()?;
    Ok(Some(SlotInfo {
        restart_lsn,
        restart_tli,
    }))
}

/// TIMELINE_HISTORY: filename, content (the file's bytes as they are).
pub(crate) fn timeline_history(
    result: &QueryResult,
) -> Result<(String, Vec<u8>), ReplicationError> {
    let row = single_row(result, 2, "TIMELINE_HISTORY")?;
    let name = text(&row[0], "the history file name")?;
    // The name goes into a path on the caller's side.
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
    {
        return Err(ReplicationError::protocol(format!(
            "history file name {name:?} is not a file name"
        )));
    }
    let content = row[1]
        .as_ref()
        .ok_or_else(|| ReplicationError::protocol("the history file content is NULL"))?;
    Ok((name.to_string(), content.to_vec()))
}

/// The row a walsender sends after streaming a historic timeline: next_tli, next_tli_startpos.
pub(crate) fn end_of_timeline_row(
    values: &[Option<Bytes>],
) -> Result<(Option<TimelineId>, Option<Lsn>), ReplicationError> {
    if values.len() != 2 {
        return Err(ReplicationError::protocol(format!(
            "end-of-timeline row of {} values, expected 2",
            values.len()
        )));
    }
    let tli = optional_text(&values[0], "next_tli")?
        .map(|s| parse(s, "next_tli"))
        .transpose()?;
    let start = optional_text(&values[1], "next_tli_startpos")?
        .map(|s| parse(s, "next_tli_startpos"))
        .transpose()?;
    Ok((tli, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_message, tests as enc};
    use bytes::BytesMut;

    fn collect(bytes: &[u8]) -> Result<QueryResult, ReplicationError> {
        let mut buf = BytesMut::from(bytes);
        let mut c = QueryCollector::default();
        while let Some(m) = decode_message(&mut buf)? {
            if c.push(m)? {
                return c.finish();
            }
        }
        Err(ReplicationError::ConnectionClosed)
    }

    pub(crate) fn identify_response() -> Vec<u8> {
        [
            enc::row_description(&["systemid", "timeline", "xlogpos", "dbname"]),
            enc::data_row(&[
                Some(b"7312345678901234567"),
                Some(b"3"),
                Some(b"0/3000148"),
                None,
            ]),
            enc::command_complete("IDENTIFY_SYSTEM"),
            enc::ready(),
        ]
        .concat()
    }

    #[test]
    fn identify_system_result() {
        let id = identify_system(&collect(&identify_response()).unwrap()).unwrap();
        assert_eq!(
            id,
            SystemIdentity {
                system_id: 7312345678901234567,
                timeline: 3,
                xlogpos: Lsn(0x3000148)
            }
        );
    }

    #[test]
    fn a_missing_slot_reads_as_none() {
        let bytes = [
            enc::row_description(&["slot_type", "restart_lsn", "restart_tli"]),
            enc::data_row(&[None, None, None]),
            enc::command_complete("READ_REPLICATION_SLOT"),
            enc::ready(),
        ]
        .concat();
        assert_eq!(read_slot(&collect(&bytes).unwrap()).unwrap(), None);
        let bytes = [
            enc::row_description(&["slot_type", "restart_lsn", "restart_tli"]),
            enc::data_row(&[Some(b"physical"), Some(b"0/1000000"), Some(b"1")]),
            enc::command_complete("READ_REPLICATION_SLOT"),
            enc::ready(),
        ]
        .concat();
        assert_eq!(
            read_slot(&collect(&bytes).unwrap()).unwrap(),
            Some(SlotInfo {
                restart_lsn: Some(Lsn(0x1000000)),
                restart_tli: Some(1)
            })
        );
    }

    #[test]
    fn an_error_response_is_returned_after_ready_for_query() {
        let bytes = [
            enc::notice("hello"),
            enc::error("ERROR", "42710", "exists"),
            enc::ready(),
        ]
        .concat();
        match collect(&bytes) {
            Err(ReplicationError::Server { code, .. }) => assert_eq!(code, "42710"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_row_that_does_not_match_its_description_is_refused() {
        let bytes = [
            enc::row_description(&["a"]),
            enc::data_row(&[None, None]),
            enc::ready(),
        ]
        .concat();
        assert!(matches!(
            collect(&bytes),
            Err(ReplicationError::Protocol(_))
        ));
        let bytes = [enc::data_row(&[None]), enc::ready()].concat();
        assert!(matches!(
            collect(&bytes),
            Err(ReplicationError::Protocol(_))
        ));
    }

    #[test]
    fn a_history_file_name_must_be_a_plain_name() {
        let result = |name: &[u8]| QueryResult {
            columns: vec!["filename".into(), "content".into()],
            rows: vec![vec![
                Some(Bytes::copy_from_slice(name)),
                Some(Bytes::from_static(b"1\t0/3000000\tno recovery target\n")),
            ]],
            tag: None,
        };
        assert_eq!(
            timeline_history(&result(b"00000002.history")).unwrap().0,
            "00000002.history"
        );
        assert!(timeline_history(&result(b"../../etc/passwd")).is_err());
    }
}
