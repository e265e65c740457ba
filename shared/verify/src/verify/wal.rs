//! Verifying the WAL archive: every segment from the oldest backup's start to the archive's end is there
//! and reads back to its recorded hash, and each backup's own WAL is complete. Separate from the backups'
//! verification because the WAL is read file by file (not pack by pack) and its faults are gaps, named
//! with every backup they break, rather than damaged chunks.

use super::{chunk_problem, empty_result, problem, push, wal_segno, WalReport, CONCURRENCY};
use futures::StreamExt;
use std::time::Instant;
use strata_command::now;
use strata_messages::BackupRecord;
use strata_pg::wal::{classify_wal_file, WalFileKind};
use strata_repo::verify_results::{Problem, WAL_SUBJECT};
use strata_repo::Repo;
use strata_restore::wal_archive::{describe_range, WalArchive};

/// Checks that every WAL file from `since` (the oldest verified backup's first segment, by default the
/// archive's first) to the archive's end is there, and that those not `known_intact` read back to their
/// recorded hash. `backups` (all of them) are named in the problems a gap causes.
pub(super) async fn verify_wal(
    repo: &Repo,
    stanza: &str,
    seg_size: u64,
    backups: &[BackupRecord],
    since: Option<u64>,
    known_intact: &std::collections::HashSet<String>,
) -> anyhow::Result<WalReport> {
    let started = Instant::now();
    let mut result = empty_result(WAL_SUBJECT, now());
    let mut archive = WalArchive::load(repo, stanza, seg_size).await?;
    let Some(since) = since.or_else(|| archive.segments().map(|s| s.segno).min()) else {
        result.duration_secs = started.elapsed().as_secs_f64();
        return Ok(WalReport { result, intact: Vec::new() });
    };
    let gaps = archive.gaps(since).await?;
    for (_, gap) in &gaps {
        let (first, last) = (archive.name(gap.first_missing), archive.name(gap.last_missing));
        let tl = gap.first_missing.timeline;
        let mut unusable = Vec::new();
        let mut cut = Vec::new();
        for b in backups {
            let s = &b.summary;
            let (Ok(start), Ok(stop)) = (archive.parse(&s.wal_start), archive.parse(&s.wal_stop)) else { continue };
            if start.timeline != tl && stop.timeline != tl {
                continue;
            }
            if start.segno <= gap.last_missing.segno && stop.segno >= gap.first_missing.segno {
                unusable.push(s.label.clone());
            } else if stop.segno < gap.first_missing.segno {
                cut.push(s.label.clone());
            }
        }
        let what = if !unusable.is_empty() {
            "missing from the archive: the backup cannot be made consistent".to_string()
        } else if !cut.is_empty() {
            format!("missing from the archive: recovery from the backup stops before it{}", after_text(&archive, gap))
        } else {
            format!("missing from the archive{}", after_text(&archive, gap))
        };
        let named: Vec<String> = if unusable.is_empty() { cut } else { unusable };
        push(
            &mut result,
            Problem {
                backup: (!named.is_empty()).then(|| named.join(", ")),
                segment: Some(describe_range(&first, &last)),
                ..problem(what)
            },
        );
    }
    // A backup's own WAL missing at the archive's end is no gap between archived segments: each backup
    // from `since` on is checked for its start..stop range.
    for b in backups.iter().filter(|b| wal_segno(&b.summary.wal_start).is_some_and(|n| n >= since)) {
        let s = &b.summary;
        let Ok(Some(gap)) = archive.backup_gap(&s.wal_start, &s.wal_stop).await else { continue };
        let m = gap.first_missing;
        if gaps.iter().any(|(tl, g)| *tl == m.timeline && (g.first_missing.segno..=g.last_missing.segno).contains(&m.segno)) {
            continue;
        }
        push(
            &mut result,
            Problem {
                backup: Some(s.label.clone()),
                segment: Some(describe_range(&archive.name(m), &archive.name(gap.last_missing))),
                ..problem("missing from the archive: the backup cannot be made consistent")
            },
        );
    }
    for tl in archive.missing_histories() {
        push(&mut result, problem(format!("the history file of timeline {tl} is missing from the archive")));
    }
    let names: Vec<String> = repo
        .wal_names(stanza)
        .await?
        .into_iter()
        .filter(|n| !known_intact.contains(n))
        .filter(|n| match classify_wal_file(n) {
            // Segments from `since` on, on any timeline.
            Some(WalFileKind::Segment | WalFileKind::Partial) => wal_segno(&n[..24]).is_some_and(|s| s >= since),
            Some(WalFileKind::History) => true,
            _ => false,
        })
        .collect();
    let mut intact = Vec::new();
    let checks = futures::stream::iter(names.into_iter().map(|name| {
        let repo = repo.clone();
        async move {
            let outcome = check_wal_file(&repo, stanza, &name).await;
            (name, outcome)
        }
    }))
    .buffer_unordered(CONCURRENCY);
    futures::pin_mut!(checks);
    while let Some((name, outcome)) = checks.next().await {
        result.wal_files += 1;
        match outcome {
            Ok((chunks, stored, plain)) => {
                intact.push(name);
                result.chunks += chunks;
                result.stored_bytes += stored;
                result.plain_bytes += plain;
            }
            Err(p) => {
                // Damage in a backup's own WAL makes the backup unrecoverable: it is named.
                let needing: Vec<&str> =
                    backups.iter().filter(|b| needs_segment(&archive, b, &name)).map(|b| b.summary.label.as_str()).collect();
                let p = match needing.is_empty() {
                    true => p,
                    false => Problem {
                        backup: Some(needing.join(", ")),
                        what: format!("{}: the backup cannot be made consistent", p.what),
                        ..p
                    },
                };
                push(&mut result, Problem { segment: Some(name), ..p })
            }
        }
    }
    result.problems.sort_by(|a, b| a.segment.cmp(&b.segment));
    result.duration_secs = started.elapsed().as_secs_f64();
    Ok(WalReport { result, intact })
}

/// Whether `name` is a segment of the backup's own WAL (its start to its stop segment, on its timeline).
fn needs_segment(archive: &WalArchive<'_>, b: &BackupRecord, name: &str) -> bool {
    let s = &b.summary;
    match (archive.parse(name), archive.parse(&s.wal_start), archive.parse(&s.wal_stop)) {
        (Ok(seg), Ok(start), Ok(stop)) => {
            (seg.timeline == start.timeline || seg.timeline == stop.timeline) && (start.segno..=stop.segno).contains(&seg.segno)
        }
        _ => false,
    }
}

fn after_text(archive: &WalArchive<'_>, gap: &strata_restore::wal_archive::Gap) -> String {
    gap.after.map(|a| format!(" (WAL resumes at {})", archive.name(a))).unwrap_or_default()
}

/// Reads one archived WAL file back: its chunks against their ids, the whole against the recorded hash.
async fn check_wal_file(repo: &Repo, stanza: &str, name: &str) -> Result<(u64, u64, u64), Problem> {
    let record = match repo.wal(stanza, name).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(problem("the WAL record disappeared during the verification")),
        Err(e) => return Err(problem(format!("the WAL record cannot be read: {e}"))),
    };
    let sealer = repo.sealer();
    let mut hasher = sealer.id_hasher();
    let (mut stored, mut plain_len) = (0u64, 0u64);
    let mut plain = Vec::new();
    for r in &record.chunks {
        let sealed = match repo.read_sealed(r).await {
            Ok(s) => s,
            Err(e) => {
                let why = match &e {
                    strata_repo::RepoError::Storage { source, .. } if source.is_not_found() => "the pack is missing".to_string(),
                    _ => format!("cannot be read: {e}"),
                };
                return Err(chunk_problem(r, why));
            }
        };
        if sealed.len() < r.sealed_len as usize {
            return Err(chunk_problem(r, format!("the pack is truncated: the chunk has {} of its {} bytes", sealed.len(), r.sealed_len)));
        }
        if let Err(e) = sealer.unseal_into(&sealed, &r.id, &mut plain) {
            return Err(chunk_problem(r, format!("the chunk does not read back: {e}")));
        }
        hasher.update(&plain);
        stored += r.sealed_len as u64;
        plain_len += plain.len() as u64;
    }
    if *hasher.finalize().as_bytes() != record.hash || plain_len != record.size {
        return Err(problem("the file read back does not match its recorded hash and size"));
    }
    Ok((record.chunks.len() as u64, stored, plain_len))
}
