//! What the model watches while a phase runs: the work queues' depths, from nats-server's monitoring
//! endpoint (`/jsz?streams=true`, the bus host's `http` port, reached over the bridge), and Prometheus
//! counters of the services (`[metrics]` listens on every host's own address).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often queue depths are read.
pub const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// `GET path` over HTTP/1.0; the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.split_whitespace().nth(1).is_some_and(|c| c == "200") {
        bail!("GET http://{addr}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// Messages in each stream, from a `/jsz?streams=true` document.
pub fn stream_depths(jsz: &serde_json::Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for account in jsz["account_details"].as_array().into_iter().flatten() {
        for stream in account["stream_detail"].as_array().into_iter().flatten() {
            if let (Some(name), Some(n)) = (stream["name"].as_str(), stream["state"]["messages"].as_u64()) {
                out.insert(name.to_string(), n);
            }
        }
    }
    out
}

/// Sum of a Prometheus series' samples (every label set) in a text exposition; None if absent.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Max and mean depth of each queue over a phase.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub samples: u64,
    pub max: BTreeMap<String, u64>,
    pub sum: BTreeMap<String, u64>,
}

impl QueueStats {
    pub fn mean(&self, stream: &str) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        *self.sum.get(stream).unwrap_or(&0) as f64 / self.samples as f64
    }
}

/// Samples `/jsz` every [`QUEUE_SAMPLE_INTERVAL`] on a thread until [`QueueSampler::finish`].
pub struct QueueSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<QueueStats>,
}

impl QueueSampler {
    pub fn start(monitor: SocketAddr) -> QueueSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut stats = QueueStats::default();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(doc) = http_get(monitor, "/jsz?streams=true").and_then(|b| serde_json::from_str(&b).context("jsz json")) {
                    stats.samples += 1;
                    for (name, n) in stream_depths(&doc) {
                        let m = stats.max.entry(name.clone()).or_default();
                        *m = (*m).max(n);
                        *stats.sum.entry(name).or_default() += n;
                    }
                }
                std::thread::sleep(QUEUE_SAMPLE_INTERVAL);
            }
            stats
        });
        QueueSampler { stop, handle }
    }

    pub fn finish(self) -> QueueStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stream_depths_from_jsz() {
        let doc = serde_json::json!({"account_details": [{"stream_detail": [
            {"name": "STRATA_SEAL", "state": {"messages": 7}},
            {"name": "STRATA_UPLOAD", "state": {"messages": 0}}]}]});
        let d = stream_depths(&doc);
        assert_eq!(d["STRATA_SEAL"], 7);
        assert_eq!(d["STRATA_UPLOAD"], 0);
    }

    #[test]
    fn sums_prometheus_series() {
        let text = "# HELP x y\nstrata_replication_copied_bytes_total{target=\"a\"} 10\nstrata_replication_copied_bytes_total{target=\"b\"} 5\nstrata_replication_copied_bytes_total_other 1\n";
        assert_eq!(metric_sum(text, "strata_replication_copied_bytes_total"), Some(15.0));
        assert_eq!(metric_sum(text, "absent"), None);
    }
}
