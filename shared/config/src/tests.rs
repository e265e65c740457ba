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
    assert_eq!(c.bus, BusConfig::Local);
    assert!(matches!(&c.primary_repo().kind, RepoKind::Posix { path } if path == Path::new("/var/lib/strata/repo")));
    assert_eq!(c.encryption.kind, EncryptionType::None);
    assert_eq!(c.alerts.webhook_critical, None);
}

/// Every key the example shows commented out, uncommented: a documented key that the loader does not know
/// (or reads differently) fails here. The files it names are made, owner-only, in a temporary directory.
#[test]
fn the_shipped_example_config_loads_with_every_documented_key() {
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/strata.example.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // `key = value` with a TOML value, or a table header; not prose that happens to hold " = ".
    let is_value = |v: &str| {
        (v.starts_with('"') && v.ends_with('"')) || (v.starts_with('[') && v.ends_with(']')) || v == "true" || v == "false" || v.parse::<f64>().is_ok()
    };
    let is_setting = |line: &str| {
        line.starts_with('[')
            || line.split_once(" = ").is_some_and(|(k, v)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_') && is_value(v.split("  #").next().unwrap().trim())
            })
    };
    let mut text = String::new();
    for line in example.lines() {
        match line.strip_prefix("# ") {
            Some(setting) if is_setting(setting) => text.push_str(setting),
            _ => text.push_str(line),
        }
        text.push('\n');
    }
    let text = text.replace("/etc/strata/", &format!("{}/", dir.path().display()));
    let named: Vec<&str> = text.split('"').filter(|s| s.starts_with(&dir.path().display().to_string())).collect();
    for path in &named {
        let path = Path::new(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let content = if path.to_string_lossy().contains("webhook") { "https://hooks.example.com/T0/B0/x\n" } else { "secret\n" };
        file_with_mode(path.parent().unwrap(), path.file_name().unwrap().to_str().unwrap(), content, 0o600);
    }
    assert!(named.iter().any(|p| p.ends_with("s3-secret-key")) && named.iter().any(|p| p.ends_with("webhook-info")), "{named:?}");
    let file = write(&text);
    let c = Config::load(file.path(), vec![]).unwrap();
    let names: Vec<&str> = c.repo.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["local", "s3-primary", "offsite"]);
    let RepoKind::S3(s3) = &c.repo[1].kind else { panic!("{:?}", c.repo[1].kind) };
    assert_eq!((s3.bucket.as_str(), s3.prefix.as_str(), s3.region.as_str()), ("acme-pg-backups", "prod/main", "eu-west-1"));
    let credentials = s3.credentials.as_ref().unwrap();
    assert_eq!((credentials.access_key_id.expose(), credentials.secret_access_key.expose()), ("...", "secret"));
    let RepoKind::S3(offsite) = &c.repo[2].kind else { panic!() };
    assert_eq!((offsite.path_style, offsite.checksums, offsite.credentials.is_none()), (false, true, true));
    assert_eq!(c.encryption.kind, EncryptionType::Kms);
    assert_eq!(c.encryption.kms_credentials.as_ref().unwrap().secret_access_key.expose(), "secret");
    assert_eq!(c.alerts.webhook_info.as_deref(), Some("https://hooks.example.com/T0/B0/x"));
    assert_eq!(c.alerts.webhook_warning.as_deref(), Some("https://hooks.slack.com/services/..."));
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

/// `GOOD` with an S3 repository `s3` whose extra keys are `keys`.
fn load_with_s3_repo(keys: &str) -> Result<Config, String> {
    let f = write(&format!("{GOOD}\n[[repo]]\nname = \"s3\"\ntype = \"s3\"\nbucket = \"b\"\n{keys}\n"));
    Config::load(f.path(), vec![]).map_err(|e| e.to_string())
}

#[test]
fn repositories_and_the_bus_are_typed_with_s3_defaults_resolved() {
    let c = load_with_s3_repo("").unwrap();
    assert!(matches!(&c.repo[0].kind, RepoKind::Posix { path } if path == Path::new("/var/lib/strata")));
    let RepoKind::S3(aws) = &c.repo[1].kind else { panic!() };
    assert_eq!((aws.region.as_str(), aws.path_style, aws.checksums, aws.credentials.is_none()), ("us-east-1", false, true, true));
    let c = load_with_s3_repo("endpoint = \"http://127.0.0.1:9000\"\nregion = \"eu\"").unwrap();
    let RepoKind::S3(minio) = &c.repo[1].kind else { panic!() };
    assert_eq!((minio.region.as_str(), minio.path_style, minio.checksums), ("eu", true, false));
    let c = load_with_s3_repo("endpoint = \"http://x\"\npath_style = false\nchecksums = true").unwrap();
    let RepoKind::S3(explicit) = &c.repo[1].kind else { panic!() };
    assert_eq!((explicit.path_style, explicit.checksums), (false, true));
    assert_eq!(c.bus, BusConfig::Local);
    let f = write(&GOOD.replace("\"local\"\n", "\"tls://a:4222,tls://b:4222\"\n"));
    assert_eq!(Config::load(f.path(), vec![]).unwrap().bus, BusConfig::Nats("tls://a:4222,tls://b:4222".into()));
}

#[test]
fn secrets_come_inline_or_from_owner_only_files_and_stay_out_of_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let id = file_with_mode(dir.path(), "id", "AKIDFROMFILE\nignored second line\n", 0o600);
    let secret = file_with_mode(dir.path(), "secret", "s3cr3t-from-file\r\n", 0o400);
    let c = load_with_s3_repo(&format!("access_key_id_file = {id:?}\nsecret_access_key_file = {secret:?}")).unwrap();
    let RepoKind::S3(s3) = &c.repo[1].kind else { panic!() };
    assert_eq!(s3.credentials.as_ref().unwrap().to_pair(), ("AKIDFROMFILE".into(), "s3cr3t-from-file".into()));
    assert!(!format!("{c:?}").contains("s3cr3t"), "a secret in Debug output");
    let c = load_with_s3_repo(&format!("access_key_id = \"AKID\"\nsecret_access_key_file = {secret:?}")).unwrap();
    let RepoKind::S3(s3) = &c.repo[1].kind else { panic!() };
    assert_eq!(s3.credentials.as_ref().unwrap().to_pair(), ("AKID".into(), "s3cr3t-from-file".into()));

    let f = write(&format!("{GOOD}\n[encryption]\nkms_access_key_id_file = {id:?}\nkms_secret_access_key = \"k\"\n"));
    let c = Config::load(f.path(), vec![]).unwrap();
    assert_eq!(c.encryption.kms_credentials.unwrap().to_pair(), ("AKIDFROMFILE".into(), "k".into()));

    let hook = file_with_mode(dir.path(), "hook", "https://hooks.slack.com/services/T0/B0/token\n", 0o600);
    let f = write(&format!("{GOOD}\n[alerts]\nwebhook_warning_file = {hook:?}\nwebhook_info = \"http://127.0.0.1:1/x\"\n"));
    let c = Config::load(f.path(), vec![]).unwrap();
    assert_eq!(c.alerts.webhook_warning.as_deref(), Some("https://hooks.slack.com/services/T0/B0/token"));
    assert_eq!((c.alerts.webhook_critical, c.alerts.webhook_info.as_deref()), (None, Some("http://127.0.0.1:1/x")));
}

/// `[section]` with `extra` appended to `GOOD`, loaded; the error's text.
fn error_with_section(section: &str, extra: &str) -> String {
    let f = write(&format!("{GOOD}\n[{section}]\n{extra}\n"));
    Config::load(f.path(), vec![]).expect_err(extra).to_string()
}

#[test]
fn a_secret_file_open_to_others_missing_or_empty_or_given_twice_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let open = file_with_mode(dir.path(), "open", "secret\n", 0o644);
    let group = file_with_mode(dir.path(), "group", "secret\n", 0o640);
    let empty = file_with_mode(dir.path(), "empty", "\nsecond line\n", 0o600);
    let good = file_with_mode(dir.path(), "good", "secret\n", 0o600);
    let missing = dir.path().join("missing");
    // Each new _file key, in each way a file is refused.
    let keys: [(&str, &str, &str, &str); 7] = [
        ("repo", "access_key_id", "repository 's3' access_key_id_file", "secret_access_key = \"s\""),
        ("repo", "secret_access_key", "repository 's3' secret_access_key_file", "access_key_id = \"a\""),
        ("encryption", "kms_access_key_id", "encryption.kms_access_key_id_file", "kms_secret_access_key = \"s\""),
        ("encryption", "kms_secret_access_key", "encryption.kms_secret_access_key_file", "kms_access_key_id = \"a\""),
        ("alerts", "webhook_critical", "alerts.webhook_critical_file", ""),
        ("alerts", "webhook_warning", "alerts.webhook_warning_file", ""),
        ("alerts", "webhook_info", "alerts.webhook_info_file", ""),
    ];
    let load = |section: &str, extra: String| match section {
        "repo" => load_with_s3_repo(&extra).expect_err(&extra),
        _ => error_with_section(section, &extra),
    };
    for (section, key, key_path, other) in keys {
        for (path, what) in [
            (&open, "is open to group or others (mode 0644); allow only its owner (chmod 600)"),
            (&group, "is open to group or others (mode 0640)"),
            (&missing, "no such file"),
            (&empty, "its first line is empty"),
        ] {
            let err = load(section, format!("{key}_file = {path:?}\n{other}"));
            one_line_naming(&err, &format!("{key_path} = '{}'", path.display()), what);
        }
        let err = load(section, format!("{key} = \"https://inline\"\n{key}_file = {good:?}\n{other}"));
        one_line_naming(&err, key, &format!("give {key} or {key}_file, not both"));
    }
    // Half a key pair is refused whichever way the half is given.
    let err = load_with_s3_repo(&format!("secret_access_key_file = {good:?}")).unwrap_err();
    one_line_naming(&err, "repository 's3'", "give both access_key_id and secret_access_key, or neither");
    let err = error_with_section("encryption", &format!("kms_access_key_id_file = {good:?}"));
    one_line_naming(&err, "encryption", "give both kms_access_key_id and kms_secret_access_key, or neither");
    // A webhook from a file is checked like one written inline.
    let err = error_with_section("alerts", &format!("webhook_info_file = {good:?}"));
    one_line_naming(&err, &format!("alerts.webhook_info_file = '{}'", good.display()), "its first line must be an http:// or https:// URL");
    assert!(!err.contains("secret"), "the URL, a secret, in an error: {err}");
}

#[test]
fn each_validation_error_keeps_its_message() {
    let repo_cases = [
        ("type = \"posix\"", "repository 'x' (posix) needs a path"),
        ("type = \"s3\"", "repository 'x' (s3) needs a bucket"),
        ("type = \"s3\"\nbucket = \"b\"\naccess_key_id = \"a\"", "repository 'x': give both access_key_id and secret_access_key, or neither"),
    ];
    for (keys, message) in repo_cases {
        let f = write(&format!("{GOOD}\n[[repo]]\nname = \"x\"\n{keys}\n"));
        assert_eq!(Config::load(f.path(), vec![]).unwrap_err().to_string(), format!("config {}: {message}", f.path().display()));
    }
    let f = write(&format!("{GOOD}\n[[repo]]\nname = \"local\"\ntype = \"posix\"\npath = \"/x\"\n"));
    assert!(Config::load(f.path(), vec![]).unwrap_err().to_string().ends_with(": repository name 'local' is used twice"));
    let cases = [
        ("encryption", "type = \"kms\"", "encryption.type = \"kms\" needs encryption.kms_key_id"),
        ("encryption", "type = \"passphrase\"", "encryption.type = \"passphrase\" needs encryption.passphrase_file or encryption.passphrase_env"),
        ("replicator", "targets = [\"nowhere\"]", "replicator names repository 'nowhere', which no [[repo]] defines"),
        ("alerts", "repo_full_warning_percent = 95", "alerts.repo_full_warning_percent must not exceed alerts.repo_full_critical_percent"),
        ("alerts", "webhook_critical = \"ftp://x\"", "alerts webhook 'ftp://x' must be an http:// or https:// URL"),
        ("pipeline", "chunk_size = 1000", "pipeline.chunk_size = 1000 must be a multiple of 8192 up to 4 MiB"),
        ("pipeline", "chunk_size = 2097152\nin_flight_bytes = 1048576", "pipeline.in_flight_bytes must be at least pipeline.chunk_size"),
        ("stanza.\"a b\"", "pg_data = \"/d\"\npg_conn = \"c\"", "stanza name 'a b' may only hold letters, digits, '-' and '_'"),
        ("[restore_test.query]]\nname = \"q\"\nsql = \"select 1\"\nstanza = \"other\"\n#", "", "restore_test.query 'q' names stanza 'other', which the config does not define"),
        ("[restore_test.query]]\nname = \"q\"\nsql = \"select 1\"\nmin = 2.0\nmax = 1.0\n#", "", "restore_test.query 'q': min = 2 is above max = 1"),
    ];
    for (section, extra, message) in cases {
        let err = error_with_section(section, extra);
        assert!(err.ends_with(message) && !err.contains('\n'), "{section}: {err}");
    }
    let f = write("bus = \"local\"\n");
    assert!(Config::load(f.path(), vec![]).unwrap_err().to_string().ends_with(": no [[repo]] is configured"));
    let f = write(&GOOD.replace("\"local\"\n", "\"amqp://x\"\n"));
    assert!(Config::load(f.path(), vec![]).unwrap_err().to_string().ends_with(": bus = 'amqp://x' must be \"local\" or a nats:// URL"));
    let err = Config::load(Path::new("/nonexistent.toml"), vec![]).unwrap_err().to_string();
    assert_eq!(err, "config /nonexistent.toml: no such file");
}
