//! Asynchronous archiving (`[archive] async = true`): a long-running WAL shipper on the database host, and
//! the `archive-push` side that asks it.
//!
//! # Why
//! PostgreSQL's archiver runs `archive_command` for one segment at a time and waits for it. A push that
//! starts a process, opens the repository, starts the pipeline's stages and compresses one segment on one
//! core, serially, falls behind heavy write loads; `pg_wal` then grows until the primary's disk fills. The
//! shipper does the work ahead of the archiver instead, as pgBackRest's asynchronous archive-push does: it
//! looks at `pg_wal/archive_status/*.ready` itself and keeps many segments in flight through one pipeline
//! kept open (in single-host mode the stages run in the shipper; with a NATS bus the segments go to every
//! sealer host), so compression uses every sealer worker and segments share packs and their fsyncs. The
//! archiver's `archive-push` then only asks the shipper, over a Unix socket, whether its segment is
//! durable, which it usually already is.
//!
//! # Throughput
//! The archiver asks for segments one at a time, in name order, and a drain is as fast as the slower of
//! two things: the shipper's pipeline and the archiver's round of `sh`, `strata archive-push` and the
//! question. So `archive-push` asks before it opens the repository (a few ms a call instead of tens),
//! and in single-host mode each segment is hashed (its chunks' ids and the file's hash in one pass) and
//! compressed by one blocking thread of the shipper, at most `pipeline.sealer_workers` at once, oldest
//! segment first ([`strata_collect::wal::SealSlots`]), then handed sealed to the uploaders, which write
//! the WAL records that arrive together with overlapping fsyncs. What is left per segment is CPU
//! (compression, then the two hashes), see loadtest/README.md, "The WAL benchmark".
//!
//! # Durability
//! The rule does not change: `archive-push` exits 0 only once its segment is committed in the primary
//! repository and copied to every required repository ([`crate::multi_repo`]). The shipper answers `ok`
//! for a segment only after that; any other answer, a shipper that dies or never answers, make
//! `archive-push` push the segment itself, synchronously, so that the worst case is the old speed, never a
//! lie. Pushing a segment twice (a shipper restarted, a fallback racing the shipper) is harmless: the WAL
//! record is created with put-if-absent and the same content is accepted as already archived.
//!
//! # Spool
//! The socket, the lock that makes the shipper unique and its log live in a spool directory (mode 0700:
//! whoever can talk to the socket can make the shipper read `pg_wal`), by default `strata-archive` in
//! `pg_wal`, which no backup copies; `archive.spool_path` moves it. The first `archive-push` that finds no
//! shipper starts one in its own session, detached; the shipper exits after `archive.idle_secs` with
//! nothing to do.

use strata_command::Context_;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_bus::Bus;
use strata_collect::job::CommitOutcome;
use strata_collect::wal::{WalPushSettings, WalPushTarget};
use strata_pg::wal::{wal_file_kind, WalFileKind};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};

/// The spool's default name, in `pg_wal`.
pub const SPOOL_DIR: &str = "strata-archive";
const SOCKET: &str = "shipper.sock";
const LOCK: &str = "shipper.lock";
const LOG: &str = "shipper.log";
/// The running shipper's pid (for operators and tests; the lock, not this file, decides who runs).
pub const PID_FILE: &str = "shipper.pid";
/// How long `archive-push` waits for a shipper it started to listen.
const START_WAIT: Duration = Duration::from_secs(30);
/// How often the shipper looks at `archive_status` when nothing wakes it.
const SCAN_EVERY: Duration = Duration::from_millis(20);
/// A segment whose push failed is tried again after this long (or at once when the archiver asks for it).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A durable (or failed) file no longer ready is forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The spool directory for segments in `pg_wal`.
pub fn spool_dir(cfg: &strata_config::Config, pg_wal: &Path) -> PathBuf {
    cfg.archive.spool_path.clone().unwrap_or_else(|| pg_wal.join(SPOOL_DIR))
}

/// What [`ask`] needs to find (or start) the shipper: no repository. The archiver runs `archive-push` once
/// per segment, one after the other, so what a call costs before it asks is paid for every segment;
/// opening the repository (its key, a KMS round trip in an encrypted one) is left to the calls that push
/// themselves.
pub struct Asker<'a> {
    pub cfg: &'a strata_config::Config,
    pub config_path: &'a Path,
    pub stanza: &'a str,
}

impl<'a> Asker<'a> {
    pub fn of(ctx: &'a Context_) -> Self {
        Asker { cfg: &ctx.cfg, config_path: &ctx.config_path, stanza: &ctx.stanza }
    }
}

/// Creates the spool (mode 0700) or checks an existing one is a directory only its owner can enter.
fn prepare_spool(spool: &Path) -> anyhow::Result<()> {
    // Created with its mode (the umask can only narrow it), so a racing caller never sees it open.
    match fs::DirBuilder::new().mode(0o700).create(spool) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create the archive spool {spool:?}")),
    }
    let meta = fs::symlink_metadata(spool).with_context(|| format!("cannot read {spool:?}"))?;
    if !meta.is_dir() {
        bail!("the archive spool {spool:?} is not a directory");
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("the archive spool {spool:?} is open to group or others (mode {mode:04o}); allow only its owner (chmod 700)");
    }
    Ok(())
}

/// The shipper's lock, held while it runs (see [`super::archive::SpoolLock`]).
fn try_lock(spool: &Path) -> anyhow::Result<Option<super::archive::SpoolLock>> {
    super::archive::try_lock_file(&spool.join(LOCK))
}

/// What the shipper answered about one segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Durable in every required repository.
    Durable { already: bool },
    /// The push failed; the message says why.
    Failed(String),
}

/// `archive-push` in async mode: asks the shipper (starting one if none runs) for `path`'s segment.
/// `Ok(None)` when no shipper could be asked or it gave no answer: the caller pushes the segment itself.
pub async fn ask(ctx: &Asker<'_>, path: &Path) -> anyhow::Result<Option<Answer>> {
    let name = path.file_name().and_then(|n| n.to_str()).map(str::to_string).unwrap_or_default();
    // Before the name goes on the socket: one WAL file name, no newline.
    wal_file_kind(&name)?;
    let pg_wal = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let pg_wal = fs::canonicalize(pg_wal).with_context(|| format!("cannot find {pg_wal:?}"))?;
    let spool = spool_dir(ctx.cfg, &pg_wal);
    prepare_spool(&spool)?;
    let socket = spool.join(SOCKET);
    let stream = match UnixStream::connect(&socket).await {
        Ok(s) => Some(s),
        Err(_) => start_and_connect(ctx, &spool, &pg_wal).await?,
    };
    let Some(stream) = stream else { return Ok(None) };
    Ok(request(stream, &name).await.ok().flatten())
}

/// One question on an open connection; `None` when the connection ended without an answer.
async fn request(stream: UnixStream, name: &str) -> std::io::Result<Option<Answer>> {
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{name}\n").as_bytes()).await?;
    write.flush().await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let Some(line) = line.strip_suffix('\n') else { return Ok(None) };
    Ok(Some(match line {
        "ok" => Answer::Durable { already: false },
        "ok already" => Answer::Durable { already: true },
        other => Answer::Failed(other.strip_prefix("error ").unwrap_or(other).to_string()),
    }))
}

/// Starts a shipper unless one holds the lock, and connects to whichever shipper listens. `None` when none
/// came up within [`START_WAIT`] or the one started exited.
async fn start_and_connect(ctx: &Asker<'_>, spool: &Path, pg_wal: &Path) -> anyhow::Result<Option<UnixStream>> {
    let mut child = None;
    if try_lock(spool)?.is_some() {
        let log = fs::OpenOptions::new().create(true).append(true).open(spool.join(LOG)).context("cannot open the shipper's log")?;
        let exe = std::env::current_exe().context("cannot find the strata executable")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--config")
            .arg(ctx.config_path)
            .arg("--stanza")
            .arg(ctx.stanza)
            .arg("archive-shipper")
            .arg(pg_wal)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        // Its own session: the shipper outlives this archive_command and must not get the signals meant
        // for the server's process group.
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        child = Some(cmd.spawn().context("cannot start the WAL shipper")?);
    }
    let socket = spool.join(SOCKET);
    let started = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(&socket).await {
            return Ok(Some(s));
        }
        if let Some(c) = child.as_mut() {
            if c.try_wait()?.is_some() {
                // Ours exited: lost the race for the lock to another (then keep waiting for it), or failed.
                child = None;
                if try_lock(spool)?.is_some() {
                    return Ok(None);
                }
            }
        } else if try_lock(spool)?.is_some() {
            return Ok(None);
        }
        if started.elapsed() > START_WAIT {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A segment's state in the shipper.
enum Status {
    InFlight,
    Durable { already: bool, at: Instant },
    Failed { reason: String, at: Instant },
}

struct Shipper {
    pg_wal: PathBuf,
    status: Mutex<HashMap<String, Status>>,
    /// Something finished (a push) or arrived (a question).
    changed: Notify,
    /// Plain bytes in flight, in KiB permits.
    window: Arc<Semaphore>,
    window_kib: u32,
    last_activity: Mutex<Instant>,
}

/// The shipper process (`archive-shipper PG_WAL`, started by `archive-push`).
pub async fn run(ctx: &Context_, pg_wal: &Path) -> anyhow::Result<()> {
    let ctx = Context_ { cfg: ctx.cfg.clone(), config_path: ctx.config_path.clone(), stanza: ctx.stanza.clone(), repo: ctx.repo.clone() };
    let spool = spool_dir(&ctx.cfg, pg_wal);
    prepare_spool(&spool)?;
    let Some(_lock) = try_lock(&spool)? else { return Ok(()) };
    let socket = spool.join(SOCKET);
    let _ = fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).with_context(|| format!("cannot listen on {socket:?}"))?;
    fs::write(spool.join(PID_FILE), format!("{}\n", std::process::id())).context("cannot write the shipper's pid file")?;
    eprintln!("{} shipper {} started for {pg_wal:?}", now(), std::process::id());

    let ctx = Arc::new(ctx);
    let info = ctx.repo.stanza(&ctx.stanza).await?;
    let target = Arc::new(super::archive::wal_push_target(&ctx, &info));
    let (bus, in_process) = strata_runtime::connect_bus(&ctx.cfg).await?;
    // Single host: each segment is hashed and compressed in one pass by the task that read it, at most
    // `pipeline.sealer_workers` at once, and goes sealed to the uploaders (no hop through the sealer stage,
    // no copy of each chunk). Over NATS the sealer hosts compress, as for backups.
    let slots = in_process.then(|| Arc::new(strata_collect::wal::SealSlots::new(ctx.cfg.pipeline.sealer_workers)));
    let settings = Arc::new(super::archive::wal_push_settings(&ctx, slots));
    let stages = if in_process { Some(crate::local::start(&ctx.cfg, &ctx.repo, bus.clone(), false).await?) } else { None };

    let window_kib = (ctx.cfg.archive.in_flight_bytes / 1024).max(1) as u32;
    let shipper = Arc::new(Shipper {
        pg_wal: pg_wal.to_path_buf(),
        status: Mutex::new(HashMap::new()),
        changed: Notify::new(),
        window: Arc::new(Semaphore::new(window_kib as usize)),
        window_kib,
        last_activity: Mutex::new(Instant::now()),
    });
    let pusher = Pusher { ctx: ctx.clone(), bus, target, settings, shipper: shipper.clone() };
    let idle = Duration::from_secs(ctx.cfg.archive.idle_secs);
    let result = async {
        // At once: the archive-push that started this shipper is waiting.
        pusher.look_ahead()?;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted.context("cannot accept on the shipper's socket")?;
                    *shipper.last_activity.lock().expect("activity") = Instant::now();
                    tokio::spawn(serve(stream, pusher.clone()));
                }
                _ = tokio::time::sleep(SCAN_EVERY) => {
                    let ready = pusher.look_ahead()?;
                    let busy = ready || shipper.status.lock().expect("status").values().any(|s| matches!(s, Status::InFlight));
                    if busy {
                        *shipper.last_activity.lock().expect("activity") = Instant::now();
                    } else if shipper.last_activity.lock().expect("activity").elapsed() >= idle {
                        break;
                    }
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    // Stop answering before the stages stop: a question that comes now finds no socket and the archiver's
    // push starts another shipper or pushes itself.
    let _ = fs::remove_file(&socket);
    drop(listener);
    if let Some(stages) = stages {
        stages.stop().await?;
    }
    eprintln!("{} shipper {} exits: {}", now(), std::process::id(), match &result { Ok(()) => "idle".to_string(), Err(e) => format!("{e:#}") });
    result
}

fn now() -> String {
    strata_stamp::format_rfc3339(strata_stamp::now())
}

#[derive(Clone)]
struct Pusher {
    ctx: Arc<Context_>,
    bus: Arc<dyn Bus>,
    target: Arc<WalPushTarget>,
    settings: Arc<WalPushSettings>,
    shipper: Arc<Shipper>,
}

impl Pusher {
    /// Starts pushing ready files the window has room for, in the archiver's order (history files first,
    /// then by name). Forgets files the archiver is done with. Whether any file is ready.
    fn look_ahead(&self) -> anyhow::Result<bool> {
        let status_dir = self.shipper.pg_wal.join("archive_status");
        let mut ready: Vec<String> = match fs::read_dir(&status_dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".ready")).map(str::to_string))
                .filter(|n| wal_file_kind(n).is_ok())
                .collect(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {status_dir:?}")),
        };
        ready.sort_by_key(|n| (wal_file_kind(n).ok() != Some(WalFileKind::History), n.clone()));
        {
            // Files no longer ready were archived (or dropped); the archiver will not ask again about them.
            let mut status = self.shipper.status.lock().expect("status");
            // (After a while: a question about one may still be waiting for its answer.)
            let ready_set: std::collections::HashSet<&String> = ready.iter().collect();
            status.retain(|n, s| match s {
                Status::Durable { at, .. } | Status::Failed { at, .. } => at.elapsed() <= FORGET_AFTER || ready_set.contains(n),
                Status::InFlight => true,
            });
        }
        for name in &ready {
            let retry = {
                let status = self.shipper.status.lock().expect("status");
                match status.get(name) {
                    None => true,
                    Some(Status::Failed { at, .. }) => at.elapsed() >= RETRY_AFTER,
                    Some(_) => false,
                }
            };
            if !retry {
                continue;
            }
            let Some(permits) = self.window_permits(name) else { continue };
            let Ok(permit) = self.shipper.window.clone().try_acquire_many_owned(permits) else { break };
            self.start(name.clone(), Some(permit));
        }
        Ok(!ready.is_empty())
    }

    /// KiB permits for a file (its size, at most the whole window); `None` when it is gone.
    fn window_permits(&self, name: &str) -> Option<u32> {
        let size = fs::metadata(self.shipper.pg_wal.join(name)).ok()?.len();
        Some(((size / 1024) as u32).clamp(1, self.shipper.window_kib))
    }

    /// Marks `name` in flight and pushes it in a task.
    fn start(&self, name: String, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
        self.shipper.status.lock().expect("status").insert(name.clone(), Status::InFlight);
        // In line for compression in name order, from now: the archiver waits for the oldest first.
        let ticket = self.settings.seal_here.as_ref().map(|slots| slots.reserve(&name));
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = me.push(&name, ticket).await;
            drop(permit);
            let status = match outcome {
                Ok(o) => Status::Durable { already: o == CommitOutcome::AlreadyArchived, at: Instant::now() },
                Err(e) => {
                    let reason = strata_runtime::error_line(&e);
                    eprintln!("{} {name}: {reason}", now());
                    Status::Failed { reason, at: Instant::now() }
                }
            };
            me.shipper.status.lock().expect("status").insert(name, status);
            me.shipper.changed.notify_waiters();
        });
    }

    /// What `archive-push` would do for the file: check, push, copy to the other required repositories.
    /// `ticket`: its place in line for a sealing slot, given up once it has the slot (kept, it would hold
    /// every later segment back until this one is durable).
    async fn push(&self, name: &str, ticket: Option<strata_collect::wal::SealTicket>) -> anyhow::Result<CommitOutcome> {
        let path = self.shipper.pg_wal.join(name);
        // The slot first, then the file: the window lets sixteen segments be in flight, but only the
        // ones being compressed need their bytes in memory. Read earlier, each segment was a fresh
        // allocation the kernel faulted in and zeroed (a sixth of the shipper's CPU); read in the slot,
        // malloc recycles the few buffers in use.
        let slot = match &self.settings.seal_here {
            Some(slots) => Some(slots.acquire(name).await),
            None => None,
        };
        drop(ticket);
        let file = strata_collect::wal::read(&path, &self.target).await?;
        if let Some(history) = &file.history {
            super::archive::check_parent_known(&self.ctx, &file.name, history).await?;
        }
        let outcome = strata_collect::wal::push(self.bus.clone(), &self.target, &self.settings, file, slot).await?;
        crate::multi_repo::push_to_others(&self.ctx, name).await?;
        Ok(outcome)
    }

    /// Waits until `name` is durable or failed, starting its push if nothing is pushing it.
    async fn answer(&self, name: &str) -> Answer {
        loop {
            let notified = self.shipper.changed.notified();
            {
                let mut status = self.shipper.status.lock().expect("status");
                match status.get(name) {
                    Some(Status::Durable { already, .. }) => return Answer::Durable { already: *already },
                    Some(Status::Failed { reason, .. }) => {
                        // Reported once; the archiver's next call pushes it again.
                        let reason = reason.clone();
                        status.remove(name);
                        return Answer::Failed(reason);
                    }
                    Some(Status::InFlight) => {}
                    None => {
                        drop(status);
                        // Asked for before the look-ahead saw it: pushed now, outside the window.
                        self.start(name.to_string(), None);
                    }
                }
            }
            notified.await;
        }
    }
}

/// Answers the questions on one connection, one name per line.
async fn serve(stream: UnixStream, pusher: Pusher) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(name)) = lines.next_line().await {
        let reply = if wal_file_kind(&name).is_err() {
            "error not a WAL file name\n".to_string()
        } else {
            match pusher.answer(&name).await {
                Answer::Durable { already: false } => "ok\n".to_string(),
                Answer::Durable { already: true } => "ok already\n".to_string(),
                Answer::Failed(reason) => format!("error {}\n", reason.replace('\n', " ")),
            }
        };
        *pusher.shipper.last_activity.lock().expect("activity") = Instant::now();
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
