//! A scale model of a Strata fleet on one machine: each host is a Linux network namespace on a bridge,
//! with its own CPU share (a cgroup quota) and optionally a shaped link (`tc`), running the real
//! binaries started through the `strata-integration` harness (PgCluster, NatsServer, S3Server,
//! StrataBins/Service, the config writer).
//!
//! # What it owns
//! The model's plumbing ([`net`], [`cgroup`], [`host`]), the fleet and its measurements ([`model`]), the
//! datasets (pgbench, oltp: [`dataset`]), the benchmarks beside pgBackRest ([`bench`], `strata-bench`), the samplers ([`sample`]), the results
//! ([`report`]) and the removal of a killed run's leftovers ([`cleanup`]). It knows Strata only as a user
//! does: command lines, the config file, `strata info --output json`, the metrics endpoints.
//!
//! # Cleanup
//! Every process is stopped through its handle (by pid) and every namespace, link and cgroup is removed
//! by a Drop guard, also on an error, a panic, SIGINT or SIGTERM (which turn into an error at the next
//! wait, see [`signals`]). `strata-scale-model --cleanup` removes what a run that
//! was killed with SIGKILL left.

pub mod bench;
pub mod cgroup;
pub mod cleanup;
pub mod dataset;
pub mod host;
pub mod model;
pub mod net;
pub mod report;
pub mod sample;
pub mod signals;
pub mod wan;

/// Why namespaces cannot be made here (not root, no `ip`, `ip netns add` refused), or None when they can:
/// what the smoke test checks before it runs the model.
pub fn namespaces_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let probe = format!("{}probe-{}", net::NAME_PREFIX, std::process::id());
    match std::process::Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
    {
        Err(e) => Some(format!("cannot run `ip`: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &probe])
                .output();
            None
        }
    }
}
