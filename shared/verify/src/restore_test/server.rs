//! Controlling the restored PostgreSQL server: the settings that isolate it, `pg_ctl start`, waiting for
//! recovery to end, and connections to it. Separate because this is everything that must know how a
//! PostgreSQL server is started and spoken to; the orchestration only sees "started" or "did not".

use super::failure::{PgError, RestoreTestFailure, StartError};
use super::memory::Watcher;
use super::scratch::{OsUser, Scratch};
use super::SAMPLE_INTERVAL;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Server log lines quoted in a failure.
const LOG_LINES: usize = 5;

/// Where pg_ctl, postgres and pg_amcheck are: the configured directory, else Debian's for the major
/// version when it exists, else PATH (`None`).
pub(super) fn pg_bin_dir(configured: Option<&Path>, major: u32) -> Option<PathBuf> {
    if let Some(dir) = configured {
        return Some(dir.to_path_buf());
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    debian.join("pg_ctl").is_file().then_some(debian)
}

pub(super) fn program(bin: &Option<PathBuf>, name: &str) -> PathBuf {
    match bin {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}


/// The settings the server is started with (see the module docs); they override every config file.
pub(super) fn server_settings(s: &Scratch, major: u32) -> Vec<(&'static str, String)> {
    let path = |p: &Path| p.display().to_string();
    let mut out = vec![
        ("data_directory", path(&s.data)),
        ("hba_file", path(&s.root.join("pg_hba.conf"))),
        ("ident_file", path(&s.root.join("pg_ident.conf"))),
        ("external_pid_file", String::new()),
        ("port", s.port.to_string()),
        ("listen_addresses", String::new()),
        ("unix_socket_directories", path(&s.sock)),
        ("unix_socket_permissions", "0700".into()),
        ("unix_socket_group", String::new()),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("synchronous_standby_names", String::new()),
        ("shared_buffers", "128MB".into()),
        ("huge_pages", "try".into()),
        ("ssl", "off".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("cluster_name", "strata-restore-test".into()),
    ];
    if major >= 15 {
        out.push(("archive_library", String::new()));
    }
    out
}

/// A command for `program` (as `user` when given and switching), with no PG* variables from this
/// environment (they could point a client elsewhere) and `/` as working directory.
pub(super) fn command_as(program: PathBuf, user: Option<&OsUser>) -> tokio::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.current_dir("/");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    if let Some(user) = user.filter(|u| u.switch) {
        cmd.uid(user.uid).gid(user.gid);
        cmd.env("HOME", &user.home).env("USER", &user.name).env("LOGNAME", &user.name);
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    cmd
}

/// `pg_ctl start -w`: returns once the server accepts connections (in hot standby, or recovered), or
/// pg_ctl's complaint.
pub(super) async fn start_server(bin: &Option<PathBuf>, s: &Scratch, user: &OsUser, major: u32, deadline: Instant) -> Result<(), StartError> {
    let options: Vec<String> =
        server_settings(s, major).into_iter().map(|(k, v)| format!("-c {}", strata_command::shell_quote(&format!("{k}={v}")))).collect();
    let wait = deadline.saturating_duration_since(Instant::now()).as_secs().max(1);
    let mut cmd = command_as(program(bin, "pg_ctl"), Some(user));
    cmd.arg("start").arg("-D").arg(&s.data).arg("-l").arg(&s.log).arg("-w").arg("-t").arg(wait.to_string());
    cmd.arg("-o").arg(options.join(" "));
    let out = cmd.output().await.map_err(|cause| StartError::CannotRun { program: program(bin, "pg_ctl"), cause })?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        return Err(StartError::Refused { status: out.status, said });
    }
    Ok(())
}

/// A connection to the recovered server, as its bootstrap superuser.
pub(super) struct Session {
    pub(super) client: tokio_postgres::Client,
    pub(super) superuser: String,
}

/// Waits until recovery has ended (the server promoted) and returns a session; fails when the server
/// stops on the way.
pub(super) async fn wait_recovery_end(s: &Scratch, user: &OsUser, watch: &Watcher) -> Result<Session, RestoreTestFailure> {
    let mut last_error = String::new();
    let mut session: Option<Session> = None;
    loop {
        if !watch.find_postmaster().is_some_and(|p| p.alive()) {
            return Err(RestoreTestFailure::StoppedDuringRecovery { log: log_tail(&s.log) });
        }
        if session.is_none() {
            match connect_superuser(s, user).await {
                Ok(c) => session = Some(c),
                Err(e) => last_error = e.to_string(),
            }
        }
        if let Some(c) = &session {
            match c.client.query_one("select pg_is_in_recovery()", &[]).await {
                Ok(row) if !row.get::<_, bool>(0) => return Ok(session.expect("checked")),
                Ok(_) => {}
                Err(e) => {
                    last_error = e.to_string();
                    session = None;
                }
            }
        }
        tracing::debug!(last_error = %last_error, "waiting for recovery to end");
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
}

/// Why no session as the bootstrap superuser could be had (yet: recovery may not let anyone in).
#[derive(Debug, thiserror::Error)]
enum SuperuserError {
    /// Each role tried, as "<role>: <error>".
    #[error("{}", .0.join("; "))]
    NoRoleLetIn(Vec<String>),
    #[error("{0}")]
    Lookup(tokio_postgres::Error),
    #[error("{0}")]
    Connect(PgError),
}

/// Connects as some role trust lets in (the server's OS user's name, then `postgres`), then finds the
/// bootstrap superuser (oid 10) and connects as it.
async fn connect_superuser(s: &Scratch, user: &OsUser) -> Result<Session, SuperuserError> {
    let mut tried = Vec::new();
    for role in [user.name.as_str(), "postgres"] {
        if tried.iter().any(|t: &String| t == role) {
            continue;
        }
        match connect(s, role, "postgres").await {
            Ok(c) => {
                let superuser: String = c
                    .query_one("select rolname::text from pg_roles where oid = 10", &[])
                    .await
                    .map_err(SuperuserError::Lookup)?
                    .get(0);
                if superuser == role {
                    return Ok(Session { client: c, superuser });
                }
                let client = connect(s, &superuser, "postgres").await.map_err(SuperuserError::Connect)?;
                return Ok(Session { client, superuser });
            }
            Err(e) => tried.push(format!("{role}: {e}")),
        }
    }
    Err(SuperuserError::NoRoleLetIn(tried))
}

pub(super) async fn connect(s: &Scratch, role: &str, db: &str) -> Result<tokio_postgres::Client, PgError> {
    let mut c = tokio_postgres::Config::new();
    c.host_path(&s.sock).port(s.port).user(role).dbname(db).application_name("strata restore-test");
    c.connect_timeout(Duration::from_secs(10));
    let (client, connection) = c.connect(tokio_postgres::NoTls).await.map_err(PgError)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'")
        .await
        .map_err(PgError)?;
    Ok(client)
}

/// `pg_last_xact_replay_timestamp()` in Unix seconds.
pub(super) async fn replayed_time(client: &tokio_postgres::Client) -> Option<i64> {
    let row = client
        .query_one("select extract(epoch from pg_last_xact_replay_timestamp())::float8", &[])
        .await
        .ok()?;
    row.get::<_, Option<f64>>(0).map(|t| t.floor() as i64)
}

/// The last lines of the server log, on one line.
pub(super) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines[lines.len().saturating_sub(LOG_LINES)..]
        .iter()
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join(" | ")
}


#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_server_never_archives_and_stays_in_the_scratch_directory() {
        let s = Scratch {
            root: "/w/x".into(),
            data: "/w/x/data".into(),
            log: "/w/x/postgresql.log".into(),
            sock: "/w/x/sock".into(),
            outside_sock: None,
            port: 5999,
        };
        let settings: HashMap<&str, String> = server_settings(&s, 15).into_iter().collect();
        assert_eq!(settings["archive_mode"], "off");
        assert_eq!(settings["archive_library"], "");
        assert_eq!(settings["primary_conninfo"], "");
        assert_eq!(settings["listen_addresses"], "");
        assert_eq!(settings["data_directory"], "/w/x/data");
        assert_eq!(settings["hba_file"], "/w/x/pg_hba.conf");
        assert_eq!(settings["unix_socket_directories"], "/w/x/sock");
        assert!(!server_settings(&s, 14).iter().any(|(k, _)| *k == "archive_library"));
    }

}
