//! The WAN's delay: a TCP relay on the S3 host that holds every byte for half the round-trip time in
//! each direction before passing it on.
//!
//! # Why not netem
//! `tc netem` is the usual tool, but kernels built without `CONFIG_NET_SCH_NETEM` (this project's VMs:
//! `tc qdisc add ... netem` answers "Specified qdisc kind is unknown") have no qdisc that delays; `tbf`
//! (bandwidth) is there. So bandwidth stays in the kernel ([`crate::net`]) and the delay is added here.
//!
//! # What it emulates, and what not
//! Each request waits a full round trip before its answer's first byte arrives, and every byte of a
//! transfer arrives half a round trip later than it was sent, which is what bounds a client that waits
//! for answers (S3 requests, read-backs). The relay terminates TCP, so the client's own congestion window
//! does not see the delay; each direction buffers at most [`WINDOW_CHUNKS`] x [`CHUNK`] bytes (4 MiB),
//! about a bandwidth-delay product of 500 Mbit/s x 60 ms, so a single stream is not limited by a window
//! smaller than the real path's.
//!
//! It runs as threads started on the S3 host's thread, so it is in that namespace and cgroup.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes read at once from a socket.
pub const CHUNK: usize = 64 * 1024;
/// Chunks a direction holds in flight.
pub const WINDOW_CHUNKS: usize = 64;

/// A running relay; stops accepting on Drop (connections in progress end with their peers).
pub struct DelayRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl DelayRelay {
    /// Listens on `listen` and relays each connection to `upstream`, delaying each direction by
    /// `one_way`. Call it from the host's thread.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        one_way: Duration,
    ) -> Result<DelayRelay> {
        let listener = TcpListener::bind(listen)
            .with_context(|| format!("delay relay: cannot listen on {listen}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let accept = std::thread::Builder::new()
            .name("wan-relay".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            std::thread::spawn(move || {
                                if let Ok(server) = TcpStream::connect(upstream) {
                                    relay(client, server, one_way);
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })?;
        Ok(DelayRelay {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn relay(client: TcpStream, server: TcpStream, one_way: Duration) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    let up = std::thread::spawn(move || pump(client, server, one_way));
    pump(s2, c2, one_way);
    let _ = up.join();
}

/// Copies `from` to `to`, each chunk released `delay` after it was read; shuts down `to`'s write side at
/// the end of `from`.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(WINDOW_CHUNKS);
    let writer = std::thread::spawn(move || {
        for (due, data) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&data).is_err() {
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_through_the_relay_takes_twice_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        });
        let relay = DelayRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            upstream,
            Duration::from_millis(50),
        )
        .unwrap();
        let mut c = TcpStream::connect(relay.addr()).unwrap();
        let t = Instant::now();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(100), "{rtt:?}");
    }
}
