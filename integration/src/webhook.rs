//! A webhook receiver on loopback: records the JSON bodies POSTed to it, for tests of alert delivery.
//!
//! # What it does
//! Each connection carries one request: the receiver reads its head and `Content-Length` bytes of body,
//! keeps the body when it is JSON and the answer is a success, and answers with the status the test set
//! ([`WebhookReceiver::answer_with`], 200 by default) and `Connection: close`, so it never frames a stream
//! of keep-alive requests. A body that is not JSON, or a request without `Content-Length`, is answered
//! 400 and recorded in [`WebhookReceiver::rejected`], so a test sees a sender that speaks it wrong.
//!
//! # Lifetime
//! One accept thread and one thread per connection on a reserved port ([`crate::ports`]); dropping the
//! receiver sets a shutdown flag and joins the accept thread. No process is started or killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::ports::{reserve_port, Port};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Shared {
    bodies: Mutex<Vec<serde_json::Value>>,
    rejected: Mutex<Vec<String>>,
    status: AtomicU16,
    shutdown: AtomicBool,
}

/// A receiver owned by one test (see the module docs).
pub struct WebhookReceiver {
    port: Port,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl WebhookReceiver {
    /// Listens on a reserved loopback port and answers 200.
    pub fn start() -> WebhookReceiver {
        let port = reserve_port();
        let shared = Arc::new(Shared { status: AtomicU16::new(200), ..Shared::default() });
        let listener = TcpListener::bind(("127.0.0.1", port.get()))
            .unwrap_or_else(|e| panic!("webhook receiver cannot listen on 127.0.0.1:{}: {e}", port.get()));
        listener.set_nonblocking(true).expect("non-blocking listener");
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("webhook-{}", port.get()))
                .spawn(move || accept_loop(listener, shared))
                .expect("spawn the receiver's accept thread")
        };
        WebhookReceiver { port, shared, acceptor: Some(acceptor) }
    }

    /// `http://127.0.0.1:<port>/hooks/strata`, for `[alerts] webhook_*`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/strata", self.port.get())
    }

    /// The JSON bodies accepted so far, in the order they arrived.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.shared.bodies.lock().unwrap().clone()
    }

    /// Requests answered 400 because they were not a JSON POST with a length, described.
    pub fn rejected(&self) -> Vec<String> {
        self.shared.rejected.lock().unwrap().clone()
    }

    /// From now on, answer with `status` (e.g. 500 to play a receiver that is failing); a body is only
    /// recorded when the answer is 2xx, as a sender may only count those as delivered.
    pub fn answer_with(&self, status: u16) {
        assert!((100..600).contains(&status), "{status} is not an HTTP status");
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Waits until a body satisfies `pred` and returns it; panics with every body received when none
    /// has after `timeout`.
    pub fn wait_for(&self, pred: impl Fn(&serde_json::Value) -> bool, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(b) = self.bodies().into_iter().find(|b| pred(b)) {
                return b;
            }
            if Instant::now() >= deadline {
                let all: Vec<String> = self.bodies().iter().map(|b| b.to_string()).collect();
                panic!(
                    "no webhook body matched within {timeout:?}; received {}:\n{}\nrejected: {:?}",
                    all.len(),
                    all.join("\n"),
                    self.rejected()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let _ = thread::Builder::new().name("webhook-conn".into()).spawn(move || {
                    let _ = handle(&stream, &shared);
                    let _ = stream.shutdown(Shutdown::Both);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(2)),
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn handle(stream: &TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too long"));
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let request_line = head.lines().next().unwrap_or("").to_string();
    let length = head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
    });
    let reject = |why: String| -> std::io::Result<()> {
        shared.rejected.lock().unwrap().push(format!("{request_line}: {why}"));
        answer(stream, 400)
    };
    if !request_line.starts_with("POST ") {
        return reject("not a POST".into());
    }
    let Some(length) = length.filter(|l| *l <= MAX_BODY) else {
        return reject("no Content-Length (or too long)".into());
    };
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return reject(format!("body is not JSON ({e}): {}", String::from_utf8_lossy(&body))),
    };
    let status = shared.status.load(Ordering::SeqCst);
    if (200..300).contains(&status) {
        shared.bodies.lock().unwrap().push(json);
    }
    answer(stream, status)
}

fn answer(mut stream: &TcpStream, status: u16) -> std::io::Result<()> {
    let text = format!("{status}\n");
    write!(stream, "HTTP/1.1 {status} Strata-Test\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(url: &str, body: &str) -> String {
        let addr = url.trim_start_matches("http://").split('/').next().unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "POST /hooks/strata HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn records_json_bodies_and_answers_as_told() {
        let r = WebhookReceiver::start();
        assert!(post(&r.url(), r#"{"text": "one"}"#).starts_with("HTTP/1.1 200 "));
        r.answer_with(503);
        assert!(post(&r.url(), r#"{"text": "two"}"#).starts_with("HTTP/1.1 503 "));
        r.answer_with(200);
        assert!(post(&r.url(), "not json").starts_with("HTTP/1.1 400 "));
        assert_eq!(r.bodies(), vec![serde_json::json!({"text": "one"})]);
        assert_eq!(r.rejected().len(), 1);
        let b = r.wait_for(|b| b["text"] == "one", Duration::from_secs(1));
        assert_eq!(b["text"], "one");
        let missing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.wait_for(|b| b["text"] == "three", Duration::from_millis(200))
        }));
        assert!(missing.is_err());
    }
}
