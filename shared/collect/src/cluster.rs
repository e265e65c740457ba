//! Talking to the cluster: one session, and the facts every command checks before it trusts the cluster.

use anyhow::{anyhow, Context};
use std::time::Duration;

/// A session on a cluster. [`Session::close`] ends it cleanly; call it before exiting, or PostgreSQL logs
/// the vanished client as an error. A non-exclusive backup lives exactly as long as its session.
pub struct Session {
    pub client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Drops the client, which sends Terminate, and waits for the connection to finish.
    pub async fn close(self) {
        drop(self.client);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.connection).await;
    }
}

/// Connects with a libpq connection string, giving up after 15 s.
pub async fn connect(pg_conn: &str) -> anyhow::Result<Session> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(15), tokio_postgres::connect(pg_conn, tokio_postgres::NoTls))
            .await
            .map_err(|_| anyhow!("cannot connect to PostgreSQL: no answer within 15 s"))?
            .map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
    let connection = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(Session { client, connection })
}

/// What Strata needs to know about a running cluster.
#[derive(Debug, Clone)]
pub struct ClusterFacts {
    pub version_num: u32,
    pub system_id: u64,
    pub wal_segment_size: u64,
    pub data_directory: String,
    pub archive_mode: String,
    pub archive_command: String,
    pub data_checksums: bool,
    pub in_recovery: bool,
}

impl ClusterFacts {
    pub fn major(&self) -> u32 {
        strata_pg::version::major_from_version_num(self.version_num)
    }
}

pub async fn read_facts(client: &tokio_postgres::Client) -> anyhow::Result<ClusterFacts> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int,
                    (SELECT system_identifier FROM pg_control_system()),
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
                    current_setting('data_directory'),
                    current_setting('archive_mode'),
                    current_setting('archive_command'),
                    current_setting('data_checksums'),
                    pg_is_in_recovery()",
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
        data_checksums: row.get::<_, String>(6) == "on",
        in_recovery: row.get(7),
    })
}

/// Refuses a cluster whose data directory is not `pg_data`: the collector reads files from `pg_data`
/// while talking to the server, so they must be the same cluster.
pub fn check_data_directory(pg_data: &std::path::Path, facts: &ClusterFacts) -> anyhow::Result<()> {
    let configured = std::fs::canonicalize(pg_data)
        .with_context(|| format!("pg_data {} is not accessible", pg_data.display()))?;
    let actual = std::fs::canonicalize(&facts.data_directory)
        .unwrap_or_else(|_| std::path::PathBuf::from(&facts.data_directory));
    if configured != actual {
        anyhow::bail!(
            "pg_data is {} but the server's data_directory is {}; they must be the same cluster",
            pg_data.display(),
            facts.data_directory
        );
    }
    Ok(())
}
