//! Alert delivery: turns the conditions that are firing now into notifications, each sent once.
//!
//! # Overview
//! The verifier evaluates its rules every round and hands the list of firing conditions ([`Alert`], each
//! with a stable `key` such as `archive-failing/main`) to [`Notifier::update`]. This crate decides what
//! to say about them; it knows nothing about the rules. Every notification is logged (tracing, at error
//! for critical, warn for warning, info otherwise) and, when the tier has a webhook (`[alerts]
//! webhook_critical`, `webhook_warning`, `webhook_info`), POSTed to it as JSON that Slack accepts (a
//! `text` field) with the structured alert beside it (a `strata` field, see [`Notifier::payload`]).
//!
//! # Deduplication and resending
//! A key that starts firing is logged and sent once. While it keeps firing nothing more is sent until
//! `resend_secs` have passed since the last successful delivery; then it is sent again (a reminder that
//! names when it started). A key that is no longer in the list is logged as resolved, and one `resolved`
//! message goes to the same tier's webhook, unless the firing message never reached that webhook (the
//! receiver never heard of it, so there is nothing to resolve). Its state is then forgotten, so it can
//! fire again later. A key that comes back before its `resolved` message could be delivered continues the
//! old incident: the receiver never saw it end.
//!
//! Info-tier events ([`Notifier::event`]: a backup, an expire, a restore test that succeeded) are not
//! conditions: each is logged and sent once.
//!
//! # Retries and error handling
//! A POST that fails (connection refused, no answer within 10 s, a status other than 2xx) is logged at
//! warn and leaves the message undelivered: a firing alert counts as not sent, a resolved message or an
//! event stays queued, and the next [`Notifier::update`] tries again. Nothing here returns an error or
//! panics on delivery problems; the verifier's other work must not stop because a chat service is down.
//!
//! # Restarts
//! With a state file, what has been delivered (and what is still owed) survives a restart of the
//! verifier, so a restart neither repeats alerts delivered within `resend_secs` nor forgets to resolve
//! them. The file is JSON, replaced atomically after each round that changed it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_stamp::format_time;
use strata_config::AlertsConfig;

/// How long a webhook has to answer a POST.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// Undelivered events kept for retrying; the oldest are dropped beyond this (they were logged).
const MAX_QUEUED_EVENTS: usize = 1000;
const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Critical,
    Warning,
    Info,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Critical, Tier::Warning, Tier::Info];

    /// `critical`, `warning`, `info` (the `tier` label of `strata_alerts_firing`).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Critical => "critical",
            Tier::Warning => "warning",
            Tier::Info => "info",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition (or, for [`Notifier::event`], an event) worth telling someone about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable identity across rounds, e.g. `archive-failing/main`: the same key is the same incident.
    pub key: String,
    pub tier: Tier,
    pub stanza: Option<String>,
    /// One line: what is wrong.
    pub summary: String,
    /// What was measured, and what to look at.
    pub details: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// What happened to one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The webhook accepted it (2xx).
    Sent,
    /// The tier has no webhook: the log line was the notification.
    Logged,
    /// The POST failed; it is tried again at the next update.
    Failed(String),
}

/// One notification [`Notifier::update`] or [`Notifier::event`] attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub key: String,
    pub tier: Tier,
    pub status: Status,
    pub outcome: DeliveryOutcome,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("alerts.webhook_{tier}: '{url}' is not a usable URL: {reason}")]
    BadWebhook { tier: Tier, url: String, reason: String },
    #[error("alert state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("https webhooks: cannot load the system's root certificates: {0}")]
    Tls(String),
}

/// A condition that is firing, as remembered between rounds (and across restarts).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Incident {
    alert: Alert,
    /// When it started firing (Unix seconds).
    since: i64,
    /// When it was last delivered (to the webhook, or to the log when the tier has none).
    sent_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct QueuedEvent {
    alert: Alert,
    at: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    firing: BTreeMap<String, Incident>,
    /// Incidents that ended whose `resolved` message has not been delivered yet.
    resolved_unsent: BTreeMap<String, Incident>,
    events_unsent: Vec<QueuedEvent>,
}

/// Which notification a POST carried, to apply its result.
enum Job {
    Firing(String),
    Resolved(String),
    Event(usize),
}

pub struct Notifier {
    webhooks: [Option<Uri>; 3],
    resend_secs: i64,
    state_file: Option<PathBuf>,
    state: State,
    /// The state file's content as last written, to write it only when it changes.
    saved: Vec<u8>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    host: String,
}

impl Notifier {
    /// A notifier for the webhooks and `resend_secs` of `cfg`, remembering what it delivered in
    /// `state_file` if given (read now when it exists).
    pub fn new(cfg: &AlertsConfig, state_file: Option<PathBuf>) -> Result<Notifier, AlertsError> {
        let mut webhooks: [Option<Uri>; 3] = [None, None, None];
        for (tier, url) in
            [(Tier::Critical, &cfg.webhook_critical), (Tier::Warning, &cfg.webhook_warning), (Tier::Info, &cfg.webhook_info)]
        {
            if let Some(url) = url {
                let bad = |reason: String| AlertsError::BadWebhook { tier, url: url.clone(), reason };
                let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(e.to_string()))?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                    return Err(bad("expected http://host/... or https://host/...".into()));
                }
                webhooks[tier.index()] = Some(uri);
            }
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider());
        let builder = match https {
            Ok(b) => b,
            // Without roots only http:// webhooks work: fine unless one is https.
            Err(e) if webhooks.iter().flatten().any(|u| u.scheme_str() == Some("https")) => {
                return Err(AlertsError::Tls(e.to_string()))
            }
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| AlertsError::Tls(e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let (mut state, saved) = match &state_file {
            Some(path) => load_state(path)?,
            None => (State { version: STATE_VERSION, ..State::default() }, Vec::new()),
        };
        // Messages owed to a webhook the config no longer has are owed to nobody (they were logged).
        state.resolved_unsent.retain(|_, i| webhooks[i.alert.tier.index()].is_some());
        state.events_unsent.retain(|e| webhooks[e.alert.tier.index()].is_some());
        Ok(Notifier {
            webhooks,
            resend_secs: cfg.resend_secs as i64,
            state_file,
            state,
            saved,
            client,
            host: strata_stamp::host_name().to_string(),
        })
    }

    /// The conditions firing now (as of the last update), by key.
    pub fn firing(&self) -> Vec<Alert> {
        self.state.firing.values().map(|i| i.alert.clone()).collect()
    }

    /// Takes the conditions firing at `now` (Unix seconds): notifies what started, what is due for a
    /// reminder and what ended, and retries what could not be delivered before. Returns every
    /// notification it attempted.
    ///
    /// Cancel safety: dropping the future may lose the record of POSTs in flight, which are then sent
    /// again at the next update (a duplicate, never a loss).
    pub async fn update(&mut self, firing: Vec<Alert>, now: i64) -> Vec<Delivery> {
        let mut seen = BTreeSet::new();
        for alert in firing {
            if !seen.insert(alert.key.clone()) {
                continue;
            }
            match self.state.firing.get_mut(&alert.key) {
                Some(incident) => {
                    if incident.alert.tier != alert.tier {
                        // Escalated or eased: tell the other tier's receivers now.
                        log_firing(&alert, "changed tier");
                        incident.sent_at = None;
                    }
                    incident.alert = alert;
                }
                None => {
                    let incident = match self.state.resolved_unsent.remove(&alert.key) {
                        // Back before its end was delivered: for the receivers it never stopped.
                        Some(old) => Incident { alert, ..old },
                        None => {
                            log_firing(&alert, "firing");
                            Incident { alert, since: now, sent_at: None }
                        }
                    };
                    self.state.firing.insert(incident.alert.key.clone(), incident);
                }
            }
        }
        let ended: Vec<String> = self.state.firing.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for key in ended {
            let incident = self.state.firing.remove(&key).expect("listed above");
            tracing::info!(
                key = %key,
                tier = %incident.alert.tier,
                stanza = incident.alert.stanza.as_deref().unwrap_or(""),
                "alert resolved: {}",
                incident.alert.summary
            );
            // Only a receiver that was told it fired needs to be told it ended.
            if incident.sent_at.is_some() && self.webhook(incident.alert.tier).is_some() {
                self.state.resolved_unsent.insert(key, incident);
            }
        }

        let mut deliveries = Vec::new();
        let mut jobs = Vec::new();
        for (key, incident) in &mut self.state.firing {
            let due = incident.sent_at.is_none_or(|t| now.saturating_sub(t) >= self.resend_secs);
            if !due {
                continue;
            }
            let tier = incident.alert.tier;
            if self.webhooks[tier.index()].is_none() {
                if incident.sent_at.is_some() {
                    log_firing(&incident.alert, "still firing");
                }
                incident.sent_at = Some(now);
                deliveries.push(Delivery { key: key.clone(), tier, status: Status::Firing, outcome: DeliveryOutcome::Logged });
            } else {
                jobs.push(Job::Firing(key.clone()));
            }
        }
        jobs.extend(self.state.resolved_unsent.keys().cloned().map(Job::Resolved));
        jobs.extend((0..self.state.events_unsent.len()).map(Job::Event));
        deliveries.extend(self.run_jobs(jobs, now).await);
        self.save_state();
        deliveries
    }

    /// Logs an event (normally of tier info: a backup, expire or restore test that succeeded) and sends
    /// it once to its tier's webhook; a failed POST is retried at the next [`Notifier::update`].
    pub async fn event(&mut self, alert: Alert) -> Delivery {
        let now = unix_now();
        log_firing(&alert, "event");
        let (key, tier) = (alert.key.clone(), alert.tier);
        if self.webhook(tier).is_none() {
            return Delivery { key, tier, status: Status::Firing, outcome: DeliveryOutcome::Logged };
        }
        self.state.events_unsent.push(QueuedEvent { alert, at: now });
        let index = self.state.events_unsent.len() - 1;
        let mut done = self.run_jobs(vec![Job::Event(index)], now).await;
        if self.state.events_unsent.len() > MAX_QUEUED_EVENTS {
            let excess = self.state.events_unsent.len() - MAX_QUEUED_EVENTS;
            tracing::warn!("{excess} undelivered alert events dropped (more than {MAX_QUEUED_EVENTS} queued)");
            self.state.events_unsent.drain(..excess);
        }
        self.save_state();
        done.pop().expect("one job, one delivery")
    }

    /// The JSON body of a notification: Slack's `text`, and the alert itself under `strata`.
    pub fn payload(&self, alert: &Alert, status: Status, since: i64, reminder: bool) -> serde_json::Value {
        let who = alert.stanza.as_deref().map(|s| format!("{s}: ")).unwrap_or_default();
        let mut text = match status {
            Status::Firing => format!("[{}] {who}{}", alert.tier.as_str().to_uppercase(), alert.summary),
            Status::Resolved => {
                format!("[RESOLVED] {who}{} ({} since {} UTC)", alert.summary, alert.tier, format_time(since))
            }
        };
        if reminder {
            text.push_str(&format!(" (firing since {} UTC)", format_time(since)));
        }
        if status == Status::Firing && !alert.details.is_empty() {
            text.push('\n');
            text.push_str(&alert.details);
        }
        serde_json::json!({
            "text": text,
            "strata": {
                "status": status.as_str(),
                "key": alert.key,
                "tier": alert.tier.as_str(),
                "stanza": alert.stanza,
                "summary": alert.summary,
                "details": alert.details,
                "since": since,
                "host": self.host,
            }
        })
    }

    fn webhook(&self, tier: Tier) -> Option<&Uri> {
        self.webhooks[tier.index()].as_ref()
    }

    /// POSTs the notifications of `jobs` concurrently and applies the results to the state.
    async fn run_jobs(&mut self, jobs: Vec<Job>, now: i64) -> Vec<Delivery> {
        let mut posts = Vec::new();
        for job in &jobs {
            let (alert, status, since, reminder) = match job {
                Job::Firing(key) => {
                    let i = &self.state.firing[key];
                    (&i.alert, Status::Firing, i.since, i.sent_at.is_some())
                }
                Job::Resolved(key) => {
                    let i = &self.state.resolved_unsent[key];
                    (&i.alert, Status::Resolved, i.since, false)
                }
                Job::Event(n) => {
                    let e = &self.state.events_unsent[*n];
                    (&e.alert, Status::Firing, e.at, false)
                }
            };
            let uri = self.webhook(alert.tier).expect("jobs are made for tiers with a webhook").clone();
            let body = serde_json::to_vec(&self.payload(alert, status, since, reminder)).expect("JSON values encode");
            posts.push(post(&self.client, uri, body));
        }
        let results = futures::future::join_all(posts).await;
        let mut deliveries = Vec::new();
        let mut events_sent = BTreeSet::new();
        for (job, result) in jobs.into_iter().zip(results) {
            let (key, tier, status) = match &job {
                Job::Firing(k) => (k.clone(), self.state.firing[k].alert.tier, Status::Firing),
                Job::Resolved(k) => (k.clone(), self.state.resolved_unsent[k].alert.tier, Status::Resolved),
                Job::Event(n) => {
                    let a = &self.state.events_unsent[*n].alert;
                    (a.key.clone(), a.tier, Status::Firing)
                }
            };
            let outcome = match result {
                Ok(()) => {
                    match &job {
                        Job::Firing(k) => self.state.firing.get_mut(k).expect("present").sent_at = Some(now),
                        Job::Resolved(k) => {
                            self.state.resolved_unsent.remove(k);
                        }
                        Job::Event(n) => {
                            events_sent.insert(*n);
                        }
                    }
                    DeliveryOutcome::Sent
                }
                Err(reason) => {
                    tracing::warn!(
                        key = %key,
                        tier = %tier,
                        status = status.as_str(),
                        "alert webhook POST failed (tried again at the next round): {reason}"
                    );
                    DeliveryOutcome::Failed(reason)
                }
            };
            deliveries.push(Delivery { key, tier, status, outcome });
        }
        if !events_sent.is_empty() {
            let mut n = 0;
            self.state.events_unsent.retain(|_| {
                let keep = !events_sent.contains(&n);
                n += 1;
                keep
            });
        }
        deliveries
    }

    fn save_state(&mut self) {
        let Some(path) = &self.state_file else { return };
        let bytes = serde_json::to_vec_pretty(&self.state).expect("state encodes");
        if bytes == self.saved {
            return;
        }
        match write_atomically(path, &bytes) {
            Ok(()) => self.saved = bytes,
            Err(e) => tracing::warn!(
                "alert state file {}: cannot write it ({e}); a restart may resend alerts or miss resolving them",
                path.display()
            ),
        }
    }
}

fn log_firing(alert: &Alert, what: &str) {
    let stanza = alert.stanza.as_deref().unwrap_or("");
    match alert.tier {
        Tier::Critical => {
            tracing::error!(key = %alert.key, stanza, details = %alert.details, "critical alert {what}: {}", alert.summary)
        }
        Tier::Warning => {
            tracing::warn!(key = %alert.key, stanza, details = %alert.details, "warning alert {what}: {}", alert.summary)
        }
        Tier::Info => tracing::info!(key = %alert.key, stanza, details = %alert.details, "alert {what}: {}", alert.summary),
    }
}

/// POSTs `body` as JSON to `uri`; Ok when the answer is 2xx within [`POST_TIMEOUT`].
async fn post(client: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>, uri: Uri, body: Vec<u8>) -> Result<(), String> {
    let req = Request::post(uri)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("strata-alerts/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        // Read the answer to the end so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the webhook answered {status}"))
        }
    };
    tokio::time::timeout(POST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", POST_TIMEOUT.as_secs()))?
}

/// An error and its causes on one line (hyper's own message alone is "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn load_state(path: &Path) -> Result<(State, Vec<u8>), AlertsError> {
    let err = |reason: String| AlertsError::State { path: path.to_path_buf(), reason };
    match std::fs::read(path) {
        Ok(bytes) => {
            let state: State = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
            if state.version != STATE_VERSION {
                return Err(err(format!("format version {} (this Strata reads {STATE_VERSION})", state.version)));
            }
            Ok((state, bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok((State { version: STATE_VERSION, ..State::default() }, Vec::new()))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}


#[cfg(test)]
mod tests;
