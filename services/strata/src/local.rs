//! The single-host mode: the pipeline's stages as tasks of the `strata` process, over an in-process bus.
//!
//! These are the services' own `run` functions, not a second implementation, so the single-host mode
//! exercises the same code paths as a fleet; only the bus differs.

use std::sync::Arc;
use strata_bus::Bus;
use strata_config::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Running stages; [`LocalStages::stop`] ends them.
pub struct LocalStages {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Starts a sealer and an uploader (and, for backups, a collector) on `bus`. Checks the repository first so
/// an unwritable one fails at once rather than at the stall deadline.
pub async fn start(cfg: &Arc<Config>, repo: &strata_repo::Repo, bus: Arc<dyn Bus>, collector: bool) -> anyhow::Result<LocalStages> {
    repo.check_writable().await?;
    let (repo, sealer) = (repo.clone(), repo.sealer().clone());
    let cancel = CancellationToken::new();
    let p = &cfg.pipeline;
    let mut tasks = Vec::new();
    // The stages count as they would in a fleet (atomics on the hot path); nobody scrapes a command.
    tasks.push(tokio::spawn(strata_seal_worker::run(
        bus.clone(),
        p.sealer_workers,
        sealer.clone(),
        strata_seal_worker::SealerMetrics::unexported(),
        cancel.clone().cancelled_owned(),
    )));
    tasks.push(tokio::spawn(strata_upload::run(
        repo,
        bus.clone(),
        strata_upload::UploaderSettings::from_config(p),
        strata_upload::UploaderMetrics::unexported(),
        cancel.clone().cancelled_owned(),
    )));
    if collector {
        let metrics = strata_collect::CollectorMetrics::unexported();
        tasks.push(tokio::spawn(strata_collect::run(cfg.clone(), bus, sealer, metrics, cancel.clone().cancelled_owned())));
    }
    Ok(LocalStages { cancel, tasks })
}

impl LocalStages {
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        for t in self.tasks {
            t.await.expect("stage task panicked")?;
        }
        Ok(())
    }
}
