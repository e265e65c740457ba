//! Metrics any Strata service exports: a small registry of labelled counters and gauges, rendered in
//! Prometheus' text exposition format (version 0.0.4), and a `GET /metrics` endpoint serving it.
//!
//! Why not the `prometheus` or `metrics` crates: Strata needs a handful of series per process, set from a
//! few places, scraped every few seconds. A registry that is a map behind one mutex, and an endpoint that
//! answers one request per connection on a tokio listener, is less code than adapting either crate's
//! global recorder and HTTP stack, and it adds no dependency to every service.
//!
//! # Contract
//! - Names follow Prometheus conventions: `strata_<subsystem>_<what>_<unit>`, counters end in `_total`.
//!   A name is registered once with its kind and help; registering it again returns the same family
//!   (so two components may share a family), and registering it with another kind panics: that is a
//!   programming error, not an input.
//! - Every series of a family carries the same label names, in the order the first one used.
//! - Values are `f64`; counters only go up ([`Counter::inc_by`]), or follow a monotonic total kept
//!   elsewhere ([`Counter::set_total`], e.g. a storage backend's retry count).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

type Labels = Vec<(String, String)>;

struct Family {
    kind: Kind,
    help: String,
    series: BTreeMap<Labels, f64>,
}

/// Runs before each render; see [`Registry::on_render`].
type Refresh = Arc<dyn Fn() + Send + Sync>;

/// A set of metric families; clones share it.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
    refreshers: Arc<Mutex<Vec<Refresh>>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn register(&self, name: &str, help: &str, kind: Kind) {
        assert!(valid_name(name), "metric name {name:?} is not a valid Prometheus name");
        let mut families = self.families.lock().expect("metrics registry poisoned");
        let family = families
            .entry(name.to_string())
            .or_insert_with(|| Family { kind, help: help.to_string(), series: BTreeMap::new() });
        assert_eq!(family.kind, kind, "metric {name} registered as both {} and {}", family.kind.as_str(), kind.as_str());
    }

    /// A counter family (its name should end in `_total`).
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.register(name, help, Kind::Counter);
        Counter(Handle { registry: self.clone(), name: name.to_string() })
    }

    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.register(name, help, Kind::Gauge);
        Gauge(Handle { registry: self.clone(), name: name.to_string() })
    }

    /// Calls `refresh` at the start of every [`Registry::render`], so it can copy values kept elsewhere
    /// into the registry just before they are shown. For the pipeline's hot path: a stage counts chunks
    /// and bytes in its own atomics (a relaxed add, where an update here costs a mutex and a map lookup)
    /// and follows them with [`Counter::set_total`] only when someone scrapes.
    pub fn on_render(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.refreshers.lock().expect("metrics registry poisoned").push(Arc::new(refresh));
    }

    /// Every family in the text exposition format, families and series sorted (so output is stable).
    pub fn render(&self) -> String {
        let refreshers: Vec<Refresh> = self.refreshers.lock().expect("metrics registry poisoned").clone();
        for refresh in refreshers {
            refresh();
        }
        let families = self.families.lock().expect("metrics registry poisoned");
        let mut out = String::new();
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (labels, value) in &family.series {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(*value));
            }
        }
        out
    }
}

#[derive(Clone)]
struct Handle {
    registry: Registry,
    name: String,
}

impl Handle {
    fn update(&self, labels: &[(&str, &str)], f: impl FnOnce(&mut f64)) {
        for (k, _) in labels {
            assert!(valid_label_name(k), "label name {k:?} of {} is not a valid Prometheus label", self.name);
        }
        let key: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut families = self.registry.families.lock().expect("metrics registry poisoned");
        let family = families.get_mut(&self.name).expect("handles exist only for registered families");
        f(family.series.entry(key).or_insert(0.0));
    }

    fn remove_where(&self, label: &str, value: &str) {
        let mut families = self.registry.families.lock().expect("metrics registry poisoned");
        let family = families.get_mut(&self.name).expect("handles exist only for registered families");
        family.series.retain(|labels, _| !labels.iter().any(|(k, v)| k == label && v == value));
    }

    fn get(&self, labels: &[(&str, &str)]) -> Option<f64> {
        let key: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let families = self.registry.families.lock().expect("metrics registry poisoned");
        families.get(&self.name).and_then(|f| f.series.get(&key).copied())
    }
}

/// A monotonically increasing count.
#[derive(Clone)]
pub struct Counter(Handle);

impl Counter {
    pub fn inc_by(&self, labels: &[(&str, &str)], by: u64) {
        self.0.update(labels, |v| *v += by as f64);
    }

    pub fn inc(&self, labels: &[(&str, &str)]) {
        self.inc_by(labels, 1);
    }

    /// Follows a total counted elsewhere; a smaller value than the current one is ignored, so the
    /// series never goes down.
    pub fn set_total(&self, labels: &[(&str, &str)], total: u64) {
        self.0.update(labels, |v| *v = v.max(total as f64));
    }

    pub fn get(&self, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(labels)
    }
}

/// A value that goes up and down.
#[derive(Clone)]
pub struct Gauge(Handle);

impl Gauge {
    pub fn set(&self, labels: &[(&str, &str)], value: f64) {
        self.0.update(labels, |v| *v = value);
    }

    /// Drops every series whose `label` is `value`: for gauges whose other labels change over time (an
    /// object name), so that only the current series is exported.
    pub fn remove_where(&self, label: &str, value: &str) {
        self.0.remove_where(label, value);
    }

    pub fn get(&self, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(labels)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Longest request head the endpoint reads; scrapers send a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client that has not sent its request by then is dropped, so idle connections cannot pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until `shutdown` completes: one request per connection
/// (`Connection: close`), 404 for other paths, 405 for other methods.
pub async fn serve(listener: TcpListener, registry: Registry, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &registry).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_REQUEST_HEAD {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", registry.render()),
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found; metrics are at /metrics\n".into()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET is served\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let r = Registry::new();
        let lag = r.gauge("strata_replication_lag_bytes", "bytes the target is behind");
        let copied = r.counter("strata_replication_copied_objects_total", "objects copied");
        lag.set(&[("target", "b")], 1234.0);
        lag.set(&[("target", "a \"q\"\n")], 0.5);
        copied.inc(&[("target", "b")]);
        copied.inc_by(&[("target", "b")], 2);
        copied.set_total(&[("target", "c")], 7);
        copied.set_total(&[("target", "c")], 3);
        assert_eq!(
            r.render(),
            "# HELP strata_replication_copied_objects_total objects copied\n\
             # TYPE strata_replication_copied_objects_total counter\n\
             strata_replication_copied_objects_total{target=\"b\"} 3\n\
             strata_replication_copied_objects_total{target=\"c\"} 7\n\
             # HELP strata_replication_lag_bytes bytes the target is behind\n\
             # TYPE strata_replication_lag_bytes gauge\n\
             strata_replication_lag_bytes{target=\"a \\\"q\\\"\\n\"} 0.5\n\
             strata_replication_lag_bytes{target=\"b\"} 1234\n"
        );
        lag.remove_where("target", "b");
        assert!(!r.render().contains("target=\"b\"} 1234"));
        assert_eq!(lag.get(&[("target", "b")]), None);
    }

    #[test]
    fn refreshers_run_before_each_render() {
        let r = Registry::new();
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let chunks = r.counter("strata_test_chunks_total", "chunks");
        let seen = total.clone();
        r.on_render(move || chunks.set_total(&[], seen.load(std::sync::atomic::Ordering::Relaxed)));
        assert!(r.render().ends_with("strata_test_chunks_total 0\n"), "{}", r.render());
        total.fetch_add(5, std::sync::atomic::Ordering::Relaxed);
        assert!(r.render().ends_with("strata_test_chunks_total 5\n"), "{}", r.render());
    }

    #[test]
    #[should_panic(expected = "registered as both")]
    fn one_name_has_one_kind() {
        let r = Registry::new();
        r.gauge("strata_x", "x");
        r.counter("strata_x", "x");
    }

    #[tokio::test]
    async fn serves_get_metrics_only() {
        let r = Registry::new();
        r.gauge("strata_test_value", "a value").set(&[], 42.0);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, r, async {
            let _ = stop_rx.await;
        }));
        async fn get(addr: std::net::SocketAddr, request: &str) -> String {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n# HELP strata_test_value a value\n# TYPE strata_test_value gauge\nstrata_test_value 42\n"), "{ok}");
        assert!(get(addr, "GET / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        stop_tx.send(()).unwrap();
        server.await.unwrap();
    }
}
