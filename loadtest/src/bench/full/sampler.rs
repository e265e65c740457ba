//! bench-full.sh's top sampler (`TOP_INTERVAL`): during every backup, a `top` sample every interval of all
//! processes and of the threads of ours, written to `logs/top-<name>.log` in the script's format, and the
//! averages per command name that go into the log line and the results' note.
//!
//! "Ours" are found by pid, not by name, because neighbours on a shared machine run processes with the
//! same names: the measured command's tree, the Strata services, nats-server, then PostgreSQL's (the
//! archiver's `archive_command` children included), at most 20 (`top -p`'s limit). The measured command
//! is spawned inside `common::measure`, which does not hand out its pid, so it is found as a child of this
//! process that is none of the fleet's (the sampler's own `top`s are not running while it looks).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The most pids `top -p` takes.
const TOP_MAX_PIDS: usize = 20;

/// A running sampler; [`Sampler::stop`] (or Drop) ends it after the sample in progress.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling into `log` (truncated) every `interval_s` seconds, the first one `interval_s` in.
    /// `fixed_roots` are the fleet's pids (services, then nats-server) and the postmaster, in that order,
    /// after the measured command found among this process's children. None when `interval_s` is 0.
    pub fn start(
        log: &Path,
        interval_s: u32,
        fixed_roots: Vec<u32>,
    ) -> std::io::Result<Option<Sampler>> {
        if interval_s == 0 {
            return Ok(None);
        }
        fs::File::create(log)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let out = log.to_path_buf();
        let thread = thread::Builder::new()
            .name("top-sampler".into())
            .spawn(move || sample_loop(&out, interval_s, &fixed_roots, &flag))?;
        Ok(Some(Sampler {
            stop,
            thread: Some(thread),
        }))
    }

    /// Ends sampling and waits for the sample in progress (at most about 0.5 s).
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.finish();
    }
}

fn sample_loop(out: &Path, interval_s: u32, fixed_roots: &[u32], stop: &AtomicBool) {
    let (p_file, t_file) = (with_suffix(out, ".p"), with_suffix(out, ".t"));
    loop {
        for _ in 0..interval_s * 10 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let pids = our_pids(fixed_roots);
        if pids.is_empty() {
            continue;
        }
        let list = pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        // Both over the same 0.5 s: the second frame of `top -n2` (the first frame's interval is a few ms).
        let procs = spawn_top(&["-b", "-n2", "-d", "0.5", "-w", "400"], &p_file);
        let threads = spawn_top(
            &["-b", "-n2", "-d", "0.5", "-H", "-w", "400", "-p", &list],
            &t_file,
        );
        for child in [procs, threads].into_iter().flatten() {
            let mut child = child;
            let _ = child.wait();
        }
        let mut text = format!("=== ours {list}\n=== process\n");
        text.push_str(&second_frame(&p_file, 30));
        text.push_str("=== thread\n");
        text.push_str(&second_frame(&t_file, 40));
        if let Ok(mut f) = OpenOptions::new().append(true).open(out) {
            let _ = f.write_all(text.as_bytes());
        }
        let _ = fs::remove_file(&p_file);
        let _ = fs::remove_file(&t_file);
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn spawn_top(args: &[&str], out: &Path) -> Option<std::process::Child> {
    let file = fs::File::create(out).ok()?;
    Command::new("top")
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// The lines of `top -n2`'s second frame (from its second "top -" line), at most `max` lines.
fn second_frame(path: &Path, max: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut frame = 0;
    let mut out = String::new();
    let mut n = 0;
    for line in text.lines() {
        if line.starts_with("top -") {
            frame += 1;
        }
        if frame == 2 && n < max {
            out.push_str(line);
            out.push('\n');
            n += 1;
        }
    }
    out
}

/// Pid and parent pid of every process, from /proc.
fn process_parents() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name (which may hold spaces and parentheses): state, then ppid.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// Our pids, breadth first from each root in root order, at most 20: the measured command (children of
/// this process that are not among `fixed_roots`), then `fixed_roots`.
fn our_pids(fixed_roots: &[u32]) -> Vec<u32> {
    let procs = process_parents();
    let me = std::process::id();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut alive = HashSet::new();
    for &(pid, ppid) in &procs {
        children.entry(ppid).or_default().push(pid);
        alive.insert(pid);
    }
    for list in children.values_mut() {
        list.sort_unstable();
    }
    let mut roots: Vec<u32> = children
        .get(&me)
        .map(|c| {
            c.iter()
                .copied()
                .filter(|p| !fixed_roots.contains(p))
                .collect()
        })
        .unwrap_or_default();
    roots.extend_from_slice(fixed_roots);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for root in roots {
        if !alive.contains(&root) || !seen.insert(root) {
            continue;
        }
        out.push(root);
        let mut queue = VecDeque::from([root]);
        while let Some(p) = queue.pop_front() {
            for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
                if seen.insert(c) {
                    out.push(c);
                    queue.push_back(c);
                }
            }
        }
    }
    out.truncate(TOP_MAX_PIDS);
    out
}

/// Whose CPU [`top_summary`] averages.
#[derive(Clone, Copy, PartialEq)]
pub enum Whose {
    /// Our processes.
    Ours,
    /// The rest of the machine: neighbours' noise.
    Others,
}

/// Average %CPU per command name over the samples of `log`, busiest first, at most `n`, each at least
/// 0.5%: "12% strata backup, 3% postgres: ..." (empty when there are no samples). Threads are kept raw in
/// the log but not summarised: the strata command's busy threads are all "tokio-rt-worker".
pub fn top_summary(log_text: &str, whose: Whose, n: usize) -> String {
    let mut samples = 0u32;
    let mut ours: HashSet<&str> = HashSet::new();
    let mut section = "";
    let mut in_table = false;
    let mut cpu: HashMap<String, f64> = HashMap::new();
    for line in log_text.lines() {
        if let Some(list) = line.strip_prefix("=== ours ") {
            samples += 1;
            ours = list.split(',').map(str::trim).collect();
            continue;
        }
        if let Some(name) = line.strip_prefix("=== ") {
            section = name.split_whitespace().next().unwrap_or("");
            in_table = false;
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 2 && fields[0] == "PID" && fields[1] == "USER" {
            in_table = true;
            continue;
        }
        if !in_table || fields.len() < 12 || section != "process" {
            continue;
        }
        let mine = ours.contains(fields[0]);
        if mine != (whose == Whose::Ours) {
            continue;
        }
        let pct: f64 = fields[8].parse().unwrap_or(0.0);
        *cpu.entry(fields[11..].join(" ")).or_default() += pct;
    }
    if samples == 0 {
        return String::new();
    }
    // `printf "%.0f%% %s"`, then `sort -rn`: by the printed percentage, ties by the whole line, reversed.
    let mut lines: Vec<(i64, String)> = Vec::new();
    for (cmd, total) in cpu {
        let avg = total / f64::from(samples);
        if avg >= 0.5 {
            let pct = format!("{avg:.0}");
            lines.push((pct.parse().unwrap_or(0), format!("{pct}% {cmd}")));
        }
    }
    lines.sort_by(|a, b| b.cmp(a));
    lines
        .into_iter()
        .map(|(_, l)| l)
        .take(n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "=== ours 10,11
=== process
top - 21:31:26 up 11:10,  0 user,  load average: 3.87, 5.21, 5.03
  PID USER      PR  NI    VIRT    RES    SHR S  %CPU  %MEM     TIME+ COMMAND
   10 postgres  20   0   65344  16356  11448 S  80.0   0.1   0:00.20 pgbackrest
   11 postgres  20   0   65344  16356  11448 S  20.0   0.1   0:00.20 postgres: archiver
   99 root      20   0    7076   5620   4824 S  30.0   0.0   0:01.19 rustc
=== thread
  PID USER      PR  NI    VIRT    RES    SHR S  %CPU  %MEM     TIME+ COMMAND
   10 postgres  20   0   65344  16356  11448 S  99.0   0.1   0:00.20 pgbackrest
=== ours 10
=== process
  PID USER      PR  NI    VIRT    RES    SHR S  %CPU  %MEM     TIME+ COMMAND
   10 postgres  20   0   65344  16356  11448 S  40.0   0.1   0:00.20 pgbackrest
   11 postgres  20   0   65344  16356  11448 S   0.4   0.1   0:00.20 postgres: archiver
";

    #[test]
    fn averages_per_command_over_the_samples_as_the_scripts_awk() {
        // pgbackrest (80 + 40) / 2, the archiver 20 / 2 (pid 11 is not ours in the second sample: others);
        // threads are not counted.
        assert_eq!(
            top_summary(LOG, Whose::Ours, 6),
            "60% pgbackrest, 10% postgres: archiver"
        );
        assert_eq!(top_summary(LOG, Whose::Others, 4), "15% rustc");
        assert_eq!(top_summary(LOG, Whose::Ours, 1), "60% pgbackrest");
        assert_eq!(top_summary("", Whose::Ours, 6), "");
    }

    #[test]
    fn our_pids_hold_the_roots_once_and_stop_at_twenty() {
        // Tests run in parallel threads of this process, and their children are this process's children
        // too: they come first (as the measured command would), then the fixed root.
        let me = std::process::id();
        let pids = our_pids(&[me]);
        assert!(pids.contains(&me), "{pids:?}");
        assert!(pids.len() <= TOP_MAX_PIDS);
        let unique: HashSet<&u32> = pids.iter().collect();
        assert_eq!(unique.len(), pids.len(), "{pids:?}");
    }
}
