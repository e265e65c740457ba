//! Repository encryption end to end: what an encrypted repository holds reveals no row of the cluster, a
//! repository is useless without its key (a wrong passphrase, no KMS access, no `[encryption]` section: one
//! error line, nothing written), and `repo-rekey` moves the data key to a new KMS key without touching a chunk,
//! after which the old key can be disabled.
//!
//! The control matters as much as the check: the same rows in an unencrypted repository are found by the same
//! byte search, so "not found" means encrypted, not "the search cannot see through zstd". zstd's Huffman-coded
//! literals would hide the rows from a byte search anyway, so these tests store chunks uncompressed
//! (`compress_level = 0`): what hides the rows is then the encryption alone.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use strata_integration::*;

/// A value written into every row of a table, and so into its heap pages and the WAL.
const MARKER: &str = "STRATA-PLAINTEXT-MARKER-4711";

/// Pipeline settings: no compression, so that only encryption can hide the rows.
const UNCOMPRESSED: &str = "compress_level = 0\nwal_compress_level = 0";

/// Writes rows carrying [`MARKER`] (about 2 MB of them, in heap pages and WAL).
fn write_marked_rows(pg: &PgCluster, table: &str) {
    pg.psql(&format!(
        "CREATE TABLE {table} (id int primary key, v text); \
         INSERT INTO {table} SELECT g, '{MARKER}-' || g || '-' || md5(g::text) FROM generate_series(1, 30000) g;"
    ));
}

/// Paths of the repository objects whose bytes contain `needle`.
fn objects_containing(objects: impl IntoIterator<Item = (String, Vec<u8>)>, needle: &[u8]) -> Vec<String> {
    objects.into_iter().filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle)).map(|(p, _)| p).collect()
}

/// A passphrase file the postgres user can read (and no one else).
fn passphrase_file(dir: &TestDir, name: &str, passphrase: &str) -> std::path::PathBuf {
    let secrets = dir.subdir("secrets");
    let path = secrets.join(name);
    std::fs::write(&path, format!("{passphrase}\n")).unwrap();
    let owner = std::fs::metadata(&secrets).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The restore target exists afterwards only if something was written into it.
fn assert_nothing_restored(target: &Path) {
    let written = std::fs::read_dir(target).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0, "a failed restore wrote {written} entries into {}", target.display());
}

#[test]
fn a_passphrase_encrypted_repository_holds_no_plaintext_and_needs_its_passphrase() {
    let dir = TestDir::new("enc_passphrase");
    let setup = Setup::new(&dir, "local", UNCOMPRESSED, &[]);

    // Control: the same kind of rows in a plain repository are found by the byte search.
    setup.strata_ok(&["stanza-create"]);
    write_marked_rows(&setup.pg, "plain_rows");
    setup.backup("full");
    let plain_hits = objects_containing(snapshot(&setup.repo), MARKER.as_bytes());
    assert!(!plain_hits.is_empty(), "the control found no plaintext in an unencrypted repository");

    // The same cluster, now into an encrypted repository.
    let encrypted_repo = dir.subdir("repo-enc");
    let passphrase = passphrase_file(&dir, "passphrase", "correct horse battery staple 2026");
    setup.edit_config(&format!("path = {}", strata_integration::config::toml_string(setup.repo.to_str().unwrap())),
        &format!("path = {}", strata_integration::config::toml_string(encrypted_repo.to_str().unwrap())));
    setup.append_config(&format!("[encryption]\ntype = \"passphrase\"\npassphrase_file = \"{}\"", passphrase.display()));
    setup.strata_ok(&["stanza-create"]);
    write_marked_rows(&setup.pg, "secret_rows");
    setup.backup("full");
    setup.pg.psql(&format!("INSERT INTO secret_rows SELECT g, '{MARKER}-late-' || g FROM generate_series(30001, 40000) g"));
    setup.backup("incr");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));

    let objects = snapshot(&encrypted_repo);
    assert!(objects.keys().any(|k| k.starts_with("pack/")), "no packs in {}", encrypted_repo.display());
    assert!(objects.keys().any(|k| k.contains("/wal/")), "no WAL in {}", encrypted_repo.display());
    assert!(objects.contains_key("keys/strata.keys"), "no key file in {}", encrypted_repo.display());
    let hits = objects_containing(objects.clone(), MARKER.as_bytes());
    assert!(hits.is_empty(), "plaintext rows found in the encrypted repository: {hits:?}");
    let hits = objects_containing(objects, b"correct horse battery staple");
    assert!(hits.is_empty(), "the passphrase is stored in the repository: {hits:?}");

    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck on the restored cluster: {e}");
    }

    // A wrong passphrase: one line, and the restore writes nothing.
    std::fs::write(&passphrase, "not the passphrase\n").unwrap();
    let line = setup.strata_fails(&["info"]);
    assert!(line.contains("passphrase"), "{line}");
    let target = dir.path().join("wrong-passphrase");
    let line = setup.strata_fails(&["restore", "--pg-data", target.to_str().unwrap()]);
    assert!(line.contains("passphrase"), "{line}");
    assert_nothing_restored(&target);

    // No [encryption] at all: the repository says it is encrypted.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let start = text.find("[encryption]").unwrap();
    std::fs::write(&setup.config, &text[..start]).unwrap();
    let line = setup.strata_fails(&["info"]);
    assert!(line.contains("encrypted"), "{line}");
    LogCheck::postgres().assert_clean(setup.pg.log_file());
}

#[test]
fn kms_encrypted_s3_repository_needs_kms_and_survives_a_rekey() {
    let dir = TestDir::new("enc_kms");
    let s3 = S3Server::start(&dir);
    s3.create_bucket("strata-enc");
    let first_key = s3.kms_create_key();
    let setup = Setup::new(&dir, "local", UNCOMPRESSED, &[]);
    setup.use_s3(&s3, "strata-enc", "main");
    setup.append_config(&format!("[encryption]\n{}", s3.kms_encryption_config(&first_key)));
    setup.strata_ok(&["stanza-create"]);
    write_marked_rows(&setup.pg, "secret_rows");
    setup.pg.pgbench_init(2);
    setup.backup("full");
    setup.pg.pgbench_run_background(3, 2).wait().expect("pgbench failed");
    setup.backup("incr");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));

    let objects = bucket_objects(&s3, "strata-enc");
    assert!(objects.iter().any(|(k, _)| k.starts_with("main/pack/")), "no packs in the bucket");
    assert!(objects.iter().any(|(k, _)| k == "main/keys/strata.keys"), "no key file in the bucket");
    let hits = objects_containing(objects, MARKER.as_bytes());
    assert!(hits.is_empty(), "plaintext rows found in the encrypted bucket: {hits:?}");

    // Without access to the KMS the repository cannot be read: one line saying why, nothing restored.
    let closed = reserve_port();
    let reachable = format!("kms_endpoint = \"{}\"", s3.endpoint());
    let unreachable = format!("kms_endpoint = \"http://127.0.0.1:{}\"", closed.get());
    setup.edit_config(&reachable, &unreachable);
    let target = dir.path().join("no-kms");
    let line = setup.strata_fails(&["restore", "--pg-data", target.to_str().unwrap()]);
    assert!(line.contains("KMS"), "{line}");
    assert_nothing_restored(&target);
    setup.edit_config(&unreachable, &reachable);

    // Rekey to a second KMS key, disable the first: restore (and new backups) still work.
    let second_key = s3.kms_create_key();
    let packs_before: Vec<(String, Vec<u8>)> =
        bucket_objects(&s3, "strata-enc").into_iter().filter(|(k, _)| k.contains("/pack/")).collect();
    setup.strata_ok(&["repo-rekey", "--new-kms-key-id", &second_key]);
    let packs_after: Vec<(String, Vec<u8>)> =
        bucket_objects(&s3, "strata-enc").into_iter().filter(|(k, _)| k.contains("/pack/")).collect();
    assert_eq!(packs_before, packs_after, "repo-rekey changed stored data");
    s3.kms_disable_key(&first_key);
    setup.edit_config(&format!("kms_key_id = \"{first_key}\""), &format!("kms_key_id = \"{second_key}\""));
    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck on the restored cluster: {e}");
    }
    setup.backup("incr");

    // With the current key disabled too, nothing can be read, and the error says so.
    s3.kms_disable_key(&second_key);
    let line = setup.strata_fails(&["info"]);
    assert!(line.contains("disabled"), "{line}");
}
