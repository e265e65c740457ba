//! Repository keys wrapped by KMS (moto's KMS on loopback): a data key generated and unwrapped; a rekey to
//! a second KMS key, after which the first can be disabled; a disabled key and an unreachable KMS each one
//! clear error line that writes nothing; and the same through the `strata` command (stanza-create with
//! `[encryption] type = "kms"`, repo-rekey, a repository read without KMS access).

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_config::{Config, EncryptionConfig, EncryptionType, Secret, StaticCredentials};
use strata_integration::*;
use strata_keys::{KeyFile, KeyProvider, KmsKeyProvider, RekeyOutcome, KEY_FILE};
use strata_storage::{PosixStorage, Storage};

fn kms_config(s3: &S3Server, key_id: &str) -> EncryptionConfig {
    kms_config_at(&s3.kms_endpoint(), key_id)
}

fn kms_config_at(endpoint: &str, key_id: &str) -> EncryptionConfig {
    EncryptionConfig {
        kind: EncryptionType::Kms,
        kms_key_id: Some(key_id.into()),
        kms_region: Some("us-east-1".into()),
        kms_endpoint: Some(endpoint.into()),
        kms_credentials: Some(StaticCredentials {
            access_key_id: Secret::new(s3::S3_ACCESS_KEY),
            secret_access_key: Secret::new(s3::S3_SECRET_KEY),
        }),
        ..Default::default()
    }
}

/// A config (as the strata binaries read it) with one posix repository and `[encryption]` for `key_id`.
fn config_for(dir: &TestDir, name: &str, s3: &S3Server, repo: &Path, key_id: &str) -> Config {
    let path = dir.path().join(format!("{name}.toml"));
    let text = format!(
        "[stanza.main]\npg_data = \"/nonexistent\"\npg_conn = \"host=/tmp\"\n[[repo]]\nname = \"local\"\ntype = \"posix\"\n\
         path = {}\n[encryption]\n{}",
        config::toml_string(&repo.display().to_string()),
        s3.kms_encryption_config(key_id)
    );
    std::fs::write(&path, text).unwrap();
    Config::load(&path, Vec::<(String, String)>::new()).unwrap()
}

fn repository(dir: &TestDir, name: &str) -> (std::path::PathBuf, Arc<dyn Storage>) {
    let path = dir.subdir(name);
    let storage: Arc<dyn Storage> = Arc::new(PosixStorage::open(&path).unwrap());
    (path, storage)
}

fn one_line(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    assert!(!text.contains('\n'), "an error must be one line: {text}");
    text
}

fn arn(key_id: &str) -> String {
    format!("arn:aws:kms:us-east-1:123456789012:key/{key_id}")
}

#[tokio::test]
async fn kms_generates_and_unwraps_a_data_key() {
    let dir = TestDir::new("keys_kms");
    let s3 = S3Server::start(&dir);
    let key_id = s3.kms_create_key();
    let provider = KmsKeyProvider::from_config(&kms_config(&s3, &key_id)).unwrap();
    let (key, wrapped) = provider.generate().await.unwrap();
    assert_eq!(wrapped.provider, "kms");
    assert_eq!(wrapped.key_id, arn(&key_id), "the key file names the KMS key by its ARN");
    assert!(!wrapped.blob.contains(&hex_of(&key.0[..])), "the plain key must not be in the wrap");
    let back = provider.unwrap(&wrapped).await.unwrap();
    assert_eq!(*back.0, *key.0);
    // A second data key is another key.
    let (other, _) = provider.generate().await.unwrap();
    assert_ne!(*other.0, *key.0);
    // Through a repository: stanza-create's init stores the key file, every opener gets the same key.
    let (repo_path, repo) = repository(&dir, "repo");
    let cfg = config_for(&dir, "a", &s3, &repo_path, &key_id);
    let stored = strata_keys::init_repository(&cfg, repo.as_ref(), None).await.unwrap().unwrap();
    let file = KeyFile::parse(&stored).unwrap();
    assert_eq!(file.wrapped.key_id, arn(&key_id));
    let a = strata_keys::sealer_for(&cfg, repo.as_ref()).await.unwrap();
    let b = strata_keys::sealer_for(&cfg, repo.as_ref()).await.unwrap();
    assert!(a.is_encrypted());
    let chunk = b"eight kilobytes of a page ".repeat(300);
    assert_eq!(b.unseal(&a.seal(&chunk, 1), &b.chunk_id(&chunk)).unwrap(), chunk);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn after_rekey_the_old_kms_key_can_be_disabled() {
    let dir = TestDir::new("keys_rekey");
    let s3 = S3Server::start(&dir);
    let old_key = s3.kms_create_key();
    let new_key = s3.kms_create_key();
    let (p1, r1) = repository(&dir, "one");
    let (_p2, r2) = repository(&dir, "two");
    let cfg = config_for(&dir, "old", &s3, &p1, &old_key);
    let first = strata_keys::init_repository(&cfg, r1.as_ref(), None).await.unwrap().unwrap();
    strata_keys::init_repository(&cfg, r2.as_ref(), Some(&first)).await.unwrap();
    let before = strata_keys::sealer_for(&cfg, r1.as_ref()).await.unwrap();
    let chunk = b"a chunk sealed before the rekey ".repeat(200);
    let sealed = before.seal(&chunk, 1);

    let repos: Vec<(String, Arc<dyn Storage>)> = vec![("one".into(), r1.clone()), ("two".into(), r2.clone())];
    let report = strata_keys::rekey(&cfg, &repos, &kms_config(&s3, &new_key)).await.unwrap();
    assert_eq!(report.repos, vec![RekeyOutcome::Rewrapped { repo: "one".into() }, RekeyOutcome::Rewrapped { repo: "two".into() }]);
    assert_eq!(report.wrapped_by, format!("kms key {}", arn(&new_key)));
    for repo in [&r1, &r2] {
        let file = KeyFile::parse(&repo.get(KEY_FILE).await.unwrap()).unwrap();
        assert_eq!(file.wrapped.key_id, arn(&new_key));
        assert_eq!(file.key_check, KeyFile::parse(&first).unwrap().key_check);
    }

    s3.kms_disable_key(&old_key);
    assert_eq!(s3.kms_key_state(&old_key), "Disabled");
    // The key file names the new key, so a config still naming the old one reads the repository too.
    for cfg in [&cfg, &config_for(&dir, "new", &s3, &p1, &new_key)] {
        let after = strata_keys::sealer_for(cfg, r1.as_ref()).await.unwrap();
        assert_eq!(after.unseal(&sealed, &after.chunk_id(&chunk)).unwrap(), chunk);
    }
    // Rekeying from the disabled key's wrap is impossible, and a wrap under it would be refused.
    let e = one_line(strata_keys::rekey(&cfg, &repos, &kms_config(&s3, &old_key)).await.unwrap_err());
    assert!(e.contains("is disabled"), "{e}");
}

#[tokio::test]
async fn a_disabled_kms_key_is_one_clear_error_and_writes_nothing() {
    let dir = TestDir::new("keys_disabled");
    let s3 = S3Server::start(&dir);
    let key = s3.kms_create_key();
    let (path, repo) = repository(&dir, "repo");
    let cfg = config_for(&dir, "a", &s3, &path, &key);
    let stored = strata_keys::init_repository(&cfg, repo.as_ref(), None).await.unwrap().unwrap();

    s3.kms_disable_key(&key);
    let e = one_line(strata_keys::sealer_for(&cfg, repo.as_ref()).await.unwrap_err());
    assert_eq!(e, format!("cannot unwrap the repository's data key: KMS key {} is disabled", arn(&key)));

    // Neither rekey away from it nor to a disabled key writes anything.
    let enabled = s3.kms_create_key();
    let repos: Vec<(String, Arc<dyn Storage>)> = vec![("local".into(), repo.clone())];
    let e = one_line(strata_keys::rekey(&cfg, &repos, &kms_config(&s3, &enabled)).await.unwrap_err());
    assert!(e.contains("is disabled"), "{e}");
    let cfg_enabled = config_for(&dir, "b", &s3, &path, &enabled);
    let e = one_line(strata_keys::rekey(&cfg_enabled, &repos, &kms_config(&s3, &key)).await.unwrap_err());
    assert!(e.contains("is disabled"), "{e}");
    assert_eq!(repo.get(KEY_FILE).await.unwrap().as_ref(), &stored[..]);

    // A key that does not exist, and a new repository under a disabled key: refused, nothing stored.
    let missing = "00000000-0000-0000-0000-000000000000";
    let e = one_line(KmsKeyProvider::from_config(&kms_config(&s3, missing)).unwrap().generate().await.err().unwrap());
    assert!(e.contains("does not exist"), "{e}");
    let (_, fresh) = repository(&dir, "fresh");
    let e = one_line(strata_keys::init_repository(&cfg, fresh.as_ref(), None).await.unwrap_err());
    assert!(e.contains("is disabled"), "{e}");
    assert_eq!(fresh.size(KEY_FILE).await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_kms_is_one_error_line_within_seconds() {
    let dir = TestDir::new("keys_unreachable");
    let closed = reserve_port();
    let endpoint = format!("http://127.0.0.1:{}", closed.get());
    let provider = KmsKeyProvider::from_config(&kms_config_at(&endpoint, "1234abcd-12ab-34cd-56ef-1234567890ab")).unwrap();
    let started = Instant::now();
    let e = one_line(provider.generate().await.err().expect("nothing listens there"));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(e.contains(&format!("cannot reach KMS at {endpoint}")), "{e}");

    // A repository whose key file names a key of an unreachable KMS: the same line, nothing written.
    let s3 = S3Server::start(&dir);
    let key = s3.kms_create_key();
    let (path, repo) = repository(&dir, "repo");
    let cfg = config_for(&dir, "a", &s3, &path, &key);
    let stored = strata_keys::init_repository(&cfg, repo.as_ref(), None).await.unwrap().unwrap();
    let mut unreachable = cfg.clone();
    unreachable.encryption.kms_endpoint = Some(endpoint.clone());
    let started = Instant::now();
    let e = one_line(strata_keys::sealer_for(&unreachable, repo.as_ref()).await.unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(e.starts_with("cannot unwrap the repository's data key: cannot reach KMS at"), "{e}");
    assert_eq!(repo.get(KEY_FILE).await.unwrap().as_ref(), &stored[..]);
}

/// Appends `[encryption]` to the setup's config.
fn set_encryption(setup: &Setup, body: &str) {
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = match text.find("\n[encryption]\n") {
        Some(i) => text[..i + 1].to_string(),
        None => text,
    };
    std::fs::write(&setup.config, format!("{text}\n[encryption]\n{body}")).unwrap();
}

#[test]
fn stanza_create_and_repo_rekey_with_kms() {
    let dir = TestDir::new("keys_cli");
    let s3 = S3Server::start(&dir);
    let old_key = s3.kms_create_key();
    let new_key = s3.kms_create_key();
    let setup = Setup::new(&dir, "local", "", &[]);
    set_encryption(&setup, &s3.kms_encryption_config(&old_key));

    setup.strata_ok(&["stanza-create"]);
    let key_file = setup.repo.join(KEY_FILE);
    let created = std::fs::read(&key_file).expect("stanza-create stores the key file");
    assert_eq!(KeyFile::parse(&created).unwrap().wrapped.key_id, arn(&old_key));
    // Again: the key is confirmed, not replaced.
    setup.strata_ok(&["stanza-create"]);
    assert_eq!(std::fs::read(&key_file).unwrap(), created);
    setup.strata_ok(&["info"]);

    // Without [encryption] the repository cannot be read, and says why.
    let with_kms = std::fs::read_to_string(&setup.config).unwrap();
    let plain = &with_kms[..with_kms.find("\n[encryption]\n").unwrap()];
    std::fs::write(&setup.config, plain).unwrap();
    let line = setup.strata_fails(&["info"]);
    assert!(line.contains(&format!("is encrypted (kms key {}); configure [encryption] to read it", arn(&old_key))), "{line}");
    std::fs::write(&setup.config, &with_kms).unwrap();

    // Exactly one new key must be named.
    let line = setup.strata_fails(&["repo-rekey"]);
    assert!(line.contains("--new-kms-key-id"), "{line}");

    let out = setup.strata_ok(&["repo-rekey", "--new-kms-key-id", &new_key]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with(&format!("repository 'local': data key rewrapped under kms key {}", arn(&new_key))), "{out}");
    assert!(lines[1].contains(&format!("encryption.kms_key_id = \"{new_key}\"")), "{out}");
    let rewrapped = KeyFile::parse(&std::fs::read(&key_file).unwrap()).unwrap();
    assert_eq!(rewrapped.wrapped.key_id, arn(&new_key));
    assert_eq!(rewrapped.key_check, KeyFile::parse(&created).unwrap().key_check);

    // The old key disabled, the repository still opens (the config not yet changed, then changed).
    s3.kms_disable_key(&old_key);
    setup.strata_ok(&["info"]);
    set_encryption(&setup, &s3.kms_encryption_config(&new_key));
    setup.strata_ok(&["info"]);

    // Without KMS access (the key disabled): one line saying why, and nothing written.
    let before = snapshot(&setup.repo);
    s3.kms_disable_key(&new_key);
    let line = setup.strata_fails(&["info"]);
    assert!(line.contains(&format!("KMS key {} is disabled", arn(&new_key))), "{line}");
    let line = setup.strata_fails(&["repo-rekey", "--new-kms-key-id", &old_key]);
    assert!(line.contains("is disabled"), "{line}");
    let after = snapshot(&setup.repo);
    assert_eq!(before.get(KEY_FILE), after.get(KEY_FILE), "a failed command must not touch the key file");
}
