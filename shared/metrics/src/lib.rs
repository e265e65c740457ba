//! Metrics any Strata service exports: a small registry of labelled counters and gauges, rendered in
//! Prometheus' text exposition format (version 0.0.4), and a `GET /metrics` endpoint serving it.
//!
//! Built on `prometheus-client` (one [`prometheus_client::registry::Registry`] per [`Registry`], no
//! global recorder), whose Prometheus text encoder writes the exposition, and on hyper for the endpoint.
//! The families themselves are kept here, as prometheus-client counters and gauges in a map sorted by
//! label set: its `Family` is a hash map with neither iteration nor `retain`, and Strata needs
//! [`Gauge::remove_where`] and a stable series order; the families reach prometheus-client's registry
//! through one [`Collector`], which also keeps the help text as given (its `register` appends a full
//! stop) and families sorted by name.
//!
//! # Contract
//! - Names follow Prometheus conventions: `strata_<subsystem>_<what>_<unit>`, counters end in `_total`
//!   (and are exported under exactly that name).
//!   A name is registered once with its kind and help; registering it again returns the same family
//!   (so two components may share a family), and registering it with another kind, or a counter whose
//!   name does not end in `_total`, panics: that is a programming error, not an input.
//! - Every series of a family carries the same label names, in the order the first one used.
//! - Counters are `u64` and only go up ([`Counter::inc_by`]), or follow a monotonic total kept
//!   elsewhere ([`Counter::set_total`], e.g. a storage backend's retry count); gauges are `f64`,
//!   whole values written without a fraction (`1234`, not `1234.0`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use tokio::net::TcpListener;

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

/// A series' label set, in the order its caller gave; prometheus-client encodes it as it is.
type Labels = Vec<(String, String)>;

type CounterValue = prometheus_client::metrics::counter::Counter<u64, AtomicU64>;
type GaugeValue = prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>;

/// The series of one family, sorted by label set.
struct Series<M> {
    name: String,
    values: RwLock<BTreeMap<Labels, M>>,
}

impl<M: Default> Series<M> {
    fn new(name: &str) -> Arc<Series<M>> {
        Arc::new(Series { name: name.to_string(), values: RwLock::new(BTreeMap::new()) })
    }

    /// Runs `f` on the series of `labels`, made (at zero) if it is new.
    fn with<R>(&self, labels: &[(&str, &str)], f: impl FnOnce(&M) -> R) -> R {
        for (k, _) in labels {
            assert!(valid_label_name(k), "label name {k:?} of {} is not a valid Prometheus label", self.name);
        }
        let key = key(labels);
        if let Some(m) = self.values.read().expect("metrics family poisoned").get(&key) {
            return f(m);
        }
        f(self.values.write().expect("metrics family poisoned").entry(key).or_default())
    }

    fn get<R>(&self, labels: &[(&str, &str)], f: impl FnOnce(&M) -> R) -> Option<R> {
        self.values.read().expect("metrics family poisoned").get(&key(labels)).map(f)
    }

    fn remove_where(&self, label: &str, value: &str) {
        let mut values = self.values.write().expect("metrics family poisoned");
        values.retain(|labels, _| !labels.iter().any(|(k, v)| k == label && v == value));
    }

    /// Each series through `encode`, in label order.
    fn encode_each(
        &self,
        mut encoder: MetricEncoder,
        encode: impl Fn(&M, MetricEncoder) -> Result<(), std::fmt::Error>,
    ) -> Result<(), std::fmt::Error> {
        for (labels, m) in self.values.read().expect("metrics family poisoned").iter() {
            encode(m, encoder.encode_family(labels)?)?;
        }
        Ok(())
    }
}

fn key(labels: &[(&str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[derive(Clone)]
enum Values {
    Counter(Arc<Series<CounterValue>>),
    Gauge(Arc<Series<GaugeValue>>),
}

impl Values {
    fn kind(&self) -> Kind {
        match self {
            Values::Counter(_) => Kind::Counter,
            Values::Gauge(_) => Kind::Gauge,
        }
    }
}

struct Family {
    help: String,
    values: Values,
}

/// Runs before each render; see [`Registry::on_render`].
type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Every family of a [`Registry`], as prometheus-client's registry sees them: one collector.
#[derive(Clone, Default)]
struct Families(Arc<Mutex<BTreeMap<String, Family>>>);

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Families").finish_non_exhaustive()
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families = self.0.lock().expect("metrics registry poisoned");
        for (name, family) in families.iter() {
            match &family.values {
                Values::Counter(series) => {
                    // prometheus-client appends `_total` to a counter's name; ours already has it.
                    let base = name.strip_suffix("_total").expect("counter names end in _total");
                    let metric = encoder.encode_descriptor(base, &family.help, None, MetricType::Counter)?;
                    series.encode_each(metric, |c, e| c.encode(e))?;
                }
                Values::Gauge(series) => {
                    let metric = encoder.encode_descriptor(name, &family.help, None, MetricType::Gauge)?;
                    series.encode_each(metric, |g, mut e| {
                        let v = g.get();
                        // Whole values as integers, as Prometheus' own clients write them.
                        if v.fract() == 0.0 && v.abs() < 1e15 {
                            e.encode_gauge(&(v as i64))
                        } else {
                            e.encode_gauge(&v)
                        }
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// A set of metric families; clones share it.
#[derive(Clone)]
pub struct Registry {
    families: Families,
    refreshers: Arc<Mutex<Vec<Refresh>>>,
    exposition: Arc<prometheus_client::registry::Registry>,
}

impl Default for Registry {
    fn default() -> Registry {
        let families = Families::default();
        let mut exposition = prometheus_client::registry::Registry::default();
        exposition.register_collector(Box::new(families.clone()));
        Registry { families, refreshers: Arc::default(), exposition: Arc::new(exposition) }
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn register(&self, name: &str, help: &str, kind: Kind) -> Values {
        assert!(valid_name(name), "metric name {name:?} is not a valid Prometheus name");
        let mut families = self.families.0.lock().expect("metrics registry poisoned");
        let family = families.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            values: match kind {
                Kind::Counter => Values::Counter(Series::new(name)),
                Kind::Gauge => Values::Gauge(Series::new(name)),
            },
        });
        let registered = family.values.kind();
        assert_eq!(registered, kind, "metric {name} registered as both {} and {}", registered.as_str(), kind.as_str());
        assert!(kind != Kind::Counter || name.ends_with("_total"), "counter {name} does not end in _total");
        family.values.clone()
    }

    /// A counter family (its name must end in `_total`).
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        match self.register(name, help, Kind::Counter) {
            Values::Counter(series) => Counter(series),
            Values::Gauge(_) => unreachable!("register checks the kind"),
        }
    }

    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        match self.register(name, help, Kind::Gauge) {
            Values::Gauge(series) => Gauge(series),
            Values::Counter(_) => unreachable!("register checks the kind"),
        }
    }

    /// Calls `refresh` at the start of every [`Registry::render`] (so at every scrape), so it can copy
    /// values kept elsewhere into the registry just before they are shown. For the pipeline's hot path:
    /// a stage counts chunks and bytes in its own atomics (a relaxed add, where an update here costs a
    /// lock and a map lookup) and follows them with [`Counter::set_total`] only when someone scrapes.
    pub fn on_render(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.refreshers.lock().expect("metrics registry poisoned").push(Arc::new(refresh));
    }

    /// Every family in the text exposition format, families and series sorted (so output is stable).
    pub fn render(&self) -> String {
        let refreshers: Vec<Refresh> = self.refreshers.lock().expect("metrics registry poisoned").clone();
        for refresh in refreshers {
            refresh();
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.exposition)
            .expect("writing to a String does not fail");
        out
    }
}

/// A monotonically increasing count.
#[derive(Clone)]
pub struct Counter(Arc<Series<CounterValue>>);

impl Counter {
    pub fn inc_by(&self, labels: &[(&str, &str)], by: u64) {
        self.0.with(labels, |c| c.inc_by(by));
    }

    pub fn inc(&self, labels: &[(&str, &str)]) {
        self.inc_by(labels, 1);
    }

    /// Follows a total counted elsewhere; a smaller value than the current one is ignored, so the
    /// series never goes down.
    pub fn set_total(&self, labels: &[(&str, &str)], total: u64) {
        self.0.with(labels, |c| c.inner().fetch_max(total, Ordering::Relaxed));
    }

    pub fn get(&self, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(labels, |c| c.get() as f64)
    }
}

/// A value that goes up and down.
#[derive(Clone)]
pub struct Gauge(Arc<Series<GaugeValue>>);

impl Gauge {
    pub fn set(&self, labels: &[(&str, &str)], value: f64) {
        self.0.with(labels, |g| g.set(value));
    }

    /// Drops every series whose `label` is `value`: for gauges whose other labels change over time (an
    /// object name), so that only the current series is exported.
    pub fn remove_where(&self, label: &str, value: &str) {
        self.0.remove_where(label, value);
    }

    pub fn get(&self, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(labels, |g| g.get())
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

/// A client that has not sent its request head by then is dropped, so idle connections cannot pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head the endpoint reads (hyper's smallest buffer); scrapers send a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

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
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = answer(&request, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                // `Content-Type`, as scrapers and tests read it; hyper writes names in lower case.
                .title_case_headers(true)
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            (StatusCode::OK, prometheus_client::encoding::prometheus_text::CONTENT_TYPE, registry.render())
        }
        (&Method::GET, _) => {
            (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found; metrics are at /metrics\n".into())
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "only GET is served\n".into()),
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response of constant parts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

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
    fn writes_values_as_prometheus_reads_them() {
        let r = Registry::new();
        let g = r.gauge("strata_test_values", "values\\with a backslash\nand a newline");
        g.set(&[("v", "nan")], f64::NAN);
        g.set(&[("v", "inf")], f64::INFINITY);
        g.set(&[("v", "-inf")], f64::NEG_INFINITY);
        g.set(&[("v", "neg")], -3.0);
        g.set(&[("v", "big")], 1e20);
        g.set(&[("v", "frac")], 1.25e-3);
        assert_eq!(
            r.render(),
            "# HELP strata_test_values values\\\\with a backslash\\nand a newline\n\
             # TYPE strata_test_values gauge\n\
             strata_test_values{v=\"-inf\"} -Inf\n\
             strata_test_values{v=\"big\"} 100000000000000000000.0\n\
             strata_test_values{v=\"frac\"} 0.00125\n\
             strata_test_values{v=\"inf\"} +Inf\n\
             strata_test_values{v=\"nan\"} NaN\n\
             strata_test_values{v=\"neg\"} -3\n"
        );
    }

    #[test]
    #[should_panic(expected = "does not end in _total")]
    fn counters_end_in_total() {
        Registry::new().counter("strata_test_chunks", "chunks");
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
        // Header names as scrapers and the integration tests read them (hyper writes lower case unless told).
        assert!(ok.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{ok}");
        assert!(ok.contains("\r\nConnection: close\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n# HELP strata_test_value a value\n# TYPE strata_test_value gauge\nstrata_test_value 42\n"), "{ok}");
        assert!(get(addr, "GET / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        stop_tx.send(()).unwrap();
        server.await.unwrap();
    }
}
