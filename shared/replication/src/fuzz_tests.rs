//! Every decoder of the server's bytes against random and damaged input: message framing (`wire`), query
//! results and the row parsers (`response`), CopyData payloads and the stream's state machine (`stream`).
//! Each returns a value or an error, never panics, and what it returns lies in its input.
//!
//! A module of the crate rather than `tests/fuzz.rs` because the decoders and the valid encodings' builders
//! are private. Cases per target: `PROPTEST_CASES` (see `strata-fuzzkit`).

use bytes::BytesMut;
use strata_fuzzkit::{bytes, check, fuzz, mutated_any};

use crate::response::{self, QueryCollector};
use crate::stream::tests::{end_of_timeline_stream, run};
use crate::wire::{
    decode_message, parse_copy_payload, parse_server_version, tests as enc, BackendMessage,
};
use crate::StreamEvent;
use strata_fuzzkit::proptest::test_runner::TestCaseError;

/// Valid server responses of every kind this crate reads.
fn valid_inputs() -> Vec<Vec<u8>> {
    let result = |columns: &[&str], values: &[Option<&[u8]>], tag: &str| {
        [
            enc::row_description(columns),
            enc::data_row(values),
            enc::command_complete(tag),
            enc::ready(),
        ]
        .concat()
    };
    let mut sasl = 10i32.to_be_bytes().to_vec();
    enc::cstr(&mut sasl, "SCRAM-SHA-256");
    sasl.push(0);
    vec![
        result(
            &["systemid", "timeline", "xlogpos", "dbname"],
            &[
                Some(b"7312345678901234567"),
                Some(b"1"),
                Some(b"0/3000148"),
                None,
            ],
            "IDENTIFY_SYSTEM",
        ),
        result(
            &["slot_type", "restart_lsn", "restart_tli"],
            &[Some(b"physical"), Some(b"0/1000000"), Some(b"1")],
            "READ_REPLICATION_SLOT",
        ),
        result(
            &["filename", "content"],
            &[
                Some(b"00000002.history"),
                Some(b"1\t0/3000000\tno recovery target specified\n"),
            ],
            "TIMELINE_HISTORY",
        ),
        result(&["wal_segment_size"], &[Some(b"16MB")], "SHOW"),
        [
            enc::notice("slot exists"),
            enc::error("ERROR", "42710", "replication slot \"s\" already exists"),
            enc::ready(),
        ]
        .concat(),
        [
            enc::message(b'R', &sasl),
            enc::message(b'R', &[&5i32.to_be_bytes()[..], b"salt"].concat()),
            enc::message(
                b'R',
                &[&11i32.to_be_bytes()[..], b"r=abc,s=c2FsdA==,i=4096"].concat(),
            ),
            enc::message(b'R', &0i32.to_be_bytes()),
            enc::parameter_status("server_version", "15.4 (Debian 15.4-1)"),
            enc::message(b'K', &[0; 8]),
            enc::ready(),
        ]
        .concat(),
        end_of_timeline_stream(),
    ]
}

/// Decodes `input` as a query response and as a WAL stream, and runs every parser on what comes out.
fn every_decoder(input: &[u8]) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(input);
    let mut collector = Some(QueryCollector::default());
    while let Ok(Some(message)) = decode_message(&mut buf) {
        match &message {
            BackendMessage::CopyData(payload) => {
                if let Ok(crate::wire::CopyPayload::XLogData { data, .. }) =
                    parse_copy_payload(payload.clone())
                {
                    check!(
                        data.len() <= input.len(),
                        "{} bytes of WAL from {} of input",
                        data.len(),
                        input.len()
                    );
                }
            }
            BackendMessage::ParameterStatus { value, .. } => {
                let _ = parse_server_version(value);
            }
            _ => {}
        }
        let Some(c) = collector.as_mut() else {
            continue;
        };
        match c.push(message) {
            Ok(false) => {}
            Ok(true) => {
                if let Ok(result) = collector.take().unwrap().finish() {
                    let _ = response::identify_system(&result);
                    let _ = response::show(&result);
                    let _ = response::read_slot(&result);
                    let _ = response::timeline_history(&result);
                    for row in &result.rows {
                        let _ = response::end_of_timeline_row(row);
                    }
                }
            }
            Err(_) => collector = None,
        }
    }
    check!(
        buf.len() <= input.len(),
        "the buffer grew from {} to {}",
        input.len(),
        buf.len()
    );
    for stop_after in [None, Some(1)] {
        if let Ok((events, _)) = run(input, stop_after) {
            let wal: usize = events
                .iter()
                .map(|e| match e {
                    StreamEvent::Data { data, .. } => data.len(),
                    _ => 0,
                })
                .sum();
            check!(
                wal <= input.len(),
                "{wal} bytes of WAL from {} of input",
                input.len()
            );
        }
    }
    Ok(())
}

#[test]
fn fuzz_decoders_on_random_bytes() {
    fuzz("replication: random bytes", 2000, bytes(512), |input| {
        every_decoder(&input)
    });
}

#[test]
fn fuzz_decoders_on_damaged_responses() {
    fuzz(
        "replication: damaged responses",
        4000,
        mutated_any(valid_inputs()),
        |input| every_decoder(&input),
    );
}

#[test]
fn the_valid_inputs_decode() {
    for input in valid_inputs() {
        let mut buf = BytesMut::from(&input[..]);
        let mut n = 0;
        while decode_message(&mut buf).unwrap().is_some() {
            n += 1;
        }
        assert!(n >= 3 && buf.is_empty());
        every_decoder(&input).unwrap();
    }
}
