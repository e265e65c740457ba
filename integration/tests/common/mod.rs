//! Scenario helpers shared by the end-to-end tests: a cluster wired to a Strata config, the services of
//! a NATS deployment, running the CLI, and snapshots of a repository.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use strata_integration::*;
use strata_integration::s3::S3_ACCESS_KEY;

pub const STANZA: &str = "main";

/// A PostgreSQL cluster whose WAL is archived by Strata, and the config that connects them.
pub struct Setup {
    pub dir: TestDir,
    pub bins: StrataBins,
    pub config: PathBuf,
    pub repo: PathBuf,
    pub pg: PgCluster,
}

impl Setup {
    /// Creates the cluster (data checksums on), the repository and the config (`bus` is "local" or a NATS
    /// URL; `pipeline` is extra TOML for the `[pipeline]` table), starts the cluster. No stanza yet.
    pub fn new(dir: &TestDir, bus: &str, pipeline: &str, pg_settings: &[(&str, &str)]) -> Setup {
        let bins = StrataBins::locate();
        let repo = dir.subdir("repo");
        let config = dir.path().join(strata_integration::config::CONFIG_FILE_NAME);
        let mut opts = PgOptions::new(bins.archive_push_command(&config, STANZA));
        for (k, v) in pg_settings {
            opts = opts.setting(*k, *v);
        }
        let mut pg = PgCluster::init(dir, opts);
        write_config(dir.path(), bus, STANZA, pg.data_dir(), &pg.conn_string(), &repo);
        if !pipeline.is_empty() {
            let mut f = std::fs::OpenOptions::new().append(true).open(&config).unwrap();
            writeln!(f, "\n[pipeline]\n{pipeline}").unwrap();
        }
        pg.start();
        Setup { dir: dir.clone(), bins, config, repo, pg }
    }

    /// Runs `strata <args>` as postgres and returns its output.
    pub fn strata(&self, args: &[&str]) -> Output {
        self.strata_env(args, &[])
    }

    pub fn strata_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.bins.strata_cmd(&self.config, STANZA);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap_or_else(|e| panic!("cannot run strata {args:?}: {e}"))
    }

    /// Runs `strata <args>` and panics with its output unless it succeeds.
    pub fn strata_ok(&self, args: &[&str]) -> String {
        let out = self.strata(args);
        assert!(out.status.success(), "strata {args:?} failed:\n{}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `strata <args>`, expects it to fail with exactly one `error:` line on stderr, and returns it.
    pub fn strata_fails(&self, args: &[&str]) -> String {
        expect_one_error_line(&self.strata(args), args)
    }

    /// Replaces the posix repository's `type` and `path` lines in the config with `repo_body` (another
    /// repository's keys, e.g. [`S3Server::repo_config`]'s).
    pub fn replace_posix_repo(&self, repo_body: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let start = text.find("type = \"posix\"").expect("posix repo in config");
        let end = text[start..].find("\npath = ").map(|i| start + i + 1).expect("path line");
        let end = text[end..].find('\n').map(|i| end + i + 1).unwrap_or(text.len());
        std::fs::write(&self.config, format!("{}{}{}", &text[..start], repo_body, &text[end..])).unwrap();
    }

    /// Points the config's repository at `bucket`/`prefix` on `s3` instead of its posix directory.
    pub fn use_s3(&self, s3: &S3Server, bucket: &str, prefix: &str) {
        self.replace_posix_repo(&s3.repo_config(bucket, prefix));
    }

    /// Appends TOML to the config.
    pub fn append_config(&self, toml: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.config).unwrap();
        writeln!(f, "\n{toml}").unwrap();
    }

    /// Replaces the first occurrence of `from` in the config.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "config has no {from:?}:\n{text}");
        std::fs::write(&self.config, text.replacen(from, to, 1)).unwrap();
    }

    /// `backup --type <kind>`; returns the new backup's label.
    pub fn backup(&self, kind: &str) -> String {
        let out = self.strata_ok(&["backup", "--type", kind]);
        assert!(out.starts_with(&format!("{kind} backup ")), "{out}");
        out.split_whitespace().nth(2).expect("label").to_string()
    }

    /// `info --output json`, parsed.
    pub fn info(&self) -> serde_json::Value {
        let text = self.strata_ok(&["info", "--output", "json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("info printed invalid JSON ({e}):\n{text}"))
    }

    pub fn backup_labels(&self) -> Vec<String> {
        self.info()[0]["backups"]
            .as_array()
            .expect("backups is an array")
            .iter()
            .map(|b| b["label"].as_str().expect("label").to_string())
            .collect()
    }

    /// Restores the newest backup into a new directory, starts PostgreSQL on it (not archiving), waits until
    /// recovery ends and returns the running copy.
    pub fn restore_and_start(&self, name: &str, extra: &[&str]) -> PgCluster {
        let target = self.dir.path().join(name);
        let mut args = vec!["restore", "--pg-data", target.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.strata_ok(&args);
        let mut copy = PgCluster::for_data_dir(&self.dir, name, &target);
        // The copy must not archive into the source's stanza as if it were the source.
        copy.set_start_setting("archive_mode", "off");
        copy.start();
        copy.wait_recovery_end(Duration::from_secs(300));
        copy
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn expect_one_error_line(out: &Output, what: &[&str]) -> String {
    assert!(!out.status.success(), "strata {what:?} should have failed:\n{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "strata {what:?} should print one error line:\n{}", describe(out));
    assert!(lines[0].starts_with("error: "), "strata {what:?}: {}", lines[0]);
    lines[0].to_string()
}

/// Every object of a repository with its contents (compared byte for byte). Temporary files of writes in
/// progress are left out, and a file that vanishes while the snapshot is taken (a temporary file renamed
/// away under a running backup) is skipped.
pub fn snapshot(repo: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.insert(p.strip_prefix(repo).unwrap().display().to_string(), bytes);
            }
        }
    }
    out
}

/// Every committed backup record in a repository.
pub fn records(repo: &Path) -> Vec<String> {
    snapshot(repo).into_keys().filter(|k| k.ends_with(".record")).collect()
}

/// The services of a NATS deployment, each a separate process.
pub struct Services {
    pub collector: Service,
    pub sealer: Service,
    pub uploader: Service,
}

impl Services {
    pub fn start(setup: &Setup) -> Services {
        let log = setup.dir.path();
        let mut s = Services {
            collector: Service::spawn(&setup.bins, "strata-collector", &setup.config, log),
            sealer: Service::spawn(&setup.bins, "strata-sealer", &setup.config, log),
            uploader: Service::spawn(&setup.bins, "strata-uploader", &setup.config, log),
        };
        s.collector.wait_for_log("collector running", Duration::from_secs(30));
        s.sealer.wait_for_log("sealer running", Duration::from_secs(30));
        s.uploader.wait_for_log("uploader running", Duration::from_secs(30));
        s
    }
}

/// `GET /metrics` on `port`, as curl would; the body.
pub fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    let (head, body) = out.split_once("\r\n\r\n").expect("header end");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// Source and restored copy hold the same rows in every table of `db`.
pub fn assert_same_tables(source: &PgCluster, copy: &PgCluster, db: &str) {
    let a = source.table_digests(db);
    let b = copy.table_digests(db);
    assert!(!a.is_empty(), "the source has no tables to compare in {db}");
    assert_eq!(a, b, "restored tables differ from the source's in {db}");
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

/// Every pack file of a posix repository.
pub fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(repo.join("pack")).unwrap().flatten() {
        out.extend(std::fs::read_dir(dir.path()).unwrap().flatten().map(|f| f.path()));
    }
    out
}

/// The body of a small object as the repository stores it unencrypted (`STRSUM01`, its BLAKE3 hash, the
/// body; see strata_repo), or an older build's unchecked object as it is.
pub fn stored_body(bytes: &[u8]) -> &[u8] {
    match bytes.strip_prefix(b"STRSUM01") {
        Some(rest) => &rest[32..],
        None => bytes,
    }
}

/// A file holding `content` (a passphrase), in `<dir>/secrets`, that only the postgres user can read
/// (mode 0600, as Strata demands of a passphrase file).
pub fn secret_file(dir: &TestDir, name: &str, content: &str) -> PathBuf {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let secrets = dir.subdir("secrets");
    let path = secrets.join(name);
    std::fs::write(&path, format!("{content}\n")).unwrap();
    let owner = std::fs::metadata(&secrets).unwrap();
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

