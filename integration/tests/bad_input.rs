//! Bad input gets one clear error line and a non-zero exit, and changes nothing stored.

mod common;

use common::*;
use std::time::Duration;
use strata_integration::*;

/// A cluster with a stanza, one backup and archived WAL: something worth not breaking.
fn setup_with_a_backup(dir: &TestDir) -> Setup {
    let setup = Setup::new(dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    setup.strata_ok(&["backup"]);
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    setup
}

/// Runs `strata args` against `config`, expecting one error line containing `expect`, and the repository
/// unchanged.
fn refused(setup: &Setup, config: &std::path::Path, args: &[&str], expect: &str) {
    let before = snapshot(&setup.repo);
    let mut cmd = setup.bins.strata_cmd(config, STANZA);
    let out = cmd.args(args).output().unwrap();
    let line = expect_one_error_line(&out, args);
    assert!(line.contains(expect), "strata {args:?}: expected {expect:?} in: {line}");
    assert_eq!(snapshot(&setup.repo).keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "strata {args:?} changed the repository");
    for (k, v) in &before {
        assert_eq!(&snapshot(&setup.repo)[k], v, "strata {args:?} changed {k}");
    }
}

/// Writes a variant of the test's config with `from` replaced by `to`.
fn config_variant(setup: &Setup, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&setup.config).unwrap();
    assert!(text.contains(from), "config has no {from:?}:\n{text}");
    let path = setup.dir.path().join(name);
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

#[test]
fn bad_input_is_one_error_line_and_changes_nothing() {
    let dir = TestDir::new("bad_input");
    let setup = setup_with_a_backup(&dir);

    // PostgreSQL unreachable: a port where nothing listens.
    let port = reserve_port();
    let unreachable = config_variant(&setup, "unreachable.toml", &format!("port={}", setup.pg.port()), &format!("port={}", port.get()));
    refused(&setup, &unreachable, &["backup"], "cannot connect to PostgreSQL");
    refused(&setup, &unreachable, &["stanza-create"], "cannot connect to PostgreSQL");
    refused(&setup, &unreachable, &["check"], "cannot connect to PostgreSQL");

    // An unknown stanza.
    let mut cmd = setup.bins.strata_cmd(&setup.config, "nope");
    let out = cmd.arg("info").output().unwrap();
    let line = expect_one_error_line(&out, &["--stanza nope info"]);
    assert!(line.contains("unknown stanza 'nope'"), "{line}");

    // A missing repository.
    let repo = setup.repo.display().to_string();
    let missing = config_variant(&setup, "missing.toml", &repo, &format!("{repo}-missing"));
    refused(&setup, &missing, &["backup"], "does not exist");
    refused(&setup, &missing, &["info"], "does not exist");

    // A repository the command's user (postgres) can read but not write: handed to root for a moment.
    let set_owner = |uid: u32, mode_dirs: u32, mode_files: u32| {
        use std::os::unix::fs::PermissionsExt;
        let mut stack = vec![setup.repo.clone()];
        while let Some(p) = stack.pop() {
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
            let mode = if p.is_dir() { mode_dirs } else { mode_files };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            if p.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            }
        }
    };
    set_owner(0, 0o755, 0o644);
    refused(&setup, &setup.config, &["backup"], "permission denied");
    refused(&setup, &setup.config, &["check"], "permission denied");
    let postgres_uid = std::fs::metadata(setup.pg.data_dir()).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    set_owner(postgres_uid, 0o700, 0o600);

    // A restore target that is not empty.
    let target = dir.subdir("not-empty");
    std::fs::write(target.join("PG_VERSION"), "15\n").unwrap();
    refused(&setup, &setup.config, &["restore", "--pg-data", target.to_str().unwrap()], "not empty");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1, "restore wrote into a non-empty directory");

    // A misspelt config key.
    let typo = config_variant(&setup, "typo.toml", "pg_conn", "pg_conection");
    refused(&setup, &typo, &["info"], "pg_conection");

    // A stanza for another major version: the backup and the restore both refuse to mix versions.
    let stanza_json = setup.repo.join("stanza").join(STANZA).join("stanza.json");
    let original = std::fs::read(&stanza_json).unwrap();
    // Written as an older build wrote it: plain JSON, which is still read.
    let text = String::from_utf8(stored_body(&original).to_vec()).unwrap();
    let pg14 = text.replace("\"pg_major\": 15", "\"pg_major\": 14");
    assert_ne!(pg14, text);
    std::fs::write(&stanza_json, pg14).unwrap();
    refused(&setup, &setup.config, &["backup"], "PostgreSQL 14");
    let restore_to = dir.path().join("mixed");
    refused(&setup, &setup.config, &["restore", "--pg-data", restore_to.to_str().unwrap()], "refusing to mix");
    std::fs::write(&stanza_json, original).unwrap();

    assert_eq!(setup.backup_labels().len(), 1);
}

#[test]
fn backup_refuses_a_cluster_with_archive_mode_off() {
    let dir = TestDir::new("archive_mode_off");
    let setup = Setup::new(&dir, "local", "", &[("archive_mode", "off")]);
    setup.strata_ok(&["stanza-create"]);
    refused(&setup, &setup.config, &["backup"], "archive_mode is off");
    refused(&setup, &setup.config, &["check"], "archive_mode is off");
    assert!(setup.backup_labels().is_empty());
}
