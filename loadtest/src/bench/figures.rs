//! The figures a benchmark reports: medians, ratios and their verdicts against the targets, the
//! key=value lines `all` reads, and the TSV rows kept across runs. Plain data, apart from the files.

use anyhow::{Context, Result};
use std::fmt::Display;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The median (the mean of the middle two for an even count), or None for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `a / b` when both exist and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A target a figure is held to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// At most this.
    AtMost(f64),
    /// At least this.
    AtLeast(f64),
    /// Between the two, inclusive.
    Within(f64, f64),
}

impl Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AtMost(x) => write!(f, "<= {x}"),
            Target::AtLeast(x) => write!(f, ">= {x}"),
            Target::Within(lo, hi) => write!(f, "{lo}..{hi}"),
        }
    }
}

/// PASS or FAIL against `target`; "-" when there is no value.
pub fn verdict(value: Option<f64>, target: Target) -> &'static str {
    let Some(v) = value else { return "-" };
    let ok = match target {
        Target::AtMost(x) => v <= x,
        Target::AtLeast(x) => v >= x,
        Target::Within(lo, hi) => (lo..=hi).contains(&v),
    };
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Ordered `key=value` lines: what a benchmark hands to `all` and writes next to its summary. A key set
/// twice keeps its first place and takes the new value.
#[derive(Debug, Clone, Default)]
pub struct Kv {
    lines: Vec<(String, String)>,
}

impl Kv {
    /// No lines.
    pub fn new() -> Kv {
        Kv::default()
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: impl Display) {
        let value = value.to_string();
        match self.lines.iter_mut().find(|(k, _)| k == key) {
            Some(line) => line.1 = value,
            None => self.lines.push((key.to_string(), value)),
        }
    }

    /// Sets `key` to `value` formatted with `decimals`, or to nothing when there is no value.
    pub fn set_f64(&mut self, key: &str, value: Option<f64>, decimals: usize) {
        match value {
            Some(v) => self.set(key, format!("{v:.decimals$}")),
            None => self.set(key, ""),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` as a number (None when absent, empty or not a number).
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.trim().parse().ok())
    }

    /// Adds (or overwrites) every line of `other`.
    pub fn extend(&mut self, other: &Kv) {
        for (k, v) in &other.lines {
            self.set(k, v);
        }
    }

    /// The lines, one `key=value` each.
    pub fn render(&self) -> String {
        self.lines
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    /// Writes [`Kv::render`] to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        fs::write(path, self.render()).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads a file of `key=value` lines (other lines are skipped).
    pub fn read(path: &Path) -> Result<Kv> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut kv = Kv::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                kv.set(k, v);
            }
        }
        Ok(kv)
    }
}

/// A TSV file of measurements, one row each, kept across runs (`results.tsv` of the scripts).
pub struct Results {
    path: PathBuf,
}

impl Results {
    /// Opens `path`, writing `header` first when the file is new.
    pub fn open(path: &Path, header: &[&str]) -> Result<Results> {
        if !path.exists() {
            fs::write(path, format!("{}\n", header.join("\t")))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(Results {
            path: path.to_path_buf(),
        })
    }

    /// Appends one row.
    pub fn row(&self, fields: &[String]) -> Result<()> {
        let mut f = fs::OpenOptions::new().append(true).open(&self.path)?;
        writeln!(f, "{}", fields.join("\t"))
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_ratios_and_verdicts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(verdict(Some(0.4), Target::AtMost(0.5)), "PASS");
        assert_eq!(verdict(Some(0.6), Target::AtMost(0.5)), "FAIL");
        assert_eq!(verdict(Some(1.2), Target::Within(0.9, 1.1)), "FAIL");
        assert_eq!(verdict(None, Target::AtLeast(1.0)), "-");
    }

    #[test]
    fn kv_keeps_order_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = Kv::new();
        kv.set("b", 1);
        kv.set("a", "x=y");
        kv.set("b", 2);
        kv.set_f64("c", Some(1.23456), 3);
        assert_eq!(kv.render(), "b=2\na=x=y\nc=1.235\n");
        let p = dir.path().join("k.kv");
        kv.write(&p).unwrap();
        let back = Kv::read(&p).unwrap();
        assert_eq!(back.get("a"), Some("x=y"));
        assert_eq!(back.get_f64("c"), Some(1.235));
    }
}
