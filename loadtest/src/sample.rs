//! What the model watches while a phase runs, every 250 ms: how many chunks wait at each stage, from
//! the services' own Prometheus counters (`[metrics]` listens on every host's own address), and the
//! replication work queue's depth, asked of the bus itself (the JetStream API's
//! `$JS.API.STREAM.INFO.<stream>` over a plain NATS connection from the tool).
//!
//! Chunks travel on core NATS queue groups, which hold nothing, so no stream counts them: a stage's
//! backlog is what the stage before it has handed on and it has not, counted since the phase began.
//! `seal_backlog` = chunks the collector published (`strata_collector_chunks_total`) minus those the
//! sealers sealed (`strata_sealer_chunks_total`); `upload_backlog` = chunks sealed minus chunks the
//! uploaders confirmed stored (`strata_uploader_chunks_total`). Both are chunks in flight, inside the
//! services (bounded by the collector's `in_flight_bytes`). WAL that `archive-push` sends passes no
//! collector, so in a WAL burst only `upload_backlog` means something. A resent chunk counts once more
//! at each stage it passes again.
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

/// Max and mean depth of each queue or backlog over a phase.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub samples: u64,
    pub max: BTreeMap<String, u64>,
    pub sum: BTreeMap<String, u64>,
    /// Samples of a series taken apart from the stream samples (the backlogs).
    pub samples_of: BTreeMap<String, u64>,
}

type BacklogStats = QueueStats;

impl QueueStats {
    pub fn mean(&self, stream: &str) -> f64 {
        let n = self.samples_of.get(stream).copied().unwrap_or(self.samples);
        if n == 0 {
            return 0.0;
        }
        *self.sum.get(stream).unwrap_or(&0) as f64 / n as f64
    }

    fn merge(&mut self, other: QueueStats) {
        for (name, max) in other.max {
            self.samples_of.insert(name.clone(), other.samples);
            self.sum
                .insert(name.clone(), other.sum.get(&name).copied().unwrap_or(0));
            self.max.insert(name, max);
        }
    }
}

/// The work-queue streams whose depths are sampled: only replication's tasks still go through one.
pub const STREAMS: [&str; 1] = ["STRATA_REPLICATE"];

/// Where the chunk counters of a phase's stages are served.
#[derive(Debug, Clone, Default)]
pub struct StageEndpoints {
    pub collector: Option<SocketAddr>,
    pub sealers: Vec<SocketAddr>,
    pub uploaders: Vec<SocketAddr>,
}

impl StageEndpoints {
    /// Chunks handed on so far by the collector, the sealers and the uploaders; `None` when one
    /// endpoint did not answer.
    fn counts(&self) -> Option<[f64; 3]> {
        let read = |addr: &SocketAddr, metric: &str| -> Option<f64> {
            Some(metric_sum(&http_get(*addr, "/metrics").ok()?, metric).unwrap_or(0.0))
        };
        let sum = |addrs: &[SocketAddr], metric: &str| -> Option<f64> {
            addrs.iter().map(|a| read(a, metric)).sum()
        };
        let collector = match &self.collector {
            Some(a) => read(a, "strata_collector_chunks_total")?,
            None => 0.0,
        };
        Some([
            collector,
            sum(&self.sealers, "strata_sealer_chunks_total")?,
            sum(&self.uploaders, "strata_uploader_chunks_total")?,
        ])
    }
}

/// The backlogs of the module docs, from counts since the phase began.
pub fn backlogs(start: [f64; 3], now: [f64; 3]) -> [(&'static str, u64); 2] {
    let d: Vec<f64> = start
        .iter()
        .zip(now)
        .map(|(a, b)| (b - a).max(0.0))
        .collect();
    [
        ("seal_backlog", (d[0] - d[1]).max(0.0) as u64),
        ("upload_backlog", (d[1] - d[2]).max(0.0) as u64),
    ]
}

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
    /// Samples the bus at `bus` (a nats-server's client address) and the stages' counters.
    pub fn start(bus: SocketAddr, stages: StageEndpoints) -> QueueSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        // The counters before the phase: taken now, so that the phase's first chunks are not missed.
        let start = stages.counts();
        let handle = std::thread::spawn(move || {
            let mut stats = QueueStats::default();
            let mut probe = None;
            let mut backlog = BacklogStats::default();
            while !stopped.load(Ordering::Relaxed) {
                if let (Some(start), Some(now)) = (start, stages.counts()) {
                    backlog.samples += 1;
                    for (name, n) in backlogs(start, now) {
                        let m = backlog.max.entry(name.to_string()).or_default();
                        *m = (*m).max(n);
                        *backlog.sum.entry(name.to_string()).or_default() += n;
                    }
                }
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
            // Every series as a mean over its own samples.
            stats.merge(backlog);
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
    fn a_backlog_is_what_the_stage_before_handed_on_since_the_start() {
        // 100 chunks published, 60 sealed, 50 stored since the start.
        let b = backlogs([10.0, 5.0, 0.0], [110.0, 65.0, 50.0]);
        assert_eq!(b, [("seal_backlog", 40), ("upload_backlog", 10)]);
        // A stage ahead of the one before it (WAL from archive-push passes no collector) is 0, not less.
        let b = backlogs([0.0, 0.0, 0.0], [0.0, 30.0, 40.0]);
        assert_eq!(b, [("seal_backlog", 0), ("upload_backlog", 0)]);
    }

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
