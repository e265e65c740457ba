//! A page that fails its checksum is reported in the backup's info, and the backup still completes.

mod common;

use common::*;
use std::io::{Read, Seek, SeekFrom, Write};

#[test]
fn a_corrupt_page_is_reported_without_aborting_the_backup() {
    let dir = strata_integration::TestDir::new("page_checksums");
    let mut setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql("CREATE TABLE victim AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000) g; CHECKPOINT");
    let rel = setup.pg.psql("SELECT pg_relation_filepath('victim')");
    // Corrupt block 2 while the server is down, so no buffer holds the page and its LSN stays old.
    setup.pg.stop();
    let path = setup.pg.data_dir().join(&rel);
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let at = 2 * 8192 + 4000;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte[0] ^ 0xff]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    setup.pg.start();

    let out = setup.strata_ok(&["backup"]);
    assert!(out.contains("1 page checksum failures"), "{out}");
    let info = setup.info();
    assert_eq!(info[0]["backups"][0]["checksum_failures"], 1, "{info}");
    let text = setup.strata_ok(&["info"]);
    assert!(text.contains("page checksum failures: 1"), "{text}");
}
