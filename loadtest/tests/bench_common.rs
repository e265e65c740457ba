//! The pieces every `strata-bench` benchmark stands on, against the real servers: a kept cluster that
//! `--reuse` finds again, both tools archiving through one archive_command, and a measured backup of
//! each tool (a failed one is an error, never a time).

use std::path::PathBuf;
use std::time::Duration;
use strata_integration::StrataBins;
use strata_loadtest::bench::common::{
    archive_both_command, posix_repo, timed, write_strata_config, BenchCluster, BusMode, Fleet,
    Pgbackrest, PgbrOptions, Pipeline, Workspace,
};
use strata_loadtest::dataset::Dataset;

#[test]
fn a_kept_cluster_is_reused_and_both_tools_back_it_up() {
    let root = tempfile::Builder::new()
        .prefix("strata-bench-common-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bench_dir: PathBuf = root.path().join("bench");
    let dataset = Dataset::Pgbench { scale: 1 };
    let bins = StrataBins::locate();
    {
        let ws = Workspace::create(&bench_dir).unwrap();
        let mut cluster =
            BenchCluster::open(&ws, dataset, true, &[("shared_buffers", "32MB".into())]).unwrap();
        cluster.pg().psql("CREATE TABLE kept_marker (x int)");
        assert!(
            cluster.db_bytes() > 10_000_000,
            "pgbench scale 1 is over 10 MB"
        );

        let pgbr = Pgbackrest::configure(
            &ws.path("pgbackrest"),
            &cluster,
            &PgbrOptions {
                compress_type: "zst".into(),
                compress_level: 1,
                process_max: 1,
            },
        )
        .unwrap();
        let pipeline = Pipeline::from_env("").unwrap();
        let fleet = Fleet::start_bus(&ws, &bins, BusMode::Local, &pipeline).unwrap();
        let repo = ws.fresh_dir("strata-repo", 0o700).unwrap();
        let config = write_strata_config(
            &ws,
            &fleet.url(),
            &cluster,
            &[("local", &posix_repo(&repo))],
            &pipeline.toml(),
        );
        let archive = archive_both_command(&ws, &bins, &config, &pgbr).unwrap();
        cluster.set_archive_command(&archive).unwrap();
        let log = ws.log("test.log");
        timed(
            bins.strata_cmd(&config, "bench").arg("stanza-create"),
            "strata stanza-create",
            &log,
        )
        .unwrap();
        pgbr.stanza_create(&log).unwrap();
        let s = timed(
            bins.strata_cmd(&config, "bench").arg("backup"),
            "strata backup",
            &log,
        )
        .unwrap();
        let p = timed(
            pgbr.command().args(["backup", "--type=full"]),
            "pgbackrest backup",
            &log,
        )
        .unwrap();
        assert!(s > 0.0 && p > 0.0);
        assert!(cluster.wait_archive_idle(Duration::from_secs(60)));
        // A command that fails is an error: a second stanza-create into a used repository... is accepted by
        // both tools, so use an option neither knows.
        let err = timed(
            bins.strata_cmd(&config, "bench").arg("--no-such-option"),
            "strata bad",
            &log,
        )
        .unwrap_err();
        assert!(err.to_string().contains("strata bad failed"), "{err}");
    }
    // Dropped: the server is stopped. Opened again with reuse: the same cluster (the marker table is there).
    let ws = Workspace::create(&bench_dir).unwrap();
    let cluster = BenchCluster::open(&ws, dataset, true, &[]).unwrap();
    assert_eq!(
        cluster
            .pg()
            .psql("SELECT count(*) FROM pg_class WHERE relname = 'kept_marker'"),
        "1"
    );
    drop(cluster);
    // Another dataset is not reused.
    let cluster = BenchCluster::open(&ws, Dataset::Pgbench { scale: 2 }, true, &[]).unwrap();
    assert_eq!(
        cluster
            .pg()
            .psql("SELECT count(*) FROM pg_class WHERE relname = 'kept_marker'"),
        "0"
    );
}
