//! `restore-test`: proves a backup restores. Restores it into a scratch directory, starts PostgreSQL on
//! it, waits for recovery to reach the target, runs pg_amcheck and the configured validation queries,
//! then stops the server and removes the directory; the result is stored in the repository
//! (`strata_repo::restore_tests`). The `strata restore-test` command and the verifier's scheduled tests
//! both call [`run_test`].
//!
//! # Isolation
//! The restored cluster has the production cluster's system id, so anything it writes to the archive or
//! to the production paths would be taken for the real cluster's. Everything goes into the scratch
//! directory (`restore_test.work_dir`, else the system's temporary directory): the data directory, every
//! tablespace (remapped to `<scratch>/tblspc/<oid>`), the log, the socket. The server is started with
//! command-line settings, which override every config file the backup carries: `archive_mode = off` (and
//! empty archive, recovery-end and cleanup commands), no `primary_conninfo`, no synchronous standbys,
//! `data_directory`, `hba_file` and `ident_file` pointing into the scratch directory (a Debian-style
//! postgresql.conf may name the production ones), no TCP listener (`listen_addresses = ''`) and a unix
//! socket in a mode-0700 directory (in the scratch directory, or a short directory under /tmp when that
//! path is too long for a socket), trust authentication there only, 128MB of shared buffers, no SSL, and
//! logging to `<scratch>/postgresql.log`.
//!
//! # Cleanup, in every outcome
//! The steps run under one deadline (`restore_test.timeout_secs`) and a cancellation token; whatever ends
//! them (success, failure, the deadline, the token), the server is stopped (fast shutdown, then immediate
//! after [`FAST_STOP_GRACE`], then SIGKILL to the postmaster and its descendants), and the directory is
//! removed. The postmaster is identified by its pid *and* its start time (from /proc), so a reused pid is
//! never signalled. A background WAL prefetcher (`archive-get --prefetch`, its own session) stops by itself
//! once its spool has gone. Restore workers of a restore interrupted by the deadline are not waited for:
//! they fail as soon as the directory is gone, which removal retries for.
//!
//! # What is measured
//! - restore: restoring the backup's files (`restore`'s own work: planning, fetching, writing, syncing);
//! - WAL replay: from starting the server until recovery has ended (promoted at the target, or at the
//!   archive's end) and the server accepts connections;
//! - peak memory: every [`SAMPLE_INTERVAL`] the postmaster and all its descendants (backends, auxiliary
//!   processes, the restore_command) are found in /proc, and the largest sum of their PSS (smaps_rollup:
//!   shared memory counted once across them) is kept; if any smaps_rollup cannot be read (another user's
//!   processes without privileges) the sum of RSS is reported instead, and the result says which.
//!
//! # Freshness (`max_age_secs`)
//! A timestamp returned by a query is compared with the recovery's **reference time**:
//! - to the archive's end: the last transaction end in the archived WAL after the backup, from the WAL
//!   summaries (as `info`'s recovery window shows it), else the test's start time;
//! - `--type time`: the target time; `--type immediate`: the backup's end;
//! - `--type lsn`, `xid`, `name`: the last transaction the server replayed
//!   (`pg_last_xact_replay_timestamp()`), else the backup's end.
//!
//! The reference comes from the archive, not from the restored server, so a recovery that stopped short of
//! the archive's end shows as stale data.
//!
//! Query values are read as text in a session with `TimeZone = UTC` and `DateStyle = ISO`. A timestamp
//! without a zone is taken as UTC; a date as its midnight UTC; a number as Unix seconds.

use strata_restore::restore::{self, RestoreOptions};
use strata_restore::target::{self, Recovery, RecoveryArgs, Target};
use strata_command::{format_bytes, format_time};
use strata_restore::wal_archive::{TargetTimeline, WalArchive};
use strata_command::{Context_, OutputFormat, RecoveryType};
use anyhow::{anyhow, bail, Context};
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_config::ValidationQuery;
use strata_repo::restore_tests::{AmcheckOutcome, QueryOutcome, RestoreTestResult, RESTORE_TEST_FORMAT};
use tokio_util::sync::CancellationToken;

/// How often the server's memory is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// How long a fast shutdown may take before an immediate one.
pub const FAST_STOP_GRACE: Duration = Duration::from_secs(30);
/// How long an immediate shutdown may take before SIGKILL.
const IMMEDIATE_STOP_GRACE: Duration = Duration::from_secs(10);
/// Server log lines quoted in a failure.
const LOG_LINES: usize = 5;
/// The longest unix socket path (sun_path holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What to test.
#[derive(Clone, Debug)]
pub struct RestoreTestOptions {
    /// Backup label; by default the newest that can reach the target.
    pub set: Option<String>,
    /// Where recovery stops (not `standby`); default the archive's end.
    pub recovery: RecoveryType,
    /// The value for `time`, `lsn`, `xid` and `name`.
    pub target: Option<String>,
    /// Cancelled (a shutting-down verifier, ^C): the test stops, cleans up and fails as interrupted.
    pub cancel: CancellationToken,
}

impl Default for RestoreTestOptions {
    fn default() -> Self {
        RestoreTestOptions { set: None, recovery: RecoveryType::Default, target: None, cancel: CancellationToken::new() }
    }
}

/// Runs one restore test of `ctx`'s stanza and stores its result in `ctx.repo`.
///
/// Returns the result whether the test passed or failed (see [`RestoreTestResult::passed`] and
/// `failure`). `Err` only for options that make no sense (a bad target, an unknown backup), before
/// anything is done, and when the result cannot be stored.
pub async fn run_test(ctx: &Context_, opts: &RestoreTestOptions) -> anyhow::Result<RestoreTestResult> {
    if opts.recovery == RecoveryType::Standby {
        bail!("restore-test --type standby: a restore test recovers to a target and promotes; use default, immediate, time, lsn, xid or name");
    }
    let recovery = Recovery::parse(&recovery_args(opts))?;
    if let Some(label) = &opts.set {
        ctx.repo.backup(&ctx.stanza, label).await?;
    }
    if opts.target.is_some() {
        // A target the operator named but the archive cannot reach (a restore point that does not exist,
        // a time before every backup) is a wrong option, not a failed test of the backups: it is refused
        // before anything runs or is stored. Without a target, a backup that cannot be restored is a
        // finding, recorded like any other failure.
        let stanza = ctx.repo.stanza(&ctx.stanza).await?;
        let backups = ctx.repo.backups(&ctx.stanza).await?;
        let mut archive = WalArchive::load(&ctx.repo, &ctx.stanza, stanza.wal_segment_size).await?;
        target::plan(&mut archive, backups, opts.set.as_deref(), &recovery, &ctx.stanza).await?;
    }
    let started = Instant::now();
    let mut run = Run {
        result: RestoreTestResult {
            format: RESTORE_TEST_FORMAT,
            stanza: ctx.stanza.clone(),
            repo: ctx.repo.name().to_string(),
            label: opts.set.clone().unwrap_or_default(),
            target_type: type_name(opts.recovery).to_string(),
            target: opts.target.clone(),
            start_time: strata_command::now(),
            restore_ms: None,
            restore_files: 0,
            restore_bytes: 0,
            replay_ms: None,
            total_ms: 0,
            peak_memory_bytes: None,
            memory_measure: None,
            reference_time: None,
            reference_source: None,
            postmaster_pid: None,
            work_dir: String::new(),
            amcheck: None,
            queries: Vec::new(),
            passed: false,
            failure: None,
            cleanup_error: None,
        },
        phase: "preparing",
        scratch: None,
        watch: None,
    };
    let limit = Duration::from_secs(ctx.cfg.restore_test.timeout_secs.max(1));
    let deadline = started + limit;
    let outcome = {
        let steps = steps(ctx, opts, &recovery, deadline, &mut run);
        tokio::pin!(steps);
        tokio::select! {
            r = &mut steps => Some(r),
            _ = tokio::time::sleep_until(deadline.into()) => None,
            _ = opts.cancel.cancelled() => Some(Err("interrupted".to_string())),
        }
    };
    let outcome = outcome.unwrap_or_else(|| Err(format!("timed out after {} s (while {})", limit.as_secs(), run.phase)));
    cleanup(&mut run).await;
    let r = &mut run.result;
    r.total_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(()) => r.passed = true,
        Err(reason) => {
            r.passed = false;
            r.failure = Some(one_line(&reason));
        }
    }
    tracing::info!(passed = r.passed, failure = r.failure.as_deref().unwrap_or(""), "restore test finished");
    ctx.repo.put_restore_test(&ctx.stanza, &run.result).await.with_context(|| {
        format!("the restore test {} but its result could not be stored", if run.result.passed { "passed" } else { "failed" })
    })?;
    Ok(run.result)
}

/// `strata restore-test`: runs the test, prints it, and fails (exit 1) when the test failed.
pub async fn run(ctx: &Context_, opts: &RestoreTestOptions, output: OutputFormat) -> anyhow::Result<Passed> {
    let cancel = opts.cancel.clone();
    let signals = tokio::spawn(async move {
        strata_runtime::shutdown_signal().await;
        cancel.cancel();
    });
    let result = run_test(ctx, opts).await;
    signals.abort();
    let result = result?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        OutputFormat::Text => print!("{}", render_text(&result)),
    }
    match &result.failure {
        None => Ok(Passed(result)),
        Some(reason) => bail!("restore test failed: {reason}"),
    }
}

/// A restore test that passed, as the audit log records it.
pub struct Passed(pub RestoreTestResult);

impl strata_command::audit::AuditDetails for Passed {
    fn audit_details(&self) -> Option<serde_json::Value> {
        let r = &self.0;
        Some(serde_json::json!({
            "label": r.label,
            "restore_ms": r.restore_ms,
            "replay_ms": r.replay_ms,
            "total_ms": r.total_ms,
            "peak_memory_bytes": r.peak_memory_bytes,
            "queries": r.queries.len(),
        }))
    }
}

fn recovery_args(opts: &RestoreTestOptions) -> RecoveryArgs<'_> {
    RecoveryArgs { kind: opts.recovery, target: opts.target.as_deref(), action: None, timeline: None, exclusive: false }
}

fn type_name(t: RecoveryType) -> &'static str {
    match t {
        RecoveryType::Default => "default",
        RecoveryType::Immediate => "immediate",
        RecoveryType::Time => "time",
        RecoveryType::Lsn => "lsn",
        RecoveryType::Xid => "xid",
        RecoveryType::Name => "name",
        RecoveryType::Standby => "standby",
    }
}

/// A test in progress: what is recorded so far, and what cleanup must undo.
struct Run {
    result: RestoreTestResult,
    /// What the steps are doing, for a timeout's message.
    phase: &'static str,
    scratch: Option<Scratch>,
    watch: Option<Watcher>,
}

/// The scratch directory and what is in it.
struct Scratch {
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    sock: PathBuf,
    /// The socket directory when it is not inside `root` (a long `root`).
    outside_sock: Option<PathBuf>,
    port: u16,
}

/// The OS user the test server runs as.
#[derive(Clone, Debug)]
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
    /// The test runs as root and the server as this user.
    switch: bool,
}

async fn steps(
    ctx: &Context_,
    opts: &RestoreTestOptions,
    recovery: &Recovery,
    deadline: Instant,
    run: &mut Run,
) -> Result<(), String> {
    let cfg = &ctx.cfg.restore_test;
    let stanza = ctx.repo.stanza(&ctx.stanza).await.map_err(|e| format!("cannot restore: {e}"))?;
    let bin = pg_bin_dir(cfg.pg_bin_dir.as_deref(), stanza.pg_major);
    let user = server_user(&cfg.os_user).map_err(|e| format!("cannot restore: {e:#}"))?;

    run.phase = "restoring";
    let scratch = make_scratch(cfg.work_dir.as_deref(), &ctx.stanza, &user).map_err(|e| format!("cannot restore: {e:#}"))?;
    run.result.work_dir = scratch.root.display().to_string();
    let (data, root) = (scratch.data.clone(), scratch.root.clone());
    run.scratch = Some(scratch);
    tracing::info!(dir = %root.display(), "restoring into the scratch directory");
    let t = Instant::now();
    let restore_opts = RestoreOptions {
        pg_data: &data,
        set: opts.set.as_deref(),
        tablespace_map: &[],
        recovery: recovery_args(opts),
        delta: false,
        wal_prefetch: restore::DEFAULT_WAL_PREFETCH,
    };
    let restored = restore::restore(ctx, &restore_opts, Some(&root.join("tblspc")))
        .await
        .map_err(|e| format!("cannot restore: {e:#}"))?;
    run.result.restore_ms = Some(t.elapsed().as_millis() as u64);
    run.result.label = restored.record.summary.label.clone();
    run.result.restore_files = restored.files as u64;
    run.result.restore_bytes = restored.bytes;
    tracing::info!(label = %run.result.label, files = restored.files, bytes = restored.bytes, "restored");

    // The reference time of a restore to the archive's end is read now, before the server starts: the
    // archive may grow while it replays, and what was archived by now is what it will at least reach.
    let stop_time = restored.record.summary.stop_time;
    let reference = match &recovery.target {
        Target::Default => match last_archived_time(ctx, &restored, stanza.wal_segment_size).await {
            Ok(Some(t)) => Some((t, "the last transaction end archived (WAL summaries)")),
            Ok(None) => Some((run.result.start_time, "the test's start time (the archive names no transaction end after the backup)")),
            Err(e) => return Err(format!("cannot read the WAL archive for the reference time: {e:#}")),
        },
        Target::Time(micros) => Some((micros.div_euclid(1_000_000), "the recovery target time")),
        Target::Immediate => Some((stop_time, "the backup's end")),
        _ => None,
    };
    if let Some((t, source)) = reference {
        run.result.reference_time = Some(t);
        run.result.reference_source = Some(source.to_string());
    }

    run.phase = "starting the server";
    let scratch = run.scratch.as_ref().expect("made above");
    prepare_server_files(scratch, &user).map_err(|e| format!("cannot start the restored server: {e:#}"))?;
    run.watch = Some(Watcher::start(scratch.data.clone()));
    let t = Instant::now();
    let started = start_server(&bin, scratch, &user, stanza.pg_major, deadline).await;
    let pid = run.watch.as_ref().and_then(|w| w.find_postmaster());
    run.result.postmaster_pid = pid.map(|p| p.pid as u32);
    if let Err(e) = started {
        return Err(format!("cannot start the restored server: {e}; server log: {}", log_tail(&scratch.log)));
    }
    run.phase = "replaying WAL";
    let session = wait_recovery_end(scratch, &user, run.watch.as_ref().expect("started above")).await?;
    run.result.replay_ms = Some(t.elapsed().as_millis() as u64);
    run.result.postmaster_pid = run.watch.as_ref().and_then(|w| w.find_postmaster()).map(|p| p.pid as u32);
    tracing::info!(ms = run.result.replay_ms, "recovery finished");

    if run.result.reference_time.is_none() {
        let (t, source) = match replayed_time(&session.client).await {
            Some(t) => (t, "the last transaction replayed"),
            None => (stop_time, "the backup's end (no transaction was replayed)"),
        };
        run.result.reference_time = Some(t);
        run.result.reference_source = Some(source.to_string());
    }
    let reference = run.result.reference_time.expect("set above");

    let mut failures = Vec::new();
    if cfg.amcheck {
        run.phase = "running pg_amcheck";
        let outcome = amcheck(&bin, scratch, &session.superuser).await;
        if !outcome.passed {
            failures.push(match outcome.output.lines().rev().find(|l| !l.trim().is_empty()) {
                Some(last) => format!("amcheck found corruption or could not check: {last}"),
                None => "amcheck failed".to_string(),
            });
        }
        run.result.amcheck = Some(outcome);
    }
    run.phase = "running the validation queries";
    let queries: Vec<&ValidationQuery> =
        cfg.query.iter().filter(|q| q.stanza.as_deref().is_none_or(|s| s == ctx.stanza)).collect();
    let mut clients: HashMap<String, Result<tokio_postgres::Client, String>> = HashMap::new();
    for q in queries {
        if !clients.contains_key(&q.database) {
            let c = connect(scratch, &session.superuser, &q.database).await.map_err(|e| format!("cannot connect to database {}: {e}", q.database));
            clients.insert(q.database.clone(), c);
        }
        let value = match clients.get(&q.database).expect("inserted above") {
            Err(e) => Err(e.clone()),
            Ok(client) => first_value(client, &q.sql).await,
        };
        let verdict = match &value {
            Err(e) => Err(e.clone()),
            Ok(v) => check_value(q, v.as_deref(), reference),
        };
        if let Err(why) = &verdict {
            failures.push(format!("query '{}' {why}", q.name));
        }
        run.result.queries.push(QueryOutcome {
            name: q.name.clone(),
            database: q.database.clone(),
            value: value.ok().flatten(),
            passed: verdict.is_ok(),
            reason: verdict.err(),
        });
    }
    match failures.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(first),
    }
}

/// The time (Unix seconds) of the last transaction end archived in the restored backup's recovery window
/// (as `info` computes a window's end), if the WAL summaries name one.
async fn last_archived_time(ctx: &Context_, restored: &restore::Restored, seg_size: u64) -> anyhow::Result<Option<i64>> {
    let s = &restored.record.summary;
    let mut archive = WalArchive::load(&ctx.repo, &ctx.stanza, seg_size).await?;
    let history = archive.target_history(s.timeline, TargetTimeline::Latest).await?;
    let (start, stop) = (archive.parse(&s.wal_start)?.segno, archive.parse(&s.wal_stop)?.segno);
    let Some(end) = archive.contiguous_end(&history, start) else { return Ok(None) };
    Ok(archive.last_time(&history, stop, end.segno).await?.map(|t| t.div_euclid(1_000_000)))
}

/// Where pg_ctl, postgres and pg_amcheck are: the configured directory, else Debian's for the major
/// version when it exists, else PATH (`None`).
fn pg_bin_dir(configured: Option<&Path>, major: u32) -> Option<PathBuf> {
    if let Some(dir) = configured {
        return Some(dir.to_path_buf());
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    debian.join("pg_ctl").is_file().then_some(debian)
}

fn program(bin: &Option<PathBuf>, name: &str) -> PathBuf {
    match bin {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

/// The user the server runs as: `os_user` when running as root (PostgreSQL refuses root), else whoever
/// runs the test.
fn server_user(os_user: &str) -> anyhow::Result<OsUser> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        let u = lookup_user(Some(os_user), euid).ok_or_else(|| anyhow!("restore_test.os_user '{os_user}' is not a user of this host"))?;
        if u.uid == 0 {
            bail!("restore_test.os_user '{os_user}' is root, which PostgreSQL refuses to run as");
        }
        return Ok(OsUser { switch: true, ..u });
    }
    lookup_user(None, euid).ok_or_else(|| anyhow!("cannot find the name of user {euid}"))
}

/// A user by name, or (`None`) by uid.
fn lookup_user(name: Option<&str>, uid: u32) -> Option<OsUser> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = match name {
        Some(n) => {
            let cname = std::ffi::CString::new(n).ok()?;
            // SAFETY: every pointer is valid for the call; getpwnam_r writes only into pwd and buf.
            unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) }
        }
        // SAFETY: as above.
        None => unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) },
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success pw_name and pw_dir are NUL-terminated strings inside buf, which is alive.
    let (name, home) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
    Some(OsUser {
        name: name.to_string_lossy().into_owned(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home: PathBuf::from(home.to_string_lossy().into_owned()),
        switch: false,
    })
}

/// Creates the scratch directory (mode 0700, owned by the server's user) and picks the socket directory.
fn make_scratch(work_dir: Option<&Path>, stanza: &str, user: &OsUser) -> anyhow::Result<Scratch> {
    let parent = work_dir.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let stamp = format_time(strata_command::now()).replace([' ', ':', '-'], "");
    let root = (0..100)
        .map(|n| parent.join(format!("strata-restore-test-{stanza}-{stamp}-{}-{n}", std::process::id())))
        .find(|p| std::fs::create_dir(p).is_ok())
        .ok_or_else(|| anyhow!("cannot create a scratch directory in {}", parent.display()))?;
    let give = |p: &Path| -> anyhow::Result<()> {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
        if user.switch {
            std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).with_context(|| format!("cannot chown {}", p.display()))?;
        }
        Ok(())
    };
    give(&root)?;
    // A free loopback port, only to name the socket: the server listens on no TCP address.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(5432);
    let inside = root.join("sock");
    // The socket's path: the directory, '/', the file name.
    let socket_path_len = inside.as_os_str().len() + 1 + ".s.PGSQL.65535".len();
    let (sock, outside_sock) = if socket_path_len <= MAX_SOCKET_PATH {
        (inside, None)
    } else {
        let short = (0..100)
            .map(|n| std::env::temp_dir().join(format!("strata-rt-{}-{n}", std::process::id())))
            .find(|p| std::fs::create_dir(p).is_ok())
            .ok_or_else(|| anyhow!("cannot create a socket directory in {}", std::env::temp_dir().display()))?;
        (short.clone(), Some(short))
    };
    if outside_sock.is_none() {
        std::fs::create_dir(&sock).with_context(|| format!("cannot create {}", sock.display()))?;
    }
    give(&sock)?;
    Ok(Scratch { data: root.join("data"), log: root.join("postgresql.log"), root, sock, outside_sock, port })
}

/// pg_hba.conf and pg_ident.conf of the scratch directory, an empty postgresql.conf if the backup has
/// none (config kept outside the data directory), and the whole tree given to the server's user.
fn prepare_server_files(s: &Scratch, user: &OsUser) -> anyhow::Result<()> {
    std::fs::write(s.root.join("pg_hba.conf"), "# strata restore-test: the socket directory is private (0700)\nlocal all all trust\n")?;
    std::fs::write(s.root.join("pg_ident.conf"), "")?;
    let conf = s.data.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "# strata restore-test: the backup has no postgresql.conf (kept outside the data directory)\n")?;
    }
    std::fs::File::create(&s.log)?;
    if user.switch {
        chown_tree(&s.root, user.uid, user.gid)?;
    }
    Ok(())
}

/// Gives a tree to a user without following symlinks.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid)).with_context(|| format!("cannot chown {}", root.display()))?;
    if std::fs::symlink_metadata(root)?.is_dir() {
        for e in std::fs::read_dir(root)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The settings the server is started with (see the module docs); they override every config file.
fn server_settings(s: &Scratch, major: u32) -> Vec<(&'static str, String)> {
    let path = |p: &Path| p.display().to_string();
    let mut out = vec![
        ("data_directory", path(&s.data)),
        ("hba_file", path(&s.root.join("pg_hba.conf"))),
        ("ident_file", path(&s.root.join("pg_ident.conf"))),
        ("external_pid_file", String::new()),
        ("port", s.port.to_string()),
        ("listen_addresses", String::new()),
        ("unix_socket_directories", path(&s.sock)),
        ("unix_socket_permissions", "0700".into()),
        ("unix_socket_group", String::new()),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("synchronous_standby_names", String::new()),
        ("shared_buffers", "128MB".into()),
        ("huge_pages", "try".into()),
        ("ssl", "off".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("cluster_name", "strata-restore-test".into()),
    ];
    if major >= 15 {
        out.push(("archive_library", String::new()));
    }
    out
}

/// A command for `program` (as `user` when given and switching), with no PG* variables from this
/// environment (they could point a client elsewhere) and `/` as working directory.
fn command_as(program: PathBuf, user: Option<&OsUser>) -> tokio::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.current_dir("/");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    if let Some(user) = user.filter(|u| u.switch) {
        cmd.uid(user.uid).gid(user.gid);
        cmd.env("HOME", &user.home).env("USER", &user.name).env("LOGNAME", &user.name);
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    cmd
}

/// `pg_ctl start -w`: returns once the server accepts connections (in hot standby, or recovered), or
/// pg_ctl's complaint.
async fn start_server(bin: &Option<PathBuf>, s: &Scratch, user: &OsUser, major: u32, deadline: Instant) -> Result<(), String> {
    let options: Vec<String> =
        server_settings(s, major).into_iter().map(|(k, v)| format!("-c {}", strata_command::shell_quote(&format!("{k}={v}")))).collect();
    let wait = deadline.saturating_duration_since(Instant::now()).as_secs().max(1);
    let mut cmd = command_as(program(bin, "pg_ctl"), Some(user));
    cmd.arg("start").arg("-D").arg(&s.data).arg("-l").arg(&s.log).arg("-w").arg("-t").arg(wait.to_string());
    cmd.arg("-o").arg(options.join(" "));
    let out = cmd.output().await.map_err(|e| format!("cannot run {}: {e}", program(bin, "pg_ctl").display()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        return Err(format!("pg_ctl start failed ({}): {said}", out.status));
    }
    Ok(())
}

/// A connection to the recovered server, as its bootstrap superuser.
struct Session {
    client: tokio_postgres::Client,
    superuser: String,
}

/// Waits until recovery has ended (the server promoted) and returns a session; fails when the server
/// stops on the way.
async fn wait_recovery_end(s: &Scratch, user: &OsUser, watch: &Watcher) -> Result<Session, String> {
    let mut last_error = String::new();
    let mut session: Option<Session> = None;
    loop {
        if !watch.find_postmaster().is_some_and(|p| p.alive()) {
            return Err(format!("the restored server stopped during recovery; server log: {}", log_tail(&s.log)));
        }
        if session.is_none() {
            match connect_superuser(s, user).await {
                Ok(c) => session = Some(c),
                Err(e) => last_error = e,
            }
        }
        if let Some(c) = &session {
            match c.client.query_one("select pg_is_in_recovery()", &[]).await {
                Ok(row) if !row.get::<_, bool>(0) => return Ok(session.expect("checked")),
                Ok(_) => {}
                Err(e) => {
                    last_error = e.to_string();
                    session = None;
                }
            }
        }
        tracing::debug!(last_error = %last_error, "waiting for recovery to end");
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
}

/// Connects as some role trust lets in (the server's OS user's name, then `postgres`), then finds the
/// bootstrap superuser (oid 10) and connects as it.
async fn connect_superuser(s: &Scratch, user: &OsUser) -> Result<Session, String> {
    let mut tried = Vec::new();
    for role in [user.name.as_str(), "postgres"] {
        if tried.iter().any(|t: &String| t == role) {
            continue;
        }
        match connect(s, role, "postgres").await {
            Ok(c) => {
                let superuser: String = c
                    .query_one("select rolname::text from pg_roles where oid = 10", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                if superuser == role {
                    return Ok(Session { client: c, superuser });
                }
                let client = connect(s, &superuser, "postgres").await?;
                return Ok(Session { client, superuser });
            }
            Err(e) => tried.push(format!("{role}: {e}")),
        }
    }
    Err(tried.join("; "))
}

async fn connect(s: &Scratch, role: &str, db: &str) -> Result<tokio_postgres::Client, String> {
    let mut c = tokio_postgres::Config::new();
    c.host_path(&s.sock).port(s.port).user(role).dbname(db).application_name("strata restore-test");
    c.connect_timeout(Duration::from_secs(10));
    let (client, connection) = c.connect(tokio_postgres::NoTls).await.map_err(|e| pg_error(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'")
        .await
        .map_err(|e| pg_error(&e))?;
    Ok(client)
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// `pg_last_xact_replay_timestamp()` in Unix seconds.
async fn replayed_time(client: &tokio_postgres::Client) -> Option<i64> {
    let row = client
        .query_one("select extract(epoch from pg_last_xact_replay_timestamp())::float8", &[])
        .await
        .ok()?;
    row.get::<_, Option<f64>>(0).map(|t| t.floor() as i64)
}

/// The first column of the first row the query returns, as text (`None`: NULL); an error for a failed
/// query or no row.
async fn first_value(client: &tokio_postgres::Client, sql: &str) -> Result<Option<String>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| format!("failed: {}", pg_error(&e)))?;
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            return match row.try_get(0) {
                Ok(v) => Ok(v.map(str::to_string)),
                Err(_) => Err("returned a row without columns".into()),
            };
        }
    }
    Err("returned no rows".into())
}

/// `pg_amcheck --all --install-missing` (the server is thrown away, so installing amcheck is harmless).
async fn amcheck(bin: &Option<PathBuf>, s: &Scratch, superuser: &str) -> AmcheckOutcome {
    let t = Instant::now();
    let mut cmd = command_as(program(bin, "pg_amcheck"), None);
    cmd.arg("--all").arg("--install-missing").arg("-h").arg(&s.sock).arg("-p").arg(s.port.to_string()).arg("-U").arg(superuser);
    let (passed, output) = match cmd.output().await {
        Err(e) => (false, format!("cannot run {}: {e}", program(bin, "pg_amcheck").display())),
        Ok(out) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = tail[tail.len().saturating_sub(20)..].join("\n");
            match out.status.code() {
                Some(0) => (true, tail),
                Some(2) => (false, if tail.is_empty() { "pg_amcheck reported corruption".into() } else { tail }),
                _ => (false, format!("pg_amcheck could not check ({}): {tail}", out.status)),
            }
        }
    };
    AmcheckOutcome { passed, duration_ms: t.elapsed().as_millis() as u64, output }
}

/// Whether a query's value meets every expectation of `q`; the reason when it does not. `reference` is
/// the recovery's reference time (Unix seconds) for `max_age_secs`.
pub(crate) fn check_value(q: &ValidationQuery, value: Option<&str>, reference: i64) -> Result<(), String> {
    let Some(v) = value else {
        return Err("returned NULL".into());
    };
    let shown = v.trim();
    if q.min.is_some() || q.max.is_some() {
        let n: f64 = match shown.parse::<f64>() {
            Ok(n) if !n.is_nan() => n,
            _ => return Err(format!("returned '{shown}', which is not a number")),
        };
        if let Some(min) = q.min {
            if n < min {
                return Err(format!("returned {shown}, expected ≥ {min}"));
            }
        }
        if let Some(max) = q.max {
            if n > max {
                return Err(format!("returned {shown}, expected ≤ {max}"));
            }
        }
    }
    if let Some(want) = &q.equals {
        if v != want {
            return Err(format!("returned '{v}', expected '{want}'"));
        }
    }
    if let Some(max_age) = q.max_age_secs {
        let t = parse_timestamp(shown).ok_or_else(|| format!("returned '{shown}', which is not a timestamp"))?;
        let age = reference - t;
        if age > max_age as i64 {
            return Err(format!(
                "returned {shown}, {age} s before the reference time {} UTC, expected at most {max_age} s",
                format_time(reference)
            ));
        }
    }
    Ok(())
}

/// A query's value as a Unix time (seconds): an ISO timestamp (UTC when it has no zone), a date (its
/// midnight UTC), or a number of seconds.
pub(crate) fn parse_timestamp(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Ok(n) = v.parse::<f64>() {
        return n.is_finite().then(|| n.floor() as i64);
    }
    let with_zone = match v.len() {
        10 => format!("{v} 00:00:00+00"),
        n if n > 10 => {
            let clock = &v[11..];
            if clock.contains(['+', '-', 'Z', 'z']) || clock.ends_with("UTC") {
                v.to_string()
            } else {
                format!("{v}+00")
            }
        }
        _ => return None,
    };
    target::parse_time(&with_zone).ok().map(|micros| micros.div_euclid(1_000_000))
}

/// The last lines of the server log, on one line.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines[lines.len().saturating_sub(LOG_LINES)..]
        .iter()
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// Stops the server if it runs and removes the scratch directory, recording what could not be done.
async fn cleanup(run: &mut Run) {
    let mut problems = Vec::new();
    if let Some(watch) = run.watch.take() {
        let (peak, measure) = watch.stop();
        run.result.peak_memory_bytes = peak;
        run.result.memory_measure = measure;
        let mut pm = watch.find_postmaster();
        if pm.is_none() {
            // A deadline during `pg_ctl start` may come before the postmaster wrote its pid file.
            tokio::time::sleep(Duration::from_millis(500)).await;
            pm = watch.find_postmaster();
        }
        if let Some(pm) = pm {
            run.result.postmaster_pid.get_or_insert(pm.pid as u32);
            let descendants = watch.descendants();
            if let Err(e) = tokio::task::spawn_blocking(move || stop_server(pm, &descendants)).await.expect("stop task panicked") {
                problems.push(e);
            }
        }
    }
    if let Some(s) = run.scratch.take() {
        let dirs: Vec<PathBuf> = std::iter::once(s.root.clone()).chain(s.outside_sock.clone()).collect();
        for d in dirs {
            let d2 = d.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || remove_dir(&d2)).await.expect("remove task panicked") {
                problems.push(format!("cannot remove {}: {e}", d.display()));
            }
        }
        let root = s.root.clone();
        if let Some(e) = tokio::task::spawn_blocking(move || end_stragglers(&root)).await.expect("straggler task panicked") {
            problems.push(e);
        }
    }
    if !problems.is_empty() {
        run.result.cleanup_error = Some(problems.join("; "));
    }
}

/// Removes a directory tree, retrying a while: restore workers of an interrupted restore may still be
/// creating files in it until they notice it is gone.
fn remove_dir(dir: &Path) -> std::io::Result<()> {
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt >= 50 => return Err(e),
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Processes still naming the scratch directory on their command line once it is gone: a WAL prefetcher
/// the server's restore_command started in its own session (no longer the postmaster's descendant). It
/// exits by itself when its spool has vanished; one still there after a grace period is killed.
fn end_stragglers(root: &Path) -> Option<String> {
    let needle = format!("{}/", root.display());
    let find = || -> Vec<Proc> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                out.extend(Proc::of(pid).filter(|p| p.alive()));
            }
        }
        out
    };
    let until = Instant::now() + Duration::from_secs(10);
    let mut left = find();
    while !left.is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        left = find();
    }
    if left.is_empty() {
        return None;
    }
    for p in &left {
        p.signal(libc::SIGKILL);
    }
    let pids: Vec<String> = left.iter().map(|p| p.pid.to_string()).collect();
    Some(format!("killed processes still using the scratch directory after it was removed: {}", pids.join(", ")))
}

/// Fast shutdown, then immediate, then SIGKILL to the postmaster and the descendants last seen.
fn stop_server(pm: Proc, descendants: &[Proc]) -> Result<(), String> {
    for (signal, grace) in [(libc::SIGINT, FAST_STOP_GRACE), (libc::SIGQUIT, IMMEDIATE_STOP_GRACE)] {
        if !pm.alive() {
            return Ok(());
        }
        pm.signal(signal);
        if pm.wait_gone(grace) {
            return Ok(());
        }
        tracing::warn!(pid = pm.pid, signal, "the restored server did not stop in time");
    }
    pm.signal(libc::SIGKILL);
    for d in descendants {
        if d.alive() {
            d.signal(libc::SIGKILL);
        }
    }
    if pm.wait_gone(Duration::from_secs(5)) {
        Ok(())
    } else {
        Err(format!("the restored server's postmaster (pid {}) did not exit after SIGKILL", pm.pid))
    }
}

/// A process, known by its pid and its start time (clock ticks after boot), so that a pid reused by
/// another process is not taken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Proc {
    pid: i32,
    start: u64,
}

/// The fields of `/proc/<pid>/stat` this module needs: state, parent, start time.
fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; the fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), f[1] field 4 (ppid), f[19] field 22 (starttime).
    Some((f.first()?.chars().next()?, f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

impl Proc {
    fn of(pid: i32) -> Option<Proc> {
        proc_stat(pid).map(|(_, _, start)| Proc { pid, start })
    }

    /// The postmaster named by `<data>/postmaster.pid`, if it runs.
    fn from_pid_file(data: &Path) -> Option<Proc> {
        let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        Proc::of(pid).filter(|p| p.alive())
    }

    /// Still running (a zombie has ended: `pg_ctl` daemonizes the postmaster, so it is not ours to reap).
    fn alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, _, start)) if start == self.start && state != 'Z')
    }

    fn signal(&self, signal: libc::c_int) {
        if self.alive() {
            // SAFETY: kill has no memory effects; the pid was just checked to be this process.
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    fn wait_gone(&self, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !self.alive()
    }
}

/// The descendants of `root` among the host's processes.
fn descendants(root: i32) -> Vec<Proc> {
    let mut children: HashMap<i32, Vec<Proc>> = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Some((state, ppid, start)) = proc_stat(pid) {
            if state != 'Z' {
                children.entry(ppid).or_default().push(Proc { pid, start });
            }
        }
    }
    let (mut out, mut stack, mut seen) = (Vec::new(), vec![root], HashSet::new());
    while let Some(p) = stack.pop() {
        for c in children.get(&p).into_iter().flatten() {
            if seen.insert(c.pid) {
                out.push(*c);
                stack.push(c.pid);
            }
        }
    }
    out
}

/// PSS of a process from smaps_rollup, in bytes.
fn pss(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// RSS of a process from statm, in bytes.
fn rss(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page)
}

/// What the sampler has seen.
#[derive(Default)]
struct Seen {
    postmaster: Option<Proc>,
    descendants: Vec<Proc>,
    peak_pss: u64,
    /// Some smaps_rollup could not be read: PSS sums are incomplete.
    pss_unreadable: bool,
    peak_rss: u64,
    samples: u64,
}

/// A thread that finds the postmaster (from postmaster.pid) and samples its processes' memory.
struct Watcher {
    data: PathBuf,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(data: PathBuf) -> Watcher {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, d) = (seen.clone(), stop.clone(), data.clone());
        let thread = std::thread::Builder::new()
            .name("restore-test-memory".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    Watcher::sample(&d, &s);
                    std::thread::sleep(SAMPLE_INTERVAL);
                }
            })
            .expect("spawning a thread");
        Watcher { data, seen, stop, thread: Some(thread) }
    }

    fn sample(data: &Path, seen: &Mutex<Seen>) {
        let known = seen.lock().expect("sampler lock").postmaster;
        let pm = match known {
            Some(p) => p,
            None => match Proc::from_pid_file(data) {
                Some(p) => {
                    seen.lock().expect("sampler lock").postmaster = Some(p);
                    p
                }
                None => return,
            },
        };
        if !pm.alive() {
            return;
        }
        let procs: Vec<Proc> = std::iter::once(pm).chain(descendants(pm.pid)).collect();
        let (mut pss_sum, mut pss_ok, mut rss_sum) = (0u64, true, 0u64);
        for p in &procs {
            match pss(p.pid) {
                Some(v) => pss_sum += v,
                None => pss_ok = false,
            }
            rss_sum += rss(p.pid).unwrap_or(0);
        }
        let mut s = seen.lock().expect("sampler lock");
        s.descendants = procs[1..].to_vec();
        s.peak_pss = s.peak_pss.max(pss_sum);
        s.pss_unreadable |= !pss_ok;
        s.peak_rss = s.peak_rss.max(rss_sum);
        s.samples += 1;
    }

    /// The postmaster: the one seen, else the one postmaster.pid names now.
    fn find_postmaster(&self) -> Option<Proc> {
        let mut s = self.seen.lock().expect("sampler lock");
        if s.postmaster.is_none() {
            s.postmaster = Proc::from_pid_file(&self.data);
        }
        s.postmaster
    }

    fn descendants(&self) -> Vec<Proc> {
        self.seen.lock().expect("sampler lock").descendants.clone()
    }

    /// Stops sampling; the peak and its measure (`pss`, or `rss` when some smaps_rollup was unreadable).
    fn stop(&self) -> (Option<u64>, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let s = self.seen.lock().expect("sampler lock");
        if s.samples == 0 {
            return (None, None);
        }
        if s.pss_unreadable {
            (Some(s.peak_rss), Some("rss".into()))
        } else {
            (Some(s.peak_pss), Some("pss".into()))
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The text report: one line per step, then the verdict.
pub fn render_text(r: &RestoreTestResult) -> String {
    let mut out = String::new();
    let target = match (&r.target_type[..], &r.target) {
        ("default", _) => "the archive's end".to_string(),
        ("immediate", _) => "the backup's consistent point".to_string(),
        (kind, Some(t)) => format!("{kind} {t}"),
        (kind, None) => kind.to_string(),
    };
    let label = if r.label.is_empty() { "(none chosen)" } else { &r.label };
    out.push_str(&format!(
        "restore test of stanza '{}' from repository '{}': backup {label}, recovering to {target}, started {} UTC\n",
        r.stanza,
        r.repo,
        format_time(r.start_time)
    ));
    if let Some(ms) = r.restore_ms {
        out.push_str(&format!("restore: {} files, {} in {} into {}\n", r.restore_files, format_bytes(r.restore_bytes), secs(ms), r.work_dir));
    }
    if let Some(ms) = r.replay_ms {
        out.push_str(&format!("WAL replay: recovery ended and the server accepted connections after {}\n", secs(ms)));
    }
    if let (Some(b), Some(m)) = (r.peak_memory_bytes, &r.memory_measure) {
        out.push_str(&format!("peak memory of the server: {} ({})\n", format_bytes(b), m.to_uppercase()));
    }
    if let Some(a) = &r.amcheck {
        match a.passed {
            true => out.push_str(&format!("pg_amcheck: no corruption found ({})\n", secs(a.duration_ms))),
            false => out.push_str(&format!("pg_amcheck: FAILED ({}): {}\n", secs(a.duration_ms), one_line(&a.output))),
        }
    }
    if let (Some(t), Some(src)) = (r.reference_time, &r.reference_source) {
        if !r.queries.is_empty() {
            out.push_str(&format!("reference time for freshness: {} UTC ({src})\n", format_time(t)));
        }
    }
    for q in &r.queries {
        let value = q.value.as_deref().unwrap_or("-");
        match &q.reason {
            None => out.push_str(&format!("query '{}' ({}): {value}: passed\n", q.name, q.database)),
            Some(why) => out.push_str(&format!("query '{}' ({}): FAILED: {why}\n", q.name, q.database)),
        }
    }
    match &r.cleanup_error {
        None => out.push_str(&format!(
            "cleanup: {}scratch directory removed\n",
            r.postmaster_pid.map(|p| format!("server (pid {p}) stopped, ")).unwrap_or_default()
        )),
        Some(e) => out.push_str(&format!("cleanup: {e}\n")),
    }
    out.push_str(&format!("total: {}\n", secs(r.total_ms)));
    match &r.failure {
        None => out.push_str("restore test passed\n"),
        Some(why) => out.push_str(&format!("restore test FAILED: {why}\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(min: Option<f64>, max: Option<f64>, equals: Option<&str>, max_age_secs: Option<u64>) -> ValidationQuery {
        ValidationQuery {
            name: "q".into(),
            stanza: None,
            database: "postgres".into(),
            sql: "select 1".into(),
            min,
            max,
            equals: equals.map(str::to_string),
            max_age_secs,
        }
    }

    /// 2026-12-02 17:00:00 UTC.
    const REF: i64 = 1_796_230_800;

    #[test]
    fn numbers_are_compared_with_min_and_max() {
        let q = query(Some(500000.0), Some(600000.0), None, None);
        assert_eq!(check_value(&q, Some("500000"), REF), Ok(()));
        assert_eq!(check_value(&q, Some(" 600000 "), REF), Ok(()));
        assert_eq!(check_value(&q, Some("499999"), REF), Err("returned 499999, expected ≥ 500000".into()));
        assert_eq!(check_value(&q, Some("600000.5"), REF), Err("returned 600000.5, expected ≤ 600000".into()));
        assert_eq!(check_value(&q, Some("5.5e5"), REF), Ok(()));
        assert_eq!(check_value(&q, Some("NaN"), REF), Err("returned 'NaN', which is not a number".into()));
        assert_eq!(check_value(&q, Some("many"), REF), Err("returned 'many', which is not a number".into()));
        assert_eq!(check_value(&q, None, REF), Err("returned NULL".into()));
        // Only a minimum: anything above passes.
        assert_eq!(check_value(&query(Some(1.0), None, None, None), Some("1e12"), REF), Ok(()));
    }

    #[test]
    fn text_is_compared_exactly() {
        let q = query(None, None, Some("on"), None);
        assert_eq!(check_value(&q, Some("on"), REF), Ok(()));
        assert_eq!(check_value(&q, Some("off"), REF), Err("returned 'off', expected 'on'".into()));
        assert_eq!(check_value(&q, Some("on "), REF), Err("returned 'on ', expected 'on'".into()));
        // No expectation at all: any value but NULL passes.
        assert_eq!(check_value(&query(None, None, None, None), Some("anything"), REF), Ok(()));
    }

    #[test]
    fn timestamps_are_compared_with_the_reference_time() {
        let q = query(None, None, None, Some(3600));
        assert_eq!(check_value(&q, Some("2026-12-02 16:00:00+00"), REF), Ok(()));
        assert_eq!(check_value(&q, Some("2026-12-02 16:30:00.123456+00"), REF), Ok(()));
        // Newer than the reference (a clock ahead): fresh.
        assert_eq!(check_value(&q, Some("2026-12-02 18:00:00+00"), REF), Ok(()));
        assert_eq!(
            check_value(&q, Some("2026-12-02 15:59:59+00"), REF),
            Err("returned 2026-12-02 15:59:59+00, 3601 s before the reference time 2026-12-02 17:00:00 UTC, expected at most 3600 s".into())
        );
        // Another zone, no zone (UTC), a date, Unix seconds.
        assert_eq!(check_value(&q, Some("2026-12-02 17:30:00+01:30"), REF), Ok(()));
        assert!(check_value(&q, Some("2026-12-02 17:30:00+03"), REF).is_err());
        assert_eq!(check_value(&q, Some("2026-12-02 16:00:00"), REF), Ok(()));
        assert!(check_value(&q, Some("2026-11-29 17:00:00"), REF).is_err());
        assert_eq!(check_value(&query(None, None, None, Some(86400)), Some("2026-12-02"), REF), Ok(()));
        assert_eq!(check_value(&q, Some(&(REF - 10).to_string()), REF), Ok(()));
        assert!(check_value(&q, Some(&(REF - 3601).to_string()), REF).is_err());
        assert_eq!(check_value(&q, Some("infinity"), REF), Err("returned 'infinity', which is not a timestamp".into()));
        assert_eq!(check_value(&q, Some("yesterday-ish"), REF), Err("returned 'yesterday-ish', which is not a timestamp".into()));
    }

    #[test]
    fn timestamps_parse_as_postgresql_prints_them() {
        assert_eq!(parse_timestamp("2026-12-02 17:00:00+00"), Some(REF));
        assert_eq!(parse_timestamp("2026-12-02T17:00:00Z"), Some(REF));
        assert_eq!(parse_timestamp("2026-12-02 12:00:00-05"), Some(REF));
        assert_eq!(parse_timestamp("2026-12-02 17:00:00.999999"), Some(REF));
        assert_eq!(parse_timestamp("2026-12-02"), Some(REF - 17 * 3600));
        assert_eq!(parse_timestamp("1796230800.7"), Some(REF));
        assert_eq!(parse_timestamp("-infinity"), None);
        assert_eq!(parse_timestamp("2026-13-02 17:00:00"), None);
    }

    #[test]
    fn the_server_never_archives_and_stays_in_the_scratch_directory() {
        let s = Scratch {
            root: "/w/x".into(),
            data: "/w/x/data".into(),
            log: "/w/x/postgresql.log".into(),
            sock: "/w/x/sock".into(),
            outside_sock: None,
            port: 5999,
        };
        let settings: HashMap<&str, String> = server_settings(&s, 15).into_iter().collect();
        assert_eq!(settings["archive_mode"], "off");
        assert_eq!(settings["archive_library"], "");
        assert_eq!(settings["primary_conninfo"], "");
        assert_eq!(settings["listen_addresses"], "");
        assert_eq!(settings["data_directory"], "/w/x/data");
        assert_eq!(settings["hba_file"], "/w/x/pg_hba.conf");
        assert_eq!(settings["unix_socket_directories"], "/w/x/sock");
        assert!(!server_settings(&s, 14).iter().any(|(k, _)| *k == "archive_library"));
    }

    #[test]
    fn proc_stat_reads_this_process() {
        let me = std::process::id() as i32;
        let (state, ppid, start) = proc_stat(me).expect("own stat");
        assert!(state == 'R' || state == 'S', "{state}");
        assert!(ppid > 0 && start > 0);
        let p = Proc::of(me).unwrap();
        assert!(p.alive());
        assert!(!Proc { pid: me, start: start + 1 }.alive(), "another start time is another process");
        assert!(pss(me).or(rss(me)).unwrap() > 0);
    }
}
