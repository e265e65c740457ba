//! Writing a Strata config file for a test.
//!
//! The harness writes the TOML text itself rather than serialising `strata-config` types: the tests check
//! the file format users write (README's keys), and a field renamed in the config crate must break a test
//! instead of being silently followed. The file is mode 0644 in a directory `postgres` can traverse,
//! because the CLI started by `archive_command` reads it as `postgres`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The file name [`write_config`] uses.
pub const CONFIG_FILE_NAME: &str = "strata.toml";

/// A TOML basic string (double-quoted, with escapes), so any path or connection string is written exactly.
pub fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `<dir>/strata.toml` with one stanza and one posix repository named `local`; returns its path.
///
/// `bus` is `"local"` or a NATS URL (`NatsServer::url()`); `pg_conn` is a libpq keyword/value string
/// (`PgCluster::conn_string()`).
pub fn write_config(
    dir: &Path,
    bus: &str,
    stanza: &str,
    pg_data: &Path,
    pg_conn: &str,
    repo_path: &Path,
) -> PathBuf {
    let posix = format!(
        "type = \"posix\"\npath = {}\n",
        toml_string(&repo_path.display().to_string())
    );
    write_config_with(dir, bus, stanza, pg_data, pg_conn, &[("local", &posix)], "")
}

/// Writes `<dir>/strata.toml` with one stanza, the repositories `repos` (name, and the `[[repo]]` body after
/// `name`, such as `S3Server::repo_config` returns; the first is the primary) and `extra` (further tables,
/// `[pipeline]`, `[metrics]`, `[replicator]`, written as is) at the end; returns its path.
pub fn write_config_with(
    dir: &Path,
    bus: &str,
    stanza: &str,
    pg_data: &Path,
    pg_conn: &str,
    repos: &[(&str, &str)],
    extra: &str,
) -> PathBuf {
    assert!(
        !stanza.is_empty()
            && stanza
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "stanza {stanza:?} must be a bare TOML key (letters, digits, - and _)"
    );
    let mut text = format!(
        "# Written by strata-integration (write_config) for one test.\n\
         bus = {bus}\n\
         \n\
         [stanza.{stanza}]\n\
         pg_data = {pg_data}\n\
         pg_conn = {pg_conn}\n",
        bus = toml_string(bus),
        pg_data = toml_string(&pg_data.display().to_string()),
        pg_conn = toml_string(pg_conn),
    );
    for (name, body) in repos {
        text.push_str(&format!("\n[[repo]]\nname = {}\n{body}", toml_string(name)));
    }
    text.push_str(extra);
    let path = dir.join(CONFIG_FILE_NAME);
    fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("cannot chmod 0644 {}: {e}", path.display()));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(toml_string("host=/tmp/x port=5"), "\"host=/tmp/x port=5\"");
        assert_eq!(toml_string("\u{1}"), "\"\\u0001\"");
    }

    #[test]
    fn writes_the_documented_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(
            dir.path(),
            "nats://127.0.0.1:4222",
            "main",
            Path::new("/d/data"),
            "host=/d/sock port=5432 user=postgres dbname=postgres",
            Path::new("/d/repo"),
        );
        let text = fs::read_to_string(&path).expect("read back");
        assert!(text.contains("bus = \"nats://127.0.0.1:4222\"\n"), "{text}");
        assert!(
            text.contains("[stanza.main]\npg_data = \"/d/data\"\n"),
            "{text}"
        );
        assert!(
            text.contains("[[repo]]\nname = \"local\"\ntype = \"posix\"\npath = \"/d/repo\"\n"),
            "{text}"
        );
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}
