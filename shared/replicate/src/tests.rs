//! Scan and copy between two POSIX repositories in temporary directories.

use crate::{lag, Copier, CopyError, Item, Scanner};
use bytes::Bytes;
use std::sync::Arc;
use strata_messages::{WalRecord, WAL_RECORD_VERSION};
use strata_repo::{PackBuilder, Repo, StanzaInfo};
use strata_seal::Sealer;
use strata_storage::PosixStorage;

fn repo(name: &str) -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(PosixStorage::open(dir.path()).unwrap());
    (dir, Repo::new(name, storage))
}

fn stanza_info() -> StanzaInfo {
    StanzaInfo { stanza: "main".into(), system_id: 7, pg_version_num: 150004, pg_major: 15, wal_segment_size: 16 << 20, created: 1 }
}

/// Archives a WAL file of `content` in `repo` (one chunk in a pack of its own).
async fn archive(repo: &Repo, name: &str, content: &[u8]) -> WalRecord {
    let sealer = Sealer::default();
    let id = sealer.chunk_id(content);
    let mut pack = PackBuilder::new();
    pack.add(id, content.len() as u32, &sealer.seal(content, 1));
    let chunks = repo.write_pack(pack).await.unwrap();
    let record = WalRecord { version: WAL_RECORD_VERSION, name: name.into(), size: content.len() as u64, hash: id, chunks, summary: None };
    repo.put_wal("main", &record).await.unwrap();
    record
}

const SEG1: &str = "000000010000000000000001";
const SEG2: &str = "000000010000000000000002";

#[tokio::test]
async fn copies_what_is_missing_verifies_it_and_then_has_nothing_to_do() {
    let (_a, source) = repo("a");
    let (_b, target) = repo("b");
    source.create_stanza(&stanza_info()).await.unwrap();
    archive(&source, SEG1, &b"one".repeat(5000)).await;
    archive(&source, SEG2, &b"two".repeat(5000)).await;

    let mut scanner = Scanner::default();
    let plan = scanner.plan(&source, &target).await.unwrap();
    assert_eq!(
        plan.items,
        vec![Item::Wal { stanza: "main".into(), name: SEG1.into() }, Item::Wal { stanza: "main".into(), name: SEG2.into() }]
    );
    // Two packs, two records and stanza.json.
    assert_eq!(plan.lag.objects, 5);
    assert!(plan.lag.bytes > 0 && plan.lag.oldest.is_some());

    let copier = Copier::new(source.clone(), target.clone());
    let copied = copier.copy_wal("main", SEG1).await.unwrap();
    // stanza.json and the format marker, the pack, the record.
    assert_eq!(copied.objects, 4);
    let after_one = lag(&source, &target).await.unwrap();
    assert_eq!(after_one.objects, 2, "{after_one:?}");
    // Resuming is a no-op for what is there.
    assert_eq!(copier.copy_wal("main", SEG1).await.unwrap().objects, 0);
    copier.copy_wal("main", SEG2).await.unwrap();
    assert_eq!(lag(&source, &target).await.unwrap(), Default::default());
    assert!(scanner.plan(&source, &target).await.unwrap().items.is_empty());
    // The copy is usable: the file reads back whole from the target.
    let got = target.wal_contents(&Sealer::default(), "main", SEG2).await.unwrap().unwrap();
    assert_eq!(got, b"two".repeat(5000));
}

#[tokio::test]
async fn a_different_file_under_the_same_name_on_the_target_is_kept_and_reported() {
    let (_a, source) = repo("a");
    let (_b, target) = repo("b");
    source.create_stanza(&stanza_info()).await.unwrap();
    target.create_stanza(&stanza_info()).await.unwrap();
    archive(&source, SEG1, b"the source's").await;
    let theirs = archive(&target, SEG1, b"something else").await;
    let err = Copier::new(source, target.clone()).copy_wal("main", SEG1).await.unwrap_err();
    assert!(matches!(err, CopyError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("repository 'b'"), "{err}");
    assert_eq!(target.wal("main", SEG1).await.unwrap().unwrap().hash, theirs.hash);
}

#[tokio::test]
async fn a_target_with_another_key_file_is_refused() {
    let (_a, source) = repo("a");
    let (_b, target) = repo("b");
    source.create_stanza(&stanza_info()).await.unwrap();
    archive(&source, SEG1, b"x").await;
    source.storage().put(strata_keys::KEY_FILE, Bytes::from_static(b"{\"key\":1}")).await.unwrap();
    target.storage().put(strata_keys::KEY_FILE, Bytes::from_static(b"{\"key\":2}")).await.unwrap();
    let err = Copier::new(source.clone(), target.clone()).copy_wal("main", SEG1).await.unwrap_err();
    assert!(matches!(err, CopyError::KeyMismatch { .. }), "{err}");
    assert!(target.wal("main", SEG1).await.unwrap().is_none(), "nothing is copied into a target with another key");
    // And a target with a key where the source has none.
    source.storage().delete(strata_keys::KEY_FILE).await.unwrap();
    let err = Copier::new(source, target).copy_wal("main", SEG1).await.unwrap_err();
    assert!(err.to_string().contains("has none"), "{err}");
}

#[tokio::test]
async fn an_item_sharing_a_missing_pack_with_an_earlier_one_waits_for_its_copy() {
    let (_a, source) = repo("a");
    let (_b, target) = repo("b");
    source.create_stanza(&stanza_info()).await.unwrap();
    // Two WAL files whose chunks are in one pack.
    let sealer = Sealer::default();
    let (one, two) = (b"one".repeat(5000), b"two".repeat(5000));
    let mut pack = PackBuilder::new();
    for content in [&one, &two] {
        pack.add(sealer.chunk_id(content), content.len() as u32, &sealer.seal(content, 1));
    }
    let chunks = source.write_pack(pack).await.unwrap();
    assert_eq!(chunks.len(), 2);
    for (name, content, chunk) in [(SEG1, &one, &chunks[0]), (SEG2, &two, &chunks[1])] {
        let record = WalRecord {
            version: WAL_RECORD_VERSION,
            name: name.into(),
            size: content.len() as u64,
            hash: sealer.chunk_id(content),
            chunks: vec![chunk.clone()],
            summary: None,
        };
        source.put_wal("main", &record).await.unwrap();
    }
    let wal = |name: &str| Item::Wal { stanza: "main".into(), name: name.into() };

    let mut scanner = Scanner::default();
    let plan = scanner.plan(&source, &target).await.unwrap();
    assert_eq!(plan.items, vec![wal(SEG1)], "{plan:?}");
    assert_eq!(plan.waiting, vec![wal(SEG2)], "{plan:?}");
    // The pack counts once in the lag: one pack, two records, stanza.json.
    assert_eq!(plan.lag.objects, 4);

    let copier = Copier::new(source.clone(), target.clone());
    copier.copy_wal("main", SEG1).await.unwrap();
    let plan = scanner.plan(&source, &target).await.unwrap();
    assert_eq!((plan.items, plan.waiting), (vec![wal(SEG2)], vec![]));
    // Its pack is there: only the record is written.
    assert_eq!(copier.copy_wal("main", SEG2).await.unwrap().objects, 1);
    assert!(scanner.plan(&source, &target).await.unwrap().items.is_empty());
}
