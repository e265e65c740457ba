//! Self-test of the harness against the real servers: if these fail, every end-to-end test would fail for
//! reasons that have nothing to do with Strata, so they run first and say so.
//!
//! They need PostgreSQL 15 and nats-server 2.10+ (scripts/install-deps.sh) and panic when either is
//! missing. They do not need the Strata binaries: the process-handling test uses two shell scripts in the
//! test directory in their place.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use strata_integration::*;

const PGBENCH_TABLES: [&str; 4] = [
    "public.pgbench_accounts",
    "public.pgbench_branches",
    "public.pgbench_history",
    "public.pgbench_tellers",
];

#[test]
fn postgres_cluster_lifecycle() {
    let dir = TestDir::new("selftest-pg");
    let mut pg = PgCluster::init(&dir, PgOptions::new("true"));
    pg.start();
    pg.wait_ready(Duration::from_secs(30));

    // The settings the harness promises are the ones the server runs with.
    let shown = pg.psql(
        "SELECT current_setting('data_checksums') || ' ' || current_setting('wal_level') || ' ' || \
         current_setting('archive_mode') || ' ' || current_setting('port') || ' ' || current_user",
    );
    assert_eq!(shown, format!("on replica on {} postgres", pg.port()));

    pg.pgbench_init(1);
    let digests_before = pg.table_digests("postgres");
    assert_eq!(
        digests_before
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        PGBENCH_TABLES
    );

    let bench = pg.pgbench_run_background(2, 2);
    let output = bench
        .wait()
        .unwrap_or_else(|e| panic!("pgbench run failed: {e}"));
    assert!(
        output.contains("number of transactions actually processed"),
        "{output}"
    );

    // Idle now: two digests agree, and pgbench changed the contents.
    let idle_a = pg.table_digests("postgres");
    let idle_b = pg.table_digests("postgres");
    assert_eq!(idle_a, idle_b);
    assert_ne!(
        idle_a["public.pgbench_accounts"],
        digests_before["public.pgbench_accounts"]
    );

    // A run stopped early ends through its pid.
    let early = pg.pgbench_run_background(600, 1);
    let status = early.stop();
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "pgbench should end by our SIGTERM: {status}"
    );

    let report = pg
        .pg_amcheck()
        .unwrap_or_else(|e| panic!("pg_amcheck found problems: {e}"));
    assert!(report.trim().is_empty(), "pg_amcheck printed: {report}");

    // archive_command = 'true' archives every segment at once.
    let segment = pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    assert_eq!(segment.len(), 24, "{segment}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let accounts: i64 = runtime.block_on(async {
        let client = pg.client().await;
        client
            .query_one("SELECT count(*) FROM pgbench_accounts", &[])
            .await
            .expect("query")
            .get(0)
    });
    assert_eq!(accounts, 100_000);
    drop(runtime);

    pg.pid().expect("running");
    pg.stop();
    assert!(!pg.is_running());
    assert!(pg.pid().is_none());
    assert!(
        !pg.data_dir().join("postmaster.pid").exists(),
        "a fast shutdown removes postmaster.pid"
    );
    LogCheck::postgres().assert_clean(pg.log_file());
}

#[test]
fn cluster_starts_on_a_copied_data_directory() {
    let dir = TestDir::new("selftest-copy");
    let mut pg = PgCluster::init(&dir, PgOptions::new("true").name("primary"));
    pg.start();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;");
    let digests = pg.table_digests("postgres");
    pg.stop();

    // A plain root-owned copy with default modes, like a restore run by root would leave: for_data_dir
    // must hand it to postgres and tighten it to 0700 before PostgreSQL accepts it.
    let copy = dir.path().join("copy-data");
    let status = Command::new("cp")
        .arg("-r")
        .arg(pg.data_dir())
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let mut restored = PgCluster::for_data_dir(&dir, "restored", &copy);
    assert_ne!(restored.port(), pg.port());
    restored.start();
    restored.wait_ready(Duration::from_secs(30));
    restored.wait_recovery_end(Duration::from_secs(60));
    assert_eq!(restored.table_digests("postgres"), digests);
    assert_eq!(restored.psql("SHOW port"), restored.port().to_string());
    restored
        .pg_amcheck()
        .unwrap_or_else(|e| panic!("pg_amcheck on the copy: {e}"));
    restored.stop();
    LogCheck::postgres().assert_clean(restored.log_file());
}

/// Reads the NATS greeting from a fresh connection.
fn nats_greeting(port: u16) -> std::io::Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

#[test]
fn nats_server_stops_and_restarts_on_the_same_port() {
    let dir = TestDir::new("selftest-nats");
    let mut nats = NatsServer::start(&dir);
    let port = nats.port();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    let greeting = nats_greeting(port).expect("connect to a running server");
    assert!(greeting.starts_with("INFO {"), "{greeting:?}");
    assert!(greeting.contains("\"jetstream\":true"), "{greeting:?}");
    assert!(
        greeting.contains("\"max_payload\":8388608"),
        "max_payload must be 8MB: {greeting:?}"
    );

    let status = nats.stop();
    assert!(
        status.success(),
        "nats-server exits 0 on SIGTERM, got {status}"
    );
    assert!(!nats.is_running());
    let refused = TcpStream::connect(("127.0.0.1", port));
    assert!(refused.is_err(), "port {port} still accepts after stop");

    nats.start_again();
    assert_eq!(nats.port(), port);
    let greeting = nats_greeting(port).expect("connect after restart");
    assert!(greeting.contains("\"jetstream\":true"), "{greeting:?}");
    assert!(
        nats.store_dir().join("jetstream").is_dir(),
        "JetStream keeps its store in the test directory"
    );

    let status = nats.kill();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    nats.start_again();
    nats.stop();
    assert_no_errors(nats.log_file(), &[]);
}

fn write_script(path: &std::path::Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
}

#[test]
fn services_run_as_postgres_and_stop_by_pid() {
    let dir = TestDir::new("selftest-svc");
    let bin_dir = dir.subdir("bin");
    write_script(&bin_dir.join("strata"), "echo \"user=$(id -un) args=$*\"\n");
    write_script(
        &bin_dir.join("strata-fake"),
        "echo \"started $*\"\ntrap 'echo \"stopping on TERM\"; exit 0' TERM\nwhile :; do sleep 0.05; done\n",
    );
    let bins = StrataBins::from_dir(&bin_dir);
    let config = dir.path().join("strata.toml");

    let out = bins
        .strata_cmd(&config, "main")
        .arg("info")
        .output()
        .expect("run cli");
    let text = String::from_utf8_lossy(&out.stdout);
    let expected_user = if unsafe { libc::geteuid() } == 0 {
        "postgres".to_string()
    } else {
        whoami()
    };
    assert_eq!(
        text.trim(),
        format!(
            "user={expected_user} args=--config {} --stanza main info",
            config.display()
        )
    );
    assert!(bins
        .archive_push_command(&config, "main")
        .ends_with("--stanza 'main' archive-push %p"));

    let logs = dir.subdir("logs");
    let mut svc = Service::spawn(&bins, "strata-fake", &config, &logs);
    let line = svc.wait_for_log("^started --config ", Duration::from_secs(10));
    assert!(line.ends_with("strata.toml"), "{line}");
    let status = svc.stop();
    assert!(status.success(), "graceful stop exits 0, got {status}");
    wait_for_line(
        svc.log_file(),
        "stopping on TERM",
        Duration::from_secs(5),
        || true,
    );

    let mut crashed = Service::spawn(&bins, "strata-fake", &config, &dir.subdir("logs-crash"));
    crashed.wait_for_log("^started", Duration::from_secs(10));
    assert_eq!(crashed.kill().signal(), Some(libc::SIGKILL));
    assert!(!crashed.is_running());
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn ports_are_distinct_across_threads() {
    let ports: Vec<Port> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..16).map(|_| reserve_port()).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    let numbers: BTreeSet<u16> = ports.iter().map(Port::get).collect();
    assert_eq!(numbers.len(), ports.len(), "a port was handed out twice");
    assert!(numbers
        .iter()
        .all(|p| (ports::PORT_RANGE_START..ports::PORT_RANGE_END).contains(p)));
}
