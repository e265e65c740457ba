//! A host of the model: a network namespace, a cgroup, and a worker thread that lives inside both.
//!
//! # Why a thread
//! Network namespaces and (v1) cgroups belong to threads, and a child inherits them from the thread that
//! forks it. So a host's thread `setns`es into the host's namespace and writes its tid into the host's
//! cgroup once, and every process started from it (by the `strata-integration` harness, unchanged:
//! `PgCluster::start`, `Service::spawn`, `NatsServer::launch`, `S3Server::start_on`, or a plain `Command`)
//! runs on that host from its first instruction. [`Host::run`] hands the thread a closure and waits for
//! its result (a panic in it is re-raised in the caller).
//!
//! Processes keep running after the closure returns; their handles (returned by the closure) stop them
//! by pid when dropped, from whichever thread drops them.

use anyhow::{Context, Result};
use std::any::Any;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::cgroup::HostCgroup;
use crate::net::NetNs;

type Job = Box<dyn FnOnce() + Send>;

/// What a host does in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// PostgreSQL and strata-collector (and the CLI, archive-push, pgbench).
    Db,
    /// A nats-server.
    Bus,
    Sealer,
    Uploader,
    /// The S3 server of an S3 repository.
    Repo,
    Replicator,
}

impl Role {
    /// The stage name used in results (`cpu.<stage>_s`).
    pub fn stage(self) -> &'static str {
        match self {
            Role::Db => "db",
            Role::Bus => "bus",
            Role::Sealer => "sealer",
            Role::Uploader => "uploader",
            Role::Repo => "repo",
            Role::Replicator => "replicator",
        }
    }
}

/// One host; the thread stops, then the cgroup and the namespace go, on Drop (field order).
pub struct Host {
    pub name: String,
    pub role: Role,
    thread: Option<(mpsc::Sender<Job>, JoinHandle<()>)>,
    pub cgroup: HostCgroup,
    pub ns: NetNs,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Host({} {} {})", self.name, self.ns.name, self.ns.addr)
    }
}

impl Host {
    /// Starts the host's thread inside `ns` and `cgroup`.
    pub fn start(name: &str, role: Role, ns: NetNs, cgroup: HostCgroup) -> Result<Host> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let ns_path: PathBuf = ns.path();
        let tasks = cgroup.thread_files();
        let handle = std::thread::Builder::new()
            .name(format!("host-{name}"))
            .spawn(move || {
                let entered = (|| -> Result<()> {
                    let f = File::open(&ns_path)
                        .with_context(|| format!("cannot open {}", ns_path.display()))?;
                    // SAFETY: setns on a descriptor we own; it changes only this thread's network namespace.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("setns {}", ns_path.display()));
                    }
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() };
                    for t in &tasks {
                        std::fs::write(t, tid.to_string())
                            .with_context(|| format!("cannot join cgroup ({})", t.display()))?;
                    }
                    Ok(())
                })();
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    for job in rx {
                        job();
                    }
                }
            })
            .context("cannot start a host thread")?;
        ready_rx.recv().context("host thread died at start")??;
        Ok(Host {
            name: name.to_string(),
            role,
            thread: Some((tx, handle)),
            cgroup,
            ns,
        })
    }

    /// The host's address on the bridge.
    pub fn addr(&self) -> std::net::Ipv4Addr {
        self.ns.addr
    }

    /// Runs `f` on the host's thread (so anything it starts runs on this host) and returns its result.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel::<Result<R, Box<dyn Any + Send>>>();
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        let (sender, _) = self.thread.as_ref().expect("the thread lives until Drop");
        sender.send(job).expect("host thread alive");
        match rx.recv().expect("host thread answers") {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        }
    }

    /// Moves a process started on this host (and its children) into its cgroup; needed with v2, where
    /// cgroups hold processes and not threads (see `cgroup`).
    pub fn adopt(&self, pid: u32) -> Result<()> {
        self.cgroup.adopt(pid)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.thread.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}
