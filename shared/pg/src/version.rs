//! PostgreSQL version numbers.
//!
//! The server reports its version as `server_version_num` (`150004` for 15.4), and a data directory records its
//! major version in the text file `PG_VERSION` (`15`). Since release 10 the major version is one number; before it
//! was two (`9.6`), which this module spells as `906`, PostgreSQL's own `PG_VERSION_NUM / 100` convention, so that
//! old majors stay distinct and ordered.

/// The only major version Strata backs up.
pub const SUPPORTED_MAJOR: u32 = 15;

/// The major version of a `server_version_num`: `150004` gives 15, `90624` gives 906.
pub fn major_from_version_num(n: u32) -> u32 {
    if n >= 100_000 {
        n / 10_000
    } else {
        n / 100
    }
}

/// The major version recorded in a `PG_VERSION` file: `"15\n"` gives 15, `"9.6\n"` gives 906; `None` if the text
/// is anything else. Surrounding white space is allowed.
pub fn major_from_pg_version_file(contents: &str) -> Option<u32> {
    let text = contents.trim();
    let number = |s: &str| -> Option<u32> {
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match text.split_once('.') {
        None => number(text).filter(|&major| major >= 10),
        Some((major, minor)) => {
            let (major, minor) = (number(major)?, number(minor)?);
            (major < 10 && minor < 100).then_some(major * 100 + minor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_num() {
        assert_eq!(major_from_version_num(150004), 15);
        assert_eq!(major_from_version_num(150000), 15);
        assert_eq!(major_from_version_num(170002), 17);
        assert_eq!(major_from_version_num(100023), 10);
        assert_eq!(major_from_version_num(90624), 906);
    }

    #[test]
    fn pg_version_file() {
        assert_eq!(major_from_pg_version_file("15\n"), Some(15));
        assert_eq!(major_from_pg_version_file("15"), Some(15));
        assert_eq!(major_from_pg_version_file(" 16\r\n"), Some(16));
        assert_eq!(major_from_pg_version_file("9.6\n"), Some(906));
        for bad in [
            "", "\n", "abc", "15.2", "1", "-15", "+15", "15 16", "9.", ".6", "99999",
        ] {
            assert_eq!(major_from_pg_version_file(bad), None, "{bad:?}");
        }
    }
}
