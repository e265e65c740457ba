//! The sections of the file whose keys are used as they are read: serde reads them straight into the
//! types their consumers take, since nothing in them needs resolving. The sections that do (the bus,
//! repositories, encryption, alerts, which hold a kind or a secret) have a raw form in `raw` and a typed
//! one in `typed`.

use serde::Deserialize;
use std::path::PathBuf;

/// The verifier service: checks new backups and the WAL archive, runs scheduled restore tests, exports the
/// stanzas' health as metrics and raises alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    /// Seconds between two looks at the repositories and the clusters (new backups, WAL, alert rules).
    pub interval_secs: u64,
    /// Verify each new backup (every chunk, from every repository) once it is committed.
    pub verify_new_backups: bool,
    /// Verify a backup (and the WAL archive) again once its last verification is this many seconds old,
    /// so that damage that comes later (a disk's bit rot, an object changed behind Strata's back) is found
    /// before a restore needs it (0: each backup and WAL file is verified once).
    pub reverify_secs: u64,
    /// Address of the Prometheus metrics endpoint ("127.0.0.1:9188"); unset: none.
    pub metrics_listen: Option<String>,
    /// File where the verifier keeps which alerts it has sent, so that a restart neither repeats them
    /// within `alerts.resend_secs` nor forgets to resolve them; unset: kept in memory only.
    pub alert_state_file: Option<PathBuf>,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            interval_secs: 60,
            verify_new_backups: true,
            reverify_secs: 7 * 86400,
            metrics_listen: None,
            alert_state_file: None,
        }
    }
}

/// Restore tests (`strata restore-test`, and the verifier on a schedule).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreTestConfig {
    /// Seconds between scheduled restore tests of each stanza by the verifier (0: only on demand).
    pub interval_secs: u64,
    /// A test that has not passed or failed after this many seconds (restore, replay, queries) fails.
    pub timeout_secs: u64,
    /// Directory the temporary data directories are made in; unset: the system's temporary directory.
    pub work_dir: Option<PathBuf>,
    /// Directory of pg_ctl, postgres and pg_amcheck; unset: the stanza's major version under
    /// /usr/lib/postgresql/<major>/bin, else PATH.
    pub pg_bin_dir: Option<PathBuf>,
    /// OS user the test server runs as when the test runs as root (PostgreSQL refuses root).
    pub os_user: String,
    /// Run pg_amcheck on every database of the restored server.
    pub amcheck: bool,
    /// The checks that decide whether the restored cluster is good.
    pub query: Vec<ValidationQuery>,
}

impl Default for RestoreTestConfig {
    fn default() -> Self {
        RestoreTestConfig {
            interval_secs: 0,
            timeout_secs: 3600,
            work_dir: None,
            pg_bin_dir: None,
            os_user: "postgres".into(),
            amcheck: true,
            query: Vec::new(),
        }
    }
}

/// One validation query of a restore test: it must succeed, and its first column of its first row must
/// meet every expectation given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationQuery {
    /// Shown in results ("accounts row count").
    pub name: String,
    /// Only for this stanza; unset: every stanza.
    #[serde(default)]
    pub stanza: Option<String>,
    #[serde(default = "default_database")]
    pub database: String,
    pub sql: String,
    /// The value, as a number, is at least this.
    #[serde(default)]
    pub min: Option<f64>,
    /// The value, as a number, is at most this.
    #[serde(default)]
    pub max: Option<f64>,
    /// The value, as text, equals this.
    #[serde(default)]
    pub equals: Option<String>,
    /// The value is a timestamp no older than this many seconds before the test's recovery target (for a
    /// restore to the archive's end: before the last transaction archived). A freshness check.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
}

fn default_database() -> String {
    "postgres".into()
}


#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// File the audit log is appended to; unset: no audit log.
    pub path: Option<PathBuf>,
}

/// `archive-push`'s mode. With `async = true` the first `archive-push` starts a WAL shipper on the database
/// host that pushes every ready segment ahead of PostgreSQL's archiver, many at once over one pipeline;
/// `archive-push` then only asks it whether its segment is durable (pgBackRest's `archive-async`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Archive through the shipper (see above); off: each `archive-push` pushes its own segment.
    #[serde(rename = "async")]
    pub asynchronous: bool,
    /// Directory of the shipper's socket, lock and log (created with mode 0700); unset: `strata-archive`
    /// in the `pg_wal` directory of the segment being pushed.
    pub spool_path: Option<PathBuf>,
    /// Plain WAL bytes the shipper has in the pipeline at once (its look-ahead window).
    pub in_flight_bytes: usize,
    /// The shipper exits after this many seconds with nothing to push and no question asked.
    pub idle_secs: u64,
    /// Bytes of WAL waiting to be archived (ready segments in `pg_wal`) past which `archive-push` drops
    /// segments to save the primary's disk, as pgBackRest's `archive-push-queue-max` does: it reports them
    /// archived without storing them, records the hole in the repository and raises a critical alert.
    /// Unset (the default): never drops.
    pub push_queue_max: Option<u64>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig { asynchronous: false, spool_path: None, in_flight_bytes: 256 * 1024 * 1024, idle_secs: 60, push_queue_max: None }
    }
}

/// `strata wal-stream`: streams WAL from a replication slot, as pg_receivewal does, and stores the segment
/// being written as a partial segment every `flush_ms`, so that the archive is about a second behind the
/// primary without `archive_timeout`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalStreamConfig {
    /// The physical replication slot streamed from (created if missing); unset: `strata_<stanza>`.
    pub slot: Option<String>,
    /// How often the segment being written is stored as a partial segment, in milliseconds.
    pub flush_ms: u64,
    /// How often the stored position is reported to the primary (which then frees WAL the slot held).
    pub status_interval_secs: u64,
    /// WAL a slot may hold on the primary before a critical alert: a stalled or abandoned slot keeps every
    /// segment after its position, and fills the primary's disk as surely as a failing archive_command.
    pub slot_retained_max: u64,
    /// `host:port` of the streamer's Prometheus endpoint; unset: none.
    pub metrics_listen: Option<String>,
}

impl Default for WalStreamConfig {
    fn default() -> Self {
        WalStreamConfig { slot: None, flush_ms: 1000, status_interval_secs: 10, slot_retained_max: 4 << 30, metrics_listen: None }
    }
}

impl WalStreamConfig {
    /// The slot name for `stanza`: the configured one, or `strata_<stanza>` (lower case, `-` as `_`, as
    /// slot names allow only `[a-z0-9_]`).
    pub fn slot_name(&self, stanza: &str) -> String {
        self.slot.clone().unwrap_or_else(|| format!("strata_{}", stanza.to_ascii_lowercase().replace('-', "_")))
    }
}

/// `host:port` of each pipeline service's Prometheus endpoint (`GET /metrics`); unset: none. A service's
/// `--metrics-listen` flag overrides its key.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub collector: Option<String>,
    pub sealer: Option<String>,
    pub uploader: Option<String>,
}

/// The replicator service: copies committed backups and archived WAL from one repository to others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicatorConfig {
    /// The repository copied from; default: the first `[[repo]]`.
    pub source: Option<String>,
    /// Repositories copied to; default: every other `[[repo]]`.
    pub targets: Vec<String>,
    /// Seconds between scans of the source for new objects.
    pub interval_secs: u64,
    /// Concurrent object copies per replicator process.
    pub workers: usize,
    /// Address of the Prometheus metrics endpoint ("127.0.0.1:9187"); unset: none.
    pub metrics_listen: Option<String>,
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        ReplicatorConfig { source: None, targets: Vec::new(), interval_secs: 10, workers: 4, metrics_listen: None }
    }
}

/// The fleet bus's settings beyond its URL (`bus = "nats://a:4222,nats://b:4222"` lists the servers).
///
/// A fleet's bus is secured with TLS (the server's certificate checked against `tls_ca_file`, and this
/// process's `tls_cert_file`/`tls_key_file` shown to servers that verify clients) and with one NATS user per
/// role, whose server-side permissions allow only what that role does (`deploy/nats/accounts.conf`). The
/// user is given by at most one of `nkey_file` (what the shipped server config uses), `creds_file` (a JWT
/// for an operator-mode server) or `user` with `password_file`. Secrets only come from files, and a secret
/// file that its group or others may read is refused at load, as the passphrase file is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Copies JetStream keeps of each work-queue stream: 1 for a single nats-server, 3 for a three-server
    /// cluster, so that losing one server loses no queued work and no stream.
    pub stream_replicas: usize,
    /// PEM file of the CA(s) that signed the servers' certificates; set: the connection must use TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM certificate (chain) this process shows to servers that verify clients; with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`; a secret (owner-only).
    pub tls_key_file: Option<PathBuf>,
    /// NATS credentials file (`.creds`: a user JWT and its nkey seed), for a server in operator (JWT) mode;
    /// a secret (owner-only).
    pub creds_file: Option<PathBuf>,
    /// File holding the user's nkey seed (`SU...`; lines starting with '#' are comments), as written by
    /// `strata nats-keygen`; the server knows the user by its public key. A secret (owner-only).
    pub nkey_file: Option<PathBuf>,
    /// User name, for a server with user/password authorization; with `password_file`.
    pub user: Option<String>,
    /// File whose first line is `user`'s password; a secret (owner-only).
    pub password_file: Option<PathBuf>,
    /// Prefix of this process's reply subjects (default `_INBOX`). Give each role its own
    /// (`_INBOX_sealer`) and allow a role to subscribe only to `<prefix>.>`: then no role can read the
    /// replies (JetStream deliveries, publish acks) meant for another.
    pub inbox_prefix: String,
    /// Whether chunks go straight from the process that made them to a worker over TCP, with NATS carrying
    /// only where to connect (ARCHITECTURE.md, "The bus"); with TLS they are encrypted and authenticated
    /// with a key that only travelled over TLS. Default on; off keeps every byte on NATS.
    pub direct_data: bool,
    /// `ip:port` a producer (collector, sealer) listens on for workers' direct connections; port 0 is any
    /// free port. Default: the address this host reaches the first bus server from, any port. Workers of
    /// the next stage must be able to connect to it.
    pub direct_listen: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            stream_replicas: 1,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            creds_file: None,
            nkey_file: None,
            user: None,
            password_file: None,
            inbox_prefix: "_INBOX".into(),
            direct_data: true,
            direct_listen: None,
        }
    }
}

/// How the pipeline cuts, compresses and batches data. Defaults were chosen by measurement (README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Size of the chunks files are cut into (a multiple of 8 KiB, at most 4 MiB).
    pub chunk_size: usize,
    /// zstd level for data chunks (0 = store uncompressed).
    pub compress_level: i32,
    /// zstd level for WAL.
    pub wal_compress_level: i32,
    /// Files the collector reads at once.
    pub read_workers: usize,
    /// Concurrent sealing tasks per sealer process.
    pub sealer_workers: usize,
    /// Concurrent pack writers per uploader process.
    pub uploader_workers: usize,
    /// An uploader closes a pack once it holds this many sealed bytes.
    pub pack_size: usize,
    /// Plain bytes a collector may have in the pipeline without a stored confirmation.
    pub in_flight_bytes: usize,
    /// A backup or WAL push fails when no progress is confirmed for this many seconds.
    pub stall_timeout_secs: u64,
    /// How long a backup waits, after `pg_backup_stop`, for the last WAL segment it needs to be archived
    /// (pgBackRest's `archive-timeout`): a failing `archive_command` fails the backup after this long.
    pub archive_timeout_secs: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            chunk_size: 1024 * 1024,
            compress_level: 1,
            wal_compress_level: 3,
            read_workers: 2,
            sealer_workers: 2,
            uploader_workers: 2,
            pack_size: 64 * 1024 * 1024,
            in_flight_bytes: 64 * 1024 * 1024,
            stall_timeout_secs: 120,
            archive_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StanzaConfig {
    /// The cluster's data directory.
    pub pg_data: PathBuf,
    /// libpq connection string of a superuser (or a role allowed pg_backup_start/stop) on that cluster.
    pub pg_conn: String,
    /// Recovery point objective: a backup is expected at least this often. With none for
    /// `alerts.backup_late_factor` times as long, the stanza is critical.
    #[serde(default = "default_rpo_secs")]
    pub rpo_secs: u64,
}

fn default_rpo_secs() -> u64 {
    86_400
}
