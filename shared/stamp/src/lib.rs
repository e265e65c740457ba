//! What stamps a record with who made it, where and when: the effective user and the host's name, looked
//! up once, and a UTC time as every command, audit line and alert prints it. Kept apart so that the audit
//! log and the alerts (which both stamp what they write) need not depend on each other, and low enough that
//! the repository's own names (restore test results) use the same time format.

use jiff::civil::DateTime;
use jiff::SignedDuration;
use std::sync::OnceLock;

/// The last second of 9999, the last time RFC 3339 (and jiff's calendar) can spell.
const LAST_SECOND_OF_9999: i64 = 253_402_300_799;

/// The UTC date and time of a Unix time: before 1970 or after 9999 (a damaged record or state file can
/// hold any time) the nearest one in that range, so that any value prints. (A civil time, not a
/// `jiff::Timestamp`, whose range stops a day short of 10000 to leave room for any offset.)
fn clamped(t: i64) -> DateTime {
    DateTime::constant(1970, 1, 1, 0, 0, 0, 0)
        .checked_add(SignedDuration::from_secs(t.clamp(0, LAST_SECOND_OF_9999)))
        .expect("1970 to 9999 is within jiff's calendar")
}

/// `2026-12-02 17:30:00` (UTC) for a Unix time; see [`clamped`] for times before 1970 or after 9999.
pub fn format_time(t: i64) -> String {
    clamped(t).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// `20261202T173000Z` (UTC) for a Unix time, for names that sort by time; see [`clamped`].
pub fn format_time_compact(t: i64) -> String {
    clamped(t).strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// `2026-12-02T17:30:00Z` (RFC 3339, UTC) for a Unix time; see [`clamped`].
pub fn format_rfc3339(t: i64) -> String {
    clamped(t).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The current Unix time, seconds (0 if the clock is before 1970).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The effective user's name (its uid when it has none) and the host's name, looked up once.
pub fn identity() -> &'static (String, String) {
    static ID: OnceLock<(String, String)> = OnceLock::new();
    ID.get_or_init(|| (lookup_user_name(), lookup_host_name()))
}

/// This host's name, as audit lines, alerts and running markers name it ("unknown" if it has none).
pub fn host_name() -> &'static str {
    &identity().1
}

/// `user@host` of this process (the effective user), for records that say who changed something.
pub fn who() -> String {
    let (user, host) = identity();
    format!("{user}@{host}")
}

fn lookup_user_name() -> String {
    // SAFETY: geteuid cannot fail; getpwuid_r writes only into the buffers passed, and `pw` points into
    // `buf`, which outlives its use.
    unsafe {
        let uid = libc::geteuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut pw: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut pw) == 0 && !pw.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned();
        }
        uid.to_string()
    }
}

fn lookup_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_time_prints() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_rfc3339(1_796_232_600), "2026-12-02T17:30:00Z");
        assert_eq!(format_rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(format_time(1_796_231_605), "2026-12-02 17:13:25");
        assert_eq!(format_time(951_825_600), "2000-02-29 12:00:00");
        assert_eq!(format_time(1_709_164_800), "2024-02-29 00:00:00");
        assert_eq!(format_time_compact(1_796_231_605), "20261202T171325Z");
        // Outside what can be spelled: the nearest time that can.
        assert_eq!(format_time(253_402_300_800), "9999-12-31 23:59:59");
        assert_eq!(format_time(i64::MAX), "9999-12-31 23:59:59");
        assert_eq!(format_time(-1), "1970-01-01 00:00:00");
        assert_eq!(format_time(i64::MIN), "1970-01-01 00:00:00");
        assert_eq!(format_time_compact(i64::MIN), "19700101T000000Z");
    }
}
