//! The datasets of the load tests (as the bash benchmarks' `lib.sh` made them): "pgbench" (`pgbench -i -s N`) and "oltp" (`oltp.sql`, the
//! compression-bound table mix), and their churn (pgbench's TPC-B, `oltp-churn.sql`). Same SQL files,
//! same sizing rule (`OLTP_FIXED_BYTES`, `OLTP_BYTES_PER_CUSTOMER`), same two parallel load sessions; the
//! database is `postgres` rather than `bench`.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use strata_integration::{command_as_postgres, pg::pg_bin, PgCluster};

/// `loadtest/oltp.sql`.
pub const OLTP_SQL: &str = include_str!("../oltp.sql");
/// `loadtest/oltp-churn.sql`.
pub const OLTP_CHURN_SQL: &str = include_str!("../oltp-churn.sql");
/// Bytes of an empty database plus `oltp_words` (lib.sh).
pub const OLTP_FIXED_BYTES: u64 = 12_000_000;
/// Tables and indexes per customer (lib.sh, measured at 150 MB).
pub const OLTP_BYTES_PER_CUSTOMER: u64 = 7_930;

/// What the database holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dataset {
    /// `pgbench -i -s scale`.
    Pgbench { scale: u32 },
    /// `oltp.sql` sized to about `mb` MB.
    Oltp { mb: u32 },
}

impl Dataset {
    /// "pgbench scale=10", "oltp mb=200".
    pub fn describe(&self) -> String {
        match self {
            Dataset::Pgbench { scale } => format!("pgbench scale={scale}"),
            Dataset::Oltp { mb } => format!("oltp mb={mb}"),
        }
    }

    /// Fills the (running, empty) cluster.
    pub fn load(&self, pg: &PgCluster) -> Result<()> {
        match *self {
            Dataset::Pgbench { scale } => {
                pg.pgbench_init(scale);
                Ok(())
            }
            Dataset::Oltp { mb } => {
                if mb < 20 {
                    bail!("--oltp-mb must be at least 20");
                }
                let ncust =
                    (u64::from(mb) * 1_000_000 - OLTP_FIXED_BYTES) / OLTP_BYTES_PER_CUSTOMER;
                let step = |schema: u8, p1: u8, p2: u8, finish: u8| {
                    // psql's -v, as \set lines ahead of the file (the harness's psql reads the script on stdin).
                    let script = format!(
                        "\\set ncust {ncust}\n\\set schema {schema}\n\\set part1 {p1}\n\\set part2 {p2}\n\\set finish {finish}\n{OLTP_SQL}"
                    );
                    pg.try_psql_db("postgres", &script)
                        .map(|_| ())
                        .map_err(|e| anyhow::anyhow!("oltp.sql: {e}"))
                };
                step(1, 0, 0, 0)?;
                std::thread::scope(|s| {
                    let a = s.spawn(|| step(0, 1, 0, 0));
                    let b = s.spawn(|| step(0, 0, 1, 0));
                    a.join().expect("oltp part1 thread")?;
                    b.join().expect("oltp part2 thread")
                })?;
                step(0, 0, 0, 1)
            }
        }
    }

    /// Writes what the churn needs into `dir` (readable by postgres).
    pub fn prepare_churn(&self, dir: &Path) -> Result<()> {
        if let Dataset::Oltp { .. } = self {
            let path = dir.join("oltp-churn.sql");
            std::fs::write(&path, OLTP_CHURN_SQL)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// `pgbench -n -T secs -c clients` with this dataset's churn script: TPC-B for pgbench, oltp-churn.sql
    /// (over the customers and orders that exist now) for oltp; output to `log`. Spawn it from the database
    /// host's thread, so that it runs there.
    pub fn churn_command(
        &self,
        pg: &PgCluster,
        dir: &Path,
        secs: u32,
        clients: u32,
        log: &Path,
    ) -> Result<Command> {
        let mut cmd = command_as_postgres(pg_bin("pgbench"));
        cmd.args([
            "-n",
            "-T",
            &secs.to_string(),
            "-c",
            &clients.to_string(),
            "-j",
            &clients.clamp(1, 2).to_string(),
        ]);
        if let Dataset::Oltp { .. } = self {
            let ncust = pg.psql("SELECT max(id) FROM customers");
            let norders = pg.psql("SELECT max(id) FROM orders");
            cmd.arg("-f").arg(dir.join("oltp-churn.sql"));
            cmd.args([
                "-D",
                &format!("ncust={ncust}"),
                "-D",
                &format!("norders={norders}"),
            ]);
        }
        cmd.arg("-h").arg(pg.socket_dir()).args([
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "postgres",
        ]);
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        Ok(cmd)
    }
}
