//! The config loader (`Config::load`, the path every binary reads its config by) against random text,
//! damaged copies of valid configs (the shipped example and a minimal one) and any `STRATA_*` override:
//! a config or one error, never a panic. Cases per target: `PROPTEST_CASES` (see `strata-fuzzkit`).

use std::path::Path;
use strata_config::Config;
use strata_fuzzkit::proptest::prelude::*;
use strata_fuzzkit::{bytes, check, fuzz, mutated_any};

const MINIMAL: &str = r#"
bus = "local"
[stanza.main]
pg_data = "/var/lib/postgresql/15/main"
pg_conn = "host=/run/postgresql"
[[repo]]
name = "local"
type = "posix"
path = "/var/lib/strata"
"#;

fn example() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/strata.example.toml")).unwrap()
}

/// Loads `text` as a config file with `env`; a loaded config is used as the binaries use it.
fn load(file: &Path, text: &[u8], env: Vec<(String, String)>) -> Result<(), TestCaseError> {
    std::fs::write(file, text).unwrap();
    match Config::load(file, env) {
        Ok(cfg) => {
            let _ = (&cfg.bus, cfg.primary_repo(), cfg.repo_named("local"));
            for name in cfg.stanza.keys() {
                check!(cfg.stanza(name).is_ok(), "stanza {name} listed but not found");
            }
            let _ = cfg.stanza("no such stanza").map_err(|e| e.to_string());
        }
        Err(e) => check!(!e.to_string().is_empty(), "empty error"),
    }
    Ok(())
}

#[test]
fn fuzz_config_mutated() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.toml");
    fuzz("config/mutated", 256, mutated_any(vec![MINIMAL.as_bytes().to_vec(), example()]), |text| load(&file, &text, vec![]));
}

#[test]
fn fuzz_config_random() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.toml");
    fuzz("config/random", 256, prop_oneof![bytes(300), any::<String>().prop_map(String::into_bytes)], |text| {
        load(&file, &text, vec![])
    });
}

/// Overrides from the environment go through the same validation as the file.
#[test]
fn fuzz_config_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.toml");
    let key = prop::sample::select(vec![
        "STRATA_BUS",
        "STRATA_PIPELINE__CHUNK_SIZE",
        "STRATA_PIPELINE__SEALERS",
        "STRATA_PIPELINE__IN_FLIGHT_BYTES",
        "STRATA_ALERTS__RESEND_SECS",
        "STRATA_ALERTS__BACKUP_LATE_FACTOR",
        "STRATA_ENCRYPTION__TYPE",
        "STRATA_VERIFIER__REVERIFY_SECS",
        "STRATA_STANZA__MAIN__PG_DATA",
        "STRATA_METRICS__LISTEN",
        "STRATA_AUDIT__LOG",
    ]);
    let value = prop_oneof![
        any::<String>(),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        Just(String::new()),
        Just("true".to_string()),
    ];
    let env = prop::collection::vec((key.prop_map(String::from), value), 1..4);
    fuzz("config/env", 256, env, |env| load(&file, MINIMAL.as_bytes(), env));
}
