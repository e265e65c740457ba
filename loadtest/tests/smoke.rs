//! The scale model's smoke test: two sealer hosts (network namespaces with a CPU quota each), one
//! uploader host, the bus and the database host take a tiny full backup through the model. It fails when
//! the backup fails; it is skipped, with the reason printed, where namespaces cannot be made (not root,
//! no `ip`, `ip netns add` refused).

use std::time::Duration;
use strata_loadtest::cgroup::CgroupMode;
use strata_loadtest::dataset::Dataset;
use strata_loadtest::model::{self, Mode, Options, Phase, RepoKind};
use strata_loadtest::net::LinkShape;

#[test]
fn two_sealer_hosts_take_a_full_backup() {
    if let Some(why) = strata_loadtest::namespaces_unavailable() {
        eprintln!("SKIPPED scale-model smoke test: network namespaces cannot be made here: {why}");
        return;
    }
    let opts = Options {
        mode: Mode::Backup,
        sealers: vec![2],
        uploaders: vec![1],
        replicators: vec![1],
        buses: 1,
        sealer_cpu: Some(0.5),
        uploader_cpu: None,
        replicator_cpu: None,
        db_cpu: None,
        sealer_link: LinkShape {
            rate_bps: Some(1_000_000_000),
            delay_ms: None,
        },
        uploader_link: LinkShape::default(),
        uploader_curve: Vec::new(),
        uploader_curve_link: LinkShape::default(),
        replicator_link: LinkShape::default(),
        db_link: LinkShape::default(),
        repo_link: LinkShape::default(),
        repo: RepoKind::Posix,
        dataset: Dataset::Pgbench { scale: 1 },
        phases: vec![Phase::Full],
        churn_secs: 1,
        wal_secs: 1,
        pipeline: Vec::new(),
        replicator_workers: 1,
        cgroup: CgroupMode::Auto,
        bin_dir: None,
        phase_timeout: Duration::from_secs(300),
    };
    let report =
        model::run(&opts).unwrap_or_else(|e| panic!("the scale model's full backup failed: {e:#}"));
    print!("{}", strata_loadtest::report::key_values(&report));
    assert_eq!(report.shapes.len(), 1);
    let full = &report.shapes[0].phases[0];
    assert_eq!(full.name, "full");
    let database: u64 = full.extra["database_bytes"]
        .parse()
        .expect("database_bytes");
    assert!(
        database > 10_000_000,
        "a pgbench scale 1 cluster is over 10 MB, the backup says {database}"
    );
    assert!(
        full.bytes > 0 && full.mb_s() > 0.0,
        "the backup read nothing: {full:?}"
    );
    let sealed: f64 = ["sealer1", "sealer2"]
        .iter()
        .map(|h| {
            full.extra
                .get(&format!("{h}_chunks_total"))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum();
    assert!(
        sealed > 0.0,
        "no chunk crossed into a sealer host: {:?}",
        full.extra
    );
}
