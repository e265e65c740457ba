//! The notifier against real HTTP receivers on loopback.

use super::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 endpoint that records the JSON bodies POSTed to it and answers with a settable status.
struct Receiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::serve(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    async fn start_on(addr: SocketAddr) -> Receiver {
        Receiver::serve(TcpListener::bind(addr).await.unwrap())
    }

    fn serve(listener: TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (b, s) = (bodies.clone(), status.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let (b, s) = (b.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = handle(conn, b, s).await;
                });
            }
        });
        Receiver { addr, bodies, status, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/strata", self.addr)
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request: reads the head and `Content-Length` bytes of body, records the body, answers, closes.
async fn handle(mut conn: TcpStream, bodies: Arc<Mutex<Vec<Value>>>, status: Arc<AtomicU16>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    assert!(head.starts_with("POST /hooks/strata HTTP/1.1\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("content-length");
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let code = status.load(Ordering::SeqCst);
    if code == 200 {
        bodies.lock().unwrap().push(serde_json::from_slice(&buf[head_end..head_end + len]).unwrap());
    }
    conn.write_all(format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").as_bytes()).await?;
    conn.shutdown().await
}

fn config(critical: Option<&Receiver>, warning: Option<&Receiver>, info: Option<&Receiver>) -> AlertsConfig {
    AlertsConfig {
        webhook_critical: critical.map(Receiver::url),
        webhook_warning: warning.map(Receiver::url),
        webhook_info: info.map(Receiver::url),
        resend_secs: 3600,
        ..AlertsConfig::default()
    }
}

fn alert(key: &str, tier: Tier) -> Alert {
    Alert {
        key: key.into(),
        tier,
        stanza: Some("main".into()),
        summary: format!("{key} is wrong"),
        details: "last archived 000000010000000000000003, 2 h ago".into(),
    }
}

fn outcomes(d: &[Delivery]) -> Vec<(String, Status, DeliveryOutcome)> {
    d.iter().map(|d| (d.key.clone(), d.status, d.outcome.clone())).collect()
}

fn sent(key: &str, status: Status) -> (String, Status, DeliveryOutcome) {
    (key.to_string(), status, DeliveryOutcome::Sent)
}

#[tokio::test]
async fn fires_once_then_resends_after_resend_secs() {
    let hook = Receiver::start().await;
    let mut n = Notifier::new(&config(Some(&hook), None, None), None).unwrap();
    let a = alert("archive-failing/main", Tier::Critical);
    let d = n.update(vec![a.clone()], 1000).await;
    assert_eq!(outcomes(&d), vec![sent("archive-failing/main", Status::Firing)]);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1);
    let b = &bodies[0];
    assert_eq!(
        b["text"],
        "[CRITICAL] main: archive-failing/main is wrong\nlast archived 000000010000000000000003, 2 h ago"
    );
    assert_eq!(b["strata"]["status"], "firing");
    assert_eq!(b["strata"]["key"], "archive-failing/main");
    assert_eq!(b["strata"]["tier"], "critical");
    assert_eq!(b["strata"]["stanza"], "main");
    assert_eq!(b["strata"]["summary"], "archive-failing/main is wrong");
    assert_eq!(b["strata"]["details"], a.details.as_str());
    assert_eq!(b["strata"]["since"], 1000);
    assert!(!b["strata"]["host"].as_str().unwrap().is_empty());
    assert_eq!(n.firing(), vec![a.clone()]);

    // Still firing, within resend_secs: nothing, however often asked (and the list repeating a key
    // changes nothing).
    for t in [1001, 2000, 4599] {
        assert!(n.update(vec![a.clone(), a.clone()], t).await.is_empty(), "at {t}");
    }
    assert_eq!(hook.bodies().len(), 1);
    // resend_secs after the delivery: a reminder, then quiet again.
    let d = n.update(vec![a.clone()], 4600).await;
    assert_eq!(outcomes(&d), vec![sent("archive-failing/main", Status::Firing)]);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 2);
    assert!(bodies[1]["text"].as_str().unwrap().contains("(firing since 1970-01-01 00:16:40 UTC)"), "{}", bodies[1]);
    assert_eq!(bodies[1]["strata"]["since"], 1000);
    assert!(n.update(vec![a.clone()], 8199).await.is_empty());
    assert_eq!(n.update(vec![a], 8200).await.len(), 1);
    assert_eq!(hook.bodies().len(), 3);
}

#[tokio::test]
async fn resolved_once_then_can_fire_again() {
    let hook = Receiver::start().await;
    let mut n = Notifier::new(&config(None, Some(&hook), None), None).unwrap();
    let a = alert("repo-full/primary", Tier::Warning);
    let b = alert("archive-lag/main", Tier::Warning);
    n.update(vec![a.clone(), b.clone()], 1000).await;
    assert_eq!(hook.bodies().len(), 2);
    let d = n.update(vec![b.clone()], 1010).await;
    assert_eq!(outcomes(&d), vec![sent("repo-full/primary", Status::Resolved)]);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[2]["strata"]["status"], "resolved");
    assert_eq!(bodies[2]["strata"]["key"], "repo-full/primary");
    assert_eq!(bodies[2]["strata"]["since"], 1000);
    assert!(bodies[2]["text"].as_str().unwrap().starts_with("[RESOLVED] main: repo-full/primary is wrong"), "{}", bodies[2]);
    assert_eq!(n.firing(), vec![b.clone()]);
    // Resolved once only.
    assert!(n.update(vec![b.clone()], 1020).await.is_empty());
    assert_eq!(hook.bodies().len(), 3);
    // Forgotten: firing again is a new incident, sent at once.
    let d = n.update(vec![a.clone(), b], 1030).await;
    assert_eq!(outcomes(&d), vec![sent("repo-full/primary", Status::Firing)]);
    let bodies = hook.bodies();
    assert_eq!(bodies[3]["strata"]["status"], "firing");
    assert_eq!(bodies[3]["strata"]["since"], 1030);
}

#[tokio::test]
async fn receiver_down_is_retried_at_the_next_update() {
    // A port nobody listens on (yet).
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let cfg = AlertsConfig { webhook_critical: Some(format!("http://{addr}/hooks/strata")), ..AlertsConfig::default() };
    let mut n = Notifier::new(&cfg, None).unwrap();
    let a = alert("backup-late/main", Tier::Critical);
    for t in [1000, 1060] {
        let d = n.update(vec![a.clone()], t).await;
        assert_eq!(d.len(), 1);
        match &d[0].outcome {
            DeliveryOutcome::Failed(reason) => assert!(reason.to_lowercase().contains("connect"), "{reason}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }
    let hook = Receiver::start_on(addr).await;
    let d = n.update(vec![a.clone()], 1120).await;
    assert_eq!(outcomes(&d), vec![sent("backup-late/main", Status::Firing)]);
    // The first successful delivery counts: not again before it plus resend_secs, and since stays the
    // first round the condition was seen.
    assert!(n.update(vec![a.clone()], 1180).await.is_empty());
    assert_eq!(hook.bodies().len(), 1);
    assert_eq!(hook.bodies()[0]["strata"]["since"], 1000);

    // A resolved message that cannot be delivered stays owed.
    hook.answer(503);
    let d = n.update(vec![], 1200).await;
    assert_eq!(d.len(), 1);
    assert!(matches!(&d[0].outcome, DeliveryOutcome::Failed(r) if r.contains("503")), "{d:?}");
    assert!(n.firing().is_empty());
    hook.answer(200);
    let d = n.update(vec![], 1260).await;
    assert_eq!(outcomes(&d), vec![sent("backup-late/main", Status::Resolved)]);
    assert!(n.update(vec![], 1320).await.is_empty());
    assert_eq!(hook.bodies().len(), 2);
}

#[tokio::test]
async fn back_before_its_resolution_was_delivered_continues_the_incident() {
    let hook = Receiver::start().await;
    let mut n = Notifier::new(&config(Some(&hook), None, None), None).unwrap();
    let a = alert("archive-failing/main", Tier::Critical);
    n.update(vec![a.clone()], 1000).await;
    hook.answer(500);
    assert_eq!(n.update(vec![], 1060).await.len(), 1, "resolved attempted");
    hook.answer(200);
    // The receiver never heard it ended: no new firing message, no resolved one.
    assert!(n.update(vec![a.clone()], 1120).await.is_empty());
    assert_eq!(hook.bodies().len(), 1);
    assert_eq!(n.firing(), vec![a]);
}

#[tokio::test]
async fn never_delivered_is_not_resolved() {
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let cfg = AlertsConfig { webhook_warning: Some(format!("http://{addr}/hooks/strata")), ..AlertsConfig::default() };
    let mut n = Notifier::new(&cfg, None).unwrap();
    let a = alert("backup-slower/main", Tier::Warning);
    assert_eq!(n.update(vec![a], 1000).await.len(), 1);
    let _hook = Receiver::start_on(addr).await;
    assert!(n.update(vec![], 1060).await.is_empty());
    assert!(_hook.bodies().is_empty());
}

#[tokio::test]
async fn tiers_go_to_their_own_webhooks_and_tier_changes_are_sent() {
    let critical = Receiver::start().await;
    let warning = Receiver::start().await;
    let mut n = Notifier::new(&config(Some(&critical), Some(&warning), None), None).unwrap();
    let mut a = alert("repo-full/primary", Tier::Warning);
    n.update(vec![a.clone(), alert("backup-late/main", Tier::Critical)], 1000).await;
    assert_eq!(warning.bodies().len(), 1);
    assert_eq!(critical.bodies().len(), 1);
    assert_eq!(critical.bodies()[0]["strata"]["key"], "backup-late/main");
    // The same condition, now critical: the critical receivers hear of it at once.
    a.tier = Tier::Critical;
    let d = n.update(vec![a.clone(), alert("backup-late/main", Tier::Critical)], 1060).await;
    assert_eq!(outcomes(&d), vec![sent("repo-full/primary", Status::Firing)]);
    assert_eq!(critical.bodies().len(), 2);
    assert_eq!(critical.bodies()[1]["strata"]["tier"], "critical");
    assert_eq!(warning.bodies().len(), 1);
}

#[tokio::test]
async fn without_webhook_alerts_are_logged_only() {
    let mut n = Notifier::new(&AlertsConfig::default(), None).unwrap();
    let a = alert("archive-failing/main", Tier::Critical);
    let d = n.update(vec![a.clone()], 1000).await;
    assert_eq!(outcomes(&d), vec![("archive-failing/main".into(), Status::Firing, DeliveryOutcome::Logged)]);
    assert!(n.update(vec![a.clone()], 1001).await.is_empty());
    // A reminder in the log after resend_secs (default 3600).
    assert_eq!(n.update(vec![a], 4600).await.len(), 1);
    assert!(n.update(vec![], 4601).await.is_empty(), "nobody to tell it ended but the log");
    assert!(n.firing().is_empty());
    let d = n.event(alert("backup-ok/main", Tier::Info)).await;
    assert_eq!(d.outcome, DeliveryOutcome::Logged);
}

#[tokio::test]
async fn info_events_are_sent_once_each_and_retried() {
    let info = Receiver::start().await;
    let critical = Receiver::start().await;
    let mut n = Notifier::new(&config(Some(&critical), None, Some(&info)), None).unwrap();
    let mut ok = alert("backup-succeeded/main", Tier::Info);
    ok.summary = "full backup 20261202-173000F committed".into();
    let d = n.event(ok.clone()).await;
    assert_eq!(d.outcome, DeliveryOutcome::Sent);
    assert_eq!(d.tier, Tier::Info);
    let bodies = info.bodies();
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0]["text"].as_str().unwrap().starts_with("[INFO] main: full backup 20261202-173000F committed"));
    assert_eq!(bodies[0]["strata"]["tier"], "info");
    // Events are not conditions: nothing firing, nothing resolved or resent later.
    assert!(n.firing().is_empty());
    assert!(n.update(vec![], 1000).await.is_empty());
    assert!(n.update(vec![], 1_000_000).await.is_empty());
    // Two identical events are two events.
    n.event(ok.clone()).await;
    assert_eq!(info.bodies().len(), 2);
    // Undelivered: retried by the next update, once.
    info.answer(500);
    assert!(matches!(n.event(ok.clone()).await.outcome, DeliveryOutcome::Failed(_)));
    info.answer(200);
    let d = n.update(vec![], 2000).await;
    assert_eq!(outcomes(&d), vec![sent("backup-succeeded/main", Status::Firing)]);
    assert!(n.update(vec![], 2001).await.is_empty());
    assert_eq!(info.bodies().len(), 3);
    assert!(critical.bodies().is_empty());
}

#[tokio::test]
async fn state_file_carries_deliveries_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/alerts.json");
    let hook = Receiver::start().await;
    let info_addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut cfg = config(Some(&hook), None, None);
    cfg.webhook_info = Some(format!("http://{info_addr}/hooks/strata"));
    let a = alert("archive-failing/main", Tier::Critical);
    {
        let mut n = Notifier::new(&cfg, Some(state.clone())).unwrap();
        n.update(vec![a.clone()], 1000).await;
        // An event whose webhook is down is owed after the restart too.
        assert!(matches!(n.event(alert("expire-ok/main", Tier::Info)).await.outcome, DeliveryOutcome::Failed(_)));
    }
    assert!(state.is_file());
    let info = Receiver::start_on(info_addr).await;
    let mut n = Notifier::new(&cfg, Some(state.clone())).unwrap();
    assert_eq!(n.firing(), vec![a.clone()]);
    let d = n.update(vec![a.clone()], 1100).await;
    assert_eq!(outcomes(&d), vec![sent("expire-ok/main", Status::Firing)], "only the owed event");
    assert_eq!(hook.bodies().len(), 1, "not resent after the restart");
    assert_eq!(info.bodies().len(), 1);
    drop(n);
    let mut n = Notifier::new(&cfg, Some(state.clone())).unwrap();
    let d = n.update(vec![], 1200).await;
    assert_eq!(outcomes(&d), vec![sent("archive-failing/main", Status::Resolved)]);
    assert_eq!(hook.bodies().len(), 2);

    std::fs::write(&state, b"{not json").unwrap();
    let e = Notifier::new(&cfg, Some(state.clone())).err().expect("unreadable state refused");
    assert!(e.to_string().starts_with(&format!("alert state file {}", state.display())), "{e}");
}

#[tokio::test]
async fn silent_receiver_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and never answers.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    let cfg = AlertsConfig { webhook_critical: Some(format!("http://{addr}/x")), ..AlertsConfig::default() };
    let mut n = Notifier::new(&cfg, None).unwrap();
    let started = std::time::Instant::now();
    let d = n.update(vec![alert("k", Tier::Critical)], 1000).await;
    assert!(matches!(&d[0].outcome, DeliveryOutcome::Failed(r) if r.contains("no answer within 10 s")), "{d:?}");
    assert!(started.elapsed() >= POST_TIMEOUT && started.elapsed() < POST_TIMEOUT * 2);
    holder.abort();
}

#[test]
fn bad_webhooks_are_refused() {
    for url in ["ftp://example.com/x", "http://", "not a url"] {
        let cfg = AlertsConfig { webhook_warning: Some(url.into()), ..AlertsConfig::default() };
        let e = Notifier::new(&cfg, None).err().unwrap_or_else(|| panic!("{url} accepted"));
        assert!(e.to_string().starts_with("alerts.webhook_warning: "), "{e}");
    }
    let cfg = AlertsConfig { webhook_critical: Some("https://hooks.example.com/services/T0/B0/x".into()), ..AlertsConfig::default() };
    Notifier::new(&cfg, None).expect("https webhook");
}
