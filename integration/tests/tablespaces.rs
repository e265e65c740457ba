//! A tablespace outside the data directory is backed up and restored, to its original place or to a new
//! one given with --tablespace-map.

mod common;

use common::*;
use std::time::Duration;
use strata_integration::*;

#[test]
fn a_tablespace_is_restored_where_the_map_says() {
    let dir = TestDir::new("tablespaces");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    let location = dir.subdir("tblspc");
    setup.pg.psql(&format!("CREATE TABLESPACE extra LOCATION '{}'", location.display()));
    setup.pg.psql("CREATE TABLE far (id int, v text) TABLESPACE extra; INSERT INTO far SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    let oid = setup.pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'extra'");
    setup.backup("full");
    let digests = setup.pg.table_digests("postgres");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));

    // The original location is in use by the source: restoring there is refused, with the way out.
    let target = dir.path().join("refused");
    let line = setup.strata_fails(&["restore", "--pg-data", target.to_str().unwrap()]);
    assert!(line.contains("--tablespace-map"), "{line}");

    let moved = dir.path().join("tblspc-restored");
    let map = format!("{oid}={}", moved.display());
    let copy = setup.restore_and_start("restored", &["--tablespace-map", &map, "--type", "immediate"]);
    assert_eq!(copy.table_digests("postgres"), digests);
    let link = std::fs::read_link(copy.data_dir().join("pg_tblspc").join(&oid)).unwrap();
    assert_eq!(link, moved);
    assert_eq!(copy.psql("SELECT count(*) FROM far"), "20000");
}
