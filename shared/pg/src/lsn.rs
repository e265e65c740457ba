//! Log sequence numbers.
//!
//! An LSN is a byte position in the WAL stream (`XLogRecPtr`). PostgreSQL shows it as two hex numbers, the high and
//! low 32 bits, separated by a slash: `0/A000028`. Strata uses that same spelling everywhere a person or a text
//! format sees an LSN (logs, JSON, TOML, `backup_label`), so it round-trips with what `pg_backup_start()` returns
//! and what an operator types. Binary formats (rkyv messages) carry the raw `u64` instead.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A position in the WAL stream, PostgreSQL's `XLogRecPtr`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`: PostgreSQL uses 0 to mean "no position".
    pub const INVALID: Lsn = Lsn(0);

    /// Whether this is a real position rather than [`Lsn::INVALID`].
    pub fn is_valid(self) -> bool {
        self != Lsn::INVALID
    }

    /// Offset of this position inside its WAL segment (`XLogSegmentOffset`).
    ///
    /// # Panics
    /// If `seg_size` is zero; callers pass a size already checked with [`crate::wal::is_valid_seg_size`].
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }

    /// Adds `bytes`, or `None` on overflow past the end of the WAL address space.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text was not an LSN in PostgreSQL's `X/X` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid lsn {input:?}: expected two hex numbers of 1 to 8 digits separated by '/', like 0/A000028")]
pub struct LsnParseError {
    /// The rejected text, kept so the caller can say where it came from.
    pub input: String,
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Parses `X/X` with the same rules as PostgreSQL's `pg_lsn_in`: each half is 1 to 8 hex digits of either case,
    /// with no sign, spaces or prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError {
            input: s.to_owned(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |part: &str| -> Option<u64> {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u64::from_str_radix(part, 16).ok()
        };
        match (half(hi), half(lo)) {
            (Some(hi), Some(lo)) => Ok(Lsn((hi << 32) | lo)),
            _ => Err(err()),
        }
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LsnVisitor;

        impl Visitor<'_> for LsnVisitor {
            type Value = Lsn;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an lsn string like \"0/A000028\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Lsn, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(LsnVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_postgresql() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0xA00_0028).to_string(), "0/A000028");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_like_pg_lsn_in() {
        assert_eq!("0/A000028".parse::<Lsn>(), Ok(Lsn(0xA00_0028)));
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("00000000/00000001".parse::<Lsn>(), Ok(Lsn(1)));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>(), Ok(Lsn(u64::MAX)));
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "x/0",
            "0/ 1",
            " 0/1",
            "+1/0",
            "0x1/0",
            "123456789/0",
            "0/123456789",
        ] {
            let err = bad.parse::<Lsn>().expect_err(bad);
            assert_eq!(err.input, bad);
        }
    }

    #[test]
    fn round_trips_through_text() {
        for v in [0, 1, 0xA00_0028, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }
    }

    #[test]
    fn orders_by_position() {
        assert!(Lsn(1) < Lsn(0x1_0000_0000));
        assert!("0/FFFFFFFF".parse::<Lsn>().unwrap() < "1/0".parse::<Lsn>().unwrap());
    }

    #[test]
    fn serde_uses_the_text_form() {
        let json = serde_json::to_string(&Lsn(0xA00_0028)).unwrap();
        assert_eq!(json, "\"0/A000028\"");
        assert_eq!(
            serde_json::from_str::<Lsn>("\"1/2\"").unwrap(),
            Lsn(0x1_0000_0002)
        );
        let err = serde_json::from_str::<Lsn>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("invalid lsn"), "{err}");
        assert!(serde_json::from_str::<Lsn>("42").is_err());
    }

    #[test]
    fn helpers() {
        assert!(!Lsn::INVALID.is_valid());
        assert!(Lsn(1).is_valid());
        assert_eq!(Lsn(0x300_0028).segment_offset(16 << 20), 0x28);
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(1).checked_add(1), Some(Lsn(2)));
        assert_eq!(u64::from(Lsn::from(7)), 7);
    }
}
