//! `stanza-create`: records which cluster the stanza backs up, so every later backup and WAL file can be
//! checked against it.

use crate::cmd::{check_data_directory, cluster_facts, connect};
use strata_command::now;
use strata_command::Context_;
use strata_repo::StanzaInfo;

pub async fn create(ctx: &Context_) -> anyhow::Result<()> {
    let stanza = ctx.cfg.stanza(&ctx.stanza)?;
    ctx.repo.check_writable().await?;
    let session = connect(&stanza.pg_conn).await?;
    let facts = cluster_facts(&session.client).await;
    session.close().await;
    let facts = facts?;
    check_data_directory(&stanza.pg_data, &facts)?;
    let info = StanzaInfo {
        stanza: ctx.stanza.clone(),
        system_id: facts.system_id,
        pg_version_num: facts.version_num,
        pg_major: strata_pg::version::major_from_version_num(facts.version_num),
        wal_segment_size: facts.wal_segment_size,
        created: now(),
    };
    // With [encryption], the key file is stored (or confirmed) before the stanza is recorded, so the
    // repository is encrypted from its first record on, or refused.
    strata_keys::init_repository(&ctx.cfg, ctx.repo.storage().as_ref(), None)
        .await
        .map_err(|e| anyhow::anyhow!("repository '{}': {e}", ctx.repo.name()))?;
    let created = ctx.repo.create_stanza(&info).await?;
    println!(
        "stanza '{}' {} in repository '{}' (PostgreSQL {}, system {})",
        ctx.stanza,
        if created { "created" } else { "already exists" },
        ctx.repo.name(),
        info.pg_major,
        info.system_id
    );
    crate::multi_repo::create_stanza_in_others(ctx, &info).await?;
    Ok(())
}
