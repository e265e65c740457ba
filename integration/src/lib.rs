//! Test harness for Strata's end-to-end tests: real PostgreSQL 15, a real nats-server and the real Strata
//! binaries, each test with its own directory, ports and processes.
//!
//! # What it owns
//! Starting, waiting for and stopping external servers and Strata processes, and the checks tests make on
//! them (table digests, pg_amcheck, log allowlists). It knows nothing about Strata's internals: it drives
//! the binaries through their command lines and config files as a user would, so it depends on no Strata
//! crate.
//!
//! # Rules it follows (STYLE.md habit 14 and the test anti-patterns)
//! - **Real dependencies or a loud failure.** Every helper panics with what to install or set when
//!   PostgreSQL, nats-server or the Strata binaries are missing. No test skips silently.
//! - **Each test alone.** A [`TestDir`] per test holds every server's data, config and log; ports come from
//!   [`ports`], below the ephemeral range and locked across processes; no global servers.
//! - **Readiness, not sleeps.** Each start waits for a readiness signal with a deadline (`pg_ctl -w` and
//!   `pg_isready`, the NATS `INFO` greeting, a log line) and fails fast, with the log's tail, when the
//!   process dies instead. Every wait goes through [`wait::wait_until`], the one deadline loop.
//! - **Stopped through the handle, by pid.** SIGINT/SIGTERM first, harder signals after a deadline, on
//!   Drop too; never by process name.
//! - **Logs are checked.** Every handle of a process the harness starts (service, PostgreSQL, nats-server)
//!   checks its log when dropped ([`LogCheckOnDrop`]) for ERROR/PANIC/FATAL lines the test did not allow:
//!   such a line fails the test (`STRATA_TEST_LOGCHECK=warn` only prints it, to survey a suite).
//!
//! # A typical test
//! ```no_run
//! use std::time::Duration;
//! use strata_integration::*;
//!
//! let dir = TestDir::new("backup_restore");
//! let bins = StrataBins::locate();
//! let nats = NatsServer::start(&dir);
//! let repo = dir.subdir("repo");
//! // The archive command names the config file, and the config names the cluster: the config's path
//! // is fixed first, the file is written once the cluster (and so its port) exists.
//! let config = dir.path().join(config::CONFIG_FILE_NAME);
//! let mut pg = PgCluster::init(&dir, PgOptions::new(bins.archive_push_command(&config, "main")));
//! write_config(dir.path(), &nats.url(), "main", pg.data_dir(), &pg.conn_string(), &repo);
//! pg.start();
//! let _uploader = Service::spawn(&bins, "strata-uploader", &config, dir.path());
//! let status = bins.strata_cmd(&config, "main").arg("stanza-create").status().unwrap();
//! assert!(status.success());
//! pg.switch_wal_and_wait_archived(Duration::from_secs(60));
//! LogCheck::postgres().assert_clean(pg.log_file());
//! ```
//!
//! # Users
//! Tests run as root; PostgreSQL refuses root, and runs `archive_command` as `postgres`, so PostgreSQL,
//! its client tools and every Strata process run as the `postgres` OS user (see `src/os_user.rs`).

pub mod bins;
pub mod config;
pub mod faultproxy;
pub mod logcheck;
pub mod nats;
pub mod nats_secure;
mod os_user;
pub mod pg;
pub mod ports;
mod process;
pub mod s3;
pub mod testdir;
pub mod wait;
pub mod webhook;

pub use bins::{Service, StrataBins};
pub use config::{write_config, write_config_with};
pub use faultproxy::{FaultCounts, FaultProxy};
pub use logcheck::{assert_no_errors, wait_for_line, LogCheck, LogCheckOnDrop};
pub use nats::{NatsCluster, NatsOptions, NatsServer};
pub use nats_secure::SecureNats;
pub use pg::{PgBench, PgCluster, PgOptions};
pub use ports::{reserve_port, Port};
pub use os_user::command_as_postgres;
pub use process::CommandError;
pub use s3::S3Server;
pub use testdir::TestDir;
pub use wait::{poll, wait_until, wait_until_every};
pub use webhook::WebhookReceiver;
