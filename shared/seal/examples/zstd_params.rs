//! Compares zstd parameter sets on 1 MiB chunks of a file, as the pipeline compresses them: output size and
//! single-core speed. This is how the fast levels' hash table size in `strata-seal` was chosen.
//!
//!     cargo run --release -p strata-seal --example zstd_params -- /path/to/a/relation/file [MB]
//!
//! Reads the first MB megabytes (default 200) of the file; times the best of three passes per setting.

use std::time::Instant;
use zstd::zstd_safe::{CCtx, CParameter};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: zstd_params FILE [MB]");
        std::process::exit(2);
    };
    let mb: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let mut data = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("error: cannot read {path}: {e}");
        std::process::exit(1)
    });
    data.truncate(mb * 1_000_000);
    let level = |l| CParameter::CompressionLevel(l);
    let configs: Vec<(&str, Vec<CParameter>)> = vec![
        ("level 1 (zstd's defaults)", vec![level(1)]),
        ("level 1, hashLog 13", vec![level(1), CParameter::HashLog(13)]),
        ("level 1, hashLog 12", vec![level(1), CParameter::HashLog(12)]),
        ("level 1, hashLog 11", vec![level(1), CParameter::HashLog(11)]),
        ("level 1, hashLog 10", vec![level(1), CParameter::HashLog(10)]),
        ("level 1, windowLog 17", vec![level(1), CParameter::WindowLog(17)]),
        ("level -1", vec![level(-1)]),
        ("level 2", vec![level(2)]),
        ("level 3", vec![level(3)]),
    ];
    let mut out = vec![0u8; zstd::zstd_safe::compress_bound(1 << 20)];
    println!("{} MB of {path}, 1 MiB chunks", data.len() / 1_000_000);
    for (name, params) in configs {
        let mut cctx = CCtx::create();
        for p in &params {
            cctx.set_parameter(*p).expect("zstd parameter");
        }
        let (mut best, mut total) = (f64::MAX, 0);
        for _ in 0..3 {
            let started = Instant::now();
            total = 0;
            for chunk in data.chunks(1 << 20) {
                total += cctx.compress2(&mut out[..], chunk).expect("compress");
            }
            best = best.min(started.elapsed().as_secs_f64());
        }
        println!(
            "{name:28} {total:>11} bytes  ratio {:>6.3}  {:>5.0} MB/s",
            data.len() as f64 / total as f64,
            data.len() as f64 / 1e6 / best
        );
    }
}
