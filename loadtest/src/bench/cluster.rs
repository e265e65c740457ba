//! The PostgreSQL cluster a benchmark measures, kept in `<root>/pgdata` between runs (see `common`'s
//! docs for why), and the pieces another benchmark's own cluster shares: initdb, the included settings
//! file, the wait for the archiver to be idle.

use anyhow::{anyhow, Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_integration::pg::{conf_quote, pg_bin};
use strata_integration::{poll, PgCluster};

use super::common::{as_postgres, chown_postgres, log, run_logged, Workspace};
use crate::dataset::Dataset;

/// Writes the file postgresql.conf includes (see [`init_data_dir`]): a header naming `writer`, the
/// `settings`, then `archive_command`; owned by postgres.
pub fn write_included_conf<'a>(
    path: &Path,
    writer: &str,
    settings: impl IntoIterator<Item = (&'a str, &'a str)>,
    archive_command: &str,
) -> Result<()> {
    let mut text = format!("# Written by {writer} at every run; included from postgresql.conf.\n");
    for (k, v) in settings {
        text.push_str(&format!("{k} = {}\n", conf_quote(v)));
    }
    text.push_str(&format!(
        "archive_command = {}\n",
        conf_quote(archive_command)
    ));
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    chown_postgres(path)
}

/// A new data directory in place of `data_dir` and its dataset `marker` (both removed first): `initdb -k`
/// as postgres (superuser postgres, trust, UTF8, C locale; output appended to `initdb_log`), with
/// `include_if_exists = '<include>'` appended to postgresql.conf for the benchmark's own settings.
pub fn init_data_dir(
    data_dir: &Path,
    marker: &Path,
    include: &str,
    initdb_log: &Path,
) -> Result<()> {
    let _ = fs::remove_file(marker);
    if data_dir.exists() {
        fs::remove_dir_all(data_dir)
            .with_context(|| format!("cannot remove {}", data_dir.display()))?;
    }
    log(format!("initdb -k {}", data_dir.display()));
    let mut initdb = as_postgres(pg_bin("initdb"));
    initdb.arg("-D").arg(data_dir).args([
        "-k",
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C",
    ]);
    run_logged(&mut initdb, "initdb", initdb_log)?;
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(data_dir.join("postgresql.conf"))?;
    writeln!(conf, "\ninclude_if_exists = '{include}'")?;
    Ok(())
}

/// The PostgreSQL cluster a benchmark measures, in `<root>/pgdata`, kept between runs (see the module docs).
pub struct BenchCluster {
    pg: PgCluster,
    data_dir: PathBuf,
    settings: Vec<(String, String)>,
}

impl BenchCluster {
    /// Opens the cluster holding `dataset` (with `reuse`, when the marker says it does), or creates and
    /// loads a new one. `settings` go into `loadtest.conf` besides the archiving ones. Returns it running.
    pub fn open(
        ws: &Workspace,
        dataset: Dataset,
        reuse: bool,
        settings: &[(&str, String)],
    ) -> Result<BenchCluster> {
        let marker = ws.path("dataset");
        let id = format!("{} db=postgres+bench", dataset.describe());
        let data_dir = ws.path("pgdata");
        let mut settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        settings.push(("wal_level".into(), "replica".into()));
        settings.push(("archive_mode".into(), "on".into()));
        settings.push(("max_wal_senders".into(), "10".into()));
        settings.push(("log_checkpoints".into(), "on".into()));
        let reusable = data_dir.join("PG_VERSION").is_file()
            && fs::read_to_string(&marker)
                .map(|m| m.trim() == id)
                .unwrap_or(false);
        if reuse && reusable {
            log(format!(
                "--reuse: the {} cluster in {}",
                dataset.describe(),
                data_dir.display()
            ));
            let mut cluster = BenchCluster::handle(ws, data_dir, settings, "/bin/true")?;
            cluster.pg.start();
            return Ok(cluster);
        }
        if reuse {
            log(format!(
                "--reuse, but no {} cluster in {}: creating one",
                dataset.describe(),
                data_dir.display()
            ));
        }
        init_data_dir(&data_dir, &marker, "loadtest.conf", &ws.log("initdb.log"))?;
        // While loading, WAL is thrown away: the load's WAL is not what is measured.
        let mut cluster = BenchCluster::handle(ws, data_dir, settings, "/bin/true")?;
        cluster.pg.start();
        let t0 = Instant::now();
        log(format!("loading {}", dataset.describe()));
        dataset.load(&cluster.pg)?;
        // The bash scripts loaded into a database `bench` beside an empty `postgres`; the data is in
        // `postgres` here, so an empty `bench` keeps the same databases, bytes and files to back up.
        cluster.pg.psql("CREATE DATABASE bench");
        cluster.pg.psql("CHECKPOINT");
        log(format!("loaded in {:.1} s", t0.elapsed().as_secs_f64()));
        fs::write(&marker, format!("{id}\n"))?;
        Ok(cluster)
    }

    fn handle(
        ws: &Workspace,
        data_dir: PathBuf,
        settings: Vec<(String, String)>,
        archive: &str,
    ) -> Result<BenchCluster> {
        let mut pg = PgCluster::for_data_dir(ws.test_dir(), "pg", &data_dir);
        // A benchmark reports figures; a test's log check (which fails the test) is not for it.
        pg.skip_log_check("a benchmark, not a test");
        let cluster = BenchCluster {
            pg,
            data_dir,
            settings,
        };
        cluster.write_conf(archive)?;
        Ok(cluster)
    }

    fn write_conf(&self, archive_command: &str) -> Result<()> {
        write_included_conf(
            &self.data_dir.join("loadtest.conf"),
            "strata-bench",
            self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            archive_command,
        )
    }

    /// The server handle (start, stop, psql, port, socket).
    pub fn pg(&self) -> &PgCluster {
        &self.pg
    }

    /// The server handle, mutable (start, stop).
    pub fn pg_mut(&mut self) -> &mut PgCluster {
        &mut self.pg
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `host=<socket> port=<port> user=postgres dbname=postgres`.
    pub fn conn_string(&self) -> String {
        self.pg.conn_string()
    }

    /// Sets `archive_command` (rewrites loadtest.conf and reloads), and checks that the server took it.
    pub fn set_archive_command(&mut self, command: &str) -> Result<()> {
        self.write_conf(command)?;
        if self.pg.is_running() {
            self.pg.psql("SELECT pg_reload_conf()");
            let want = command.to_string();
            poll(Duration::from_secs(30), Duration::from_millis(50), || {
                (self.pg.psql("SHOW archive_command") == want).then_some(())
            })
            .ok_or_else(|| anyhow!("archive_command was not applied after a reload"))?;
        }
        Ok(())
    }

    /// Sum of `pg_database_size` over all databases.
    pub fn db_bytes(&self) -> u64 {
        self.pg
            .psql("SELECT sum(pg_database_size(oid))::bigint FROM pg_database")
            .parse()
            .unwrap_or(0)
    }

    /// Waits until no WAL waits for archive_command (no `.ready` file), so no push runs during the next
    /// measurement; false after `timeout`.
    pub fn wait_archive_idle(&self, timeout: Duration) -> bool {
        wait_archive_idle(&self.data_dir, timeout)
    }
}

/// Waits until no WAL of the cluster in `data_dir` waits for archive_command (no `.ready` file in
/// `pg_wal/archive_status`), so no push runs during the next measurement; false after `timeout`.
pub fn wait_archive_idle(data_dir: &Path, timeout: Duration) -> bool {
    let status = data_dir.join("pg_wal/archive_status");
    poll(timeout, Duration::from_millis(100), || {
        let busy = fs::read_dir(&status)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".ready")))
            .unwrap_or(false);
        (!busy).then_some(())
    })
    .is_some()
}
