//! One module per command.

pub mod annotate;
pub mod archive;
pub mod audit;
pub mod backup;
pub mod check;
pub mod delta;
pub mod expire;
pub mod info;
pub mod rekey;
pub mod restore;
pub mod restore_test;
pub mod stanza;
pub mod target;
pub mod verify;

pub use strata_collector::cluster::{check_data_directory, connect, read_facts as cluster_facts};

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `2026-11-24 08:30:00` (UTC) for a Unix time.
pub fn format_time(t: i64) -> String {
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(st).to_string().replace('T', " ").trim_end_matches('Z').to_string()
}

/// The `strata` command, for the commands a restore writes (restore_command) or starts: this process when
/// it is `strata`, else (the verifier runs restore tests through this library) the `strata` beside it.
pub fn strata_executable() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    if exe.file_name().is_some_and(|n| n == "strata") {
        return Ok(exe);
    }
    let beside = exe.with_file_name("strata");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no strata executable beside {}", exe.display())))
}

/// `user@host` of this process, for results and logs that say who did something.
pub fn who() -> String {
    strata_audit::who()
}

pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
