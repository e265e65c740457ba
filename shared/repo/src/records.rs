//! How a record (backup, checkpoint, WAL, stanza.json) is wrapped when stored: sealed in an encrypted
//! repository, checksummed in a plain one; and what a record that fails to open becomes (a
//! [`DamagedRecord`], a finding rather than a stop). Apart from the repository's operations, so the two
//! stored forms and their checks are read in one place.

use super::*;

/// Records (backup, checkpoint, WAL) of an encrypted repository start with this, then a sealed envelope.
/// Plain records are rkyv archives, which never start with these bytes: framed ones start with the format
/// header's magic (0xAB 'STR'), and the unframed ones of older builds end with their root.
pub(crate) const SEALED_RECORD_MAGIC: &[u8; 8] = b"STRSEAL1";

/// Unencrypted records start with this, then the BLAKE3 hash of the body, then the body (module docs).
pub(crate) const CHECKED_RECORD_MAGIC: &[u8; 8] = b"STRSUM01";
pub(crate) const CHECKSUM_LEN: usize = 32;

/// An object stored with a checksum: [`CHECKED_RECORD_MAGIC`], the body's BLAKE3 hash, the body.
pub(crate) fn checked_bytes(plain: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(CHECKED_RECORD_MAGIC.len() + CHECKSUM_LEN + plain.len());
    out.extend_from_slice(CHECKED_RECORD_MAGIC);
    out.extend_from_slice(blake3::hash(plain).as_bytes());
    out.extend_from_slice(plain);
    Bytes::from(out)
}

/// The body of a checked object; `None` when `stored` is not in the checked form.
pub(crate) fn open_checked(path: &str, stored: &Bytes) -> Option<Result<Bytes>> {
    let rest = stored.strip_prefix(CHECKED_RECORD_MAGIC)?;
    let corrupt = |reason: &str| RepoError::CorruptObject { path: path.into(), reason: reason.into() };
    if rest.len() < CHECKSUM_LEN {
        return Some(Err(corrupt("checksum mismatch: too short for its checksum (truncated)")));
    }
    let (sum, _) = rest.split_at(CHECKSUM_LEN);
    let body = stored.slice(CHECKED_RECORD_MAGIC.len() + CHECKSUM_LEN..);
    if blake3::hash(&body).as_bytes() != sum {
        return Some(Err(corrupt("checksum mismatch: the stored bytes are not the ones written")));
    }
    Some(Ok(body))
}

/// A stored `stanza.json`: the checked form, or the plain JSON older builds wrote.
pub fn decode_stanza_info(path: &str, stored: &Bytes) -> Result<StanzaInfo> {
    let body = match open_checked(path, stored) {
        Some(body) => body?,
        None => stored.clone(),
    };
    serde_json::from_slice(&body).map_err(|e| RepoError::CorruptObject { path: path.into(), reason: e.to_string() })
}

/// A record that cannot be read (corrupt, truncated, of an unknown format): a finding about the backup or
/// WAL file it stands for, reported and kept, never a reason to stop reading the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRecord {
    /// The backup's label or the WAL file's name.
    pub name: String,
    /// The record's path in the repository.
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for DamagedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is corrupt: {}", self.path, self.reason)
    }
}

/// A record error that says the record itself is damaged (rather than the repository being unreachable).
pub(crate) fn damage(e: &RepoError) -> Option<String> {
    match e {
        RepoError::CorruptObject { reason, .. } => Some(reason.clone()),
        RepoError::Storage { source: StorageError::Corrupt { reason, .. }, .. } => Some(reason.clone()),
        _ => None,
    }
}
