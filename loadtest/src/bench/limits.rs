//! `strata-bench limits` (was `loadtest/limits.sh`): the machine's limits that bound a backup, to print
//! next to the load test's figures.
//!
//! Measures, each `LIMITS_REPS` times (median):
//! - `disk_write_direct_mb_s`: `dd oflag=direct conv=fsync`, 1 MiB blocks, `DISK_MB` MiB from `/dev/zero`
//!   into a test file in `LIMITS_DIR` (the filesystem the benchmarks use: put it next to their bench dir);
//! - `disk_read_direct_mb_s`: `dd iflag=direct` of the same file, rewritten with random bytes first (zeros
//!   may be stored sparsely, and nothing below the filesystem may shortcut the reads);
//! - `cached_read_mb_s`: `dd` of the same file from the page cache (warm backups read from there);
//!
//! then `zstd_version`, and for every sample (`NAME=FILE`, `FILE`, or a data directory: its largest
//! relation file, normally the largest table's first 1 GiB segment; NAME defaults to the file's or the
//! directory's name):
//! - `zstd1_<NAME>_file`, `_file_bytes`: the file measured and its size;
//! - `zstd1_<NAME>_ratio`, `_mb_s`, `_dec_mb_s`: `zstd -b1 -e1 -i3 -T1` (one core, in memory) on its first
//!   `SAMPLE_MB` MiB: ratio, compression and decompression MB/s;
//! - `zstd1_<NAME>_cli_mb_s`, `_file_ratio`: `zstd -1 -T1 -c FILE` over the whole file (streaming CLI, one
//!   core), timed, and its ratio.
//!
//! MB = 10^6 bytes. The same commands as the script (`dd`, `zstd`), so the figures compare with the
//! script's. [`run`] returns the keys as `limits.sh` printed them (unprefixed); `strata-bench limits`
//! prints them on stdout (and into `LIMITS_OUT`). `full` (`LIMITS=1`) builds its [`Args`] with
//! [`Args::for_samples`] (`<bench dir>/limits`, `<dataset>=<heap file>`, `limits_out` its
//! `limits-<run>.txt`), reads the unprefixed keys for its summary's lines, and adds [`prefixed`]`(.., "limit_")`
//! to its key=value lines, as `bench-full.sh` did with `sed 's/^/limit_/'`.
//! Progress goes to stderr. A failed command fails the run; a figure is never made up from a failure.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

use super::common::{log, median, Kv};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Directory for the disk test file (removed afterwards).
    #[arg(long, env = "LIMITS_DIR", default_value = "/tmp/strata-limits")]
    pub limits_dir: PathBuf,
    /// Size of the disk test file, MiB.
    #[arg(long, env = "DISK_MB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub disk_mb: u64,
    /// MiB of each sample for `zstd -b`.
    #[arg(long, env = "SAMPLE_MB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_mb: u64,
    /// Repetitions of each disk measurement.
    #[arg(long, env = "LIMITS_REPS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub limits_reps: u32,
    /// Also write the key=value lines to this file.
    #[arg(long, env = "LIMITS_OUT")]
    pub limits_out: Option<PathBuf>,
    /// Print the key=value lines on stdout (as the script did); `full` turns this off.
    #[arg(skip = true)]
    pub print: bool,
    /// Samples for zstd: NAME=FILE, FILE, or a data directory (its largest relation file).
    pub samples: Vec<String>,
}

/// Parses the knobs alone (their env variables and defaults), for [`Args::for_samples`].
#[derive(Parser)]
struct Standalone {
    #[command(flatten)]
    args: Args,
}

impl Args {
    /// The arguments `full` uses with `LIMITS=1`: the disk test in `limits_dir`, the given samples
    /// (`NAME=FILE`), every other knob from its env variable or default, as the script got them from
    /// `bench-full.sh`'s environment; nothing printed on stdout.
    pub fn for_samples(limits_dir: &Path, samples: &[String]) -> Result<Args> {
        let mut argv = vec![
            "limits".to_string(),
            "--limits-dir".to_string(),
            limits_dir.display().to_string(),
            "--".to_string(),
        ];
        argv.extend(samples.iter().cloned());
        let mut args = Standalone::try_parse_from(argv)
            .context("limits: invalid knobs")?
            .args;
        args.print = false;
        Ok(args)
    }
}

/// Removes the test files however `run` ends.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = fs::remove_file(f);
        }
    }
}

fn progress(msg: &str) {
    log(format!("limits: {msg}"));
}

fn emit(kv: &mut Kv, key: &str, value: impl std::fmt::Display) {
    let value = value.to_string();
    progress(&format!("{key}={value}"));
    kv.set(key, value);
}

pub fn run(args: &Args) -> Result<Kv> {
    which("zstd").context("zstd is not installed (Debian package zstd)")?;
    which("dd").context("dd is missing")?;
    fs::create_dir_all(&args.limits_dir)
        .with_context(|| format!("cannot create {}", args.limits_dir.display()))?;
    let pid = std::process::id();
    let testf = args.limits_dir.join(format!("disk-test.{pid}"));
    let samplef = args.limits_dir.join(format!("zstd-sample.{pid}"));
    let _scratch = Scratch(vec![testf.clone(), samplef.clone()]);
    let mut kv = Kv::default();

    // ------------------------------------------------------------------------------------------- disk
    progress(&format!(
        "disk: {} MiB test file in {} ({})",
        args.disk_mb,
        args.limits_dir.display(),
        df_summary(&args.limits_dir)
    ));
    let count = format!("count={}", args.disk_mb);
    let of = format!("of={}", testf.display());
    let iff = format!("if={}", testf.display());
    let w = repeat(args.limits_reps, || {
        dd_mb_s(&[
            "if=/dev/zero",
            &of,
            "bs=1M",
            &count,
            "oflag=direct",
            "conv=fsync",
        ])
    })?;
    emit(&mut kv, "disk_write_direct_mb_s", median_text(&w));
    // Random bytes, so that nothing below the filesystem can shortcut the reads (zeros may be stored sparsely).
    write_random(&testf, args.disk_mb * 1_048_576)?;
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let rd = repeat(args.limits_reps, || {
        dd_mb_s(&[&iff, "of=/dev/null", "bs=1M", "iflag=direct"])
    })?;
    emit(&mut kv, "disk_read_direct_mb_s", median_text(&rd));
    read_all(&testf)?; // into the page cache
    let rc = repeat(args.limits_reps, || {
        dd_mb_s(&[&iff, "of=/dev/null", "bs=1M"])
    })?;
    emit(&mut kv, "cached_read_mb_s", median_text(&rc));
    fs::remove_file(&testf).with_context(|| format!("cannot remove {}", testf.display()))?;

    // ------------------------------------------------------------------------------------------- zstd
    emit(&mut kv, "zstd_version", zstd_version()?);
    for arg in &args.samples {
        let (name, mut path) = sample_name_path(arg);
        if path.is_dir() {
            path = largest_relation_file(&path)?
                .with_context(|| format!("no relation file under {}/base", path.display()))?;
        }
        if !path.is_file() {
            bail!("sample {arg}: {} is not a file", path.display());
        }
        let size = fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        emit(&mut kv, &format!("zstd1_{name}_file"), path.display());
        emit(&mut kv, &format!("zstd1_{name}_file_bytes"), size);
        copy_head(&path, &samplef, args.sample_mb * 1_048_576)?;
        let (ratio, cmbs, dmbs) = zstd_bench(&samplef)?;
        emit(&mut kv, &format!("zstd1_{name}_ratio"), ratio);
        emit(&mut kv, &format!("zstd1_{name}_mb_s"), cmbs);
        emit(&mut kv, &format!("zstd1_{name}_dec_mb_s"), dmbs);
        read_all(&path)?; // from the page cache, as the in-memory benchmark
        let t0 = Instant::now();
        let csize = zstd_cli_bytes(&path)?;
        let secs = t0.elapsed().as_secs_f64();
        emit(
            &mut kv,
            &format!("zstd1_{name}_cli_mb_s"),
            format!("{:.0}", size as f64 / 1e6 / secs),
        );
        emit(
            &mut kv,
            &format!("zstd1_{name}_file_ratio"),
            format!("{:.2}", size as f64 / csize.max(1) as f64),
        );
    }

    if args.print {
        print!("{}", kv.render());
    }
    if let Some(out) = &args.limits_out {
        kv.write(out)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(kv)
}

/// `kv` with `prefix` before every key: `prefixed(&limits, "limit_")` gives the `limit_*` lines that
/// `bench-full.sh` appended to its summary's key=value file (`sed 's/^/limit_/'`).
pub fn prefixed(kv: &Kv, prefix: &str) -> Kv {
    let mut out = Kv::new();
    for line in kv.render().lines() {
        if let Some((k, v)) = line.split_once('=') {
            out.set(&format!("{prefix}{k}"), v);
        }
    }
    out
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("{program} not found in PATH");
    }
    Ok(())
}

fn repeat(reps: u32, mut f: impl FnMut() -> Result<f64>) -> Result<Vec<f64>> {
    (0..reps).map(|_| f()).collect()
}

/// The script's `median`: the middle value as measured (whole MB/s) for an odd count, the mean of the two
/// middle ones with one decimal for an even count.
fn median_text(values: &[f64]) -> String {
    let m = median(values).unwrap_or(0.0);
    if values.len() % 2 == 1 {
        format!("{m}")
    } else {
        format!("{m:.1}")
    }
}

/// MB/s of one `dd` run, from its own byte count and seconds ("N bytes (...) copied, S s, ..."), rounded to
/// whole MB/s as the script's `printf "%.0f"`.
fn dd_mb_s(operands: &[&str]) -> Result<f64> {
    let out = Command::new("dd")
        .args(operands)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .context("cannot run dd")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "dd {} failed ({}): {}",
            operands.join(" "),
            out.status,
            stderr.trim()
        );
    }
    let mb_s = parse_dd(&stderr).with_context(|| {
        format!(
            "dd {}: no \"bytes ... copied\" line in {stderr:?}",
            operands.join(" ")
        )
    })?;
    Ok(format!("{mb_s:.0}").parse()?)
}

fn parse_dd(stderr: &str) -> Option<f64> {
    let line = stderr
        .lines()
        .find(|l| l.contains("bytes") && l.contains("copied"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let bytes: f64 = fields.first()?.parse().ok()?;
    let i = fields.iter().rposition(|f| *f == "s" || *f == "s,")?;
    let secs: f64 = fields
        .get(i.checked_sub(1)?)?
        .replace(',', "")
        .parse()
        .ok()?;
    (secs > 0.0).then(|| bytes / 1e6 / secs)
}

/// "DEVICE, AVAIL free" from `df -h DIR`, as the script's progress line; "?" when df says nothing usable.
fn df_summary(dir: &Path) -> String {
    let out = Command::new("df").arg("-h").arg(dir).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let fields: Vec<&str> = text
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    match (fields.first(), fields.get(3)) {
        (Some(dev), Some(avail)) => format!("{dev}, {avail} free"),
        _ => "?".to_string(),
    }
}

/// `head -c BYTES /dev/urandom > FILE`.
fn write_random(file: &Path, bytes: u64) -> Result<()> {
    let mut src = fs::File::open("/dev/urandom")
        .context("cannot open /dev/urandom")?
        .take(bytes);
    let mut dst =
        fs::File::create(file).with_context(|| format!("cannot create {}", file.display()))?;
    let n = std::io::copy(&mut src, &mut dst)
        .with_context(|| format!("cannot write {}", file.display()))?;
    if n != bytes {
        bail!("{}: wrote {n} of {bytes} bytes", file.display());
    }
    dst.flush()?;
    Ok(())
}

/// `head -c BYTES SRC > DST`.
fn copy_head(src: &Path, dst: &Path, bytes: u64) -> Result<()> {
    let mut input = fs::File::open(src)
        .with_context(|| format!("cannot open {}", src.display()))?
        .take(bytes);
    let mut output =
        fs::File::create(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    std::io::copy(&mut input, &mut output)
        .with_context(|| format!("cannot copy {} into {}", src.display(), dst.display()))?;
    Ok(())
}

/// `cat FILE > /dev/null`: reads it whole (into the page cache).
fn read_all(file: &Path) -> Result<()> {
    let mut f = fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    std::io::copy(&mut f, &mut std::io::sink())
        .with_context(|| format!("cannot read {}", file.display()))?;
    Ok(())
}

/// "v1.5.4" from `zstd --version`.
fn zstd_version() -> Result<String> {
    let out = Command::new("zstd")
        .arg("--version")
        .output()
        .context("cannot run zstd --version")?;
    if !out.status.success() {
        bail!("zstd --version failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .find(|w| {
            w.len() > 1
                && w.starts_with('v')
                && w[1..].chars().all(|c| c.is_ascii_digit() || c == '.')
        })
        .map(str::to_string)
        .with_context(|| format!("no version in {text:?}"))
}

/// NAME and PATH of a sample argument: `NAME=PATH`; a file (its name); a data directory (its own name, or
/// its parent's when it is called `pgdata`). NAME keeps letters, digits and `_` (others become `_`).
fn sample_name_path(arg: &str) -> (String, PathBuf) {
    let base = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (name, path) = match arg.split_once('=') {
        Some((name, path)) => (name.to_string(), PathBuf::from(path)),
        None => {
            let path = PathBuf::from(arg);
            let name = if path.is_dir() && base(&path) == "pgdata" {
                path.parent().map(base).unwrap_or_default()
            } else {
                base(&path)
            };
            (name, path)
        }
    };
    let name = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (name, path)
}

/// The largest file under `DIR/base` named like a relation's main fork (digits, or digits and a segment
/// number): normally the largest table's first segment.
fn largest_relation_file(dir: &Path) -> Result<Option<PathBuf>> {
    fn is_relation(name: &str) -> bool {
        let (rel, seg) = name.split_once('.').unwrap_or((name, "1"));
        !rel.is_empty()
            && !seg.is_empty()
            && rel.bytes().all(|b| b.is_ascii_digit())
            && seg.bytes().all(|b| b.is_ascii_digit())
    }
    fn walk(dir: &Path, best: &mut Option<(u64, PathBuf)>) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let path = entry.path();
            if ft.is_dir() {
                walk(&path, best)?;
            } else if ft.is_file() && is_relation(&entry.file_name().to_string_lossy()) {
                let size = entry.metadata()?.len();
                if best.as_ref().is_none_or(|b| (size, &path) > (b.0, &b.1)) {
                    *best = Some((size, path));
                }
            }
        }
        Ok(())
    }
    let base = dir.join("base");
    let mut best = None;
    walk(&base, &mut best).with_context(|| format!("cannot list {}", base.display()))?;
    Ok(best.map(|(_, p)| p))
}

/// `zstd -b1 -e1 -i3 -T1 FILE`: (ratio, compression MB/s, decompression MB/s) as zstd prints them
/// ("... : IN -> OUT (xR), C MB/s, D MB/s").
fn zstd_bench(file: &Path) -> Result<(String, String, String)> {
    let out = Command::new("zstd")
        .args(["-b1", "-e1", "-i3", "-T1"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .context("cannot run zstd -b1")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "zstd -b1 -e1 -i3 -T1 {} failed ({}): {}",
            file.display(),
            out.status,
            text.trim()
        );
    }
    parse_zstd_bench(&text).with_context(|| format!("zstd -b1: no result line in {text:?}"))
}

/// The result in `zstd -b`'s output: the last line with "->" and both speeds. zstd (without a terminal)
/// may print a compression-only progress line after its result line, where the script took that line
/// and printed an empty `_dec_mb_s`.
fn parse_zstd_bench(text: &str) -> Option<(String, String, String)> {
    text.split(['\r', '\n'])
        .filter(|l| l.contains("->"))
        .rev()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ratio = fields
                .iter()
                .find(|f| f.starts_with("(x"))?
                .replace(['(', 'x', ')', ','], "");
            let mbs: Vec<&str> = fields
                .windows(2)
                .filter(|w| w[1].starts_with("MB/s"))
                .map(|w| w[0])
                .collect();
            Some((ratio, mbs.first()?.to_string(), mbs.get(1)?.to_string()))
        })
}

/// Bytes `zstd -1 -T1 -c FILE` writes (the script's `| wc -c`).
fn zstd_cli_bytes(file: &Path) -> Result<u64> {
    let mut child = Command::new("zstd")
        .args(["-1", "-T1", "-c"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run zstd -1")?;
    let mut stdout = child.stdout.take().context("zstd stdout")?;
    let n = std::io::copy(&mut stdout, &mut std::io::sink());
    let status = child.wait().context("waiting for zstd -1")?;
    let n = n.context("reading zstd -1's output")?;
    if !status.success() {
        bail!("zstd -1 -T1 -c {} failed ({status})", file.display());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dd_and_zstd_output() {
        let dd = "20+0 records in\n20+0 records out\n20971520 bytes (21 MB, 20 MiB) copied, 0.0256495 s, 818 MB/s\n";
        assert_eq!(format!("{:.0}", parse_dd(dd).unwrap()), "818");
        let z = " 1#zs :   5000000 ->   5000127 (x1.000), 6225.2 MB/s \r 1#zs :   5000000 ->   5000127 (x1.000), 6225.2 MB/s, 39631.0 MB/s\n";
        assert_eq!(
            parse_zstd_bench(z).unwrap(),
            ("1.000".into(), "6225.2".into(), "39631.0".into())
        );
        let late_progress = " =-zs :  16777216 ->    417284 (x40.21), 2008.2 MB/s, 3745.9 MB/s\n =-zs :  16777216 ->    417284 (x40.21), 2008.2 MB/s \r 1#\n";
        assert_eq!(
            parse_zstd_bench(late_progress).unwrap(),
            ("40.21".into(), "2008.2".into(), "3745.9".into())
        );
        assert_eq!(parse_zstd_bench(" =-zs : 1 -> 1 (x1.0), 5.0 MB/s \n"), None);
    }

    #[test]
    fn medians_like_the_script() {
        assert_eq!(median_text(&[800.0, 818.0, 900.0]), "818");
        assert_eq!(median_text(&[800.0, 817.0]), "808.5");
    }

    #[test]
    fn prefixes_keys_for_full() {
        let mut kv = Kv::new();
        kv.set("disk_read_direct_mb_s", 900);
        kv.set("zstd1_pgbench_file", "/a=b");
        assert_eq!(
            prefixed(&kv, "limit_").render(),
            "limit_disk_read_direct_mb_s=900\nlimit_zstd1_pgbench_file=/a=b\n"
        );
    }

    #[test]
    fn args_for_full() {
        let args = Args::for_samples(
            Path::new("/tmp/x/limits"),
            &["pgbench=/tmp/x/pgdata/base/5/16384".to_string()],
        )
        .unwrap();
        assert_eq!(args.limits_dir, Path::new("/tmp/x/limits"));
        assert_eq!(args.samples, ["pgbench=/tmp/x/pgdata/base/5/16384"]);
        assert!(!args.print);
    }

    #[test]
    fn sample_names() {
        assert_eq!(sample_name_path("pgbench=/x/y").0, "pgbench");
        assert_eq!(sample_name_path("/x/16384.1").0, "16384_1");
        assert_eq!(sample_name_path("a-b=/x").0, "a_b");
    }
}
