//! A repository in an S3 bucket (moto's server on loopback): backup, WAL archive and restore through it,
//! multipart uploads included, and one clear error line for a server that is not there or a bucket that
//! does not exist.

mod common;

use common::*;
use std::time::Duration;
use strata_integration::*;

#[test]
fn backup_archive_and_restore_through_s3() {
    let dir = TestDir::new("s3_repo");
    let s3 = S3Server::start(&dir);
    s3.create_bucket("strata-test");
    // Uncompressed 64 MiB packs, so that packs go up as multipart uploads (above 32 MiB).
    let setup = Setup::new(&dir, "local", "compress_level = 0\nin_flight_bytes = 268435456", &[]);
    setup.use_s3(&s3, "strata-test", "clusters/a");
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(5);
    setup.strata_ok(&["check"]);
    let bench = setup.pg.pgbench_run_background(5, 2);
    setup.backup("full");
    bench.wait().expect("pgbench failed");
    setup.pg.pgbench_run_background(3, 2).wait().expect("pgbench failed");
    setup.backup("incr");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));

    let info = setup.info();
    let backups = info[0]["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{info}");
    assert!(backups[0]["stored_bytes"].as_u64().unwrap() > 64_000_000, "{info}");

    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck on the restored cluster: {e}");
    }
    LogCheck::postgres().assert_clean(setup.pg.log_file());
    LogCheck::postgres().assert_clean(copy.log_file());
}

#[test]
fn an_archived_segment_is_never_replaced_in_s3() {
    let dir = TestDir::new("s3_put_new");
    let s3 = S3Server::start(&dir);
    s3.create_bucket("strata-test");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.use_s3(&s3, "strata-test", "");
    setup.strata_ok(&["stanza-create"]);
    let segment = setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    // The same name with other content: refused, and the archived copy is the one archive-get returns.
    let fake = dir.path().join(&segment);
    let original = setup.pg.data_dir().join("pg_wal").join(&segment);
    let mut bytes = std::fs::read(&original).unwrap_or_else(|_| vec![0u8; 16 << 20]);
    bytes[100] ^= 0xff;
    std::fs::write(&fake, &bytes).unwrap();
    let line = setup.strata_fails(&["archive-push", fake.to_str().unwrap()]);
    assert!(line.contains("already archived with different content"), "{line}");
    let fetched = dir.path().join("fetched");
    setup.strata_ok(&["archive-get", &segment, fetched.to_str().unwrap()]);
    assert_ne!(std::fs::read(&fetched).unwrap(), bytes, "the archived segment was replaced");
}

#[test]
fn an_unreachable_server_or_missing_bucket_is_one_error_line() {
    let dir = TestDir::new("s3_bad");
    let s3 = S3Server::start(&dir);
    let setup = Setup::new(&dir, "local", "", &[]);

    setup.use_s3(&s3, "no-such-bucket", "");
    let line = setup.strata_fails(&["stanza-create"]);
    assert!(line.contains("bucket does not exist"), "{line}");

    let text = std::fs::read_to_string(&setup.config).unwrap();
    let closed = reserve_port();
    std::fs::write(&setup.config, text.replace(&s3.endpoint(), &format!("http://127.0.0.1:{}", closed.get()))).unwrap();
    let line = setup.strata_fails(&["info"]);
    assert!(line.contains("cannot reach S3"), "{line}");
}

/// S3 credentials from files (issue 15, item 5): read at load and used, and refused in one line once group
/// or others may read the file.
#[test]
fn s3_credentials_from_an_owner_only_file_reach_the_server() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TestDir::new("s3_secret_file");
    let s3 = S3Server::start(&dir);
    s3.create_bucket("strata-test");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.use_s3(&s3, "strata-test", "");
    // Owned by whoever runs strata (the postgres user, for archive-push), as the test directory is.
    let secrets = dir.subdir("secrets");
    let secret_file = secrets.join("s3-secret-key");
    std::fs::write(&secret_file, format!("{}\n", strata_integration::s3::S3_SECRET_KEY)).unwrap();
    let owner = std::fs::metadata(&secrets).unwrap();
    std::os::unix::fs::chown(&secret_file, Some(owner.uid()), Some(owner.gid())).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let inline = format!("secret_access_key = \"{}\"", strata_integration::s3::S3_SECRET_KEY);
    let text = std::fs::read_to_string(&setup.config).unwrap();
    assert!(text.contains(&inline), "{text}");
    std::fs::write(&setup.config, text.replace(&inline, &format!("secret_access_key_file = {secret_file:?}"))).unwrap();
    setup.strata_ok(&["stanza-create"]);
    setup.strata_ok(&["info"]);

    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let line = setup.strata_fails(&["info"]);
    assert!(line.contains("secret_access_key_file") && line.contains("is open to group or others (mode 0644)"), "{line}");
}

/// The replicator's verified write to S3 (issue 13, item 5): in one request and in parts (sent several at
/// once), the ETag moto answers confirms the bytes, so nothing is read back; and the multipart object is
/// whole.
#[test]
fn a_verified_put_is_confirmed_by_the_etag_without_a_read_back() {
    use strata_storage::{Storage, Written};
    let dir = TestDir::new("s3_verified_put");
    let s3 = S3Server::start(&dir);
    s3.create_bucket("verified");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let storage = strata_storage::S3Storage::open(strata_storage::S3Settings {
            bucket: "verified".into(),
            prefix: "main".into(),
            region: "us-east-1".into(),
            endpoint: Some(s3.endpoint()),
            path_style: true,
            credentials: Some((strata_integration::s3::S3_ACCESS_KEY.into(), strata_integration::s3::S3_SECRET_KEY.into())),
            storage_class: None,
            checksums: false,
            retry: strata_storage::s3::DEFAULT_RETRY,
            attempt_timeout: strata_storage::s3::DEFAULT_ATTEMPT_TIMEOUT,
            cancel: Default::default(),
        })
        .await
        .unwrap();
        let small = bytes::Bytes::from(b"a small object".repeat(100));
        // Above the multipart threshold: three parts of 16 MiB and a tail.
        let large: bytes::Bytes = (0..(strata_storage::s3::MULTIPART_THRESHOLD + 5_000_000)).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>().into();
        assert_eq!(storage.put_verified("one", small.clone(), false).await.unwrap(), Written::Verified);
        assert_eq!(storage.put_verified("many", large.clone(), true).await.unwrap(), Written::Verified);
        assert!(storage.put_verified("one", small.clone(), true).await.unwrap_err().to_string().contains("already exists"));
        let log = std::fs::read_to_string(s3.log_file()).unwrap();
        let reads: Vec<&str> = log.lines().filter(|l| l.contains("\"GET /verified/")).collect();
        assert!(reads.is_empty(), "the writes were read back: {reads:?}");
        assert!(log.contains("partNumber=3"), "the large object did not go up in parts:\n{log}");
        assert_eq!(storage.get("many").await.unwrap(), large);
    });
}
