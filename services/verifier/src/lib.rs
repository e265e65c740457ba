//! The verifier service: keeps answering "when did you last test your backups?" with evidence.
//!
//! Every `verifier.interval_secs` it takes one look at each stanza in each repository:
//! - **New backups** (committed, never verified in that repository) are verified: every chunk read back,
//!   decrypted, decompressed and hashed, relation pages checked (`strata_verify::verify`).
//! - **The WAL archive** is checked for gaps from the oldest backup on, and every WAL file not yet found
//!   intact by this process is read back against its hash. Files found intact are remembered, so a round
//!   costs the new WAL only; a restarted verifier reads the archive once again.
//! - **Restore tests** run on `restore_test.interval_secs`.
//! - **Health** (`strata_verify::health`, the same evaluation `info` shows) becomes metrics and alerts.
//!
//! Verifiers scale out without a coordinator: a backup's verification and a scheduled restore test are
//! claimed in the repository with a put-if-absent object ([`strata_repo::Repo::claim`]), so two verifiers
//! never do the same one, and any number can run on any hosts. The WAL check and the health evaluation
//! are cheap and every verifier does them (each exports the same metrics).

pub mod metrics;

use anyhow::Context;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use strata_verify::verify::{verify_repo, Scope};
use strata_verify::health::{Finding, Health, Level};
use strata_alerts::{Alert, Notifier, Tier};
use strata_config::Config;
use strata_repo::Repo;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

/// A claim older than this belongs to a verifier that died: long enough for the biggest verification.
const CLAIM_STALE_SECS: i64 = 6 * 3600;

/// What one verifier process keeps between rounds.
struct State {
    /// Per (repository, stanza): WAL files found intact, and since when that list has been growing (it is
    /// forgotten every `reverify_secs`, so the archive is read back again like the backups are).
    wal_intact: HashMap<(String, String), (i64, HashSet<String>)>,
    /// Which alerts are firing and what was sent about them.
    notifier: Notifier,
    config_path: std::path::PathBuf,
    /// Cancelled at shutdown: a running restore test stops and cleans up.
    cancel: CancellationToken,
}

/// Runs rounds until `shutdown` completes (or once, with `once`). `config_path` is what restore tests
/// write into the restored cluster's restore_command.
pub async fn run(
    cfg: Arc<Config>,
    config_path: std::path::PathBuf,
    metrics_listen: Option<String>,
    once: bool,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut repos = Vec::new();
    for rc in &cfg.repo {
        repos.push(strata_runtime::open_repo(&cfg, rc).await.with_context(|| format!("repository '{}'", rc.name))?);
    }
    let metrics = metrics::VerifierMetrics::new(strata_metrics::Registry::new());
    let stop = CancellationToken::new();
    let mut background = Vec::new();
    if let Some(addr) = &metrics_listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("verifier.metrics_listen = {addr:?}: cannot listen"))?;
        info!(addr = %listener.local_addr()?, "metrics at http://{}/metrics", listener.local_addr()?);
        let registry = metrics.registry().clone();
        let stopped = stop.clone();
        background.push(tokio::spawn(async move { strata_metrics::serve(listener, registry, stopped.cancelled_owned()).await }));
    }
    info!(stanzas = ?cfg.stanza.keys().collect::<Vec<_>>(), repositories = repos.len(), interval = cfg.verifier.interval_secs, "verifier running");
    let notifier = Notifier::new(&cfg.alerts, cfg.verifier.alert_state_file.clone())?;
    let mut state = State { wal_intact: HashMap::new(), notifier, config_path, cancel: stop.clone() };
    let interval = Duration::from_secs(cfg.verifier.interval_secs);
    let rounds = async {
        loop {
            round(&cfg, &repos, &mut state, &metrics).await;
            if let Some(primary) = repos.first() {
                restore_tests(&cfg, primary, &mut state).await;
            }
            metrics.round_done();
            if once {
                break;
            }
            tokio::time::sleep(interval).await;
        }
    };
    let stopping = stop.clone();
    let rounds = async move {
        tokio::select! {
            _ = rounds => {}
            // A restore test in progress sees the cancellation, stops its server and removes its directory.
            _ = stopping.cancelled() => {}
        }
    };
    tokio::pin!(rounds);
    tokio::select! {
        _ = shutdown => {
            stop.cancel();
            (&mut rounds).await;
        }
        _ = &mut rounds => {}
    }
    stop.cancel();
    for b in background {
        let _ = b.await;
    }
    info!("verifier stopped");
    Ok(())
}

async fn round(cfg: &Config, repos: &[Repo], state: &mut State, metrics: &metrics::VerifierMetrics) {
    let holder = strata_command::who();
    let mut alerts = Vec::new();
    for stanza in cfg.stanza.keys() {
        for repo in repos {
            if let Err(e) = verify_round(cfg, repo, stanza, &holder, state, metrics).await {
                error!(stanza = %stanza, repo = %repo.name(), error = %format!("{e:#}"), "verification round failed");
                metrics.round_error(stanza, repo.name());
            }
        }
        let mut worst = strata_verify::health::Level::Ok;
        for repo in repos {
            let pg_conn = cfg.stanza(stanza).ok().map(|s| s.pg_conn.as_str());
            match strata_verify::health::evaluate(cfg, repo, stanza, pg_conn, strata_command::now()).await {
                Ok(h) => {
                    worst = worst.max(h.status);
                    metrics.health(&h);
                    alerts.extend(h.findings.iter().map(|f| alert_of(&h, f)));
                }
                Err(e) => {
                    warn!(stanza = %stanza, repo = %repo.name(), error = %format!("{e:#}"), "cannot evaluate health");
                    metrics.round_error(stanza, repo.name());
                }
            }
        }
        metrics.stanza_status(stanza, worst);
    }
    state.notifier.update(alerts, strata_command::now()).await;
    let firing = state.notifier.firing();
    for tier in Tier::ALL {
        metrics.alerts_firing(tier.as_str(), firing.iter().filter(|a| a.tier == tier).count());
    }
}

/// A finding as an alert. Facts of the cluster (its archiver) are the stanza's, whichever repository's
/// evaluation found them, so their key names no repository: one incident, not one per repository.
fn alert_of(h: &Health, f: &Finding) -> Alert {
    let key = if f.rule.starts_with("archive-") { format!("{}/{}", f.rule, h.stanza) } else { format!("{}/{}/{}", f.rule, h.stanza, h.repo) };
    let tier = match f.level {
        Level::Critical => Tier::Critical,
        Level::Warning => Tier::Warning,
        Level::Ok => Tier::Info,
    };
    Alert {
        key,
        tier,
        stanza: Some(h.stanza.clone()),
        summary: format!("{}: {}", h.stanza, f.summary),
        details: format!("stanza '{}', repository '{}': {}", h.stanza, h.repo, h.status_text()),
    }
}

/// Verifies the backups of `stanza` in `repo` that have no result yet or one older than
/// `verifier.reverify_secs`, then the WAL not yet found intact.
#[tracing::instrument(name = "verify_round", skip_all, fields(stanza = %stanza, repo = %repo.name()))]
async fn verify_round(cfg: &Config, repo: &Repo, stanza: &str, holder: &str, state: &mut State, metrics: &metrics::VerifierMetrics) -> anyhow::Result<()> {
    if repo.stanza(stanza).await.is_err() {
        // No stanza-create yet in this repository: nothing to verify.
        return Ok(());
    }
    let none = HashSet::new();
    let now = strata_command::now();
    if cfg.verifier.verify_new_backups {
        let last: HashMap<String, i64> = repo.verify_results(stanza).await?.into_iter().map(|r| (r.subject, r.time)).collect();
        // Every due backup this verifier could claim, verified in one pass: an incremental shares most of
        // its chunks with its reference, and a chunk is read once per pass.
        let mut claimed = Vec::new();
        for b in repo.backups(stanza).await? {
            let label = &b.summary.label;
            if verification_due(last.get(label).copied(), now, cfg.verifier.reverify_secs)
                && repo.claim(stanza, label, holder, CLAIM_STALE_SECS).await?
            {
                claimed.push(label.clone());
            }
        }
        if !claimed.is_empty() {
            let scope = Scope { set: Some(&claimed), backups: true, wal: false, wal_known_intact: &none, store: true };
            let outcome = verify_repo(repo, stanza, &scope).await;
            for label in &claimed {
                repo.release(stanza, label).await?;
            }
            for r in &outcome?.backups {
                metrics.verified(stanza, repo.name(), r);
                if r.ok() {
                    info!(stanza, repo = %repo.name(), backup = %r.subject, chunks = r.chunks, seconds = r.duration_secs, "backup verified");
                } else {
                    error!(stanza, repo = %repo.name(), backup = %r.subject, problems = r.problem_count, first = %r.problems[0], "backup is damaged");
                }
            }
        }
    }
    let key = (repo.name().to_string(), stanza.to_string());
    let (since, known) = state.wal_intact.entry(key).or_insert_with(|| (now, HashSet::new()));
    if cfg.verifier.reverify_secs > 0 && now.saturating_sub(*since) >= cfg.verifier.reverify_secs as i64 {
        *since = now;
        known.clear();
    }
    let scope = Scope { set: None, backups: false, wal: true, wal_known_intact: known, store: true };
    let report = verify_repo(repo, stanza, &scope).await?;
    if let Some(wal) = report.wal {
        metrics.verified(stanza, repo.name(), &wal.result);
        for p in &wal.result.problems {
            error!(stanza, repo = %repo.name(), problem = %p, "WAL archive problem");
        }
        known.extend(wal.intact);
    }
    Ok(())
}

/// Whether a backup last verified at `last` (never: `None`) is due for a verification at `now`.
fn verification_due(last: Option<i64>, now: i64, reverify_secs: u64) -> bool {
    match last {
        None => true,
        Some(_) if reverify_secs == 0 => false,
        Some(t) => now.saturating_sub(t) >= reverify_secs as i64,
    }
}

/// Runs each stanza's scheduled restore test when the newest one in the primary repository is older than
/// `restore_test.interval_secs`. The slot (the interval the test is for) is claimed in the repository, so
/// one verifier runs it however many are running.
async fn restore_tests(cfg: &Arc<Config>, primary: &Repo, state: &mut State) {
    let interval = cfg.restore_test.interval_secs as i64;
    if interval == 0 {
        return;
    }
    for stanza in cfg.stanza.keys() {
        let now = strata_command::now();
        let due = match primary.latest_restore_test(stanza).await {
            Ok(Some(t)) => now - t.start_time >= interval,
            Ok(None) => true,
            Err(e) => {
                warn!(stanza = %stanza, error = %e, "cannot read the last restore test");
                continue;
            }
        };
        if !due || primary.backups(stanza).await.map(|b| b.is_empty()).unwrap_or(true) {
            continue;
        }
        let slot = format!("restore-test-{}", now / interval);
        match primary.claim(stanza, &slot, &strata_command::who(), CLAIM_STALE_SECS).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!(stanza = %stanza, error = %e, "cannot claim the restore test");
                continue;
            }
        }
        let ctx = strata_command::Context_ { cfg: cfg.clone(), config_path: state.config_path.clone(), stanza: stanza.clone(), repo: primary.clone() };
        let opts = strata_verify::restore_test::RestoreTestOptions { cancel: state.cancel.clone(), ..Default::default() };
        info!(stanza = %stanza, "scheduled restore test starting");
        let what = serde_json::json!({ "scheduled": true, "by": "strata-verifier" });
        let test = async { anyhow::Ok(strata_verify::restore_test::run_test(&ctx, &opts).await?.passed()?) };
        let span = tracing::info_span!("restore_test", stanza = %stanza, repo = %primary.name());
        match strata_command::audit::audit_op(cfg, strata_audit::Op::RestoreTest, Some(stanza), Some(primary.name()), what, test).instrument(span).await {
            Ok(p) => info!(stanza = %stanza, label = %p.0.label, total_ms = p.0.total_ms, "scheduled restore test passed"),
            // Stored with the result: the next round's health evaluation raises the critical alert.
            Err(e) => error!(stanza = %stanza, error = %format!("{e:#}"), "scheduled restore test failed"),
        }
        if let Err(e) = primary.release(stanza, &slot).await {
            warn!(stanza = %stanza, error = %e, "cannot release the restore test's claim");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::verification_due;

    #[test]
    fn a_backup_is_verified_once_then_again_when_its_result_is_old_enough() {
        let day = 86_400;
        assert!(verification_due(None, 1_000_000, 0), "never verified: due whatever the setting");
        assert!(!verification_due(Some(1_000_000 - 10 * day), 1_000_000, 0), "0 verifies each backup once");
        assert!(!verification_due(Some(1_000_000 - day), 1_000_000, 7 * day as u64));
        assert!(verification_due(Some(1_000_000 - 7 * day), 1_000_000, 7 * day as u64));
        // A result from the future (a host with a clock ahead) waits instead of looping.
        assert!(!verification_due(Some(1_000_000 + day), 1_000_000, 60));
    }
}
