//! The results: key=value lines (one file, also printed) and the scaling curve as a PNG.
//!
//! Keys are `<shape>.<phase>.<figure>` (shape `s4u1` = 4 sealer hosts, 1 uploader host; `r2` = 2
//! replicator hosts), plus, when one host count varies, `scaling.<phase>.n<N>.speedup` (throughput(N) /
//! throughput(base)) and `.efficiency` (throughput(N) / (N/base x throughput(base))), base being the
//! smallest count run. `target.*` lines compare the 4-vs-1 speedup with the 3.2x.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::model::{Dim, Report};

/// The goal: 4 hosts give at least this many times the throughput of 1.
pub const TARGET_SPEEDUP_4: f64 = 3.2;

/// (count, MB/s) per phase along the varied dimension, sorted by count.
pub fn curves(report: &Report) -> BTreeMap<String, Vec<(usize, f64)>> {
    let mut out: BTreeMap<String, Vec<(usize, f64)>> = BTreeMap::new();
    let Some(dim) = report.varied else { return out };
    for s in &report.shapes {
        // Replicator hosts change nothing but the copy: the backup before it is no curve of theirs.
        for p in s
            .phases
            .iter()
            .filter(|p| dim != Dim::Replicators || p.name == "replicate")
        {
            out.entry(p.name.clone())
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
    if let Some(dim) = report.varied {
        let _ = writeln!(out, "scaling.dimension={}", dim.name());
        for (phase, points) in curves(report) {
            let Some(&(n0, t0)) = points.first() else {
                continue;
            };
            for &(n, t) in &points {
                let speedup = t / t0.max(1e-9);
                let eff = speedup / (n as f64 / n0 as f64);
                let _ = writeln!(out, "scaling.{phase}.n{n}.mb_s={t:.2}");
                let _ = writeln!(out, "scaling.{phase}.n{n}.speedup={speedup:.2}");
                let _ = writeln!(out, "scaling.{phase}.n{n}.efficiency={eff:.2}");
            }
            let one = points.iter().find(|(n, _)| *n == 1);
            let four = points.iter().find(|(n, _)| *n == 4);
            if let (Some(&(_, t1)), Some(&(_, t4))) = (one, four) {
                let speedup = t4 / t1.max(1e-9);
                let verdict = if speedup >= TARGET_SPEEDUP_4 {
                    "PASS"
                } else {
                    "FAIL"
                };
                let _ = writeln!(out, "target.{}_{phase}.speedup_4_vs_1={speedup:.2} (>= {TARGET_SPEEDUP_4}: {verdict})", dim.name());
            }
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

/// Draws throughput against host count for each phase, with the linear ideal from the smallest count.
pub fn plot(report: &Report, title: &str, path: &Path, font: Option<&Path>) -> Result<()> {
    use plotters::prelude::*;
    let curves = curves(report);
    let dim = report.varied.unwrap_or(Dim::Sealers);
    if curves.is_empty() {
        anyhow::bail!("nothing to plot: vary one host count (e.g. --sealers 1,2,4)");
    }
    let text = register_font(font);
    let xmax = curves
        .values()
        .flatten()
        .map(|(n, _)| *n)
        .max()
        .unwrap_or(1) as f64
        + 0.5;
    let ideal: Vec<(f64, f64)> = curves
        .values()
        .next()
        .and_then(|p| p.first())
        .map(|&(n0, t0)| {
            (1..=xmax as usize)
                .filter(|n| *n >= n0)
                .map(|n| (n as f64, t0 * n as f64 / n0 as f64))
                .collect()
        })
        .unwrap_or_default();
    let ymax = curves
        .values()
        .flatten()
        .map(|(_, t)| *t)
        .chain(ideal.iter().map(|(_, t)| *t))
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
        mesh.x_desc(format!("{} hosts", dim.name().trim_end_matches('s')))
            .y_desc("plain MB/s")
            .x_labels(xmax as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN];
    if let Some(first) = curves.keys().next() {
        let s = chart.draw_series(LineSeries::new(
            ideal.clone(),
            BLACK.mix(0.35).stroke_width(1),
        ))?;
        if text {
            s.label(format!(
                "linear from {} ({first})",
                ideal.first().map(|p| p.0).unwrap_or(1.0)
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.35)));
        }
    }
    for (i, (phase, points)) in curves.iter().enumerate() {
        let color = colors[i % colors.len()];
        let pts: Vec<(f64, f64)> = points.iter().map(|&(n, t)| (n as f64, t)).collect();
        let s = chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
        if text {
            let base = points[0];
            let last = points[points.len() - 1];
            let eff = (last.1 / base.1.max(1e-9)) / (last.0 as f64 / base.0 as f64);
            s.label(format!(
                "{phase} (efficiency at {}: {:.0}%)",
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
