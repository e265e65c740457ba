//! What the model watches while a phase runs: the work queues' depths, asked of the bus itself (the
//! JetStream API's `$JS.API.STREAM.INFO.<stream>` over a plain NATS connection from the tool, every
//! 250 ms), and Prometheus counters of the services (`[metrics]` listens on every host's own address).
//!
//! Not `/jsz` on the monitoring port: its stream states stayed at 0 messages through whole backups in
//! which the sealers were throttled (the services' own `strata_bus_queue_depth` is read every 5 s only).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often queue depths are read.
pub const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// `GET path` over HTTP/1.0; the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if head.split_whitespace().nth(1) != Some("200") {
        bail!(
            "GET http://{addr}{path}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_string())
}

/// Sum of a Prometheus series' samples (every label set) in a text exposition; None if absent.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
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

/// The work-queue streams whose depths are sampled.
pub const STREAMS: [&str; 3] = ["STRATA_SEAL", "STRATA_UPLOAD", "STRATA_REPLICATE"];

/// A minimal NATS client for JetStream API requests: CONNECT, one inbox subscription, request and reply.
pub struct JsProbe {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl JsProbe {
    /// Connects to the nats-server at `addr`.
    pub fn connect(addr: SocketAddr) -> Result<JsProbe> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut info = String::new();
        reader.read_line(&mut info)?;
        if !info.starts_with("INFO") {
            bail!("{addr} is not a NATS server: {info:?}");
        }
        writer.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"strata-scale-model\"}\r\nSUB _SM_INBOX 1\r\n")?;
        Ok(JsProbe { reader, writer })
    }

    /// Messages stored in `stream` now.
    pub fn depth(&mut self, stream: &str) -> Result<u64> {
        write!(
            self.writer,
            "PUB $JS.API.STREAM.INFO.{stream} _SM_INBOX 0\r\n\r\n"
        )?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the bus closed the connection");
            }
            let line = line.trim_end();
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n")?;
            } else if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("MSG without a length")?;
                let mut payload = vec![0u8; len + 2];
                self.reader.read_exact(&mut payload)?;
                let doc: serde_json::Value = serde_json::from_slice(&payload[..len])?;
                if doc["config"]["name"].as_str() != Some(stream) {
                    bail!("stream info for {stream}: {doc}");
                }
                return doc["state"]["messages"]
                    .as_u64()
                    .context("stream info without state.messages");
            } else if line.starts_with("-ERR") {
                bail!("bus: {line}");
            }
        }
    }
}

/// Samples the queue depths every [`QUEUE_SAMPLE_INTERVAL`] on a thread until [`QueueSampler::finish`].
pub struct QueueSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<QueueStats>,
}

impl QueueSampler {
    /// Samples the bus at `bus` (a nats-server's client address).
    pub fn start(bus: SocketAddr) -> QueueSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut stats = QueueStats::default();
            let mut probe = None;
            while !stopped.load(Ordering::Relaxed) {
                if probe.is_none() {
                    probe = JsProbe::connect(bus).ok();
                }
                if let Some(p) = probe.as_mut() {
                    let depths: Result<Vec<(String, u64)>> = STREAMS
                        .iter()
                        .map(|s| p.depth(s).map(|n| (s.to_string(), n)))
                        .collect();
                    match depths {
                        Ok(depths) => {
                            stats.samples += 1;
                            for (name, n) in depths {
                                let m = stats.max.entry(name.clone()).or_default();
                                *m = (*m).max(n);
                                *stats.sum.entry(name).or_default() += n;
                            }
                        }
                        Err(_) => probe = None,
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
    fn sums_prometheus_series() {
        let text = "# HELP x y\nstrata_replication_copied_bytes_total{target=\"a\"} 10\nstrata_replication_copied_bytes_total{target=\"b\"} 5\nstrata_replication_copied_bytes_total_other 1\n";
        assert_eq!(
            metric_sum(text, "strata_replication_copied_bytes_total"),
            Some(15.0)
        );
        assert_eq!(metric_sum(text, "absent"), None);
    }
}
