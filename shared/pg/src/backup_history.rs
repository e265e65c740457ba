//! Backup history files (`000000010000000000000003.00000028.backup`): what `pg_backup_stop()` archives about a
//! base backup. Strata only stores them, but a file stored under such a name can never be replaced, so
//! archive-push checks cheaply that one is what its name says before storing it.
//!
//! PostgreSQL 15's `do_pg_backup_stop` writes `START WAL LOCATION: %X/%X (file %s)` and `STOP WAL LOCATION:
//! %X/%X (file %s)` as the first two lines, then the backup label's other lines (whose label text may be in
//! any encoding, so only those two lines are read). The name is the start segment's and the start position's
//! offset in it (`BackupHistoryFileName`).

use crate::{Lsn, WalSegment};

/// How a backup history file differs from what PostgreSQL writes under its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupHistoryError {
    #[error("its name is not that of a backup history file of the stanza's segment size ({0} bytes)")]
    Name(u64),
    #[error("line {line} is not '{want} X/X (file SEGMENT)'")]
    Syntax { line: usize, want: &'static str },
    #[error("it starts at {lsn} in {file}, not where its name says")]
    Start { lsn: Lsn, file: String },
    #[error("it stops at {stop}, before its start {start}")]
    Stop { start: Lsn, stop: Lsn },
}

/// Checks a backup history file against its `name` (see the module docs); returns the backup's start.
pub fn check_backup_history(name: &str, bytes: &[u8], seg_size: u64) -> Result<Lsn, BackupHistoryError> {
    let name_err = || BackupHistoryError::Name(seg_size);
    let segment = name.get(..24).and_then(|s| WalSegment::parse(s, seg_size)).ok_or_else(name_err)?;
    let offset = name.get(25..33).and_then(|o| u64::from_str_radix(o, 16).ok()).filter(|o| *o < seg_size).ok_or_else(name_err)?;
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    let (start, start_file) = location(lines.next(), 1, "START WAL LOCATION:")?;
    let (stop, _) = location(lines.next(), 2, "STOP WAL LOCATION:")?;
    if start.0 != segment.start_lsn(seg_size).0 + offset || start_file != name[..24] {
        return Err(BackupHistoryError::Start { lsn: start, file: start_file });
    }
    if stop < start {
        return Err(BackupHistoryError::Stop { start, stop });
    }
    Ok(start)
}

/// `PREFIX X/X (file NAME)`: the position and the file name.
fn location(line: Option<&str>, number: usize, prefix: &'static str) -> Result<(Lsn, String), BackupHistoryError> {
    let err = || BackupHistoryError::Syntax { line: number, want: prefix };
    let rest = line.and_then(|l| l.strip_prefix(prefix)).ok_or_else(err)?;
    let (lsn, file) = rest.trim_start().split_once(" (file ").ok_or_else(err)?;
    let file = file.strip_suffix(')').filter(|f| f.len() == 24).ok_or_else(err)?;
    Ok((lsn.parse().map_err(|_| err())?, file.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;
    /// As PostgreSQL 15 writes one (pg_basebackup, label 'nightly').
    const REAL: &str = "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n\
        STOP WAL LOCATION: 0/3000100 (file 000000010000000000000003)\n\
        CHECKPOINT LOCATION: 0/3000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
        START TIME: 2026-12-07 08:00:00 UTC\nLABEL: nightly\nSTART TIMELINE: 1\n\
        STOP TIME: 2026-12-07 08:00:01 UTC\nSTOP TIMELINE: 1\n";

    #[test]
    fn accepts_what_postgresql_writes() {
        assert_eq!(check_backup_history("000000010000000000000003.00000028.backup", REAL.as_bytes(), SEG), Ok(Lsn(0x300_0028)));
    }

    #[test]
    fn refuses_garbage_and_another_backup_s_file() {
        let name = "000000010000000000000003.00000028.backup";
        assert!(matches!(check_backup_history(name, b"garbage", SEG), Err(BackupHistoryError::Syntax { line: 1, .. })));
        assert!(matches!(check_backup_history(name, b"", SEG), Err(BackupHistoryError::Syntax { line: 1, .. })));
        let first_line_only = REAL.lines().next().unwrap();
        assert!(matches!(check_backup_history(name, first_line_only.as_bytes(), SEG), Err(BackupHistoryError::Syntax { line: 2, .. })));
        // The same file under another backup's name.
        assert!(matches!(check_backup_history("000000010000000000000003.00000060.backup", REAL.as_bytes(), SEG), Err(BackupHistoryError::Start { .. })));
        assert!(matches!(check_backup_history("000000020000000000000003.00000028.backup", REAL.as_bytes(), SEG), Err(BackupHistoryError::Start { .. })));
        let backwards = REAL.replace("STOP WAL LOCATION: 0/3000100", "STOP WAL LOCATION: 0/2000100");
        assert!(matches!(check_backup_history(name, backwards.as_bytes(), SEG), Err(BackupHistoryError::Stop { .. })));
        // An offset past the segment's end.
        assert_eq!(check_backup_history("000000010000000000000003.FF000028.backup", REAL.as_bytes(), SEG), Err(BackupHistoryError::Name(SEG)));
    }
}
