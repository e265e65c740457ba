//! Several repositories from the `strata` command: archive-push copies each segment to every repository,
//! and stanza-create creates the stanza in each.
//!
//! The pipeline writes to the primary repository only (the first `[[repo]]`); then the WAL record and
//! the packs it needs are copied from there to each other repository with the replicator's code
//! ([`strata_replicate::Copier`]), so the bytes are the same everywhere and the replicator later finds
//! nothing to do for them. archive-push succeeds when every repository with `archive_required = true`
//! (the default; the primary always) has the file; a repository that is not required and fails gets a
//! warning, and the replicator fills it in later. As in the primary, a WAL file is never replaced with
//! other content in any repository.

use strata_command::Context_;
use anyhow::{bail, Context};
use strata_config::RepoConfig;
use strata_repo::{Repo, StanzaInfo};
use strata_replicate::Copier;

/// The primary repository: `ctx.repo` unless `--repo` chose another.
async fn primary(ctx: &Context_) -> anyhow::Result<Repo> {
    let primary = ctx.cfg.primary_repo();
    if ctx.repo.name() == primary.name {
        return Ok(ctx.repo.clone());
    }
    strata_runtime::open_repo(&ctx.cfg, primary).await
}

fn others(ctx: &Context_, except: &str) -> Vec<RepoConfig> {
    ctx.cfg.repo.iter().filter(|r| r.name != except).cloned().collect()
}

/// Copies archived `wal_name` from the primary to every other repository (see the module docs).
pub async fn push_to_others(ctx: &Context_, wal_name: &str) -> anyhow::Result<()> {
    let primary_name = ctx.cfg.primary_repo().name.clone();
    let others = others(ctx, &primary_name);
    if others.is_empty() {
        return Ok(());
    }
    let source = primary(ctx).await?;
    let copies = others.iter().map(|rc| {
        let source = source.clone();
        async move {
            let copied: anyhow::Result<()> = async {
                let target = strata_runtime::open_repo(&ctx.cfg, rc).await?;
                Copier::new(source, target).copy_wal(&ctx.stanza, wal_name).await?;
                Ok(())
            }
            .await;
            (rc, copied)
        }
    });
    let mut failed = Vec::new();
    for (rc, result) in futures::future::join_all(copies).await {
        match result {
            Ok(()) => {}
            Err(e) if rc.archive_required => failed.push(format!("repository '{}': {e:#}", rc.name)),
            Err(e) => eprintln!(
                "warning: {wal_name} is not in repository '{}' (archive_required = false; the replicator will copy it): {e:#}",
                rc.name
            ),
        }
    }
    if !failed.is_empty() {
        bail!("{wal_name} is archived in '{primary_name}' but not in every required repository: {}", failed.join("; "));
    }
    Ok(())
}

/// Creates the stanza in every repository other than `ctx.repo` (where stanza-create already did), each
/// sharing `ctx.repo`'s data key.
pub async fn create_stanza_in_others(ctx: &Context_, info: &StanzaInfo) -> anyhow::Result<()> {
    let key_file = match ctx.repo.storage().get(strata_keys::KEY_FILE).await {
        Ok(b) => Some(b.to_vec()),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e).with_context(|| format!("repository '{}'", ctx.repo.name())),
    };
    for rc in others(ctx, ctx.repo.name()) {
        let created: anyhow::Result<bool> = async {
            let storage = strata_runtime::open_storage(&rc).await?;
            storage.check_writable().await?;
            strata_keys::init_repository(&ctx.cfg, storage.as_ref(), key_file.as_deref()).await?;
            let repo = strata_runtime::open_repo(&ctx.cfg, &rc).await?;
            Ok(repo.create_stanza(info).await?)
        }
        .await;
        let created = created.with_context(|| format!("repository '{}'", rc.name))?;
        println!(
            "stanza '{}' {} in repository '{}'",
            ctx.stanza,
            if created { "created" } else { "already exists" },
            rc.name
        );
    }
    Ok(())
}
