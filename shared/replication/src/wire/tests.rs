//! Encoders of backend messages, for these tests and the fuzz tests' valid inputs.
use super::*;
use bytes::BufMut;

pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn row_description(columns: &[&str]) -> Vec<u8> {
    let mut body = (columns.len() as i16).to_be_bytes().to_vec();
    for c in columns {
        cstr(&mut body, c);
        body.extend_from_slice(&[0; 18]);
    }
    message(b'T', &body)
}

pub fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
        }
    }
    message(b'D', &body)
}

pub fn command_complete(tag: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, tag);
    message(b'C', &body)
}

pub fn ready() -> Vec<u8> {
    message(b'Z', b"I")
}

pub fn error(severity: &str, code: &str, text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (f, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', text),
    ] {
        body.push(f);
        cstr(&mut body, v);
    }
    body.push(0);
    message(b'E', &body)
}

pub fn notice(text: &str) -> Vec<u8> {
    let mut e = error("NOTICE", "00000", text);
    e[0] = b'N';
    e
}

pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, value);
    message(b'S', &body)
}

pub fn xlog_data(start: u64, end: u64, data: &[u8]) -> Vec<u8> {
    let mut body = vec![b'w'];
    body.put_u64(start);
    body.put_u64(end);
    body.put_u64(0);
    body.extend_from_slice(data);
    message(b'd', &body)
}

pub fn keepalive(end: u64, reply: bool) -> Vec<u8> {
    let mut body = vec![b'k'];
    body.put_u64(end);
    body.put_u64(0);
    body.put_u8(reply as u8);
    message(b'd', &body)
}

fn decode_all(bytes: &[u8]) -> Vec<BackendMessage> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(m) = decode_message(&mut buf).unwrap() {
        out.push(m);
    }
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    out
}

#[test]
fn decodes_a_result_set_and_its_end() {
    let mut bytes = row_description(&["systemid", "timeline"]);
    bytes.extend(data_row(&[Some(b"7312"), None]));
    bytes.extend(command_complete("IDENTIFY_SYSTEM"));
    bytes.extend(ready());
    assert_eq!(
        decode_all(&bytes),
        vec![
            BackendMessage::RowDescription {
                columns: vec!["systemid".into(), "timeline".into()]
            },
            BackendMessage::DataRow {
                values: vec![Some(Bytes::from_static(b"7312")), None]
            },
            BackendMessage::CommandComplete {
                tag: "IDENTIFY_SYSTEM".into()
            },
            BackendMessage::ReadyForQuery,
        ]
    );
}

#[test]
fn a_partial_message_waits_for_more_bytes() {
    let full = error("ERROR", "42710", "exists");
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(decode_message(&mut buf).unwrap(), None, "cut at {cut}");
        assert_eq!(buf.len(), cut, "a partial message is left in the buffer");
    }
    let mut buf = BytesMut::from(&full[..]);
    match decode_message(&mut buf).unwrap() {
        Some(BackendMessage::ErrorResponse(m)) => {
            assert_eq!(
                (m.severity.as_str(), m.code.as_str(), m.message.as_str()),
                ("ERROR", "42710", "exists")
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_oversized_or_undersized_length_is_refused_from_the_header() {
    let mut buf = BytesMut::from(&[b'd', 0x7F, 0xFF, 0xFF, 0xFF][..]);
    assert!(matches!(
        decode_message(&mut buf),
        Err(ReplicationError::Protocol(_))
    ));
    let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
    assert!(matches!(
        decode_message(&mut buf),
        Err(ReplicationError::Protocol(_))
    ));
    let over = (MAX_MESSAGE_LEN as i32 + 1).to_be_bytes();
    let mut buf = BytesMut::from(&[b'd', over[0], over[1], over[2], over[3]][..]);
    assert!(matches!(
        decode_message(&mut buf),
        Err(ReplicationError::Protocol(_))
    ));
}

#[test]
fn decodes_wal_and_keepalives() {
    let msgs = decode_all(
        &[
            xlog_data(0x1_0000_0000, 0x1_0000_0100, b"abc"),
            keepalive(7, true),
        ]
        .concat(),
    );
    let payloads: Vec<CopyPayload> = msgs
        .into_iter()
        .map(|m| match m {
            BackendMessage::CopyData(p) => parse_copy_payload(p).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        payloads,
        vec![
            CopyPayload::XLogData {
                start: Lsn(0x1_0000_0000),
                server_end: Lsn(0x1_0000_0100),
                data: Bytes::from_static(b"abc")
            },
            CopyPayload::Keepalive {
                server_end: Lsn(7),
                reply_requested: true
            },
        ]
    );
    assert!(parse_copy_payload(Bytes::from_static(b"x")).is_err());
    assert!(parse_copy_payload(Bytes::from_static(b"w\0\0")).is_err());
}

#[test]
fn decodes_authentication_requests() {
    let mut sasl = 10i32.to_be_bytes().to_vec();
    cstr(&mut sasl, "SCRAM-SHA-256-PLUS");
    cstr(&mut sasl, "SCRAM-SHA-256");
    sasl.push(0);
    let md5 = [&5i32.to_be_bytes()[..], b"salt"].concat();
    assert_eq!(
        decode_all(
            &[
                message(b'R', &sasl),
                message(b'R', &md5),
                message(b'R', &0i32.to_be_bytes())
            ]
            .concat()
        ),
        vec![
            BackendMessage::Authentication(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            }),
            BackendMessage::Authentication(AuthRequest::Md5Password { salt: *b"salt" }),
            BackendMessage::Authentication(AuthRequest::Ok),
        ]
    );
}

#[test]
fn the_status_update_has_the_documented_layout() {
    let mut out = BytesMut::new();
    standby_status_update(
        Lsn(1),
        Lsn(2),
        Lsn(3),
        true,
        PG_EPOCH_UNIX_MICROS + 5,
        &mut out,
    );
    let mut want = vec![b'd', 0, 0, 0, 38, b'r'];
    for v in [1u64, 2, 3, 5] {
        want.extend_from_slice(&v.to_be_bytes());
    }
    want.push(1);
    assert_eq!(&out[..], &want[..]);
}

#[test]
fn server_versions() {
    assert_eq!(
        parse_server_version("15.4 (Debian 15.4-1.pgdg120+1)"),
        Some(150004)
    );
    assert_eq!(parse_server_version("16beta1"), Some(160000));
    assert_eq!(parse_server_version("9.6.3"), Some(90603));
    assert_eq!(parse_server_version("x"), None);
    assert_eq!(parse_server_version("99999999999.1"), None);
}
