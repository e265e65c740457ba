//! `strata-bench repos` (was `loadtest/bench-repos.sh`): what a repository's kind and encryption cost, in
//! one run: full backup and restore of one database into four repositories, interleaved rep by rep so that
//! the machine's drift hits them alike:
//! - `posix`: a local directory, no encryption;
//! - `posix-kms`: the same, encrypted (AES-256-GCM, data key wrapped by KMS);
//! - `s3`: a bucket on a loopback S3 server (moto 5.2.5, a single-threaded Python server), no encryption;
//! - `s3-kms`: the same bucket, encrypted.
//!
//! moto (S3 and KMS on one loopback port) is the harness's [`S3Server`]; the cluster is common's
//! [`BenchCluster`] (kept when it holds the same dataset, as the script did); every handle stops what it
//! started when it is dropped, also when a step fails. The `archive_command` pushes to the repository of
//! the variant being measured: a wrapper reads the config's path from `<bench dir>/current-config`.
//!
//! Each measurement is one row of `<bench dir>/results-repos.tsv` (the script's columns); then the medians
//! and the ratios that matter (encrypted / plain on each kind; S3 / posix) are printed as the script's
//! table. The script's `timed` reported a failed backup or restore as a time; here a failed command fails
//! the run. Unlike the script, the load's WAL is not archived (common's cluster loads with `/bin/true` as
//! `archive_command`), so the first variant's first backup no longer pushes the load's backlog; and the
//! data is in database `postgres` (common's cluster), not `bench`, so the database is one empty database
//! (about 7.5 MB) smaller than the script's.
//!
//! Knobs: the script's, minus `PGPORT` (the harness reserves the port), `PGBIN` and `MOTO` (the harness's
//! `STRATA_PG_BIN_DIR` and `STRATA_MOTO_SERVER`). `DATASET`/`SCALE`/`OLTP_MB` are
//! `full`'s and `incr`'s ([`super::dataset_args`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use strata_integration::{S3Server, StrataBins};

use super::common::{
    self, log, median, output_of, run_logged, settle, timed, BenchCluster, Kv, Results, Workspace,
    STANZA,
};
use super::dataset_args::DatasetArgs;

const BUCKET: &str = "strata-bench";
const VARIANTS: [&str; 4] = ["posix", "posix-kms", "s3", "s3-kms"];

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// DATASET, SCALE, OLTP_MB.
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Measurements per variant and operation.
    #[arg(long, env = "REPS", default_value_t = 3)]
    pub reps: u32,
    /// Everything goes here: cluster, repositories, configs, logs, results.
    #[arg(long, env = "BENCH_DIR", default_value = "/tmp/strata-bench-repos")]
    pub bench_dir: PathBuf,
    /// Directory of the Strata release binaries (default: the workspace's target/release).
    #[arg(long, env = "STRATA_BIN")]
    pub strata_bin: Option<PathBuf>,
    /// Seconds of pause after sync before each measurement.
    #[arg(long, env = "PAUSE", default_value_t = 2.0)]
    pub pause: f64,
    /// Variants to measure, in this order: posix posix-kms s3 s3-kms.
    #[arg(long, env = "VARIANTS", default_value = "posix posix-kms s3 s3-kms")]
    pub variants: String,
}

/// One measurement (a row of results-repos.tsv).
struct Row {
    variant: String,
    op: &'static str,
    secs: f64,
}

pub fn run(args: &Args) -> Result<Kv> {
    let variants: Vec<&str> = args.variants.split_whitespace().collect();
    if let Some(bad) = variants.iter().find(|v| !VARIANTS.contains(v)) {
        bail!(
            "VARIANTS: unknown variant {bad:?} (known: {})",
            VARIANTS.join(" ")
        );
    }
    let dataset = args.data.dataset()?;
    let desc = args.data.desc();
    let ws = Workspace::create(&args.bench_dir)?;
    let bins = common::install_binaries(args.strata_bin.as_deref(), &ws)?;

    // moto: S3 + KMS on one loopback port.
    let s3 = S3Server::start(ws.test_dir());
    s3.create_bucket(BUCKET);
    let kms_key = s3.kms_create_key();
    log(format!("moto on {}, KMS key {kms_key}", s3.endpoint()));

    let settings = [
        ("shared_buffers", "512MB".to_string()),
        ("max_wal_size", "4GB".to_string()),
    ];
    // The script kept a cluster holding the same dataset without being asked (it had no REUSE knob).
    let mut cluster = BenchCluster::open(&ws, dataset, true, &settings)?;
    // No variant yet: until the first one is written, pushes fail and PostgreSQL keeps the WAL for it.
    let current = ws.path("current-config");
    if current.exists() {
        fs::remove_file(&current)
            .with_context(|| format!("cannot remove {}", current.display()))?;
    }
    let wrapper = write_archive_wrapper(&ws, &bins, &current)?;
    cluster.set_archive_command(&format!("{} %p", wrapper.display()))?;
    let db_bytes = cluster.db_bytes();
    log(format!("database: {} MB", db_bytes / 1_000_000));

    let run_id = common::run_id();
    let results_path = ws.path("results-repos.tsv");
    let results = Results::open(
        &results_path,
        &[
            "run",
            "dataset",
            "variant",
            "rep",
            "op",
            "seconds",
            "db_bytes",
            "stored_bytes",
        ],
    )?;
    // The Strata commands' output, this run's only (a failure's error shows its tail).
    let strata_log = ws.empty_log("strata-repos.log")?;
    let mut rows = Vec::new();
    for rep in 1..=args.reps {
        for &variant in &variants {
            let cfg = write_variant_config(&ws, &cluster, &s3, &kms_key, variant, &run_id, rep)?;
            write_atomically(&current, format!("{}\n", cfg.display()).as_bytes(), 0o644)?;
            let strata = |sub: &[&str]| {
                let mut cmd = bins.strata_cmd(&cfg, STANZA);
                cmd.args(sub);
                cmd
            };
            run_logged(
                &mut strata(&["stanza-create"]),
                &format!("strata stanza-create ({variant})"),
                &strata_log,
            )?;
            cluster.pg().psql("SELECT pg_switch_wal()"); // the next segments go to this variant's repository
            settle(args.pause);
            let secs = timed(
                &mut strata(&["backup", "--type", "full"]),
                &format!("strata backup ({variant}, rep {rep})"),
                &strata_log,
            )?;
            let stored = stored_bytes(&output_of(
                &mut strata(&["info", "--output", "json"]),
                "strata info",
            )?)?;
            let mut row = |op: &'static str, secs: f64| -> Result<()> {
                results.row(&[
                    run_id.clone(),
                    desc.clone(),
                    variant.to_string(),
                    rep.to_string(),
                    op.to_string(),
                    format!("{secs:.3}"),
                    db_bytes.to_string(),
                    stored.to_string(),
                ])?;
                rows.push(Row {
                    variant: variant.to_string(),
                    op,
                    secs,
                });
                Ok(())
            };
            row("backup", secs)?;
            log(format!(
                "{variant} rep {rep}: backup {secs:.3} s, stored {} MB",
                stored / 1_000_000
            ));
            let restore = ws.fresh_dir("restore", 0o700)?;
            settle(args.pause);
            let mut restore_cmd = strata(&["restore", "--pg-data"]);
            restore_cmd.arg(&restore);
            let secs = timed(
                &mut restore_cmd,
                &format!("strata restore ({variant}, rep {rep})"),
                &strata_log,
            )?;
            row("restore", secs)?;
            log(format!("{variant} rep {rep}: restore {secs:.3} s"));
            fs::remove_dir_all(&restore)
                .with_context(|| format!("cannot remove {}", restore.display()))?;
        }
    }

    let (table, kv) = summary(&rows, &desc, db_bytes, &run_id, args.reps);
    print!("{table}");
    Ok(kv)
}

/// `<bin>/archive-push.sh`: `strata archive-push` with the config named in `current` (the variant being
/// measured). A shell script because PostgreSQL runs `archive_command` through the shell anyway.
fn write_archive_wrapper(ws: &Workspace, bins: &StrataBins, current: &Path) -> Result<PathBuf> {
    let path = ws.path("bin").join("archive-push.sh");
    let text = format!(
        "#!/bin/sh\nexec {} --config \"$(cat {})\" --stanza {STANZA} archive-push \"$1\"\n",
        bins.path("strata").display(),
        current.display()
    );
    write_atomically(&path, text.as_bytes(), 0o755)?;
    Ok(path)
}

/// Writes `<bench dir>/strata-<variant>.toml` for this rep: posix variants get a fresh, empty repository
/// directory; S3 variants a fresh prefix (`<run>-<variant>-<rep>`) in the bucket; `-kms` variants an
/// `[encryption]` table with the moto KMS key.
fn write_variant_config(
    ws: &Workspace,
    cluster: &BenchCluster,
    s3: &S3Server,
    kms_key: &str,
    variant: &str,
    run_id: &str,
    rep: u32,
) -> Result<PathBuf> {
    let body = if variant.starts_with("posix") {
        common::posix_repo(&ws.fresh_dir(&format!("repo-{variant}"), 0o755)?)
    } else {
        s3.repo_config(BUCKET, &format!("{run_id}-{variant}-{rep}"))
    };
    let extra = if variant.ends_with("-kms") {
        format!("\n[encryption]\n{}", s3.kms_encryption_config(kms_key))
    } else {
        String::new()
    };
    // write_strata_config writes <bench dir>/strata.toml; each variant keeps its own file, renamed into place
    // so that an archive-push reading it never sees it half written.
    let written = common::write_strata_config(ws, "local", cluster, &[(variant, &body)], &extra);
    let cfg = ws.path(&format!("strata-{variant}.toml"));
    fs::rename(&written, &cfg)
        .with_context(|| format!("cannot rename {} to {}", written.display(), cfg.display()))?;
    Ok(cfg)
}

/// Writes `path` through a temporary file and a rename, with `mode`.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// `stored_bytes` of the stanza's newest backup, from `strata info --output json`.
fn stored_bytes(info_json: &str) -> Result<u64> {
    let info: serde_json::Value =
        serde_json::from_str(info_json).context("strata info --output json: not JSON")?;
    info[0]["backups"]
        .as_array()
        .and_then(|b| b.last())
        .and_then(|b| b["stored_bytes"].as_u64())
        .with_context(|| format!("strata info: no stored_bytes of a last backup in {info}"))
}

/// The script's summary: medians per variant and operation, MB/s of the database, and the ratios;
/// also as key=value lines (`<variant>_backup_s`, `<variant>_restore_s`, ...).
fn summary(rows: &[Row], desc: &str, db_bytes: u64, run_id: &str, reps: u32) -> (String, Kv) {
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if !order.contains(&r.variant.as_str()) {
            order.push(&r.variant);
        }
    }
    let med = |v: &str, op: &str| {
        median(
            &rows
                .iter()
                .filter(|r| r.variant == v && r.op == op)
                .map(|r| r.secs)
                .collect::<Vec<_>>(),
        )
    };
    let db_mb = db_bytes as f64 / 1e6;
    let mut kv = Kv::new();
    kv.set("run_id", run_id);
    kv.set("script", "bench-repos");
    kv.set("dataset_desc", desc);
    kv.set("db_bytes", db_bytes);
    kv.set("reps", reps);
    let mut out = format!("dataset: {desc}, {db_mb:.0} MB, medians of {reps} reps, run {run_id}\n");
    out += &format!(
        "{:<10} {:>9} {:>7} {:>10} {:>7}\n",
        "variant", "backup s", "MB/s", "restore s", "MB/s"
    );
    for v in &order {
        let (b, r) = (
            med(v, "backup").unwrap_or(f64::NAN),
            med(v, "restore").unwrap_or(f64::NAN),
        );
        out += &format!(
            "{v:<10} {b:>9.2} {:>7.0} {r:>10.2} {:>7.0}\n",
            db_mb / b,
            db_mb / r
        );
        kv.set(&format!("{v}_backup_s"), format!("{b:.3}"));
        kv.set(&format!("{v}_restore_s"), format!("{r:.3}"));
    }
    let ratio = |a: &str, b: &str, op: &str| common::ratio(med(a, op), med(b, op));
    for kind in ["posix", "s3"] {
        let kms = format!("{kind}-kms");
        if let (Some(b), Some(r)) = (ratio(&kms, kind, "backup"), ratio(&kms, kind, "restore")) {
            out +=
                &format!("encrypted / plain on {kind}: backup {b:.2}x, restore {r:.2}x the time\n");
            kv.set(&format!("ratio_{kind}_kms_backup"), format!("{b:.3}"));
            kv.set(&format!("ratio_{kind}_kms_restore"), format!("{r:.3}"));
        }
    }
    if let (Some(b), Some(r)) = (
        ratio("s3", "posix", "backup"),
        ratio("s3", "posix", "restore"),
    ) {
        out += &format!("s3 / posix: backup {b:.2}x, restore {r:.2}x the time\n");
        kv.set("ratio_s3_posix_backup", format!("{b:.3}"));
        kv.set("ratio_s3_posix_restore", format!("{r:.3}"));
    }
    (out, kv)
}
