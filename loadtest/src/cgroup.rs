//! Each host's CPU share: a cgroup with a CFS quota, and its CPU usage for the per-stage figures.
//!
//! # v1 or v2
//! - **v1**: the `cpu` controller's hierarchy (`cpu.cfs_quota_us` / `cpu.cfs_period_us`) for the quota,
//!   and `cpuacct` (`cpuacct.usage`, ns) for the usage; the two may be one mount (`cpu,cpuacct`).
//! - **v2**: the unified hierarchy (wherever `cgroup2` is mounted: `/sys/fs/cgroup` or
//!   `/sys/fs/cgroup/unified`), `cpu.max` for the quota and `cpu.stat` `usage_usec`; it needs the `cpu`
//!   controller there, which a machine that binds `cpu` to v1 does not have.
//!
//! [`CgroupMode::Auto`] takes v1 when its `cpu` controller is mounted, else v2 when it offers `cpu`.
//!
//! # Getting processes in before they work
//! v1 cgroups hold threads: a host's worker thread ([`crate::host`]) writes its own tid to `tasks`, and
//! every process it starts is born in the cgroup. v2 cgroups hold whole processes, so there each process
//! is moved (with its descendants) right after it is spawned ([`HostCgroup::adopt`]); v1 does that too, as
//! a check that costs nothing.
//!
//! # Names and removal
//! `<hierarchy>/strata-sm-<run>/<host>`; removed on Drop, after the host's processes and thread are gone
//! (a cgroup with members cannot be removed: anything still there is moved to the root first and named
//! in a warning).

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

use crate::net::NAME_PREFIX;

/// Which cgroup version to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CgroupMode {
    /// v1 if its `cpu` controller is mounted, else v2.
    Auto,
    V1,
    V2,
    /// No cgroups: no quotas, no CPU figures.
    None,
}

/// Where the hierarchies are.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    V1 { cpu: PathBuf, cpuacct: PathBuf },
    V2 { root: PathBuf },
    None,
}

fn mounts() -> Vec<(String, String, String)> {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[1].to_string(), f[2].to_string(), f[3].to_string()))
        })
        .collect()
}

fn v1_mount(controller: &str) -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, kind, opts)| kind == "cgroup" && opts.split(',').any(|o| o == controller))
        .map(|(dir, _, _)| PathBuf::from(dir))
}

fn v2_mount() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, kind, _)| kind == "cgroup2")
        .map(|(dir, _, _)| PathBuf::from(dir))
}

impl Hierarchy {
    /// Finds the hierarchy `mode` asks for; an error says why it is not there.
    pub fn detect(mode: CgroupMode) -> Result<Hierarchy> {
        let v1 = || -> Result<Hierarchy> {
            let cpu = v1_mount("cpu").context("cgroup v1: the cpu controller is not mounted")?;
            if !cpu.join("cpu.cfs_quota_us").exists() {
                bail!(
                    "cgroup v1: {} has no cpu.cfs_quota_us (kernel without CFS bandwidth control)",
                    cpu.display()
                );
            }
            let cpuacct =
                v1_mount("cpuacct").context("cgroup v1: the cpuacct controller is not mounted")?;
            Ok(Hierarchy::V1 { cpu, cpuacct })
        };
        let v2 = || -> Result<Hierarchy> {
            let root = v2_mount().context("cgroup v2: no cgroup2 mount")?;
            let controllers =
                fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "cpu") {
                bail!(
                    "cgroup v2: {} offers no cpu controller (cgroup.controllers = {:?}; it is bound to v1 here: use --cgroup v1)",
                    root.display(),
                    controllers.trim()
                );
            }
            Ok(Hierarchy::V2 { root })
        };
        match mode {
            CgroupMode::V1 => v1(),
            CgroupMode::V2 => v2(),
            CgroupMode::None => Ok(Hierarchy::None),
            CgroupMode::Auto => v1().or_else(|e1| {
                v2().map_err(|e2| anyhow::anyhow!("no usable cgroup: {e1:#}; {e2:#}"))
            }),
        }
    }

    /// "v1", "v2" or "none".
    pub fn version(&self) -> &'static str {
        match self {
            Hierarchy::V1 { .. } => "v1",
            Hierarchy::V2 { .. } => "v2",
            Hierarchy::None => "none",
        }
    }

    /// The run's parent directories (one per hierarchy in use).
    fn run_dirs(&self, run: &str) -> Vec<PathBuf> {
        let name = format!("{NAME_PREFIX}{run}");
        match self {
            Hierarchy::V1 { cpu, cpuacct } if cpu == cpuacct => vec![cpu.join(name)],
            Hierarchy::V1 { cpu, cpuacct } => vec![cpu.join(&name), cpuacct.join(name)],
            Hierarchy::V2 { root } => vec![root.join(name)],
            Hierarchy::None => vec![],
        }
    }

    /// Every hierarchy's root, for `--cleanup`.
    pub fn all_roots() -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = ["cpu", "cpuacct"]
            .iter()
            .filter_map(|c| v1_mount(c))
            .collect();
        roots.extend(v2_mount());
        roots.sort();
        roots.dedup();
        roots
    }
}

/// The run's parent cgroup(s); removed on Drop (after every host's).
#[derive(Debug)]
pub struct RunCgroup {
    hierarchy: Hierarchy,
    run: String,
    dirs: Vec<PathBuf>,
}

impl RunCgroup {
    /// Creates `strata-sm-<run>` in each hierarchy; in v2 also turns the cpu controller on for its children.
    pub fn create(hierarchy: Hierarchy, run: &str) -> Result<RunCgroup> {
        let dirs = hierarchy.run_dirs(run);
        for d in &dirs {
            fs::create_dir(d).with_context(|| format!("cannot create cgroup {}", d.display()))?;
        }
        let cg = RunCgroup {
            hierarchy,
            run: run.to_string(),
            dirs,
        };
        if let Hierarchy::V2 { root } = &cg.hierarchy {
            enable_cpu(root)?;
            enable_cpu(&cg.dirs[0])?;
        }
        Ok(cg)
    }

    /// The version in use.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Creates the host's cgroup with a quota of `cores` CPUs (None: unlimited).
    pub fn host(&self, host: &str, cores: Option<f64>) -> Result<HostCgroup> {
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|d| d.join(host)).collect();
        for d in &dirs {
            fs::create_dir(d).with_context(|| format!("cannot create cgroup {}", d.display()))?;
        }
        let cg = HostCgroup {
            hierarchy: self.hierarchy.clone(),
            dirs,
            name: format!("{}{}/{host}", NAME_PREFIX, self.run),
        };
        if let Some(cores) = cores {
            if !(0.01..=1024.0).contains(&cores) {
                bail!("a CPU share of {cores} cores is out of range (0.01..1024)");
            }
            let period: u64 = 100_000;
            let quota = (cores * period as f64).round() as u64;
            match &cg.hierarchy {
                Hierarchy::V1 { .. } => {
                    write(&cg.dirs[0].join("cpu.cfs_period_us"), &period.to_string())?;
                    write(&cg.dirs[0].join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                Hierarchy::V2 { .. } => {
                    write(&cg.dirs[0].join("cpu.max"), &format!("{quota} {period}"))?
                }
                Hierarchy::None => {}
            }
        }
        Ok(cg)
    }
}

fn enable_cpu(dir: &Path) -> Result<()> {
    let control = dir.join("cgroup.subtree_control");
    let now = fs::read_to_string(&control).unwrap_or_default();
    if !now.split_whitespace().any(|c| c == "cpu") {
        write(&control, "+cpu")?;
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("cannot write {value:?} to {}", path.display()))
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            if let Err(e) = fs::remove_dir(d) {
                eprintln!("warning: cannot remove cgroup {}: {e}", d.display());
            }
        }
    }
}

/// One host's cgroup (one directory per hierarchy in use).
#[derive(Debug)]
pub struct HostCgroup {
    hierarchy: Hierarchy,
    dirs: Vec<PathBuf>,
    name: String,
}

impl HostCgroup {
    /// `strata-sm-<run>/<host>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The files a thread writes its tid to, to join (v1 only; v2 takes processes, see [`HostCgroup::adopt`]).
    pub fn thread_files(&self) -> Vec<PathBuf> {
        match self.hierarchy {
            Hierarchy::V1 { .. } => self.dirs.iter().map(|d| d.join("tasks")).collect(),
            _ => vec![],
        }
    }

    /// Its directories (none without cgroups), for [`adopt_into`] from a host's thread.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.clone()
    }

    /// Moves process `pid` and all its descendants into the cgroup.
    pub fn adopt(&self, pid: u32) -> Result<()> {
        adopt_into(&self.dirs, pid)
    }

    /// CPU time its members used so far, in seconds (0 without cgroups).
    pub fn usage_secs(&self) -> f64 {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => {
                let d = self.dirs.last().expect("v1 has a cpuacct directory");
                fs::read_to_string(d.join("cpuacct.usage"))
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
                    / 1e9
            }
            Hierarchy::V2 { .. } => {
                fs::read_to_string(self.dirs[0].join("cpu.stat"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
                    / 1e6
            }
            Hierarchy::None => 0.0,
        }
    }

    /// Periods in which the quota throttled the host, and how many periods there were (v1 and v2 `cpu.stat`).
    pub fn throttled(&self) -> (u64, u64) {
        let Some(d) = self.dirs.first() else {
            return (0, 0);
        };
        let stat = fs::read_to_string(d.join("cpu.stat")).unwrap_or_default();
        let get = |k: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        (get("nr_throttled "), get("nr_periods "))
    }
}

impl Drop for HostCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            evacuate(d);
            if let Err(e) = fs::remove_dir(d) {
                eprintln!("warning: cannot remove cgroup {}: {e}", d.display());
            }
        }
    }
}

/// Moves process `pid` and all its descendants into the cgroup directories `dirs` (see [`HostCgroup::dirs`]).
pub fn adopt_into(dirs: &[PathBuf], pid: u32) -> Result<()> {
    let mut pids = vec![pid];
    pids.extend(descendants(pid));
    for d in dirs {
        for p in &pids {
            // A process that exited meanwhile is not an error.
            if let Err(e) = fs::write(d.join("cgroup.procs"), p.to_string()) {
                if Path::new(&format!("/proc/{p}")).exists() {
                    return Err(e)
                        .with_context(|| format!("cannot move pid {p} into {}", d.display()));
                }
            }
        }
    }
    Ok(())
}

/// Pids listed in a cgroup directory.
pub fn members(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Moves whatever is still in `dir` to its hierarchy's root, so it can be removed; names what it moved.
fn evacuate(dir: &Path) {
    let left = members(dir);
    if left.is_empty() {
        return;
    }
    eprintln!(
        "warning: pids {left:?} still in cgroup {}: moved to the root cgroup",
        dir.display()
    );
    let mut root = dir.to_path_buf();
    while root
        .parent()
        .is_some_and(|p| p.join("cgroup.procs").exists())
    {
        root.pop();
    }
    for p in left {
        let _ = fs::write(root.join("cgroup.procs"), p.to_string());
    }
}

/// Every descendant of `pid` (children, grandchildren, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parent_of.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &parent_of {
            if *parent == p {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}
