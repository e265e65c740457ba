//! `global/pg_control`: which cluster a data directory belongs to.
//!
//! A delta restore rewrites a stopped data directory in place, so before it touches a byte it must know
//! the directory holds the stanza's own cluster: another cluster's directory (or one of another major
//! version) would be silently turned into a copy of the backup. `PG_VERSION` names the major version
//! ([`crate::version`]); pg_control holds the system identifier initdb drew, which every copy of the
//! cluster (base backup, restore, standby) keeps. Only the head of `ControlFileData` is read: it begins
//! with `system_identifier` (u64), `pg_control_version` (u32) and `catalog_version_no` (u32), and the
//! server writes the file as `PG_CONTROL_FILE_SIZE` (8192) bytes.

/// The size PostgreSQL writes pg_control at (`PG_CONTROL_FILE_SIZE`).
pub const CONTROL_FILE_SIZE: usize = 8192;

/// `PG_CONTROL_VERSION` of PostgreSQL 15.
pub const PG15_CONTROL_VERSION: u32 = 1300;

/// The fields at the head of pg_control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlHead {
    pub system_id: u64,
    pub pg_control_version: u32,
    pub catalog_version_no: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("pg_control is {0} bytes, PostgreSQL writes {CONTROL_FILE_SIZE}")]
    Size(usize),
    #[error("pg_control has version {found}, PostgreSQL {major} writes {expected}")]
    Version { found: u32, expected: u32, major: u32 },
    #[error("Strata does not know the pg_control of PostgreSQL {0}")]
    UnknownMajor(u32),
}

/// The `PG_CONTROL_VERSION` a major version writes, where Strata knows it.
pub fn control_version(major: u32) -> Option<u32> {
    (major == 15).then_some(PG15_CONTROL_VERSION)
}

/// Reads the head of a pg_control file of `major` (little-endian, see the crate docs).
pub fn parse_head(bytes: &[u8], major: u32) -> Result<ControlHead, ControlError> {
    if bytes.len() != CONTROL_FILE_SIZE {
        return Err(ControlError::Size(bytes.len()));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let head = ControlHead {
        system_id: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        pg_control_version: u32_at(8),
        catalog_version_no: u32_at(12),
    };
    let expected = control_version(major).ok_or(ControlError::UnknownMajor(major))?;
    if head.pg_control_version != expected {
        return Err(ControlError::Version { found: head.pg_control_version, expected, major });
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of a pg_control written by PostgreSQL 15's initdb (as `od` showed it).
    fn pg15_control(system_id: u64) -> Vec<u8> {
        let mut b = vec![0u8; CONTROL_FILE_SIZE];
        b[..8].copy_from_slice(&system_id.to_le_bytes());
        b[8..12].copy_from_slice(&1300u32.to_le_bytes());
        b[12..16].copy_from_slice(&202209061u32.to_le_bytes());
        b
    }

    #[test]
    fn head_of_a_pg15_control_file() {
        let head = parse_head(&pg15_control(7716466065457245661), 15).unwrap();
        assert_eq!(head, ControlHead { system_id: 7716466065457245661, pg_control_version: 1300, catalog_version_no: 202209061 });
    }

    #[test]
    fn short_foreign_and_unknown_files_are_refused() {
        assert_eq!(parse_head(&[], 15), Err(ControlError::Size(0)));
        assert_eq!(parse_head(&pg15_control(1)[..16], 15), Err(ControlError::Size(16)));
        let mut other = pg15_control(1);
        other[8..12].copy_from_slice(&1700u32.to_le_bytes());
        assert_eq!(parse_head(&other, 15), Err(ControlError::Version { found: 1700, expected: 1300, major: 15 }));
        assert_eq!(parse_head(&pg15_control(1), 16), Err(ControlError::UnknownMajor(16)));
    }
}
