//! How a benchmark runs Strata: its `[pipeline]` knobs ([`Pipeline`]), the environment every Strata
//! process inherits ([`strata_environment`]), the bus and the services in NATS mode ([`BusMode`],
//! [`Fleet`], with their peak RSS and CPU from /proc), and the config file ([`write_strata_config`]). Out of
//! common.rs because it is the Strata side of every benchmark, apart from the work directory, the
//! cluster and the measuring they share.

use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_integration::{poll, write_config_with, NatsServer, Service, StrataBins};

use super::common::{log, tail, BenchCluster, Workspace, STANZA};

/// The `[pipeline]` keys a benchmark sets, with Strata's defaults.
const PIPELINE_DEFAULTS: [(&str, u64); 9] = [
    ("chunk_size", 1_048_576),
    ("compress_level", 1),
    ("wal_compress_level", 3),
    ("read_workers", 2),
    ("sealer_workers", 2),
    ("uploader_workers", 2),
    ("pack_size", 67_108_864),
    ("in_flight_bytes", 67_108_864),
    ("stall_timeout_secs", 120),
];

/// The pipeline settings of a run: the defaults, then `STRATA_PIPELINE__<KEY>` from the environment,
/// then the `--pipeline "key=value key=value"` knob. The same values go into the config and into every
/// Strata process's environment, so both always say the same.
#[derive(Debug, Clone)]
pub struct Pipeline {
    values: BTreeMap<&'static str, u64>,
    overrides: Vec<String>,
}

impl Pipeline {
    /// Reads the environment and `knob`.
    pub fn from_env(knob: &str) -> Result<Pipeline> {
        let mut values: BTreeMap<&'static str, u64> = PIPELINE_DEFAULTS.into_iter().collect();
        let mut overrides = Vec::new();
        let keys: Vec<&str> = PIPELINE_DEFAULTS.iter().map(|(k, _)| *k).collect();
        let mut set = |key: &str, value: &str, from: &str| -> Result<()> {
            let k = keys
                .iter()
                .find(|k| **k == key)
                .ok_or_else(|| anyhow!("{from}: '{key}' is not among: {}", keys.join(" ")))?;
            let v: u64 = value
                .parse()
                .map_err(|_| anyhow!("{from}: {key} must be a number, not '{value}'"))?;
            values.insert(k, v);
            overrides.push(format!("{key}={v}"));
            Ok(())
        };
        for (k, _) in PIPELINE_DEFAULTS {
            if let Ok(v) = std::env::var(format!("STRATA_PIPELINE__{}", k.to_uppercase())) {
                if !v.is_empty() {
                    set(k, &v, "STRATA_PIPELINE__*")?;
                }
            }
        }
        for item in knob.split([' ', ',']).filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| anyhow!("--pipeline: '{item}' is not key=value"))?;
            let k = k.to_lowercase();
            set(k.trim_start_matches("strata_pipeline__"), v, "--pipeline")?;
        }
        Ok(Pipeline { values, overrides })
    }

    /// The `[pipeline]` table.
    pub fn toml(&self) -> String {
        let mut t = String::from("[pipeline]\n");
        for (k, v) in &self.values {
            t.push_str(&format!("{k} = {v}\n"));
        }
        t
    }

    /// "defaults" or the overrides, `key=value` separated by spaces.
    pub fn describe(&self) -> String {
        if self.overrides.is_empty() {
            "defaults".into()
        } else {
            self.overrides.join(" ")
        }
    }

    /// Puts `STRATA_PIPELINE__<KEY>` for every key into `cmd`'s environment.
    pub fn apply_env(&self, cmd: &mut Command) {
        for (k, v) in &self.values {
            cmd.env(
                format!("STRATA_PIPELINE__{}", k.to_uppercase()),
                v.to_string(),
            );
        }
    }

    /// The same as (name, value) pairs, for `Service::spawn_with_env`.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.values
            .iter()
            .map(|(k, v)| {
                (
                    format!("STRATA_PIPELINE__{}", k.to_uppercase()),
                    v.to_string(),
                )
            })
            .collect()
    }
}

/// The `STRATA_*` variables [`strata_environment`] keeps: the harness's own.
const HARNESS_ENV: [&str; 3] = ["STRATA_PG_BIN_DIR", "STRATA_NATS_SERVER", "STRATA_TEST_"];

/// Sets the environment every Strata process of the run inherits (the CLI, the services, and the
/// archive_command PostgreSQL runs): no `STRATA_*` override but the harness's, the effective pipeline as
/// `STRATA_PIPELINE__<KEY>`, and `STRATA_BUS` with the run's real bus URL, so that the binaries' own
/// overrides agree with the config (a `STRATA_BUS=nats://` knob has no host; `STRATA_PIPELINE` itself
/// would be read as a key `pipeline`). Call it before PostgreSQL and the services start, while the
/// program runs no other thread.
pub fn strata_environment(bus_url: &str, pipeline: &Pipeline) {
    for (k, _) in std::env::vars() {
        if k.starts_with("STRATA_") && !HARNESS_ENV.iter().any(|p| k.starts_with(p)) {
            std::env::remove_var(&k);
        }
    }
    for (k, v) in pipeline.env_pairs() {
        std::env::set_var(k, v);
    }
    std::env::set_var("STRATA_BUS", bus_url);
}

/// Where the stages of a backup run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusMode {
    /// Every stage inside the `strata` command.
    Local,
    /// A local nats-server and one strata-collector, -sealer and -uploader.
    Nats,
}

impl BusMode {
    /// "local", or a `nats://` URL (its host and port are ignored: the run starts its own server).
    pub fn parse(knob: &str) -> Result<BusMode> {
        match knob {
            "local" | "" => Ok(BusMode::Local),
            k if k.starts_with("nats://") => Ok(BusMode::Nats),
            k => bail!("STRATA_BUS must be 'local' or a nats:// URL, not '{k}'"),
        }
    }

    /// "local" or "nats".
    pub fn name(self) -> &'static str {
        match self {
            BusMode::Local => "local",
            BusMode::Nats => "nats",
        }
    }
}

/// The NATS side of a run: nats-server and the three services (nothing in local mode).
pub struct Fleet {
    // Fields drop in order: the services stop before the server they talk to.
    services: Vec<Service>,
    nats: Option<NatsServer>,
    bins: StrataBins,
    config: PathBuf,
    logs: PathBuf,
    env: Vec<(String, String)>,
}

/// The services a NATS-mode backup needs, in start order.
pub const FLEET_SERVICES: [&str; 3] = ["strata-collector", "strata-sealer", "strata-uploader"];

impl Fleet {
    /// Starts nats-server (NATS mode). The services start with [`Fleet::start_services`] once the
    /// config that names [`Fleet::url`] is written.
    pub fn start_bus(
        ws: &Workspace,
        bins: &StrataBins,
        mode: BusMode,
        pipeline: &Pipeline,
    ) -> Result<Fleet> {
        let nats = match mode {
            BusMode::Local => None,
            BusMode::Nats => {
                let mut server = NatsServer::start(ws.test_dir());
                server.skip_log_check("a benchmark, not a test");
                log(format!("nats-server on {}", server.url()));
                Some(server)
            }
        };
        Ok(Fleet {
            services: Vec::new(),
            nats,
            bins: bins.clone(),
            config: PathBuf::new(),
            logs: ws.logs(),
            env: pipeline.env_pairs(),
        })
    }

    /// "local", or the nats-server's URL.
    pub fn url(&self) -> String {
        self.nats
            .as_ref()
            .map(|n| n.url())
            .unwrap_or_else(|| "local".into())
    }

    /// The mode.
    pub fn mode(&self) -> BusMode {
        if self.nats.is_some() {
            BusMode::Nats
        } else {
            BusMode::Local
        }
    }

    /// NATS mode: (re)starts the three services with `config`, each up once it logs "running". The
    /// uploader keeps the repository's chunk index in memory, so a wiped repository needs a restart
    /// (which also resets the services' peak RSS).
    pub fn start_services(&mut self, config: &Path) -> Result<()> {
        if self.nats.is_none() {
            return Ok(());
        }
        self.stop_services();
        self.config = config.to_path_buf();
        for name in FLEET_SERVICES {
            let env: Vec<(&str, &str)> = self
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut service = Service::spawn_with_env(&self.bins, name, config, &self.logs, &env);
            service.skip_log_check("a benchmark: its logs are kept in <bench dir>/logs");
            let log_file = service.log_file().to_path_buf();
            let up = poll(Duration::from_secs(30), Duration::from_millis(100), || {
                if !service.is_running() {
                    return Some(false);
                }
                tail(&log_file, 5).contains("running").then_some(true)
            });
            match up {
                Some(true) => {}
                Some(false) => bail!(
                    "{name} exited at start; log {}:\n{}",
                    log_file.display(),
                    tail(&log_file, 20)
                ),
                None => bail!(
                    "{name} did not report running within 30 s (log {})",
                    log_file.display()
                ),
            }
            self.services.push(service);
        }
        log(format!(
            "services: {}",
            self.services
                .iter()
                .map(|s| format!("{}={}", s.name(), s.pid()))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        Ok(())
    }

    /// Stops the services (last started first).
    pub fn stop_services(&mut self) {
        while let Some(mut s) = self.services.pop() {
            s.stop();
        }
    }

    /// The services' pids with their names.
    pub fn services(&self) -> Vec<(String, u32)> {
        self.services
            .iter()
            .map(|s| (s.name().to_string(), s.pid()))
            .collect()
    }

    /// nats-server's pid.
    pub fn nats_pid(&mut self) -> Option<u32> {
        self.nats.as_mut().and_then(|n| n.pid())
    }

    /// Resets the peak RSS of the services and nats-server (clear_refs 5).
    pub fn reset_hwm(&mut self) {
        let mut pids: Vec<u32> = self.services.iter().map(|s| s.pid()).collect();
        pids.extend(self.nats_pid());
        for p in pids {
            proc_reset_hwm(p);
        }
    }

    /// The sum of the services' peak RSS, KiB.
    pub fn hwm_kb(&self) -> u64 {
        self.services.iter().map(|s| proc_hwm_kb(s.pid())).sum()
    }
}

/// A process's peak RSS (`VmHWM`), KiB; 0 if it is gone.
pub fn proc_hwm_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets a process's peak RSS to its current RSS (`echo 5 > /proc/<pid>/clear_refs`).
pub fn proc_reset_hwm(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// A process's CPU time (utime + stime), clock ticks; 0 if it is gone.
pub fn proc_cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(after) = stat.rfind(") ").map(|i| &stat[i + 2..]) else {
        return 0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Writes `<root>/strata.toml`: bus `url`, the stanza on `cluster`, `repos` ((name, body) pairs, the first
/// the primary) and `extra` tables (`[pipeline]`, ...). Returns its path.
pub fn write_strata_config(
    ws: &Workspace,
    url: &str,
    cluster: &BenchCluster,
    repos: &[(&str, &str)],
    extra: &str,
) -> PathBuf {
    let path = write_config_with(
        ws.root(),
        url,
        STANZA,
        cluster.data_dir(),
        &cluster.conn_string(),
        repos,
        extra,
    );
    let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o644));
    path
}

/// A posix repository body for [`write_strata_config`].
pub fn posix_repo(path: &Path) -> String {
    format!(
        "type = \"posix\"\npath = {}\n",
        strata_integration::config::toml_string(&path.display().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_knob_overrides_and_refuses_unknown_keys() {
        let p = Pipeline::from_env("sealer_workers=3,chunk_size=2097152").unwrap();
        assert!(p.toml().contains("sealer_workers = 3\n"));
        assert!(p.describe().contains("chunk_size=2097152"));
        assert!(Pipeline::from_env("nope=1").is_err());
        assert!(Pipeline::from_env("read_workers=x").is_err());
    }
}
