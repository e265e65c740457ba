//! Sampling the restored server's memory while it runs: a thread that finds the postmaster and sums the
//! PSS (else RSS) of it and its descendants. Separate because it runs beside the steps on its own thread
//! and only hands back a peak and which measure it is.

use super::process::{descendants, Proc};
use super::SAMPLE_INTERVAL;
use procfs::process::{Process, SmapsRollup};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// PSS of a process from smaps_rollup, in bytes.
fn pss(pid: i32) -> Option<u64> {
    rollup_pss(&Process::new(pid).ok()?.smaps_rollup().ok()?)
}

/// The `Pss:` line of a smaps_rollup (procfs gives it in bytes).
fn rollup_pss(rollup: &SmapsRollup) -> Option<u64> {
    rollup.memory_map_rollup.0.first()?.extension.map.get("Pss").copied()
}

/// RSS of a process from statm, in bytes.
fn rss(pid: i32) -> Option<u64> {
    Some(Process::new(pid).ok()?.statm().ok()?.resident * procfs::page_size())
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
pub(super) struct Watcher {
    data: PathBuf,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    pub(super) fn start(data: PathBuf) -> Watcher {
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
    pub(super) fn find_postmaster(&self) -> Option<Proc> {
        let mut s = self.seen.lock().expect("sampler lock");
        if s.postmaster.is_none() {
            s.postmaster = Proc::from_pid_file(&self.data);
        }
        s.postmaster
    }

    pub(super) fn descendants(&self) -> Vec<Proc> {
        self.seen.lock().expect("sampler lock").descendants.clone()
    }

    /// Stops sampling; the peak and its measure (`pss`, or `rss` when some smaps_rollup was unreadable).
    pub(super) fn stop(&self) -> (Option<u64>, Option<String>) {
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


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory() {
        let me = std::process::id() as i32;
        assert!(pss(me).or(rss(me)).unwrap() > 0);
    }

    /// PSS is the rollup's `Pss:` line, not `Pss_Anon:` or `Pss_Dirty:`, in bytes.
    #[test]
    fn pss_is_read_from_the_rollup() {
        let text = "\
00400000-7ffc5a1f4000 ---p 00000000 00:00 0                              [rollup]
Rss:               22132 kB
Pss:                9437 kB
Pss_Dirty:          5000 kB
Pss_Anon:           4000 kB
Shared_Clean:      13000 kB
Private_Dirty:      5000 kB
";
        let rollup = <SmapsRollup as procfs::FromRead>::from_read(text.as_bytes()).expect("a smaps_rollup");
        assert_eq!(rollup_pss(&rollup), Some(9437 * 1024));
    }
}
