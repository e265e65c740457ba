//! Killing a stage in the middle of a backup commits nothing, shows nothing in `info`, and the next backup
//! succeeds once the stage is back. Stopping the collector (SIGTERM) cancels its backup, which commits
//! nothing either.

mod common;

use common::*;
use std::process::Stdio;
use std::time::Duration;
use strata_integration::*;

/// Slow compression keeps the backup running long enough to kill a stage in its middle; a short stall
/// timeout makes the orphaned backup fail quickly.
const PIPELINE: &str = "compress_level = 15\nstall_timeout_secs = 20\nin_flight_bytes = 16777216";

fn pack_bytes(repo: &std::path::Path) -> usize {
    snapshot(repo).iter().filter(|(k, _)| k.ends_with(".pack")).map(|(_, v)| v.len()).sum()
}

/// The checkpoint an interrupted backup leaves (`backup/<label>.partial`), if any.
fn checkpoint_bytes(repo: &std::path::Path) -> Option<Vec<u8>> {
    snapshot(repo).into_iter().find(|(k, _)| k.ends_with(".partial")).map(|(_, v)| v)
}

fn kill_stage_mid_backup(which: &str) {
    let dir = TestDir::new(&format!("kill_{which}"));
    let nats = NatsServer::start(&dir);
    // Declared before the cluster so they are dropped after it: a cluster shutting down may still push WAL.
    let mut services;
    let setup = Setup::new(&dir, &nats.url(), PIPELINE, &[]);
    services = Services::start(&setup);
    // The killed stage's backup fails, and the collector says so.
    services.collector.allow_log(r"backup failed error=.no chunk of this job was confirmed stored");
    setup.strata_ok(&["stanza-create"]);
    // Scale 10 (about 160 MB): at scale 5 a faster pipeline finished the backup before the second
    // checkpoint came, and the kill found nothing left to interrupt.
    setup.pg.pgbench_init(10);
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let packs_before = pack_bytes(&setup.repo);

    let mut backup = setup.bins.strata_cmd(&setup.config, STANZA);
    let backup = backup.arg("backup").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until the backup has stored a good part of its data (about 9 MB sealed in all at this
    // compression level) and checkpointed it three times (checkpoints come every second or so; a file
    // read is named by the checkpoint after the one that finds its chunks stored, and its small files'
    // bundles wait behind the in-flight window: after two, a loaded CI machine once had no file named),
    // then kill the stage.
    wait_until("the backup to store 1.5 MB of packs", Duration::from_secs(120), || {
        (pack_bytes(&setup.repo) >= packs_before + 1_500_000).then_some(())
    });
    for _ in 0..3 {
        let last = checkpoint_bytes(&setup.repo);
        wait_until_every("the backup's next checkpoint", Duration::from_secs(120), Duration::from_millis(20), || {
            (checkpoint_bytes(&setup.repo) != last).then_some(())
        });
    }
    let stage = match which {
        "uploader" => &mut services.uploader,
        "sealer" => &mut services.sealer,
        _ => unreachable!(),
    };
    stage.kill();
    let out = backup.wait_with_output().unwrap();
    let line = expect_one_error_line(&out, &["backup"]);
    assert!(line.contains("confirmed") || line.contains("stall"), "{line}");
    assert!(records(&setup.repo).is_empty(), "a killed backup left a record");
    assert!(checkpoint_bytes(&setup.repo).is_some(), "the killed backup left no checkpoint");
    assert!(setup.backup_labels().is_empty(), "info shows a backup that was never committed");

    // The stage comes back; the next backup succeeds and restores.
    let mut restarted = Service::spawn(&setup.bins, &format!("strata-{which}"), &setup.config, dir.path());
    // Up means subscribed: a fetch request published before that would reach no uploader (core NATS).
    restarted.wait_for_log(&format!("{which} running"), Duration::from_secs(60));
    match which {
        "uploader" => services.uploader = restarted,
        _ => services.sealer = restarted,
    }
    // Chunks of the killed backup are redelivered to the restarted stage; compress the new backup quickly
    // so the two do not compete for the stall deadline on a loaded machine.
    let out = setup.strata_env(&["backup"], &[("STRATA_PIPELINE__COMPRESS_LEVEL", "1")]);
    assert!(out.status.success(), "the backup after the restart failed:\n{}", describe(&out));
    assert_eq!(setup.backup_labels().len(), 1);
    assert!(checkpoint_bytes(&setup.repo).is_none(), "the commit left the checkpoint it superseded");
    // The collector resumes: what the killed attempt got stored is not sent again.
    let info = setup.info();
    let b = &info[0]["backups"][0];
    let (sent, database) = (b["sent_bytes"].as_u64().unwrap(), b["database_bytes"].as_u64().unwrap());
    let read = b["read_bytes"].as_u64().unwrap();
    let log = std::fs::read_to_string(services.collector.log_file()).unwrap();
    let resumed: u64 = regex::Regex::new(r"plain_bytes=(\d+)")
        .unwrap()
        .captures(&log)
        .unwrap_or_else(|| panic!("the collector did not resume:\n{log}"))[1]
        .parse()
        .unwrap();
    // What the rerun sent again of what was already stored (the rest of `sent` is what the killed attempt
    // never got stored, plus the manifest).
    let resent = (sent + resumed).saturating_sub(database);
    eprintln!("resume after killing the {which}: {resumed} bytes already stored; rerun read {read} and sent {sent} of {database}; re-sent {resent}");
    assert!(read < database, "the rerun read every file again ({read} of {database} bytes)");
    assert!(resumed > database / 10, "the killed attempt stored only {resumed} bytes");
    assert!(resent * 10 <= resumed, "the rerun sent {resent} of the {resumed} bytes already stored");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
}

#[test]
fn killing_the_uploader_mid_backup_commits_nothing() {
    kill_stage_mid_backup("uploader");
}

#[test]
fn killing_the_sealer_mid_backup_commits_nothing() {
    kill_stage_mid_backup("sealer");
}

/// SIGTERM to the collector mid-backup: the backup is cancelled and reported failed, nothing is committed,
/// and the collector exits 0 without waiting for its stop grace.
#[test]
fn stopping_the_collector_mid_backup_cancels_the_backup() {
    let dir = TestDir::new("stop_collector");
    let nats = NatsServer::start(&dir);
    let mut services;
    let setup = Setup::new(&dir, &nats.url(), PIPELINE, &[]);
    services = Services::start(&setup);
    services.collector.allow_log(r"backup failed error=.the backup was cancelled: the collector is shutting down");
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(5);
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let packs_before = pack_bytes(&setup.repo);

    let mut backup = setup.bins.strata_cmd(&setup.config, STANZA);
    let backup = backup.arg("backup").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until("the backup to store some packs", Duration::from_secs(120), || {
        (pack_bytes(&setup.repo) >= packs_before + 500_000).then_some(())
    });
    let stopping = std::time::Instant::now();
    let status = services.collector.stop();
    let took = stopping.elapsed();
    assert!(status.success(), "the collector exited with {status} when stopped mid-backup");
    assert!(took < Duration::from_secs(15), "the collector took {took:?} to stop");

    let out = backup.wait_with_output().unwrap();
    let line = expect_one_error_line(&out, &["backup"]);
    assert!(line.contains("cancelled"), "{line}");
    assert!(records(&setup.repo).is_empty(), "a cancelled backup left a record");
    assert!(setup.backup_labels().is_empty(), "info shows a cancelled backup");
    // The collector's lines about the backup name its stanza.
    let log = std::fs::read_to_string(services.collector.log_file()).unwrap();
    let cancelling = log.lines().find(|l| l.contains("cancelling the backup")).unwrap_or_else(|| panic!("no cancel line:\n{log}"));
    assert!(cancelling.contains(&format!("stanza={STANZA}")), "{cancelling}");
    let failed = log.lines().find(|l| l.contains("backup failed")).unwrap_or_else(|| panic!("no failure line:\n{log}"));
    assert!(failed.contains(&format!("stanza={STANZA}")) && failed.contains("cancelled"), "{failed}");
}
