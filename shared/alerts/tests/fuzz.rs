//! The alert state file (what the notifier delivered, kept across restarts) against random bytes and
//! damaged copies of valid ones: `Notifier::new` loads it or refuses it with one error, and a loaded state
//! is acted on (an update round, with and without webhooks) without a panic, whatever times and tiers it
//! holds. Webhooks point at a closed port on loopback, so every POST fails at once.
//! Cases per target: `PROPTEST_CASES` (see `strata-fuzzkit`).

use strata_alerts::{Alert, Notifier, Status, Tier};
use strata_config::AlertsConfig;
use strata_fuzzkit::proptest::prelude::*;
use strata_fuzzkit::{bytes, check, fuzz, mutated_any};

/// A loopback URL nothing listens on.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/hooks/strata")
}

fn configs() -> [AlertsConfig; 3] {
    let url = closed_url();
    [
        AlertsConfig::default(),
        AlertsConfig {
            webhook_critical: Some(url.clone()),
            webhook_warning: Some(url.clone()),
            webhook_info: Some(url),
            ..AlertsConfig::default()
        },
        AlertsConfig { webhook_critical: Some(closed_url()), ..AlertsConfig::default() },
    ]
}

fn alert(key: &str, tier: Tier) -> Alert {
    Alert {
        key: key.into(),
        tier,
        stanza: Some("main".into()),
        summary: format!("{key} is wrong é ✓"),
        details: "what was measured".into(),
    }
}

/// A state file as a notifier writes it: incidents firing (one already delivered), one resolved whose
/// message is still owed, and an undelivered event.
fn valid_state() -> Vec<u8> {
    let incident = |key: &str, tier: Tier, sent_at: Option<i64>| {
        serde_json::json!({ "alert": alert(key, tier), "since": 1_796_000_000i64, "sent_at": sent_at })
    };
    let state = serde_json::json!({
        "version": 1,
        "firing": {
            "backup-late/main": incident("backup-late/main", Tier::Critical, Some(1_796_000_100)),
            "archive-lag/main": incident("archive-lag/main", Tier::Warning, None),
        },
        "resolved_unsent": { "repo-full/local": incident("repo-full/local", Tier::Warning, Some(1_796_000_050)) },
        "events_unsent": [ { "alert": alert("backup-done/main", Tier::Info), "at": 1_796_000_200i64 } ],
    });
    serde_json::to_vec_pretty(&state).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    configs: [AlertsConfig; 3],
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.state");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Fixture { _dir: dir, path, configs: configs(), rt }
    }

    /// Loads `bytes` as the state file under each config and runs two rounds (one alert firing, then none).
    fn load_and_update(&self, bytes: &[u8]) -> Result<(), TestCaseError> {
        for cfg in &self.configs {
            std::fs::write(&self.path, bytes).unwrap();
            match Notifier::new(cfg, Some(self.path.clone())) {
                Ok(mut n) => {
                    let firing = n.firing();
                    self.rt.block_on(async {
                        n.update(vec![alert("archive-lag/main", Tier::Critical)], 1_796_001_000).await;
                        n.update(Vec::new(), 1_796_002_000).await;
                    });
                    for a in firing {
                        let _ = n.payload(&a, Status::Resolved, 1_796_000_000, true);
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    check!(!text.is_empty(), "empty error");
                }
            }
        }
        Ok(())
    }
}

#[test]
fn valid_state_loads() {
    let f = Fixture::new();
    std::fs::write(&f.path, valid_state()).unwrap();
    assert_eq!(Notifier::new(&f.configs[1], Some(f.path.clone())).unwrap().firing().len(), 2);
}

#[test]
fn fuzz_alert_state_mutated() {
    let f = Fixture::new();
    fuzz("alerts/state-mutated", 128, mutated_any(vec![valid_state()]), |b| f.load_and_update(&b));
}

#[test]
fn fuzz_alert_state_random() {
    let f = Fixture::new();
    fuzz("alerts/state-random", 64, bytes(300), |b| f.load_and_update(&b));
}

/// A state holding any times (a damaged file): loaded and acted on without a panic.
#[test]
fn fuzz_alert_state_times() {
    let f = Fixture::new();
    let time = prop_oneof![any::<i64>(), Just(i64::MAX), Just(i64::MIN), Just(0), Just(253_402_300_800)];
    fuzz("alerts/state-times", 64, (time.clone(), time.clone(), time), |(since, sent_at, at)| {
        let mut state: serde_json::Value = serde_json::from_slice(&valid_state()).unwrap();
        state["firing"]["backup-late/main"]["since"] = since.into();
        state["firing"]["backup-late/main"]["sent_at"] = sent_at.into();
        state["resolved_unsent"]["repo-full/local"]["since"] = since.into();
        state["events_unsent"][0]["at"] = at.into();
        f.load_and_update(&serde_json::to_vec(&state).unwrap())
    });
}

/// A notification's text for any start time.
#[test]
fn fuzz_alert_payload() {
    let n = Notifier::new(&AlertsConfig::default(), None).unwrap();
    fuzz("alerts/payload", 256, (any::<i64>(), any::<bool>(), any::<String>()), |(since, reminder, summary)| {
        let mut a = alert("x", Tier::Warning);
        a.summary = summary;
        for status in [Status::Firing, Status::Resolved] {
            let body = n.payload(&a, status, since, reminder);
            check!(body["strata"]["since"] == since, "payload lost its time");
        }
        Ok(())
    });
}

/// Found by `fuzz_alert_state_mutated`: a state file owing a resolved message or an event to a tier whose
/// webhook is no longer configured made the next round panic ("jobs are made for tiers with a webhook").
#[test]
fn a_state_owing_messages_to_a_removed_webhook_is_acted_on() {
    let f = Fixture::new();
    std::fs::write(&f.path, valid_state()).unwrap();
    let mut n = Notifier::new(&f.configs[0], Some(f.path.clone())).unwrap();
    f.rt.block_on(n.update(Vec::new(), 1_796_001_000));
}

/// Found by `fuzz_alert_payload` and `fuzz_alert_state_times`: a start time past the year 9999 made
/// showing it panic ("a Display implementation returned an error unexpectedly"), and a delivery time
/// far in the past overflowed the reminder's age.
#[test]
fn any_time_in_a_state_is_shown_and_aged() {
    let n = Notifier::new(&AlertsConfig::default(), None).unwrap();
    let text = n.payload(&alert("x", Tier::Critical), Status::Resolved, i64::MAX, true)["text"].to_string();
    assert!(text.contains("9999-12-31 23:59:59 UTC"), "{text}");
    let f = Fixture::new();
    let mut state: serde_json::Value = serde_json::from_slice(&valid_state()).unwrap();
    state["firing"]["backup-late/main"]["sent_at"] = i64::MIN.into();
    std::fs::write(&f.path, serde_json::to_vec(&state).unwrap()).unwrap();
    let mut n = Notifier::new(&f.configs[1], Some(f.path.clone())).unwrap();
    f.rt.block_on(n.update(vec![alert("backup-late/main", Tier::Critical)], 1_796_001_000));
}
