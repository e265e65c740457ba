//! pgBackRest as the peer of `full`, `incr` and `verify`: its config for the bench cluster, its
//! repository, its version, and the `archive_command` that pushes every WAL segment with both tools. Out
//! of common.rs because it is one tool's plumbing that only the Strata-against-pgBackRest benchmarks use.

use anyhow::Result;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_integration::StrataBins;

use super::common::{
    as_postgres, chown_postgres, output_of, run_logged, wipe_dir, BenchCluster, Workspace, STANZA,
};

/// How pgBackRest compresses and how many processes it uses.
#[derive(Debug, Clone)]
pub struct PgbrOptions {
    /// `compress-type` (zst).
    pub compress_type: String,
    /// `compress-level` (1).
    pub compress_level: u32,
    /// `process-max` (2).
    pub process_max: u32,
}

/// pgBackRest, configured for the bench cluster, with its repository in `<dir>/repo`.
pub struct Pgbackrest {
    conf: PathBuf,
    repo: PathBuf,
}

impl Pgbackrest {
    /// Writes `<dir>/pgbackrest.conf` (as bench-full.sh did) and its log, lock and spool directories.
    pub fn configure(dir: &Path, cluster: &BenchCluster, opts: &PgbrOptions) -> Result<Pgbackrest> {
        for sub in ["", "log", "lock", "spool", "repo"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d)?;
            chown_postgres(&d)?;
        }
        let pg = cluster.pg();
        let conf = dir.join("pgbackrest.conf");
        let text = format!(
            "[global]\nrepo1-path={repo}\nrepo1-retention-full=99\nlog-path={d}/log\nlock-path={d}/lock\n\
             spool-path={d}/spool\nlog-level-console=warn\nlog-level-file=info\nstart-fast=y\n\
             compress-type={ct}\ncompress-level={cl}\nprocess-max={pm}\ndelta=n\n\n[{STANZA}]\npg1-path={data}\n\
             pg1-port={port}\npg1-socket-path={sock}\npg1-user=postgres\n",
            repo = dir.join("repo").display(),
            d = dir.display(),
            ct = opts.compress_type,
            cl = opts.compress_level,
            pm = opts.process_max,
            data = cluster.data_dir().display(),
            port = pg.port(),
            sock = pg.socket_dir().display(),
        );
        fs::write(&conf, text)?;
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o644))?;
        Ok(Pgbackrest {
            conf,
            repo: dir.join("repo"),
        })
    }

    /// `pgbackrest --config=… --stanza=bench` as postgres; add the subcommand and its options.
    pub fn command(&self) -> Command {
        let mut cmd = as_postgres("pgbackrest");
        cmd.arg(format!("--config={}", self.conf.display()))
            .arg(format!("--stanza={STANZA}"));
        cmd
    }

    /// The config file.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The repository directory.
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// Empties the repository.
    pub fn wipe_repo(&self) -> Result<()> {
        wipe_dir(&self.repo)
    }

    /// `pgbackrest stanza-create`.
    pub fn stanza_create(&self, log: &Path) -> Result<()> {
        run_logged(
            self.command().arg("stanza-create"),
            "pgbackrest stanza-create",
            log,
        )
    }

    /// `pgbackrest version`.
    pub fn version() -> String {
        output_of(
            Command::new("pgbackrest").arg("version"),
            "pgbackrest version",
        )
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "pgBackRest ?".into())
    }
}

/// Writes the archive_command both tools' backups need: `strata archive-push`, then `pgbackrest
/// archive-push`, both must succeed (each push's durations go to `logs/archive-push.log`). The name holds
/// "pgbackrest" (pgbackrest check refuses an archive_command without it) and "archive-push" (strata check).
/// Returns `"<path> %p"`.
pub fn archive_both_command(
    ws: &Workspace,
    bins: &StrataBins,
    strata_config: &Path,
    pgbr: &Pgbackrest,
) -> Result<String> {
    let dir = ws.path("bin");
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    let path = dir.join("archive-push-strata-pgbackrest.sh");
    let script = format!(
        "#!/bin/sh\n# archive_command of the benchmarks (written by strata-bench): strata, then pgbackrest; both must succeed.\n\
         p=$1\nt0=$(date +%s.%N)\n\
         {strata} --config {cfg} --stanza {STANZA} archive-push \"$p\" || {{ echo \"archive-push-strata-pgbackrest: strata archive-push $p failed\" >&2; exit 1; }}\n\
         t1=$(date +%s.%N)\n\
         pgbackrest --config={brconf} --stanza={STANZA} archive-push \"$p\" || {{ echo \"archive-push-strata-pgbackrest: pgbackrest archive-push $p failed\" >&2; exit 1; }}\n\
         t2=$(date +%s.%N)\n\
         awk -v f=\"${{p##*/}}\" -v a=\"$t0\" -v b=\"$t1\" -v c=\"$t2\" 'BEGIN {{ printf \"%s strata_s=%.3f pgbackrest_s=%.3f\\n\", f, b - a, c - b }}' >>{log}\n",
        strata = bins.path("strata").display(),
        cfg = strata_config.display(),
        brconf = pgbr.conf().display(),
        log = ws.log("archive-push.log").display(),
    );
    fs::write(&path, script)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    let log = ws.log("archive-push.log");
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    chown_postgres(&log)?;
    Ok(format!("{} %p", path.display()))
}
