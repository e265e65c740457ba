//! Scenario helpers shared by the end-to-end tests: a cluster wired to a Strata config, the services of
//! a NATS deployment, running the CLI, and snapshots of a repository.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use strata_integration::*;

pub const STANZA: &str = "main";

/// A PostgreSQL cluster whose WAL is archived by Strata, and the config that connects them.
pub struct Setup {
    pub dir: TestDir,
    pub bins: StrataBins,
    pub config: PathBuf,
    pub repo: PathBuf,
    pub pg: PgCluster,
}

impl Setup {
    /// Creates the cluster (data checksums on), the repository and the config (`bus` is "local" or a NATS
    /// URL; `pipeline` is extra TOML for the `[pipeline]` table), starts the cluster. No stanza yet.
    pub fn new(dir: &TestDir, bus: &str, pipeline: &str, pg_settings: &[(&str, &str)]) -> Setup {
        let bins = StrataBins::locate();
        let repo = dir.subdir("repo");
        let config = dir.path().join(strata_integration::config::CONFIG_FILE_NAME);
        let mut opts = PgOptions::new(bins.archive_push_command(&config, STANZA));
        for (k, v) in pg_settings {
            opts = opts.setting(*k, *v);
        }
        let mut pg = PgCluster::init(dir, opts);
        write_config(dir.path(), bus, STANZA, pg.data_dir(), &pg.conn_string(), &repo);
        if !pipeline.is_empty() {
            let mut f = std::fs::OpenOptions::new().append(true).open(&config).unwrap();
            writeln!(f, "\n[pipeline]\n{pipeline}").unwrap();
        }
        pg.start();
        Setup { dir: dir.clone(), bins, config, repo, pg }
    }

    /// Runs `strata <args>` as postgres and returns its output.
    pub fn strata(&self, args: &[&str]) -> Output {
        self.strata_env(args, &[])
    }

    pub fn strata_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.bins.strata_cmd(&self.config, STANZA);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap_or_else(|e| panic!("cannot run strata {args:?}: {e}"))
    }

    /// Runs `strata <args>` and panics with its output unless it succeeds.
    pub fn strata_ok(&self, args: &[&str]) -> String {
        let out = self.strata(args);
        assert!(out.status.success(), "strata {args:?} failed:\n{}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `strata <args>`, expects it to fail with exactly one `error:` line on stderr, and returns it.
    pub fn strata_fails(&self, args: &[&str]) -> String {
        expect_one_error_line(&self.strata(args), args)
    }

    /// `backup --type <kind>`; returns the new backup's label.
    pub fn backup(&self, kind: &str) -> String {
        let out = self.strata_ok(&["backup", "--type", kind]);
        assert!(out.starts_with(&format!("{kind} backup ")), "{out}");
        out.split_whitespace().nth(2).expect("label").to_string()
    }

    /// `info --output json`, parsed.
    pub fn info(&self) -> serde_json::Value {
        let text = self.strata_ok(&["info", "--output", "json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("info printed invalid JSON ({e}):\n{text}"))
    }

    pub fn backup_labels(&self) -> Vec<String> {
        self.info()[0]["backups"]
            .as_array()
            .expect("backups is an array")
            .iter()
            .map(|b| b["label"].as_str().expect("label").to_string())
            .collect()
    }

    /// Restores the newest backup into a new directory, starts PostgreSQL on it (not archiving), waits until
    /// recovery ends and returns the running copy.
    pub fn restore_and_start(&self, name: &str, extra: &[&str]) -> PgCluster {
        let target = self.dir.path().join(name);
        let mut args = vec!["restore", "--pg-data", target.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.strata_ok(&args);
        let mut copy = PgCluster::for_data_dir(&self.dir, name, &target);
        // The copy must not archive into the source's stanza as if it were the source.
        copy.set_start_setting("archive_mode", "off");
        copy.start();
        copy.wait_recovery_end(Duration::from_secs(300));
        copy
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn expect_one_error_line(out: &Output, what: &[&str]) -> String {
    assert!(!out.status.success(), "strata {what:?} should have failed:\n{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "strata {what:?} should print one error line:\n{}", describe(out));
    assert!(lines[0].starts_with("error: "), "strata {what:?}: {}", lines[0]);
    lines[0].to_string()
}

/// Every object of a repository with its contents (compared byte for byte). Temporary files of writes in
/// progress are left out, and a file that vanishes while the snapshot is taken (a temporary file renamed
/// away under a running backup) is skipped.
pub fn snapshot(repo: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.insert(p.strip_prefix(repo).unwrap().display().to_string(), bytes);
            }
        }
    }
    out
}

/// Every committed backup record in a repository.
pub fn records(repo: &Path) -> Vec<String> {
    snapshot(repo).into_keys().filter(|k| k.ends_with(".record")).collect()
}

/// The services of a NATS deployment, each a separate process.
pub struct Services {
    pub collector: Service,
    pub sealer: Service,
    pub uploader: Service,
}

impl Services {
    pub fn start(setup: &Setup) -> Services {
        let log = setup.dir.path();
        let mut s = Services {
            collector: Service::spawn(&setup.bins, "strata-collector", &setup.config, log),
            sealer: Service::spawn(&setup.bins, "strata-sealer", &setup.config, log),
            uploader: Service::spawn(&setup.bins, "strata-uploader", &setup.config, log),
        };
        s.collector.wait_for_log("collector running", Duration::from_secs(30));
        s.sealer.wait_for_log("sealer running", Duration::from_secs(30));
        s.uploader.wait_for_log("uploader running", Duration::from_secs(30));
        s
    }
}

/// Source and restored copy hold the same rows in every table of `db`.
pub fn assert_same_tables(source: &PgCluster, copy: &PgCluster, db: &str) {
    let a = source.table_digests(db);
    let b = copy.table_digests(db);
    assert!(!a.is_empty(), "the source has no tables to compare in {db}");
    assert_eq!(a, b, "restored tables differ from the source's in {db}");
}
