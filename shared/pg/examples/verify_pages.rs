//! Verifies every page checksum of a stopped PostgreSQL 15 data directory with `strata_pg`, walking it with
//! `strata_pg::datadir::classify`. This is how the checksum port was checked against real clusters; run it on a
//! cluster made with `initdb -k`:
//!
//!     cargo run -p strata-pg --example verify_pages -- /path/to/pgdata
//!
//! Exits 1 if any page fails, 2 on a usage or I/O error.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use strata_pg::datadir::{self, Entry, FileClass};
use strata_pg::page::{self, PageCheck};
use strata_pg::PAGE_SIZE;

#[derive(Default)]
struct Counts {
    files: u64,
    valid: u64,
    new: u64,
    bad: u64,
    skipped: u64,
}

fn walk(root: &Path, rel: &Path, counts: &mut Counts) -> std::io::Result<()> {
    let dir = root.join(rel);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        names.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    let inits: HashSet<String> = if datadir::is_database_dir(rel) {
        datadir::init_forks(names.iter().map(|(n, _)| n.as_str()))
    } else {
        HashSet::new()
    };
    for (name, path) in names {
        let rel_path: PathBuf = rel.join(&name);
        let is_dir = std::fs::metadata(&path)?.is_dir();
        if datadir::is_database_dir(rel) && datadir::is_unlogged_non_init(&name, &inits) {
            counts.skipped += 1;
            continue;
        }
        match datadir::classify(&rel_path, is_dir) {
            Entry::Skip | Entry::SkipContents => counts.skipped += 1,
            Entry::Include(_) if is_dir => walk(root, &rel_path, counts)?,
            Entry::Include(FileClass::Other) => {}
            Entry::Include(FileClass::Relation { segno }) => {
                counts.files += 1;
                let bytes = std::fs::read(&path)?;
                let mut pages = bytes.chunks_exact(PAGE_SIZE);
                for (index, p) in pages.by_ref().enumerate() {
                    let index = u32::try_from(index).map_err(std::io::Error::other)?;
                    match page::verify(p, page::block_number(segno, index)) {
                        PageCheck::Valid => counts.valid += 1,
                        PageCheck::New => counts.new += 1,
                        PageCheck::Mismatch { stored, computed } => {
                            counts.bad += 1;
                            eprintln!(
                                "{}: block {index}: stored {stored:04X} computed {computed:04X}",
                                rel_path.display()
                            );
                        }
                    }
                }
                if !pages.remainder().is_empty() {
                    eprintln!(
                        "{}: trailing partial page of {} bytes",
                        rel_path.display(),
                        pages.remainder().len()
                    );
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(root) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: verify_pages <pgdata>");
        return ExitCode::from(2);
    };
    let mut counts = Counts::default();
    if let Err(err) = walk(&root, Path::new(""), &mut counts) {
        eprintln!("cannot read {}: {err}", root.display());
        return ExitCode::from(2);
    }
    println!(
        "relation files {}, valid pages {}, new pages {}, failed pages {}, skipped entries {}",
        counts.files, counts.valid, counts.new, counts.bad, counts.skipped
    );
    if counts.bad > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
