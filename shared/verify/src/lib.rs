//! strata-verify: proving backups good, shared by the `strata` command (`verify`, `restore-test`, `info`)
//! and the verifier service: reading backups and the WAL archive back and checking them ([`verify`]),
//! restoring a backup into a scratch cluster and checking it ([`restore_test`]), and the health rules that
//! `info` shows and the verifier turns into metrics and alerts ([`health`]).

pub mod health;
pub mod restore_test;
pub mod verify;
