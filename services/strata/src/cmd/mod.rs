//! One module per command.

pub mod annotate;
pub mod archive;
pub mod audit;
pub mod backup;
pub mod check;
pub mod expire;
pub mod info;
pub mod nats_keygen;
pub mod rekey;
pub mod shipper;
pub mod stanza;
pub mod stream;

pub use strata_collect::cluster::{check_data_directory, connect, read_facts as cluster_facts};
