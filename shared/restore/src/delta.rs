//! `restore --delta`: brings an existing, stopped data directory to a backup's contents by rewriting only
//! what differs, so that restoring over a copy one checkpoint behind reads and writes a fraction of a
//! full restore.
//!
//! # Deciding what differs: content, never timestamps
//! - Relation files: the manifest holds a 64-bit hash of every page, computed by the collector while it
//!   read the file in `chunk_size` buffers (`strata_seal::page_hash::hash_buffer`, whose page hashes
//!   depend on a page's offset in its buffer). The local file is read in buffers of the same size at the
//!   same offsets and hashed with the same function, so equal pages hash equal; only pages whose hash
//!   differs are fetched and written. The chunk size is taken from the manifest's chunk table (its
//!   largest chunk, rounded up to a page); were it wrong, pages would only look changed and be
//!   rewritten, never the reverse.
//! - Other files: piece by piece. A piece that is a whole stored chunk is compared by hashing the local
//!   bytes against the chunk's id (its BLAKE3 hash); a part of a chunk (small files share chunks) is
//!   compared against the chunk's bytes, fetched once per chunk; zeros against zeros.
//!
//! A file the backup lacks is removed (so is the WAL in `pg_wal`, which recovery must take from the
//! archive, not from a newer or diverged past); a file the directory lacks is written whole. Every file
//! gets the backup's size, mode and mtime; a file that was written to is fsynced.
//!
//! The server must be stopped: a directory with `postmaster.pid` is refused, as pgBackRest does. And it
//! must be the stanza's cluster ([`check_cluster`]): another cluster's directory, or another major
//! version's, is refused before anything in it is touched, never turned into a copy of the backup.

use crate::tree::{set_file_metadata, TablespaceDirs, TreeWriter};
use crate::workers::join_workers;
use strata_command::Context_;
use anyhow::{anyhow, bail, Context};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use strata_messages::{ChunkRef, FileEntry, FileKind, Manifest, Piece};
use strata_pg::datadir::CONTROL_FILE;
use strata_pg::PAGE_SIZE;
use strata_repo::StanzaInfo;
use strata_seal::Sealer;

const WORKERS: usize = 4;
/// Buffers per unit of work in a relation file.
const UNIT_BUFFERS: u64 = 16;

/// What a delta restore did.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    /// Bytes of the backup's files.
    pub total: u64,
    /// Bytes read from the local files to compare them.
    pub read: u64,
    /// Plain bytes of the chunks fetched from the repository.
    pub fetched: u64,
    pub written: u64,
    /// Files written to, created or resized.
    pub rewritten: usize,
}

/// Whether `dir` holds a data directory a delta restore may rewrite; `false` when it is missing or empty
/// (an ordinary restore). Refuses a running server's directory and a non-empty directory that is not a
/// data directory.
pub fn is_data_directory(dir: &Path) -> anyhow::Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Ok(false);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => bail!("cannot read {}: {e}", dir.display()),
    }
    if !dir.join("PG_VERSION").is_file() {
        bail!("{} is not empty and holds no PostgreSQL data directory (no PG_VERSION); --delta only rewrites a data directory", dir.display());
    }
    if dir.join("postmaster.pid").exists() {
        bail!(
            "{} has a postmaster.pid: stop PostgreSQL first (remove the file if no server runs on it)",
            dir.display()
        );
    }
    Ok(true)
}

/// Refuses a data directory that is not of the stanza's cluster: its `PG_VERSION` must name the stanza's
/// major version and its `global/pg_control` the stanza's system identifier. Reads only; run before
/// anything is written, so a refused directory is left as it was.
pub fn check_cluster(dir: &Path, stanza: &StanzaInfo) -> anyhow::Result<()> {
    let refuse = |why: String| {
        anyhow!(
            "{} {why}; --delta rewrites only a stopped data directory of the cluster of stanza '{}' (restore into an empty directory instead)",
            dir.display(),
            stanza.stanza
        )
    };
    let text = fs::read(dir.join("PG_VERSION")).map_err(|e| refuse(format!("has an unreadable PG_VERSION ({e})")))?;
    let major = strata_pg::version::major_from_pg_version_file(&String::from_utf8_lossy(&text))
        .ok_or_else(|| refuse(format!("has a PG_VERSION that names no PostgreSQL version ({:?})", String::from_utf8_lossy(&text).trim())))?;
    if major != stanza.pg_major {
        return Err(refuse(format!("holds PostgreSQL {major} (PG_VERSION), but stanza '{}' is PostgreSQL {}", stanza.stanza, stanza.pg_major)));
    }
    let control = match fs::read(dir.join(CONTROL_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(refuse(format!("has no {CONTROL_FILE}"))),
        Err(e) => return Err(refuse(format!("has an unreadable {CONTROL_FILE} ({e})"))),
    };
    let head = strata_pg::control::parse_head(&control, major).map_err(|e| refuse(format!("has a damaged or foreign {CONTROL_FILE}: {e}")))?;
    if head.system_id != stanza.system_id {
        return Err(refuse(format!(
            "holds database system {} ({CONTROL_FILE}), but stanza '{}' is system {}",
            head.system_id, stanza.stanza, stanza.system_id
        )));
    }
    Ok(())
}

/// One range of one file to compare and rewrite.
struct Unit {
    file: usize,
    start: u64,
    end: u64,
}

/// Per-file state shared by its units.
struct FileState {
    /// The file was created (or emptied) by this restore: nothing to compare, write every piece.
    fresh: bool,
    /// Relation file whose page hashes can be compared.
    pages: bool,
    /// Start offset in the file of each piece.
    piece_starts: Vec<u64>,
    remaining: AtomicUsize,
    changed: AtomicBool,
}

struct Counters {
    read: AtomicU64,
    fetched: AtomicU64,
    written: AtomicU64,
}

/// Removes what the backup does not have, or has as another kind of entry, from the data directory at
/// `root` and the tablespace directories; how many files and directories were removed.
pub(crate) fn remove_extra_entries(root: &Path, manifest: &Manifest, tablespace_dirs: &TablespaceDirs) -> anyhow::Result<usize> {
    let entries: HashMap<&str, &FileEntry> = manifest.files.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut trees = vec![(root.to_path_buf(), String::new())];
    for (link, dir) in tablespace_dirs {
        if dir.is_dir() {
            trees.push((dir.clone(), format!("{link}/")));
        }
    }
    let mut removed = 0;
    for (dir, prefix) in &trees {
        remove_extra(dir, prefix, &entries, tablespace_dirs, &mut removed)?;
    }
    Ok(removed)
}

/// Brings every file of the backup up to date under the tree's root, whose directories and links are
/// already written.
pub(crate) async fn write_files(ctx: &Context_, tree: &TreeWriter, manifest: &Manifest, sealer: &Sealer) -> anyhow::Result<Report> {
    let (root, as_root) = (tree.root().to_path_buf(), tree.as_root());
    let mut report = Report::default();
    let files: Vec<FileEntry> = manifest.files.iter().filter(|e| e.kind == FileKind::File).cloned().collect();
    let buffer = buffer_size(manifest);
    let (units, states) = size_and_cut(&root, &files, buffer)?;
    report.files = files.len();
    report.total = files.iter().map(|f| f.size).sum();

    let files = Arc::new(files);
    let states = Arc::new(states);
    let units = Arc::new(units);
    let chunks = Arc::new(manifest.head.chunks.clone());
    let counters = Arc::new(Counters { read: AtomicU64::new(0), fetched: AtomicU64::new(0), written: AtomicU64::new(0) });
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (files, states, units, chunks, counters, next) =
            (files.clone(), states.clone(), units.clone(), chunks.clone(), counters.clone(), next.clone());
        let (repo, root, sealer) = (ctx.repo.clone(), root.clone(), sealer.clone());
        workers.spawn(async move {
            let mut fetcher = Fetcher { repo, sealer, chunks, cached: Vec::new(), counters: counters.clone() };
            loop {
                let Some(unit) = units.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let (e, st) = (&files[unit.file], &states[unit.file]);
                let path = root.join(&e.path);
                let f = OpenOptions::new().read(true).write(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
                let wrote = rewrite_unit(&f, &path, e, st, unit, buffer, &mut fetcher, &counters).await?;
                if wrote {
                    st.changed.store(true, Ordering::Relaxed);
                }
                if st.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // A file whose content is unchanged may differ only in its metadata: nothing to sync.
                    let changed = st.changed.load(Ordering::Relaxed);
                    tokio::task::block_in_place(|| set_file_metadata(&f, &path, e, as_root, changed))?;
                }
            }
        });
    }
    join_workers(workers).await?;
    report.read = counters.read.load(Ordering::Relaxed);
    report.fetched = counters.fetched.load(Ordering::Relaxed);
    report.written = counters.written.load(Ordering::Relaxed);
    report.rewritten = states.iter().filter(|s| s.changed.load(Ordering::Relaxed)).count();
    Ok(report)
}

/// Creates the missing files, gives every file its size, and cuts the comparing into units.
fn size_and_cut(root: &Path, files: &[FileEntry], buffer: u64) -> anyhow::Result<(Vec<Unit>, Vec<FileState>)> {
    let mut units = Vec::new();
    let mut states = Vec::with_capacity(files.len());
    for (i, e) in files.iter().enumerate() {
        let path = root.join(&e.path);
        // A file cut or extended here is changed even if no byte of it is written later.
        let (fresh, resized) = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {
                if m.len() != e.size {
                    let f = OpenOptions::new().write(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
                    f.set_len(e.size).with_context(|| format!("cannot resize {}", path.display()))?;
                }
                (false, m.len() != e.size)
            }
            _ => {
                let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
                f.set_len(e.size).with_context(|| format!("cannot size {}", path.display()))?;
                (true, true)
            }
        };
        let pages = e.size.is_multiple_of(PAGE_SIZE as u64) && e.page_hashes.len() as u64 == e.size / PAGE_SIZE as u64 && e.size > 0;
        let mut piece_starts = Vec::with_capacity(e.pieces.len());
        let mut at = 0u64;
        for p in &e.pieces {
            piece_starts.push(at);
            at += p.len as u64;
        }
        let before = units.len();
        if pages {
            let step = buffer * UNIT_BUFFERS;
            let mut start = 0;
            while start < e.size {
                units.push(Unit { file: i, start, end: (start + step).min(e.size) });
                start += step;
            }
        } else {
            units.push(Unit { file: i, start: 0, end: e.size });
        }
        states.push(FileState {
            fresh,
            pages,
            piece_starts,
            remaining: AtomicUsize::new(units.len() - before),
            changed: AtomicBool::new(resized),
        });
    }
    Ok((units, states))
}

/// The collector's read buffer size, as the manifest shows it (see the module docs).
fn buffer_size(manifest: &Manifest) -> u64 {
    let largest = manifest.head.chunks.iter().map(|c| c.raw_len as u64).max().unwrap_or(0);
    largest.div_ceil(PAGE_SIZE as u64).max(1) * PAGE_SIZE as u64
}

/// Removes, under `dir` (whose entries are at `prefix` in the manifest), everything the manifest does not
/// have as the same kind of entry.
fn remove_extra(
    dir: &Path,
    prefix: &str,
    entries: &HashMap<&str, &FileEntry>,
    tablespace_dirs: &HashMap<String, PathBuf>,
    removed: &mut usize,
) -> anyhow::Result<()> {
    let mut keep_dirs = HashSet::new();
    for de in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let de = de?;
        let name = de.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        let path = de.path();
        let ft = de.file_type()?;
        let wanted = entries.get(rel.as_str()).map(|e| e.kind);
        let same = match wanted {
            Some(FileKind::File) => ft.is_file(),
            Some(FileKind::Directory) => ft.is_dir(),
            Some(FileKind::Symlink) => {
                ft.is_symlink() && tablespace_dirs.get(&rel).is_none_or(|t| fs::read_link(&path).ok().as_ref() == Some(t))
            }
            None => false,
        };
        if same {
            if ft.is_dir() {
                keep_dirs.insert(path);
            }
            continue;
        }
        if ft.is_dir() {
            fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        } else {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        *removed += 1;
    }
    for d in keep_dirs {
        let rel = d.strip_prefix(dir).expect("child").to_string_lossy().into_owned();
        remove_extra(&d, &format!("{prefix}{rel}/"), entries, tablespace_dirs, removed)?;
    }
    Ok(())
}

/// Chunks each delta worker keeps unsealed. An incremental's file alternates between its reference's
/// chunks and its own (a changed page here, the reference's unchanged rest there), one chunk per backup of
/// the chain: keeping only the last chunk would decompress a whole chunk for every changed page.
const CACHED_CHUNKS: usize = 8;

/// Fetches chunks for one worker, keeping the last few used (most recent first).
struct Fetcher {
    repo: strata_repo::Repo,
    sealer: Sealer,
    chunks: Arc<Vec<ChunkRef>>,
    cached: Vec<([u8; 32], Vec<u8>)>,
    counters: Arc<Counters>,
}

impl Fetcher {
    fn chunk_ref(&self, piece: &Piece, path: &str) -> anyhow::Result<ChunkRef> {
        self.chunks
            .get(piece.chunk as usize)
            .copied()
            .ok_or_else(|| anyhow!("{path}: a piece points at chunk {} of a {}-chunk table", piece.chunk, self.chunks.len()))
    }

    async fn get(&mut self, r: &ChunkRef) -> anyhow::Result<&[u8]> {
        match self.cached.iter().position(|c| c.0 == r.id) {
            Some(i) => self.cached[..=i].rotate_right(1),
            None => {
                let plain = self.repo.read_chunk(&self.sealer, r).await?;
                self.counters.fetched.fetch_add(plain.len() as u64, Ordering::Relaxed);
                self.cached.truncate(CACHED_CHUNKS - 1);
                self.cached.insert(0, (r.id, plain));
            }
        }
        Ok(&self.cached[0].1)
    }
}

/// Compares one unit with the backup and rewrites what differs; whether anything was written.
#[allow(clippy::too_many_arguments)]
async fn rewrite_unit(
    f: &File,
    path: &Path,
    e: &FileEntry,
    st: &FileState,
    unit: &Unit,
    buffer: u64,
    fetcher: &mut Fetcher,
    counters: &Counters,
) -> anyhow::Result<bool> {
    let read = |offset: u64, len: u64| -> anyhow::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).with_context(|| format!("cannot read {}", path.display()))?;
        counters.read.fetch_add(len, Ordering::Relaxed);
        Ok(buf)
    };
    // Byte ranges of the file to write from the backup.
    let mut changed: Vec<(u64, u64)> = Vec::new();
    if st.fresh {
        changed.push((unit.start, unit.end));
    } else if st.pages {
        let mut at = unit.start;
        while at < unit.end {
            let len = buffer.min(e.size - at);
            let hashes = tokio::task::block_in_place(|| -> anyhow::Result<Vec<u64>> {
                Ok(strata_seal::page_hash::hash_buffer(&read(at, len)?, true, fetcher.sealer.id_key()).1)
            })?;
            let first = (at / PAGE_SIZE as u64) as usize;
            for (i, h) in hashes.iter().enumerate() {
                if e.page_hashes[first + i] != *h {
                    let page = at + (i * PAGE_SIZE) as u64;
                    match changed.last_mut() {
                        Some(last) if last.1 == page => last.1 += PAGE_SIZE as u64,
                        _ => changed.push((page, page + PAGE_SIZE as u64)),
                    }
                }
            }
            at += len;
        }
    } else {
        for (k, piece) in e.pieces.iter().enumerate() {
            let start = st.piece_starts[k];
            let local = tokio::task::block_in_place(|| read(start, piece.len as u64))?;
            let same = if piece.is_zero() {
                local.iter().all(|b| *b == 0)
            } else {
                let r = fetcher.chunk_ref(piece, &e.path)?;
                if piece.offset == 0 && piece.len == r.raw_len {
                    tokio::task::block_in_place(|| fetcher.sealer.chunk_id(&local) == r.id)
                } else {
                    let chunk = fetcher.get(&r).await?;
                    chunk.get(piece.offset as usize..(piece.offset + piece.len) as usize) == Some(&local[..])
                }
            };
            if !same {
                changed.push((start, start + piece.len as u64));
            }
        }
    }
    if changed.is_empty() {
        return Ok(false);
    }
    for (from, to) in changed {
        write_range(f, path, e, st, from, to, fetcher, counters).await?;
    }
    Ok(true)
}

/// Writes bytes `from..to` of the file from the backup's pieces.
#[allow(clippy::too_many_arguments)]
async fn write_range(
    f: &File,
    path: &Path,
    e: &FileEntry,
    st: &FileState,
    from: u64,
    to: u64,
    fetcher: &mut Fetcher,
    counters: &Counters,
) -> anyhow::Result<()> {
    // The first piece that ends after `from`.
    let mut k = st.piece_starts.partition_point(|s| *s <= from).saturating_sub(1);
    while k < e.pieces.len() && st.piece_starts[k] < to {
        let (piece, start) = (e.pieces[k], st.piece_starts[k]);
        let (a, b) = (from.max(start), to.min(start + piece.len as u64));
        k += 1;
        if a >= b {
            continue;
        }
        if piece.is_zero() {
            // A created file is already zeros there.
            if !st.fresh {
                let zeros = vec![0u8; (b - a) as usize];
                tokio::task::block_in_place(|| f.write_all_at(&zeros, a)).with_context(|| format!("cannot write {}", path.display()))?;
                counters.written.fetch_add(b - a, Ordering::Relaxed);
            }
            continue;
        }
        let r = fetcher.chunk_ref(&piece, &e.path)?;
        let chunk = fetcher.get(&r).await?;
        let off = (piece.offset as u64 + (a - start)) as usize;
        let bytes = chunk
            .get(off..off + (b - a) as usize)
            .ok_or_else(|| anyhow!("{}: a piece runs past the end of its chunk", e.path))?;
        tokio::task::block_in_place(|| f.write_all_at(bytes, a)).with_context(|| format!("cannot write {}", path.display()))?;
        counters.written.fetch_add(b - a, Ordering::Relaxed);
    }
    Ok(())
}
