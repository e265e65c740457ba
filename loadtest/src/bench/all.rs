//! Placeholder of the skeleton branch: replaced by the port of the bash script.

use anyhow::{bail, Result};

use super::common::Kv;

/// The benchmark's knobs.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the benchmark.
pub fn run(_args: &Args) -> Result<Kv> {
    bail!("not ported yet")
}
