//! The dataset knobs `full`, `incr` and `repos` share (`DATASET`, `SCALE`, `OLTP_MB`, as lib.sh read
//! them), flattened into each benchmark's `Args`, and what the benchmarks derive from them: the
//! [`Dataset`], its name and lib.sh's description, the table the churn changes most, the default work
//! directory. One copy, so that the three agree on the defaults and on the rules (`OLTP_MB` at least 20).

use anyhow::{bail, Result};
use std::path::PathBuf;

use crate::dataset::Dataset;

/// What the cluster holds.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    /// `pgbench -i -s SCALE`; the churn is pgbench's built-in TPC-B.
    Pgbench,
    /// `oltp.sql`, about OLTP_MB MB; the churn is `oltp-churn.sql`.
    Oltp,
}

/// `DATASET`, `SCALE` and `OLTP_MB`: each a flag and the environment variable the scripts read.
#[derive(clap::Args, Debug, Clone)]
pub struct DatasetArgs {
    /// What the cluster holds.
    #[arg(long, env = "DATASET", value_enum, default_value = "pgbench")]
    pub dataset: DatasetKind,
    /// pgbench scale (100 is about 1.6 GB).
    #[arg(long, env = "SCALE", default_value_t = 100)]
    pub scale: u32,
    /// DATASET=oltp: database size to generate, MB (10^6 bytes), at least 20.
    #[arg(long, env = "OLTP_MB", default_value_t = 1500)]
    pub oltp_mb: u32,
}

impl DatasetArgs {
    /// The dataset the knobs name; an error when OLTP_MB is below 20.
    pub fn dataset(&self) -> Result<Dataset> {
        Ok(match self.dataset {
            DatasetKind::Pgbench => Dataset::Pgbench { scale: self.scale },
            DatasetKind::Oltp if self.oltp_mb < 20 => {
                bail!(
                    "OLTP_MB must be a number of MB, at least 20, not '{}'",
                    self.oltp_mb
                )
            }
            DatasetKind::Oltp => Dataset::Oltp { mb: self.oltp_mb },
        })
    }

    /// "pgbench" or "oltp".
    pub fn name(&self) -> &'static str {
        match self.dataset {
            DatasetKind::Pgbench => "pgbench",
            DatasetKind::Oltp => "oltp",
        }
    }

    /// lib.sh's DATASET_DESC, for humans and the `dataset_desc` key: "pgbench scale 100", "oltp 1500 MB".
    pub fn desc(&self) -> String {
        match self.dataset {
            DatasetKind::Pgbench => format!("pgbench scale {}", self.scale),
            DatasetKind::Oltp => format!("oltp {} MB", self.oltp_mb),
        }
    }

    /// The table the churn changes most: its size and changed pages are reported.
    pub fn main_table(&self) -> &'static str {
        match self.dataset {
            DatasetKind::Pgbench => "pgbench_accounts",
            DatasetKind::Oltp => "orders",
        }
    }

    /// `full`'s and `incr`'s work directory when BENCH_DIR is not set: one per dataset, shared by both.
    pub fn default_bench_dir(&self) -> PathBuf {
        PathBuf::from(match self.dataset {
            DatasetKind::Pgbench => "/tmp/strata-loadtest",
            DatasetKind::Oltp => "/tmp/strata-loadtest-oltp",
        })
    }
}
