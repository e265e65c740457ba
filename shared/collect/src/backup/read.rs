//! Reading the walked files into chunks: a bounded pool of readers, page checksums checked as pages are read,
//! increments against a reference backup, and files an interrupted attempt already stored taken from its
//! checkpoint. Nothing here talks to the server, so it runs against plain files in tests.

use super::walk::{Found, Roots};
use crate::bundle::Bundler;
use crate::chunk_table::ChunkTable;
use crate::file_lists::FileListWriter;
use crate::increment::{self, RefFile, Segment};
use crate::job::Job;
use crate::loaded::LoadedManifest;
use anyhow::{anyhow, bail, Context};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use strata_messages::manifest::{ChecksumFailure, Tablespace};
use strata_messages::{FileEntry, FileKind, Piece};
use strata_pg::datadir::FileClass;
use strata_pg::page::{self, PageCheck};
use strata_pg::{Lsn, PAGE_SIZE};
use tokio_util::sync::CancellationToken;
use tracing::{warn, Instrument};

/// Pieces smaller than a chunk divided by this share chunks with others.
const BUNDLE_DIVISOR: usize = 4;
/// Chunks of one file read at once.
const READ_AHEAD: usize = 4;
/// Spare room left after a chunk's bytes for the message header ([`strata_messages::encode_plain_chunk`]).
pub(crate) const MESSAGE_ROOM: usize = strata_messages::PLAIN_CHUNK_OVERHEAD + 256;

/// What every reader shares.
pub(super) struct ReadContext {
    pub(super) roots: Roots,
    pub(super) verify: bool,
    pub(super) start_lsn: Lsn,
    pub(super) chunk_size: usize,
    pub(super) seal_in_reader: bool,
    pub(super) checksum_all: bool,
    pub(super) reference: Option<LoadedManifest>,
    pub(super) resume: Option<super::Resume>,
    pub(super) table: Arc<ChunkTable>,
    pub(super) bundler: Arc<Bundler>,
    pub(super) lists: Arc<FileListWriter>,
    pub(super) done: Arc<AtomicU64>,
    pub(super) read: AtomicU64,
    pub(super) database_bytes: AtomicU64,
    pub(super) file_count: AtomicU64,
    pub(super) failures: Mutex<Vec<ChecksumFailure>>,
    pub(super) tablespaces: Mutex<Vec<Tablespace>>,
    /// Checked before each file and each chunk: a shutdown stops the readers there.
    pub(super) cancel: CancellationToken,
}

/// Reads every file with a bounded pool of readers, in the walk's order, sending what must be stored and
/// writing each entry into the file lists once its file is read. Files that vanished during the backup
/// are left out.
pub(super) async fn send_files(job: &Arc<Job>, found: Vec<Found>, ctx: &Arc<ReadContext>, workers: usize) -> anyhow::Result<()> {
    let found = Arc::new(found);
    let next = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..workers.max(1) {
        let (found, next, job, ctx) = (found.clone(), next.clone(), job.clone(), ctx.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let Some(f) = found.get(next.fetch_add(1, Ordering::Relaxed)) else { return Ok::<(), anyhow::Error>(()) };
                super::check_cancelled(&ctx.cancel)?;
                let entry = match f.kind {
                    FileKind::File => match send_file(&job, f, &ctx).await? {
                        Some(e) => e,
                        None => continue,
                    },
                    _ => {
                        if f.kind == FileKind::Symlink {
                            if let Some(oid) = f.rel.strip_prefix("pg_tblspc/").and_then(|o| o.parse().ok()) {
                                let location = f.link_target.as_deref().unwrap_or_default().to_string();
                                ctx.tablespaces.lock().expect("tablespaces").push(Tablespace { oid, location });
                            }
                        }
                        entry_for(f, Vec::new(), Vec::new())
                    }
                };
                if entry.kind == FileKind::File {
                    ctx.database_bytes.fetch_add(entry.size, Ordering::Relaxed);
                    ctx.file_count.fetch_add(1, Ordering::Relaxed);
                }
                ctx.lists.add(&job, entry).await?;
            }
        }.in_current_span()));
    }
    let mut result = Ok(());
    for r in readers {
        if let Err(e) = r.await.expect("reader task panicked") {
            result = Err(e);
        }
    }
    result
}

fn entry_for(f: &Found, pieces: Vec<Piece>, page_hashes: Vec<u64>) -> FileEntry {
    FileEntry {
        path: f.rel.to_string(),
        kind: f.kind,
        mode: f.meta.mode,
        uid: f.meta.uid,
        gid: f.meta.gid,
        mtime: f.meta.mtime,
        size: pieces.iter().map(|p| p.len as u64).sum(),
        link_target: f.link_target.as_deref().unwrap_or_default().to_string(),
        pieces,
        page_hashes,
    }
}

impl ReadContext {
    /// `entry`'s pieces, renumbered from `from`'s chunk table into this backup's; `None` if one of them
    /// points at a chunk `from` does not know the location of.
    fn adopt(&self, from: &LoadedManifest, pieces: &[Piece]) -> Option<Vec<Piece>> {
        pieces
            .iter()
            .map(|p| match p.is_zero() {
                true => Some(*p),
                false => from.chunk(p.chunk).map(|c| Piece { chunk: self.table.known(c), ..*p }),
            })
            .collect()
    }

    /// A stored copy of the file that is still what is on disk: `e` was read from a file with the same
    /// size and mtime, modified before `since` (when that backup began).
    fn reuse(&self, f: &Found, from: &LoadedManifest, e: &FileEntry, since: i64) -> Option<FileEntry> {
        if e.size != f.meta.len || e.mtime != f.meta.mtime || e.mtime >= since {
            return None;
        }
        let pieces = self.adopt(from, &e.pieces)?;
        self.done.fetch_add(e.size, Ordering::Relaxed);
        Some(entry_for(f, pieces, e.page_hashes.clone()))
    }
}

/// One read of a file, with what was learnt reading it.
struct ReadBuffer {
    offset: u64,
    /// How much was asked for: fewer bytes came back only at the end of the file.
    buf_len: usize,
    buf: Vec<u8>,
    bad: Vec<ChecksumFailure>,
    /// The buffer's chunk id and page hashes ([`increment::hash_buffer`]).
    hashes: (strata_messages::ChunkId, Vec<u64>),
    /// The whole buffer sealed, ready for the uploaders ([`Job::sealed_message`]), when it was sealed here.
    sealed: Option<Vec<u8>>,
}

/// Reads and sends one file and returns its entry; `None` when it disappeared before it could be opened
/// (a dropped relation: WAL replay removes it anyway).
async fn send_file(job: &Arc<Job>, found: &Found, ctx: &ReadContext) -> anyhow::Result<Option<FileEntry>> {
    // An interrupted attempt read this file and it has not changed since: take what it stored.
    if let Some(r) = &ctx.resume {
        if let Some(e) = r.manifest.file(&found.rel).and_then(|e| ctx.reuse(found, &r.manifest, &e, r.attempt_start)) {
            return Ok(Some(e));
        }
    }
    let ref_entry = ctx.reference.as_ref().and_then(|r| r.file(&found.rel).map(|e| (r, e)));
    if let Some((r, e)) = &ref_entry {
        // Modified before the reference began and unchanged since: the reference read it as it is now.
        if !ctx.checksum_all {
            if let Some(e) = ctx.reuse(found, r, e, r.head.summary.start_time) {
                return Ok(Some(e));
            }
        }
    }
    let abs = ctx.roots.abs(found);
    let file = match File::open(&abs) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot open {}: {e}", abs.display()),
    };
    let relation = matches!(found.class, FileClass::Relation { .. });
    let segno = match found.class {
        FileClass::Relation { segno } if ctx.verify => Some(segno),
        _ => None,
    };
    // Only relation files are compared page by page; other files are stored whole when they changed.
    let ref_file = match (&ref_entry, relation) {
        (Some((r, e)), true) => Some((*r, RefFile::new(e))),
        _ => None,
    };
    let mut pieces = Vec::new();
    let mut page_hashes = Vec::new();
    let (chunk_size, start_lsn, len) = (ctx.chunk_size, ctx.start_lsn, found.meta.len);
    // Chunks of one file are read, checked and hashed READ_AHEAD at a time, so a 1 GB segment is not read
    // by one thread while the others have nothing left to do; they are sent in order.
    let file = Arc::new(file);
    // A chunk that will be sent whole (no reference to compare with, no zero pages to leave out) is sealed
    // right after it is read, on the same thread, when this process also stores it.
    let seal_whole = ctx.seal_in_reader && ref_file.is_none();
    let read_at = |offset: u64| {
        // Small files get a buffer their size (plus a page, to see the end), not a whole chunk's.
        let buf_len = if offset < len { ((len - offset) as usize + PAGE_SIZE).min(chunk_size) } else { chunk_size };
        let (file, path, rel, job) = (file.clone(), abs.clone(), found.rel.clone(), job.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<ReadBuffer> {
            let mut buf = pread_up_to(&file, offset, buf_len).with_context(|| format!("cannot read {}", path.display()))?;
            let bad = match segno {
                Some(segno) => check_pages(&file, &rel, segno, offset, &mut buf, start_lsn),
                None => Vec::new(),
            };
            let hashes = increment::hash_buffer(&buf, relation, job.id_key());
            let sealed = (seal_whole && buf.len() >= chunk_size / BUNDLE_DIVISOR && !(relation && increment::has_zero_page(&buf)))
                .then(|| job.sealed_message(hashes.0, &buf));
            Ok(ReadBuffer { offset, buf_len, buf, bad, hashes, sealed })
        })
    };
    let mut reads = futures::stream::FuturesOrdered::new();
    let mut next_offset = 0u64;
    loop {
        // Keep READ_AHEAD reads going up to the size the file had in the walk; past it (the file grew), one.
        while reads.len() < READ_AHEAD && (next_offset <= len || reads.is_empty()) {
            reads.push_back(read_at(next_offset));
            next_offset += chunk_size as u64;
        }
        let Some(read) = futures::StreamExt::next(&mut reads).await else { break };
        super::check_cancelled(&ctx.cancel)?;
        let ReadBuffer { offset, buf_len, buf, bad, hashes: (whole_id, hashes), sealed } = read.expect("read task panicked")?;
        if !bad.is_empty() {
            for b in &bad {
                warn!(file = %b.path, block = b.block, "page checksum mismatch");
            }
            ctx.failures.lock().expect("failures").extend(bad);
        }
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        ctx.read.fetch_add(n as u64, Ordering::Relaxed);
        ctx.done.fetch_add(n as u64, Ordering::Relaxed);
        let split = increment::split(buf, offset, hashes, ref_file.as_ref().map(|(_, f)| f));
        page_hashes.extend_from_slice(&split.page_hashes);
        let whole = split.packed.len() == n;
        let packed = match split.packed.len() {
            0 => None,
            len if len < chunk_size / BUNDLE_DIVISOR => Some(ctx.bundler.add(job, &ctx.table, &split.packed).await?),
            _ if whole => match sealed {
                Some(message) => Some((ctx.table.sent(job.send_presealed(whole_id, n, message).await?), 0)),
                None => Some((ctx.table.sent(job.send_hashed(split.packed, whole_id).await?), 0)),
            },
            _ => Some((ctx.table.sent(job.send(split.packed, true).await?), 0)),
        };
        for seg in split.segments {
            match seg {
                Segment::New { offset, len } => {
                    let (chunk, base) = packed.expect("new bytes were sent");
                    pieces.push(Piece { chunk, offset: base + offset, len })
                }
                Segment::Zero { len } => pieces.push(Piece { chunk: strata_messages::ZERO_CHUNK, offset: 0, len }),
                Segment::Unchanged { file_offset, len } => {
                    let (r, rf) = ref_file.as_ref().expect("unchanged bytes come from a reference");
                    let adopted = ctx
                        .adopt(r, &rf.slice(file_offset, len))
                        .ok_or_else(|| anyhow!("the reference's manifest has no location for a chunk of {}", found.rel))?;
                    pieces.extend(adopted);
                }
            }
        }
        if n < buf_len {
            // The end of the file; reads already started past it are dropped.
            break;
        }
    }
    Ok(Some(entry_for(found, pieces, page_hashes)))
}

/// Reads up to `len` bytes at `offset` (fewer only at the end of the file) into a new buffer, without
/// zeroing it first, and with room after them for the message header the chunk becomes, so sending it
/// does not copy it.
fn pread_up_to(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len + MESSAGE_ROOM);
    while buf.len() < len {
        let have = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - have];
        let at = (offset + have as u64) as libc::off_t;
        // SAFETY: pread writes at most `spare.len()` bytes into memory the vector owns and returns how
        // many it wrote; only those are added to the vector's length below.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        // SAFETY: the `n` bytes after the current length were just written by pread.
        unsafe { buf.set_len(buf.len() + n as usize) };
    }
    Ok(buf)
}

/// Checks the checksums of the whole pages in `buf` (read from `offset` of a relation segment file).
///
/// As `basebackup.c` does: a page whose LSN is at or past the backup start is skipped, since it changed
/// during the backup and WAL replay rewrites it from a full-page image; a mismatching page is read again once,
/// because the first read may have raced with a write (a torn read), and only a page that still fails is
/// reported. A reread that succeeds replaces the torn copy in `buf`.
fn check_pages(file: &File, rel: &str, segno: u32, offset: u64, buf: &mut [u8], start_lsn: Lsn) -> Vec<ChecksumFailure> {
    let mut bad = Vec::new();
    for (i, page) in buf.chunks_exact_mut(PAGE_SIZE).enumerate() {
        let index = (offset / PAGE_SIZE as u64) as u32 + i as u32;
        let blkno = page::block_number(segno, index);
        if !matches!(page::verify(page, blkno), PageCheck::Mismatch { .. }) || page::page_lsn(page) >= start_lsn {
            continue;
        }
        let mut again = vec![0u8; PAGE_SIZE];
        let reread = file.read_exact_at(&mut again, offset + (i * PAGE_SIZE) as u64).is_ok();
        if reread && (page::page_lsn(&again) >= start_lsn || !matches!(page::verify(&again, blkno), PageCheck::Mismatch { .. })) {
            page.copy_from_slice(&again);
            continue;
        }
        bad.push(ChecksumFailure { path: rel.to_string(), block: blkno });
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::super::walk::Meta;
    use super::*;
    use std::io::Write;
    use std::path::Path;

    /// An initialised page written at `lsn`, with a valid checksum for block `blkno`.
    fn page(lsn: Lsn, blkno: u32, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; PAGE_SIZE];
        p[..24].fill(0);
        p[0..4].copy_from_slice(&((lsn.0 >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn.0 as u32).to_le_bytes());
        p[12..14].copy_from_slice(&24u16.to_le_bytes()); // pd_lower
        p[14..16].copy_from_slice(&(PAGE_SIZE as u16).to_le_bytes()); // pd_upper
        let sum = page::checksum(&p, blkno);
        p[8..10].copy_from_slice(&sum.to_le_bytes());
        p
    }

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let file = File::open(f.path()).unwrap();
        (f, file)
    }

    #[test]
    fn pread_up_to_stops_at_the_end_and_leaves_room_for_the_header() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let (_tmp, file) = file_with(&data);
        let buf = pread_up_to(&file, 8192, 4096).unwrap();
        assert_eq!(buf, data[8192..]);
        assert!(buf.capacity() >= 4096 + MESSAGE_ROOM);
        assert!(pread_up_to(&file, 20_000, 4096).unwrap().is_empty());
        assert_eq!(pread_up_to(&file, 0, 100).unwrap(), data[..100]);
    }

    #[test]
    fn check_pages_reports_only_pages_that_still_fail_and_predate_the_backup() {
        let start = Lsn(0x1_0000_0000);
        let good = page(Lsn(0x100), 0, 1);
        let mut corrupt = page(Lsn(0x100), 1, 2);
        corrupt[PAGE_SIZE - 1] ^= 0xff;
        // Changed during the backup: WAL replay rewrites it, whatever its checksum.
        let mut recent = page(Lsn(start.0 + 8), 2, 3);
        recent[PAGE_SIZE - 1] ^= 0xff;
        let data = [good, corrupt, recent].concat();
        let (_tmp, file) = file_with(&data);
        let mut buf = data.clone();
        let bad = check_pages(&file, "base/5/16384", 0, 0, &mut buf, start);
        let bad: Vec<(&str, u32)> = bad.iter().map(|b| (b.path.as_str(), b.block)).collect();
        assert_eq!(bad, [("base/5/16384", 1)]);

        // The same page further into the file, and in a later segment, is another block.
        let (_tmp, file) = file_with(&data[PAGE_SIZE..2 * PAGE_SIZE]);
        let mut buf = data[PAGE_SIZE..2 * PAGE_SIZE].to_vec();
        let bad = check_pages(&file, "base/5/16384.1", 1, 0, &mut buf, start);
        assert_eq!(bad[0].block, page::block_number(1, 0));
    }

    #[test]
    fn a_torn_read_is_replaced_by_the_reread() {
        let start = Lsn(0x1_0000_0000);
        let on_disk = page(Lsn(0x200), 0, 7);
        let (_tmp, file) = file_with(&on_disk);
        // What the first read saw while a write was halfway through.
        let mut torn = on_disk.clone();
        torn[PAGE_SIZE / 2..].fill(0xee);
        assert!(check_pages(&file, "base/5/1", 0, 0, &mut torn, start).is_empty());
        assert_eq!(torn, on_disk);
    }

    #[test]
    fn an_entry_records_the_walked_metadata_and_the_pieces_length() {
        let found = Found {
            rel: "base/5/16384".into(),
            root: 0,
            kind: FileKind::File,
            class: FileClass::Relation { segno: 0 },
            meta: Meta { mode: 0o600, uid: 26, gid: 26, mtime: 1_700_000_000, len: 3 * 8192 },
            link_target: None,
        };
        let pieces = vec![
            Piece { chunk: 4, offset: 0, len: 8192 },
            Piece { chunk: strata_messages::ZERO_CHUNK, offset: 0, len: 8192 },
        ];
        let e = entry_for(&found, pieces, vec![1, 2]);
        assert_eq!((e.path.as_str(), e.mode, e.uid, e.mtime, e.size), ("base/5/16384", 0o600, 26, 1_700_000_000, 16384));
        assert_eq!(e.page_hashes, [1, 2]);
        assert!(e.link_target.is_empty());
    }

    /// A buffer the test's log lines are written into.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Reads the files of a data directory at `data` as a backup would, with a real job on a bus nobody
    /// serves (chunks are sent, never confirmed).
    async fn read_all(data: &Path, cancel: CancellationToken) -> (anyhow::Result<()>, Arc<ReadContext>) {
        let bus: Arc<dyn strata_bus::Bus> = Arc::new(strata_bus::local::LocalBus::new());
        let sealer = strata_seal::Sealer::default();
        let job = Job::start(bus, "job".into(), "main".into(), 1, sealer, 64 << 20, std::time::Duration::from_secs(60)).await.unwrap();
        let job = Arc::new(job);
        let (found, roots) = super::super::walk::walk(data).unwrap();
        let chunk_size = 64 * 1024;
        let ctx = Arc::new(ReadContext {
            roots,
            verify: true,
            start_lsn: Lsn(0x1_0000_0000),
            chunk_size,
            seal_in_reader: false,
            checksum_all: false,
            reference: None,
            resume: None,
            table: Arc::default(),
            bundler: Arc::new(Bundler::new(chunk_size)),
            lists: Arc::new(FileListWriter::new(chunk_size)),
            done: Arc::default(),
            read: AtomicU64::new(0),
            database_bytes: AtomicU64::new(0),
            file_count: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            tablespaces: Mutex::new(Vec::new()),
            cancel,
        });
        (send_files(&job, found, &ctx, 2).await, ctx)
    }

    /// A checksum warning from a reader names the stanza and backup it belongs to, from the backup's span.
    #[tokio::test]
    async fn a_checksum_warning_names_the_stanza_and_backup() {
        let dir = tempfile::tempdir().unwrap();
        let mut corrupt = page(Lsn(0x100), 1, 2);
        corrupt[100] ^= 1;
        let relation = [page(Lsn(0x100), 0, 1), corrupt].concat();
        std::fs::create_dir_all(dir.path().join("base/5")).unwrap();
        std::fs::write(dir.path().join("base/5/16384"), &relation).unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), b"15\n").unwrap();

        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let _default = tracing::subscriber::set_default(subscriber);
        // The span serve_backup puts a backup's work in.
        let span = tracing::info_span!("backup", stanza = %"main", backup = %"20261207-101500F");
        let (result, ctx) = read_all(dir.path(), CancellationToken::new()).instrument(span).await;
        result.unwrap();

        let failures: Vec<(String, u32)> = ctx.failures.lock().unwrap().iter().map(|b| (b.path.clone(), b.block)).collect();
        assert_eq!(failures, [("base/5/16384".to_string(), 1)]);
        assert_eq!(ctx.file_count.load(Ordering::Relaxed), 2);
        assert_eq!(ctx.database_bytes.load(Ordering::Relaxed), relation.len() as u64 + 3);
        let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let warning = logged.lines().find(|l| l.contains("page checksum mismatch")).expect(&logged);
        assert!(warning.contains("stanza=main") && warning.contains("backup=20261207-101500F"), "{warning}");
    }

    #[tokio::test]
    async fn a_cancelled_read_stops_before_the_next_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), b"15\n").unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (result, ctx) = read_all(dir.path(), cancel).await;
        assert!(result.unwrap_err().is::<super::super::Cancelled>());
        assert_eq!(ctx.file_count.load(Ordering::Relaxed), 0);
    }
}
