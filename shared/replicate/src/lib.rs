//! strata-replicate, the replicator's work: keeps other repositories (another region, a colder tier) holding
//! every committed backup and every archived WAL file of a source repository. The `strata-replicator`
//! service (services/replicator) is a thin binary around [`run`]; the `strata` command copies with the same
//! [`Copier`] when it writes to several repositories, and `info` reports [`lag`].
//!
//! # What it copies, and in what order
//! Objects as they are stored, byte for byte: packs, records, the key file and stanza descriptions (all
//! repositories of a config share one data key, so a copied chunk opens with it). Per target, a scan
//! ([`scan`]) finds each backup and WAL file that is incomplete there; copying one ([`copy`]) writes its
//! packs first and its record last, so the commit rule holds on the target, and reads back every object
//! it wrote to compare it with the source. Checkpoints of running backups are not copied.
//!
//! # Crash safety and resuming
//! Every object goes up in one atomic put and records are put-if-absent, so a replicator killed at any
//! moment leaves the target consistent: whatever it holds of an unfinished backup is packs no record
//! references, which the next scan finds present (same size) and does not copy again. Nothing is ever
//! deleted, on the source or the target; expire runs per repository.
//!
//! # Sharing the work
//! With `bus = "local"` one process scans and copies, `replicator.workers` items at a time; items that
//! need the same missing pack are not copied together (see [`scan::Plan`]): the later waits for a scan
//! after the earlier one's copy, so no pack is written twice.
//!
//! With NATS, the unit of work is a pack, so that several hosts share even one large backup: every
//! replicator process scans every `interval_secs` and publishes on the `Replicate` work queue one task
//! per pack a pending item lacks on a target, and one task per item whose packs are all there (its
//! record, and the stanza's prerequisites). Each task has a message id derived from its target and its
//! pack or item, so JetStream stores it once however many scanners found it, and a pack two items share
//! is one task. Each process takes up to `workers` x [`TASKS_PER_WORKER`] tasks at a time from one pull
//! stream and acknowledges one only once done (a failure gives it back for a retry); a record is copied only by
//! a scan after its packs are on the target, so the commit rule holds there too. A task done twice
//! (after a redelivery, or when a copy outlasts the queue's duplicate window, two minutes, and a scan
//! publishes it again) costs time, not correctness: the second copy finds what is there.
//!
//! # Lag
//! After each scan, per target: objects and bytes still to copy, and seconds since the oldest of them was
//! written in the source, logged and exported as `strata_replication_lag_*` (see [`metrics`]); `strata
//! info` computes the same figures with the same function ([`scan::lag`]).

pub mod copy;
pub mod metrics;
pub mod scan;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use strata_bus::{Bus, Delivery, GivenBack, Queue};
use strata_config::{Config, RepoConfig};
use strata_repo::Repo;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use copy::{Copied, Copier, CopyError};
pub use scan::{lag, Item, Lag, Plan, Scanner};

/// The source repository's name and the targets', as the config says (`[replicator] source` and
/// `targets`, by default the first repository and every other one).
pub fn source_and_targets(cfg: &Config) -> anyhow::Result<(String, Vec<String>)> {
    let source = cfg.replicator.source.clone().unwrap_or_else(|| cfg.primary_repo().name.clone());
    let targets: Vec<String> = if cfg.replicator.targets.is_empty() {
        cfg.repo.iter().map(|r| r.name.clone()).filter(|n| *n != source).collect()
    } else {
        cfg.replicator.targets.clone()
    };
    if targets.contains(&source) {
        bail!("replicator.targets names the source repository '{source}' itself");
    }
    Ok((source, targets))
}

/// The retry count that `strata_s3_retries_total{repo}` exports for an S3 repository; none for others.
fn s3_stats(rc: &RepoConfig, repo: &Repo) -> Option<strata_storage::StorageStats> {
    matches!(rc.kind, strata_config::RepoKind::S3(_)).then(|| repo.storage().stats()).flatten()
}

/// One replication pair.
struct Target {
    name: String,
    copier: Copier,
    scanner: Mutex<Scanner>,
}

/// How often a worker tells the bus it is still copying an item: well within NATS's default ack wait (30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Tasks a process runs at once with NATS, per `replicator.workers` (see the module docs): a pack task
/// is one pack, so 4 workers x 4 keep a long link busy; the copier bounds the bytes they hold.
pub const TASKS_PER_WORKER: usize = 4;

/// A unit of work on the bus: an item (its remaining packs, then its record), or one pack of a stanza.
/// Messages of older replicators carry only `item`.
#[derive(Debug, Serialize, Deserialize)]
struct Task {
    target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    item: Option<Item>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pack: Option<PackTask>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PackTask {
    stanza: String,
    /// The pack's path in the repository (`pack/ab/ab….pack`).
    path: String,
}

/// Replicates until `shutdown` completes. `bus` is the NATS bus to share work over, or `None` for one
/// process doing it all.
pub async fn run(cfg: Arc<Config>, bus: Option<Arc<dyn Bus>>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (source_name, target_names) = source_and_targets(&cfg)?;
    if target_names.is_empty() {
        bail!("nothing to replicate: the config defines only the repository '{source_name}' (add a [[repo]] to copy to)");
    }
    let source_cfg = cfg.repo_named(&source_name).expect("validated by the config");
    let source = strata_runtime::open_repo(&cfg, source_cfg).await?;
    let mut opened = vec![(source_name.clone(), s3_stats(source_cfg, &source))];
    let mut targets = Vec::new();
    for name in &target_names {
        let rc = cfg.repo_named(name).expect("validated by the config");
        let t = strata_runtime::open_repo(&cfg, rc).await?;
        // Healthcheck: a target we cannot write to is a configuration problem, said once at start.
        t.check_writable().await.with_context(|| format!("target repository '{name}'"))?;
        opened.push((name.clone(), s3_stats(rc, &t)));
        targets.push(Arc::new(Target {
            name: name.clone(),
            copier: Copier::new(source.clone(), t),
            scanner: Mutex::new(Scanner::default()),
        }));
    }
    let metrics = metrics::ReplicationMetrics::new(strata_metrics::Registry::new());
    let stop = CancellationToken::new();
    let mut background = Vec::new();
    if let Some(addr) = &cfg.replicator.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("replicator.metrics_listen = {addr:?}: cannot listen"))?;
        info!(addr = %listener.local_addr()?, "metrics at http://{}/metrics", listener.local_addr()?);
        let registry = metrics.registry().clone();
        let stopped = stop.clone();
        background.push(tokio::spawn(async move { strata_metrics::serve(listener, registry, stopped.cancelled_owned()).await }));
    }
    let workers = cfg.replicator.workers;
    if let Some(bus) = &bus {
        // One pull stream per process: each stream takes a batch of tasks ahead, and several per process
        // left another replicator host nothing to take.
        let input = bus.work(Queue::Replicate).await?;
        let (targets, metrics, stopped) = (targets.clone(), metrics.clone(), stop.clone());
        let tasks = workers * TASKS_PER_WORKER;
        background.push(tokio::spawn(async move { work_loop(tasks, input, targets, metrics, stopped).await }));
    }
    info!(source = %source_name, targets = ?target_names, workers, shared = bus.is_some(), "replicator running");
    let interval = Duration::from_secs(cfg.replicator.interval_secs.max(1));
    let passes = async {
        loop {
            for t in &targets {
                match &bus {
                    Some(bus) => publish_pass(bus.as_ref(), t, &metrics).await,
                    None => local_pass(t, &metrics, workers).await,
                }
            }
            for (name, stats) in &opened {
                if let Some(s3) = stats {
                    metrics.s3_retries(name, s3.retries());
                }
            }
            tokio::time::sleep(interval).await;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = passes => {}
    }
    // Dropping a copy midway is safe (see the module docs); workers finish the item they hold.
    stop.cancel();
    for b in background {
        let _ = b.await;
    }
    info!("replicator stopped");
    Ok(())
}

/// Scans a target and reports its lag; `None` when the scan failed (logged and counted).
#[tracing::instrument(name = "replication_scan", skip_all, fields(repo = %t.name))]
async fn scan(t: &Target, metrics: &metrics::ReplicationMetrics) -> Option<Plan> {
    let planned = t.scanner.lock().await.plan(&t.copier.source, &t.copier.target).await;
    match planned {
        Ok(plan) => {
            let now = now();
            metrics.lag(&t.name, &plan.lag, now);
            info!(
                target_repo = %t.name,
                items = plan.items.len(),
                waiting = plan.waiting.len(),
                lag_objects = plan.lag.objects,
                lag_bytes = plan.lag.bytes,
                lag_seconds = plan.lag.seconds(now),
                oldest = plan.lag.oldest.as_ref().map(|(p, _)| p.as_str()).unwrap_or("-"),
                "replication scan"
            );
            Some(plan)
        }
        Err(e) => {
            metrics.error(&t.name);
            warn!(target_repo = %t.name, error = %e, "replication scan failed; retrying at the next interval");
            None
        }
    }
}

/// Single process: scan, copy what is pending, and scan again until the target caught up or a copy
/// failed (the next interval retries).
async fn local_pass(t: &Target, metrics: &metrics::ReplicationMetrics, workers: usize) {
    loop {
        let Some(plan) = scan(t, metrics).await else { return };
        if plan.items.is_empty() {
            return;
        }
        let failures = futures::stream::iter(plan.items)
            .map(|item| copy_item(t, item, metrics))
            .buffer_unordered(workers)
            .filter(|ok| futures::future::ready(!ok))
            .count()
            .await;
        if failures > 0 {
            return;
        }
    }
}

/// Copies one item; whether it succeeded (a failure is logged and counted).
#[tracing::instrument(name = "replicate", skip_all, fields(repo = %t.name, item = %item.key()))]
async fn copy_item(t: &Target, item: Item, metrics: &metrics::ReplicationMetrics) -> bool {
    let result = match &item {
        Item::Wal { stanza, name } => t.copier.copy_wal(stanza, name).await,
        Item::Backup { stanza, label } => t.copier.copy_backup(stanza, label).await,
    };
    match result {
        Ok(copied) => {
            metrics.copied(&t.name, copied);
            if copied.objects > 0 {
                info!(target_repo = %t.name, item = %item.key(), objects = copied.objects, bytes = copied.bytes, "replicated");
            }
            true
        }
        Err(e) => {
            metrics.error(&t.name);
            warn!(target_repo = %t.name, item = %item.key(), error = %e, "replication failed; it will be retried");
            false
        }
    }
}

/// Copies one pack of a pack task (after the stanza's prerequisites, as an item's copy does); whether it
/// succeeded (a failure is logged and counted).
#[tracing::instrument(name = "replicate_pack", skip_all, fields(repo = %t.name, pack = %task.path))]
async fn copy_one_pack(t: &Target, task: &PackTask, metrics: &metrics::ReplicationMetrics) -> bool {
    let Some(id) = strata_repo::pack::parse_pack_path(&task.path) else {
        warn!(path = %task.path, "dropping a replication task whose pack path is malformed");
        return true;
    };
    let result = async {
        let mut copied = t.copier.prepare(&task.stanza).await?;
        copied += t.copier.copy_pack(&id).await?;
        Ok::<_, CopyError>(copied)
    }
    .await;
    match result {
        Ok(copied) => {
            metrics.copied(&t.name, copied);
            tracing::debug!(target_repo = %t.name, pack = %task.path, objects = copied.objects, "replicated a pack");
            true
        }
        Err(e) => {
            metrics.error(&t.name);
            warn!(target_repo = %t.name, pack = %task.path, error = %e, "replicating a pack failed; it will be retried");
            false
        }
    }
}

/// Shared work: scan and publish one deduplicated task per missing pack, and per item whose packs are
/// all there (see the module docs).
async fn publish_pass(bus: &dyn Bus, t: &Target, metrics: &metrics::ReplicationMetrics) {
    let Some(mut plan) = scan(t, metrics).await else { return };
    let mut tasks = Vec::new();
    for item in plan.items.into_iter().chain(plan.waiting) {
        let packs = plan.missing_packs.remove(&item).unwrap_or_default();
        if packs.is_empty() {
            tasks.push((format!("{}.{}", t.name, item.key()), Task { target: t.name.clone(), item: Some(item), pack: None }));
            continue;
        }
        let stanza = match &item {
            Item::Wal { stanza, .. } | Item::Backup { stanza, .. } => stanza.clone(),
        };
        for path in packs {
            let id = format!("{}.{}", t.name, path.replace('/', "."));
            tasks.push((id, Task { target: t.name.clone(), item: None, pack: Some(PackTask { stanza: stanza.clone(), path }) }));
        }
    }
    for (id, task) in tasks {
        let payload = Bytes::from(serde_json::to_vec(&task).expect("tasks serialize"));
        if let Err(e) = bus.publish_work_once(Queue::Replicate, &id, payload).await {
            metrics.error(&t.name);
            warn!(target_repo = %t.name, error = %e, "cannot publish replication work; the next scan retries");
            return;
        }
    }
}

async fn work_loop(
    tasks: usize,
    mut input: Box<dyn strata_bus::WorkStream>,
    targets: Vec<Arc<Target>>,
    metrics: metrics::ReplicationMetrics,
    stop: CancellationToken,
) {
    // Up to `tasks` at once; a hand-written window, as in `copy::Copier::copy_packs`.
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = running.next(), if !running.is_empty() => continue,
            next = input.next(), if running.len() < tasks => next,
        };
        match next {
            Some(Ok(delivery)) => running.push(handle(delivery, &targets, &metrics)),
            Some(Err(e)) => {
                warn!(error = %e, "replicator could not take work");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => {
                while running.next().await.is_some() {}
                return;
            }
        }
    }
}

async fn handle(delivery: Box<dyn Delivery>, targets: &[Arc<Target>], metrics: &metrics::ReplicationMetrics) {
    let task: Task = match serde_json::from_slice(delivery.payload()) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "dropping a malformed replication task");
            let _ = delivery.ack().await;
            return;
        }
    };
    let Some(t) = targets.iter().find(|t| t.name == task.target) else {
        // Another replicator's config has this target; give it back for one that knows it.
        let _ = delivery.nak(Duration::from_secs(5)).await;
        return;
    };
    // A backup can take longer to copy than the queue's ack wait: keep the task ours meanwhile, or another
    // worker would start copying the same backup.
    let copying = async {
        match (task.item, task.pack) {
            (Some(item), _) => copy_item(t, item, metrics).await,
            (None, Some(pack)) => copy_one_pack(t, &pack, metrics).await,
            (None, None) => {
                warn!("dropping a replication task that names neither an item nor a pack");
                true
            }
        }
    };
    tokio::pin!(copying);
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    let copied = loop {
        tokio::select! {
            copied = &mut copying => break copied,
            _ = keep_alive.tick() => {
                if let Err(e) = delivery.keep_alive().await {
                    warn!(error = %e, "cannot tell the bus a replication task is in progress; it may be redelivered");
                }
            }
        }
    };
    if copied {
        if let Err(e) = delivery.ack().await {
            warn!(error = %e, "replication task done but its ack failed; it will be found complete when redelivered");
        }
    } else if let GivenBack::GaveUp { deliveries } = strata_bus::give_back(delivery, false, Duration::from_secs(5)).await {
        // The next pass finds the item still missing from the target and queues it again.
        warn!(target = %t.name, deliveries, "replication task failed on every delivery; left to the next pass");
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests;
