//! The `strata` command: stanza-create, backup, archive-push, archive-get, restore, restore-test, info and check.
//!
//! Every command reads the same config file. With `bus = "local"` (single-host mode) a command that needs
//! the pipeline runs the stages it needs as tasks of this process ([`local`]); with a NATS bus it talks to
//! the collector, sealer and uploader services. Read-only commands (info, restore, archive-get) read the
//! repository directly.
//!
//! This crate parses arguments, wraps audited operations and prints; the work is in shared crates: the
//! pipeline stages (`strata-collect`, `strata-seal-worker`, `strata-upload`, `strata-replicate`), restore
//! (`strata-restore`), verification, restore tests and health (`strata-verify`, which the verifier service
//! uses too), and the command's context and audit hook (`strata-command`).

pub mod cmd;
pub mod local;
pub mod multi_repo;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use strata_command::audit::audit_op;
use strata_command::{Context_, OutputFormat, RecoveryType};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use strata_config::Config;
use strata_audit::Op;

#[derive(Parser, Debug)]
#[command(name = "strata", version, about = "Strata: physical backups of PostgreSQL that prove they restore")]
pub struct Cli {
    /// Config file (TOML); every key can be overridden by STRATA_<KEY> variables.
    #[arg(long, env = "STRATA_CONFIG", default_value = "/etc/strata/strata.toml", global = true)]
    pub config: PathBuf,
    /// Stanza: which cluster of the config this command is about.
    #[arg(long, env = "STRATA_STANZA", global = true)]
    pub stanza: Option<String>,
    /// Repository that read commands (restore, info, archive-get) use, by `[[repo]]` name; default the
    /// primary (the first). Backups and archive-push always write to the primary.
    #[arg(long, env = "STRATA_REPO", global = true)]
    pub repo: Option<String>,
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
    ArchiveGet {
        wal_name: String,
        dest: PathBuf,
        /// Keep this many following segments fetched ahead in a spool beside DEST (0: off).
        #[arg(long, default_value_t = 0)]
        prefetch: usize,
    },
    /// The WAL shipper behind `[archive] async = true` (started by archive-push).
    #[command(hide = true)]
    ArchiveShipper { pg_wal: PathBuf },
    /// Streams WAL from a replication slot into the repository until stopped, storing the segment being
    /// written every `wal_stream.flush_ms` (an RPO of about a second; see README "WAL streaming").
    WalStream {
        /// Serve Prometheus metrics at http://ADDR/metrics (overrides `wal_stream.metrics_listen`).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<String>,
    },
    /// The background fetcher behind `archive-get --prefetch` (started by it).
    #[command(hide = true)]
    ArchivePrefetch { spool: PathBuf, count: usize },
    /// Restores a backup into a data directory, ready to recover from the archive to a target.
    Restore {
        #[arg(long)]
        pg_data: PathBuf,
        /// Backup label; by default the newest backup that can reach the target.
        #[arg(long)]
        set: Option<String>,
        /// Restore tablespace OID into DIR instead of its original location (repeatable).
        #[arg(long, value_name = "OID=DIR")]
        tablespace_map: Vec<String>,
        /// Where recovery stops: default (the archive's end), immediate (the backup's consistent point),
        /// time, lsn, xid, name (with --target), or standby (a replica of the stanza's cluster).
        #[arg(long = "type", value_enum, default_value_t = RecoveryType::Default)]
        recovery: RecoveryType,
        /// The target for --type time ('2026-11-24 15:16:59+00'; local time without a zone), lsn
        /// (0/5000028), xid or name (a restore point).
        #[arg(long, allow_hyphen_values = true)]
        target: Option<String>,
        /// What the server does at the target (default promote).
        #[arg(long, value_enum)]
        target_action: Option<strata_restore::target::TargetAction>,
        /// current, latest (PostgreSQL's default) or a timeline number.
        #[arg(long)]
        target_timeline: Option<String>,
        /// Stop just before the target instead of just after it (time, lsn, xid).
        #[arg(long)]
        target_exclusive: bool,
        /// Restore over an existing data directory (stopped): rewrite only what differs from the backup,
        /// remove what the backup does not have.
        #[arg(long)]
        delta: bool,
        /// Segments the restore_command fetches ahead of recovery (0: one at a time, as asked).
        #[arg(long, default_value_t = strata_restore::restore::DEFAULT_WAL_PREFETCH)]
        wal_prefetch: usize,
    },
    /// Proves a backup restores: restores it into a scratch directory, starts PostgreSQL on it (never
    /// archiving), runs pg_amcheck and the [[restore_test.query]] checks, removes it all, and stores the
    /// result in the repository. Exits 1 when the test fails.
    RestoreTest {
        /// Backup label; by default the newest backup that can reach the target.
        #[arg(long)]
        set: Option<String>,
        /// Where recovery stops: default (the archive's end), immediate, time, lsn, xid or name (with
        /// --target).
        #[arg(long = "type", value_enum, default_value_t = RecoveryType::Default)]
        recovery: RecoveryType,
        /// The target for --type time, lsn, xid or name (as for restore).
        #[arg(long, allow_hyphen_values = true)]
        target: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Shows backups and the WAL archive.
    Info {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Reads every backup (or one) and the WAL archive back from each repository and checks them: chunk
    /// hashes, page checksums, WAL presence and hashes. Exits non-zero when anything is damaged.
    Verify {
        /// Only this backup (and the WAL from its start).
        #[arg(long)]
        set: Option<String>,
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
        /// Unreferenced packs younger than this are kept (running backups are protected by their markers).
        #[arg(long, default_value_t = cmd::expire::DEFAULT_GC_GRACE_SECS)]
        gc_grace_secs: u64,
    },
    /// Pins a backup (expire keeps it and what it depends on) or unpins it, and attaches a note.
    #[command(group = clap::ArgGroup::new("change").required(true).multiple(true).args(["pin", "unpin", "note"]))]
    Annotate {
        /// The backup's label.
        #[arg(long)]
        set: String,
        #[arg(long, conflicts_with = "unpin")]
        pin: bool,
        #[arg(long)]
        unpin: bool,
        /// A note shown by `info` ("" removes it).
        #[arg(long)]
        note: Option<String>,
    },
    /// Rewraps the repositories' data key under a new KMS key or passphrase (no data is re-encrypted).
    #[command(group(clap::ArgGroup::new("new_key").required(true).multiple(false)))]
    RepoRekey {
        /// The KMS key (id, ARN or alias) to wrap the data key with from now on.
        #[arg(long, group = "new_key")]
        new_kms_key_id: Option<String>,
        /// A file whose first line is the new passphrase.
        #[arg(long, group = "new_key")]
        new_passphrase_file: Option<PathBuf>,
        /// An environment variable holding the new passphrase.
        #[arg(long, group = "new_key")]
        new_passphrase_env: Option<String>,
    },
    /// Makes a NATS user's nkey for a role of the fleet: writes the seed to FILE (mode 0600; never over an
    /// existing file; the role's nats.nkey_file) and prints the public key for the server's accounts.conf.
    /// Needs no config.
    NatsKeygen { file: PathBuf },
    /// Shows the audit log (`[audit] path`): who ran which operation, when, and how it ended. With
    /// --stanza, that stanza's operations and those about every stanza (config changes, rekeys).
    Audit {
        /// Operations since a date or time (UTC: 2026-12-01, '2026-12-01 10:00') or for a while (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only this operation (backup, restore, expire, verify, restore-test, config-change,
        /// stanza-create, annotate, repo-rekey).
        #[arg(long)]
        op: Option<strata_audit::Op>,
        /// Only operations that ended so: ok or failed.
        #[arg(long)]
        outcome: Option<strata_audit::Outcome>,
        /// text: one line per operation; json: the log's entries, one JSON object per line.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Before the config: keys are made on a machine that may have none yet.
    if let Command::NatsKeygen { file } = &cli.command {
        println!("{}", cmd::nats_keygen::run(file)?);
        return Ok(());
    }
    let cfg = Config::load(&cli.config, std::env::vars())?;
    let config_path = std::fs::canonicalize(&cli.config).unwrap_or(cli.config.clone());
    strata_command::audit::note_config(&cfg, &config_path);
    // The audit log is read without a stanza or a repository, so that it can be read when they are broken.
    if let Command::Audit { since, op, outcome, output } = &cli.command {
        return cmd::audit::show(&cfg, cli.stanza.as_deref(), since.as_deref(), *op, *outcome, *output);
    }
    // repo-rekey is about the repositories, not a stanza, and must run while the old key still unwraps.
    if let Command::RepoRekey { new_kms_key_id, new_passphrase_file, new_passphrase_env } = cli.command {
        let what = json!({
            "new_kms_key_id": new_kms_key_id,
            "new_passphrase_file": new_passphrase_file,
            "new_passphrase_env": new_passphrase_env,
            "args": strata_command::audit::args(),
        });
        let rekey = async {
            let new = cmd::rekey::NewKey::from_args(new_kms_key_id, new_passphrase_file, new_passphrase_env)?;
            cmd::rekey::run(&cfg, &new).await.context("repo-rekey")
        };
        return audit_op(&cfg, Op::RepoRekey, None, None, what, rekey).await;
    }
    let stanza = cli.stanza.clone().context("--stanza is required (or STRATA_STANZA)")?;
    cfg.stanza(&stanza)?;
    let cli_repo = cli.repo.clone();
    // archive-push in async mode asks the shipper before opening the repository: the archiver calls it
    // once per segment, serially, and the answer is usually ready.
    let mut asked_shipper = false;
    if let (Command::ArchivePush { path }, None) = (&cli.command, &cli.repo) {
        let asker = cmd::shipper::Asker { cfg: &cfg, config_path: &config_path, stanza: &stanza };
        if cmd::archive::asks_shipper_first(&cfg) {
            if cmd::archive::ask_shipper_first(&asker, path).await.context("archive-push")? {
                return Ok(());
            }
            asked_shipper = true;
        }
    }
    let repo_cfg = match &cli.repo {
        None => cfg.primary_repo(),
        Some(name) => {
            let rc = cfg.repo_named(name).with_context(|| {
                let known: Vec<&str> = cfg.repo.iter().map(|r| r.name.as_str()).collect();
                format!("--repo {name}: no [[repo]] has that name (the config defines: {})", known.join(", "))
            })?;
            let reads = matches!(
                cli.command,
                Command::Restore { .. }
                    | Command::Info { .. }
                    | Command::ArchiveGet { .. }
                    | Command::ArchivePrefetch { .. }
                    | Command::Expire { .. }
                    | Command::Verify { .. }
            );
            if rc.name != cfg.primary_repo().name && !reads {
                anyhow::bail!("--repo {name}: only restore, info, archive-get, expire and verify work on another repository than the primary");
            }
            rc
        }
    };
    let repo = strata_runtime::open_repo(&cfg, repo_cfg).await?;
    let ctx = Context_ { cfg: Arc::new(cfg), config_path, stanza, repo };
    let cfg: &Config = &ctx.cfg;
    // The audited commands' entries name the stanza and the repository they worked on.
    let (stanza, repo) = (Some(ctx.stanza.as_str()), Some(ctx.repo.name()));
    match cli.command {
        Command::StanzaCreate => {
            let what = json!({ "args": strata_command::audit::args() });
            audit_op(cfg, Op::StanzaCreate, stanza, repo, what, cmd::stanza::create(&ctx)).await
        }
        Command::Backup { backup_type, checksum_all } => {
            let what = json!({ "type": backup_type.to_type().as_str(), "checksum_all": checksum_all, "args": strata_command::audit::args() });
            let backup = async { cmd::backup::run(&ctx, backup_type.to_type(), checksum_all).await.map(strata_command::audit::BackupLabel) };
            audit_op(cfg, Op::Backup, stanza, repo, what, backup).await.map(drop)
        }
        Command::ArchivePush { path } => cmd::archive::push(&ctx, &path, asked_shipper).await.context("archive-push"),
        Command::ArchiveGet { wal_name, dest, prefetch } => {
            cmd::archive::get(&ctx, &wal_name, &dest, prefetch).await.map_err(|e| {
                if e.is::<cmd::archive::NotArchived>() { e } else { e.context("archive-get") }
            })
        }
        Command::ArchiveShipper { pg_wal } => cmd::shipper::run(&ctx, &pg_wal).await.context("archive-shipper"),
        Command::WalStream { metrics_listen } => cmd::stream::run(&ctx, metrics_listen.as_deref()).await.context("wal-stream"),
        Command::ArchivePrefetch { spool, count } => cmd::archive::prefetch(&ctx, &spool, count).await.context("archive-prefetch"),
        Command::Restore {
            pg_data,
            set,
            tablespace_map,
            recovery,
            target,
            target_action,
            target_timeline,
            target_exclusive,
            delta,
            wal_prefetch,
        } => {
            let opts = strata_restore::restore::RestoreOptions {
                pg_data: &pg_data,
                set: set.as_deref(),
                tablespace_map: &tablespace_map,
                recovery: strata_restore::target::RecoveryArgs {
                    kind: recovery,
                    target: target.as_deref(),
                    action: target_action,
                    timeline: target_timeline.as_deref(),
                    exclusive: target_exclusive,
                },
                delta,
                wal_prefetch,
            };
            let what = json!({
                "pg_data": pg_data,
                "set": set,
                "type": format!("{recovery:?}").to_lowercase(),
                "target": target,
                "delta": delta,
                "args": strata_command::audit::args(),
            });
            audit_op(cfg, Op::Restore, stanza, repo, what, async { strata_restore::restore::run(&ctx, &opts).await.context("restore") }).await
        }
        Command::RestoreTest { set, recovery, target, output } => {
            let what = json!({ "set": set, "type": format!("{recovery:?}").to_lowercase(), "target": target, "args": strata_command::audit::args() });
            let opts = strata_verify::restore_test::RestoreTestOptions { set, recovery, target, ..Default::default() };
            audit_op(cfg, Op::RestoreTest, stanza, repo, what, strata_verify::restore_test::run(&ctx, &opts, output)).await.map(drop)
        }
        Command::Info { output } => cmd::info::run(&ctx, output).await,
        Command::Check => cmd::check::run(&ctx).await.context("check"),
        Command::Verify { set, output } => {
            let what = json!({ "set": set, "args": strata_command::audit::args() });
            let repo = if cli_repo.is_some() { repo } else { None };
            let verify = strata_verify::verify::run(&ctx, set.as_deref(), output, cli_repo.is_none());
            audit_op(cfg, Op::Verify, stanza, repo, what, verify).await.map(drop)
        }
        Command::Expire { retention_full, dry_run, gc_grace_secs } => {
            let opts = cmd::expire::ExpireOptions { retention_full, dry_run, gc_grace_secs };
            let what = json!({ "retention_full": retention_full, "dry_run": dry_run, "args": strata_command::audit::args() });
            // Without --repo, expire works on every repository in turn.
            let repo = if cli_repo.is_some() { repo } else { None };
            let expire = async { cmd::expire::run_all(&ctx, &opts, cli_repo.is_some(), false).await.context("expire") };
            audit_op(cfg, Op::Expire, stanza, repo, what, expire).await
        }
        Command::Annotate { set, pin, unpin, note } => {
            let pinned = if pin { Some(true) } else if unpin { Some(false) } else { None };
            let what = json!({ "set": set, "pin": pinned, "note": note, "args": strata_command::audit::args() });
            let annotate = async { cmd::annotate::run(&ctx, &set, pinned, note.as_deref()).await.context("annotate") };
            audit_op(cfg, Op::Annotate, stanza, repo, what, annotate).await
        }
        Command::RepoRekey { .. } => unreachable!("repo-rekey is dispatched before a stanza is required"),
        Command::Audit { .. } => unreachable!("audit is dispatched before a stanza is required"),
        Command::NatsKeygen { .. } => unreachable!("nats-keygen is dispatched before the config is read"),
    }
}
