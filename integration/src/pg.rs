//! A real PostgreSQL 15 cluster per test: initdb'd (or restored) in the test directory, reachable on a
//! unix socket in that directory and on a reserved loopback port, stopped through its own pid.
//!
//! Modelled on neon's `wal_craft` (`Conf::initdb`, a server on a unix socket in a tmpdir, stop on Drop).
//!
//! # Layout
//! For a cluster named `NAME` in test directory `T`:
//! - `T/NAME/data`: the data directory (for [`PgCluster::for_data_dir`], wherever the restore put it);
//! - `T/NAME/sock`: `unix_socket_directories`, the `host=` of [`PgCluster::conn_string`];
//! - `T/NAME/postgresql.log`: the server log (`pg_ctl -l`);
//! - `T/NAME/pgbench-N.log`: output of background pgbench runs.
//!
//! # Users
//! PostgreSQL runs as the `postgres` OS user (see [`crate::os_user`]); so do the client tools here, with
//! `trust` authentication as database user `postgres`.
//!
//! # Settings
//! A fresh cluster gets its settings appended to `postgresql.conf` (so they are also what a backup
//! carries). A cluster started on an existing data directory keeps that directory's config files
//! untouched (they are part of what a restore test checks) and gets only port, sockets and logging as
//! `-c` options on the postmaster command line, which take precedence over the files.
//!
//! # Stopping
//! [`PgCluster::stop`] sends SIGINT (fast shutdown) to the pid in `postmaster.pid`, SIGQUIT (immediate)
//! if it is still up after [`STOP_GRACE`], then SIGKILL. Drop does the same. Never `pg_ctl stop` by data
//! directory name guessing, never by process name.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::logcheck::{LogCheck, LogCheckOnDrop};
use crate::os_user::{chown_tree_to_postgres, command_as_postgres};
use crate::ports::{reserve_port, Port};
use crate::process::{
    kill_child, log_tail, pid_alive, run, run_with_stdin, send_signal, stop_child, wait_child,
    wait_pid_gone, CommandError, POLL_INTERVAL,
};
use crate::testdir::TestDir;

/// Where Debian's postgresql-15 package puts the server binaries.
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// Environment variable that overrides [`DEFAULT_PG_BIN_DIR`].
pub const PG_BIN_DIR_ENV: &str = "STRATA_PG_BIN_DIR";
/// How long a fast shutdown may take before the harness escalates to an immediate one.
pub const STOP_GRACE: Duration = Duration::from_secs(60);
/// Default for how long `pg_ctl start -w` waits. Generous, because a restored cluster may replay a lot of
/// WAL before it accepts connections.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(300);

/// Path of a PostgreSQL 15 program; panics with an install hint when it is missing.
pub fn pg_bin(program: &str) -> PathBuf {
    let dir = std::env::var_os(PG_BIN_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_PG_BIN_DIR.into());
    let path = dir.join(program);
    if !path.is_file() {
        panic!(
            "PostgreSQL 15 program {} is missing: install postgresql-15 (scripts/install-deps.sh) \
             or point {PG_BIN_DIR_ENV} at its bin directory",
            path.display()
        );
    }
    path
}

/// Quotes a value as a postgresql.conf string literal. Every setting may be written quoted, so the
/// harness always quotes and callers pass plain values (`"60s"`, `"on"`, a command line).
pub fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a string for `sh` (pg_ctl hands its `-o` options to a shell).
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Options for [`PgCluster::init`]. The archive command has no default on purpose: a cluster that
/// silently cannot archive (`/bin/false`) makes archive tests wait out their deadlines instead of failing.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Subdirectory of the test directory, and the cluster's name in messages. Default `pg`.
    pub name: String,
    /// `archive_command`, written as is (PostgreSQL substitutes `%p` and `%f`).
    pub archive_command: String,
    /// `max_wal_senders`. Default 10.
    pub max_wal_senders: u32,
    /// Further settings, appended after the harness's own (so they override them), quoted by the harness.
    pub settings: Vec<(String, String)>,
    /// How long `start()` waits for the server to accept connections.
    pub start_timeout: Duration,
}

impl PgOptions {
    /// Options with the given `archive_command` and defaults for the rest.
    pub fn new(archive_command: impl Into<String>) -> PgOptions {
        PgOptions {
            name: "pg".to_string(),
            archive_command: archive_command.into(),
            max_wal_senders: 10,
            settings: Vec::new(),
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    /// Sets the cluster's name (its subdirectory); needed when one test runs several clusters.
    pub fn name(mut self, name: impl Into<String>) -> PgOptions {
        self.name = name.into();
        self
    }

    /// Sets `max_wal_senders`.
    pub fn max_wal_senders(mut self, n: u32) -> PgOptions {
        self.max_wal_senders = n;
        self
    }

    /// Adds a postgresql.conf setting; `value` is plain text, quoted by the harness.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> PgOptions {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Sets how long `start()` waits.
    pub fn start_timeout(mut self, timeout: Duration) -> PgOptions {
        self.start_timeout = timeout;
        self
    }
}

/// A PostgreSQL 15 cluster owned by one test. See the module docs.
#[derive(Debug)]
pub struct PgCluster {
    name: String,
    home: PathBuf,
    data_dir: PathBuf,
    sock_dir: PathBuf,
    log_file: PathBuf,
    port: Port,
    /// `-c name=value` options for the postmaster, used for clusters on existing data directories.
    start_settings: Vec<(String, String)>,
    start_timeout: Duration,
    /// Pid recorded after the last successful start, for when postmaster.pid is already gone.
    pid: Option<i32>,
    bench_runs: AtomicUsize,
    /// Run on the server log when the handle is dropped (see [`LogCheckOnDrop`]).
    log_check: LogCheckOnDrop,
    _test_dir: TestDir,
}

impl PgCluster {
    /// Runs initdb (as `postgres`, with data checksums, trust auth, UTF8, C locale) into
    /// `<test dir>/<opts.name>/data` and writes the settings listed in the module docs. Does not start it.
    pub fn init(dir: &TestDir, opts: PgOptions) -> PgCluster {
        let home = dir.subdir(&opts.name);
        let data_dir = home.join("data");
        assert!(
            !data_dir.exists(),
            "cluster {} already exists at {}",
            opts.name,
            data_dir.display()
        );
        let mut cluster =
            PgCluster::new_handle(dir, &opts.name, home, data_dir, opts.start_timeout);

        let mut initdb = command_as_postgres(pg_bin("initdb"));
        initdb
            .arg("-D")
            .arg(&cluster.data_dir)
            .args([
                "--data-checksums",
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
            ])
            // Skips initdb's final fsync of the new files: that only matters if the OS crashes, which no
            // test simulates. fsync stays on for the running server.
            .arg("--no-sync");
        if let Err(e) = run(&mut initdb) {
            panic!("initdb for cluster {} failed: {e}", cluster.name);
        }

        let mut settings: Vec<(String, String)> = vec![
            ("port".into(), cluster.port().to_string()),
            ("listen_addresses".into(), "127.0.0.1".into()),
            (
                "unix_socket_directories".into(),
                cluster.sock_dir.display().to_string(),
            ),
            ("wal_level".into(), "replica".into()),
            ("archive_mode".into(), "on".into()),
            ("archive_command".into(), opts.archive_command.clone()),
            ("max_wal_senders".into(), opts.max_wal_senders.to_string()),
            ("fsync".into(), "on".into()),
            ("shared_buffers".into(), "128MB".into()),
            // pg_ctl -l collects stderr into the log file; the collector would move it into the data
            // directory, where it would end up in backups.
            ("logging_collector".into(), "off".into()),
            ("log_line_prefix".into(), "%m [%p] %q%u@%d ".into()),
            ("log_checkpoints".into(), "on".into()),
        ];
        settings.extend(opts.settings.iter().cloned());
        let mut conf = String::from("\n# Written by strata-integration (PgCluster::init)\n");
        for (name, value) in &settings {
            conf.push_str(&format!("{name} = {}\n", conf_quote(value)));
        }
        let conf_path = cluster.data_dir.join("postgresql.conf");
        fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .unwrap_or_else(|e| panic!("cannot append settings to {}: {e}", conf_path.display()));
        cluster.start_settings.clear();
        cluster
    }

    /// A cluster on an existing data directory (a restore target), with its socket and log in
    /// `<test dir>/<name>/`. Gives the directory to `postgres` and sets it to mode 0700, as PostgreSQL
    /// demands. Its config files are left as the restore wrote them; port, sockets and logging are passed
    /// on the command line. Does not start it.
    pub fn for_data_dir(dir: &TestDir, name: &str, data_dir: impl AsRef<Path>) -> PgCluster {
        let data_dir = data_dir.as_ref().to_path_buf();
        assert!(
            data_dir.join("PG_VERSION").is_file(),
            "{} is not a PostgreSQL data directory (no PG_VERSION)",
            data_dir.display()
        );
        chown_tree_to_postgres(&data_dir)
            .unwrap_or_else(|e| panic!("cannot chown {} to postgres: {e}", data_dir.display()));
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("cannot chmod 0700 {}: {e}", data_dir.display()));
        let home = dir.subdir(name);
        PgCluster::new_handle(dir, name, home, data_dir, DEFAULT_START_TIMEOUT)
    }

    fn new_handle(
        dir: &TestDir,
        name: &str,
        home: PathBuf,
        data_dir: PathBuf,
        start_timeout: Duration,
    ) -> PgCluster {
        let sock_dir = dir.subdir(Path::new(name).join("sock"));
        let port = reserve_port();
        let start_settings = vec![
            ("port".to_string(), port.get().to_string()),
            ("listen_addresses".to_string(), "127.0.0.1".to_string()),
            (
                "unix_socket_directories".to_string(),
                sock_dir.display().to_string(),
            ),
            ("logging_collector".to_string(), "off".to_string()),
        ];
        PgCluster {
            name: name.to_string(),
            log_file: home.join("postgresql.log"),
            home,
            data_dir,
            sock_dir,
            port,
            start_settings,
            start_timeout,
            pid: None,
            bench_runs: AtomicUsize::new(0),
            log_check: LogCheckOnDrop::new(LogCheck::postgres()),
            _test_dir: dir.clone(),
        }
    }

    /// Allows server log lines matching `pattern` (a regex) in the check this handle runs when dropped.
    pub fn allow_log(&mut self, pattern: &str) -> &mut PgCluster {
        self.log_check.allow(pattern);
        self
    }

    /// Leaves this server's log unchecked when dropped; `why` is for the reader of the test.
    pub fn skip_log_check(&mut self, why: &str) -> &mut PgCluster {
        self.log_check.skip(why);
        self
    }

    /// Adds a `-c name=value` option for the next starts (overriding the config files). Use it on a
    /// restored cluster, e.g. to point its `archive_command` at a second repository.
    pub fn set_start_setting(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.start_settings.push((name.into(), value.into()));
    }

    /// Sets how long `start()` waits for the server.
    pub fn set_start_timeout(&mut self, timeout: Duration) {
        self.start_timeout = timeout;
    }

    /// The cluster's name (its subdirectory of the test directory).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The unix socket directory (`host=` in connection strings).
    pub fn socket_dir(&self) -> &Path {
        &self.sock_dir
    }

    /// The TCP port on 127.0.0.1, also the socket's port number.
    pub fn port(&self) -> u16 {
        self.port.get()
    }

    /// The server log.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// libpq keyword/value connection string for database `postgres` over the unix socket.
    pub fn conn_string(&self) -> String {
        self.conn_string_db("postgres")
    }

    /// libpq keyword/value connection string for database `db` over the unix socket.
    pub fn conn_string_db(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.sock_dir.display(),
            self.port()
        )
    }

    /// Starts the server with `pg_ctl start -w` as `postgres`; panics with the log's tail if it does not
    /// come up within the start timeout.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!(
                "cluster {} did not start: {e}\n{}",
                self.name,
                log_tail(&self.log_file, 40)
            );
        }
    }

    /// Like [`PgCluster::start`] but returns the failure, for tests where a start is expected to fail
    /// (for example a restore that left an unusable data directory).
    pub fn try_start(&mut self) -> Result<(), CommandError> {
        assert!(
            !self.is_running(),
            "cluster {} is already running",
            self.name
        );
        let options: Vec<String> = self
            .start_settings
            .iter()
            .map(|(k, v)| format!("-c {}", sh_quote(&format!("{k}={v}"))))
            .collect();
        let mut pg_ctl = command_as_postgres(pg_bin("pg_ctl"));
        pg_ctl
            .arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .arg("-w")
            .arg("-t")
            .arg(self.start_timeout.as_secs().max(1).to_string());
        if !options.is_empty() {
            pg_ctl.arg("-o").arg(options.join(" "));
        }
        // pg_ctl hands the postmaster /dev/null and the log file, so capturing its own output cannot hang.
        run(&mut pg_ctl)?;
        self.pid = self.postmaster_pid();
        Ok(())
    }

    /// The postmaster's pid from `postmaster.pid`, if the file exists and names a live process.
    pub fn pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        pid_alive(pid).then_some(pid)
    }

    fn postmaster_pid(&self) -> Option<i32> {
        self.pid().or(self.pid.filter(|p| pid_alive(*p)))
    }

    /// True while the postmaster is alive.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// Fast shutdown (SIGINT); escalates to immediate (SIGQUIT) after [`STOP_GRACE`] and to SIGKILL after
    /// that. A no-op if the server is not running.
    pub fn stop(&mut self) {
        self.stop_with(libc::SIGINT, STOP_GRACE);
    }

    /// Immediate shutdown (SIGQUIT): no checkpoint, so the next start runs crash recovery. For crash tests.
    pub fn stop_immediate(&mut self) {
        self.stop_with(libc::SIGQUIT, Duration::from_secs(30));
    }

    fn stop_with(&mut self, signal: libc::c_int, grace: Duration) {
        let Some(pid) = self.postmaster_pid() else {
            self.pid = None;
            return;
        };
        send_signal(pid, signal).unwrap_or_else(|e| panic!("cannot signal postmaster {pid}: {e}"));
        if !wait_pid_gone(pid, grace) {
            eprintln!(
                "cluster {}: postmaster {pid} still up {grace:?} after signal {signal}; SIGQUIT",
                self.name
            );
            send_signal(pid, libc::SIGQUIT)
                .unwrap_or_else(|e| panic!("cannot SIGQUIT postmaster {pid}: {e}"));
            if !wait_pid_gone(pid, Duration::from_secs(30)) {
                eprintln!(
                    "cluster {}: postmaster {pid} ignored SIGQUIT; SIGKILL",
                    self.name
                );
                send_signal(pid, libc::SIGKILL)
                    .unwrap_or_else(|e| panic!("cannot SIGKILL postmaster {pid}: {e}"));
                assert!(
                    wait_pid_gone(pid, Duration::from_secs(30)),
                    "postmaster {pid} survived SIGKILL"
                );
            }
        }
        self.pid = None;
    }

    /// Waits until the server accepts connections (`pg_isready`), failing fast if the postmaster dies.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut isready = command_as_postgres(pg_bin("pg_isready"));
            isready.arg("-h").arg(&self.sock_dir).args([
                "-p",
                &self.port().to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-t",
                "1",
            ]);
            let last = match run(&mut isready) {
                Ok(_) => return,
                Err(e) => e,
            };
            self.assert_alive("waiting for it to accept connections");
            if Instant::now() >= deadline {
                panic!(
                    "cluster {} not ready after {timeout:?}: {last}\n{}",
                    self.name,
                    log_tail(&self.log_file, 40)
                );
            }
            thread::sleep(POLL_INTERVAL * 4);
        }
    }

    /// Waits until `pg_is_in_recovery()` is false (a restored cluster has replayed to its target and
    /// promoted), failing fast if the postmaster dies (e.g. a restore_command that cannot find WAL).
    pub fn wait_recovery_end(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_psql_db("postgres", "SELECT pg_is_in_recovery()") {
                Ok(out) if out == "f" => return,
                Ok(out) => format!("pg_is_in_recovery() = {out}"),
                Err(e) => e.to_string(),
            };
            self.assert_alive("waiting for recovery to end");
            if Instant::now() >= deadline {
                panic!(
                    "cluster {} still in recovery after {timeout:?} ({last})\n{}",
                    self.name,
                    log_tail(&self.log_file, 40)
                );
            }
            thread::sleep(POLL_INTERVAL * 4);
        }
    }

    /// Waits until `sql` (in database `postgres`) returns `want`, failing fast if the postmaster dies: for
    /// states other than the end of recovery (a replica streaming, recovery paused at a target).
    pub fn wait_for_query(&self, sql: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_psql_db("postgres", sql) {
                Ok(out) if out == want => return,
                Ok(out) => format!("{sql} = {out}"),
                Err(e) => e.to_string(),
            };
            self.assert_alive(&format!("waiting for {sql} to return {want}"));
            if Instant::now() >= deadline {
                panic!(
                    "cluster {}: {sql} did not return {want} within {timeout:?} ({last})\n{}",
                    self.name,
                    log_tail(&self.log_file, 40)
                );
            }
            thread::sleep(POLL_INTERVAL * 4);
        }
    }

    fn assert_alive(&self, doing: &str) {
        if !self.is_running() {
            panic!(
                "cluster {}: the postmaster exited while {doing}\n{}",
                self.name,
                log_tail(&self.log_file, 40)
            );
        }
    }

    /// Connects with tokio-postgres to database `postgres` and spawns the connection task on the current
    /// tokio runtime. Panics if it cannot connect.
    pub async fn client(&self) -> tokio_postgres::Client {
        self.client_db("postgres").await
    }

    /// Connects with tokio-postgres to database `db`; see [`PgCluster::client`].
    pub async fn client_db(&self, db: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_string_db(db), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!("cannot connect to cluster {} database {db}: {e}", self.name)
                });
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("cluster {name}: connection ended with an error: {e}");
            }
        });
        client
    }

    fn psql_command(&self, db: &str) -> Command {
        let mut psql = command_as_postgres(pg_bin("psql"));
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock_dir)
            .args([
                "-p",
                &self.port().to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-f",
                "-",
            ]);
        psql
    }

    /// Runs SQL in database `postgres` through psql (as `postgres`, unaligned, tuples only) and returns
    /// stdout without the trailing newline. Panics on any SQL error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// Like [`PgCluster::psql`] in database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        self.try_psql_db(db, sql)
            .unwrap_or_else(|e| panic!("psql on cluster {} failed: {e}", self.name))
    }

    /// Runs SQL in database `db` and returns stdout, or the failure. The SQL is a script read from stdin:
    /// statements run one by one (each in its own transaction unless the script says BEGIN), and the
    /// output of all of them is concatenated.
    pub fn try_psql_db(&self, db: &str, sql: &str) -> Result<String, CommandError> {
        let out = run_with_stdin(&mut self.psql_command(db), sql)?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        while text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    }

    /// `pgbench -i -s <scale>` in database `postgres`; panics on failure.
    pub fn pgbench_init(&self, scale: u32) {
        let mut pgbench = command_as_postgres(pg_bin("pgbench"));
        pgbench
            .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
            .arg(&self.sock_dir)
            .args(["-p", &self.port().to_string(), "-U", "postgres", "postgres"]);
        if let Err(e) = run(&mut pgbench) {
            panic!("pgbench -i on cluster {} failed: {e}", self.name);
        }
    }

    /// Starts `pgbench -T <seconds> -c <clients>` (the TPC-B-like default script) in the background,
    /// its output going to `<cluster dir>/pgbench-N.log`. Needs [`PgCluster::pgbench_init`] first.
    pub fn pgbench_run_background(&self, seconds: u32, clients: u32) -> PgBench {
        let n = self.bench_runs.fetch_add(1, Ordering::Relaxed);
        let log = self.home.join(format!("pgbench-{n}.log"));
        let out = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup {}: {e}", log.display()));
        let threads = clients.clamp(1, 2);
        let mut pgbench = command_as_postgres(pg_bin("pgbench"));
        pgbench
            .args([
                "-T",
                &seconds.to_string(),
                "-c",
                &clients.to_string(),
                "-j",
                &threads.to_string(),
                "-h",
            ])
            .arg(&self.sock_dir)
            .args(["-p", &self.port().to_string(), "-U", "postgres", "postgres"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = pgbench
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pgbench: {e}"));
        PgBench {
            child,
            log,
            seconds,
        }
    }

    /// `pgbench -t <transactions> -c <clients>` (the TPC-B-like default script), waited for: a fixed amount
    /// of change rather than a fixed time. Returns pgbench's output; panics on failure.
    pub fn pgbench_transactions(&self, transactions: u32, clients: u32) -> String {
        let mut pgbench = command_as_postgres(pg_bin("pgbench"));
        pgbench
            .args([
                "-t",
                &transactions.to_string(),
                "-c",
                &clients.to_string(),
                "-j",
                &clients.clamp(1, 2).to_string(),
                "-h",
            ])
            .arg(&self.sock_dir)
            .args(["-p", &self.port().to_string(), "-U", "postgres", "postgres"]);
        match run(&mut pgbench) {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => panic!("pgbench -t on cluster {} failed: {e}", self.name),
        }
    }

    /// Installs the `amcheck` extension in every database that accepts connections, then runs
    /// `pg_amcheck --all --heapallindexed` (heap and btree checks, and every heap tuple must have its index
    /// entries). Ok carries its output; Err carries the corruption report.
    pub fn pg_amcheck(&self) -> Result<String, CommandError> {
        let dbs = self.psql("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1");
        for db in dbs.lines() {
            self.psql_db(db, "CREATE EXTENSION IF NOT EXISTS amcheck");
        }
        let mut amcheck = command_as_postgres(pg_bin("pg_amcheck"));
        amcheck
            .args(["--all", "--heapallindexed", "-h"])
            .arg(&self.sock_dir)
            .args(["-p", &self.port().to_string(), "-U", "postgres"]);
        let out = run(&mut amcheck)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// md5 of each user table's contents in database `db`, keyed by `schema.table` (quoted as needed).
    /// Rows are ordered by their text form, so the digest depends only on the contents, not on their
    /// physical order. All tables are read in one REPEATABLE READ snapshot.
    ///
    /// Only permanent tables: unlogged tables are empty after a restore by design, and temporary ones
    /// belong to sessions.
    pub fn table_digests(&self, db: &str) -> BTreeMap<String, String> {
        let tables = self.psql_db(
            db,
            "SELECT format('%I.%I', n.nspname, c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' \
             ORDER BY 1",
        );
        let tables: Vec<&str> = tables.lines().collect();
        if tables.is_empty() {
            return BTreeMap::new();
        }
        let mut script = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n");
        for table in &tables {
            script.push_str(&format!(
                "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), md5('')) FROM {table} t;\n"
            ));
        }
        script.push_str("COMMIT;\n");
        let out = self.psql_db(db, &script);
        let digests: Vec<&str> = out.lines().collect();
        assert_eq!(
            digests.len(),
            tables.len(),
            "expected one digest per table of {tables:?}, psql printed:\n{out}"
        );
        tables
            .iter()
            .map(|t| t.to_string())
            .zip(digests.iter().map(|d| d.to_string()))
            .collect()
    }

    /// Forces a WAL segment switch and waits until the archiver reports that segment (or a later one)
    /// archived; returns the segment's name. Panics after `timeout` with the archiver's last failure
    /// (pg_stat_archiver) and the log's tail, which is where a failing `archive_command` shows up.
    pub fn switch_wal_and_wait_archived(&self, timeout: Duration) -> String {
        // At a segment boundary (nothing written since the last switch) pg_walfile_name() names the
        // previous segment, which is the last one that has to be archived: right either way.
        let segment = self.psql("SELECT pg_walfile_name(pg_switch_wal())");
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.psql(
                "SELECT coalesce(last_archived_wal, '') || '|' || failed_count || '|' || \
                 coalesce(last_failed_wal, '') FROM pg_stat_archiver",
            );
            let archived = state.split('|').next().unwrap_or("");
            // Names of one timeline sort by position, and a later timeline sorts after an earlier one. The
            // last archived file may be a backup history file (`<segment>.<offset>.backup`), archived after
            // its segment: compare the segment part.
            let archived = archived.get(..segment.len()).unwrap_or("");
            if archived.len() == segment.len() && archived >= segment.as_str() {
                return segment;
            }
            self.assert_alive("waiting for WAL to be archived");
            if Instant::now() >= deadline {
                panic!(
                    "cluster {}: segment {segment} not archived after {timeout:?} \
                     (pg_stat_archiver last_archived|failed_count|last_failed = {state})\n{}",
                    self.name,
                    log_tail(&self.log_file, 40)
                );
            }
            thread::sleep(POLL_INTERVAL * 4);
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.is_running() {
            self.stop();
        }
        self.log_check.run(&format!("PostgreSQL cluster {}", self.name), &self.log_file);
    }
}

/// A pgbench run in the background; killed on Drop if still running.
#[derive(Debug)]
pub struct PgBench {
    child: Child,
    log: PathBuf,
    seconds: u32,
}

impl PgBench {
    /// pgbench's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file that receives pgbench's output.
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// Waits for pgbench to finish its run and returns its output; Err if it failed (pgbench exits
    /// non-zero when a client aborted, e.g. because the server went away). Panics if it runs more than a
    /// minute past its `-T` duration.
    pub fn wait(mut self) -> Result<String, CommandError> {
        let limit = Duration::from_secs(u64::from(self.seconds) + 60);
        let status = match wait_child(&mut self.child, limit) {
            Some(status) => status,
            None => {
                kill_child(&mut self.child);
                panic!(
                    "pgbench (pid {}) still running {limit:?} after start",
                    self.child.id()
                );
            }
        };
        self.finish(status)
    }

    /// Stops pgbench early (SIGTERM, SIGKILL after 10 s) and returns its exit status.
    pub fn stop(mut self) -> ExitStatus {
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10))
    }

    fn finish(&self, status: ExitStatus) -> Result<String, CommandError> {
        let output = fs::read_to_string(&self.log).unwrap_or_default();
        if status.success() {
            Ok(output)
        } else {
            Err(CommandError {
                command: format!("pgbench -T {}", self.seconds),
                status,
                stdout: output,
                stderr: String::new(),
            })
        }
    }
}

impl Drop for PgBench {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}
