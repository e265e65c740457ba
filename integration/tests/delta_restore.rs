//! `restore --delta`: a copy that ran pgbench after its restore is brought back to the backup by rewriting
//! only what differs, with the same tables as a full restore, far fewer bytes written, and the files the
//! backup lacks removed. A running server's directory is refused.

mod common;

use common::*;
use std::time::{Duration, Instant};
use strata_integration::*;

/// The number before `label` in restore's output line, in bytes (`12.5 MiB` or `512 B`).
fn figure(out: &str, label: &str) -> u64 {
    let at = out.find(label).unwrap_or_else(|| panic!("no '{label}' in {out}"));
    let words: Vec<&str> = out[at + label.len()..].split_whitespace().take(2).collect();
    let n: f64 = words[0].parse().unwrap_or_else(|_| panic!("no figure after '{label}' in {out}"));
    let unit = words[1].trim_end_matches([',', ')', ';', ':']);
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        u => panic!("unit {u} in {out}"),
    };
    (n * scale) as u64
}

#[test]
fn delta_restore_rewrites_only_what_changed() {
    let dir = TestDir::new("delta_restore");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(5);
    let label = setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));

    // The reference: a full restore, recovered to the backup's end.
    let started = Instant::now();
    let full_dir = dir.path().join("full");
    let full_out = setup.strata_ok(&["restore", "--pg-data", full_dir.to_str().unwrap(), "--type", "immediate"]);
    let full_secs = started.elapsed().as_secs_f64();
    let mut full = PgCluster::for_data_dir(&dir, "full", &full_dir);
    full.set_start_setting("archive_mode", "off");
    full.start();
    full.wait_recovery_end(Duration::from_secs(300));
    let want = full.table_digests("postgres");
    full.stop();

    // A copy that moved on: pgbench, a new table, a checkpoint.
    let copy_dir = dir.path().join("copy");
    setup.strata_ok(&["restore", "--pg-data", copy_dir.to_str().unwrap(), "--type", "immediate"]);
    let mut copy = PgCluster::for_data_dir(&dir, "copy", &copy_dir);
    copy.set_start_setting("archive_mode", "off");
    copy.start();
    copy.wait_recovery_end(Duration::from_secs(300));
    copy.pgbench_transactions(500, 2);
    copy.psql("CREATE TABLE junk AS SELECT g FROM generate_series(1, 100000) g; CHECKPOINT");
    let junk = copy.psql("SELECT pg_relation_filepath('junk')");
    assert_ne!(copy.table_digests("postgres"), want);

    // Refused while the server runs, and over a directory that is not a data directory.
    let line = setup.strata_fails(&["restore", "--pg-data", copy_dir.to_str().unwrap(), "--delta"]);
    assert!(line.contains("postmaster.pid"), "{line}");
    let other = dir.subdir("other");
    std::fs::write(other.join("file"), b"x").unwrap();
    let line = setup.strata_fails(&["restore", "--pg-data", other.to_str().unwrap(), "--delta"]);
    assert!(line.contains("PG_VERSION"), "{line}");
    copy.stop();

    let started = Instant::now();
    let out = setup.strata_ok(&["restore", "--pg-data", copy_dir.to_str().unwrap(), "--delta", "--type", "immediate"]);
    let delta_secs = started.elapsed().as_secs_f64();
    assert!(out.starts_with(&format!("delta-restored backup {label}")), "{out}");
    let total = figure(&full_out, "files, ");
    let written = figure(&out, "wrote ");
    let fetched = figure(&out, "fetched ");
    eprintln!(
        "full restore: {total} bytes written in {full_secs:.2} s; delta restore: {written} bytes written, {fetched} fetched, in {delta_secs:.2} s\n{out}"
    );
    assert!(written * 5 < total, "delta wrote {written} of {total} bytes:\n{out}");
    assert!(!copy_dir.join(&junk).exists(), "the table the backup lacks is still there");
    assert!(!copy_dir.join("postmaster.opts").exists());

    // Again over its own result: only the recovery settings differ (backup_label and the signal file are
    // not in the backup, postgresql.auto.conf got the restore's settings).
    let again = setup.strata_ok(&["restore", "--pg-data", copy_dir.to_str().unwrap(), "--delta", "--type", "immediate"]);
    assert!(figure(&again, "wrote ") < 64 * 1024, "{again}");
    assert!(again.contains("changed 1 files"), "{again}");

    let mut copy = PgCluster::for_data_dir(&dir, "copy2", &copy_dir);
    copy.set_start_setting("archive_mode", "off");
    copy.start();
    copy.wait_recovery_end(Duration::from_secs(300));
    assert_eq!(copy.table_digests("postgres"), want, "the delta restore differs from the full one");
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck after the delta restore: {e}");
    }
    LogCheck::postgres().assert_clean(copy.log_file());
}
