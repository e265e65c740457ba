//! Fleet operation: the bus is a three-server NATS cluster and every stage is its own process.
//!
//! - One of the three nats-servers is SIGKILLed in the middle of a backup (and, in a variant, started again
//!   while the backup runs): the backup commits, or fails with one error line and commits nothing; the next
//!   backup commits, and a restore of it holds the source's data.
//! - Two sealer and two uploader processes share their queues (on the same three-server cluster): a backup
//!   restores equal to the source, and each of the four processes did part of the work (its own metrics say
//!   so).

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use strata_integration::*;

/// Small chunks and a small in-flight window: the backup of a few tens of MB takes many round trips through
/// the bus, so a server can be killed while it is under way. The stall timeout bounds a backup whose
/// confirmations were lost with the server (they are core NATS events), and so the test's time when that
/// happens. It outlasts an election plus a publish retry (~15 s), not the consumers' 30 s ack wait: a chunk
/// lost on its way to a worker then fails the backup cleanly instead of pausing it (production's 120 s
/// waits for the redelivery), which the test accepts as well.
const PIPELINE: &str = "chunk_size = 262144\nin_flight_bytes = 4194304\nstall_timeout_secs = 25";

/// Every stream and consumer on three servers, as a cluster deployment configures it.
const NATS_REPLICAS: &str = "[nats]\nstream_replicas = 3";

const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

fn pack_bytes(repo: &Path) -> usize {
    snapshot(repo).iter().filter(|(k, _)| k.ends_with(".pack")).map(|(_, v)| v.len()).sum()
}

/// `strata backup` started in the background, its output captured.
fn spawn_backup(setup: &Setup) -> Child {
    setup
        .bins
        .strata_cmd(&setup.config, STANZA)
        .arg("backup")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strata backup starts")
}

/// What a backup interrupted by a server's loss may do: commit, or fail with one error line and leave no
/// record behind. Returns whether it committed.
fn committed_or_failed_cleanly(setup: &Setup, out: &std::process::Output) -> bool {
    if out.status.success() {
        let labels = setup.backup_labels();
        assert_eq!(labels.len(), 1, "the backup succeeded but info shows {labels:?}\n{}", describe(out));
        return true;
    }
    let line = expect_one_error_line(out, &["backup"]);
    eprintln!("the backup failed cleanly: {line}");
    assert!(records(&setup.repo).is_empty(), "a failed backup left a record");
    assert!(setup.backup_labels().is_empty(), "info shows a backup that failed");
    false
}

/// The backup's state once a member died: `restart` brings it back while the backup runs.
fn lose_a_nats_server_mid_backup(test: &str, restart: bool) {
    let started = Instant::now();
    let dir = TestDir::new(test);
    let mut cluster = NatsCluster::start(&dir, "nats");
    let mut services;
    let setup = Setup::new(&dir, &cluster.url(), PIPELINE, &[]);
    setup.append_config(NATS_REPLICAS);
    services = Services::start(&setup);
    setup.strata_ok(&["stanza-create"]);
    // Every stream and consumer exists on all three servers before one is taken away.
    let assets = cluster.wait_streams_ready(CLUSTER_TIMEOUT);
    assert!(assets >= 6, "expected 3 streams and their consumers to be led, found {assets}");
    setup.pg.pgbench_init(3);
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let packs_before = pack_bytes(&setup.repo);

    // The member leading the seal queue: its loss moves the stream's leadership and drops every client
    // connected to it, while the collector is publishing to that stream.
    let victim_name = cluster.stream_leader("STRATA_SEAL").expect("the seal stream has a leader");
    let victim = cluster.index_of(&victim_name).expect("the leader is a member");
    let mut backup = spawn_backup(&setup);
    wait_until("the backup to store its first packs", Duration::from_secs(60), || {
        assert!(backup.try_wait().unwrap().is_none(), "the backup ended before any server was killed");
        (pack_bytes(&setup.repo) > packs_before + 2_000_000).then_some(())
    });
    eprintln!("killing nats member {victim_name} (leader of STRATA_SEAL) {:?} into the test", started.elapsed());
    cluster.kill(victim);
    // The two left elect new leaders for what the dead one led.
    cluster.wait_meta_leader(CLUSTER_TIMEOUT);
    cluster.wait_streams_ready(CLUSTER_TIMEOUT);
    if restart {
        cluster.restart(victim, CLUSTER_TIMEOUT);
        eprintln!("nats member {victim_name} is back and current {:?} into the test", started.elapsed());
    }
    let out = backup.wait_with_output().unwrap();
    if !out.status.success() {
        eprintln!("the bus when the backup failed:\n{}", cluster.describe_streams());
    }
    let first_committed = committed_or_failed_cleanly(&setup, &out);
    eprintln!("first backup committed: {first_committed}, {:?} into the test", started.elapsed());

    // The services are still up: none of them gave up on the bus.
    for s in [&mut services.collector, &mut services.sealer, &mut services.uploader] {
        assert!(s.is_running(), "{} exited after the NATS server was killed; see {}", s.name(), s.log_file().display());
    }
    let out = setup.strata(&["backup"]);
    assert!(out.status.success(), "the backup after the server's loss failed:\n{}", describe(&out));
    assert_eq!(setup.backup_labels().len(), 1 + usize::from(first_committed));
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    eprintln!("{test}: done in {:?}", started.elapsed());
}

#[test]
fn a_backup_survives_the_loss_of_one_of_three_nats_servers() {
    lose_a_nats_server_mid_backup("fleet_nats_kill", false);
}

#[test]
fn a_backup_survives_a_nats_server_killed_and_restarted() {
    lose_a_nats_server_mid_backup("fleet_nats_restart", true);
}

/// A service process with its own log directory and metrics endpoint.
fn spawn_with_metrics(setup: &Setup, bin: &str, instance: &str, key: &str) -> (Service, Port) {
    let port = reserve_port();
    let log_dir = setup.dir.subdir(instance);
    let listen = format!("127.0.0.1:{}", port.get());
    let mut service = Service::spawn_with_env(&setup.bins, bin, &setup.config, &log_dir, &[(key, listen.as_str())]);
    let role = bin.trim_start_matches("strata-");
    service.wait_for_log(&format!("{role} running"), Duration::from_secs(30));
    (service, port)
}

/// The value of an unlabelled counter in a scrape.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn two_sealers_and_two_uploaders_share_a_backup() {
    let started = Instant::now();
    let dir = TestDir::new("fleet_pools");
    let cluster = NatsCluster::start(&dir, "nats");
    // Declared before the cluster so they are dropped after it: a cluster shutting down may still push WAL.
    let mut collector;
    let sealers: Vec<(Service, Port)>;
    let uploaders: Vec<(Service, Port)>;
    let setup = Setup::new(&dir, &cluster.url(), PIPELINE, &[]);
    setup.append_config(NATS_REPLICAS);
    collector = Service::spawn(&setup.bins, "strata-collector", &setup.config, &setup.dir.subdir("collector"));
    collector.wait_for_log("collector running", Duration::from_secs(30));
    sealers = ["sealer-a", "sealer-b"]
        .iter()
        .map(|i| spawn_with_metrics(&setup, "strata-sealer", i, "STRATA_METRICS__SEALER"))
        .collect();
    uploaders = ["uploader-a", "uploader-b"]
        .iter()
        .map(|i| spawn_with_metrics(&setup, "strata-uploader", i, "STRATA_METRICS__UPLOADER"))
        .collect();
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(2);
    let label = setup.backup("full");
    eprintln!("backup {label} done {:?} into the test", started.elapsed());

    // Sealed chunks handed on, and sealed bytes written into packs (not only found already stored).
    for (name, pool, family) in
        [("sealer", &sealers, "strata_sealer_chunks_total"), ("uploader", &uploaders, "strata_uploader_bytes_total")]
    {
        let counts: Vec<f64> = pool.iter().map(|(_, port)| counter(&scrape(port.get()), family)).collect();
        eprintln!("{family} per {name} process: {counts:?}");
        for (i, c) in counts.iter().enumerate() {
            assert!(*c > 0.0, "{name} process {i} did no work ({family} = {c}); all: {counts:?}");
        }
    }
    // The chunks went straight from the collector to the sealers and from the sealers to the uploaders,
    // not through the NATS servers (shared/bus/src/direct.rs).
    for (name, pool, family) in [
        ("sealer", &sealers, "strata_bus_direct_messages_total{queue=\"seal\",side=\"received\"}"),
        ("sealer", &sealers, "strata_bus_direct_messages_total{queue=\"upload\",side=\"sent\"}"),
        ("uploader", &uploaders, "strata_bus_direct_messages_total{queue=\"upload\",side=\"received\"}"),
    ] {
        let counts: Vec<f64> = pool.iter().map(|(_, port)| counter(&scrape(port.get()), family)).collect();
        eprintln!("{family} per {name} process: {counts:?}");
        assert!(counts.iter().sum::<f64>() > 0.0, "no chunk took the direct path ({family}): {counts:?}");
    }
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    for (s, _) in sealers.iter().chain(&uploaders) {
        LogCheck::new().assert_clean(s.log_file());
    }
    eprintln!("two_sealers_and_two_uploaders_share_a_backup: done in {:?}", started.elapsed());
}
