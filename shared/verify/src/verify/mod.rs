//! `verify`: proves, without restoring, that every backup and the WAL archive can be read back whole from
//! each repository: every chunk a backup's files point into is fetched, decrypted, decompressed and
//! compared with its content hash; relation pages are checked against their PostgreSQL checksums where the
//! cluster has them; every WAL file from the oldest backup's start to the archive's end must be there and
//! match its recorded hash, and so must each backup's own WAL (its start to its stop segment, which may
//! run past the archive's end): a backup without it cannot be made consistent, and is named as damaged.
//!
//! Why by pack rather than by file: a backup's chunks are spread over a few large packs, so reading each
//! pack once (and each chunk in it that any file needs) costs one request per pack instead of one per
//! chunk, which is what makes an S3 repository verifiable in reasonable time. A chunk shared by several
//! backups is checked once per run: later backups reuse its outcome (a damaged one is reported again for
//! each backup that needs it, since each of them is damaged).
//!
//! A verification never stops at the first fault: every problem is reported with what it breaks (which
//! backup, which file, which chunk and pack, which segment, in which repository), and the results are
//! stored beside the backups ([`strata_repo::verify_results`]) for `info`, metrics and alerts.

use strata_command::{format_bytes, now, who};
use strata_command::{Context_, OutputFormat};
use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use strata_messages::{hex, BackupRecord, ChunkId, ChunkRef, FileEntry, FileList, ManifestHead, PackId};
use strata_pg::page::{self, PageCheck};
use strata_pg::PAGE_SIZE;
use strata_pg::wal::{classify_wal_file, WalFileKind};
use strata_pg::Lsn;
use strata_repo::verify_results::{Problem, VerifyResult, WAL_SUBJECT};
use strata_repo::{pack, pack_path, DamagedRecord, Repo, RepoError};
use strata_seal::Sealer;

mod wal;

use wal::verify_wal;

/// Packs (or WAL files) fetched and checked at once: enough to overlap a request's latency with the
/// checking of another's bytes on two cores, few enough to bound memory (a pack is at most ~64 MiB).
const CONCURRENCY: usize = 3;

/// What one repository's verification found.
pub struct RepoReport {
    pub repo: String,
    pub backups: Vec<VerifyResult>,
    pub wal: Option<WalReport>,
}

impl RepoReport {
    pub fn problem_count(&self) -> u64 {
        self.backups.iter().map(|b| b.problem_count).sum::<u64>() + self.wal.as_ref().map_or(0, |w| w.result.problem_count)
    }
}

/// What a verification of the WAL archive found, and which files read back intact (so that a verifier
/// running every minute can skip them next time).
pub struct WalReport {
    pub result: VerifyResult,
    pub intact: Vec<String>,
}

/// What to verify in a repository.
pub struct Scope<'a> {
    /// These backups (and the WAL from the oldest one's start), or every backup and the whole archive.
    /// A chunk several of them share is read once.
    pub set: Option<&'a [String]>,
    /// Check the backups' chunks (false: only the WAL, from the backups' start).
    pub backups: bool,
    /// Check the WAL archive.
    pub wal: bool,
    /// WAL files already found intact: not read again (their presence is still checked).
    pub wal_known_intact: &'a std::collections::HashSet<String>,
    /// Store the results in the repository.
    pub store: bool,
}

/// Verifies the stanza's backups (or those `scope.set` names) and its WAL archive in `repo`, and stores the
/// results there (when `scope.store`).
pub async fn verify_repo(repo: &Repo, stanza: &str, scope: &Scope<'_>) -> anyhow::Result<RepoReport> {
    let info = repo.stanza(stanza).await?;
    let (all, all_damaged) = repo.backups_checked(stanza).await?;
    let (backups, damaged) = match scope.set {
        Some(labels) => {
            let (mut picked, mut damaged) = (Vec::with_capacity(labels.len()), Vec::new());
            for label in labels {
                match repo.backup(stanza, label).await {
                    Ok(r) => picked.push(r),
                    Err(RepoError::CorruptObject { path, reason }) => damaged.push(DamagedRecord { name: label.clone(), path, reason }),
                    Err(e) => return Err(e.into()),
                }
            }
            (picked, damaged)
        }
        None => (all.clone(), all_damaged),
    };
    let mut checked: HashMap<ChunkId, Option<String>> = HashMap::new();
    let mut results = Vec::new();
    // A record that cannot be read is a problem of its backup; the others are verified all the same.
    for d in damaged.iter().filter(|_| scope.backups) {
        let mut result = empty_result(&d.name, now());
        push(&mut result, Problem { backup: Some(d.name.clone()), ..problem(format!("the backup's record cannot be read: {d}")) });
        if scope.store {
            repo.put_verify_result(stanza, &result).await?;
        }
        results.push(result);
    }
    for record in backups.iter().filter(|_| scope.backups) {
        let result = verify_backup(repo, record, &mut checked).await;
        if scope.store {
            repo.put_verify_result(stanza, &result).await?;
        }
        results.push(result);
    }
    let wal = match scope.wal {
        false => None,
        true => {
            // Gaps are named with every backup they break, even when one backup is verified.
            let since = backups.iter().filter_map(|b| wal_segno(&b.summary.wal_start)).min();
            let report = verify_wal(repo, stanza, info.wal_segment_size, &all, since, scope.wal_known_intact).await?;
            if scope.store {
                repo.put_verify_result(stanza, &report.result).await?;
            }
            Some(report)
        }
    };
    Ok(RepoReport { repo: repo.name().to_string(), backups: results, wal })
}

/// The segment number in a segment's name, whatever the segment size: what orders the archive.
fn wal_segno(name: &str) -> Option<u64> {
    (classify_wal_file(name) == Some(WalFileKind::Segment)).then(|| name[8..24].to_string()).and_then(|h| u64::from_str_radix(&h, 16).ok())
}

fn problem(what: impl Into<String>) -> Problem {
    Problem { backup: None, file: None, more_files: 0, segment: None, chunk: None, pack: None, what: what.into() }
}

fn empty_result(subject: &str, time: i64) -> VerifyResult {
    VerifyResult {
        subject: subject.to_string(),
        time,
        duration_secs: 0.0,
        chunks: 0,
        stored_bytes: 0,
        plain_bytes: 0,
        pages_checked: 0,
        wal_files: 0,
        problem_count: 0,
        problems: Vec::new(),
        by: who(),
    }
}

fn push(result: &mut VerifyResult, p: Problem) {
    result.problem_count += 1;
    result.problems.push(p);
}

/// Where one piece of a file lies in a chunk.
#[derive(Clone, Copy)]
struct Use {
    file: u32,
    file_offset: u64,
    chunk_offset: u32,
    len: u32,
}

/// One backup's manifest, as far as it could be read, and which files use which chunk.
struct Plan {
    head: ManifestHead,
    files: Vec<FileEntry>,
    /// By chunk table index.
    uses: Vec<Vec<Use>>,
}

async fn verify_backup(
    repo: &Repo,
    record: &BackupRecord,
    checked: &mut HashMap<ChunkId, Option<String>>,
) -> VerifyResult {
    let started = Instant::now();
    let label = record.summary.label.clone();
    let mut result = empty_result(&label, now());
    let with_label = |mut p: Problem| {
        p.backup = Some(label.clone());
        p
    };
    let sealer = repo.sealer().clone();
    let head = match repo.manifest_head(&sealer, &label, record.manifest_len, &record.manifest_chunks).await {
        Ok(h) => h,
        Err(e) => {
            push(&mut result, with_label(problem(format!("the manifest cannot be read: {e}"))));
            result.duration_secs = started.elapsed().as_secs_f64();
            return result;
        }
    };
    result.chunks += record.manifest_chunks.len() as u64;
    let mut files = Vec::new();
    for r in &head.file_lists {
        match repo.read_chunk(&sealer, r).await {
            Ok(bytes) => match strata_messages::decode::<FileList>(&bytes) {
                Ok(list) => files.extend(list.files.iter().map(strata_messages::to_owned::<FileEntry>)),
                Err(e) => push(&mut result, with_label(chunk_problem(r, format!("file list cannot be decoded: {e}")))),
            },
            Err(e) => push(
                &mut result,
                with_label(chunk_problem(r, format!("a file list cannot be read, so the files it lists are not checked: {e}"))),
            ),
        }
        result.chunks += 1;
        result.stored_bytes += r.sealed_len as u64;
        result.plain_bytes += r.raw_len as u64;
    }
    let mut uses: Vec<Vec<Use>> = vec![Vec::new(); head.chunks.len()];
    for (i, f) in files.iter().enumerate() {
        let mut off = 0u64;
        for p in &f.pieces {
            if !p.is_zero() {
                match uses.get_mut(p.chunk as usize) {
                    Some(u) => u.push(Use { file: i as u32, file_offset: off, chunk_offset: p.offset, len: p.len }),
                    None => push(
                        &mut result,
                        with_label(Problem {
                            file: Some(f.path.clone()),
                            ..problem(format!("points at chunk {} of a table of {}", p.chunk, head.chunks.len()))
                        }),
                    ),
                }
            }
            off += p.len as u64;
        }
    }
    let plan = Arc::new(Plan { head, files, uses });
    // Chunks to read, by pack; chunks already checked in this run only have their outcome repeated.
    let mut by_pack: BTreeMap<PackId, Vec<u32>> = BTreeMap::new();
    for (i, c) in plan.head.chunks.iter().enumerate() {
        if plan.uses[i].is_empty() || c.is_unknown() {
            continue;
        }
        match checked.get(&c.id) {
            Some(None) => {}
            Some(Some(why)) => {
                let why = why.clone();
                push(&mut result, with_label(use_problem(&plan, i, c, why)));
            }
            None => by_pack.entry(c.pack).or_default().push(i as u32),
        }
    }
    let checks = futures::stream::iter(by_pack.into_iter().map(|(pack_id, chunks)| {
        let (repo, plan, sealer) = (repo.clone(), plan.clone(), sealer.clone());
        async move { check_pack(&repo, &sealer, plan, pack_id, chunks, Lsn(record.summary.start_lsn)).await }
    }))
    .buffer_unordered(CONCURRENCY);
    futures::pin_mut!(checks);
    while let Some(outcome) = checks.next().await {
        result.chunks += outcome.chunks;
        result.stored_bytes += outcome.stored_bytes;
        result.plain_bytes += outcome.plain_bytes;
        result.pages_checked += outcome.pages_checked;
        for (id, bad) in outcome.outcomes {
            checked.insert(id, bad);
        }
        for p in outcome.problems {
            push(&mut result, with_label(p));
        }
    }
    result.duration_secs = started.elapsed().as_secs_f64();
    result
}

fn chunk_problem(r: &ChunkRef, what: String) -> Problem {
    Problem { chunk: Some(hex(&r.id)), pack: Some(hex(&r.pack)), ..problem(what) }
}

/// A damaged chunk, named by the first file that uses it.
fn use_problem(plan: &Plan, index: usize, r: &ChunkRef, what: String) -> Problem {
    let uses = &plan.uses[index];
    let mut files: Vec<u32> = uses.iter().map(|u| u.file).collect();
    files.dedup();
    Problem {
        file: files.first().map(|f| plan.files[*f as usize].path.clone()),
        more_files: files.len().saturating_sub(1) as u64,
        ..chunk_problem(r, what)
    }
}

#[derive(Default)]
struct PackOutcome {
    chunks: u64,
    stored_bytes: u64,
    plain_bytes: u64,
    pages_checked: u64,
    problems: Vec<Problem>,
    /// Each chunk checked, and why it is bad (`None`: good).
    outcomes: Vec<(ChunkId, Option<String>)>,
}

async fn check_pack(repo: &Repo, sealer: &Sealer, plan: Arc<Plan>, pack_id: PackId, chunks: Vec<u32>, start_lsn: Lsn) -> PackOutcome {
    let mut out = PackOutcome::default();
    let bytes = match repo.storage().get(&pack_path(&pack_id)).await {
        Ok(b) => b,
        Err(e) => {
            let why = if e.is_not_found() { "the pack is missing".to_string() } else { format!("the pack cannot be read: {e}") };
            // One problem per file that loses data, not per chunk: a missing pack takes whole files with it.
            let mut per_file: BTreeMap<u32, ChunkRef> = BTreeMap::new();
            for &i in &chunks {
                let r = plan.head.chunks[i as usize];
                for u in &plan.uses[i as usize] {
                    per_file.entry(u.file).or_insert(r);
                }
                out.outcomes.push((r.id, Some(why.clone())));
            }
            for (f, r) in per_file {
                out.problems.push(Problem { file: Some(plan.files[f as usize].path.clone()), ..chunk_problem(&r, why.clone()) });
            }
            return out;
        }
    };
    let sealer = sealer.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(why) = pack_index_problem(&pack_id, &bytes) {
            let first = chunks[0] as usize;
            out.problems.push(Problem { chunk: None, ..use_problem(&plan, first, &plan.head.chunks[first], why) });
        }
        // A backup of a few GB may sit in one or two packs: its chunks are checked on every core. Each
        // thread takes the next unchecked chunk, so they finish together although chunks differ in cost
        // (a chunk of empty pages decompresses several times faster than one of rows).
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(chunks.len().div_ceil(8)).max(1);
        let next = AtomicUsize::new(0);
        let parts: Vec<PackOutcome> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..threads).map(|_| scope.spawn(|| check_chunks(&plan, &sealer, &bytes, &chunks, &next, start_lsn))).collect();
            handles.into_iter().map(|h| h.join().expect("chunk check panicked")).collect()
        });
        for p in parts {
            out.chunks += p.chunks;
            out.stored_bytes += p.stored_bytes;
            out.plain_bytes += p.plain_bytes;
            out.pages_checked += p.pages_checked;
            out.problems.extend(p.problems);
            out.outcomes.extend(p.outcomes);
        }
        out
    })
    .await
    .expect("pack check panicked")
}

/// Unseals and checks a pack's chunks (table indices `chunks`), and their pages: the next one `next` hands
/// out, until none is left.
fn check_chunks(plan: &Plan, sealer: &Sealer, bytes: &[u8], chunks: &[u32], next: &AtomicUsize, start_lsn: Lsn) -> PackOutcome {
    let mut out = PackOutcome::default();
    let mut plain = Vec::new();
    while let Some(&i) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
        let r = plan.head.chunks[i as usize];
        out.chunks += 1;
        out.stored_bytes += r.sealed_len as u64;
        let end = r.offset + r.sealed_len as u64;
        let bad = if end > bytes.len() as u64 {
            Some(format!("the pack is truncated: it has {} bytes, the chunk ends at byte {end}", bytes.len()))
        } else {
            match sealer.unseal_into(&bytes[r.offset as usize..end as usize], &r.id, &mut plain) {
                Ok(()) => None,
                Err(e) => Some(format!("the chunk does not read back: {e}")),
            }
        };
        if let Some(why) = &bad {
            out.problems.push(use_problem(plan, i as usize, &r, why.clone()));
            out.outcomes.push((r.id, bad));
            continue;
        }
        out.plain_bytes += plain.len() as u64;
        out.outcomes.push((r.id, None));
        if plan.head.data_checksums {
            check_pages(plan, i as usize, &r, &plain, start_lsn, &mut out);
        }
    }
    out
}

/// The pack's own index and footer must still parse and match their hash (restore does not need them,
/// but expire and the replicator do, and damage there is damage all the same).
fn pack_index_problem(id: &PackId, bytes: &[u8]) -> Option<String> {
    let size = bytes.len();
    if size < pack::FOOTER_LEN {
        return Some(format!("the pack is truncated to {size} bytes (no footer)"));
    }
    let (count, digest) = match pack::parse_footer(&bytes[size - pack::FOOTER_LEN..]) {
        Ok(f) => f,
        Err(e) => return Some(format!("the pack's footer is damaged (truncated?): {e}")),
    };
    let index_len = count as usize * pack::INDEX_ENTRY_LEN;
    if index_len + pack::FOOTER_LEN > size {
        return Some(format!("the pack's index of {count} entries does not fit in its {size} bytes"));
    }
    let start = size - pack::FOOTER_LEN - index_len;
    pack::parse_index(id, &bytes[start..size - pack::FOOTER_LEN], &digest, start as u64)
        .err()
        .map(|e| format!("the pack's index is damaged: {e}"))
}

/// Checks the PostgreSQL checksum of every whole relation page the chunk holds for some file. A mismatch
/// on a page whose LSN is at or after the backup's start is not corruption: the page was being written
/// while it was copied, and WAL replay rewrites it from a full-page image.
fn check_pages(plan: &Plan, index: usize, r: &ChunkRef, plain: &[u8], start_lsn: Lsn, out: &mut PackOutcome) {
    for u in &plan.uses[index] {
        let f = &plan.files[u.file as usize];
        if f.page_hashes.is_empty() || !u.file_offset.is_multiple_of(PAGE_SIZE as u64) {
            continue;
        }
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        let Some(rel) = strata_pg::datadir::parse_relation_file_name(name) else { continue };
        let start = u.chunk_offset as usize;
        let Some(bytes) = plain.get(start..start + u.len as usize) else {
            out.problems.push(use_problem(plan, index, r, format!("a piece of {} lies outside its chunk", f.path)));
            continue;
        };
        for (k, pg) in bytes.chunks_exact(PAGE_SIZE).enumerate() {
            let blkno = page::block_number(rel.segno, (u.file_offset / PAGE_SIZE as u64) as u32 + k as u32);
            out.pages_checked += 1;
            if let PageCheck::Mismatch { stored, computed } = page::verify(pg, blkno) {
                if page::page_lsn(pg) < start_lsn {
                    out.problems.push(Problem {
                        file: Some(f.path.clone()),
                        more_files: 0,
                        ..chunk_problem(
                            r,
                            format!("page checksum mismatch in block {blkno} (stored {stored:#06x}, computed {computed:#06x}, LSN {})", page::page_lsn(pg)),
                        )
                    });
                }
            }
        }
    }
}

/// What an undamaged verification covered (for the audit log).
pub struct Verified {
    pub repositories: usize,
    pub backups: usize,
    pub wal_files: u64,
    pub stored_bytes: u64,
}

impl strata_command::audit::AuditDetails for Verified {
    fn audit_details(&self) -> Option<serde_json::Value> {
        Some(json!({ "repositories": self.repositories, "backups": self.backups, "wal_files": self.wal_files, "stored_bytes": self.stored_bytes, "problems": 0 }))
    }
}

/// `strata verify`: every repository (or the one `--repo` names), all backups or one.
pub async fn run(ctx: &Context_, set: Option<&str>, output: OutputFormat, all_repos: bool) -> anyhow::Result<Verified> {
    let mut repos = vec![ctx.repo.clone()];
    if all_repos {
        for rc in ctx.cfg.repo.iter().filter(|r| r.name != ctx.repo.name()) {
            repos.push(strata_runtime::open_repo(&ctx.cfg, rc).await?);
        }
    }
    let started = Instant::now();
    let mut reports = Vec::new();
    let none = std::collections::HashSet::new();
    let labels: Option<Vec<String>> = set.map(|l| vec![l.to_string()]);
    let scope = Scope { set: labels.as_deref(), backups: true, wal: true, wal_known_intact: &none, store: true };
    for repo in &repos {
        let report = verify_repo(repo, &ctx.stanza, &scope).await.with_context(|| format!("repository '{}'", repo.name()))?;
        if output == OutputFormat::Text {
            print_text(&report);
        }
        reports.push(report);
    }
    let total: u64 = reports.iter().map(RepoReport::problem_count).sum();
    if output == OutputFormat::Json {
        let doc: Vec<_> = reports
            .iter()
            .map(|r| json!({ "repo": r.repo, "stanza": ctx.stanza, "backups": r.backups, "wal": r.wal.as_ref().map(|w| &w.result), "problem_count": r.problem_count() }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("verify: {} problems in {:.1} s", total, started.elapsed().as_secs_f64());
    }
    if total > 0 {
        let damaged: Vec<String> =
            reports.iter().filter(|r| r.problem_count() > 0).map(|r| format!("'{}' ({})", r.repo, r.problem_count())).collect();
        anyhow::bail!(VerifyFailed(format!("verify found {total} problems in repository {}", damaged.join(", "))));
    }
    let results = || reports.iter().flat_map(|r| r.backups.iter().chain(r.wal.as_ref().map(|w| &w.result)));
    Ok(Verified {
        repositories: reports.len(),
        backups: reports.iter().map(|r| r.backups.len()).max().unwrap_or(0),
        wal_files: results().map(|v| v.wal_files).sum(),
        stored_bytes: results().map(|v| v.stored_bytes).sum(),
    })
}

/// The error `verify` ends with when it found damage (the problems themselves are printed above it).
#[derive(Debug)]
pub struct VerifyFailed(pub String);

impl std::fmt::Display for VerifyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VerifyFailed {}

fn print_text(report: &RepoReport) {
    for b in report.backups.iter().chain(report.wal.as_ref().map(|w| &w.result)) {
        let what = if b.subject == WAL_SUBJECT { "wal archive".to_string() } else { format!("backup {}", b.subject) };
        let counts = if b.subject == WAL_SUBJECT {
            format!("{} files, {} stored", b.wal_files, format_bytes(b.stored_bytes))
        } else {
            format!("{} chunks, {} stored, {} pages checked", b.chunks, format_bytes(b.stored_bytes), b.pages_checked)
        };
        let state = if b.ok() { "ok".to_string() } else { format!("{} PROBLEMS", b.problem_count) };
        println!("repository '{}' {what}: {state} ({counts}, {:.1} s)", report.repo, b.duration_secs);
        for p in &b.problems {
            println!("    {p}");
        }
    }
}
