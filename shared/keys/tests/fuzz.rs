//! The key file (`keys/strata.keys`) against random bytes and damaged copies of valid ones, through
//! `read_key_file` and, for passphrase wraps with cheap KDF parameters, the unwrap: a key file or one
//! error, never a panic, and a damaged file never unwraps to another key.
//! Cases per target: `PROPTEST_CASES` (see `strata-fuzzkit`).

use bytes::Bytes;
use std::sync::Arc;
use strata_fuzzkit::proptest::prelude::*;
use strata_fuzzkit::{bytes, check, fuzz, mutated_any};
use strata_keys::{read_key_file, KdfParams, KeyFile, KeyProvider, PassphraseKeyProvider, WrappedKey, KEY_FILE};
use strata_storage::{PosixStorage, Storage};

/// Argon2id at its cheapest, so that a case unwraps in milliseconds.
fn cheap() -> KdfParams {
    KdfParams { algorithm: "argon2id".into(), memory_kib: 8, iterations: 1, parallelism: 1 }
}

fn provider() -> PassphraseKeyProvider {
    PassphraseKeyProvider::new(b"correct horse battery staple".to_vec(), "the fuzz test".into()).unwrap().with_params(cheap())
}

struct Fixture {
    _dir: tempfile::TempDir,
    storage: Arc<dyn Storage>,
    rt: tokio::runtime::Runtime,
    /// A passphrase-wrapped key file and the check value of its key.
    passphrase_file: Vec<u8>,
    key_check: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(PosixStorage::open(dir.path()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (key, wrapped) = rt.block_on(provider().generate()).unwrap();
        let file = KeyFile::new(&key, wrapped);
        Fixture { _dir: dir, storage, rt, passphrase_file: file.to_bytes(), key_check: key.check_value() }
    }

    fn kms_file(&self) -> Vec<u8> {
        let wrapped = WrappedKey {
            provider: "kms".into(),
            key_id: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab".into(),
            blob: "01020300a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
            salt: String::new(),
            kdf: None,
        };
        let file = KeyFile { format: 1, created: 1_796_000_000, rewrapped: Some(1_796_100_000), key_check: self.key_check.clone(), wrapped };
        file.to_bytes()
    }

    /// Stores `bytes` as the key file and reads it as every process does; unwraps a passphrase wrap whose
    /// KDF is cheap enough to run here.
    fn read(&self, bytes: &[u8]) -> Result<(), TestCaseError> {
        self.rt.block_on(async {
            self.storage.put(KEY_FILE, Bytes::copy_from_slice(bytes)).await.unwrap();
            match read_key_file(self.storage.as_ref()).await {
                Ok(Some((file, stored))) => {
                    check!(stored.as_ref() == bytes, "the key file's bytes changed on reading");
                    check!(KeyFile::parse(&file.to_bytes()).ok().as_ref() == Some(&file), "key file does not round-trip");
                    let _ = file.wrapped.describe();
                    let cheap_enough = file.wrapped.kdf.as_ref().is_some_and(|k| k.memory_kib <= 64 && k.iterations <= 2 && k.parallelism <= 2);
                    if cheap_enough {
                        if let Ok(key) = file.unwrap_with(&provider()).await {
                            check!(key.check_value() == self.key_check, "a damaged key file unwrapped to another key");
                        }
                    }
                }
                Ok(None) => return Err(TestCaseError::fail("a stored key file read as missing")),
                Err(e) => {
                    let text = e.to_string();
                    check!(!text.is_empty() && !text.contains('\n'), "not one error line: {text:?}");
                }
            }
            Ok(())
        })
    }
}

#[test]
fn fuzz_key_file_mutated() {
    let f = Fixture::new();
    let valid = vec![f.passphrase_file.clone(), f.kms_file()];
    fuzz("keys/key-file-mutated", 256, mutated_any(valid), |b| f.read(&b));
}

#[test]
fn fuzz_key_file_random() {
    let f = Fixture::new();
    fuzz("keys/key-file-random", 256, bytes(300), |b| f.read(&b));
}

/// A valid key file with any KDF parameters and salt: refused, or unwrapped (cheap ones) to its own key.
#[test]
fn fuzz_key_file_kdf_fields() {
    let f = Fixture::new();
    let original: KeyFile = KeyFile::parse(&f.passphrase_file).unwrap();
    let memory = prop_oneof![Just(8u32), 0..100u32, any::<u32>()];
    let iterations = prop_oneof![Just(1u32), 0..3u32, any::<u32>()];
    let parallelism = prop_oneof![Just(1u32), 0..3u32, any::<u32>()];
    let salt = prop_oneof![Just(original.wrapped.salt.clone()), prop::collection::vec(prop::sample::select(b"0123456789abcdef".to_vec()), 0..40)
        .prop_map(|h| String::from_utf8(h).unwrap()), any::<String>()];
    let strategy = (memory, iterations, parallelism, salt, prop_oneof![Just("argon2id".to_string()), any::<String>()]);
    fuzz("keys/kdf-fields", 128, strategy, |(memory_kib, iterations, parallelism, salt, algorithm)| {
        let mut file = original.clone();
        file.wrapped.kdf = Some(KdfParams { algorithm, memory_kib, iterations, parallelism });
        file.wrapped.salt = salt;
        f.read(&file.to_bytes())
    });
}
