//! A pipeline service's Prometheus endpoint: the address it listens on (its `--metrics-listen` flag, else
//! its `[metrics]` key), serving its registry, and the bus backlog every service exports
//! (`strata_bus_queue_depth{queue}`, and `strata_bus_publish_retries_total`), so that whichever service an
//! operator scrapes shows the queues.
//!
//! The endpoint is bound before the service connects anywhere, so a bad address is one error line at
//! start, not a service that runs unobserved.

use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use strata_bus::{Bus, Queue};
use strata_metrics::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How often the queue depths are read from the bus (one stream-info request per queue on NATS).
pub const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(5);

/// Where a service's endpoint listens: its flag, else its config key; with the setting's name for messages.
pub fn listen_address(flag: Option<&str>, key: Option<&str>, key_name: &str) -> Option<(String, String)> {
    match (flag, key) {
        (Some(addr), _) => Some((addr.to_string(), "--metrics-listen".to_string())),
        (None, Some(addr)) => Some((addr.to_string(), key_name.to_string())),
        (None, None) => None,
    }
}

/// The label a queue's series carry.
pub fn queue_label(queue: Queue) -> &'static str {
    match queue {
        Queue::Seal => "seal",
        Queue::Upload => "upload",
        Queue::Replicate => "replicate",
    }
}

/// A running `GET /metrics` endpoint; dropping it stops it and its background refresh.
pub struct MetricsEndpoint {
    registry: Registry,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl MetricsEndpoint {
    /// Listens on `addr` (`host:port`; `setting` names where it came from, for the error) and serves
    /// `registry` there.
    pub async fn start(addr: &str, setting: &str, registry: Registry) -> anyhow::Result<MetricsEndpoint> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("{setting} {addr:?}: cannot listen for metrics"))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "metrics at http://{local}/metrics");
        let stop = CancellationToken::new();
        tokio::spawn(strata_metrics::serve(listener, registry.clone(), stop.clone().cancelled_owned()));
        Ok(MetricsEndpoint { registry, _stop_on_drop: stop.clone().drop_guard(), stop })
    }

    /// Exports `strata_bus_queue_depth{queue}` for every work queue of `bus`, read now and every
    /// [`QUEUE_DEPTH_INTERVAL`]. A queue whose depth cannot be read has no series until it can again
    /// (an absent series, not a stale number).
    pub fn watch_queues(&self, bus: Arc<dyn Bus>) {
        // Beside the depths, the bus's one retry counter (a NATS cluster's leader elections show here).
        let retries = self.registry.counter(
            "strata_bus_publish_retries_total",
            "Work publishes this process retried (unacknowledged while a NATS stream leader was being elected, or a server was lost).",
        );
        retries.set_total(&[], strata_bus::retrying::publish_retries_total());
        self.registry.on_render(move || retries.set_total(&[], strata_bus::retrying::publish_retries_total()));
        // Chunks that went straight between processes instead of through the NATS server (ARCHITECTURE.md,
        // "The bus"); zero on a TLS bus or an in-process one.
        let direct = self.registry.counter(
            "strata_bus_direct_messages_total",
            "Transient messages (chunks) this process sent to, or took from, direct connections instead of the NATS server.",
        );
        let refresh_direct = move || {
            for queue in [Queue::Seal, Queue::Upload] {
                let (sent, received) = strata_bus::direct::totals(queue);
                direct.set_total(&[("queue", queue_label(queue)), ("side", "sent")], sent);
                direct.set_total(&[("queue", queue_label(queue)), ("side", "received")], received);
            }
        };
        refresh_direct();
        self.registry.on_render(refresh_direct);
        let depth = self.registry.gauge("strata_bus_queue_depth", "Messages in a work queue that no worker has finished (stored and not acknowledged).");
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                for queue in Queue::ALL {
                    let label = queue_label(queue);
                    match bus.queue_depth(queue).await {
                        Ok(n) => depth.set(&[("queue", label)], n as f64),
                        Err(e) => {
                            depth.remove_where("queue", label);
                            if !warned {
                                tracing::warn!(queue = label, error = %e, "cannot read the queue depth for metrics");
                                warned = true;
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(QUEUE_DEPTH_INTERVAL) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_flag_overrides_the_key() {
        assert_eq!(listen_address(None, None, "[metrics] sealer"), None);
        assert_eq!(
            listen_address(None, Some("127.0.0.1:1"), "[metrics] sealer"),
            Some(("127.0.0.1:1".into(), "[metrics] sealer".into()))
        );
        assert_eq!(
            listen_address(Some("127.0.0.1:2"), Some("127.0.0.1:1"), "[metrics] sealer"),
            Some(("127.0.0.1:2".into(), "--metrics-listen".into()))
        );
    }

    #[tokio::test]
    async fn a_bad_address_is_one_error_naming_the_setting() {
        let e = MetricsEndpoint::start("not-an-address", "--metrics-listen", Registry::new()).await.err().expect("refused");
        let line = format!("{e:#}");
        assert!(line.starts_with("--metrics-listen \"not-an-address\": cannot listen for metrics: "), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[tokio::test]
    async fn serves_the_queue_depths_of_the_bus() {
        let bus = strata_bus::LocalBus::new();
        bus.publish_work(Queue::Seal, bytes::Bytes::from_static(b"x")).await.unwrap();
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap().to_string();
        drop(probe);
        let endpoint = MetricsEndpoint::start(&addr, "test", Registry::new()).await.unwrap();
        endpoint.watch_queues(Arc::new(bus));
        let body = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                if out.contains("strata_bus_queue_depth{queue=\"upload\"}") {
                    return out;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("queue depths exported");
        assert!(body.contains("# TYPE strata_bus_queue_depth gauge\n"), "{body}");
        assert!(body.contains("strata_bus_queue_depth{queue=\"seal\"} 1\n"), "{body}");
        assert!(body.contains("strata_bus_queue_depth{queue=\"upload\"} 0\n"), "{body}");
        assert!(body.contains("# TYPE strata_bus_publish_retries_total counter\nstrata_bus_publish_retries_total 0\n"), "{body}");
        drop(endpoint);
    }
}
