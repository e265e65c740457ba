//! `stanza-create`: records which cluster the stanza backs up, so every later backup and WAL file can be
//! checked against it.

use crate::cmd::{cluster_facts, connect, now};
use crate::Context_;
use anyhow::bail;
use strata_repo::StanzaInfo;

pub async fn create(ctx: &Context_) -> anyhow::Result<()> {
    let stanza = ctx.cfg.stanza(&ctx.stanza)?;
    ctx.repo.check_writable().await?;
    let session = connect(&stanza.pg_conn).await?;
    let facts = cluster_facts(&session.client).await;
    session.close().await;
    let facts = facts?;
    let configured = std::fs::canonicalize(&stanza.pg_data);
    let actual = std::fs::canonicalize(&facts.data_directory);
    match (configured, actual) {
        (Ok(c), Ok(a)) if c == a => {}
        _ => bail!(
            "pg_data is {} but the server's data_directory is {}; they must be the same cluster",
            stanza.pg_data.display(),
            facts.data_directory
        ),
    }
    let info = StanzaInfo {
        stanza: ctx.stanza.clone(),
        system_id: facts.system_id,
        pg_version_num: facts.version_num,
        pg_major: strata_pg::version::major_from_version_num(facts.version_num),
        wal_segment_size: facts.wal_segment_size,
        created: now(),
    };
    let created = ctx.repo.create_stanza(&info).await?;
    println!(
        "stanza '{}' {} in repository '{}' (PostgreSQL {}, system {})",
        ctx.stanza,
        if created { "created" } else { "already exists" },
        ctx.repo.name(),
        info.pg_major,
        info.system_id
    );
    Ok(())
}
