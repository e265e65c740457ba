//! strata-replication's client against a real PostgreSQL 15 walsender: the commands a WAL receiver needs,
//! WAL bytes identical to the segment files in pg_wal, status updates that move a slot, and authentication
//! (trust on the unix socket; scram-sha-256, md5 and cleartext password over TCP on 127.0.0.1), and the end
//! of a historic timeline on a promoted standby.

use std::fs;
use std::time::Duration;

use strata_integration::*;
use strata_pg::wal::WalSegment;
use strata_pg::Lsn;
use strata_replication::{ReplicationClient, ReplicationError, StreamEvent};

const SEG_SIZE: u64 = 16 * 1024 * 1024;
/// How long any one wait on the server may take before the test fails.
const WAIT: Duration = Duration::from_secs(120);

fn cluster(dir: &TestDir) -> PgCluster {
    // archive_mode off: no archiver warnings about an empty archive_command; the slot keeps the WAL.
    PgCluster::init(
        dir,
        PgOptions::new("")
            .max_wal_senders(4)
            .setting("archive_mode", "off"),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn streams_the_segment_files_bytes_and_moves_the_slot() {
    let dir = TestDir::new("replication_protocol_stream");
    let mut pg = cluster(&dir);
    pg.start();
    let rt = runtime();

    let mut client = rt
        .block_on(ReplicationClient::connect(&pg.conn_string(), "strata_test"))
        .unwrap();
    let version = client.server_version_num().expect("a server version");
    assert!(
        (150000..160000).contains(&version),
        "server_version_num {version}"
    );

    let id = rt.block_on(client.identify_system()).unwrap();
    let system_id: u64 = pg
        .psql("SELECT system_identifier FROM pg_control_system()")
        .parse()
        .unwrap();
    assert_eq!(id.system_id, system_id);
    assert_eq!(id.timeline, 1);
    let flush: Lsn = pg
        .psql("SELECT pg_current_wal_flush_lsn()")
        .parse()
        .unwrap();
    assert!(
        id.xlogpos.is_valid() && id.xlogpos <= flush,
        "xlogpos {} flush {flush}",
        id.xlogpos
    );
    assert_eq!(
        rt.block_on(client.show("wal_segment_size")).unwrap(),
        "16MB"
    );
    assert_eq!(
        pg.psql("SELECT application_name FROM pg_stat_replication"),
        "strata_test",
        "the walsender shows the application name"
    );

    assert!(
        rt.block_on(client.create_physical_slot("strata_test"))
            .unwrap(),
        "a new slot"
    );
    assert!(
        !rt.block_on(client.create_physical_slot("strata_test"))
            .unwrap(),
        "the slot exists already"
    );
    let slot = rt
        .block_on(client.read_slot("strata_test"))
        .unwrap()
        .expect("the slot exists");
    let restart = slot.restart_lsn.expect("RESERVE_WAL gives a restart_lsn");
    assert_eq!(slot.restart_tli, Some(1));
    let segment = WalSegment::containing(1, restart, SEG_SIZE);
    let seg_start = segment.start_lsn(SEG_SIZE);
    let seg_end = Lsn(seg_start.0 + SEG_SIZE);

    let mut stream = rt
        .block_on(client.start_physical(Some("strata_test"), seg_start, 1))
        .unwrap();
    // WAL crossing into the next segment, then a switch: the first segment is complete on disk.
    pg.psql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 150000) g;
         SELECT pg_switch_wal();",
    );
    let mut received = Vec::with_capacity(SEG_SIZE as usize);
    let mut keepalives = 0;
    rt.block_on(async {
        while (received.len() as u64) < SEG_SIZE {
            let event = tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("WAL within the deadline")
                .unwrap();
            match event {
                StreamEvent::Data {
                    start,
                    server_end,
                    data,
                } => {
                    assert_eq!(
                        start.0,
                        seg_start.0 + received.len() as u64,
                        "contiguous WAL"
                    );
                    assert!(
                        server_end.0 >= start.0 + data.len() as u64,
                        "{server_end} before the data's end"
                    );
                    received.extend_from_slice(&data);
                }
                StreamEvent::Keepalive {
                    reply_requested, ..
                } => {
                    keepalives += 1;
                    if reply_requested {
                        let written = Lsn(seg_start.0 + received.len() as u64);
                        stream
                            .send_status(written, Lsn::INVALID, Lsn::INVALID, false)
                            .await
                            .unwrap();
                    }
                }
                StreamEvent::EndOfTimeline { .. } => panic!("the current timeline ended"),
            }
        }
    });
    received.truncate(SEG_SIZE as usize);
    let file = fs::read(pg.data_dir().join("pg_wal").join(segment.name(SEG_SIZE))).unwrap();
    assert_eq!(file.len() as u64, SEG_SIZE);
    let first_difference = received.iter().zip(&file).position(|(a, b)| a != b);
    assert_eq!(
        first_difference,
        None,
        "the streamed WAL differs from {} ({keepalives} keepalives)",
        segment.name(SEG_SIZE)
    );

    // Reporting the segment flushed moves the slot's restart_lsn to its end.
    rt.block_on(stream.send_status(seg_end, seg_end, Lsn::INVALID, false))
        .unwrap();
    pg.wait_for_query(
        &format!("SELECT restart_lsn >= '{seg_end}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'strata_test'"),
        "t",
        WAIT,
    );

    // Ending the stream gives back a connection that takes commands.
    let mut client = rt.block_on(stream.finish()).unwrap();
    assert_eq!(
        rt.block_on(client.identify_system()).unwrap().system_id,
        system_id
    );
    let slot = rt
        .block_on(client.read_slot("strata_test"))
        .unwrap()
        .unwrap();
    assert!(slot.restart_lsn.unwrap() >= seg_end);
    rt.block_on(client.close());
    pg.allow_log(r#"replication slot "strata_test" already exists"#)
        .allow_log(r"STATEMENT:\s+CREATE_REPLICATION_SLOT strata_test");
}

#[test]
fn a_missing_slot_reads_as_none_and_bad_names_never_reach_the_server() {
    let dir = TestDir::new("replication_protocol_slots");
    let mut pg = cluster(&dir);
    pg.start();
    let rt = runtime();
    let mut client = rt
        .block_on(ReplicationClient::connect(&pg.conn_string(), ""))
        .unwrap();
    assert_eq!(rt.block_on(client.read_slot("no_such_slot")).unwrap(), None);
    for bad in ["x; DROP_REPLICATION_SLOT y", "Upper", ""] {
        let e = rt.block_on(client.create_physical_slot(bad)).unwrap_err();
        assert!(
            matches!(e, ReplicationError::InvalidIdentifier { .. }) && e.is_permanent(),
            "{bad}: {e}"
        );
    }
    // A server error leaves the connection usable.
    let e = rt.block_on(client.timeline_history(7)).unwrap_err();
    assert!(e.sqlstate().is_some(), "{e}");
    assert_eq!(rt.block_on(client.read_slot("no_such_slot")).unwrap(), None);
    assert_eq!(
        pg.psql("SELECT application_name FROM pg_stat_replication"),
        "strata"
    );
    rt.block_on(client.close());
    pg.allow_log(r"could not open file .*00000007\.history")
        .allow_log(r"STATEMENT:\s+TIMELINE_HISTORY 7");
}

#[test]
fn passwords_over_tcp_scram_md5_and_cleartext() {
    let dir = TestDir::new("replication_protocol_auth");
    let mut pg = PgCluster::init(
        &dir,
        PgOptions::new("")
            .max_wal_senders(4)
            .setting("archive_mode", "off")
            .setting("password_encryption", "scram-sha-256"),
    );
    // Ahead of initdb's trust lines (the first match wins); loopback only.
    let hba_path = pg.data_dir().join("pg_hba.conf");
    let hba = fs::read_to_string(&hba_path).unwrap();
    fs::write(
        &hba_path,
        format!(
            "host replication strata_scram 127.0.0.1/32 scram-sha-256\n\
             host replication strata_md5 127.0.0.1/32 md5\n\
             host replication strata_clear 127.0.0.1/32 password\n{hba}"
        ),
    )
    .unwrap();
    pg.start();
    pg.psql(
        "CREATE ROLE strata_scram LOGIN REPLICATION PASSWORD 'right scram secret';
         SET password_encryption = 'md5';
         CREATE ROLE strata_md5 LOGIN REPLICATION PASSWORD 'right md5 secret';
         CREATE ROLE strata_clear LOGIN REPLICATION PASSWORD 'right clear secret';",
    );
    let rt = runtime();
    let port = pg.port();
    let conninfo = |user: &str, password: Option<&str>| {
        let mut s = format!("host=127.0.0.1 port={port} user={user}");
        if let Some(p) = password {
            s.push_str(&format!(" password='{p}'"));
        }
        s
    };
    let system_id: u64 = pg
        .psql("SELECT system_identifier FROM pg_control_system()")
        .parse()
        .unwrap();

    for (user, right) in [
        ("strata_scram", "right scram secret"),
        ("strata_md5", "right md5 secret"),
        ("strata_clear", "right clear secret"),
    ] {
        let e = rt
            .block_on(ReplicationClient::connect(
                &conninfo(user, Some("wrong")),
                "",
            ))
            .unwrap_err();
        assert_eq!(e.sqlstate(), Some("28P01"), "{user}: {e}");
        assert!(e.is_permanent(), "{user}: {e}");
        assert!(
            e.to_string().contains("password authentication failed"),
            "{user}: {e}"
        );

        let e = rt
            .block_on(ReplicationClient::connect(&conninfo(user, None), ""))
            .unwrap_err();
        assert!(
            matches!(e, ReplicationError::PasswordRequired { .. }) && e.is_permanent(),
            "{user}: {e}"
        );

        let mut client = rt
            .block_on(ReplicationClient::connect(&conninfo(user, Some(right)), ""))
            .unwrap();
        assert_eq!(
            rt.block_on(client.identify_system()).unwrap().system_id,
            system_id,
            "{user}"
        );
        rt.block_on(client.close());
    }

    let e = rt
        .block_on(ReplicationClient::connect(
            &format!("{} sslmode=require", conninfo("strata_scram", None)),
            "",
        ))
        .unwrap_err();
    assert!(
        matches!(e, ReplicationError::Config(_)) && e.to_string().contains("sslmode=require"),
        "{e}"
    );

    // Nothing listens on a port just released: a transient connect error, not a hang.
    let free = reserve_port();
    let free_port = free.get();
    drop(free);
    let e = rt
        .block_on(ReplicationClient::connect(
            &format!("host=127.0.0.1 port={free_port} user=x"),
            "",
        ))
        .unwrap_err();
    assert!(
        matches!(e, ReplicationError::Connect { .. }) && !e.is_permanent(),
        "{e}"
    );

    pg.allow_log(r#"password authentication failed for user "strata_(scram|md5|clear)""#)
        .allow_log(r"Connection matched pg_hba.conf line")
        .allow_log(r"DETAIL:\s+Password does not match");
}

#[test]
fn a_historic_timeline_ends_with_the_next_ones_start() {
    let dir = TestDir::new("replication_protocol_timeline");
    let mut primary = cluster(&dir);
    primary.start();
    primary.psql("CREATE TABLE before_promotion AS SELECT g FROM generate_series(1, 10000) g");

    // A streaming standby of it, promoted to timeline 2.
    let standby_data = dir.subdir("standby_copy").join("data");
    let out = command_as_postgres(strata_integration::pg::pg_bin("pg_basebackup"))
        .arg("-D")
        .arg(&standby_data)
        .arg("-h")
        .arg(primary.socket_dir())
        .args(["-p", &primary.port().to_string(), "-U", "postgres"])
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut standby = PgCluster::for_data_dir(&dir, "standby", &standby_data);
    standby.start();
    assert_eq!(standby.psql("SELECT pg_promote()"), "t");
    standby.wait_recovery_end(WAIT);
    standby.psql(
        "CREATE TABLE after_promotion AS SELECT g FROM generate_series(1, 10000) g;
         SELECT pg_switch_wal();",
    );

    let rt = runtime();
    let mut client = rt
        .block_on(ReplicationClient::connect(&standby.conn_string(), ""))
        .unwrap();
    assert_eq!(rt.block_on(client.identify_system()).unwrap().timeline, 2);
    let (name, content) = rt.block_on(client.timeline_history(2)).unwrap();
    assert_eq!(name, "00000002.history");
    let content = String::from_utf8(content).unwrap();
    let switch: Lsn = content
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("1\t"))
        .and_then(|rest| rest.split('\t').next())
        .and_then(|lsn| lsn.parse().ok())
        .unwrap_or_else(|| panic!("no switch point in {content:?}"));
    let want_end = StreamEvent::EndOfTimeline {
        next_timeline: Some(2),
        next_start: Some(switch),
    };

    // Timeline 1 asked for at its switch point: the end at once, without a copy.
    let mut stream = rt.block_on(client.start_physical(None, switch, 1)).unwrap();
    assert_eq!(rt.block_on(stream.next()).unwrap(), want_end);
    let client = rt.block_on(stream.finish()).unwrap();

    // From the start of the switch point's segment: WAL up to the switch point, then the end.
    let seg_start = Lsn(switch.0 - switch.0 % SEG_SIZE);
    let mut stream = rt
        .block_on(client.start_physical(None, seg_start, 1))
        .unwrap();
    let mut end = seg_start;
    rt.block_on(async {
        loop {
            let event = tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("WAL within the deadline")
                .unwrap();
            match event {
                StreamEvent::Data { start, data, .. } => {
                    assert_eq!(start, end, "contiguous WAL");
                    end = Lsn(end.0 + data.len() as u64);
                }
                StreamEvent::Keepalive { .. } => {}
                event => {
                    assert_eq!(event, want_end);
                    break;
                }
            }
        }
    });
    assert_eq!(end, switch, "timeline 1's WAL ends at the switch point");

    // The connection goes on to timeline 2 from the same segment start.
    let client = rt.block_on(stream.finish()).unwrap();
    let mut stream = rt
        .block_on(client.start_physical(None, seg_start, 2))
        .unwrap();
    let first_data = rt.block_on(async {
        loop {
            match tokio::time::timeout(WAIT, stream.next())
                .await
                .unwrap()
                .unwrap()
            {
                StreamEvent::Data { start, .. } => return start,
                StreamEvent::Keepalive { .. } => {}
                other => panic!("{other:?} on the current timeline"),
            }
        }
    });
    assert_eq!(first_data, seg_start);
    rt.block_on(rt.block_on(stream.finish()).unwrap().close());

    standby.allow_log(r"terminating walreceiver process due to administrator command");
    LogCheck::postgres().assert_clean(primary.log_file());
}
