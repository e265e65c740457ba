//! The `strata` command: stanza-create, backup, archive-push, archive-get, restore, info and check.
//!
//! Every command reads the same config file. With `bus = "local"` (single-host mode) a command that needs
//! the pipeline runs the stages it needs as tasks of this process ([`local`]); with a NATS bus it talks to
//! the collector, sealer and uploader services. Read-only commands (info, restore, archive-get) read the
//! repository directly.

pub mod cmd;
pub mod local;
mod progress;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use strata_config::Config;
use strata_repo::Repo;

#[derive(Parser, Debug)]
#[command(name = "strata", version, about = "Strata: physical backups of PostgreSQL that prove they restore")]
pub struct Cli {
    /// Config file (TOML); every key can be overridden by STRATA_<KEY> variables.
    #[arg(long, env = "STRATA_CONFIG", default_value = "/etc/strata/strata.toml", global = true)]
    pub config: PathBuf,
    /// Stanza: which cluster of the config this command is about.
    #[arg(long, env = "STRATA_STANZA", global = true)]
    pub stanza: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Registers the stanza's cluster in the repository (idempotent).
    StanzaCreate,
    /// Takes a backup through the pipeline.
    Backup {
        /// full; diff (relative to the last full); incr (relative to the last backup of any type).
        #[arg(long = "type", value_enum, default_value_t = BackupTypeArg::Full)]
        backup_type: BackupTypeArg,
        /// Re-read and compare every page, even of files whose size and mtime are unchanged.
        #[arg(long)]
        checksum_all: bool,
    },
    /// archive_command: stores one WAL file; exits 0 only once it is durable in the repository.
    ArchivePush { path: PathBuf },
    /// restore_command: fetches one WAL file; exits 1 when it is not archived.
    ArchiveGet { wal_name: String, dest: PathBuf },
    /// Restores a backup into an empty data directory, ready to recover from the archive.
    Restore {
        #[arg(long)]
        pg_data: PathBuf,
        /// Backup label; the newest backup when omitted.
        #[arg(long)]
        set: Option<String>,
        /// Restore tablespace OID into DIR instead of its original location (repeatable).
        #[arg(long, value_name = "OID=DIR")]
        tablespace_map: Vec<String>,
        /// default: replay all archived WAL; immediate: stop as soon as the backup is consistent.
        #[arg(long = "type", value_enum, default_value_t = RecoveryType::Default)]
        recovery: RecoveryType,
    },
    /// Shows backups and the WAL archive.
    Info {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Checks the configuration end to end: cluster, repository, and that archive_command delivers WAL.
    Check,
    /// Removes the backups retention does not keep, the WAL only they needed, and unreferenced packs.
    Expire {
        /// Full backups to keep (overrides the repository's retention_full).
        #[arg(long)]
        retention_full: Option<u32>,
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Unreferenced packs younger than this may belong to a backup still running and are kept.
        #[arg(long, default_value_t = 86400)]
        gc_grace_secs: u64,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupTypeArg {
    Full,
    Diff,
    Incr,
}

impl BackupTypeArg {
    pub fn to_type(self) -> strata_messages::BackupType {
        match self {
            BackupTypeArg::Full => strata_messages::BackupType::Full,
            BackupTypeArg::Diff => strata_messages::BackupType::Diff,
            BackupTypeArg::Incr => strata_messages::BackupType::Incr,
        }
    }
}

/// Where recovery stops.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryType {
    /// Replay every WAL file in the archive, then promote.
    Default,
    /// Stop at the end of the backup (its consistency point), then promote.
    Immediate,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// What every command starts from: the config, the chosen stanza and the primary repository.
pub struct Context_ {
    pub cfg: Arc<Config>,
    pub config_path: PathBuf,
    pub stanza: String,
    pub repo: Repo,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(&cli.config, std::env::vars())?;
    let stanza = cli.stanza.clone().context("--stanza is required (or STRATA_STANZA)")?;
    cfg.stanza(&stanza)?;
    let repo = strata_uploader::open_repo(cfg.primary_repo())?;
    let config_path = std::fs::canonicalize(&cli.config).unwrap_or(cli.config.clone());
    let ctx = Context_ { cfg: Arc::new(cfg), config_path, stanza, repo };
    match cli.command {
        Command::StanzaCreate => cmd::stanza::create(&ctx).await,
        Command::Backup { backup_type, checksum_all } => {
            cmd::backup::run(&ctx, backup_type.to_type(), checksum_all).await
        }
        Command::ArchivePush { path } => cmd::archive::push(&ctx, &path).await.context("archive-push"),
        Command::ArchiveGet { wal_name, dest } => cmd::archive::get(&ctx, &wal_name, &dest).await.map_err(|e| {
            if e.is::<cmd::archive::NotArchived>() { e } else { e.context("archive-get") }
        }),
        Command::Restore { pg_data, set, tablespace_map, recovery } => {
            cmd::restore::run(&ctx, &pg_data, set.as_deref(), &tablespace_map, recovery).await.context("restore")
        }
        Command::Info { output } => cmd::info::run(&ctx, output).await,
        Command::Check => cmd::check::run(&ctx).await.context("check"),
        Command::Expire { retention_full, dry_run, gc_grace_secs } => {
            let opts = cmd::expire::ExpireOptions { retention_full, dry_run, gc_grace_secs };
            cmd::expire::run(&ctx, &opts).await.context("expire")
        }
    }
}
