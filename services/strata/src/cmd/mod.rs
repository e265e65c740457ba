//! One module per command.

pub mod archive;
pub mod backup;
pub mod check;
pub mod info;
pub mod restore;
pub mod stanza;

use anyhow::{anyhow, Context};

/// Facts read from a running cluster.
pub struct ClusterFacts {
    pub version_num: u32,
    pub system_id: u64,
    pub wal_segment_size: u64,
    pub data_directory: String,
    pub archive_mode: String,
    pub archive_command: String,
}

/// A session on the stanza's cluster. [`Session::close`] ends it cleanly; a command must call it before
/// exiting, or PostgreSQL logs the vanished client as an error.
pub struct Session {
    pub client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Session {
    pub async fn close(self) {
        drop(self.client);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.connection).await;
    }
}

/// Connects to the stanza's cluster.
pub async fn connect(pg_conn: &str) -> anyhow::Result<Session> {
    let (client, connection) =
        tokio::time::timeout(std::time::Duration::from_secs(15), tokio_postgres::connect(pg_conn, tokio_postgres::NoTls))
            .await
            .map_err(|_| anyhow!("cannot connect to PostgreSQL: no answer within 15 s"))?
            .map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Session { client, connection })
}

pub async fn cluster_facts(client: &tokio_postgres::Client) -> anyhow::Result<ClusterFacts> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int,
                    (SELECT system_identifier FROM pg_control_system()),
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
                    current_setting('data_directory'),
                    current_setting('archive_mode'),
                    current_setting('archive_command')",
            &[],
        )
        .await
        .context("cannot read the cluster's settings (the role needs superuser or pg_read_all_settings)")?;
    Ok(ClusterFacts {
        version_num: row.get::<_, i32>(0) as u32,
        system_id: row.get::<_, i64>(1) as u64,
        wal_segment_size: row.get::<_, i64>(2) as u64,
        data_directory: row.get(3),
        archive_mode: row.get(4),
        archive_command: row.get(5),
    })
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `2026-11-24 08:30:00` (UTC) for a Unix time.
pub fn format_time(t: i64) -> String {
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(st).to_string().replace('T', " ").trim_end_matches('Z').to_string()
}

pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
