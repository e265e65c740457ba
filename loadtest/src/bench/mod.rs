//! `strata-bench`: Strata beside its peers (pgBackRest, pg_basebackup) on one machine, in one run, so that
//! the figures are ratios measured under the same noise. Each module is one benchmark with its own
//! `Args` (every knob a flag and the environment variable the bash scripts read) and a `run` that prints
//! its table, writes its TSV and summary files in the bench directory, and returns its key=value lines;
//! [`all`] runs `full` and `incr` for each dataset and bus and prints one combined table.
//!
//! They start PostgreSQL, nats-server, the S3 server and the Strata services through `strata-integration`
//! (the harness of the end-to-end tests), so a benchmark and a test start a server the same way, and a
//! failed command fails the benchmark instead of becoming a number ([`common::measure`]).
//!
//! They replaced the bash scripts `loadtest/bench-{full,incr,many-files,repos,verify,all}.sh`, `limits.sh`
//! and `lib.sh` (in git history), whose knobs, files and key=value keys they keep; a module that says
//! "as bench-full.sh did" points there. `loadtest/README.md` has both versions' figures side by side.

pub mod all;
pub mod cluster;
pub mod common;
pub mod dataset_args;
pub mod figures;
pub mod full;
pub mod incr;
pub mod limits;
pub mod many_files;
pub mod paired_setup;
pub mod pgbackrest;
pub mod repos;
pub mod run_info;
pub mod strata_setup;
pub mod verify;
