//! `annotate`: pins a backup, unpins it, or attaches a note to it.
//!
//! The annotation is its own object beside the backup's record (records are written once and never
//! rewritten; see `strata_repo::annotations`). A pin is what makes `expire` keep a backup whatever the
//! retention settings say, together with every backup it depends on, so a pin is written only for a
//! backup that exists, and it is the whole annotation that is replaced: the last writer wins.

use strata_command::Context_;

pub async fn run(ctx: &Context_, label: &str, pinned: Option<bool>, note: Option<&str>) -> anyhow::Result<()> {
    ctx.repo.stanza(&ctx.stanza).await?;
    let mut annotation = ctx.repo.annotation(&ctx.stanza, label).await?.unwrap_or_default();
    if let Some(p) = pinned {
        annotation.pinned = p;
    }
    if let Some(n) = note {
        annotation.note = (!n.is_empty()).then(|| n.to_string());
    }
    annotation.changed_by = strata_command::who();
    annotation.changed_at = strata_command::now();
    ctx.repo.put_annotation(&ctx.stanza, label, &annotation).await?;
    println!(
        "backup {label}: {}{}",
        if annotation.pinned { "pinned (expire keeps it and the backups it depends on)" } else { "not pinned" },
        annotation.note.as_deref().map(|n| format!("; note: {n}")).unwrap_or_default()
    );
    Ok(())
}
