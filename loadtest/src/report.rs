//! The results: key=value lines (one file, also printed) and the scaling curve as a PNG.
//!
//! Keys are `<shape>.<phase>.<figure>` (shape `s4u1` = 4 sealer hosts, 1 uploader host; `r2` = 2
//! replicator hosts; `-l`: a shape of the uploader curve, its uploader links shaped), plus, for each
//! curve (the host count that varies, and the uploader curve), `scaling.<hosts>.<phase>.n<N>.speedup`
//! (throughput(N) / throughput(base)) and `.efficiency` (throughput(N) / (N/base x throughput(base))),
//! base being the smallest count run. `target.*` lines compare the speedup of the most hosts over one
//! with the 80% efficiency (4 sealers >= 3.2x, 2 uploaders >= 1.6x).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::model::{Dim, Report};

/// The goal: N hosts give at least this share of N times the throughput of 1.
pub const TARGET_EFFICIENCY: f64 = 0.8;

/// (count, MB/s) per curve (its host kind) and phase, sorted by count.
pub fn curves(report: &Report) -> BTreeMap<(Dim, String), Vec<(usize, f64)>> {
    let mut out: BTreeMap<(Dim, String), Vec<(usize, f64)>> = BTreeMap::new();
    for s in &report.shapes {
        let Some(dim) = s.shape.curve else { continue };
        // Replicator hosts change nothing but the copy: the backup before it is no curve of theirs.
        for p in s
            .phases
            .iter()
            .filter(|p| dim != Dim::Replicators || p.name == "replicate")
        {
            out.entry((dim, p.name.clone()))
                .or_default()
                .push((s.shape.count(dim), p.mb_s()));
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|(n, _)| *n);
    }
    out
}

/// Renders every figure as key=value lines.
pub fn key_values(report: &Report) -> String {
    let mut out = String::new();
    for (k, v) in &report.header {
        let _ = writeln!(out, "{k}={v}");
    }
    for s in &report.shapes {
        let tag = s.shape.tag();
        for p in &s.phases {
            let pre = format!("{tag}.{}", p.name);
            let _ = writeln!(out, "{pre}.seconds={:.2}", p.seconds);
            let _ = writeln!(out, "{pre}.bytes={}", p.bytes);
            let _ = writeln!(out, "{pre}.mb_s={:.2}", p.mb_s());
            for (stage, secs) in &p.cpu {
                let _ = writeln!(out, "{pre}.cpu.{stage}_s={secs:.2}");
                let _ = writeln!(
                    out,
                    "{pre}.cpu.{stage}_cores={:.2}",
                    secs / p.seconds.max(1e-3)
                );
            }
            for (stage, share) in &p.throttled {
                let _ = writeln!(out, "{pre}.throttled.{stage}={share:.2}");
            }
            for (stream, max) in &p.queues.max {
                let q = stream.trim_start_matches("STRATA_").to_ascii_lowercase();
                let _ = writeln!(out, "{pre}.queue.{q}_max={max}");
                let _ = writeln!(out, "{pre}.queue.{q}_mean={:.1}", p.queues.mean(stream));
            }
            for (k, v) in &p.extra {
                let _ = writeln!(out, "{pre}.{k}={v}");
            }
        }
    }
    for ((dim, phase), points) in curves(report) {
        let Some(&(n0, t0)) = points.first() else {
            continue;
        };
        let d = dim.name();
        for &(n, t) in &points {
            let speedup = t / t0.max(1e-9);
            let eff = speedup / (n as f64 / n0 as f64);
            let _ = writeln!(out, "scaling.{d}.{phase}.n{n}.mb_s={t:.2}");
            let _ = writeln!(out, "scaling.{d}.{phase}.n{n}.speedup={speedup:.2}");
            let _ = writeln!(out, "scaling.{d}.{phase}.n{n}.efficiency={eff:.2}");
        }
        // The goal: TARGET_EFFICIENCY from one host to the most hosts of the curve (4 sealers >= 3.2x,
        // 2 uploaders >= 1.6x).
        let one = points.iter().find(|(n, _)| *n == 1);
        let most = points.last().filter(|(n, _)| *n > 1);
        if let (Some(&(_, t1)), Some(&(n, tn))) = (one, most) {
            let speedup = tn / t1.max(1e-9);
            let goal = TARGET_EFFICIENCY * n as f64;
            let verdict = if speedup >= goal { "PASS" } else { "FAIL" };
            let _ = writeln!(
                out,
                "target.{d}_{phase}.speedup_{n}_vs_1={speedup:.2} (>= {goal:.1}: {verdict})"
            );
        }
    }
    out
}

/// Writes the key=value file.
pub fn write_key_values(report: &Report, path: &Path) -> Result<()> {
    std::fs::write(path, key_values(report))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A TrueType font for the labels: plotters is built without fontconfig (ab_glyph only), so one is
/// registered from a file; without one the curve is drawn without text.
fn register_font(font: Option<&Path>) -> bool {
    let candidates: Vec<std::path::PathBuf> = match font {
        Some(f) => vec![f.to_path_buf()],
        None => [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        ]
        .iter()
        .map(Into::into)
        .collect(),
    };
    for c in candidates {
        if let Ok(bytes) = std::fs::read(&c) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                bytes,
            )
            .is_ok()
            {
                return true;
            }
        }
    }
    false
}

/// Draws throughput against host count for each curve and phase, with the linear ideal of each curve's
/// full backup from its smallest count.
pub fn plot(report: &Report, title: &str, path: &Path, font: Option<&Path>) -> Result<()> {
    use plotters::prelude::*;
    let curves = curves(report);
    if curves.is_empty() {
        anyhow::bail!(
            "nothing to plot: vary one host count (e.g. --sealers 1,2,4) or give --uploader-curve"
        );
    }
    let text = register_font(font);
    let xmax = curves
        .values()
        .flatten()
        .map(|(n, _)| *n)
        .max()
        .unwrap_or(1) as f64
        + 0.5;
    // One ideal per host kind, from its first phase's curve (the full backup when there is one).
    let mut ideals: BTreeMap<Dim, (String, Vec<(f64, f64)>)> = BTreeMap::new();
    for ((dim, phase), points) in &curves {
        let better = phase == "full" || !ideals.contains_key(dim);
        if let (true, Some(&(n0, t0))) = (better, points.first()) {
            let line = (1..=xmax as usize)
                .filter(|n| *n >= n0)
                .map(|n| (n as f64, t0 * n as f64 / n0 as f64))
                .collect();
            ideals.insert(*dim, (phase.clone(), line));
        }
    }
    let ymax = curves
        .values()
        .flatten()
        .map(|(_, t)| *t)
        .chain(ideals.values().flat_map(|(_, l)| l.iter().map(|(_, t)| *t)))
        .fold(1.0f64, f64::max)
        * 1.1;

    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(65);
    if text {
        builder.caption(title, ("sans-serif", 16));
    }
    let mut chart = builder.build_cartesian_2d(0.5f64..xmax, 0f64..ymax)?;
    let mut mesh = chart.configure_mesh();
    if text {
        let kinds: Vec<&str> = ideals
            .keys()
            .map(|d| d.name().trim_end_matches('s'))
            .collect();
        mesh.x_desc(format!("{} hosts", kinds.join(" or ")))
            .y_desc("plain MB/s")
            .x_labels(xmax as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (dim, (phase, line)) in &ideals {
        let style = BLACK.mix(0.35).stroke_width(1);
        let s = chart.draw_series(LineSeries::new(line.clone(), style))?;
        if text {
            s.label(format!(
                "linear from {} {} ({phase})",
                line.first().map(|p| p.0).unwrap_or(1.0),
                dim.name()
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.35)));
        }
    }
    for (i, ((dim, phase), points)) in curves.iter().enumerate() {
        let color = colors[i % colors.len()];
        let pts: Vec<(f64, f64)> = points.iter().map(|&(n, t)| (n as f64, t)).collect();
        let s = chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
        if text {
            let base = points[0];
            let last = points[points.len() - 1];
            let eff = (last.1 / base.1.max(1e-9)) / (last.0 as f64 / base.0 as f64);
            s.label(format!(
                "{phase}, {} (efficiency at {}: {:.0}%)",
                dim.name(),
                last.0,
                eff * 100.0
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
