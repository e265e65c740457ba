//! The model's network: one bridge, one network namespace per host joined to it by a veth pair, and
//! optional shaping (`tc`) of each host's link.
//!
//! # Addresses
//! A private /24 in 10.213.0.0/16 that no route of this machine already covers ([`pick_subnet`]). The
//! bridge holds `.1`, so the tool itself (in the root namespace) can reach every host, for the NATS
//! monitoring port and the services' metrics; hosts get `.2` and up. Namespaces have no default route and
//! nothing is routed beyond the bridge.
//!
//! # Names
//! Namespaces are `strata-sm-<run>-<host>`; interfaces are limited to 15 characters, so the root ends of
//! the veth pairs and the bridge are `strsm<run><tag>` (run = the tool's pid). `--cleanup` removes
//! whatever carries these prefixes and belongs to no live run.
//!
//! # Shaping
//! A link's bandwidth applies to both directions: a `tbf` on the egress of the host end (inside the
//! namespace: what the host sends) and of the bridge end (what it receives). Delay is not a qdisc here:
//! kernels without `sch_netem` (this project's VMs) have none that delays, so the WAN's round-trip time is
//! a relay on the S3 host ([`crate::wan`]).

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

/// Prefix of every namespace, cgroup and directory the tool makes.
pub const NAME_PREFIX: &str = "strata-sm-";
/// Prefix of every interface in the root namespace the tool makes (interface names have 15 characters).
pub const IF_PREFIX: &str = "strsm";

/// Runs a command to completion; the error carries its stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run_cmd(Command::new("ip").args(args))
}

fn tc(args: &[&str]) -> Result<String> {
    run_cmd(Command::new("tc").args(args))
}

/// A link's emulated properties; see the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkShape {
    /// Bits per second (tbf rate), e.g. from "200mbit".
    pub rate_bps: Option<u64>,
    /// One-way delay in milliseconds (the relay of [`crate::wan`], on the S3 host's link only).
    pub delay_ms: Option<f64>,
}

impl LinkShape {
    /// True when nothing is shaped.
    pub fn is_none(&self) -> bool {
        self.rate_bps.is_none() && self.delay_ms.is_none()
    }

    /// Human form, "200mbit+30ms".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.rate_bps {
            parts.push(format!("{}mbit", r as f64 / 1e6));
        }
        if let Some(d) = self.delay_ms {
            parts.push(format!("{d}ms"));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("+")
        }
    }
}

/// Parses a rate as tc writes it: "200mbit", "1gbit", "500kbit", "25mbps" (bytes), or plain bits/s.
pub fn parse_rate(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("rate {text:?}: not a number"))?;
    let mult = match unit {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => bail!("rate {text:?}: unit must be bit, kbit, mbit, gbit, kbps, mbps or gbps"),
    };
    let bps = (n * mult).round() as u64;
    if bps < 8000 {
        bail!("rate {text:?} is below 8kbit");
    }
    Ok(bps)
}

/// Parses a delay: "30ms", "0.5s", or plain milliseconds.
pub fn parse_delay_ms(text: &str) -> Result<f64> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e3)
    } else {
        (t.as_str(), 1.0)
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("delay {text:?}: not a number"))?;
    if !(0.0..=10_000.0).contains(&v) {
        bail!("delay {text:?} out of range");
    }
    Ok(v * mult)
}

/// Picks 10.213.N.0/24 with no address or route of this machine in it; returns the third octet.
pub fn pick_subnet() -> Result<u8> {
    let routes = ip(&["-4", "route", "show", "table", "all"])? + &ip(&["-4", "addr", "show"])?;
    // Starting from a pid-derived subnet, so two runs that start together rarely try the same one first.
    let start = std::process::id() % 254;
    for i in 0..254u32 {
        let n = ((start + i) % 254 + 1) as u8;
        let prefix = format!("10.213.{n}.");
        if !routes.contains(&prefix) && !routes.contains("10.213.0.0/16") {
            return Ok(n);
        }
    }
    bail!("no free 10.213.N.0/24 subnet on this machine")
}

/// The bridge every host hangs off; deleted on Drop.
#[derive(Debug)]
pub struct Bridge {
    pub name: String,
    pub subnet: u8,
}

impl Bridge {
    /// Creates `strsm<run>br` with address 10.213.<subnet>.1/24, up.
    pub fn create(run: &str, subnet: u8) -> Result<Bridge> {
        let name = format!("{IF_PREFIX}{run}br");
        ip(&["link", "add", &name, "type", "bridge"])?;
        let bridge = Bridge { name, subnet };
        ip(&[
            "addr",
            "add",
            &format!("{}/24", bridge.addr(1)),
            "dev",
            &bridge.name,
        ])?;
        ip(&["link", "set", &bridge.name, "up"])?;
        Ok(bridge)
    }

    /// 10.213.<subnet>.<host>.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, host)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Err(e) = ip(&["link", "del", &self.name]) {
            eprintln!("warning: cannot delete bridge {}: {e:#}", self.name);
        }
    }
}

/// A host's network namespace with its veth pair on the bridge; the namespace (and so the pair) is
/// deleted on Drop.
#[derive(Debug)]
pub struct NetNs {
    /// `strata-sm-<run>-<host>`.
    pub name: String,
    /// The root end, on the bridge.
    pub veth_root: String,
    /// The end inside the namespace.
    pub veth_ns: String,
    pub addr: Ipv4Addr,
}

impl NetNs {
    /// Creates namespace `name`, a veth pair `root_if` (on `bridge`) / `eth0` (inside, with `addr`/24),
    /// loopback up, and shapes the link.
    pub fn create(
        name: &str,
        root_if: &str,
        bridge: &Bridge,
        addr: Ipv4Addr,
        shape: &LinkShape,
    ) -> Result<NetNs> {
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
            veth_root: root_if.to_string(),
            veth_ns: "eth0".into(),
            addr,
        };
        ip(&[
            "link", "add", root_if, "type", "veth", "peer", "name", "eth0", "netns", name,
        ])?;
        ip(&["link", "set", root_if, "master", &bridge.name])?;
        ip(&["link", "set", root_if, "up"])?;
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", name, "link", "set", "eth0", "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        if shape.rate_bps.is_some() {
            shape_dev(None, root_if, shape)?;
            shape_dev(Some(name), "eth0", shape)?;
        }
        Ok(ns)
    }

    /// `/run/netns/<name>`, the handle `setns` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Bytes the host received over its link (sent by the bridge end).
    pub fn rx_bytes(&self) -> u64 {
        read_counter(&self.veth_root, "tx_bytes")
    }

    /// Bytes the host sent over its link.
    pub fn tx_bytes(&self) -> u64 {
        read_counter(&self.veth_root, "rx_bytes")
    }
}

fn read_counter(dev: &str, name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/statistics/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "warning: cannot delete network namespace {}: {e:#}",
                self.name
            );
        }
        // The pair goes with the namespace; a root end that is somehow still there is removed too.
        if std::path::Path::new("/sys/class/net")
            .join(&self.veth_root)
            .exists()
        {
            let _ = ip(&["link", "del", &self.veth_root]);
        }
    }
}

/// The tc commands that shape `dev` (in namespace `ns`, or the root one): a `tbf` at the link's rate.
pub fn shape_commands(dev: &str, shape: &LinkShape) -> Vec<Vec<String>> {
    let Some(rate) = shape.rate_bps else {
        return Vec::new();
    };
    // Ten milliseconds of tokens, at least 64 KiB: veth hands tbf GSO packets up to 64 KiB.
    let burst = (rate / 8 / 100).max(65536).to_string();
    let args = [
        "qdisc",
        "add",
        "dev",
        dev,
        "root",
        "handle",
        "1:",
        "tbf",
        "rate",
        &format!("{rate}bit"),
        "burst",
        &burst,
        "latency",
        "100ms",
    ];
    vec![args.iter().map(|s| s.to_string()).collect()]
}

fn shape_dev(ns: Option<&str>, dev: &str, shape: &LinkShape) -> Result<()> {
    for args in shape_commands(dev, shape) {
        let mut full: Vec<&str> = Vec::new();
        if let Some(ns) = ns {
            full.extend(["-n", ns]);
        }
        full.extend(args.iter().map(|s| s.as_str()));
        tc(&full)?;
    }
    Ok(())
}

/// Namespaces whose name starts with [`NAME_PREFIX`].
pub fn list_namespaces() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NAME_PREFIX))
        .map(str::to_string)
        .collect())
}

/// Root-namespace interfaces whose name starts with [`IF_PREFIX`].
pub fn list_interfaces() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(IF_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of the processes in namespace `ns`.
pub fn namespace_pids(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Deletes a namespace or a root interface left by an earlier run.
pub fn delete_namespace(ns: &str) -> Result<()> {
    ip(&["netns", "del", ns]).map(|_| ())
}

/// Deletes a root-namespace interface.
pub fn delete_interface(dev: &str) -> Result<()> {
    ip(&["link", "del", dev]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_delays_parse_like_tc() {
        assert_eq!(parse_rate("200mbit").unwrap(), 200_000_000);
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("25mbps").unwrap(), 200_000_000);
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_delay_ms("30ms").unwrap(), 30.0);
        assert_eq!(parse_delay_ms("0.5s").unwrap(), 500.0);
    }

    #[test]
    fn a_rate_is_a_tbf_and_a_delay_is_no_qdisc() {
        let shape = LinkShape {
            rate_bps: Some(100_000_000),
            delay_ms: Some(30.0),
        };
        let cmds = shape_commands("eth0", &shape);
        assert_eq!(cmds.len(), 1);
        assert_eq!(
            cmds[0][4..10],
            ["root", "handle", "1:", "tbf", "rate", "100000000bit"]
        );
        assert!(shape_commands(
            "eth0",
            &LinkShape {
                rate_bps: None,
                delay_ms: Some(30.0)
            }
        )
        .is_empty());
    }
}
