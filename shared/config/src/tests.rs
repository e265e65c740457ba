use super::*;
use std::path::{Path, PathBuf};

fn write(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

const GOOD: &str = r#"
    bus = "local"
    [stanza.main]
    pg_data = "/var/lib/postgresql/15/main"
    pg_conn = "host=/run/postgresql"
    [[repo]]
    name = "local"
    type = "posix"
    path = "/var/lib/strata"
"#;

#[test]
fn loads_and_env_overrides() {
    let f = write(GOOD);
    let env = vec![
        ("STRATA_BUS".to_string(), "nats://127.0.0.1:4222".to_string()),
        ("STRATA_PIPELINE__CHUNK_SIZE".to_string(), "262144".to_string()),
        ("STRATA_BIN_DIR".to_string(), "/elsewhere".to_string()),
    ];
    let c = Config::load(f.path(), env).unwrap();
    assert_eq!(c.bus, BusConfig::Nats("nats://127.0.0.1:4222".into()));
    assert_eq!(c.pipeline.chunk_size, 262144);
    assert_eq!(c.stanza("main").unwrap().pg_conn, "host=/run/postgresql");
    let err = c.stanza("other").unwrap_err().to_string();
    assert_eq!(err, "unknown stanza 'other' (the config defines: main)");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/strata.example.toml");
    let c = Config::load(&example, vec![]).unwrap();
    assert_eq!(c.primary_repo().retention_full, Some(2));
    let defaults = PipelineConfig::default();
    assert_eq!(c.pipeline.chunk_size, defaults.chunk_size);
    assert_eq!(c.pipeline.in_flight_bytes, defaults.in_flight_bytes);
}

#[test]
fn typos_and_bad_values_name_the_key() {
    let f = write(&GOOD.replace("pg_conn", "pg_con"));
    let err = Config::load(f.path(), vec![]).unwrap_err().to_string();
    assert!(err.contains("pg_con"), "{err}");
    let f = write(&GOOD.replace("posix", "ftp"));
    assert!(Config::load(f.path(), vec![]).is_err());
    let f = write(&GOOD.replace("\"local\"\n", "\"amqp://x\"\n"));
    assert!(Config::load(f.path(), vec![]).unwrap_err().to_string().contains("bus"));
    let f = write("bus = \"local\"\n");
    assert!(Config::load(f.path(), vec![]).unwrap_err().to_string().contains("no [[repo]]"));
    assert!(Config::load(Path::new("/nonexistent.toml"), vec![]).is_err());
}

#[test]
fn every_numeric_key_is_bounded_and_the_error_names_key_and_range() {
    let cases: &[(&str, &str, &str)] = &[
        ("[pipeline]\ncompress_level = 999", "pipeline.compress_level = 999", "from 0 to 19"),
        ("[pipeline]\ncompress_level = -5", "pipeline.compress_level = -5", "from 0 to 19"),
        ("[pipeline]\nwal_compress_level = 20", "pipeline.wal_compress_level = 20", "from 0 to 19"),
        ("[pipeline]\nstall_timeout_secs = 0", "pipeline.stall_timeout_secs = 0", "from 1 to 86400"),
        ("[pipeline]\narchive_timeout_secs = 0", "pipeline.archive_timeout_secs = 0", "from 1 to 86400"),
        ("[pipeline]\nread_workers = 0", "pipeline.read_workers = 0", "from 1 to 256"),
        ("[pipeline]\nsealer_workers = 100000", "pipeline.sealer_workers = 100000", "from 1 to 256"),
        ("[pipeline]\nuploader_workers = 0", "pipeline.uploader_workers = 0", "from 1 to 256"),
        ("[pipeline]\npack_size = 4096", "pipeline.pack_size = 4096", "from 1048576 to 1073741824"),
        ("[pipeline]\nin_flight_bytes = 99999999999999", "pipeline.in_flight_bytes = 99999999999999", "to 17179869184"),
        ("[replicator]\nworkers = 0", "replicator.workers = 0", "from 1 to 256"),
        ("[replicator]\ninterval_secs = 0", "replicator.interval_secs = 0", "from 1 to 86400"),
        ("[verifier]\ninterval_secs = 0", "verifier.interval_secs = 0", "from 1 to 86400"),
        ("[restore_test]\ntimeout_secs = 0", "restore_test.timeout_secs = 0", "from 1 to 604800"),
        ("[alerts]\nresend_secs = 0", "alerts.resend_secs = 0", "from 1 to 2592000"),
        ("[alerts]\nbackup_late_factor = 0.5", "alerts.backup_late_factor = 0.5", "from 1 to 1000"),
        ("[alerts]\nrepo_full_critical_percent = 150", "alerts.repo_full_critical_percent = 150", "from 0 to 100"),
        ("[alerts]\narchive_lag_warning_secs = 0", "alerts.archive_lag_warning_secs = 0", "from 1 to 31536000"),
        ("[archive]\nidle_secs = 0", "archive.idle_secs = 0", "from 1 to 86400"),
        ("[wal_stream]\nflush_ms = 0", "wal_stream.flush_ms = 0", "from 50 to 3600000"),
        ("[wal_stream]\nstatus_interval_secs = 0", "wal_stream.status_interval_secs = 0", "from 1 to 3600"),
        ("[wal_stream]\nslot_retained_max = 1", "wal_stream.slot_retained_max = 1", "from 16777216"),
        ("[wal_stream]\nslot = \"../x\"", "wal_stream.slot = '../x'", "a-z, 0-9 and _"),
        ("[wal_stream]\nslot = \"Strata\"", "wal_stream.slot = 'Strata'", "a-z, 0-9 and _"),
        ("[archive]\nin_flight_bytes = 1000", "archive.in_flight_bytes = 1000", "from 1048576"),
        ("[archive]\npush_queue_max = 1000", "archive.push_queue_max = 1000", "from 16777216"),
        ("[archive]\nspool_path = \"spool\"", "archive.spool_path = 'spool'", "absolute path"),
    ];
    for (extra, key, range) in cases {
        let f = write(&format!("{GOOD}\n{extra}\n"));
        let err = Config::load(f.path(), vec![]).expect_err(extra).to_string();
        assert!(err.contains(key) && err.contains(range) && !err.contains('\n'), "{extra}: {err}");
    }
    let f = write(&GOOD.replace("host=/run/postgresql\"", "host=/run/postgresql\"\nrpo_secs = 0"));
    let err = Config::load(f.path(), vec![]).unwrap_err().to_string();
    assert!(err.contains("stanza.main.rpo_secs = 0") && err.contains("from 60"), "{err}");
    let f = write(&format!("{GOOD}retention_full = 0\n"));
    let err = Config::load(f.path(), vec![]).unwrap_err().to_string();
    assert!(err.contains("repository 'local' retention_full = 0") && err.contains("from 1"), "{err}");
    // The environment is checked the same way.
    let f = write(GOOD);
    let env = vec![("STRATA_PIPELINE__STALL_TIMEOUT_SECS".to_string(), "0".to_string())];
    assert!(Config::load(f.path(), env).unwrap_err().to_string().contains("pipeline.stall_timeout_secs = 0"));
    // The edges are accepted.
    let edges = "[pipeline]\ncompress_level = 19\nwal_compress_level = 0\nstall_timeout_secs = 1\nread_workers = 256\npack_size = 1048576\n";
    let f = write(&format!("{GOOD}\n{edges}"));
    let c = Config::load(f.path(), vec![]).unwrap();
    assert_eq!((c.pipeline.compress_level, c.pipeline.archive_timeout_secs), (19, 60));
}

/// A file in `dir` holding `text`, with mode `mode`.
fn file_with_mode(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn load_with_nats(nats: &str) -> Result<Config, String> {
    let f = write(&format!("{GOOD}\n[nats]\n{nats}\n"));
    Config::load(f.path(), vec![]).map_err(|e| e.to_string())
}

fn one_line_naming(err: &str, key: &str, what: &str) {
    assert!(!err.contains('\n'), "not one line: {err}");
    assert!(err.contains(key) && err.contains(what), "{key}, {what}: {err}");
}

#[test]
fn a_secured_bus_loads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = file_with_mode(dir.path(), "ca.pem", "pem", 0o644);
    let cert = file_with_mode(dir.path(), "c.pem", "pem", 0o644);
    let key = file_with_mode(dir.path(), "c.key", "pem", 0o600);
    let seed = file_with_mode(dir.path(), "sealer.nk", "SU...", 0o400);
    let c = load_with_nats(&format!(
        "tls_ca_file = {ca:?}\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\nnkey_file = {seed:?}\ninbox_prefix = \"_INBOX_sealer\""
    ))
    .unwrap();
    assert_eq!(c.nats.nkey_file.as_deref(), Some(seed.as_path()));
    assert_eq!(c.nats.inbox_prefix, "_INBOX_sealer");
    let password = file_with_mode(dir.path(), "pw", "secret", 0o600);
    let c = load_with_nats(&format!("user = \"uploader\"\npassword_file = {password:?}")).unwrap();
    assert_eq!(c.nats.user.as_deref(), Some("uploader"));
    // The environment can give each service on a host its own user.
    let f = write(GOOD);
    let env = vec![("STRATA_NATS__NKEY_FILE".to_string(), seed.display().to_string())];
    assert_eq!(Config::load(f.path(), env).unwrap().nats.nkey_file.as_deref(), Some(seed.as_path()));
    assert_eq!(Config::load(f.path(), vec![]).unwrap().nats.inbox_prefix, "_INBOX");
}

#[test]
fn a_secret_file_open_to_others_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (key, mode) in [("nkey_file", 0o644), ("creds_file", 0o640), ("password_file", 0o604), ("tls_key_file", 0o660)] {
        let path = file_with_mode(dir.path(), key, "secret", mode);
        let mut extra = format!("{key} = {path:?}");
        match key {
            "password_file" => extra.push_str("\nuser = \"u\""),
            "tls_key_file" => {
                let cert = file_with_mode(dir.path(), "cert.pem", "pem", 0o644);
                extra.push_str(&format!("\ntls_cert_file = {cert:?}"));
            }
            _ => {}
        }
        let err = load_with_nats(&extra).expect_err(key);
        one_line_naming(&err, &format!("nats.{key}"), &format!("open to group or others (mode {mode:04o})"));
        assert!(err.contains("chmod 600"), "{err}");
    }
}

#[test]
fn a_missing_tls_or_credentials_file_is_one_line() {
    let err = load_with_nats("tls_ca_file = \"/nonexistent/ca.pem\"").unwrap_err();
    one_line_naming(&err, "nats.tls_ca_file = '/nonexistent/ca.pem'", "no such file");
    let err = load_with_nats("nkey_file = \"/nonexistent/u.nk\"").unwrap_err();
    one_line_naming(&err, "nats.nkey_file = '/nonexistent/u.nk'", "no such file");
    let dir = tempfile::tempdir().unwrap();
    let err = load_with_nats(&format!("tls_ca_file = {:?}", dir.path())).unwrap_err();
    one_line_naming(&err, "nats.tls_ca_file", "not a file");
}

#[test]
fn bus_credentials_must_be_complete_and_single() {
    let dir = tempfile::tempdir().unwrap();
    let cert = file_with_mode(dir.path(), "c.pem", "pem", 0o644);
    let seed = file_with_mode(dir.path(), "u.nk", "SU", 0o600);
    let creds = file_with_mode(dir.path(), "u.creds", "jwt", 0o600);
    let pw = file_with_mode(dir.path(), "pw", "pw", 0o600);
    let cases = [
        (format!("tls_cert_file = {cert:?}"), "give both tls_cert_file and tls_key_file"),
        (format!("nkey_file = {seed:?}\ncreds_file = {creds:?}"), "at most one of creds_file, nkey_file and user"),
        ("user = \"u\"".to_string(), "give both user and password_file"),
        (format!("password_file = {pw:?}"), "give both user and password_file"),
        ("inbox_prefix = \"_INBOX.>\"".to_string(), "nats.inbox_prefix = '_INBOX.>' must be a subject"),
        ("inbox_prefix = \"\"".to_string(), "nats.inbox_prefix"),
        ("direct_listen = \"10.0.0.5\"".to_string(), "nats.direct_listen = '10.0.0.5' must be an address and port"),
    ];
    for (extra, what) in cases {
        let err = load_with_nats(&extra).expect_err(&extra);
        one_line_naming(&err, "nats", what);
    }
}
