//! The fleet and the measurements: builds the hosts, starts the servers and services on them through
//! the `strata-integration` harness, and runs each shape's phases.
//!
//! # Per run (kept across shapes)
//! The bridge and the run's cgroup; the database host (PostgreSQL 15, loaded once with the dataset; its
//! `archive_command` is `strata archive-push`); one or three bus hosts (nats-server, a JetStream cluster
//! with three); an S3 host (moto) when the repository or the replication target is S3.
//!
//! # Per shape (made and removed for each)
//! Sealer, uploader and replicator hosts; a fresh repository (a new posix directory, or a new bucket) so
//! that no shape deduplicates against the previous one's chunks; the config (one file every service
//! reads); strata-collector on the database host and the services on theirs; `stanza-create`.
//!
//! # Phases
//! - `full`: `strata backup --type full`, timed around the command; plain bytes = the backup's
//!   `read_bytes` (`strata info --output json`).
//! - `incr`: the dataset's churn (`--churn-secs` of pgbench), then `strata backup --type incr`.
//! - `wal`: `--wal-secs` of the churn with 4 clients, then `pg_switch_wal()` and wait until archived;
//!   plain bytes = WAL written (LSN difference), time = burst start to archived.
//! - `replicate` (mode replicate): after the full backup, the replicator hosts start and copy it to the
//!   S3 repository behind the WAN link; time = their start to the last copied byte (their metrics),
//!   plain bytes = `strata_replication_copied_bytes_total`; the link's busy share comes from the S3
//!   host's veth counters.
//!
//! Each phase also gets each stage's CPU seconds (the hosts' cgroups), the quota's throttled share, and
//! the stages' backlogs (chunks handed on by one stage and not yet by the next, from the services'
//! counters) and the replication queue's depth (JetStream stream info), every 250 ms.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use strata_integration::config::toml_string;
use strata_integration::{
    reserve_port, write_config_with, NatsOptions, NatsServer, PgCluster, PgOptions, Port, S3Server,
    Service, StrataBins, TestDir,
};

use crate::cgroup::{adopt_into, CgroupMode, Hierarchy, RunCgroup};
use crate::dataset::Dataset;
use crate::host::{Host, Role};
use crate::net::{pick_subnet, Bridge, LinkShape, NetNs, IF_PREFIX, NAME_PREFIX};
use crate::sample::{http_get, metric_sum, QueueSampler, QueueStats, StageEndpoints};
use crate::wan::DelayRelay;

/// The stanza every shape backs up.
pub const STANZA: &str = "main";
/// Where each host's services serve metrics (every host is its own namespace, so the ports never clash).
pub const METRICS_PORTS: [(&str, u16); 4] = [
    ("collector", 9184),
    ("sealer", 9185),
    ("uploader", 9186),
    ("replicator", 9187),
];

/// SIGINT and SIGTERM become an error at the model's next wait: the crate's one flag ([`crate::signals`]).
pub use crate::signals::{check_interrupted, install_signal_handlers};

/// What the tool measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Full backup, incremental, WAL burst per shape.
    Backup,
    /// A full backup, then its copy by the replicators to the S3 repository behind the WAN link.
    Replicate,
}

/// Where the primary repository lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RepoKind {
    /// A directory every uploader host shares (one machine: just a directory).
    Posix,
    /// An S3 server (moto) on a host of its own.
    S3,
}

/// A backup-mode phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Full,
    Incr,
    Wal,
}

/// Everything the model is told.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub sealers: Vec<usize>,
    pub uploaders: Vec<usize>,
    pub replicators: Vec<usize>,
    pub buses: usize,
    pub sealer_cpu: Option<f64>,
    pub uploader_cpu: Option<f64>,
    pub replicator_cpu: Option<f64>,
    pub db_cpu: Option<f64>,
    pub sealer_link: LinkShape,
    pub uploader_link: LinkShape,
    /// Uploader counts of the second curve (see `--uploader-curve`), and its uploader hosts' link.
    pub uploader_curve: Vec<usize>,
    pub uploader_curve_link: LinkShape,
    pub replicator_link: LinkShape,
    pub db_link: LinkShape,
    /// The S3 host's link (the WAN in replicate mode).
    pub repo_link: LinkShape,
    pub repo: RepoKind,
    pub dataset: Dataset,
    pub phases: Vec<Phase>,
    pub churn_secs: u32,
    pub wal_secs: u32,
    /// `[pipeline]` overrides, `key = value` as TOML.
    pub pipeline: Vec<(String, String)>,
    pub replicator_workers: usize,
    pub cgroup: CgroupMode,
    pub bin_dir: Option<PathBuf>,
    pub phase_timeout: Duration,
}

impl Options {
    /// The shapes to run: the cross product of the counts, in order; then the uploader curve's.
    pub fn shapes(&self) -> Result<Vec<Shape>> {
        let curve = self.varied()?;
        let replicators = if self.mode == Mode::Replicate {
            self.replicators.clone()
        } else {
            vec![0]
        };
        let mut out = Vec::new();
        for &s in &self.sealers {
            for &u in &self.uploaders {
                for &r in &replicators {
                    out.push(Shape {
                        sealers: s,
                        uploaders: u,
                        replicators: r,
                        curve,
                        shaped_uploaders: false,
                    });
                }
            }
        }
        let most_sealers = self.sealers.iter().copied().max().unwrap_or(1);
        for &u in &self.uploader_curve {
            out.push(Shape {
                sealers: most_sealers,
                uploaders: u,
                replicators: 0,
                curve: Some(Dim::Uploaders),
                shaped_uploaders: true,
            });
        }
        Ok(out)
    }

    /// The dimension with more than one count, if any; an error if there are several.
    pub fn varied(&self) -> Result<Option<Dim>> {
        let mut varied = Vec::new();
        if self.sealers.len() > 1 {
            varied.push(Dim::Sealers);
        }
        if self.uploaders.len() > 1 {
            varied.push(Dim::Uploaders);
        }
        if self.mode == Mode::Replicate && self.replicators.len() > 1 {
            varied.push(Dim::Replicators);
        }
        match varied.len() {
            0 => Ok(None),
            1 => Ok(Some(varied[0])),
            _ => bail!("vary one of --sealers, --uploaders, --replicators at a time (several have more than one count)"),
        }
    }

    /// Checks what the counts ask for can be run.
    pub fn check(&self) -> Result<()> {
        if !self.uploader_curve.is_empty() {
            if self.mode != Mode::Backup {
                bail!("--uploader-curve is a backup-mode curve");
            }
            if self.uploaders.len() > 1 {
                bail!("--uploader-curve is the uploader curve; give --uploaders one count");
            }
        }
        self.varied().map(|_| ())
    }

    fn needs_s3(&self) -> bool {
        self.repo == RepoKind::S3 || self.mode == Mode::Replicate
    }
}

/// Host counts of one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub sealers: usize,
    pub uploaders: usize,
    pub replicators: usize,
    /// The scaling curve it is a point of, if any.
    pub curve: Option<Dim>,
    /// Its uploader hosts' links are `--uploader-curve-link` (the uploader curve) instead of
    /// `--uploader-link`.
    pub shaped_uploaders: bool,
}

impl Shape {
    /// "s4u1", "s1u1r2", "s4u2-l" (uploader curve): the key prefix of its results.
    pub fn tag(&self) -> String {
        let mut t = format!("s{}u{}", self.sealers, self.uploaders);
        if self.replicators > 0 {
            t.push_str(&format!("r{}", self.replicators));
        }
        if self.shaped_uploaders {
            t.push_str("-l");
        }
        t
    }

    pub fn count(&self, dim: Dim) -> usize {
        match dim {
            Dim::Sealers => self.sealers,
            Dim::Uploaders => self.uploaders,
            Dim::Replicators => self.replicators,
        }
    }
}

/// The host kind whose count a scaling curve varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dim {
    Sealers,
    Uploaders,
    Replicators,
}

impl Dim {
    pub fn name(self) -> &'static str {
        match self {
            Dim::Sealers => "sealers",
            Dim::Uploaders => "uploaders",
            Dim::Replicators => "replicators",
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Default)]
pub struct PhaseResult {
    pub name: String,
    pub seconds: f64,
    /// Plain bytes moved (see the module docs per phase).
    pub bytes: u64,
    /// CPU seconds per stage.
    pub cpu: BTreeMap<String, f64>,
    /// Share of CFS periods in which a stage's hosts were throttled.
    pub throttled: BTreeMap<String, f64>,
    pub queues: QueueStats,
    /// Phase-specific figures, written as they are.
    pub extra: BTreeMap<String, String>,
}

impl PhaseResult {
    /// Plain MB/s (10^6 bytes).
    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-3)
    }
}

/// One shape's phases.
#[derive(Debug, Clone)]
pub struct ShapeResult {
    pub shape: Shape,
    pub phases: Vec<PhaseResult>,
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Run-level key=value pairs (dataset, caps, links, versions).
    pub header: Vec<(String, String)>,
    pub shapes: Vec<ShapeResult>,
    pub varied: Option<Dim>,
}

/// The hosts and servers kept across shapes. Fields drop in order: processes, hosts, cgroup, bridge, files.
struct Fleet {
    pg: PgCluster,
    _nats: Vec<NatsServer>,
    _relay: Option<DelayRelay>,
    s3: Option<S3Server>,
    s3_endpoint: Option<String>,
    _ports: Vec<Port>,
    db: Host,
    buses: Vec<Host>,
    s3_host: Option<Host>,
    cgroups: RunCgroup,
    bridge: Bridge,
    run: String,
    dir: TestDir,
    bins: StrataBins,
    config: PathBuf,
    /// A nats-server's client address, for the queue sampler.
    bus_client: SocketAddr,
    bus_url: String,
}

impl Drop for Fleet {
    /// The last shape's services are gone, so an archive-push from the shutdown checkpoint would wait out
    /// its stall timeout and hold the postmaster's fast shutdown: archiving is turned off first.
    fn drop(&mut self) {
        let _ = self.pg.try_psql_db(
            "postgres",
            "ALTER SYSTEM SET archive_command = '/bin/true';\nSELECT pg_reload_conf();",
        );
    }
}

/// A shape's hosts and services; services drop (stop) before their hosts.
struct ShapeFleet {
    services: Vec<(Role, Service)>,
    replicators: Vec<Service>,
    hosts: Vec<Host>,
}

/// The time a process gets to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a new host goes: the run's bridge, cgroup and id.
struct Site<'a> {
    bridge: &'a Bridge,
    cgroups: &'a RunCgroup,
    run: &'a str,
}

/// Makes host `name` (interface tag `tag`) at `.octet` on the bridge, with a quota of `cpu` cores and `link`.
fn new_host(
    site: &Site<'_>,
    name: &str,
    tag: &str,
    role: Role,
    octet: u8,
    cpu: Option<f64>,
    link: &LinkShape,
) -> Result<Host> {
    let (fleet_bridge, cgroups, run) = (site.bridge, site.cgroups, site.run);
    let ns = NetNs::create(
        &format!("{NAME_PREFIX}{run}-{name}"),
        &format!("{IF_PREFIX}{run}{tag}"),
        fleet_bridge,
        fleet_bridge.addr(octet),
        link,
    )
    .with_context(|| format!("host {name}"))?;
    let cg = cgroups.host(name, cpu)?;
    Host::start(name, role, ns, cg)
}

/// Runs the whole model; the report of every shape.
pub fn run(opts: &Options) -> Result<Report> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the scale model needs root (network namespaces, cgroups, tc)");
    }
    opts.check()?;
    let varied = opts.varied()?;
    let shapes = opts.shapes()?;
    let hierarchy = Hierarchy::detect(opts.cgroup)?;
    let bins = match &opts.bin_dir {
        Some(d) => StrataBins::from_dir(d),
        None => StrataBins::locate(),
    };
    let run = std::process::id().to_string();
    let dir = TestDir::new(&format!("sm-{run}"));
    eprintln!(
        "scale model run {run}: files in {}, cgroup {}",
        dir.path().display(),
        hierarchy.version()
    );
    let keep = dir.clone();
    let result = (|| -> Result<Report> {
        let mut fleet = Fleet::start(opts, hierarchy, bins, run, dir)?;
        let mut report = Report {
            header: fleet.header(opts),
            shapes: Vec::new(),
            varied,
        };
        for shape in shapes {
            check_interrupted()?;
            eprintln!("--- shape {} ---", shape.tag());
            let result = fleet
                .run_shape(opts, shape)
                .with_context(|| format!("shape {}", shape.tag()))?;
            for p in &result.phases {
                eprintln!(
                    "{} {}: {:.1} MB/s ({} bytes in {:.1} s)",
                    shape.tag(),
                    p.name,
                    p.mb_s(),
                    p.bytes,
                    p.seconds
                );
            }
            report.shapes.push(result);
        }
        Ok(report)
    })();
    if result.is_err() {
        dump_logs(keep.path());
    }
    result
}

/// Prints the tails of the run's logs (the directory goes when the run ends; set
/// `STRATA_KEEP_TEST_DIRS=always` to keep it).
fn dump_logs(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if p.is_dir() && !name.starts_with("repo") && name != "data" && name != "jetstream" {
                stack.push(p);
            } else if name.ends_with(".log") || name.ends_with(".err") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- {} (last 15 lines) ---\n{}",
                    p.display(),
                    lines[lines.len().saturating_sub(15)..].join("\n")
                );
            }
        }
    }
}

impl Fleet {
    fn start(
        opts: &Options,
        hierarchy: Hierarchy,
        bins: StrataBins,
        run: String,
        dir: TestDir,
    ) -> Result<Fleet> {
        let cgroups = RunCgroup::create(hierarchy, &run)?;
        let bridge = Bridge::create(&run, pick_subnet()?)?;
        let site = Site {
            bridge: &bridge,
            cgroups: &cgroups,
            run: &run,
        };
        let none = LinkShape::default();
        let db = new_host(&site, "db", "d", Role::Db, 2, opts.db_cpu, &opts.db_link)?;
        let mut buses = Vec::new();
        for i in 0..opts.buses {
            buses.push(new_host(
                &site,
                &format!("bus{}", i + 1),
                &format!("b{}", i + 1),
                Role::Bus,
                3 + i as u8,
                None,
                &none,
            )?);
        }
        let s3_host = if opts.needs_s3() {
            Some(new_host(
                &site,
                "s3",
                "o",
                Role::Repo,
                9,
                None,
                &opts.repo_link,
            )?)
        } else {
            None
        };

        // The bus: one server, or a three-server JetStream cluster. Launched all, then waited for: the
        // servers of a cluster are ready only together.
        let monitor_port = reserve_port();
        let route_ports: Vec<Port> = (0..opts.buses).map(|_| reserve_port()).collect();
        let routes: Vec<String> = buses
            .iter()
            .zip(&route_ports)
            .map(|(h, p)| format!("nats-route://{}:{}", h.addr(), p.get()))
            .collect();
        let mut nats = Vec::new();
        for (i, host) in buses.iter().enumerate() {
            let mut extra = format!("http: \"{}:{}\"\n", host.addr(), monitor_port.get());
            if opts.buses > 1 {
                let others: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, r)| format!("\"{r}\""))
                    .collect();
                extra.push_str(&format!(
                    "cluster {{\n  name: strata-sm\n  listen: \"{}:{}\"\n  routes: [{}]\n}}\n",
                    host.addr(),
                    route_ports[i].get(),
                    others.join(", ")
                ));
            }
            let nats_opts = NatsOptions {
                name: format!("nats{}", i + 1),
                listen_ip: IpAddr::V4(host.addr()),
                extra_config: extra,
            };
            let d = dir.clone();
            let cg = host.cgroup.dirs();
            let server = host.run(move || {
                let mut s = NatsServer::launch(&d, &nats_opts);
                if let Some(pid) = s.pid() {
                    let _ = adopt_into(&cg, pid);
                }
                s
            });
            nats.push(server);
        }
        let mut waited = Vec::new();
        for (server, host) in nats.into_iter().zip(&buses) {
            waited.push(host.run(move || {
                let mut s = server;
                s.wait_ready(Duration::from_secs(60));
                s
            }));
        }
        let nats = waited;
        let bus_client = SocketAddr::new(IpAddr::V4(buses[0].addr()), nats[0].port());
        check_reachable(&db, bus_client)?;

        let s3 = match &s3_host {
            Some(h) => {
                let (d, ip, cg) = (dir.clone(), IpAddr::V4(h.addr()), h.cgroup.dirs());
                let server = h.run(move || S3Server::start_on(&d, ip));
                if let Some(pid) = server.pid() {
                    adopt_into(&cg, pid)?;
                }
                Some(server)
            }
            None => None,
        };
        // The WAN's round-trip time: a relay on the S3 host in front of moto (see `wan`).
        let relay = match (&s3_host, &s3, opts.repo_link.delay_ms) {
            (Some(h), Some(server), Some(ms)) => {
                let upstream: SocketAddr = server
                    .endpoint()
                    .trim_start_matches("http://")
                    .parse()
                    .context("moto's endpoint")?;
                let listen = SocketAddr::new(IpAddr::V4(h.addr()), 0);
                let one_way = Duration::from_secs_f64(ms / 1e3);
                Some(h.run(move || DelayRelay::start(listen, upstream, one_way))?)
            }
            _ => None,
        };
        let s3_endpoint = match (&relay, &s3) {
            (Some(r), _) => Some(format!("http://{}", r.addr())),
            (None, Some(server)) => Some(server.endpoint()),
            _ => None,
        };

        // PostgreSQL on the database host. The archive command names the config, which each shape rewrites.
        let config = dir
            .path()
            .join(strata_integration::config::CONFIG_FILE_NAME);
        let pg_opts = PgOptions::new(bins.archive_push_command(&config, STANZA))
            .name("pg")
            .setting("max_wal_size", "4GB")
            .setting("checkpoint_timeout", "30min");
        let d = dir.clone();
        let pg = db.run(move || PgCluster::init(&d, pg_opts));
        // The config exists before PostgreSQL starts, so that its first archive_command finds the bus.
        // One server's URL even for a cluster: the clients learn the others from it (INFO connect_urls).
        // The comma-separated list the example config documents does not parse: NatsBus::connect hands the
        // whole string to async-nats as one address ("NATS server URL is invalid: invalid port number").
        let bus_url = nats[0].url();
        let prep = ShapeRepo::prepare(opts, &dir, s3.as_ref(), s3_endpoint.as_deref(), "init")?;
        write_config(&dir, opts, &bus_url, &pg, &prep)?;
        let pg_dirs = db.cgroup.dirs();
        let pg = db.run(move || {
            let mut pg = pg;
            pg.start();
            if let Some(pid) = pg.pid() {
                let _ = adopt_into(&pg_dirs, pid as u32);
            }
            pg
        });
        let fleet = Fleet {
            pg,
            _nats: nats,
            _relay: relay,
            s3,
            s3_endpoint,
            _ports: std::iter::once(monitor_port).chain(route_ports).collect(),
            db,
            buses,
            s3_host,
            cgroups,
            bridge,
            run,
            dir,
            bins,
            config,
            bus_client,
            bus_url,
        };
        let t0 = Instant::now();
        eprintln!("loading {}", opts.dataset.describe());
        opts.dataset.load(&fleet.pg)?;
        opts.dataset.prepare_churn(fleet.dir.path())?;
        fleet.pg.psql("CHECKPOINT");
        eprintln!(
            "loaded {} bytes in {:.1} s",
            fleet.database_bytes(),
            t0.elapsed().as_secs_f64()
        );
        Ok(fleet)
    }
}

/// Checks that the database host reaches the bus over the bridge (a FORWARD policy of the machine's
/// firewall applies to bridged traffic when br_netfilter is loaded, and would drop it).
fn check_reachable(host: &Host, addr: SocketAddr) -> Result<()> {
    let reached = host.run(move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map(|_| ())
    });
    reached.with_context(|| format!("host {} cannot reach {addr} over the bridge (check the firewall's FORWARD chain: bridge-nf-call-iptables)", host.name))
}

/// A shape's repositories: the primary (posix directory or bucket) and, in replicate mode, the target
/// bucket behind the WAN link; names and `[[repo]]` bodies.
struct ShapeRepo {
    primary: (String, String),
    target: Option<(String, String)>,
}

impl ShapeRepo {
    /// `endpoint` is where the services reach S3: moto's own address, or the WAN relay in front of it.
    fn prepare(
        opts: &Options,
        dir: &TestDir,
        s3: Option<&S3Server>,
        endpoint: Option<&str>,
        tag: &str,
    ) -> Result<ShapeRepo> {
        let s3_repo = |s3: &S3Server, bucket: &str| -> String {
            let body = s3.repo_config(bucket, "strata");
            match endpoint {
                Some(e) => body.replace(&s3.endpoint(), e),
                None => body,
            }
        };
        let primary = match opts.repo {
            RepoKind::Posix => {
                let path = dir.subdir(format!("repo-{tag}"));
                (
                    "local".to_string(),
                    format!(
                        "type = \"posix\"\npath = {}\n",
                        toml_string(&path.display().to_string())
                    ),
                )
            }
            RepoKind::S3 => {
                let s3 = s3.context("an S3 repository needs the S3 host")?;
                let bucket = format!("sm-{tag}");
                s3.create_bucket(&bucket);
                ("s3".to_string(), s3_repo(s3, &bucket))
            }
        };
        let target = match opts.mode {
            Mode::Backup => None,
            Mode::Replicate => {
                let s3 = s3.context("replication needs the S3 host")?;
                let bucket = format!("wan-{tag}");
                s3.create_bucket(&bucket);
                // archive-push must not wait for the WAN: the replicator brings the WAL there.
                Some((
                    "wan".to_string(),
                    s3_repo(s3, &bucket) + "archive_required = false\n",
                ))
            }
        };
        Ok(ShapeRepo { primary, target })
    }
}

/// Writes the one config file every process of the model reads (the harness's writer, plus the tables
/// the model needs).
fn write_config(
    dir: &TestDir,
    opts: &Options,
    bus_url: &str,
    pg: &PgCluster,
    repo: &ShapeRepo,
) -> Result<()> {
    let mut repos = vec![(repo.primary.0.as_str(), repo.primary.1.as_str())];
    if let Some((name, body)) = &repo.target {
        repos.push((name.as_str(), body.as_str()));
    }
    let mut extra = String::new();
    if opts.buses > 1 {
        extra.push_str(&format!(
            "\n[nats]\nstream_replicas = {}\n",
            opts.buses.min(3)
        ));
    }
    extra.push_str("\n[pipeline]\n");
    for (k, v) in &opts.pipeline {
        extra.push_str(&format!("{k} = {v}\n"));
    }
    extra.push_str("\n[metrics]\n");
    for (service, port) in METRICS_PORTS.iter().take(3) {
        extra.push_str(&format!("{service} = \"0.0.0.0:{port}\"\n"));
    }
    if let Some((target, _)) = &repo.target {
        extra.push_str(&format!(
            "\n[replicator]\nsource = {}\ntargets = [{}]\ninterval_secs = 1\nworkers = {}\nmetrics_listen = \"0.0.0.0:{}\"\n",
            toml_string(&repo.primary.0),
            toml_string(target),
            opts.replicator_workers,
            METRICS_PORTS[3].1
        ));
    }
    write_config_with(
        dir.path(),
        bus_url,
        STANZA,
        pg.data_dir(),
        &pg.conn_string(),
        &repos,
        &extra,
    );
    Ok(())
}

/// Waits for a child with a deadline, stopping it (by its pid) on timeout or interruption.
fn wait_child(
    child: &mut Child,
    what: &str,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let stop = if crate::signals::interrupted() {
            Some(format!("{what}: interrupted"))
        } else if Instant::now() > deadline {
            Some(format!("{what}: still running after {timeout:?}"))
        } else {
            None
        };
        if let Some(why) = stop {
            let _ = child.kill();
            let _ = child.wait();
            bail!(why);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts service `bin` on `host`, in its cgroup from the start, and waits for its "running" line.
fn spawn_service(
    bins: &StrataBins,
    host: &Host,
    bin: &'static str,
    config: &Path,
    log_dir: PathBuf,
) -> Service {
    let (b, c, cg) = (bins.clone(), config.to_path_buf(), host.cgroup.dirs());
    host.run(move || {
        let mut s = Service::spawn(&b, bin, &c, &log_dir);
        if let Err(e) = adopt_into(&cg, s.pid()) {
            panic!("{bin}: {e:#}");
        }
        s.wait_for_log("running", START_TIMEOUT);
        s
    })
}

impl Fleet {
    fn header(&self, opts: &Options) -> Vec<(String, String)> {
        let mut h = vec![
            (
                "mode".to_string(),
                format!("{:?}", opts.mode).to_lowercase(),
            ),
            ("dataset".to_string(), opts.dataset.describe()),
            (
                "database_bytes".to_string(),
                self.database_bytes().to_string(),
            ),
            (
                "repo".to_string(),
                format!("{:?}", opts.repo).to_lowercase(),
            ),
            ("buses".to_string(), opts.buses.to_string()),
            (
                "cgroup".to_string(),
                self.cgroups.hierarchy().version().to_string(),
            ),
            (
                "subnet".to_string(),
                format!("10.213.{}.0/24", self.bridge.subnet),
            ),
            ("run".to_string(), self.run.clone()),
        ];
        let cpu = |c: Option<f64>| {
            c.map(|c| c.to_string())
                .unwrap_or_else(|| "unlimited".into())
        };
        h.push(("sealer_cpu".into(), cpu(opts.sealer_cpu)));
        h.push(("uploader_cpu".into(), cpu(opts.uploader_cpu)));
        h.push(("replicator_cpu".into(), cpu(opts.replicator_cpu)));
        h.push(("db_cpu".into(), cpu(opts.db_cpu)));
        h.push(("sealer_link".into(), opts.sealer_link.describe()));
        h.push(("uploader_link".into(), opts.uploader_link.describe()));
        if !opts.uploader_curve.is_empty() {
            let counts: Vec<String> = opts.uploader_curve.iter().map(|n| n.to_string()).collect();
            h.push(("uploader_curve".into(), counts.join(",")));
            h.push((
                "uploader_curve_link".into(),
                opts.uploader_curve_link.describe(),
            ));
        }
        h.push(("replicator_link".into(), opts.replicator_link.describe()));
        h.push(("db_link".into(), opts.db_link.describe()));
        h.push(("repo_link".into(), opts.repo_link.describe()));
        let pipeline: Vec<String> = opts
            .pipeline
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        h.push(("pipeline".into(), pipeline.join(" ")));
        h.push((
            "machine_cpus".into(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
                .to_string(),
        ));
        h
    }

    fn database_bytes(&self) -> u64 {
        self.pg
            .psql("SELECT sum(pg_database_size(datname))::bigint FROM pg_database")
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Runs the CLI on the database host; its stdout, or an error with its stderr.
    fn cli(&self, args: &[&str], log_name: &str, timeout: Duration) -> Result<String> {
        let out_path = self.dir.path().join(format!("{log_name}.out"));
        let err_path = self.dir.path().join(format!("{log_name}.err"));
        let (b, c) = (self.bins.clone(), self.config.clone());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (o, e) = (out_path.clone(), err_path.clone());
        let mut child = self.db.run(move || -> Result<Child> {
            let mut cmd = b.strata_cmd(&c, STANZA);
            cmd.args(&args)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&o)?)
                .stderr(std::fs::File::create(&e)?);
            Ok(cmd.spawn()?)
        })?;
        let status = wait_child(&mut child, &format!("strata {log_name}"), timeout)?;
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        if !status.success() {
            bail!(
                "strata {log_name} failed ({status}): {}",
                std::fs::read_to_string(&err_path)
                    .unwrap_or_default()
                    .trim()
            );
        }
        Ok(stdout)
    }

    /// Runs the dataset's churn on the database host for `secs` with `clients` and waits for it.
    fn churn(&self, opts: &Options, secs: u32, clients: u32, log_name: &str) -> Result<()> {
        let log = self.dir.path().join(format!("{log_name}.log"));
        let cmd = opts
            .dataset
            .churn_command(&self.pg, self.dir.path(), secs, clients, &log)?;
        let cg = self.db.cgroup.dirs();
        let mut child = self.db.run(move || -> Result<Child> {
            let mut cmd = cmd;
            let child = cmd.spawn().context("cannot start pgbench")?;
            let _ = adopt_into(&cg, child.id());
            Ok(child)
        })?;
        let status = wait_child(
            &mut child,
            "pgbench",
            Duration::from_secs(u64::from(secs) + 120),
        )?;
        if !status.success() {
            bail!(
                "pgbench failed ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        Ok(())
    }

    fn run_shape(&mut self, opts: &Options, shape: Shape) -> Result<ShapeResult> {
        let tag = shape.tag();
        let repo = ShapeRepo::prepare(
            opts,
            &self.dir,
            self.s3.as_ref(),
            self.s3_endpoint.as_deref(),
            &tag,
        )?;
        write_config(&self.dir, opts, &self.bus_url, &self.pg, &repo)?;
        let mut sf = ShapeFleet {
            services: Vec::new(),
            replicators: Vec::new(),
            hosts: Vec::new(),
        };
        let kinds = [
            (
                Role::Sealer,
                shape.sealers,
                "sealer",
                "s",
                10u8,
                opts.sealer_cpu,
                &opts.sealer_link,
            ),
            (
                Role::Uploader,
                shape.uploaders,
                "uploader",
                "u",
                50u8,
                opts.uploader_cpu,
                if shape.shaped_uploaders {
                    &opts.uploader_curve_link
                } else {
                    &opts.uploader_link
                },
            ),
            (
                Role::Replicator,
                shape.replicators,
                "replicator",
                "r",
                90u8,
                opts.replicator_cpu,
                &opts.replicator_link,
            ),
        ];
        for (role, n, name, t, base, cpu, link) in kinds {
            for i in 0..n {
                let host = new_host(
                    &Site {
                        bridge: &self.bridge,
                        cgroups: &self.cgroups,
                        run: &self.run,
                    },
                    &format!("{name}{}", i + 1),
                    &format!("{t}{}", i + 1),
                    role,
                    base + i as u8,
                    cpu,
                    link,
                )?;
                sf.hosts.push(host);
            }
        }
        let log_dir = |host: &str| self.dir.subdir(format!("{tag}/{host}"));
        sf.services.push((
            Role::Db,
            spawn_service(
                &self.bins,
                &self.db,
                "strata-collector",
                &self.config,
                log_dir("db"),
            ),
        ));
        for h in &sf.hosts {
            let bin = match h.role {
                Role::Sealer => "strata-sealer",
                Role::Uploader => "strata-uploader",
                _ => continue,
            };
            sf.services.push((
                h.role,
                spawn_service(&self.bins, h, bin, &self.config, log_dir(&h.name)),
            ));
        }
        check_interrupted()?;
        self.cli(
            &["stanza-create"],
            &format!("{tag}-stanza-create"),
            Duration::from_secs(120),
        )?;
        // The pipeline works end to end (and archiving has caught up) before anything is timed.
        self.pg
            .switch_wal_and_wait_archived(Duration::from_secs(180));

        let mut phases = Vec::new();
        match opts.mode {
            Mode::Backup => {
                for phase in &opts.phases {
                    check_interrupted()?;
                    let r = match phase {
                        Phase::Full => {
                            self.measure(&sf, "full", || self.backup_phase(&tag, "full", opts))?
                        }
                        Phase::Incr => {
                            self.churn(opts, opts.churn_secs, 2, &format!("{tag}-churn"))?;
                            self.pg.psql("CHECKPOINT");
                            self.measure(&sf, "incr", || self.backup_phase(&tag, "incr", opts))?
                        }
                        Phase::Wal => self.measure(&sf, "wal", || self.wal_phase(&tag, opts))?,
                    };
                    phases.push(r);
                }
            }
            Mode::Replicate => {
                phases.push(self.measure(&sf, "full", || self.backup_phase(&tag, "full", opts))?);
                self.pg
                    .switch_wal_and_wait_archived(Duration::from_secs(180));
                check_interrupted()?;
                let mut replicators = Vec::new();
                let r = self.measure(&sf, "replicate", || {
                    self.replicate_phase(&tag, &sf.hosts, &mut replicators, opts)
                });
                sf.replicators = replicators;
                phases.push(r?);
            }
        }
        // Nothing of this shape may still be in flight when its services stop.
        self.pg
            .switch_wal_and_wait_archived(Duration::from_secs(180));
        drop(sf);
        Ok(ShapeResult { shape, phases })
    }

    /// Runs `f` and adds the stages' CPU, throttling and the queue depths over its run.
    fn measure(
        &self,
        sf: &ShapeFleet,
        name: &str,
        f: impl FnOnce() -> Result<(f64, u64, BTreeMap<String, String>)>,
    ) -> Result<PhaseResult> {
        let mut hosts: Vec<&Host> = vec![&self.db];
        hosts.extend(self.buses.iter());
        hosts.extend(self.s3_host.iter());
        hosts.extend(sf.hosts.iter());
        let before: Vec<(f64, (u64, u64))> = hosts
            .iter()
            .map(|h| (h.cgroup.usage_secs(), h.cgroup.throttled()))
            .collect();
        let metrics_of = |role: Role, port: u16| -> Vec<SocketAddr> {
            sf.hosts
                .iter()
                .filter(|h| h.role == role)
                .map(|h| SocketAddr::new(IpAddr::V4(h.addr()), port))
                .collect()
        };
        let stages = StageEndpoints {
            collector: Some(SocketAddr::new(
                IpAddr::V4(self.db.addr()),
                METRICS_PORTS[0].1,
            )),
            sealers: metrics_of(Role::Sealer, METRICS_PORTS[1].1),
            uploaders: metrics_of(Role::Uploader, METRICS_PORTS[2].1),
        };
        let sampler = QueueSampler::start(self.bus_client, stages);
        let result = f();
        let queues = sampler.finish();
        let (seconds, bytes, mut extra) = result.with_context(|| format!("phase {name}"))?;
        // How the work spread over the hosts: each service's own count (cumulative over the shape).
        for h in &sf.hosts {
            let (port, metric) = match h.role {
                Role::Sealer => (METRICS_PORTS[1].1, "strata_sealer_chunks_total"),
                Role::Uploader => (METRICS_PORTS[2].1, "strata_uploader_chunks_total"),
                _ => continue,
            };
            if let Some(v) = http_get(SocketAddr::new(IpAddr::V4(h.addr()), port), "/metrics")
                .ok()
                .and_then(|t| metric_sum(&t, metric))
            {
                extra.insert(format!("{}_chunks_total", h.name), format!("{v}"));
            }
        }
        let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
        let mut throttle: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (h, (usage, (thr, per))) in hosts.iter().zip(before) {
            *cpu.entry(h.role.stage().to_string()).or_default() += h.cgroup.usage_secs() - usage;
            let (t1, p1) = h.cgroup.throttled();
            let e = throttle.entry(h.role.stage().to_string()).or_default();
            e.0 += t1.saturating_sub(thr);
            e.1 += p1.saturating_sub(per);
        }
        let throttled = throttle
            .into_iter()
            .filter(|(_, (_, p))| *p > 0)
            .map(|(k, (t, p))| (k, t as f64 / p as f64))
            .collect();
        Ok(PhaseResult {
            name: name.to_string(),
            seconds,
            bytes,
            cpu,
            throttled,
            queues,
            extra,
        })
    }

    fn backup_phase(
        &self,
        tag: &str,
        kind: &str,
        opts: &Options,
    ) -> Result<(f64, u64, BTreeMap<String, String>)> {
        let t0 = Instant::now();
        let out = self.cli(
            &["backup", "--type", kind],
            &format!("{tag}-backup-{kind}"),
            opts.phase_timeout,
        )?;
        let seconds = t0.elapsed().as_secs_f64();
        // "<type> backup <label> committed...": the label, to find its figures in info.
        let label = out
            .lines()
            .find(|l| l.contains(" committed"))
            .and_then(|l| l.split_whitespace().nth(2))
            .with_context(|| format!("backup printed no committed line: {out}"))?
            .to_string();
        let info = self.cli(
            &["info", "--output", "json"],
            &format!("{tag}-info-{kind}"),
            Duration::from_secs(120),
        )?;
        let doc: serde_json::Value =
            serde_json::from_str(&info).context("strata info --output json")?;
        let backup = doc[0]["backups"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .find(|b| b["label"].as_str() == Some(label.as_str()))
            })
            .with_context(|| format!("backup {label} is not in strata info"))?;
        if backup["type"].as_str() != Some(kind) {
            bail!("backup {label} is a {} backup, not {kind}", backup["type"]);
        }
        let get = |k: &str| backup[k].as_u64().unwrap_or(0);
        let mut extra = BTreeMap::new();
        for k in [
            "database_bytes",
            "read_bytes",
            "sent_bytes",
            "stored_bytes",
            "file_count",
        ] {
            extra.insert(k.to_string(), get(k).to_string());
        }
        extra.insert(
            "database_mb_s".into(),
            format!("{:.2}", get("database_bytes") as f64 / 1e6 / seconds),
        );
        extra.insert("label".into(), label);
        Ok((seconds, get("read_bytes"), extra))
    }

    fn wal_phase(&self, tag: &str, opts: &Options) -> Result<(f64, u64, BTreeMap<String, String>)> {
        let start = self.pg.psql("SELECT pg_current_wal_lsn()");
        let t0 = Instant::now();
        self.churn(opts, opts.wal_secs, 4, &format!("{tag}-wal-burst"))?;
        let burst = t0.elapsed().as_secs_f64();
        let generated: u64 = self
            .pg
            .psql(&format!(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start}')::bigint"
            ))
            .parse()
            .unwrap_or(0);
        let segment = self.pg.switch_wal_and_wait_archived(opts.phase_timeout);
        let seconds = t0.elapsed().as_secs_f64();
        let mut extra = BTreeMap::new();
        extra.insert("burst_s".into(), format!("{burst:.2}"));
        extra.insert("catchup_s".into(), format!("{:.2}", seconds - burst));
        extra.insert(
            "generated_mb_s".into(),
            format!("{:.2}", generated as f64 / 1e6 / burst),
        );
        extra.insert("last_segment".into(), segment);
        Ok((seconds, generated, extra))
    }

    /// Starts the shape's replicators and waits until they copied everything (see the module docs).
    fn replicate_phase(
        &self,
        tag: &str,
        hosts: &[Host],
        started: &mut Vec<Service>,
        opts: &Options,
    ) -> Result<(f64, u64, BTreeMap<String, String>)> {
        let s3 = self
            .s3_host
            .as_ref()
            .context("replication needs the S3 host")?;
        let (rx0, tx0) = (s3.ns.rx_bytes(), s3.ns.tx_bytes());
        // What moto logged before: archive-push writes WAL to the target too, which is not the copy's.
        let log_start = self
            .s3
            .as_ref()
            .and_then(|s| std::fs::metadata(s.log_file()).ok())
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let t0 = Instant::now();
        let mut endpoints = Vec::new();
        for h in hosts.iter().filter(|h| h.role == Role::Replicator) {
            started.push(spawn_service(
                &self.bins,
                h,
                "strata-replicator",
                &self.config,
                self.dir.subdir(format!("{tag}/{}", h.name)),
            ));
            endpoints.push(SocketAddr::new(IpAddr::V4(h.addr()), METRICS_PORTS[3].1));
        }
        let deadline = t0 + opts.phase_timeout;
        let (mut copied, mut last_change, mut seen_lag) = (0.0f64, t0, false);
        loop {
            check_interrupted()?;
            if Instant::now() > deadline {
                bail!(
                    "replication not caught up after {:?} ({copied} bytes copied)",
                    opts.phase_timeout
                );
            }
            let (mut total, mut all_caught_up) = (0.0, true);
            for ep in &endpoints {
                match http_get(*ep, "/metrics") {
                    Ok(text) => {
                        total += metric_sum(&text, "strata_replication_copied_bytes_total")
                            .unwrap_or(0.0);
                        match metric_sum(&text, "strata_replication_lag_objects") {
                            Some(lag) if lag > 0.0 => {
                                seen_lag = true;
                                all_caught_up = false;
                            }
                            Some(_) => {}
                            None => all_caught_up = false,
                        }
                    }
                    Err(_) => all_caught_up = false,
                }
            }
            if total > copied {
                copied = total;
                last_change = Instant::now();
            }
            if seen_lag && all_caught_up && copied > 0.0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let seconds = (last_change - t0).as_secs_f64();
        let (rx, tx) = (s3.ns.rx_bytes() - rx0, s3.ns.tx_bytes() - tx0);
        let mut extra = BTreeMap::new();
        // Who copied what (each replicator's own count), and what the S3 server wrote: every successful
        // PUT of an object into the target bucket, from moto's request log. An object copied twice shows
        // as a key written more than once.
        let mut counted = 0.0;
        for (h, ep) in hosts
            .iter()
            .filter(|h| h.role == Role::Replicator)
            .zip(&endpoints)
        {
            if let Some(v) = http_get(*ep, "/metrics")
                .ok()
                .and_then(|t| metric_sum(&t, "strata_replication_copied_objects_total"))
            {
                counted += v;
                extra.insert(format!("{}_copied_objects", h.name), format!("{v}"));
            }
        }
        extra.insert("copied_objects".into(), format!("{counted}"));
        if let Some(server) = &self.s3 {
            let log = std::fs::read(server.log_file()).unwrap_or_default();
            let log = String::from_utf8_lossy(log.get(log_start..).unwrap_or_default());
            let puts = puts_per_key(&log, &format!("wan-{tag}"));
            extra.insert("target_objects_written".into(), puts.len().to_string());
            extra.insert(
                "target_puts".into(),
                puts.values().sum::<usize>().to_string(),
            );
            extra.insert(
                "target_objects_written_twice".into(),
                puts.values().filter(|n| **n > 1).count().to_string(),
            );
        }
        extra.insert("wire_to_s3_bytes".into(), rx.to_string());
        extra.insert("wire_from_s3_bytes".into(), tx.to_string());
        if let Some(rate) = opts.repo_link.rate_bps {
            extra.insert("link_mbit".into(), format!("{}", rate as f64 / 1e6));
            extra.insert(
                "link_busy_pct".into(),
                format!("{:.1}", rx as f64 * 8.0 / (rate as f64 * seconds) * 100.0),
            );
            extra.insert(
                "copy_vs_link_pct".into(),
                format!("{:.1}", copied * 8.0 / (rate as f64 * seconds) * 100.0),
            );
        }
        if let Some(d) = opts.repo_link.delay_ms {
            extra.insert("link_rtt_ms".into(), format!("{}", 2.0 * d));
        }
        Ok((seconds, copied as u64, extra))
    }
}

/// Successful writes per object key of `bucket` in moto's request log (`"PUT /<bucket>/<key> HTTP/1.1"
/// 200`), without multipart parts (`?partNumber=`; the completion is a POST) and writability probes.
fn puts_per_key(log: &str, bucket: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let prefix = format!("\"PUT /{bucket}/");
    for line in log.lines() {
        let Some((_, rest)) = line.split_once(&prefix) else {
            continue;
        };
        let Some((target, status)) = rest.split_once(" HTTP/1.1\" ") else {
            continue;
        };
        if !status.starts_with("200") || target.contains("partNumber=") {
            continue;
        }
        let key = target.split('?').next().unwrap_or(target);
        if !key.contains(".strata-probe-") {
            *out.entry(key.to_string()).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_successful_puts_per_key_from_motos_log() {
        let log = "127.0.0.1 - - [07/Dec/2026 13:05:05] \"PUT /wan-s1/strata/pack/ab/x.pack HTTP/1.1\" 200 -\n\
                   127.0.0.1 - - [07/Dec/2026 13:05:05] \"PUT /wan-s1/strata/pack/ab/x.pack HTTP/1.1\" 200 -\n\
                   127.0.0.1 - - [07/Dec/2026 13:05:05] \"PUT /wan-s1/strata/stanza/main/stanza.json HTTP/1.1\" 412 -\n\
                   127.0.0.1 - - [07/Dec/2026 13:05:05] \"PUT /wan-s1/strata/pack/cd/y.pack?partNumber=1&uploadId=u HTTP/1.1\" 200 -\n\
                   127.0.0.1 - - [07/Dec/2026 13:05:05] \"PUT /wan-s1/strata/.strata-probe-0a HTTP/1.1\" 200 -\n\
                   127.0.0.1 - - [07/Dec/2026 13:05:05] \"PUT /sm-s1/strata/pack/ab/x.pack HTTP/1.1\" 200 -\n";
        let puts = puts_per_key(log, "wan-s1");
        assert_eq!(puts.len(), 1, "{puts:?}");
        assert_eq!(puts["strata/pack/ab/x.pack"], 2);
    }
}
