//! The cluster of `many-files`: `NTABLES` tables `t_N (id int, v text)` of one row each in database
//! `many`, in `<root>/pgdata`, kept between runs (marker `<root>/ntables`, as bench-many-files.sh).
//!
//! # Why not [`BenchCluster`](super::super::common::BenchCluster)
//! `BenchCluster::open` loads a [`Dataset`](crate::dataset::Dataset) (pgbench, oltp) into database
//! `postgres` and marks the directory with that dataset; this cluster is a different load (tables made
//! `BATCH` per `DO` block, which needs `max_locks_per_transaction = 1024`) in its own database. So this
//! is the same thing on the same harness pieces (initdb as postgres, an included settings file, a harness
//! [`PgCluster`] on the kept data directory) with its own loader and marker. A `BenchCluster` constructor
//! taking a loader closure and a marker id would make this file unnecessary.

use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use strata_integration::PgCluster;

use super::super::common::{init_data_dir, log, wait_archive_idle, write_included_conf, Workspace};

/// The database holding the tables.
pub const DB: &str = "many";

/// The settings the script wrote into `manyfiles.conf` (port and sockets are the harness's `-c` options).
const SETTINGS: [(&str, &str); 10] = [
    ("shared_buffers", "256MB"),
    ("max_locks_per_transaction", "1024"),
    ("max_wal_size", "2GB"),
    ("min_wal_size", "256MB"),
    ("checkpoint_timeout", "15min"),
    ("wal_level", "replica"),
    ("archive_mode", "on"),
    ("max_wal_senders", "10"),
    ("log_checkpoints", "on"),
    ("log_line_prefix", "%m [%p] "),
];

/// The kept cluster and the harness handle that runs it (stopped by pid on Drop).
pub struct ManyCluster {
    pg: PgCluster,
    data_dir: PathBuf,
}

impl ManyCluster {
    /// The cluster holding `ntables` tables: the kept one with `reuse` when its marker says so, else a new
    /// one (initdb -k, then the tables, `batch` per transaction, then a checkpoint). Returned stopped.
    pub fn open(ws: &Workspace, ntables: u32, batch: u32, reuse: bool) -> Result<ManyCluster> {
        let data_dir = ws.path("pgdata");
        let marker = ws.path("ntables");
        let reusable = data_dir.join("PG_VERSION").is_file()
            && fs::read_to_string(&marker)
                .map(|m| m.trim() == ntables.to_string())
                .unwrap_or(false);
        if reuse && reusable {
            log(format!(
                "--reuse: reusing the {ntables}-table cluster in {}",
                data_dir.display()
            ));
            return ManyCluster::handle(ws, data_dir);
        }
        if reuse {
            log(format!(
                "--reuse but no {ntables}-table cluster in {}: creating one",
                data_dir.display()
            ));
        }
        init_data_dir(
            &data_dir,
            &marker,
            "manyfiles.conf",
            &ws.fresh_log("initdb.log"),
        )?;

        // While loading, WAL is thrown away: no repository exists yet, and the load's WAL is not measured.
        let mut cluster = ManyCluster::handle(ws, data_dir)?;
        cluster.start("/bin/true")?;
        cluster.sql("postgres", &format!("CREATE DATABASE {DB}"))?;
        log(format!(
            "creating {ntables} tables (id int, v text) of one row each, {batch} per transaction"
        ));
        let t0 = Instant::now();
        let mut lo = 1u32;
        while lo <= ntables {
            let hi = lo.saturating_add(batch - 1).min(ntables);
            let sql = format!(
                "DO $$ BEGIN FOR i IN {lo}..{hi} LOOP
                    EXECUTE format('CREATE TABLE t_%s (id int, v text)', i);
                    EXECUTE format('INSERT INTO t_%s VALUES (%s, ''row %s'')', i, i, i);
                END LOOP; END $$"
            );
            cluster
                .sql(DB, &sql)
                .with_context(|| format!("creating tables {lo}..{hi} failed"))?;
            if (hi / batch).is_multiple_of(10) || hi == ntables {
                log(format!(
                    "  {hi}/{ntables} tables ({} s)",
                    t0.elapsed().as_secs()
                ));
            }
            lo = hi + 1;
        }
        cluster.sql("postgres", "CHECKPOINT")?;
        cluster.pg.stop();
        fs::write(&marker, format!("{ntables}\n"))?;
        Ok(cluster)
    }

    fn handle(ws: &Workspace, data_dir: PathBuf) -> Result<ManyCluster> {
        let mut pg = PgCluster::for_data_dir(ws.test_dir(), "pg", &data_dir);
        pg.skip_log_check("a benchmark: the server log is read when a step fails");
        Ok(ManyCluster { pg, data_dir })
    }

    /// Writes `manyfiles.conf` with `archive_command`, starts the server and checks that it took the
    /// command (`SHOW archive_command`).
    pub fn start(&mut self, archive_command: &str) -> Result<()> {
        write_included_conf(
            &self.data_dir.join("manyfiles.conf"),
            "strata-bench many-files",
            SETTINGS,
            archive_command,
        )?;
        self.pg.try_start().map_err(|e| {
            anyhow!(
                "PostgreSQL did not start: {e}\n{}",
                super::super::common::tail(self.pg.log_file(), 20)
            )
        })?;
        log(format!(
            "PostgreSQL started (pid {}, socket {}/.s.PGSQL.{})",
            self.pg.pid().unwrap_or(0),
            self.pg.socket_dir().display(),
            self.pg.port()
        ));
        if self.sql("postgres", "SHOW archive_command")? != archive_command {
            bail!("archive_command was not applied");
        }
        Ok(())
    }

    /// Runs `sql` in database `db` (psql as postgres, tuples only); its output, or the failure.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String> {
        self.pg
            .try_psql_db(db, sql)
            .map_err(|e| anyhow!("psql in database {db} failed: {e}"))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `host=<socket> port=<port> user=postgres dbname=postgres`.
    pub fn conn_string(&self) -> String {
        self.pg.conn_string()
    }

    /// Waits until no WAL waits for archive_command, so that no push runs during the next measurement;
    /// warns after 120 s, as the script did (the same as `BenchCluster::wait_archive_idle`).
    pub fn wait_archive_idle(&self) {
        if !wait_archive_idle(&self.data_dir, Duration::from_secs(120)) {
            log(format!(
                "warning: WAL still waiting for archive_command after 120 s (see {})",
                self.pg.log_file().display()
            ));
        }
    }
}

/// Regular files under `path` (`find -type f | wc -l`: links are not followed); 0 if absent.
pub fn nfiles(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => nfiles(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// The blocks allocated under `path`, bytes (`du -s -B1`); 0 when du fails.
pub fn disk_bytes(path: &Path) -> u64 {
    Command::new("du")
        .args(["-s", "-B1"])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
