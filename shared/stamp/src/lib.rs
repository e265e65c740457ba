//! What stamps a record with who made it, where and when: the effective user and the host's name, looked
//! up once, and a UTC time as audit lines and alerts print it. Kept apart so that the audit log and the
//! alerts (which both stamp what they write) need not depend on each other.

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

/// `2026-12-02 17:30:00` (UTC) for a Unix time.
/// Times before 1970 or after 9999 (which RFC 3339 cannot spell; a damaged record or state file can hold
/// any time) are shown as the nearest one it can.
pub fn format_time(t: i64) -> String {
    const LAST_SECOND_OF_9999: i64 = 253_402_300_799;
    let st = UNIX_EPOCH + Duration::from_secs(t.clamp(0, LAST_SECOND_OF_9999) as u64);
    humantime::format_rfc3339_seconds(st).to_string().replace('T', " ").trim_end_matches('Z').to_string()
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
