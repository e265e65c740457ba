//! The pipeline services' Prometheus endpoints: a backup through strata-collector, strata-sealer and
//! strata-uploader over NATS (an S3 repository, for the retry counter) shows on each service's
//! `GET /metrics` with the figures `info` reports; a bad `--metrics-listen` is one error line; and the
//! monitoring files in deploy/ name only metrics that Strata registers.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use strata_integration::*;

/// A scrape parsed: the family kinds (from TYPE lines) and every sample, keyed by `name{labels}`.
struct Scrape {
    text: String,
    kinds: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn of(port: u16) -> Scrape {
        let text = scrape(port);
        let mut kinds = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                kinds.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("sample line");
                let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: value is not a number: {e}"));
                samples.insert(series.to_string(), value);
            }
        }
        Scrape { text, kinds, samples }
    }

    fn kind(&self, family: &str) -> &str {
        self.kinds.get(family).unwrap_or_else(|| panic!("no family {family}:\n{}", self.text))
    }

    fn value(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("no series {series}:\n{}", self.text))
    }
}

/// Every series of the three services' families that deploy/ may use: checked for presence and kind.
const COLLECTOR_FAMILIES: &[(&str, &str)] = &[
    ("strata_collector_chunks_total", "counter"),
    ("strata_collector_bytes_total", "counter"),
    ("strata_collector_backups_total", "counter"),
    ("strata_collector_backups_running", "gauge"),
    ("strata_collector_backup_last_duration_seconds", "gauge"),
    ("strata_collector_backup_last_sent_bytes", "gauge"),
    ("strata_collector_backup_last_stored_bytes", "gauge"),
    ("strata_collector_errors_total", "counter"),
    ("strata_bus_queue_depth", "gauge"),
];
const SEALER_FAMILIES: &[(&str, &str)] = &[
    ("strata_sealer_chunks_total", "counter"),
    ("strata_sealer_input_bytes_total", "counter"),
    ("strata_sealer_output_bytes_total", "counter"),
    ("strata_sealer_errors_total", "counter"),
    ("strata_bus_queue_depth", "gauge"),
];
const UPLOADER_FAMILIES: &[(&str, &str)] = &[
    ("strata_uploader_chunks_total", "counter"),
    ("strata_uploader_deduplicated_chunks_total", "counter"),
    ("strata_uploader_bytes_total", "counter"),
    ("strata_uploader_packs_total", "counter"),
    ("strata_uploader_commits_total", "counter"),
    ("strata_uploader_errors_total", "counter"),
    ("strata_s3_retries_total", "counter"),
    ("strata_bus_queue_depth", "gauge"),
];

fn check_families(scrape: &Scrape, families: &[(&str, &str)]) {
    for (name, kind) in families {
        assert_eq!(scrape.kind(name), *kind, "TYPE of {name}");
    }
    for queue in ["seal", "upload", "replicate"] {
        let depth = scrape.value(&format!("strata_bus_queue_depth{{queue=\"{queue}\"}}"));
        assert!(depth >= 0.0 && depth.fract() == 0.0, "queue depth of {queue}: {depth}");
    }
}

#[test]
fn a_backup_through_the_services_shows_on_their_metrics_endpoints() {
    let dir = TestDir::new("metrics_services");
    let nats = NatsServer::start(&dir);
    let s3 = S3Server::start(&dir);
    s3.create_bucket("metrics");
    // Declared before the cluster so they are dropped after it: a cluster shutting down may still push WAL.
    let services;
    let setup = Setup::new(&dir, &nats.url(), "", &[]);
    setup.use_s3(&s3, "metrics", "");
    let ports = [reserve_port(), reserve_port(), reserve_port()];
    let [collector, sealer, uploader] = [ports[0].get(), ports[1].get(), ports[2].get()];
    setup.append_config(&format!(
        "[metrics]\ncollector = \"127.0.0.1:{collector}\"\nsealer = \"127.0.0.1:{sealer}\"\nuploader = \"127.0.0.1:{uploader}\""
    ));
    services = Services::start(&setup);

    // Before any work every counter is there, at 0.
    let c = Scrape::of(collector);
    check_families(&Scrape::of(sealer), SEALER_FAMILIES);
    check_families(&c, &COLLECTOR_FAMILIES[..2]);
    assert_eq!(c.value("strata_collector_chunks_total"), 0.0);
    assert_eq!(c.value("strata_collector_backups_total{stanza=\"main\",type=\"full\",outcome=\"success\"}"), 0.0);
    assert_eq!(c.value("strata_collector_errors_total{kind=\"backup\"}"), 0.0);
    let u = Scrape::of(uploader);
    assert_eq!(u.value("strata_uploader_packs_total"), 0.0);
    assert_eq!(u.value("strata_s3_retries_total{repo=\"local\"}"), 0.0);

    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(3);
    let label = setup.backup("full");
    let info = setup.info();
    let backup = info[0]["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .find(|b| b["label"] == label.as_str())
        .unwrap_or_else(|| panic!("no backup {label} in {info}"))
        .clone();
    let sent = backup["sent_bytes"].as_u64().expect("sent_bytes") as f64;
    let stored = backup["stored_bytes"].as_u64().expect("stored_bytes") as f64;
    assert!(sent > 30_000_000.0, "{backup}");

    let c = Scrape::of(collector);
    check_families(&c, COLLECTOR_FAMILIES);
    // The collector ran this one backup: it sent exactly what the backup's record says it sent.
    assert_eq!(c.value("strata_collector_bytes_total"), sent, "collector bytes vs info's sent_bytes");
    let chunks = c.value("strata_collector_chunks_total");
    // 1 MiB chunks at most (the default chunk_size), and small pieces share bundles.
    assert!(chunks >= (sent / (1 << 20) as f64).ceil() && chunks <= sent / 8192.0, "{chunks} chunks for {sent} bytes");
    assert_eq!(c.value("strata_collector_backups_total{stanza=\"main\",type=\"full\",outcome=\"success\"}"), 1.0);
    assert_eq!(c.value("strata_collector_backups_total{stanza=\"main\",type=\"full\",outcome=\"failure\"}"), 0.0);
    assert_eq!(c.value("strata_collector_backups_running{stanza=\"main\"}"), 0.0);
    assert_eq!(c.value("strata_collector_backup_last_sent_bytes{stanza=\"main\",type=\"full\"}"), sent);
    assert_eq!(c.value("strata_collector_backup_last_stored_bytes{stanza=\"main\",type=\"full\"}"), stored);
    assert!(c.value("strata_collector_backup_last_duration_seconds{stanza=\"main\",type=\"full\"}") > 0.0);

    let s = Scrape::of(sealer);
    check_families(&s, SEALER_FAMILIES);
    // The sealer also sealed the WAL archive-push sent; checkpoints go to the uploaders sealed.
    assert!(s.value("strata_sealer_chunks_total") >= 1.0, "{}", s.text);
    let input = s.value("strata_sealer_input_bytes_total");
    let output = s.value("strata_sealer_output_bytes_total");
    assert!(input >= sent * 0.9, "sealer input {input} vs the backup's {sent} sent");
    assert!(output > 0.0 && output < input, "pgbench data compresses: {output} of {input}");
    assert_eq!(s.value("strata_sealer_errors_total{kind=\"malformed\"}"), 0.0);

    let u = Scrape::of(uploader);
    check_families(&u, UPLOADER_FAMILIES);
    assert!(u.value("strata_uploader_bytes_total") >= stored, "uploader bytes vs info's stored_bytes {stored}:\n{}", u.text);
    assert!(u.value("strata_uploader_packs_total") >= 1.0);
    assert!(u.value("strata_uploader_chunks_total") >= chunks, "every chunk the collector sent was confirmed");
    assert_eq!(u.value("strata_uploader_commits_total{kind=\"backup\",outcome=\"stored\"}"), 1.0);
    // The backup waited for its last WAL segment, which archive-push committed through an uploader.
    assert!(u.value("strata_uploader_commits_total{kind=\"wal\",outcome=\"stored\"}") >= 1.0, "{}", u.text);
    assert_eq!(u.value("strata_uploader_errors_total{kind=\"pack_write\"}"), 0.0);
    assert!(u.value("strata_s3_retries_total{repo=\"local\"}") >= 0.0);

    // What deploy/ uses of these services' metrics is what they export.
    let exported: BTreeSet<&str> = [&c, &s, &u].iter().flat_map(|m| m.kinds.keys().map(String::as_str)).collect();
    for name in deploy_metric_names() {
        let pipeline = ["strata_collector_", "strata_sealer_", "strata_uploader_", "strata_bus_", "strata_s3_"];
        if pipeline.iter().any(|p| name.starts_with(p)) {
            assert!(exported.contains(name.as_str()), "deploy/ uses {name}, which no pipeline service exports: {exported:?}");
        }
    }

    // A second endpoint on a taken port, and an address that is none: one error line each, exit 1.
    for bad in [format!("127.0.0.1:{collector}"), "no-such-address".to_string()] {
        for bin in ["strata-collector", "strata-sealer", "strata-uploader"] {
            let out = Command::new(setup.bins.path(bin))
                .arg("--config")
                .arg(&setup.config)
                .args(["--metrics-listen", &bad])
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            let line = expect_one_error_line(&out, &[bin, "--metrics-listen", &bad]);
            assert!(line.contains(&format!("--metrics-listen \"{bad}\": cannot listen for metrics")), "{line}");
            assert_eq!(out.status.code(), Some(1), "{bin}: {}", describe(&out));
        }
    }

    for s in [&services.collector, &services.sealer, &services.uploader] {
        LogCheck::new().assert_clean(s.log_file());
    }
}

/// The workspace's root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("integration/ is in the workspace").to_path_buf()
}

/// Every `strata_...` metric name the files in deploy/prometheus and deploy/grafana use.
fn deploy_metric_names() -> BTreeSet<String> {
    let root = workspace();
    let mut names = BTreeSet::new();
    for file in ["deploy/prometheus/strata-alerts.yml", "deploy/prometheus/prometheus.yml", "deploy/grafana/strata-dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        names.extend(metric_names(&text));
    }
    names
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("strata_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start + text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len() - start);
        // `strata_collector_*` in a comment is a family, not a name.
        if boundary && end > start + "strata_".len() && !text[start..end].ends_with('_') {
            names.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    names
}

/// Metric names registered somewhere in the source (a `"strata_..."` literal passed to a registry).
fn registered_in_source() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![workspace().join("services"), workspace().join("shared")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for call in [".counter(", ".gauge("] {
                    for (at, _) in text.match_indices(call) {
                        // The name is the first argument, perhaps on the next line.
                        let Some(rest) = text[at + call.len()..].trim_start().strip_prefix('"') else { continue };
                        let name = &rest[..rest.find('"').expect("closing quote")];
                        names.insert(name.to_string());
                    }
                }
            }
        }
    }
    names
}

/// The stanza-level names strata-verifier exports (its contract, written at the same time as these
/// files); a name here that the source also registers needs no entry.
const VERIFIER_CONTRACT: &[&str] = &[
    "strata_backup_last_success_timestamp_seconds",
    "strata_backup_age_seconds",
    "strata_backup_duration_seconds",
    "strata_backup_stored_bytes",
    "strata_stanza_rpo_seconds",
    "strata_archive_lag_bytes",
    "strata_archive_lag_seconds",
    "strata_archive_failed_total",
    "strata_archive_archived_total",
    "strata_archive_last_archived_timestamp_seconds",
    "strata_archive_last_failed_timestamp_seconds",
    "strata_repo_used_bytes",
    "strata_repo_size_bytes",
    "strata_repo_free_bytes",
    "strata_verify_last_timestamp_seconds",
    "strata_verify_errors",
    "strata_verify_duration_seconds",
    "strata_verify_bytes_total",
    "strata_restore_test_last_timestamp_seconds",
    "strata_restore_test_success",
    "strata_restore_test_duration_seconds",
    "strata_restore_test_peak_memory_bytes",
    "strata_stanza_status",
    "strata_alerts_firing",
];

#[test]
fn deploy_files_name_only_metrics_strata_exports() {
    let used = deploy_metric_names();
    assert!(used.len() > 20, "deploy/ files name suspiciously few metrics: {used:?}");
    let registered = registered_in_source();
    for must in ["strata_collector_chunks_total", "strata_uploader_bytes_total", "strata_replication_lag_bytes", "strata_bus_queue_depth"] {
        assert!(registered.contains(must), "the source scan missed {must}: {registered:?}");
    }
    let unknown: Vec<&String> =
        used.iter().filter(|n| !registered.contains(*n) && !VERIFIER_CONTRACT.contains(&n.as_str())).collect();
    assert!(unknown.is_empty(), "deploy/ uses metrics nothing exports: {unknown:?}");
    // The alerts the verifier's contract exists for are all wired.
    let alerts = std::fs::read_to_string(workspace().join("deploy/prometheus/strata-alerts.yml")).unwrap();
    for name in [
        "strata_backup_last_success_timestamp_seconds",
        "strata_stanza_rpo_seconds",
        "strata_archive_failed_total",
        "strata_repo_used_bytes",
        "strata_restore_test_success",
        "strata_verify_errors",
        "strata_backup_duration_seconds",
        "strata_archive_lag_seconds",
    ] {
        assert!(metric_names(&alerts).contains(name), "strata-alerts.yml does not use {name}");
    }
    // And the dashboard is JSON.
    let dashboard = std::fs::read_to_string(workspace().join("deploy/grafana/strata-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("strata-dashboard.json is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10), "dashboard panels");
}

/// promtool: `$STRATA_PROMTOOL`, else where `scripts/install-deps.sh` puts it.
fn promtool() -> PathBuf {
    let path = std::env::var_os("STRATA_PROMTOOL").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/strata-tools/bin/promtool"));
    assert!(path.is_file(), "promtool not found at {} (set STRATA_PROMTOOL, or run scripts/install-deps.sh)", path.display());
    path
}

#[test]
fn the_prometheus_alerting_rules_load_and_pass_their_unit_tests() {
    let dir = workspace().join("deploy/prometheus");
    for args in [&["check", "rules", "strata-alerts.yml"][..], &["test", "rules", "strata-alerts.test.yml"][..]] {
        let out = Command::new(promtool()).args(args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
