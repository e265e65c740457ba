//! The direct data path: transient messages ([`crate::Bus::publish_transient`]) carried over a TCP connection
//! from the process that produces them to a worker of their queue, with NATS carrying only where to connect.
//!
//! # Why
//! Every byte through nats-server is copied into the server and out again, and parsed on both sides of it.
//! For a full backup that is the whole database twice (plain chunks to the sealers, sealed ones to the
//! uploaders): measured on pgbench scale 100, nats-server alone used 1.9 CPU-s of the fleet's 6.3, against
//! 2.0 CPU-s for the whole backup in one process, and on a 2-core host that CPU is the backup's time.
//! Chunks need nothing the broker offers: they are transient (the job keeps each until an uploader confirms
//! it, and sends it again), so a direct connection may lose them as a queue group may.
//!
//! # How
//! - A producer (a [`DirectProducer`] per queue, made on its first transient message) listens on a TCP port
//!   and publishes an *offer* (`<transient subject>.offer`: its address and a random token) every
//!   [`OFFER_INTERVAL`], on core NATS.
//! - Every worker of the queue ([`DirectWorker`]) hears the offers and connects to each producer once,
//!   showing the token. Only who may read the offer subject knows it, so the bus's permissions decide who
//!   may take chunks, as they do on the NATS path.
//! - Flow is by credit: a worker grants [`INITIAL_CREDIT`] messages when it connects and one more each time
//!   its process takes a message, so a busy worker gets no more than it can take and idle ones get the rest
//!   (what a queue group does on the server).
//! - A producer with no worker connected sends on NATS, as before; one whose last worker disconnects sends
//!   what it had queued on NATS. A connection that breaks loses what was on it, and the job resends.
//!
//! - On a bus that uses TLS, messages are *sealed*: each is encrypted and authenticated with AES-256-GCM
//!   under a key derived from the offer's token (which only travelled over TLS) and a random salt per
//!   connection, so a direct connection is as private as the bus and costs one AES pass at each end,
//!   where the NATS path costs TLS at both clients and twice in the server.
//!
//! # Wire format
//! Worker to producer: [`MAGIC`] and the 32-byte token, then credits as big-endian `u32`s. Producer to
//! worker: when sealed, first a 16-byte salt; then messages as a big-endian `u32` length and the payload
//! (sealed: ciphertext and 16-byte tag, the nonce being the message's number on the connection). A worker
//! refuses a length over the bus's `max_payload` and a message that does not authenticate, and closes the
//! connection; a producer closes one that shows a wrong token.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, Semaphore};
use tracing::{debug, warn};

use crate::Queue;

/// First bytes a worker sends on a direct connection (the protocol's version is its last digit).
pub const MAGIC: &[u8; 8] = b"STRDIR01";
/// How often a producer repeats its offer, so that a worker started later finds it.
pub const OFFER_INTERVAL: Duration = Duration::from_secs(1);
/// Messages a worker lets a producer send before it takes any.
pub const INITIAL_CREDIT: u32 = 4;
/// How long a producer waits for a connecting worker's token, and a worker for the connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages this process wrote to, and took from, direct connections, per queue (by [`queue_index`]): the
/// metrics' `strata_bus_direct_messages_total`.
static SENT: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static RECEIVED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

fn queue_index(queue: Queue) -> usize {
    match queue {
        Queue::Seal => 0,
        Queue::Upload => 1,
        Queue::Replicate => 2,
    }
}

/// Messages of `queue` this process sent over direct connections, and took from them, since it started.
pub fn totals(queue: Queue) -> (u64, u64) {
    let i = queue_index(queue);
    (SENT[i].load(Ordering::Relaxed), RECEIVED[i].load(Ordering::Relaxed))
}

/// The subject a queue's producers offer direct connections on.
pub fn offer_subject(queue: Queue) -> String {
    format!("{}.offer", queue.transient_subject())
}

/// A producer's offer: where to connect and the token to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub addr: SocketAddr,
    pub token: [u8; 32],
    /// Messages are encrypted and authenticated (the producer's bus uses TLS).
    pub sealed: bool,
}

impl Offer {
    const PREFIX: &'static str = "strata-direct 1 ";

    pub fn encode(&self) -> Bytes {
        let mode = if self.sealed { "sealed" } else { "plain" };
        Bytes::from(format!("{}{} {} {mode}", Self::PREFIX, self.addr, hex(&self.token)))
    }

    /// `None` for anything but an offer of this version (other versions, garbage).
    pub fn decode(payload: &[u8]) -> Option<Offer> {
        let text = std::str::from_utf8(payload).ok()?.strip_prefix(Self::PREFIX)?;
        let (addr, rest) = text.split_once(' ')?;
        let (token, mode) = rest.split_once(' ')?;
        let sealed = match mode {
            "sealed" => true,
            "plain" => false,
            _ => return None,
        };
        let addr: SocketAddr = addr.parse().ok()?;
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&token[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Offer { addr, token: out, sealed })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A connection's AEAD: AES-256-GCM under a key derived from the offer's token and the connection's salt,
/// with the message's number on the connection as its nonce (each key is used by one connection only).
struct ConnectionCipher {
    key: aws_lc_rs::aead::LessSafeKey,
    next: u64,
}

impl ConnectionCipher {
    const TAG: usize = 16;

    fn new(token: &[u8; 32], salt: &[u8; 16]) -> ConnectionCipher {
        let mut material = [0u8; 48];
        material[..32].copy_from_slice(token);
        material[32..].copy_from_slice(salt);
        let key = blake3::derive_key("strata direct data path v1 connection key", &material);
        let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key).expect("32-byte key");
        ConnectionCipher { key: aws_lc_rs::aead::LessSafeKey::new(unbound), next: 0 }
    }

    fn nonce(&mut self) -> aws_lc_rs::aead::Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce)
    }

    fn seal(&mut self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(message.len() + Self::TAG);
        out.extend_from_slice(message);
        let nonce = self.nonce();
        self.key.seal_in_place_append_tag(nonce, aws_lc_rs::aead::Aad::empty(), &mut out).expect("message within AES-GCM's limit");
        out
    }

    /// The plain message, in place; an error when it does not authenticate.
    fn open(&mut self, mut sealed: BytesMut) -> std::io::Result<Bytes> {
        let nonce = self.nonce();
        let len = self
            .key
            .open_in_place(nonce, aws_lc_rs::aead::Aad::empty(), &mut sealed)
            .map_err(|_| std::io::Error::other("a message did not authenticate"))?
            .len();
        sealed.truncate(len);
        Ok(sealed.freeze())
    }
}

/// Aborts a task when dropped, so that a producer's or worker's tasks end with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a producer's connections share.
struct Shared {
    /// Connected workers; guards the decision to send directly (see [`DirectProducer::try_send`]).
    connected: Mutex<usize>,
    queued: mpsc::UnboundedSender<Bytes>,
    next: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
    /// Messages written to workers, for tests and metrics.
    sent: AtomicU64,
}

/// The producing side for one queue: a listener, its offers, and the queue of messages its connected
/// workers take from.
pub struct DirectProducer {
    shared: Arc<Shared>,
    _tasks: Vec<AbortOnDrop>,
}

impl DirectProducer {
    /// Listens on `bind` (port 0: any free port) and offers the connection on `client` every
    /// [`OFFER_INTERVAL`]. When the last worker disconnects, messages still queued go out on NATS.
    /// With `sealed`, messages are encrypted and authenticated (see the module docs).
    pub async fn start(
        client: async_nats::Client,
        queue: Queue,
        bind: SocketAddr,
        sealed: bool,
    ) -> std::io::Result<DirectProducer> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let mut token = [0u8; 32];
        rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut token)
            .map_err(|e| std::io::Error::other(format!("no random token: {e}")))?;
        let (queued, next) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { connected: Mutex::new(0), queued, next: tokio::sync::Mutex::new(next), sent: 0.into() });
        let offer = Offer { addr, token, sealed }.encode();
        let subject = offer_subject(queue);
        let offering = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(OFFER_INTERVAL);
                loop {
                    tick.tick().await;
                    // Lost offers only delay a connection; a refused one (permissions) leaves the NATS path.
                    let _ = client.publish(subject.clone(), offer.clone()).await;
                }
            })
        };
        let accepting = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors, say: workers fall back to NATS meanwhile.
                            warn!(error = %e, "cannot accept a direct connection");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    while connections.try_join_next().is_some() {}
                    let (shared, client) = (shared.clone(), client.clone());
                    connections.spawn(async move {
                        if let Err(e) = serve(stream, &token, sealed, &shared, &client, queue).await {
                            debug!(%peer, error = %e, "direct connection ended");
                        }
                    });
                }
            })
        };
        debug!(%addr, ?queue, "offering direct connections");
        Ok(DirectProducer { shared, _tasks: vec![AbortOnDrop(offering), AbortOnDrop(accepting)] })
    }

    /// Queues `payload` for a connected worker; gives it back when no worker is connected.
    pub fn try_send(&self, payload: Bytes) -> Result<(), Bytes> {
        let connected = self.shared.connected.lock().expect("direct producer state");
        if *connected == 0 {
            return Err(payload);
        }
        self.shared.queued.send(payload).map_err(|e| e.0)
    }

    /// Workers connected now.
    pub fn connected(&self) -> usize {
        *self.shared.connected.lock().expect("direct producer state")
    }

    /// Messages written to workers so far.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }
}

/// One worker's connection, after it showed the token: writes queued messages while it has credit.
async fn serve(
    stream: TcpStream,
    token: &[u8; 32],
    sealed: bool,
    shared: &Arc<Shared>,
    client: &async_nats::Client,
    queue: Queue,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    let mut hello = [0u8; 40];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_exact(&mut hello))
        .await
        .map_err(|_| std::io::Error::other("no handshake"))??;
    // Not constant-time comparison of a random 256-bit token that a prober cannot learn bit by bit: each
    // wrong guess costs a connection, and the token changes with every producer.
    if &hello[..8] != MAGIC || hello[8..] != token[..] {
        warn!("refused a direct connection that did not show this producer's token");
        return Err(std::io::Error::other("wrong token"));
    }
    let mut cipher = if sealed {
        let mut salt = [0u8; 16];
        rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut salt)
            .map_err(|e| std::io::Error::other(format!("no random salt: {e}")))?;
        writer.write_all(&salt).await?;
        Some(ConnectionCipher::new(token, &salt))
    } else {
        None
    };
    let credit = Arc::new(Semaphore::new(0));
    let closed = Arc::new(Notify::new());
    let _reading = {
        let (credit, closed) = (credit.clone(), closed.clone());
        AbortOnDrop(tokio::spawn(async move {
            loop {
                match reader.read_u32().await {
                    Ok(n) => credit.add_permits((n as usize).min(Semaphore::MAX_PERMITS - credit.available_permits())),
                    Err(_) => break,
                }
            }
            closed.notify_one();
        }))
    };
    *shared.connected.lock().expect("direct producer state") += 1;
    let result = async {
        loop {
            tokio::select! {
                _ = closed.notified() => return Ok(()),
                permit = credit.acquire() => permit.expect("never closed").forget(),
            }
            let message = tokio::select! {
                _ = closed.notified() => return Ok(()),
                message = async { shared.next.lock().await.recv().await } => match message {
                    Some(m) => m,
                    None => return Ok(()),
                },
            };
            // A message lost here (the write fails) is sent again by its job.
            let message = match &mut cipher {
                Some(cipher) => Bytes::from(cipher.seal(&message)),
                None => message,
            };
            writer.write_u32(message.len() as u32).await?;
            writer.write_all(&message).await?;
            shared.sent.fetch_add(1, Ordering::Relaxed);
            SENT[queue_index(queue)].fetch_add(1, Ordering::Relaxed);
        }
    }
    .await;
    let last = {
        let mut connected = shared.connected.lock().expect("direct producer state");
        *connected -= 1;
        *connected == 0
    };
    if last {
        // Nobody will take what is queued: hand it to the NATS path (unless a worker connected since).
        let mut next = shared.next.lock().await;
        while *shared.connected.lock().expect("direct producer state") == 0 {
            let Ok(message) = next.try_recv() else { break };
            let _ = client.publish(queue.transient_subject(), message).await;
        }
    }
    result
}

/// The working side for one queue: connects to every producer that offers, and hands what they send to
/// the worker's stream.
pub struct DirectWorker {
    pub messages: mpsc::Receiver<Bytes>,
    _task: AbortOnDrop,
}

impl DirectWorker {
    /// Listens for offers on `offers` (a subscription to [`offer_subject`]) and refuses messages longer than
    /// `max_frame`.
    pub fn start(queue: Queue, mut offers: async_nats::Subscriber, max_frame: usize) -> DirectWorker {
        // Small: each connection holds up to its credit besides, and a message waiting here is not being
        // worked on.
        let (tx, messages) = mpsc::channel(2);
        let task = tokio::spawn(async move {
            let connected: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
            let mut connections = tokio::task::JoinSet::new();
            while let Some(message) = offers.next().await {
                let Some(offer) = Offer::decode(&message.payload) else {
                    debug!("ignored a malformed direct-connection offer");
                    continue;
                };
                while connections.try_join_next().is_some() {}
                if !connected.lock().expect("direct worker state").insert(offer.addr) {
                    continue;
                }
                let (tx, connected) = (tx.clone(), connected.clone());
                connections.spawn(async move {
                    if let Err(e) = take(queue, &offer, max_frame, &tx).await {
                        debug!(addr = %offer.addr, error = %e, "direct connection ended");
                    }
                    connected.lock().expect("direct worker state").remove(&offer.addr);
                });
            }
        });
        DirectWorker { messages, _task: AbortOnDrop(task) }
    }
}

/// Connects to one producer and passes its messages on, granting a credit for each one taken.
async fn take(queue: Queue, offer: &Offer, max_frame: usize, out: &mpsc::Sender<Bytes>) -> std::io::Result<()> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(offer.addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    stream.set_nodelay(true)?;
    // Unbuffered: a payload is read from the socket straight into its own buffer.
    let (mut reader, mut writer) = stream.into_split();
    let mut hello = Vec::with_capacity(44);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&offer.token);
    hello.extend_from_slice(&INITIAL_CREDIT.to_be_bytes());
    writer.write_all(&hello).await?;
    let (mut cipher, max_frame) = if offer.sealed {
        let mut salt = [0u8; 16];
        tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_exact(&mut salt))
            .await
            .map_err(|_| std::io::Error::other("no salt"))??;
        (Some(ConnectionCipher::new(&offer.token, &salt)), max_frame + ConnectionCipher::TAG)
    } else {
        (None, max_frame)
    };
    loop {
        let len = reader.read_u32().await? as usize;
        if len > max_frame {
            return Err(std::io::Error::other(format!("a message of {len} bytes is over the limit of {max_frame}")));
        }
        let mut buf = BytesMut::with_capacity(len);
        while buf.len() < len {
            let limit = len - buf.len();
            if (&mut reader).take(limit as u64).read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let message = match &mut cipher {
            Some(cipher) => cipher.open(buf)?,
            None => buf.freeze(),
        };
        if out.send(message).await.is_err() {
            return Ok(());
        }
        RECEIVED[queue_index(queue)].fetch_add(1, Ordering::Relaxed);
        writer.write_u32(1).await?;
    }
}

/// The address a producer listens on when none is configured: the local address this host reaches the
/// first bus server from (so a worker that reaches the bus reaches it too), on any free port.
pub async fn default_bind(server: &str) -> std::io::Result<SocketAddr> {
    let server = tokio::net::lookup_host(server)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{server} resolves to no address")))?;
    // A connected UDP socket sends nothing; it only asks the kernel for the route's source address.
    let probe = tokio::net::UdpSocket::bind(if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await?;
    probe.connect(server).await?;
    let ip: IpAddr = probe.local_addr()?.ip();
    Ok(SocketAddr::new(ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_message_opens_only_in_order_under_its_connections_key() {
        let (token, salt) = ([1u8; 32], [2u8; 16]);
        let (mut tx, mut rx) = (ConnectionCipher::new(&token, &salt), ConnectionCipher::new(&token, &salt));
        let first = tx.seal(b"first chunk");
        let second = tx.seal(b"second chunk");
        assert!(!first.windows(5).any(|w| w == b"first"), "sealed bytes hold the plain text");
        assert_eq!(rx.open(BytesMut::from(&first[..])).unwrap(), Bytes::from_static(b"first chunk"));
        assert_eq!(rx.open(BytesMut::from(&second[..])).unwrap(), Bytes::from_static(b"second chunk"));
        // Replayed, altered, or under another connection's salt: refused.
        let mut replay = ConnectionCipher::new(&token, &salt);
        replay.next = 2;
        assert!(replay.open(BytesMut::from(&first[..])).is_err());
        let mut altered = first.clone();
        altered[0] ^= 1;
        assert!(ConnectionCipher::new(&token, &salt).open(BytesMut::from(&altered[..])).is_err());
        assert!(ConnectionCipher::new(&token, &[3u8; 16]).open(BytesMut::from(&first[..])).is_err());
        assert!(ConnectionCipher::new(&token, &salt).open(BytesMut::from(&b"short"[..])).is_err());
    }

    #[test]
    fn an_offer_survives_encoding_and_garbage_is_refused() {
        let offer = Offer { addr: "10.1.2.3:4567".parse().unwrap(), token: [0xab; 32], sealed: false };
        assert_eq!(Offer::decode(&offer.encode()), Some(offer.clone()));
        let v6 = Offer { addr: "[::1]:9".parse().unwrap(), token: [7; 32], sealed: true };
        assert_eq!(Offer::decode(&v6.encode()), Some(v6.clone()));
        for bad in [
            &b""[..],
            b"strata-direct 1 ",
            b"strata-direct 2 10.1.2.3:4567 abab",
            b"strata-direct 1 10.1.2.3 abababababababababababababababababababababababababababababababab",
            b"strata-direct 1 10.1.2.3:4567 zzababababababababababababababababababababababababababababababab",
            b"strata-direct 1 10.1.2.3:4567 \xff\xfe",
            b"strata-direct 1 10.1.2.3:4567 abababababababababababababababababababababababababababababababab",
            b"strata-direct 1 10.1.2.3:4567 abababababababababababababababababababababababababababababababab open",
        ] {
            assert_eq!(Offer::decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // Random and mutated offers decode to an offer or to nothing, never a panic.
        let valids = vec![offer.encode().to_vec(), v6.encode().to_vec()];
        strata_fuzzkit::fuzz("direct offer", 2000, strata_fuzzkit::mutated_any(valids), |bytes| {
            if let Some(o) = Offer::decode(&bytes) {
                strata_fuzzkit::check!(Offer::decode(&o.encode()) == Some(o.clone()), "an offer changed on re-encoding");
            }
            Ok(())
        });
    }
}
