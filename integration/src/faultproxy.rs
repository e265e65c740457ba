//! A fault-injecting HTTP/1.1 proxy on loopback, in front of an S3 server (moto), for tests of what Strata
//! does when S3 misbehaves.
//!
//! # What it does
//! Each client connection carries one request: the proxy reads its head and its body (`Content-Length`, or
//! `Transfer-Encoding: chunked`, read to its last chunk and passed on as it came), then either answers it
//! itself with an S3 error (500 `InternalError` or 503 `SlowDown`, with S3's XML error body) or forwards
//! it to the upstream server and relays the answer. Every answer carries `Connection: close`, so the
//! client opens a new connection for its next request; the proxy never has to frame a stream of
//! keep-alive responses. The request is forwarded byte for byte except for a `Connection: close` header,
//! which S3 signatures do not cover.
//!
//! # Which requests fail
//! A deterministic sequence from a seed (xorshift), failing about `percent` of requests, so a failing
//! run can be replayed. A request is never failed twice in a row: when its retry comes (same method,
//! path and Range), it is forwarded. That keeps the test about retries and not about luck: with five
//! attempts per request, one in 3,000 requests would otherwise fail for good at 20%.
//!
//! # Down
//! [`FaultProxy::set_down`] closes the listener, so connections are refused as with a server that is
//! not there, and connections in progress are dropped; `set_down(false)` listens again on the same port.
//!
//! # Lifetime
//! One accept thread and one thread per connection, all watching a shutdown flag; dropping the proxy sets
//! it and joins the accept thread. No process is started or killed.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::ports::{reserve_port, Port};

/// Longest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests answered with an injected 500.
    pub internal_errors: u64,
    /// Requests answered with an injected 503.
    pub slow_downs: u64,
    /// Requests passed to the upstream server (whatever it answered).
    pub forwarded: u64,
    /// Requests the proxy could not handle (malformed, upstream gone); the connection was closed.
    pub broken: u64,
}

impl FaultCounts {
    pub fn injected(&self) -> u64 {
        self.internal_errors + self.slow_downs
    }
}

struct Shared {
    upstream_port: u16,
    percent: AtomicU32,
    rng: Mutex<u64>,
    /// Requests (method, path, range) whose last attempt was failed on purpose.
    failed_last: Mutex<HashSet<String>>,
    down: AtomicBool,
    shutdown: AtomicBool,
    internal_errors: AtomicU64,
    slow_downs: AtomicU64,
    forwarded: AtomicU64,
    broken: AtomicU64,
}

/// A proxy owned by one test (see the module docs).
pub struct FaultProxy {
    port: Port,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a reserved loopback port and forwards to `127.0.0.1:<upstream_port>`, failing about
    /// `percent` of requests (0 to 100) in the order `seed` gives.
    pub fn start(upstream_port: u16, percent: u32, seed: u64) -> FaultProxy {
        assert!(percent <= 100, "a share of requests is 0 to 100 percent, not {percent}");
        let port = reserve_port();
        let shared = Arc::new(Shared {
            upstream_port,
            percent: AtomicU32::new(percent),
            rng: Mutex::new(seed | 1),
            failed_last: Mutex::new(HashSet::new()),
            down: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            internal_errors: AtomicU64::new(0),
            slow_downs: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            broken: AtomicU64::new(0),
        });
        let listener = bind(port.get());
        let acceptor = {
            let shared = shared.clone();
            let port = port.get();
            thread::Builder::new()
                .name(format!("faultproxy-{port}"))
                .spawn(move || accept_loop(listener, port, shared))
                .expect("spawn the proxy's accept thread")
        };
        FaultProxy { port, shared, acceptor: Some(acceptor) }
    }

    /// `http://127.0.0.1:<port>`, to use as the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port.get())
    }

    pub fn port(&self) -> u16 {
        self.port.get()
    }

    /// Changes the share of requests that fail from now on.
    pub fn set_percent(&self, percent: u32) {
        assert!(percent <= 100);
        self.shared.percent.store(percent, Ordering::SeqCst);
    }

    /// Down: connections are refused (the listener is closed within a few milliseconds, and connections
    /// in progress are dropped). Up: listening again on the same port.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        // Wait until the accept thread has acted on it, so the caller can rely on the new state.
        for _ in 0..500 {
            let refused = TcpStream::connect(("127.0.0.1", self.port.get())).is_err();
            if refused == down {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("the fault proxy on port {} did not go {} within 5 s", self.port.get(), if down { "down" } else { "up" });
    }

    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            internal_errors: self.shared.internal_errors.load(Ordering::SeqCst),
            slow_downs: self.shared.slow_downs.load(Ordering::SeqCst),
            forwarded: self.shared.forwarded.load(Ordering::SeqCst),
            broken: self.shared.broken.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn bind(port: u16) -> TcpListener {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("fault proxy cannot listen on 127.0.0.1:{port}: {e}"));
    listener.set_nonblocking(true).expect("non-blocking listener");
    listener
}

fn accept_loop(listener: TcpListener, port: u16, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    while !shared.shutdown.load(Ordering::SeqCst) {
        let down = shared.down.load(Ordering::SeqCst);
        if down && listener.is_some() {
            listener = None;
        } else if !down && listener.is_none() {
            listener = Some(bind(port));
        }
        let Some(l) = &listener else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        match l.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let _ = thread::Builder::new().name("faultproxy-conn".into()).spawn(move || {
                    if handle(&stream, &shared).is_err() {
                        shared.broken.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = stream.shutdown(Shutdown::Both);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(2)),
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A request as read from the client: its head (request line and headers, without the final blank line)
/// and its body bytes as they came (chunked framing included).
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn handle(stream: &TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(req) = read_request(&mut reader)? else { return Ok(()) };
    if shared.shutdown.load(Ordering::SeqCst) || shared.down.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("proxy going down"));
    }
    let key = format!("{} {} {}", req.method, req.target, req.header("range").unwrap_or(""));
    if let Some(status) = decide(shared, &key) {
        let mut out = stream;
        return out.write_all(&error_response(status, &req));
    }
    let mut upstream = TcpStream::connect(("127.0.0.1", shared.upstream_port))?;
    upstream.set_read_timeout(Some(IO_TIMEOUT))?;
    upstream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        if !k.eq_ignore_ascii_case("connection") {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    upstream.write_all(head.as_bytes())?;
    upstream.write_all(&req.body)?;
    upstream.flush()?;
    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    // The upstream closes after its answer (we asked it to): relay everything, with our own Connection
    // header so the client does not reuse this connection either.
    let mut up = BufReader::new(upstream);
    let mut response_head = Vec::new();
    loop {
        let mut line = Vec::new();
        if up.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::Error::other("upstream closed before its answer's head ended"));
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        if !text.to_ascii_lowercase().starts_with("connection:") {
            response_head.extend_from_slice(&line);
        }
        if response_head.len() > MAX_HEAD {
            return Err(std::io::Error::other("upstream answer head too long"));
        }
    }
    response_head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut out = stream;
    out.write_all(&response_head)?;
    std::io::copy(&mut up, &mut out)?;
    out.flush()
}

/// Whether to fail this request, and with which status.
fn decide(shared: &Shared, key: &str) -> Option<u16> {
    let mut failed_last = shared.failed_last.lock().unwrap();
    if failed_last.remove(key) {
        return None;
    }
    let r = {
        let mut x = shared.rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    };
    if (r % 100) as u32 >= shared.percent.load(Ordering::SeqCst) {
        return None;
    }
    failed_last.insert(key.to_string());
    if (r >> 32) & 1 == 0 {
        shared.internal_errors.fetch_add(1, Ordering::SeqCst);
        Some(500)
    } else {
        shared.slow_downs.fetch_add(1, Ordering::SeqCst);
        Some(503)
    }
}

fn error_response(status: u16, req: &Request) -> Vec<u8> {
    let (reason, code, message) = match status {
        500 => ("Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
        _ => ("Slow Down", "SlowDown", "Please reduce your request rate."),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <Resource>{}</Resource><RequestId>strata-faultproxy</RequestId></Error>",
        req.target.replace('&', "&amp;").replace('<', "&lt;")
    );
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: strata-faultproxy\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads one request; `None` when the client closed the connection before sending one.
fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(std::io::Error::other(format!("not an HTTP request line: {line:?}")));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    let mut head_len = line.len();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Err(std::io::Error::other("client closed the connection inside a request head"));
        }
        head_len += h.len();
        if head_len > MAX_HEAD {
            return Err(std::io::Error::other("request head too long"));
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').ok_or_else(|| std::io::Error::other(format!("malformed header {h:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request { method, target, headers, body: Vec::new() };
    if req.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        // The client waits for this before sending the body.
        reader.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        req.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("expect"));
    }
    if req.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        req.body = read_chunked(reader)?;
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().map_err(|_| std::io::Error::other(format!("bad Content-Length {len:?}")))?;
        req.body = vec![0; len];
        reader.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

/// A chunked body, framing included (it is forwarded as it came), up to and including its trailer.
fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            return Err(std::io::Error::other("client closed the connection inside a chunked body"));
        }
        out.extend_from_slice(size_line.as_bytes());
        let size_hex = size_line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| std::io::Error::other(format!("bad chunk size line {size_line:?}")))?;
        if size == 0 {
            // Trailer lines, then the blank line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t)? == 0 {
                    return Err(std::io::Error::other("client closed the connection inside a chunked trailer"));
                }
                out.extend_from_slice(t.as_bytes());
                if t == "\r\n" || t == "\n" {
                    return Ok(out);
                }
            }
        }
        let start = out.len();
        out.resize(start + size + 2, 0);
        reader.read_exact(&mut out[start..])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-request-per-connection upstream that answers 200 with the request's body length.
    fn upstream() -> (u16, JoinHandle<()>) {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let t = thread::spawn(move || {
            for s in l.incoming().take(20) {
                let s = s.unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let req = read_request(&mut r).unwrap().unwrap();
                let body = format!("{} {}", req.method, req.body.len());
                let mut w = s;
                write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
            }
        });
        (port, t)
    }

    fn request(port: u16, text: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(text.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn forwards_fails_and_goes_down() {
        let (up, _t) = upstream();
        let proxy = FaultProxy::start(up, 0, 7);
        let out = request(proxy.port(), "PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("PUT 5") && out.contains("Connection: close"), "{out}");
        let out = request(proxy.port(), "PUT /b/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        assert!(out.ends_with("PUT 13"), "the chunked body was not passed on as it came: {out}");
        proxy.set_percent(100);
        let out = request(proxy.port(), "GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.contains(" 500 ") || out.contains(" 503 "), "{out}");
        assert!(out.contains("<Code>InternalError</Code>") || out.contains("<Code>SlowDown</Code>"), "{out}");
        // Its retry goes through, even at 100%.
        let out = request(proxy.port(), "GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let c = proxy.counts();
        assert_eq!((c.injected(), c.forwarded), (1, 3), "{c:?}");
        proxy.set_down(true);
        assert!(TcpStream::connect(("127.0.0.1", proxy.port())).is_err());
        proxy.set_down(false);
        proxy.set_percent(0);
        let out = request(proxy.port(), "GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}
