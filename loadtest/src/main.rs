//! `strata-scale-model`: runs Strata's services as a fleet of network-namespace hosts on this machine and
//! measures how throughput scales with the number of sealer, uploader or replicator hosts. See
//! loadtest/README.md ("The scale model").

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use strata_loadtest::cgroup::CgroupMode;
use strata_loadtest::dataset::Dataset;
use strata_loadtest::model::{self, Mode, Options, Phase, RepoKind};
use strata_loadtest::net::{parse_delay_ms, parse_rate, LinkShape};
use strata_loadtest::{cleanup, report};

#[derive(Parser, Debug)]
#[command(
    about = "A scale model of a Strata fleet on one machine: hosts are network namespaces with CPU quotas and shaped links"
)]
struct Args {
    /// Remove what a killed run left (namespaces, links, cgroups, directories of dead runs), then exit.
    #[arg(long)]
    cleanup: bool,
    /// backup: full, incremental and WAL burst per shape; replicate: copy a full backup over the WAN link.
    #[arg(long, value_enum, default_value = "backup")]
    mode: Mode,
    /// Sealer host counts, one shape each (e.g. 1,2,4).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    sealers: Vec<usize>,
    /// Uploader host counts.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    uploaders: Vec<usize>,
    /// Replicator host counts (--mode replicate).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    replicators: Vec<usize>,
    /// nats-servers on the bus: 1, or 3 (a JetStream cluster, streams with 3 replicas).
    #[arg(long, default_value_t = 1)]
    buses: usize,
    /// CPU share of each sealer host, in cores (0.25 = a quarter of a core); unset: unlimited.
    #[arg(long)]
    sealer_cpu: Option<f64>,
    #[arg(long)]
    uploader_cpu: Option<f64>,
    #[arg(long)]
    replicator_cpu: Option<f64>,
    /// CPU share of the database host (PostgreSQL, collector, pgbench).
    #[arg(long)]
    db_cpu: Option<f64>,
    /// Each sealer host's link: bandwidth (tc rate: 200mbit, 1gbit).
    #[arg(long)]
    sealer_link: Option<String>,
    /// Each uploader host's link bandwidth (its way to the repository and from the bus).
    #[arg(long)]
    uploader_link: Option<String>,
    /// Uploader host counts of a second curve in the same run (backup mode): shapes with the most
    /// sealers of --sealers and each of these uploader counts, each uploader host's link shaped to
    /// --uploader-curve-link so that the uploaders are the bottleneck (e.g. 1,2).
    #[arg(long, value_delimiter = ',')]
    uploader_curve: Vec<usize>,
    /// Each uploader host's link in the --uploader-curve shapes (tc rate, e.g. 200mbit).
    #[arg(long, default_value = "200mbit")]
    uploader_curve_link: String,
    #[arg(long)]
    replicator_link: Option<String>,
    #[arg(long)]
    db_link: Option<String>,
    /// The S3 host's link bandwidth (the WAN in replicate mode; every host's way to S3 shares it).
    #[arg(long)]
    repo_link: Option<String>,
    /// Round-trip time added between the S3 server and everyone else, e.g. 60ms (a relay on the S3 host
    /// delays each direction by half).
    #[arg(long)]
    repo_rtt: Option<String>,
    /// The primary repository: a shared directory, or an S3 server (moto) on a host of its own.
    #[arg(long, value_enum, default_value = "posix")]
    repo: RepoKind,
    /// pgbench (pgbench -i -s SCALE) or oltp (loadtest/oltp.sql, about OLTP_MB MB, compression-bound).
    #[arg(long, default_value = "pgbench")]
    dataset: String,
    #[arg(long, default_value_t = 10)]
    scale: u32,
    #[arg(long, default_value_t = 200)]
    oltp_mb: u32,
    /// Phases per shape in backup mode.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "full,incr,wal"
    )]
    phases: Vec<Phase>,
    /// Seconds of churn (pgbench) before the incremental.
    #[arg(long, default_value_t = 10)]
    churn_secs: u32,
    /// Seconds of the WAL burst (pgbench, 4 clients).
    #[arg(long, default_value_t = 10)]
    wal_secs: u32,
    /// [pipeline] settings, "key=value" (repeatable), e.g. --pipeline sealer_workers=1.
    #[arg(long)]
    pipeline: Vec<String>,
    /// Copy tasks per replicator process ([replicator] workers).
    #[arg(long, default_value_t = 4)]
    replicator_workers: usize,
    /// cgroup version for the CPU quotas and figures.
    #[arg(long, value_enum, default_value = "auto")]
    cgroup: CgroupMode,
    /// Directory of the Strata binaries (a release build for measurements); default: $STRATA_BIN_DIR, else
    /// the workspace's debug build.
    #[arg(long, env = "STRATA_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 1800)]
    phase_timeout: u64,
    /// Where the key=value results go.
    #[arg(long, default_value = "scale-model.kv")]
    out: PathBuf,
    /// Where the scaling curve goes (PNG); drawn when one host count varies.
    #[arg(long, default_value = "scale-model.png")]
    plot: PathBuf,
    /// A TrueType font for the plot's labels (default: DejaVu Sans from /usr/share/fonts).
    #[arg(long)]
    font: Option<PathBuf>,
}

fn shape(rate: &Option<String>, rtt: &Option<String>) -> Result<LinkShape> {
    Ok(LinkShape {
        rate_bps: rate.as_deref().map(parse_rate).transpose()?,
        delay_ms: rtt
            .as_deref()
            .map(parse_delay_ms)
            .transpose()?
            .map(|rtt| rtt / 2.0),
    })
}

fn options(a: &Args) -> Result<Options> {
    let dataset = match a.dataset.as_str() {
        "pgbench" => Dataset::Pgbench { scale: a.scale },
        "oltp" => Dataset::Oltp { mb: a.oltp_mb },
        other => bail!("--dataset must be pgbench or oltp, not {other:?}"),
    };
    if !(a.buses == 1 || a.buses == 3) {
        bail!("--buses must be 1 or 3");
    }
    for (name, counts, max) in [
        ("--sealers", &a.sealers, 40),
        ("--uploaders", &a.uploaders, 40),
        ("--replicators", &a.replicators, 10),
        ("--uploader-curve", &a.uploader_curve, 40),
    ] {
        if counts.iter().any(|&n| n == 0 || n > max) {
            bail!("{name} counts must be 1..={max}");
        }
    }
    let pipeline = a
        .pipeline
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--pipeline {kv:?}: not key=value"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Options {
        mode: a.mode,
        sealers: a.sealers.clone(),
        uploaders: a.uploaders.clone(),
        replicators: a.replicators.clone(),
        buses: a.buses,
        sealer_cpu: a.sealer_cpu,
        uploader_cpu: a.uploader_cpu,
        replicator_cpu: a.replicator_cpu,
        db_cpu: a.db_cpu,
        sealer_link: shape(&a.sealer_link, &None)?,
        uploader_link: shape(&a.uploader_link, &None)?,
        uploader_curve: a.uploader_curve.clone(),
        uploader_curve_link: shape(&Some(a.uploader_curve_link.clone()), &None)?,
        replicator_link: shape(&a.replicator_link, &None)?,
        db_link: shape(&a.db_link, &None)?,
        repo_link: shape(&a.repo_link, &a.repo_rtt)?,
        repo: a.repo,
        dataset,
        phases: a.phases.clone(),
        churn_secs: a.churn_secs,
        wal_secs: a.wal_secs,
        pipeline,
        replicator_workers: a.replicator_workers,
        cgroup: a.cgroup,
        bin_dir: a.bin_dir.clone(),
        phase_timeout: Duration::from_secs(a.phase_timeout),
    })
}

/// The plot's caption: the dataset and only the caps and links that were set.
fn title(opts: &Options) -> String {
    let mut parts = vec![opts.dataset.describe()];
    for (name, cpu) in [
        ("sealer", opts.sealer_cpu),
        ("uploader", opts.uploader_cpu),
        ("replicator", opts.replicator_cpu),
        ("db", opts.db_cpu),
    ] {
        if let Some(c) = cpu {
            parts.push(format!("{name} {c} core"));
        }
    }
    for (name, link) in [
        ("sealer", &opts.sealer_link),
        ("uploader", &opts.uploader_link),
        ("replicator", &opts.replicator_link),
        ("db", &opts.db_link),
        ("repo", &opts.repo_link),
    ] {
        if !link.is_none() {
            parts.push(format!("{name} link {}", link.describe()));
        }
    }
    if !opts.uploader_curve.is_empty() {
        parts.push(format!(
            "uploader curve: uploader link {}",
            opts.uploader_curve_link.describe()
        ));
    }
    format!("Strata scale model: {}", parts.join(", "))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.cleanup {
        let n = cleanup::cleanup()?;
        println!("cleanup: removed {n} leftovers");
        return Ok(());
    }
    let opts = options(&args)?;
    model::install_signal_handlers();
    let report = model::run(&opts)?;
    let text = report::key_values(&report);
    print!("{text}");
    report::write_key_values(&report, &args.out)?;
    eprintln!("results: {}", args.out.display());
    if !report::curves(&report).is_empty() {
        report::plot(&report, &title(&opts), &args.plot, args.font.as_deref())?;
        eprintln!("scaling curve: {}", args.plot.display());
    }
    Ok(())
}
