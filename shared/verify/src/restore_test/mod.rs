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

mod checks;
mod failure;
mod memory;
mod process;
mod render;
mod scratch;
mod server;

pub use failure::{PgError, QueryFailure, RestoreTestFailure, StartError};

use checks::{amcheck, amcheck_failure, check_value, first_value};
use memory::Watcher;
use process::{end_stragglers, stop_server};
pub use render::render_text;
use render::one_line;
use scratch::{make_scratch, prepare_server_files, remove_dir, server_user, Scratch};
use server::{connect, log_tail, pg_bin_dir, replayed_time, start_server, wait_recovery_end};

use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_command::{Context_, OutputFormat, RecoveryType};
use strata_config::ValidationQuery;
use strata_repo::restore_tests::{QueryOutcome, RestoreTestResult, RESTORE_TEST_FORMAT};
use strata_restore::restore::{self, RestoreOptions};
use strata_restore::target::{self, Recovery, RecoveryArgs, Target};
use strata_restore::wal_archive::{TargetTimeline, WalArchive};
use tokio_util::sync::CancellationToken;

/// How often the server's memory is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// How long a fast shutdown may take before an immediate one.
pub const FAST_STOP_GRACE: Duration = Duration::from_secs(30);

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
/// Returns the result whether the test passed or failed (see [`Tested`]). `Err` only for options that
/// make no sense (a bad target, an unknown backup), before anything is done, and when the result cannot
/// be stored.
pub async fn run_test(ctx: &Context_, opts: &RestoreTestOptions) -> anyhow::Result<Tested> {
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
            _ = opts.cancel.cancelled() => Some(Err(RestoreTestFailure::Cancelled)),
        }
    };
    let outcome = outcome.unwrap_or(Err(RestoreTestFailure::TimedOut { limit, phase: run.phase }));
    cleanup(&mut run).await;
    let r = &mut run.result;
    r.total_ms = started.elapsed().as_millis() as u64;
    let failure = outcome.err();
    r.passed = failure.is_none();
    r.failure = failure.as_ref().map(|f| one_line(&f.to_string()));
    tracing::info!(passed = r.passed, failure = r.failure.as_deref().unwrap_or(""), "restore test finished");
    ctx.repo.put_restore_test(&ctx.stanza, &run.result).await.with_context(|| {
        format!("the restore test {} but its result could not be stored", if run.result.passed { "passed" } else { "failed" })
    })?;
    Ok(Tested { result: run.result, failure })
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
    let tested = result?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&tested.result)?),
        OutputFormat::Text => print!("{}", render_text(&tested.result)),
    }
    Ok(tested.passed()?)
}

/// A restore test that ran (and whose result is stored), passed or not.
#[derive(Debug)]
pub struct Tested {
    pub result: RestoreTestResult,
    /// Why it failed; its text, on one line, is `result.failure`.
    pub failure: Option<RestoreTestFailure>,
}

impl Tested {
    /// The test as the audit log records it: [`Passed`], or the failure as the operation's error.
    pub fn passed(self) -> Result<Passed, Failed> {
        match self.failure {
            None => Ok(Passed(self.result)),
            Some(failure) => Err(Failed { result: Box::new(self.result), failure }),
        }
    }
}

/// A restore test that failed, as the operation's error (`strata restore-test` exits 1 with it; the
/// verifier's scheduled test logs and audits it).
#[derive(Debug, thiserror::Error)]
#[error("restore test failed: {}", .result.failure.as_deref().unwrap_or_default())]
pub struct Failed {
    pub result: Box<RestoreTestResult>,
    pub failure: RestoreTestFailure,
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


async fn steps(
    ctx: &Context_,
    opts: &RestoreTestOptions,
    recovery: &Recovery,
    deadline: Instant,
    run: &mut Run,
) -> Result<(), RestoreTestFailure> {
    let cfg = &ctx.cfg.restore_test;
    let stanza = ctx.repo.stanza(&ctx.stanza).await.map_err(RestoreTestFailure::Stanza)?;
    let bin = pg_bin_dir(cfg.pg_bin_dir.as_deref(), stanza.pg_major);
    let user = server_user(&cfg.os_user).map_err(RestoreTestFailure::Scratch)?;

    run.phase = "restoring";
    let scratch = make_scratch(cfg.work_dir.as_deref(), &ctx.stanza, &user).map_err(RestoreTestFailure::Scratch)?;
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
        .map_err(RestoreTestFailure::Restore)?;
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
            Err(e) => return Err(RestoreTestFailure::ReferenceTime(e)),
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
    prepare_server_files(scratch, &user).map_err(RestoreTestFailure::ServerFiles)?;
    run.watch = Some(Watcher::start(scratch.data.clone()));
    let t = Instant::now();
    let started = start_server(&bin, scratch, &user, stanza.pg_major, deadline).await;
    let pid = run.watch.as_ref().and_then(|w| w.find_postmaster());
    run.result.postmaster_pid = pid.map(|p| p.pid as u32);
    if let Err(cause) = started {
        return Err(RestoreTestFailure::ServerDidNotStart { cause, log: log_tail(&scratch.log) });
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
        failures.extend(amcheck_failure(&outcome));
        run.result.amcheck = Some(outcome);
    }
    run.phase = "running the validation queries";
    let queries: Vec<&ValidationQuery> =
        cfg.query.iter().filter(|q| q.stanza.as_deref().is_none_or(|s| s == ctx.stanza)).collect();
    let mut clients: HashMap<String, Result<tokio_postgres::Client, Arc<PgError>>> = HashMap::new();
    for q in queries {
        if !clients.contains_key(&q.database) {
            let c = connect(scratch, &session.superuser, &q.database).await.map_err(Arc::new);
            clients.insert(q.database.clone(), c);
        }
        let value = match clients.get(&q.database).expect("inserted above") {
            Err(cause) => Err(QueryFailure::CannotConnect { database: q.database.clone(), cause: cause.clone() }),
            Ok(client) => first_value(client, &q.sql).await,
        };
        let (value, verdict) = match value {
            Err(failure) => (None, Err(failure)),
            Ok(v) => {
                let verdict = check_value(q, v.as_deref(), reference);
                (v, verdict)
            }
        };
        run.result.queries.push(QueryOutcome {
            name: q.name.clone(),
            database: q.database.clone(),
            value,
            passed: verdict.is_ok(),
            reason: verdict.as_ref().err().map(ToString::to_string),
        });
        if let Err(failure) = verdict {
            failures.push(RestoreTestFailure::Query { name: q.name.clone(), failure });
        }
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

