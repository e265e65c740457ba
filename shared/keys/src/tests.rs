//! Unit tests: the passphrase provider, the key file, and what `sealer_for`, `init_repository`,
//! `wait_for_sealer` and `rekey` do with posix repositories in temporary directories. (The KMS provider is
//! tested against moto's KMS in integration/tests/keys.rs.)

use super::*;
use std::path::{Path, PathBuf};
use strata_storage::PosixStorage;

fn provider(passphrase: &str) -> PassphraseKeyProvider {
    PassphraseKeyProvider::new(passphrase.as_bytes().to_vec(), "test".into()).unwrap()
}

fn message(e: KeyError) -> String {
    e.to_string()
}

/// A config with `repos` posix repositories and the given `[encryption]` body (empty: none).
fn config(dir: &Path, repos: &[&Path], encryption: &str) -> Config {
    let mut text = String::from("bus = \"local\"\n[stanza.main]\npg_data = \"/nonexistent\"\npg_conn = \"host=/tmp\"\n");
    for (i, r) in repos.iter().enumerate() {
        text.push_str(&format!("[[repo]]\nname = \"r{i}\"\ntype = \"posix\"\npath = {:?}\n", r.display().to_string()));
    }
    if !encryption.is_empty() {
        text.push_str(&format!("[encryption]\n{encryption}\n"));
    }
    let path = dir.join(format!("strata-{}.toml", rand::random::<u64>()));
    std::fs::write(&path, text).unwrap();
    Config::load(&path, Vec::<(String, String)>::new()).unwrap()
}

/// A passphrase file only its owner can read, as the provider demands.
fn passphrase_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn passphrase_config(dir: &Path, repos: &[&Path], file: &Path) -> Config {
    config(dir, repos, &format!("type = \"passphrase\"\npassphrase_file = {:?}", file.display().to_string()))
}

fn repo_dir(dir: &Path, name: &str) -> (PathBuf, Arc<dyn Storage>) {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(PosixStorage::open(&path).unwrap());
    (path, storage)
}

#[tokio::test]
async fn passphrase_round_trip() {
    let p = provider("correct horse battery staple");
    let (key, wrapped) = p.generate().await.unwrap();
    assert_eq!(wrapped.provider, "passphrase");
    assert_eq!(wrapped.kdf, Some(KdfParams::default()));
    assert_eq!(KdfParams::default().memory_kib, 65536);
    let back = p.unwrap(&wrapped).await.unwrap();
    assert_eq!(*back.0, *key.0);
    // A new wrap of the same key has its own salt and nonce.
    let again = p.wrap(&key).await.unwrap();
    assert_ne!(again.salt, wrapped.salt);
    assert_ne!(again.blob, wrapped.blob);
    assert_eq!(*p.unwrap(&again).await.unwrap().0, *key.0);
    // The data key is not in the wrap.
    assert!(!wrapped.blob.contains(&hex::encode(*key.0)));
}

#[tokio::test]
async fn wrong_passphrase_is_one_clear_error() {
    let (_, wrapped) = provider("the right passphrase").generate().await.unwrap();
    let e = message(provider("the wrong passphrase").unwrap(&wrapped).await.expect_err("a wrong passphrase must fail"));
    assert!(e.starts_with("wrong passphrase for the repository's data key"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[tokio::test]
async fn changed_kdf_parameters_do_not_unwrap() {
    let p = provider("a passphrase for tests");
    let (_, mut wrapped) = p.generate().await.unwrap();
    wrapped.kdf = Some(KdfParams { iterations: 1, ..KdfParams::default() });
    let e = message(p.unwrap(&wrapped).await.expect_err("weakened parameters must fail"));
    assert!(e.contains("wrong passphrase") && e.contains("altered"), "{e}");
    wrapped.kdf = Some(KdfParams { memory_kib: u32::MAX, ..KdfParams::default() });
    let e = message(p.unwrap(&wrapped).await.expect_err("absurd parameters must fail"));
    assert!(e.contains("implausible KDF parameters"), "{e}");
}

#[tokio::test]
async fn passphrase_sources() {
    let dir = tempfile::tempdir().unwrap();
    let empty = passphrase_file(dir.path(), "empty", "");
    let e = message(PassphraseKeyProvider::from_file(&empty).err().expect("empty file"));
    assert!(e.contains("is empty"), "{e}");
    let blank_first = passphrase_file(dir.path(), "blank", "\nsecret passphrase 1\n");
    assert!(PassphraseKeyProvider::from_file(&blank_first).is_err());
    let e = message(PassphraseKeyProvider::from_file(&dir.path().join("missing")).err().expect("missing file"));
    assert!(e.contains("cannot read the passphrase file"), "{e}");

    // The first line, without its line end, is the passphrase.
    let file = passphrase_file(dir.path(), "pass", "secret passphrase 1\r\nsecond line\n");
    let (key, wrapped) = PassphraseKeyProvider::from_file(&file).unwrap().generate().await.unwrap();
    assert_eq!(*provider("secret passphrase 1").unwrap(&wrapped).await.unwrap().0, *key.0);

    let var = format!("STRATA_KEYS_TEST_PASSPHRASE_{}", std::process::id());
    let e = message(PassphraseKeyProvider::from_env(&var).err().expect("unset variable"));
    assert!(e.contains("is not set"), "{e}");
    std::env::set_var(&var, "secret passphrase 1");
    let from_env = PassphraseKeyProvider::from_env(&var).unwrap();
    assert_eq!(*from_env.unwrap(&wrapped).await.unwrap().0, *key.0);
    std::env::set_var(&var, "");
    assert!(PassphraseKeyProvider::from_env(&var).is_err());
    std::env::remove_var(&var);
}

#[tokio::test]
async fn key_file_parse() {
    let p = provider("a passphrase for tests");
    let (key, wrapped) = p.generate().await.unwrap();
    let file = KeyFile::new(&key, wrapped);
    assert_eq!(file.key_check.len(), 32);
    assert_eq!(file.key_check, key.check_value());
    let parsed = KeyFile::parse(&file.to_bytes()).unwrap();
    assert_eq!(parsed, file);
    assert_eq!(*parsed.unwrap_with(&p).await.unwrap().0, *key.0);

    // A file written before `kdf` and `rewrapped` existed still parses.
    let old = format!(
        r#"{{"format":1,"created":5,"key_check":"{}","wrapped":{{"provider":"kms","key_id":"k","blob":"00"}}}}"#,
        file.key_check
    );
    let parsed = KeyFile::parse(old.as_bytes()).unwrap();
    assert_eq!((parsed.wrapped.salt.as_str(), parsed.wrapped.kdf.as_ref(), parsed.rewrapped), ("", None, None));

    let newer = old.replace("\"format\":1", "\"format\":2");
    assert!(message(KeyFile::parse(newer.as_bytes()).unwrap_err()).contains("format 2"));
    assert!(message(KeyFile::parse(b"not json").unwrap_err()).contains("not a Strata key file"));
    let bad_check = old.replace(&file.key_check, "xyz");
    assert!(message(KeyFile::parse(bad_check.as_bytes()).unwrap_err()).contains("key_check"));

    // A key file whose check value is not the unwrapped key's is refused.
    let other = DataKey::random().unwrap();
    let swapped = KeyFile { key_check: other.check_value(), ..file.clone() };
    let e = message(swapped.unwrap_with(&p).await.unwrap_err());
    assert!(e.contains("check value"), "{e}");
}

#[tokio::test]
async fn sealer_for_its_four_cases() {
    let dir = tempfile::tempdir().unwrap();
    let pass = passphrase_file(dir.path(), "pass", "secret passphrase 1\n");
    let (plain_path, plain_repo) = repo_dir(dir.path(), "plain");
    let (enc_path, enc_repo) = repo_dir(dir.path(), "enc");
    let off = config(dir.path(), &[&plain_path], "");
    let on = passphrase_config(dir.path(), &[&enc_path], &pass);

    // Off, no key file: plain.
    assert!(!sealer_for(&off, plain_repo.as_ref()).await.unwrap().is_encrypted());
    // On, no key file, empty repository (stanza-create's case): plain, and nothing is written.
    assert!(!sealer_for(&on, enc_repo.as_ref()).await.unwrap().is_encrypted());
    assert!(enc_repo.list("").await.unwrap().is_empty());
    let stored = init_repository(&on, enc_repo.as_ref(), None).await.unwrap().expect("key file bytes");
    assert_eq!(enc_repo.get(KEY_FILE).await.unwrap().as_ref(), &stored[..]);

    // On, key file: encrypted, with the same key in every process that opens it.
    let a = sealer_for(&on, enc_repo.as_ref()).await.unwrap();
    let b = sealer_for(&on, enc_repo.as_ref()).await.unwrap();
    assert!(a.is_encrypted());
    let chunk = vec![7u8; 8192];
    let sealed = a.seal(&chunk, 1);
    assert_eq!(b.unseal(&sealed, &b.chunk_id(&chunk)).unwrap(), chunk);
    assert_ne!(a.chunk_id(&chunk), strata_seal::chunk_id(&chunk), "chunk ids must be keyed");

    // Off, key file: refused, naming how it is encrypted.
    let off_enc = config(dir.path(), &[&enc_path], "");
    let e = message(sealer_for(&off_enc, enc_repo.as_ref()).await.unwrap_err());
    assert!(e.contains("is encrypted (a passphrase); configure [encryption] to read it"), "{e}");

    // On, no key file, but data already there: refused, for each kind of data.
    let on_plain = passphrase_config(dir.path(), &[&plain_path], &pass);
    for object in ["pack/ab/abcd.pack", "stanza/main/stanza.json", "strata.repo"] {
        plain_repo.put(object, Bytes::from_static(b"x")).await.unwrap();
        let e = message(sealer_for(&on_plain, plain_repo.as_ref()).await.unwrap_err());
        assert!(e.contains("holds unencrypted data but [encryption] is configured"), "{e}");
        assert!(e.contains("found "), "{e}");
    }
    let e = message(init_repository(&on_plain, plain_repo.as_ref(), None).await.unwrap_err());
    assert!(e.contains("holds unencrypted data"), "{e}");
    assert_eq!(plain_repo.size(KEY_FILE).await.unwrap(), None, "a refused init must write nothing");

    // On, key file, wrong passphrase: one line, and the key file is untouched.
    let wrong = passphrase_file(dir.path(), "wrong", "not the secret passphrase\n");
    let on_wrong = passphrase_config(dir.path(), &[&enc_path], &wrong);
    let e = message(sealer_for(&on_wrong, enc_repo.as_ref()).await.unwrap_err());
    assert!(e.starts_with("wrong passphrase"), "{e}");
    let e = message(init_repository(&on_wrong, enc_repo.as_ref(), None).await.unwrap_err());
    assert!(e.starts_with("wrong passphrase"), "{e}");
    assert_eq!(enc_repo.get(KEY_FILE).await.unwrap().as_ref(), &stored[..]);
}

#[tokio::test]
async fn init_repository_shares_one_key_and_never_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let pass = passphrase_file(dir.path(), "pass", "secret passphrase 1\n");
    let (p1, r1) = repo_dir(dir.path(), "one");
    let (p2, r2) = repo_dir(dir.path(), "two");
    let (p3, r3) = repo_dir(dir.path(), "three");
    let cfg = passphrase_config(dir.path(), &[&p1, &p2, &p3], &pass);

    let first = init_repository(&cfg, r1.as_ref(), None).await.unwrap().unwrap();
    // Again: confirmed, not replaced.
    assert_eq!(init_repository(&cfg, r1.as_ref(), None).await.unwrap().unwrap(), first);
    // The second repository gets the same file.
    assert_eq!(init_repository(&cfg, r2.as_ref(), Some(&first)).await.unwrap().unwrap(), first);
    assert_eq!(r2.get(KEY_FILE).await.unwrap().as_ref(), &first[..]);
    assert_eq!(init_repository(&cfg, r2.as_ref(), Some(&first)).await.unwrap().unwrap(), first);
    // A repository with a key of its own is refused, and keeps it.
    let own = init_repository(&cfg, r3.as_ref(), None).await.unwrap().unwrap();
    let e = message(init_repository(&cfg, r3.as_ref(), Some(&first)).await.unwrap_err());
    assert!(e.contains("already has a different data key"), "{e}");
    assert_eq!(r3.get(KEY_FILE).await.unwrap().as_ref(), &own[..]);
    // Encryption off: no key file to make; an encrypted repository is refused.
    let off = config(dir.path(), &[&p1], "");
    let e = message(init_repository(&off, r1.as_ref(), None).await.unwrap_err());
    assert!(e.contains("is encrypted"), "{e}");
    let (p4, r4) = repo_dir(dir.path(), "four");
    assert_eq!(init_repository(&config(dir.path(), &[&p4], ""), r4.as_ref(), None).await.unwrap(), None);
    assert_eq!(r4.size(KEY_FILE).await.unwrap(), None);
}

#[tokio::test]
async fn wait_for_sealer_waits_for_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let pass = passphrase_file(dir.path(), "pass", "secret passphrase 1\n");
    let (path, repo) = repo_dir(dir.path(), "repo");
    let cfg = Arc::new(passphrase_config(dir.path(), &[&path], &pass));
    let waiting = {
        let (cfg, repo) = (cfg.clone(), repo.clone());
        tokio::spawn(async move { wait_for_sealer(&cfg, repo.as_ref()).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!waiting.is_finished(), "wait_for_sealer must wait while the repository is empty and has no key");
    init_repository(&cfg, repo.as_ref(), None).await.unwrap();
    let sealer = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("it returns once the key is there");
    assert!(sealer.unwrap().unwrap().is_encrypted());

    // With data and no key file it does not wait: it fails like sealer_for.
    let (plain_path, plain) = repo_dir(dir.path(), "plain");
    plain.put("strata.repo", Bytes::from_static(b"{}")).await.unwrap();
    let cfg = passphrase_config(dir.path(), &[&plain_path], &pass);
    let e = tokio::time::timeout(Duration::from_secs(10), wait_for_sealer(&cfg, plain.as_ref())).await.unwrap().unwrap_err();
    assert!(message(e).contains("holds unencrypted data"));
}

#[tokio::test]
async fn rekey_rewraps_every_key_file_and_touches_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let old_pass = passphrase_file(dir.path(), "old", "old secret passphrase\n");
    let new_pass = passphrase_file(dir.path(), "new", "new secret passphrase\n");
    let (p1, r1) = repo_dir(dir.path(), "one");
    let (p2, r2) = repo_dir(dir.path(), "two");
    let (p3, r3) = repo_dir(dir.path(), "three");
    let cfg = passphrase_config(dir.path(), &[&p1, &p2, &p3], &old_pass);
    let first = init_repository(&cfg, r1.as_ref(), None).await.unwrap().unwrap();
    init_repository(&cfg, r2.as_ref(), Some(&first)).await.unwrap();
    let before = sealer_for(&cfg, r1.as_ref()).await.unwrap();
    let chunk = b"some chunk".repeat(100);
    let sealed = before.seal(&chunk, 1);
    r1.put("pack/00/chunk", Bytes::from(sealed.clone())).await.unwrap();
    let repos: Vec<(String, Arc<dyn Storage>)> = vec![("one".into(), r1.clone()), ("two".into(), r2.clone()), ("three".into(), r3.clone())];

    // A new key that cannot be used: nothing is written.
    let unset = EncryptionConfig {
        kind: EncryptionType::Passphrase,
        passphrase_env: Some(format!("STRATA_KEYS_TEST_UNSET_{}", std::process::id())),
        ..Default::default()
    };
    assert!(message(rekey(&cfg, &repos, &unset).await.unwrap_err()).contains("is not set"));
    // The old key cannot be used: nothing is written.
    let wrong = passphrase_config(dir.path(), &[&p1, &p2, &p3], &new_pass);
    let to_new = EncryptionConfig { kind: EncryptionType::Passphrase, passphrase_file: Some(new_pass.clone()), ..Default::default() };
    assert!(message(rekey(&wrong, &repos, &to_new).await.unwrap_err()).contains("wrong passphrase"));
    assert_eq!(r1.get(KEY_FILE).await.unwrap().as_ref(), &first[..]);
    assert_eq!(r2.get(KEY_FILE).await.unwrap().as_ref(), &first[..]);

    let report = rekey(&cfg, &repos, &to_new).await.unwrap();
    assert_eq!(
        report.repos,
        vec![
            RekeyOutcome::Rewrapped { repo: "one".into() },
            RekeyOutcome::Rewrapped { repo: "two".into() },
            RekeyOutcome::NoKeyFile { repo: "three".into() }
        ]
    );
    assert_eq!(r3.size(KEY_FILE).await.unwrap(), None);
    let old_file = KeyFile::parse(&first).unwrap();
    let new_file = KeyFile::parse(&r1.get(KEY_FILE).await.unwrap()).unwrap();
    assert_eq!(new_file.key_check, old_file.key_check);
    assert_eq!(report.key_check, old_file.key_check);
    assert_eq!(new_file.created, old_file.created);
    assert!(new_file.rewrapped.is_some());
    assert_ne!(new_file.wrapped, old_file.wrapped);
    assert_eq!(r2.get(KEY_FILE).await.unwrap(), r1.get(KEY_FILE).await.unwrap());
    // The chunk is untouched and opens with the key the new passphrase unwraps; the old one no longer does.
    assert_eq!(r1.get("pack/00/chunk").await.unwrap().as_ref(), &sealed[..]);
    let new_cfg = passphrase_config(dir.path(), &[&p1], &new_pass);
    let after = sealer_for(&new_cfg, r1.as_ref()).await.unwrap();
    assert_eq!(after.unseal(&sealed, &after.chunk_id(&chunk)).unwrap(), chunk);
    assert!(message(sealer_for(&cfg, r1.as_ref()).await.unwrap_err()).starts_with("wrong passphrase"));
}

#[tokio::test]
async fn rekey_refuses_repositories_with_different_keys() {
    let dir = tempfile::tempdir().unwrap();
    let pass = passphrase_file(dir.path(), "pass", "secret passphrase 1\n");
    let (p1, r1) = repo_dir(dir.path(), "one");
    let (p2, r2) = repo_dir(dir.path(), "two");
    let cfg = passphrase_config(dir.path(), &[&p1, &p2], &pass);
    let first = init_repository(&cfg, r1.as_ref(), None).await.unwrap().unwrap();
    let second = init_repository(&cfg, r2.as_ref(), None).await.unwrap().unwrap();
    let repos: Vec<(String, Arc<dyn Storage>)> = vec![("one".into(), r1.clone()), ("two".into(), r2.clone())];
    let to = EncryptionConfig { kind: EncryptionType::Passphrase, passphrase_file: Some(pass.clone()), ..Default::default() };
    let e = message(rekey(&cfg, &repos, &to).await.unwrap_err());
    assert!(e.contains("has a different data key") && e.contains("nothing was rewrapped"), "{e}");
    assert_eq!(r1.get(KEY_FILE).await.unwrap().as_ref(), &first[..]);
    assert_eq!(r2.get(KEY_FILE).await.unwrap().as_ref(), &second[..]);
}

#[tokio::test]
async fn a_passphrase_file_others_can_read_or_a_short_passphrase_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = passphrase_file(dir.path(), "pass", "a long enough passphrase\n");
    assert!(PassphraseKeyProvider::from_file(&file).is_ok());
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = message(PassphraseKeyProvider::from_file(&file).err().expect("a file open to others"));
        assert!(e.contains("open to group or others") && e.contains(&format!("{mode:04o}")) && e.contains("chmod 600"), "{e}");
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(PassphraseKeyProvider::from_file(&file).is_ok());

    // A short passphrase wraps no new key (it may still open a key file wrapped before the rule).
    let short = passphrase_file(dir.path(), "short", "ab\n");
    let provider = PassphraseKeyProvider::from_file(&short).unwrap();
    let e = message(provider.generate().await.err().expect("a 2-character passphrase"));
    assert!(e.contains("has 2 characters; at least 16 are required"), "{e}");
    // Characters, not bytes: 15 two-byte characters are too short.
    let provider = PassphraseKeyProvider::new("é".repeat(15).into_bytes(), "test".into()).unwrap();
    let e = message(provider.generate().await.err().expect("15 characters"));
    assert!(e.contains("has 15 characters"), "{e}");
    assert!(PassphraseKeyProvider::new("é".repeat(16).into_bytes(), "test".into()).unwrap().generate().await.is_ok());
}

#[tokio::test]
async fn the_key_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pass = passphrase_file(dir.path(), "pass", "secret passphrase 1\n");
    let new_pass = passphrase_file(dir.path(), "new", "new secret passphrase\n");
    let (path, repo) = repo_dir(dir.path(), "repo");
    let cfg = passphrase_config(dir.path(), &[&path], &pass);
    init_repository(&cfg, repo.as_ref(), None).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path.join(KEY_FILE)), 0o600);
    let to = EncryptionConfig { kind: EncryptionType::Passphrase, passphrase_file: Some(new_pass), ..Default::default() };
    rekey(&cfg, &[("repo".into(), repo.clone())], &to).await.unwrap();
    assert_eq!(mode(&path.join(KEY_FILE)), 0o600, "a rewrapped key file too");
}

#[tokio::test]
async fn a_deleted_key_file_is_reported_as_missing_not_as_unencrypted_data() {
    let dir = tempfile::tempdir().unwrap();
    let pass = passphrase_file(dir.path(), "pass", "secret passphrase 1\n");
    let (path, repo) = repo_dir(dir.path(), "repo");
    let cfg = passphrase_config(dir.path(), &[&path], &pass);
    init_repository(&cfg, repo.as_ref(), None).await.unwrap();
    let sealer = sealer_for(&cfg, repo.as_ref()).await.unwrap();
    repo.put("strata.repo", Bytes::from_static(b"{\"format\":1}")).await.unwrap();
    repo.put("pack/ab/abcd.pack", Bytes::from(sealer.seal(&[3u8; 8192], 1))).await.unwrap();
    repo.delete(KEY_FILE).await.unwrap();
    let e = message(sealer_for(&cfg, repo.as_ref()).await.unwrap_err());
    assert!(e.contains("the key file keys/strata.keys is missing") && e.contains("holds encrypted data"), "{e}");
    assert!(!e.contains("unencrypted"), "{e}");
    let e = message(init_repository(&cfg, repo.as_ref(), None).await.unwrap_err());
    assert!(e.contains("is missing"), "{e}");
    assert_eq!(repo.size(KEY_FILE).await.unwrap(), None, "stanza-create must not make a new key over encrypted data");
}

/// Two rekeys at once, several times: exactly one succeeds, the key file is the winner's (its passphrase
/// opens the repository, the loser's does not), and no lock is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rekeys_one_wins_and_the_loser_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut current = passphrase_file(dir.path(), "pass-0", "initial passphrase 0\n");
    let (p1, r1) = repo_dir(dir.path(), "one");
    let (p2, r2) = repo_dir(dir.path(), "two");
    let cfg = passphrase_config(dir.path(), &[&p1, &p2], &current);
    let first = init_repository(&cfg, r1.as_ref(), None).await.unwrap().unwrap();
    init_repository(&cfg, r2.as_ref(), Some(&first)).await.unwrap();
    let key_check = KeyFile::parse(&first).unwrap().key_check;
    let repos: Vec<(String, Arc<dyn Storage>)> = vec![("one".into(), r1.clone()), ("two".into(), r2.clone())];
    for round in 1..=4 {
        let cfg = Arc::new(passphrase_config(dir.path(), &[&p1, &p2], &current));
        let mut tasks = Vec::new();
        let mut targets = Vec::new();
        for who in ["a", "b"] {
            let file = passphrase_file(dir.path(), &format!("pass-{round}-{who}"), &format!("passphrase of {who} in round {round}\n"));
            let to = EncryptionConfig { kind: EncryptionType::Passphrase, passphrase_file: Some(file.clone()), ..Default::default() };
            let (cfg, repos) = (cfg.clone(), repos.clone());
            tasks.push(tokio::spawn(async move { rekey(&cfg, &repos, &to).await }));
            targets.push(file);
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let winners: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one rekey must succeed: {results:?}");
        let (winner, loser) = (winners[0], 1 - winners[0]);
        let e = message(results.remove(loser).unwrap_err());
        assert!(!e.contains('\n') && (e.contains("another repo-rekey is running") || e.contains("wrong passphrase")), "{e}");
        for (path, storage) in [(&p1, &r1), (&p2, &r2)] {
            let winner_cfg = passphrase_config(dir.path(), &[path], &targets[winner]);
            assert!(sealer_for(&winner_cfg, storage.as_ref()).await.is_ok(), "round {round}: the winner's passphrase opens it");
            let loser_cfg = passphrase_config(dir.path(), &[path], &targets[loser]);
            assert!(sealer_for(&loser_cfg, storage.as_ref()).await.is_err(), "round {round}: the loser's passphrase does not");
            assert_eq!(KeyFile::parse(&storage.get(KEY_FILE).await.unwrap()).unwrap().key_check, key_check);
            assert_eq!(storage.size(REKEY_LOCK).await.unwrap(), None, "round {round}: the lock is released");
        }
        current = targets[winner].clone();
    }
}

#[tokio::test]
async fn a_rekey_lock_names_its_holder_and_one_left_by_a_dead_rekey_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let pass = passphrase_file(dir.path(), "pass", "secret passphrase 1\n");
    let new_pass = passphrase_file(dir.path(), "new", "new secret passphrase\n");
    let (path, repo) = repo_dir(dir.path(), "repo");
    let cfg = passphrase_config(dir.path(), &[&path], &pass);
    let stored = init_repository(&cfg, repo.as_ref(), None).await.unwrap().unwrap();
    let repos: Vec<(String, Arc<dyn Storage>)> = vec![("repo".into(), repo.clone())];
    let to = EncryptionConfig { kind: EncryptionType::Passphrase, passphrase_file: Some(new_pass), ..Default::default() };
    // Held by a live process (this one): refused, naming it, and nothing is written.
    let live = LockHolder::me();
    repo.put(REKEY_LOCK, Bytes::from(serde_json::to_vec(&live).unwrap())).await.unwrap();
    let e = message(rekey(&cfg, &repos, &to).await.unwrap_err());
    assert!(e.contains("another repo-rekey is running") && e.contains(&format!("pid {}", live.pid)) && e.contains(&live.host), "{e}");
    assert_eq!(repo.get(KEY_FILE).await.unwrap().as_ref(), &stored[..]);
    // Left by a process of this host that is gone: taken over.
    let dead = LockHolder { pid: u32::MAX - 1, ..live };
    repo.put(REKEY_LOCK, Bytes::from(serde_json::to_vec(&dead).unwrap())).await.unwrap();
    rekey(&cfg, &repos, &to).await.unwrap();
    assert_eq!(repo.size(REKEY_LOCK).await.unwrap(), None);
}
