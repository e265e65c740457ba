//! A full restore's file writer: every file of the backup, written whole into a directory tree the
//! [`crate::tree`] writer has laid out (and that was checked empty).
//!
//! Work is cut into units of about [`UNIT_BYTES`], not whole files, so one 1 GB relation segment is
//! restored by every worker at once instead of being the critical path of one. A unit creates its file if
//! no other unit did yet (the workers, not the caller, so creating many small files is parallel too),
//! assembles its range in an aligned buffer and writes it in place with one direct write (see
//! [`strata_directio`]); whoever finishes a file's last unit sets its metadata and fsyncs it. An empty file
//! is one unit of no pieces. Every chunk is checked against its content address as it is unsealed.

use crate::tree::{set_file_metadata, TreeWriter};
use crate::workers::join_workers;
use anyhow::{anyhow, bail, Context};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use strata_command::{progress, Context_};
use strata_directio::{AlignedBuf, OutFile};
use strata_messages::{hex, ChunkRef, FileEntry, FileKind, Manifest, Piece};
use strata_repo::Repo;
use strata_seal::Sealer;
use tokio::task::JoinSet;

/// Units restored at once; each worker holds one sealed chunk, one unsealed chunk and one unit's bytes.
const RESTORE_WORKERS: usize = 4;
/// Bytes per unit of restore work (a unit may run over by one piece).
const UNIT_BYTES: u64 = 8 * 1024 * 1024;

/// What a full restore wrote.
pub(crate) struct Written {
    pub files: usize,
    pub bytes: u64,
}

/// A range of one file's pieces, restored by one worker.
struct Unit {
    file: usize,
    first: usize,
    count: usize,
    /// Where the range starts in the file.
    offset: u64,
}

/// What the workers share.
struct Job {
    root: PathBuf,
    as_root: bool,
    files: Vec<FileEntry>,
    chunks: Vec<ChunkRef>,
    units: Vec<Unit>,
    /// Units of each file not yet written: the worker that writes the last one finishes the file.
    remaining: Vec<AtomicUsize>,
    /// The next unit to take.
    next: AtomicUsize,
    /// The largest chunk's plain length: each worker's buffers are sized for it.
    chunk_len: usize,
    progress: Box<dyn Fn(u64) + Send + Sync>,
}

/// Writes every file of the backup under the tree's root, with a progress bar named after the backup.
pub(crate) async fn write_files(
    ctx: &Context_,
    tree: &TreeWriter,
    manifest: &Manifest,
    sealer: &Sealer,
    label: &str,
) -> anyhow::Result<Written> {
    let files: Vec<FileEntry> = manifest.files.iter().filter(|e| e.kind == FileKind::File).cloned().collect();
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = progress::bytes_bar(&format!("restore {label}"));
    bar.set_length(total);
    let (units, remaining) = cut_into_units(&files);
    let chunks = manifest.head.chunks.clone();
    let job = Arc::new(Job {
        root: tree.root().to_path_buf(),
        as_root: tree.as_root(),
        chunk_len: chunks.iter().map(|c| c.raw_len as usize).max().unwrap_or(0),
        files,
        chunks,
        units,
        remaining,
        next: AtomicUsize::new(0),
        progress: Box::new({
            let bar = bar.clone();
            move |n| bar.inc(n)
        }),
    });
    let mut workers = JoinSet::new();
    for _ in 0..RESTORE_WORKERS {
        workers.spawn(run_worker(job.clone(), ctx.repo.clone(), sealer.clone()));
    }
    join_workers(workers).await?;
    bar.finish_and_clear();
    Ok(Written { files: job.files.len(), bytes: total })
}

/// The units of every file, and how many each file has.
fn cut_into_units(files: &[FileEntry]) -> (Vec<Unit>, Vec<AtomicUsize>) {
    let mut units = Vec::new();
    let mut remaining = Vec::with_capacity(files.len());
    for (i, e) in files.iter().enumerate() {
        if e.pieces.is_empty() {
            units.push(Unit { file: i, first: 0, count: 0, offset: 0 });
            remaining.push(AtomicUsize::new(1));
            continue;
        }
        let (mut offset, mut n, mut first, mut bytes) = (0u64, 0, 0, 0u64);
        for (k, piece) in e.pieces.iter().enumerate() {
            bytes += piece.len as u64;
            if bytes >= UNIT_BYTES || k + 1 == e.pieces.len() {
                units.push(Unit { file: i, first, count: k + 1 - first, offset });
                offset += bytes;
                (first, bytes, n) = (k + 1, 0, n + 1);
            }
        }
        remaining.push(AtomicUsize::new(n));
    }
    (units, remaining)
}

/// A worker's buffers, allocated once: a chunk unsealed (large enough for any chunk) and the unit being
/// assembled (large enough for any unit). They move into each blocking task and back.
struct Buffers {
    plain: AlignedBuf,
    staged: AlignedBuf,
    /// Whose content `plain` holds.
    cached: Option<[u8; 32]>,
}

async fn run_worker(job: Arc<Job>, repo: Repo, sealer: Sealer) -> anyhow::Result<()> {
    let mut bufs = Buffers {
        plain: AlignedBuf::new(job.chunk_len),
        staged: AlignedBuf::new(UNIT_BYTES as usize + job.chunk_len),
        cached: None,
    };
    while let Some(unit) = job.units.get(job.next.fetch_add(1, Ordering::Relaxed)) {
        let e = &job.files[unit.file];
        // An incremental's file alternates between pieces of its reference's chunks and of its own (one
        // changed page here, the unchanged rest of the reference's chunk there): fetching per piece would
        // decompress a whole chunk for every 8 KiB page. So each chunk the unit uses is fetched and
        // unsealed once, and all its pieces copied from it.
        for run in group_by_chunk(&e.pieces[unit.first..unit.first + unit.count], unit.offset) {
            bufs = stage_run(&job, &repo, &sealer, e, unit.offset, &run, bufs).await?;
            (job.progress)(run.writes.iter().map(|w| w.len as u64).sum());
        }
        bufs = write_unit(&job, unit, bufs).await?;
    }
    Ok(())
}

/// Copies one chunk's pieces into the unit's buffer (zeros for [`strata_messages::ZERO_CHUNK`]).
async fn stage_run(
    job: &Job,
    repo: &Repo,
    sealer: &Sealer,
    e: &FileEntry,
    unit_at: u64,
    run: &ChunkRun,
    mut bufs: Buffers,
) -> anyhow::Result<Buffers> {
    if run.chunk == strata_messages::ZERO_CHUNK {
        for w in &run.writes {
            let at = (w.at - unit_at) as usize;
            bufs.staged[at..at + w.len].fill(0);
        }
        return Ok(bufs);
    }
    let r = *job.chunks.get(run.chunk as usize).ok_or_else(|| {
        anyhow!("restoring {}: a piece points at chunk {} of a {}-chunk table", e.path, run.chunk, job.chunks.len())
    })?;
    if run.writes.iter().any(|w| w.from + w.len > r.raw_len as usize) {
        bail!("restoring {}: a piece runs past the end of chunk {}", e.path, hex(&r.id));
    }
    // A whole chunk (every piece of a full backup's relation file) is unsealed straight into place.
    let whole = matches!(run.writes[..], [Write_ { from: 0, len, .. }] if len == r.raw_len as usize);
    let sealed = match bufs.cached == Some(r.id) && !whole {
        true => None,
        false => Some(repo.read_sealed(&r).await.with_context(|| format!("restoring {}", e.path))?),
    };
    // Decompressing and hashing are blocking work: keep them off the runtime's threads.
    let (sealer, rel, writes) = (sealer.clone(), e.path.clone(), run.writes.clone());
    let Buffers { mut plain, mut staged, cached } = bufs;
    (plain, staged) = tokio::task::spawn_blocking(move || -> anyhow::Result<(AlignedBuf, AlignedBuf)> {
        let unseal = |sealed: &[u8], out: &mut [u8]| {
            sealer
                .unseal_into_slice(sealed, &r.id, out)
                .map_err(|source| anyhow!("restoring {rel}: chunk {} (pack {}): {source}", hex(&r.id), hex(&r.pack)))
        };
        if whole {
            let at = (writes[0].at - unit_at) as usize;
            unseal(&sealed.expect("fetched"), &mut staged[at..])?;
            return Ok((plain, staged));
        }
        if let Some(sealed) = sealed {
            unseal(&sealed, &mut plain)?;
        }
        for w in &writes {
            let at = (w.at - unit_at) as usize;
            staged[at..at + w.len].copy_from_slice(&plain[w.from..w.from + w.len]);
        }
        Ok((plain, staged))
    })
    .await
    .map_err(|join| anyhow!("restoring {}: {join}", e.path))??;
    Ok(Buffers { plain, staged, cached: if whole { cached } else { Some(r.id) } })
}

/// Writes a staged unit in place, creating the file if no other unit did; the last unit of a file gives it
/// its metadata and fsyncs it.
async fn write_unit(job: &Arc<Job>, unit: &Unit, bufs: Buffers) -> anyhow::Result<Buffers> {
    let e = &job.files[unit.file];
    let len: u64 = e.pieces[unit.first..unit.first + unit.count].iter().map(|p| p.len as u64).sum();
    let (job_c, file_no, at) = (job.clone(), unit.file, unit.offset);
    let Buffers { plain, staged, cached } = bufs;
    let staged = tokio::task::spawn_blocking(move || -> anyhow::Result<AlignedBuf> {
        let e = &job_c.files[file_no];
        let path = job_c.root.join(&e.path);
        let mut f = OutFile::open_shared(&path, e.size).with_context(|| format!("cannot create {}", path.display()))?;
        f.write_at(&staged[..len as usize], at).with_context(|| format!("cannot write {}", path.display()))?;
        if job_c.remaining[file_no].fetch_sub(1, Ordering::AcqRel) == 1 {
            set_file_metadata(&f.into_file(), &path, e, job_c.as_root, true)?;
        }
        Ok(staged)
    })
    .await
    .map_err(|join| anyhow!("writing {}: {join}", e.path))??;
    Ok(Buffers { plain, staged, cached })
}

/// One contiguous write: `len` bytes from offset `from` of a chunk, to offset `at` of the file.
#[derive(Debug, PartialEq, Clone)]
struct Write_ {
    from: usize,
    at: u64,
    len: usize,
}

/// Everything a unit writes from one chunk (or, for [`strata_messages::ZERO_CHUNK`], as zeros).
#[derive(Debug, PartialEq)]
struct ChunkRun {
    chunk: u32,
    writes: Vec<Write_>,
}

/// The pieces of a file range starting at `offset`, grouped by chunk in order of first use, with pieces
/// that follow each other in both the chunk and the file merged into one write.
fn group_by_chunk(pieces: &[Piece], mut offset: u64) -> Vec<ChunkRun> {
    let mut runs: Vec<ChunkRun> = Vec::new();
    let mut index: HashMap<u32, usize> = HashMap::new();
    for p in pieces {
        let i = *index.entry(p.chunk).or_insert_with(|| {
            runs.push(ChunkRun { chunk: p.chunk, writes: Vec::new() });
            runs.len() - 1
        });
        let writes = &mut runs[i].writes;
        match writes.last_mut() {
            Some(w) if w.at + w.len as u64 == offset && (p.is_zero() || w.from + w.len == p.offset as usize) => {
                w.len += p.len as usize
            }
            _ => writes.push(Write_ { from: p.offset as usize, at: offset, len: p.len as usize }),
        }
        offset += p.len as u64;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_grouped_by_chunk_and_merged() {
        use strata_messages::ZERO_CHUNK;
        let p = |chunk, offset, len| Piece { chunk, offset, len };
        // A reference chunk 0 with pages 1 and 3 replaced from chunk 1, then a zero page.
        let pieces = [p(0, 0, 8), p(1, 0, 8), p(0, 16, 8), p(1, 8, 8), p(ZERO_CHUNK, 0, 8), p(ZERO_CHUNK, 0, 8)];
        let w = |from, at, len| Write_ { from, at, len };
        assert_eq!(
            group_by_chunk(&pieces, 100),
            vec![
                ChunkRun { chunk: 0, writes: vec![w(0, 100, 8), w(16, 116, 8)] },
                ChunkRun { chunk: 1, writes: vec![w(0, 108, 8), w(8, 124, 8)] },
                ChunkRun { chunk: ZERO_CHUNK, writes: vec![w(0, 132, 16)] },
            ]
        );
    }
}
