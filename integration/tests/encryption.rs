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
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;
use strata_integration::*;
use strata_integration::s3::{S3_ACCESS_KEY, S3_SECRET_KEY};

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

/// Appends TOML to the setup's config.
fn append_config(setup: &Setup, toml: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(&setup.config).unwrap();
    writeln!(f, "\n{toml}").unwrap();
}

/// Replaces the first occurrence of `from` in the setup's config.
fn edit_config(setup: &Setup, from: &str, to: &str) {
    let text = std::fs::read_to_string(&setup.config).unwrap();
    assert!(text.contains(from), "config has no {from:?}:\n{text}");
    std::fs::write(&setup.config, text.replacen(from, to, 1)).unwrap();
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
    edit_config(&setup, &format!("path = {}", strata_integration::config::toml_string(setup.repo.to_str().unwrap())),
        &format!("path = {}", strata_integration::config::toml_string(encrypted_repo.to_str().unwrap())));
    append_config(&setup, &format!("[encryption]\ntype = \"passphrase\"\npassphrase_file = \"{}\"", passphrase.display()));
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

/// Every object of an S3 bucket (moto), read with plain HTTP: (key, bytes).
pub fn bucket_objects(s3: &S3Server, bucket: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/{bucket}?list-type=2&max-keys=1000");
        if let Some(t) = &token {
            path.push_str(&format!("&continuation-token={}", url_encode(t)));
        }
        let listing = String::from_utf8(http_get(s3, &path)).expect("listing is text");
        for key in xml_values(&listing, "Key") {
            let body = http_get(s3, &format!("/{bucket}/{}", url_encode_path(&key)));
            out.push((key, body));
        }
        match xml_values(&listing, "NextContinuationToken").into_iter().next() {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    out
}

fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(after[..j].replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\""));
        rest = &after[j + close.len()..];
    }
    out
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn url_encode_path(s: &str) -> String {
    s.split('/').map(url_encode).collect::<Vec<_>>().join("/")
}

/// GET on the S3 server; the body (panics unless 200).
fn http_get(s3: &S3Server, path: &str) -> Vec<u8> {
    let host = s3.endpoint().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // moto answers anonymous object reads with 403; it does not check signatures, only that there is one.
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: AWS4-HMAC-SHA256 \
         Credential={S3_ACCESS_KEY}/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP header end");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "GET {path}: {head}");
    let body = response[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return dechunk(&body);
    }
    body
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..line_end]).trim(), 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}

/// The `[encryption]` section for moto's KMS on `s3`, wrapping with `key_id`.
fn kms_section(s3: &S3Server, key_id: &str) -> String {
    format!(
        "[encryption]\ntype = \"kms\"\nkms_key_id = \"{key_id}\"\nkms_region = \"us-east-1\"\nkms_endpoint = \"{}\"\n\
         kms_access_key_id = \"{S3_ACCESS_KEY}\"\nkms_secret_access_key = \"{S3_SECRET_KEY}\"",
        s3.endpoint()
    )
}

/// Points the setup's config at `bucket`/`prefix` on `s3` instead of the posix repository.
fn use_s3(setup: &Setup, s3: &S3Server, bucket: &str, prefix: &str) {
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let start = text.find("type = \"posix\"").expect("posix repo in config");
    let end = text[start..].find("\npath = ").map(|i| start + i + 1).expect("path line");
    let end = text[end..].find('\n').map(|i| end + i + 1).unwrap_or(text.len());
    let text = format!("{}{}{}", &text[..start], s3.repo_config(bucket, prefix), &text[end..]);
    std::fs::write(&setup.config, text).unwrap();
}

#[test]
fn kms_encrypted_s3_repository_needs_kms_and_survives_a_rekey() {
    let dir = TestDir::new("enc_kms");
    let s3 = S3Server::start(&dir);
    s3.create_bucket("strata-enc");
    let first_key = s3.kms_create_key();
    let setup = Setup::new(&dir, "local", UNCOMPRESSED, &[]);
    use_s3(&setup, &s3, "strata-enc", "main");
    append_config(&setup, &kms_section(&s3, &first_key));
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
    edit_config(&setup, &reachable, &unreachable);
    let target = dir.path().join("no-kms");
    let line = setup.strata_fails(&["restore", "--pg-data", target.to_str().unwrap()]);
    assert!(line.contains("KMS"), "{line}");
    assert_nothing_restored(&target);
    edit_config(&setup, &unreachable, &reachable);

    // Rekey to a second KMS key, disable the first: restore (and new backups) still work.
    let second_key = s3.kms_create_key();
    let packs_before: Vec<(String, Vec<u8>)> =
        bucket_objects(&s3, "strata-enc").into_iter().filter(|(k, _)| k.contains("/pack/")).collect();
    setup.strata_ok(&["repo-rekey", "--new-kms-key-id", &second_key]);
    let packs_after: Vec<(String, Vec<u8>)> =
        bucket_objects(&s3, "strata-enc").into_iter().filter(|(k, _)| k.contains("/pack/")).collect();
    assert_eq!(packs_before, packs_after, "repo-rekey changed stored data");
    s3.kms_disable_key(&first_key);
    edit_config(&setup, &format!("kms_key_id = \"{first_key}\""), &format!("kms_key_id = \"{second_key}\""));
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
