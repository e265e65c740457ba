//! NatsBus against a real nats-server (2.10 or later), one server per test.
//!
//! Each test starts its own nats-server on a free loopback port below the ephemeral range, with the shipped
//! deploy/nats/nats-server.conf (only its JetStream store_dir moved into the test's temporary directory), and
//! stops it by pid when the test ends. The binary comes from `$STRATA_NATS_SERVER`, else
//! /opt/strata-tools/bin/nats-server (installed by scripts/install-deps.sh); without one the tests fail, they
//! never skip.
//!
//! Longer than the 600 lines other files keep to: it is a list of independent tests, one per promise of the
//! bus (delivery, redelivery, limits, security), sharing one small server fixture at the top; split, the
//! fixture would be repeated or made into a crate of its own for nothing.

use bytes::Bytes;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use strata_bus::nats::{NatsOptions, WORKER_CONSUMER};
use strata_bus::{Bus, BusError, NatsBus, Queue, WorkStream};

const DEFAULT_NATS_SERVER: &str = "/opt/strata-tools/bin/nats-server";
/// What the shipped config sets (`max_payload: 8MB`, binary megabytes).
const SHIPPED_MAX_PAYLOAD: usize = 8 * 1024 * 1024;
const START_DEADLINE: Duration = Duration::from_secs(15);
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How long a worker waits before concluding that its queue is drained.
const IDLE: Duration = Duration::from_secs(2);
/// Generous bound for a message that is expected to arrive.
const ARRIVES: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------------------

fn nats_server_binary() -> PathBuf {
    let path = match std::env::var_os("STRATA_NATS_SERVER") {
        Some(p) => PathBuf::from(p),
        None if Path::new(DEFAULT_NATS_SERVER).exists() => PathBuf::from(DEFAULT_NATS_SERVER),
        None => panic!(
            "nats-server not found: these tests need nats-server 2.10 or later at {DEFAULT_NATS_SERVER} or in \
             $STRATA_NATS_SERVER\nHINT: run scripts/install-deps.sh as root (installs nats-server 2.15.1 there)"
        ),
    };
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}\nHINT: run scripts/install-deps.sh as root", path.display()));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "nats-server: v2.15.1"
    let numbers: Vec<u32> =
        version.rsplit('v').next().unwrap_or("").split('.').take(2).map(|n| n.parse().unwrap_or(0)).collect();
    assert!(
        numbers.len() == 2 && (numbers[0], numbers[1]) >= (2, 10),
        "{} reports {version:?}; Strata needs nats-server 2.10 or later (Debian's 2.9.10 silently ignores \
         consumer options)\nHINT: run scripts/install-deps.sh as root",
        path.display()
    );
    path
}

/// A port below the ephemeral range (32768), so the kernel never hands it to an outgoing connection. Each test
/// process starts at its own offset; within a process the ports are handed out in turn.
fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const LOW: u16 = 20000;
    const SPAN: u16 = 12000;
    let _ = NEXT.compare_exchange(0, (std::process::id() % SPAN as u32) as u16 + 1, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

enum Flavour {
    /// The shipped config, JetStream on.
    Shipped,
    /// No config and no JetStream: a server Strata cannot use.
    PlainCoreNats,
}

/// A nats-server child process in its own temporary directory (config, JetStream store, log).
struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    flavour: Flavour,
}

impl NatsServer {
    fn start() -> NatsServer {
        Self::start_flavour(Flavour::Shipped)
    }

    fn start_flavour(flavour: Flavour) -> NatsServer {
        let dir = tempfile::Builder::new().prefix("strata-nats-test").tempdir().expect("create temp dir");
        let mut server = NatsServer { child: None, port: 0, dir, flavour };
        // Another process may take the port between the probe and the server's bind; try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("nats-server could not bind a port in 5 attempts; log:\n{}", server.log());
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The shipped config with only the JetStream store moved into this test's directory (`-sd` cannot
    /// override a store_dir set in a config file; the listen address is overridden with `-a`/`-p`).
    fn write_config(&self) -> PathBuf {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/nats-server.conf");
        let text = std::fs::read_to_string(&shipped).unwrap_or_else(|e| panic!("read {}: {e}", shipped.display()));
        let store = self.dir.path().join("jetstream");
        let mut replaced = 0;
        let config: Vec<String> = text
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("store_dir:") {
                    replaced += 1;
                    format!("    store_dir: {:?}", store.display().to_string())
                } else {
                    line.to_string()
                }
            })
            .collect();
        assert_eq!(replaced, 1, "expected exactly one store_dir line in {}", shipped.display());
        let path = self.dir.path().join("nats-server.conf");
        std::fs::write(&path, config.join("\n")).expect("write test config");
        path
    }

    /// Starts the process and waits until it serves clients; false if it exited because the port was taken.
    fn spawn(&mut self) -> bool {
        let log = File::options().create(true).append(true).open(self.log_path()).expect("open server log");
        let mut cmd = Command::new(nats_server_binary());
        if let Flavour::Shipped = self.flavour {
            cmd.arg("-c").arg(self.write_config());
        }
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn nats-server");
        let ready_line = format!("Listening for client connections on 127.0.0.1:{}", self.port);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("poll nats-server") {
                let log = self.log();
                if log.contains("address already in use") {
                    return false;
                }
                panic!("nats-server exited during start ({status}); log:\n{log}");
            }
            // Ready = it says so and the port accepts (JetStream starts before the listener).
            if self.log().contains(&ready_line) && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nats-server not ready within {START_DEADLINE:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server with SIGTERM (JetStream flushes its store), SIGKILL after a deadline.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet (try_wait above saw it
        // running), so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the server and starts it again on the same port and JetStream store.
    fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "port {} was taken while the server restarted", self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// Options for tests that need redelivery to come quickly.
fn short_ack_wait() -> NatsOptions {
    NatsOptions { ack_wait: Duration::from_secs(1), ..NatsOptions::default() }
}

/// What the server holds for `queue`: (stored messages, delivered-but-unacked, redelivered, consumer count).
async fn queue_state(url: &str, queue: Queue) -> (u64, usize, usize, usize) {
    let client = async_nats::connect(url).await.expect("inspection client connects");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(queue.stream_name()).await.expect("stream exists");
    let info = stream.info().await.expect("stream info").clone();
    let consumer = stream.consumer_info(WORKER_CONSUMER).await.expect("consumer info");
    (info.state.messages, consumer.num_ack_pending, consumer.num_redelivered, info.state.consumer_count)
}

/// Takes and acks messages until none arrives for [`IDLE`]; returns their payloads in arrival order.
async fn drain(mut work: Box<dyn WorkStream>) -> Vec<Bytes> {
    let mut got = Vec::new();
    while let Some(delivery) = work.next_within(IDLE).await.expect("pull") {
        got.push(delivery.payload().clone());
        delivery.ack().await.expect("ack confirmed");
    }
    got
}

fn numbered(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("{prefix}-{i:03}"))).collect()
}

/// A payload of `len` bytes whose content depends on `seed` at every position.
fn pattern(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).rotate_left((i % 7) as u32))
        .collect::<Vec<u8>>()
        .into()
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_create_one_work_queue_stream_and_one_consumer_per_queue() {
    let server = NatsServer::start();
    let url = server.url();
    let connects: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { NatsBus::connect(&url).await }
            })
        })
        .collect();
    let mut buses = Vec::new();
    for c in connects {
        buses.push(c.await.unwrap().expect("every concurrent connect succeeds"));
    }
    assert_eq!(buses[0].max_payload(), SHIPPED_MAX_PAYLOAD, "max_payload of the shipped config");

    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for queue in Queue::ALL {
        let mut stream = js.get_stream(queue.stream_name()).await.unwrap();
        let info = stream.info().await.unwrap().clone();
        use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
        assert_eq!(info.config.retention, RetentionPolicy::WorkQueue, "{queue:?}");
        assert_eq!(info.config.storage, StorageType::File, "{queue:?}");
        assert_eq!(info.config.subjects, queue.stream_subjects().iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(info.config.max_message_size as usize, SHIPPED_MAX_PAYLOAD);
        assert_eq!(info.state.consumer_count, 1, "{queue:?} has exactly the shared consumer");
        let consumer = stream.consumer_info(WORKER_CONSUMER).await.unwrap();
        assert_eq!(consumer.config.ack_policy, async_nats::jetstream::consumer::AckPolicy::Explicit);
        assert_eq!(consumer.config.ack_wait, Duration::from_secs(30));
        assert_eq!(consumer.config.max_ack_pending, 1024);
        assert_eq!(consumer.config.durable_name.as_deref(), Some(WORKER_CONSUMER));
    }

    // A later process with another ack wait brings the shared consumer in line (and creates nothing new).
    let _bus = NatsBus::connect_with(&url, short_ack_wait()).await.unwrap();
    for queue in Queue::ALL {
        let mut stream = js.get_stream(queue.stream_name()).await.unwrap();
        assert_eq!(stream.consumer_info(WORKER_CONSUMER).await.unwrap().config.ack_wait, Duration::from_secs(1));
        assert_eq!(stream.info().await.unwrap().state.consumer_count, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_workers_get_distinct_messages_and_acks_remove_them() {
    let server = NatsServer::start();
    // Two connections, as two worker processes would have; the default 30 s ack wait rules out redeliveries.
    let bus1 = NatsBus::connect(&server.url()).await.unwrap();
    let bus2 = NatsBus::connect(&server.url()).await.unwrap();
    let mut w1 = bus1.work(Queue::Seal).await.unwrap();
    let mut w2 = bus2.work(Queue::Seal).await.unwrap();
    // Both workers have a pull request waiting before any work exists.
    assert!(w1.next_within(Duration::from_millis(200)).await.unwrap().is_none());
    assert!(w2.next_within(Duration::from_millis(200)).await.unwrap().is_none());

    let sent = numbered("seal", 32);
    for payload in &sent {
        bus1.publish_work(Queue::Seal, payload.clone()).await.unwrap();
    }
    assert_eq!(queue_state(&server.url(), Queue::Seal).await.0, 32, "published work is stored");
    assert_eq!(bus2.queue_depth(Queue::Seal).await.unwrap(), 32, "the depth any process sees");
    assert_eq!(bus2.queue_depth(Queue::Upload).await.unwrap(), 0);

    let (got1, got2) = tokio::join!(drain(w1), drain(w2));
    assert!(!got1.is_empty() && !got2.is_empty(), "both workers got work: {} and {}", got1.len(), got2.len());
    let set1: BTreeSet<_> = got1.iter().cloned().collect();
    let set2: BTreeSet<_> = got2.iter().cloned().collect();
    assert_eq!(set1.len(), got1.len(), "worker 1 got a message twice");
    assert_eq!(set2.len(), got2.len(), "worker 2 got a message twice");
    assert!(set1.is_disjoint(&set2), "a message went to both workers");
    let all: BTreeSet<_> = set1.union(&set2).cloned().collect();
    assert_eq!(all, sent.iter().cloned().collect::<BTreeSet<_>>());

    let (stored, unacked, redelivered, _) = queue_state(&server.url(), Queue::Seal).await;
    assert_eq!((stored, unacked, redelivered), (0, 0, 0), "acked work is removed from the work queue");
    assert_eq!(bus1.queue_depth(Queue::Seal).await.unwrap(), 0, "acked work leaves the depth");
    // The other queue is separate.
    assert_eq!(queue_state(&server.url(), Queue::Upload).await.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_dropped_unacked_is_redelivered_to_another_worker_after_ack_wait() {
    let server = NatsServer::start();
    let crashing = NatsBus::connect_with(&server.url(), short_ack_wait()).await.unwrap();
    let survivor = NatsBus::connect_with(&server.url(), short_ack_wait()).await.unwrap();
    crashing.publish_work(Queue::Upload, Bytes::from_static(b"sealed chunk")).await.unwrap();

    let mut w1 = crashing.work(Queue::Upload).await.unwrap();
    let taken = w1.next_within(ARRIVES).await.unwrap().expect("first delivery");
    assert_eq!(taken.payload().as_ref(), b"sealed chunk");
    // The worker process dies: delivery, stream and connection go away without an ack.
    drop(taken);
    drop(w1);
    drop(crashing);

    let mut w2 = survivor.work(Queue::Upload).await.unwrap();
    let again = w2.next_within(ARRIVES).await.unwrap().expect("redelivered after the 1 s ack wait");
    assert_eq!(again.payload().as_ref(), b"sealed chunk");
    again.ack().await.unwrap();
    let (stored, unacked, redelivered, _) = queue_state(&server.url(), Queue::Upload).await;
    assert_eq!((stored, unacked), (0, 0));
    assert!(redelivered <= 1, "the server counts at most one redelivery, got {redelivered}");
    assert!(w2.next_within(Duration::from_millis(1500)).await.unwrap().is_none(), "nothing left after the ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nak_redelivers_long_before_the_ack_wait() {
    let server = NatsServer::start();
    // 30 s ack wait: a redelivery within the few seconds below can only come from the nak.
    let bus = NatsBus::connect(&server.url()).await.unwrap();
    bus.publish_work(Queue::Seal, Bytes::from_static(b"retry me")).await.unwrap();
    let mut work = bus.work(Queue::Seal).await.unwrap();

    let first = work.next_within(ARRIVES).await.unwrap().expect("delivery");
    first.nak(Duration::ZERO).await.unwrap();
    let second = work.next_within(Duration::from_secs(5)).await.unwrap().expect("redelivered at once after nak");
    assert_eq!(second.payload().as_ref(), b"retry me");

    second.nak(Duration::from_millis(300)).await.unwrap();
    let third = work.next_within(Duration::from_secs(5)).await.unwrap().expect("redelivered after the nak delay");
    assert_eq!(third.payload().as_ref(), b"retry me");
    third.ack().await.unwrap();
    assert_eq!(queue_state(&server.url(), Queue::Seal).await.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_plain_subscriber_and_one_member_of_a_group() {
    let server = NatsServer::start();
    let publisher = NatsBus::connect(&server.url()).await.unwrap();
    let listener = NatsBus::connect(&server.url()).await.unwrap();
    let subject = "strata.test.chunk-stored";
    let mut plain1 = listener.subscribe(subject, None).await.unwrap();
    let mut plain2 = listener.subscribe(subject, None).await.unwrap();
    let mut member1 = listener.subscribe(subject, Some("uploaders")).await.unwrap();
    let mut member2 = listener.subscribe(subject, Some("uploaders")).await.unwrap();
    // No flush or sleep: subscribe returns once the server routes the subject to the new subscription.

    let sent = numbered("event", 40);
    for payload in &sent {
        publisher.publish_event(subject, payload.clone()).await.unwrap();
    }
    publisher.flush().await.unwrap();

    for plain in [&mut plain1, &mut plain2] {
        for expected in &sent {
            let got = tokio::time::timeout(ARRIVES, plain.next()).await.expect("event arrives").expect("open");
            assert_eq!(&got, expected, "plain subscribers get every event, in order");
        }
    }
    let mut group = Vec::new();
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while group.len() < sent.len() {
        let event = tokio::select! {
            e = member1.next() => e,
            e = member2.next() => e,
            _ = tokio::time::sleep_until(deadline) => panic!("group got {} of {} events", group.len(), sent.len()),
        };
        group.push(event.expect("subscription open"));
    }
    // Nothing beyond the 40: no event went to both members.
    for member in [&mut member1, &mut member2] {
        assert!(tokio::time::timeout(Duration::from_millis(300), member.next()).await.is_err(), "duplicate event");
    }
    group.sort();
    assert_eq!(group, sent);

    // An event nobody listens to is not an error.
    publisher.publish_event("strata.test.nobody", Bytes::from_static(b"x")).await.unwrap();
    publisher.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_above_max_payload_are_refused_and_the_limit_itself_works() {
    let server = NatsServer::start();
    let bus = NatsBus::connect(&server.url()).await.unwrap();
    let limit = bus.max_payload();
    assert_eq!(limit, SHIPPED_MAX_PAYLOAD);

    let too_big = Bytes::from(vec![7u8; limit + 1]);
    let err = bus.publish_work(Queue::Seal, too_big.clone()).await.unwrap_err();
    assert!(matches!(err, BusError::TooLarge { size, limit: l } if size == limit + 1 && l == limit), "{err}");
    assert!(err.is_permanent());
    let err = bus.publish_event("strata.test.big", too_big).await.unwrap_err();
    assert!(matches!(err, BusError::TooLarge { .. }), "{err}");
    assert_eq!(queue_state(&server.url(), Queue::Seal).await.0, 0, "nothing was stored");

    let exactly = pattern(1, limit);
    bus.publish_work(Queue::Seal, exactly.clone()).await.expect("a payload of exactly max_payload is accepted");
    let mut work = bus.work(Queue::Seal).await.unwrap();
    let delivery = work.next_within(ARRIVES).await.unwrap().expect("delivery");
    assert!(delivery.payload() == &exactly, "payload arrives intact");
    delivery.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_chunks_flow_with_the_shipped_config_in_small_pulls() {
    const CHUNK: usize = 4 * 1024 * 1024;
    const COUNT: u8 = 16;
    let server = NatsServer::start();
    let producer = NatsBus::connect(&server.url()).await.unwrap();
    for seed in 0..COUNT {
        producer.publish_work(Queue::Upload, pattern(seed, CHUNK)).await.expect("4 MiB publish");
    }
    // A 64 MiB backlog, then two workers on ONE connection: the case where large pulls overflow the server's
    // per-connection max_pending (64 MB) and it cuts the connection as a slow consumer.
    let workers = NatsBus::connect(&server.url()).await.unwrap();
    let mut w1 = workers.work(Queue::Upload).await.unwrap();

    // A worker busy with one chunk has only one small pull's worth delivered to it, not the whole backlog.
    let first = w1.next_within(ARRIVES).await.unwrap().expect("first chunk");
    let mut most_unacked = 0;
    for _ in 0..10 {
        most_unacked = most_unacked.max(queue_state(&server.url(), Queue::Upload).await.1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The default pull asks for 32 messages but at most 16 MiB: three or four of these.
    assert_eq!(NatsOptions::default().pull_max_bytes, 16 * 1024 * 1024);
    assert!(most_unacked <= 4, "{most_unacked} chunks delivered to one busy worker");
    let first_payload = first.payload().clone();
    first.ack().await.unwrap();

    let w2 = workers.work(Queue::Upload).await.unwrap();
    let (got1, got2) = tokio::join!(drain(w1), drain(w2));

    let mut seeds: Vec<u8> = Vec::new();
    for payload in std::iter::once(&first_payload).chain(&got1).chain(&got2) {
        assert_eq!(payload.len(), CHUNK);
        let seed = (0..COUNT).find(|s| pattern(*s, 64) == payload.slice(..64)).expect("known payload");
        assert!(payload == &pattern(seed, CHUNK), "payload {seed} arrives intact");
        seeds.push(seed);
    }
    seeds.sort();
    assert_eq!(seeds, (0..COUNT).collect::<Vec<_>>(), "every chunk exactly once");
    assert_eq!(queue_state(&server.url(), Queue::Upload).await.0, 0);
    let log = server.log();
    assert!(!log.contains("Slow Consumer"), "server reported a slow consumer:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_work_survives_a_server_restart() {
    let mut server = NatsServer::start();
    let bus = NatsBus::connect(&server.url()).await.unwrap();
    bus.publish_work(Queue::Seal, Bytes::from_static(b"durable")).await.unwrap();
    drop(bus);

    server.restart();
    let bus = NatsBus::connect(&server.url()).await.unwrap();
    let mut work = bus.work(Queue::Seal).await.unwrap();
    let delivery = work.next_within(ARRIVES).await.unwrap().expect("work is still there after the restart");
    assert_eq!(delivery.payload().as_ref(), b"durable");
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn connect_to_a_port_with_nothing_listening_fails_promptly_with_unreachable() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let err = NatsBus::connect(&url).await.unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        BusError::Unreachable { url: u, .. } => assert_eq!(u, &url),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(err.to_string().contains(&url), "the message names the url: {err}");
    assert!(!err.is_permanent(), "an unreachable bus may come back");
    // Bounded by the connect timeout (5 s), not by reconnect attempts.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[tokio::test]
async fn connect_to_a_server_without_jetstream_fails_with_a_setup_hint() {
    let server = NatsServer::start_flavour(Flavour::PlainCoreNats);
    let err = NatsBus::connect(&server.url()).await.unwrap_err();
    assert!(matches!(err, BusError::Setup(_)), "expected Setup, got {err:?}");
    assert!(err.to_string().contains("JetStream"), "{err}");
}

#[tokio::test]
async fn invalid_options_are_refused_before_connecting() {
    let options = NatsOptions { ack_wait: Duration::ZERO, ..NatsOptions::default() };
    // No server is needed: validation comes first.
    let err = NatsBus::connect_with("nats://127.0.0.1:1", options).await.unwrap_err();
    assert!(matches!(&err, BusError::Setup(m) if m.contains("ack_wait")), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_holds_a_long_task_past_the_ack_wait() {
    let server = NatsServer::start();
    let busy = NatsBus::connect_with(&server.url(), short_ack_wait()).await.unwrap();
    let idle = NatsBus::connect_with(&server.url(), short_ack_wait()).await.unwrap();
    busy.publish_work(Queue::Replicate, Bytes::from_static(b"copy a big backup")).await.unwrap();
    let mut w1 = busy.work(Queue::Replicate).await.unwrap();
    let taken = w1.next_within(ARRIVES).await.unwrap().expect("first delivery");
    let mut w2 = idle.work(Queue::Replicate).await.unwrap();
    // Three ack waits of work, telling the server every 300 ms: nobody else gets the task.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        taken.keep_alive().await.unwrap();
        assert!(w2.next_within(Duration::from_millis(300)).await.unwrap().is_none(), "redelivered while kept alive");
    }
    taken.ack().await.unwrap();
    let (stored, unacked, redelivered, _) = queue_state(&server.url(), Queue::Replicate).await;
    assert_eq!((stored, unacked, redelivered), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_published_twice_with_one_id_is_stored_once() {
    let server = NatsServer::start();
    let a = NatsBus::connect(&server.url()).await.unwrap();
    let b = NatsBus::connect(&server.url()).await.unwrap();
    a.publish_work_once(Queue::Replicate, "b.main.backup.L1", Bytes::from_static(b"task")).await.unwrap();
    b.publish_work_once(Queue::Replicate, "b.main.backup.L1", Bytes::from_static(b"task")).await.unwrap();
    b.publish_work_once(Queue::Replicate, "b.main.backup.L2", Bytes::from_static(b"other")).await.unwrap();
    let (stored, _, _, _) = queue_state(&server.url(), Queue::Replicate).await;
    assert_eq!(stored, 2, "the second publish of one id is a duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_stream_of_the_single_subject_layout_is_given_the_commit_subject_and_keeps_its_work() {
    let server = NatsServer::start();
    let client = async_nats::connect(&server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // The upload stream as an older Strata made it, holding a commit request.
    use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
    js.create_stream(Config {
        name: Queue::Upload.stream_name().to_string(),
        subjects: vec!["strata.work.upload".to_string()],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("strata.work.upload", Bytes::from_static(b"old commit")).await.unwrap().await.unwrap();

    let bus = NatsBus::connect(&server.url()).await.unwrap();
    let mut stream = js.get_stream(Queue::Upload.stream_name()).await.unwrap();
    let subjects = stream.info().await.unwrap().config.subjects.clone();
    assert_eq!(subjects, vec!["strata.work.upload.chunk", strata_bus::COMMIT_SUBJECT]);
    bus.publish_work(Queue::Upload, Bytes::from_static(b"chunk")).await.unwrap();
    bus.publish_commit(Bytes::from_static(b"new commit")).await.unwrap();
    let mut work = bus.work(Queue::Upload).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = work.next_within(ARRIVES).await.unwrap().expect("queued work");
        got.push((d.payload().clone(), d.commit_allowed()));
        d.ack().await.unwrap();
    }
    assert_eq!(
        got,
        vec![
            (Bytes::from_static(b"old commit"), true),
            (Bytes::from_static(b"chunk"), false),
            (Bytes::from_static(b"new commit"), true)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_messages_reach_one_worker_each_are_never_commits_and_are_not_stored() {
    let server = NatsServer::start();
    // A short ack wait: the commit at the end may be handed to a pull request the two dropped workers left
    // at the server, and then comes back only when its ack wait has passed.
    let bus1 = NatsBus::connect_with(&server.url(), short_ack_wait()).await.unwrap();
    let bus2 = NatsBus::connect_with(&server.url(), short_ack_wait()).await.unwrap();
    assert!(bus1.transient_may_be_lost(), "a NATS bus must tell producers to keep what they send");
    let w1 = bus1.work(Queue::Upload).await.unwrap();
    let w2 = bus2.work(Queue::Upload).await.unwrap();

    let sent = numbered("transient", 64);
    for payload in &sent {
        bus1.publish_transient(Queue::Upload, payload.clone()).await.unwrap();
    }
    bus1.flush().await.unwrap();
    assert_eq!(queue_state(&server.url(), Queue::Upload).await.0, 0, "transient messages are not stored in the stream");

    let collect = |mut work: Box<dyn WorkStream>| async move {
        let mut got = Vec::new();
        while let Some(d) = work.next_within(IDLE).await.expect("next") {
            assert!(!d.commit_allowed(), "a transient message was allowed to be a commit");
            got.push(d.payload().clone());
            d.ack().await.expect("an ack of a transient message is a no-op");
        }
        got
    };
    let (got1, got2) = tokio::join!(collect(w1), collect(w2));
    let set1: BTreeSet<_> = got1.iter().cloned().collect();
    let set2: BTreeSet<_> = got2.iter().cloned().collect();
    assert!(set1.is_disjoint(&set2), "a transient message went to both members of the group");
    let all: BTreeSet<_> = set1.union(&set2).cloned().collect();
    assert_eq!(all, sent.iter().cloned().collect::<BTreeSet<_>>(), "every transient message reached one worker");
    assert_eq!(got1.len() + got2.len(), sent.len());

    // A durable commit still arrives, and may be one.
    bus1.publish_commit(Bytes::from_static(b"commit")).await.unwrap();
    let mut w = bus2.work(Queue::Upload).await.unwrap();
    let d = w.next_within(ARRIVES).await.unwrap().expect("the commit arrives");
    assert!(d.commit_allowed());
    d.ack().await.unwrap();
}

/// Waits until `cond` holds, checking every 20 ms, and fails the test with `what` after `within`.
async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_messages_go_straight_to_connected_workers_once_each_and_back_to_nats_when_none_is_left() {
    let server = NatsServer::start();
    let producer = NatsBus::connect(&server.url()).await.unwrap();
    let (bus1, bus2) = (NatsBus::connect(&server.url()).await.unwrap(), NatsBus::connect(&server.url()).await.unwrap());
    let (w1, w2) = (bus1.work(Queue::Upload).await.unwrap(), bus2.work(Queue::Upload).await.unwrap());

    // The first transient message starts the producer's offers; both workers connect.
    let mut sent = vec![Bytes::from_static(b"first")];
    producer.publish_transient(Queue::Upload, sent[0].clone()).await.unwrap();
    wait_until("both workers connecting directly", ARRIVES, || producer.direct_connected(Queue::Upload) == 2).await;
    let before = producer.direct_sent(Queue::Upload);
    let direct = numbered("direct", 64);
    for payload in &direct {
        producer.publish_transient(Queue::Upload, payload.clone()).await.unwrap();
    }
    sent.extend(direct.iter().cloned());
    let (got1, got2) = tokio::join!(drain(w1), drain(w2));
    assert_eq!(producer.direct_sent(Queue::Upload) - before, 64, "every message went over a direct connection");
    assert!(!got1.is_empty() && !got2.is_empty(), "one worker got everything: {} and {}", got1.len(), got2.len());
    let mut all: Vec<Bytes> = got1.into_iter().chain(got2).collect();
    all.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(all, want, "every message reached exactly one worker");
    assert_eq!(queue_state(&server.url(), Queue::Upload).await.0, 0, "nothing was stored in the stream");

    // Both workers are gone: the producer sees it, and its messages take the NATS path to a new worker.
    wait_until("the producer noticing its workers left", ARRIVES, || producer.direct_connected(Queue::Upload) == 0)
        .await;
    let options = NatsOptions { direct_data: false, ..NatsOptions::default() };
    let nats_only = NatsBus::connect_with(&server.url(), options).await.unwrap();
    let w3 = nats_only.work(Queue::Upload).await.unwrap();
    let later = numbered("later", 16);
    let sent_direct = producer.direct_sent(Queue::Upload);
    for payload in &later {
        producer.publish_transient(Queue::Upload, payload.clone()).await.unwrap();
    }
    producer.flush().await.unwrap();
    let mut got3 = drain(w3).await;
    got3.sort();
    assert_eq!(got3, later, "with no direct worker, transient messages go through the server");
    assert_eq!(producer.direct_sent(Queue::Upload), sent_direct);

    // A bus with the direct path off offers nothing: its transient messages never go direct.
    let w4 = bus1.work(Queue::Seal).await.unwrap();
    nats_only.publish_transient(Queue::Seal, Bytes::from_static(b"via the server")).await.unwrap();
    nats_only.flush().await.unwrap();
    assert_eq!(drain(w4).await, vec![Bytes::from_static(b"via the server")]);
    assert_eq!(nats_only.direct_sent(Queue::Seal), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_producer_refuses_a_wrong_token_and_a_worker_refuses_an_oversized_message() {
    use std::io::Write;
    let server = NatsServer::start();
    let bus = NatsBus::connect(&server.url()).await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();

    // A fake producer: a worker that hears its offer connects and shows the offered token; the fake
    // then announces a message larger than the bus allows, and the worker drops the connection.
    let mut work = bus.work(Queue::Seal).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let offer = strata_bus::direct::Offer { addr: listener.local_addr().unwrap(), token: [0x5a; 32], sealed: false };
    client.publish(strata_bus::direct::offer_subject(Queue::Seal), offer.encode()).await.unwrap();
    client.flush().await.unwrap();
    let fake = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(ARRIVES)).unwrap();
        let mut hello = [0u8; 44];
        conn.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], strata_bus::direct::MAGIC);
        assert_eq!(&hello[8..40], &[0x5a; 32]);
        conn.write_all(&u32::MAX.to_be_bytes()).unwrap();
        conn.write_all(b"garbage").unwrap();
        // The worker closes the connection rather than reading 4 GiB.
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    });
    tokio::task::spawn_blocking(move || fake.join().unwrap()).await.unwrap();
    // The worker still takes work.
    bus.publish_transient(Queue::Seal, Bytes::from_static(b"after")).await.unwrap();
    let d = work.next_within(ARRIVES).await.unwrap().expect("the worker still works");
    assert_eq!(d.payload(), &Bytes::from_static(b"after"));

    // Someone who read no offer cannot take chunks: a wrong token is refused, and the producer goes on.
    let offers = client.subscribe(strata_bus::direct::offer_subject(Queue::Seal)).await.unwrap();
    let mut offers = offers;
    use futures::StreamExt;
    let real = loop {
        let m = tokio::time::timeout(ARRIVES, offers.next()).await.unwrap().unwrap();
        if let Some(o) = strata_bus::direct::Offer::decode(&m.payload) {
            if o.addr != offer.addr {
                break o;
            }
        }
    };
    let refused = tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(real.addr).unwrap();
        conn.set_read_timeout(Some(ARRIVES)).unwrap();
        let mut hello = strata_bus::direct::MAGIC.to_vec();
        hello.extend_from_slice(&[0u8; 32]);
        hello.extend_from_slice(&100u32.to_be_bytes());
        conn.write_all(&hello).unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        rest
    });
    assert!(refused.await.unwrap().is_empty(), "a connection with a wrong token got data");
    bus.publish_transient(Queue::Seal, Bytes::from_static(b"still")).await.unwrap();
    let d = work.next_within(ARRIVES).await.unwrap().expect("the producer still works");
    assert_eq!(d.payload(), &Bytes::from_static(b"still"));
}
