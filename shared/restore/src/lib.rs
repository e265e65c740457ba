//! strata-restore: getting a cluster back from a repository, shared by the `strata` command (`restore`,
//! `info`, `check`) and the restore tests (`strata-verify`): the WAL archive as recovery will read it
//! ([`wal_archive`]), recovery targets and the backup that serves them ([`target`]; their times:
//! [`target_time`]), and the full and delta ([`delta`]) restore of a data directory ([`restore`]), which
//! lay out the directory tree through one writer (`tree`).

pub mod delta;
mod full;
pub mod restore;
pub mod target;
pub mod target_time;
mod tree;
pub mod wal_archive;
mod workers;

#[cfg(test)]
mod tests {
    #[test]
    fn any_time_prints() {
        assert!(super::target::format_pg_time(i64::MAX).ends_with("+00"));
    }
}
