//! How a process reaches NATS (addresses, TLS, credentials, timeouts, flow-control limits), as plain
//! settings with their defaults and checks, apart from the connection that uses them.

use super::*;

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
    pub(super) fn validate(&self) -> Result<()> {
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
