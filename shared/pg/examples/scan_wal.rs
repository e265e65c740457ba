//! Prints what `strata_pg::walscan` finds in WAL segment files, one event per line in the form
//! `pg_waldump` can be compared with:
//!
//!     cargo run -p strata-pg --example scan_wal -- pg_wal/000000010000000000000003 ...
//!
//! Lines: `commit|abort <lsn> xid <xid> time <unix micros>`, `restore-point <lsn> <name> time <micros>`,
//! and per file `split <lsn>` for a record that continues in the next file (joined when that file is
//! given next). Exits 2 on an unreadable or malformed file.

use std::process::ExitCode;
use strata_pg::walscan::{join_split_record, scan_segment, WalEvent};

fn print(e: &WalEvent) {
    match e {
        WalEvent::XactEnd { lsn, xid, time, commit } => {
            println!("{} {lsn} xid {xid} time {time}", if *commit { "commit" } else { "abort" })
        }
        WalEvent::RestorePoint { lsn, name, time } => println!("restore-point {lsn} {name} time {time}"),
    }
}

fn main() -> ExitCode {
    let mut pending: Option<(Vec<u8>, strata_pg::Lsn)> = None;
    for path in std::env::args().skip(1) {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{path}: {e}");
                return ExitCode::from(2);
            }
        };
        let scan = match scan_segment(&data) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{path}: {e}");
                return ExitCode::from(2);
            }
        };
        if let Some((tail, lsn)) = pending.take() {
            if let Some(e) = join_split_record(&tail, lsn, &scan.head) {
                print(&e);
            }
        }
        scan.events.iter().for_each(print);
        if !scan.tail.is_empty() {
            println!("split {}", scan.tail_lsn);
            pending = Some((scan.tail.clone(), scan.tail_lsn));
        }
    }
    ExitCode::SUCCESS
}
