//! Strata's configuration: one TOML file shared by the CLI and every service, each key overridable from the
//! environment.
//!
//! The file is read with the `config` crate into [`Config`], whose structs all deny unknown fields: a
//! misspelt key is one clear error naming it, never a silently ignored setting. Environment variables
//! `STRATA_<KEY>` override keys, with `__` between levels (`STRATA_BUS`, `STRATA_PIPELINE__CHUNK_SIZE`,
//! `STRATA_STANZA__MAIN__PG_CONN`). Only variables whose first level is a top-level key of the file are read,
//! so unrelated `STRATA_*` variables (a test harness's, say) do not break parsing.
//!
//! [`Config::load`] also validates what serde cannot: at least one repository, unique repository names,
//! stanza names usable in object paths and NATS subjects.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("unknown stanza '{name}' (the config defines: {known})")]
    UnknownStanza { name: String, known: String },
}

/// Where the stages exchange work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusConfig {
    /// Every stage runs inside the process that needs it (single-host mode).
    Local,
    /// A NATS server with JetStream, e.g. `nats://127.0.0.1:4222`.
    Nats(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `local` or a `nats://` URL.
    #[serde(default = "default_bus")]
    bus: String,
    /// How a `nats://` bus is reached and how its streams are laid out; ignored with `bus = "local"`.
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// How `archive-push` archives: one segment per call, or through a long-running shipper.
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// WAL streaming over the replication protocol (`strata wal-stream`), for an RPO of about a second.
    #[serde(default)]
    pub wal_stream: WalStreamConfig,
    #[serde(default)]
    pub stanza: BTreeMap<String, StanzaConfig>,
    #[serde(default)]
    pub repo: Vec<RepoConfig>,
    /// How chunks, manifests and WAL are encrypted; one key set for every repository, since the replicator
    /// copies packs byte for byte.
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// What the replicator service copies, and where.
    #[serde(default)]
    pub replicator: ReplicatorConfig,
    /// What the verifier service checks, and how often.
    #[serde(default)]
    pub verifier: VerifierConfig,
    /// Restore tests: where they run, how long they may take, and the queries that decide pass or fail.
    #[serde(default)]
    pub restore_test: RestoreTestConfig,
    /// Alert thresholds and the webhooks alerts are delivered to.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The audit log: one JSON line per backup, restore, expire, verify, restore test and config change.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Prometheus endpoints of the pipeline services (the replicator's is `replicator.metrics_listen`).
    #[serde(default)]
    pub metrics: MetricsConfig,
}

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

/// Alert rules' thresholds, and where alerts go. Every alert is logged; each tier may also have a webhook
/// (a JSON POST whose body Slack accepts).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub webhook_critical: Option<String>,
    pub webhook_warning: Option<String>,
    pub webhook_info: Option<String>,
    /// A firing alert is sent again after this many seconds while it lasts.
    pub resend_secs: u64,
    /// Critical when the newest backup is older than the stanza's `rpo_secs` times this.
    pub backup_late_factor: f64,
    /// Repository use (percent of its filesystem) for a warning, and for a critical alert.
    pub repo_full_warning_percent: f64,
    pub repo_full_critical_percent: f64,
    /// Warning when the newest archived segment is this many seconds behind the cluster's WAL.
    pub archive_lag_warning_secs: u64,
    /// Warning when the average duration of a type of backup over the last 7 days exceeds the week
    /// before's by this percent.
    pub backup_duration_increase_percent: f64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_critical: None,
            webhook_warning: None,
            webhook_info: None,
            resend_secs: 3600,
            backup_late_factor: 1.5,
            repo_full_warning_percent: 70.0,
            repo_full_critical_percent: 90.0,
            archive_lag_warning_secs: 3600,
            backup_duration_increase_percent: 30.0,
        }
    }
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

/// Where the data key comes from. The repository holds only the wrapped key (`keys/strata.keys`).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionType {
    /// Chunks are compressed, not encrypted.
    #[default]
    None,
    /// AWS KMS (or a KMS-compatible endpoint) wraps the data key: GenerateDataKey, Decrypt.
    Kms,
    /// A passphrase (from a file or an environment variable) derives the key that wraps the data key.
    Passphrase,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    #[serde(rename = "type", default)]
    pub kind: EncryptionType,
    /// KMS key id, ARN or alias that wraps new data keys (kms).
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// KMS region (kms); default us-east-1.
    #[serde(default)]
    pub kms_region: Option<String>,
    /// A KMS-compatible endpoint, e.g. "http://127.0.0.1:4566" (kms); unset: AWS.
    #[serde(default)]
    pub kms_endpoint: Option<String>,
    /// Static credentials for KMS; unset: the AWS chain.
    #[serde(default)]
    pub kms_access_key_id: Option<String>,
    #[serde(default)]
    pub kms_secret_access_key: Option<String>,
    /// File holding the passphrase (passphrase); its first line is used.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// Environment variable holding the passphrase (passphrase), when no file is given.
    #[serde(default)]
    pub passphrase_env: Option<String>,
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

impl NatsConfig {
    /// The checks serde cannot make: files that exist, secrets only their owner may read, one way to
    /// authenticate. Each failure is one line naming the key.
    fn validate(&self) -> Result<(), String> {
        let files = [("tls_ca_file", &self.tls_ca_file), ("tls_cert_file", &self.tls_cert_file)];
        let secrets = [
            ("tls_key_file", &self.tls_key_file),
            ("creds_file", &self.creds_file),
            ("nkey_file", &self.nkey_file),
            ("password_file", &self.password_file),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                readable_file(key, path)?;
            }
        }
        for (key, path) in secrets {
            if let Some(path) = path {
                let mode = readable_file(key, path)?;
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "nats.{key} = '{}' is open to group or others (mode {mode:04o}); allow only its owner (chmod 600)",
                        path.display()
                    ));
                }
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("nats: give both tls_cert_file and tls_key_file, or neither".into());
        }
        let ways = [self.creds_file.is_some(), self.nkey_file.is_some(), self.user.is_some()];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err("nats: give at most one of creds_file, nkey_file and user (with password_file)".into());
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err("nats: give both user and password_file, or neither".into());
        }
        if let Some(listen) = &self.direct_listen {
            listen.parse::<std::net::SocketAddr>().map_err(|_| {
                format!("nats.direct_listen = '{listen}' must be an address and port, like 10.0.0.5:7422 or 0.0.0.0:0")
            })?;
        }
        let p = &self.inbox_prefix;
        if p.is_empty()
            || p.starts_with('.')
            || p.ends_with('.')
            || p.contains("..")
            || !p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        {
            return Err(format!(
                "nats.inbox_prefix = '{p}' must be a subject: tokens of letters, digits, '_', '-' and '$' joined by '.'"
            ));
        }
        Ok(())
    }
}

/// Checks `path` (the value of `nats.<key>`) is a file this process can open; returns its mode bits.
fn readable_file(key: &str, path: &Path) -> Result<u32, String> {
    use std::os::unix::fs::PermissionsExt;
    let named = || format!("nats.{key} = '{}'", path.display());
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{}: no such file", named()),
        _ => format!("{}: {e}", named()),
    })?;
    if !meta.is_file() {
        return Err(format!("{}: not a file", named()));
    }
    std::fs::File::open(path).map_err(|e| format!("{}: cannot open: {e}", named()))?;
    Ok(meta.permissions().mode() & 0o7777)
}

fn default_bus() -> String {
    "local".into()
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

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RepoType {
    Posix,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: RepoType,
    /// Root directory (posix).
    #[serde(default)]
    pub path: PathBuf,
    /// How many full backups `expire` keeps (with the diff and incr backups that depend on them).
    #[serde(default)]
    pub retention_full: Option<u32>,
    /// Days of full backups `expire` keeps: every full started within them, and the newest one before,
    /// so that the whole period stays restorable. With `retention_full` too, a full either keeps stays.
    #[serde(default)]
    pub retention_full_days: Option<u32>,
    /// Compliance floor: `expire` removes no backup younger than this many days (nor what it depends
    /// on), whatever the other settings say.
    #[serde(default)]
    pub retention_min_age_days: Option<u32>,
    /// How many differential backups `expire` keeps (newest first), with the incrementals that depend on
    /// them; unset: every diff of a kept full.
    #[serde(default)]
    pub retention_diff: Option<u32>,
    /// Days of WAL `expire` keeps beyond what the kept backups need.
    #[serde(default)]
    pub retention_archive_extra_days: Option<u32>,
    /// Run `expire` on this repository after every successful backup.
    #[serde(default)]
    pub expire_auto: bool,
    /// What the repository is for ("hot", "warm", "cold"): shown by `info`, no effect on behaviour.
    #[serde(default)]
    pub tier: Option<String>,
    /// Whether `archive-push` fails when this repository does not have the segment (default true). A
    /// repository that is not required gets the segment from the replicator later.
    #[serde(default = "default_true")]
    pub archive_required: bool,
    /// Bucket (s3).
    #[serde(default)]
    pub bucket: String,
    /// Key prefix of the repository in the bucket (s3).
    #[serde(default)]
    pub prefix: String,
    /// Region (s3); default us-east-1.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible server, e.g. "http://127.0.0.1:9000" (s3); unset: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (s3); default: on with a custom endpoint, off for AWS.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Static credentials (s3); unset: the usual AWS chain (environment, profile, instance role).
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Storage class of new objects (s3), e.g. "STANDARD_IA".
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Send the SDK's CRC checksum headers (s3); default: on for AWS, off for a custom endpoint, since
    /// some S3-compatible servers reject them.
    #[serde(default)]
    pub checksums: Option<bool>,
}

/// The highest zstd level a config may ask for: zstd's slowest regular level (20 to 22 are its "ultra"
/// levels, which need hundreds of MiB per compressor and make a backup take minutes instead of seconds).
pub const MAX_COMPRESS_LEVEL: i32 = 19;

/// The most workers of one kind a config may ask for per process: far above what any core count needs,
/// low enough that a typo (a byte count in a worker key) is caught.
pub const MAX_WORKERS: usize = 256;

/// `value` within `lo..=hi`, or the one-line error naming `key` and the allowed range (NaN is refused).
fn in_range<T: PartialOrd + std::fmt::Display>(key: &str, value: T, lo: T, hi: T) -> Result<(), String> {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(format!("{key} = {value} is out of range: it must be from {lo} to {hi}"))
    }
}

const TOP_LEVEL_KEYS: [&str; 14] =
    ["bus", "nats", "pipeline", "archive", "wal_stream", "stanza", "repo", "encryption", "replicator", "verifier", "restore_test", "alerts", "audit", "metrics"];

fn default_true() -> bool {
    true
}

impl Config {
    /// Reads and validates `path`, with `STRATA_*` overrides taken from `env`.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { path: path.display().to_string(), reason };
        if !path.is_file() {
            return Err(invalid("no such file".into()));
        }
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix("STRATA_")
                    .map(|rest| TOP_LEVEL_KEYS.iter().any(|t| rest.to_ascii_lowercase().split("__").next() == Some(t)))
                    .unwrap_or(false)
            })
            .collect();
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("STRATA")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let cfg: Config = raw.try_deserialize().map_err(|e| invalid(e.to_string()))?;
        cfg.validate().map_err(invalid)?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        self.bus_config()?;
        self.nats.validate()?;
        if self.repo.is_empty() {
            return Err("no [[repo]] is configured".into());
        }
        for (i, r) in self.repo.iter().enumerate() {
            if self.repo[..i].iter().any(|o| o.name == r.name) {
                return Err(format!("repository name '{}' is used twice", r.name));
            }
            match r.kind {
                RepoType::Posix if r.path.as_os_str().is_empty() => {
                    return Err(format!("repository '{}' (posix) needs a path", r.name));
                }
                RepoType::S3 if r.bucket.is_empty() => return Err(format!("repository '{}' (s3) needs a bucket", r.name)),
                RepoType::S3 if r.access_key_id.is_some() != r.secret_access_key.is_some() => {
                    return Err(format!("repository '{}': give both access_key_id and secret_access_key, or neither", r.name));
                }
                _ => {}
            }
        }
        let e = &self.encryption;
        match e.kind {
            EncryptionType::Kms if e.kms_key_id.is_none() => return Err("encryption.type = \"kms\" needs encryption.kms_key_id".into()),
            EncryptionType::Passphrase if e.passphrase_file.is_none() && e.passphrase_env.is_none() => {
                return Err("encryption.type = \"passphrase\" needs encryption.passphrase_file or encryption.passphrase_env".into())
            }
            _ => {}
        }
        if e.kms_access_key_id.is_some() != e.kms_secret_access_key.is_some() {
            return Err("encryption: give both kms_access_key_id and kms_secret_access_key, or neither".into());
        }
        let known = |n: &str| self.repo.iter().any(|r| r.name == n);
        for n in self.replicator.source.iter().chain(&self.replicator.targets) {
            if !known(n) {
                return Err(format!("replicator names repository '{n}', which no [[repo]] defines"));
            }
        }
        for q in &self.restore_test.query {
            if let Some(st) = &q.stanza {
                if !self.stanza.contains_key(st) {
                    return Err(format!("restore_test.query '{}' names stanza '{st}', which the config does not define", q.name));
                }
            }
        }
        let a = &self.alerts;
        if a.repo_full_warning_percent > a.repo_full_critical_percent {
            return Err("alerts.repo_full_warning_percent must not exceed alerts.repo_full_critical_percent".into());
        }
        for url in [&a.webhook_critical, &a.webhook_warning, &a.webhook_info].into_iter().flatten() {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(format!("alerts webhook '{url}' must be an http:// or https:// URL"));
            }
        }
        for name in self.stanza.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("stanza name '{name}' may only hold letters, digits, '-' and '_'"));
            }
        }
        let p = &self.pipeline;
        if p.chunk_size == 0 || !p.chunk_size.is_multiple_of(8192) || p.chunk_size > 4 * 1024 * 1024 {
            return Err(format!("pipeline.chunk_size = {} must be a multiple of 8192 up to 4 MiB", p.chunk_size));
        }
        if p.in_flight_bytes < p.chunk_size {
            return Err("pipeline.in_flight_bytes must be at least pipeline.chunk_size".into());
        }
        self.check_ranges()
    }

    /// Every numeric key against its sane range (see [`in_range`]): a value outside is refused at load
    /// rather than discovered as a backup that always fails (`stall_timeout_secs = 0`) or takes minutes
    /// (`compress_level = 999`, which zstd quietly caps at its slowest level).
    fn check_ranges(&self) -> Result<(), String> {
        const MIB: usize = 1024 * 1024;
        const GIB: usize = 1024 * MIB;
        const DAY: u64 = 86_400;
        const YEAR: u64 = 365 * DAY;
        let p = &self.pipeline;
        in_range("pipeline.compress_level", p.compress_level, 0, MAX_COMPRESS_LEVEL)?;
        in_range("pipeline.wal_compress_level", p.wal_compress_level, 0, MAX_COMPRESS_LEVEL)?;
        in_range("pipeline.read_workers", p.read_workers, 1, MAX_WORKERS)?;
        in_range("pipeline.sealer_workers", p.sealer_workers, 1, MAX_WORKERS)?;
        in_range("pipeline.uploader_workers", p.uploader_workers, 1, MAX_WORKERS)?;
        // A pack is assembled in memory by each uploader worker.
        in_range("pipeline.pack_size", p.pack_size, MIB, GIB)?;
        in_range("pipeline.in_flight_bytes", p.in_flight_bytes, MIB, 16 * GIB)?;
        in_range("pipeline.stall_timeout_secs", p.stall_timeout_secs, 1, DAY)?;
        in_range("pipeline.archive_timeout_secs", p.archive_timeout_secs, 1, DAY)?;
        in_range("archive.in_flight_bytes", self.archive.in_flight_bytes, MIB, 16 * GIB)?;
        in_range("archive.idle_secs", self.archive.idle_secs, 1, DAY)?;
        if let Some(max) = self.archive.push_queue_max {
            // Less than one segment would drop every segment.
            in_range("archive.push_queue_max", max, 16 * MIB as u64, 1 << 50)?;
        }
        let w = &self.wal_stream;
        in_range("wal_stream.flush_ms", w.flush_ms, 50, 3_600_000)?;
        in_range("wal_stream.status_interval_secs", w.status_interval_secs, 1, 3600)?;
        in_range("wal_stream.slot_retained_max", w.slot_retained_max, 16 * MIB as u64, 1 << 50)?;
        if let Some(slot) = &w.slot {
            if slot.is_empty() || slot.len() > 63 || !slot.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                return Err(format!("wal_stream.slot = '{slot}' must be 1 to 63 of a-z, 0-9 and _ (a replication slot name)"));
            }
        }
        if let Some(spool) = &self.archive.spool_path {
            if !spool.is_absolute() {
                return Err(format!("archive.spool_path = '{}' must be an absolute path", spool.display()));
            }
        }
        for (name, s) in &self.stanza {
            in_range(&format!("stanza.{name}.rpo_secs"), s.rpo_secs, 60, YEAR)?;
        }
        for r in &self.repo {
            let key = |k: &str| format!("repository '{}' {k}", r.name);
            // 0 full backups kept would let expire delete every backup.
            if let Some(n) = r.retention_full {
                in_range(&key("retention_full"), n, 1, 10_000)?;
            }
            if let Some(n) = r.retention_diff {
                in_range(&key("retention_diff"), n, 1, 10_000)?;
            }
            if let Some(n) = r.retention_full_days {
                in_range(&key("retention_full_days"), n, 1, 100 * 365)?;
            }
            if let Some(n) = r.retention_min_age_days {
                in_range(&key("retention_min_age_days"), n, 0, 100 * 365)?;
            }
            if let Some(n) = r.retention_archive_extra_days {
                in_range(&key("retention_archive_extra_days"), n, 0, 100 * 365)?;
            }
        }
        in_range("replicator.interval_secs", self.replicator.interval_secs, 1, DAY)?;
        in_range("replicator.workers", self.replicator.workers, 1, MAX_WORKERS)?;
        in_range("nats.stream_replicas", self.nats.stream_replicas, 1, 5)?;
        in_range("verifier.interval_secs", self.verifier.interval_secs, 1, DAY)?;
        in_range("verifier.reverify_secs", self.verifier.reverify_secs, 0, YEAR)?;
        in_range("restore_test.interval_secs", self.restore_test.interval_secs, 0, YEAR)?;
        in_range("restore_test.timeout_secs", self.restore_test.timeout_secs, 1, 7 * DAY)?;
        for q in &self.restore_test.query {
            if let (Some(min), Some(max)) = (q.min, q.max) {
                if min > max {
                    return Err(format!("restore_test.query '{}': min = {min} is above max = {max}", q.name));
                }
            }
            if let Some(age) = q.max_age_secs {
                in_range(&format!("restore_test.query '{}' max_age_secs", q.name), age, 1, 100 * YEAR)?;
            }
        }
        let a = &self.alerts;
        in_range("alerts.resend_secs", a.resend_secs, 1, 30 * DAY)?;
        in_range("alerts.backup_late_factor", a.backup_late_factor, 1.0, 1000.0)?;
        in_range("alerts.repo_full_warning_percent", a.repo_full_warning_percent, 0.0, 100.0)?;
        in_range("alerts.repo_full_critical_percent", a.repo_full_critical_percent, 0.0, 100.0)?;
        in_range("alerts.archive_lag_warning_secs", a.archive_lag_warning_secs, 1, YEAR)?;
        in_range("alerts.backup_duration_increase_percent", a.backup_duration_increase_percent, 0.0, 10_000.0)?;
        Ok(())
    }

    pub fn bus_config(&self) -> Result<BusConfig, String> {
        if self.bus == "local" {
            Ok(BusConfig::Local)
        } else if self.bus.starts_with("nats://") || self.bus.starts_with("tls://") {
            Ok(BusConfig::Nats(self.bus.clone()))
        } else {
            Err(format!("bus = '{}' must be \"local\" or a nats:// URL", self.bus))
        }
    }

    pub fn bus(&self) -> BusConfig {
        self.bus_config().expect("validated in load")
    }

    pub fn stanza(&self, name: &str) -> Result<&StanzaConfig, ConfigError> {
        self.stanza.get(name).ok_or_else(|| ConfigError::UnknownStanza {
            name: name.to_string(),
            known: if self.stanza.is_empty() {
                "none".into()
            } else {
                self.stanza.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }

    /// The repository backups are written to: the first one listed.
    pub fn primary_repo(&self) -> &RepoConfig {
        &self.repo[0]
    }

    /// A repository by name.
    pub fn repo_named(&self, name: &str) -> Option<&RepoConfig> {
        self.repo.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    const GOOD: &str = r#"
        bus = "local"
        [stanza.main]
        pg_data = "/var/lib/postgresql/15/main"
        pg_conn = "host=/run/postgresql"
        [[repo]]
        name = "local"
        type = "posix"
        path = "/var/lib/strata"
    "#;

    #[test]
    fn loads_and_env_overrides() {
        let f = write(GOOD);
        let env = vec![
            ("STRATA_BUS".to_string(), "nats://127.0.0.1:4222".to_string()),
            ("STRATA_PIPELINE__CHUNK_SIZE".to_string(), "262144".to_string()),
            ("STRATA_BIN_DIR".to_string(), "/elsewhere".to_string()),
        ];
        let c = Config::load(f.path(), env).unwrap();
        assert_eq!(c.bus(), BusConfig::Nats("nats://127.0.0.1:4222".into()));
        assert_eq!(c.pipeline.chunk_size, 262144);
        assert_eq!(c.stanza("main").unwrap().pg_conn, "host=/run/postgresql");
        let err = c.stanza("other").unwrap_err().to_string();
        assert_eq!(err, "unknown stanza 'other' (the config defines: main)");
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/strata.example.toml");
        let c = Config::load(&example, vec![]).unwrap();
        assert_eq!(c.primary_repo().retention_full, Some(2));
        let defaults = PipelineConfig::default();
        assert_eq!(c.pipeline.chunk_size, defaults.chunk_size);
        assert_eq!(c.pipeline.in_flight_bytes, defaults.in_flight_bytes);
    }

    #[test]
    fn typos_and_bad_values_name_the_key() {
        let f = write(&GOOD.replace("pg_conn", "pg_con"));
        let err = Config::load(f.path(), vec![]).unwrap_err().to_string();
        assert!(err.contains("pg_con"), "{err}");
        let f = write(&GOOD.replace("posix", "ftp"));
        assert!(Config::load(f.path(), vec![]).is_err());
        let f = write(&GOOD.replace("\"local\"\n", "\"amqp://x\"\n"));
        assert!(Config::load(f.path(), vec![]).unwrap_err().to_string().contains("bus"));
        let f = write("bus = \"local\"\n");
        assert!(Config::load(f.path(), vec![]).unwrap_err().to_string().contains("no [[repo]]"));
        assert!(Config::load(Path::new("/nonexistent.toml"), vec![]).is_err());
    }

    #[test]
    fn every_numeric_key_is_bounded_and_the_error_names_key_and_range() {
        let cases: &[(&str, &str, &str)] = &[
            ("[pipeline]\ncompress_level = 999", "pipeline.compress_level = 999", "from 0 to 19"),
            ("[pipeline]\ncompress_level = -5", "pipeline.compress_level = -5", "from 0 to 19"),
            ("[pipeline]\nwal_compress_level = 20", "pipeline.wal_compress_level = 20", "from 0 to 19"),
            ("[pipeline]\nstall_timeout_secs = 0", "pipeline.stall_timeout_secs = 0", "from 1 to 86400"),
            ("[pipeline]\narchive_timeout_secs = 0", "pipeline.archive_timeout_secs = 0", "from 1 to 86400"),
            ("[pipeline]\nread_workers = 0", "pipeline.read_workers = 0", "from 1 to 256"),
            ("[pipeline]\nsealer_workers = 100000", "pipeline.sealer_workers = 100000", "from 1 to 256"),
            ("[pipeline]\nuploader_workers = 0", "pipeline.uploader_workers = 0", "from 1 to 256"),
            ("[pipeline]\npack_size = 4096", "pipeline.pack_size = 4096", "from 1048576 to 1073741824"),
            ("[pipeline]\nin_flight_bytes = 99999999999999", "pipeline.in_flight_bytes = 99999999999999", "to 17179869184"),
            ("[replicator]\nworkers = 0", "replicator.workers = 0", "from 1 to 256"),
            ("[replicator]\ninterval_secs = 0", "replicator.interval_secs = 0", "from 1 to 86400"),
            ("[verifier]\ninterval_secs = 0", "verifier.interval_secs = 0", "from 1 to 86400"),
            ("[restore_test]\ntimeout_secs = 0", "restore_test.timeout_secs = 0", "from 1 to 604800"),
            ("[alerts]\nresend_secs = 0", "alerts.resend_secs = 0", "from 1 to 2592000"),
            ("[alerts]\nbackup_late_factor = 0.5", "alerts.backup_late_factor = 0.5", "from 1 to 1000"),
            ("[alerts]\nrepo_full_critical_percent = 150", "alerts.repo_full_critical_percent = 150", "from 0 to 100"),
            ("[alerts]\narchive_lag_warning_secs = 0", "alerts.archive_lag_warning_secs = 0", "from 1 to 31536000"),
            ("[archive]\nidle_secs = 0", "archive.idle_secs = 0", "from 1 to 86400"),
            ("[wal_stream]\nflush_ms = 0", "wal_stream.flush_ms = 0", "from 50 to 3600000"),
            ("[wal_stream]\nstatus_interval_secs = 0", "wal_stream.status_interval_secs = 0", "from 1 to 3600"),
            ("[wal_stream]\nslot_retained_max = 1", "wal_stream.slot_retained_max = 1", "from 16777216"),
            ("[wal_stream]\nslot = \"../x\"", "wal_stream.slot = '../x'", "a-z, 0-9 and _"),
            ("[wal_stream]\nslot = \"Strata\"", "wal_stream.slot = 'Strata'", "a-z, 0-9 and _"),
            ("[archive]\nin_flight_bytes = 1000", "archive.in_flight_bytes = 1000", "from 1048576"),
            ("[archive]\npush_queue_max = 1000", "archive.push_queue_max = 1000", "from 16777216"),
            ("[archive]\nspool_path = \"spool\"", "archive.spool_path = 'spool'", "absolute path"),
        ];
        for (extra, key, range) in cases {
            let f = write(&format!("{GOOD}\n{extra}\n"));
            let err = Config::load(f.path(), vec![]).expect_err(extra).to_string();
            assert!(err.contains(key) && err.contains(range) && !err.contains('\n'), "{extra}: {err}");
        }
        let f = write(&GOOD.replace("host=/run/postgresql\"", "host=/run/postgresql\"\nrpo_secs = 0"));
        let err = Config::load(f.path(), vec![]).unwrap_err().to_string();
        assert!(err.contains("stanza.main.rpo_secs = 0") && err.contains("from 60"), "{err}");
        let f = write(&format!("{GOOD}retention_full = 0\n"));
        let err = Config::load(f.path(), vec![]).unwrap_err().to_string();
        assert!(err.contains("repository 'local' retention_full = 0") && err.contains("from 1"), "{err}");
        // The environment is checked the same way.
        let f = write(GOOD);
        let env = vec![("STRATA_PIPELINE__STALL_TIMEOUT_SECS".to_string(), "0".to_string())];
        assert!(Config::load(f.path(), env).unwrap_err().to_string().contains("pipeline.stall_timeout_secs = 0"));
        // The edges are accepted.
        let edges = "[pipeline]\ncompress_level = 19\nwal_compress_level = 0\nstall_timeout_secs = 1\nread_workers = 256\npack_size = 1048576\n";
        let f = write(&format!("{GOOD}\n{edges}"));
        let c = Config::load(f.path(), vec![]).unwrap();
        assert_eq!((c.pipeline.compress_level, c.pipeline.archive_timeout_secs), (19, 60));
    }

    /// A file in `dir` holding `text`, with mode `mode`.
    fn file_with_mode(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn load_with_nats(nats: &str) -> Result<Config, String> {
        let f = write(&format!("{GOOD}\n[nats]\n{nats}\n"));
        Config::load(f.path(), vec![]).map_err(|e| e.to_string())
    }

    fn one_line_naming(err: &str, key: &str, what: &str) {
        assert!(!err.contains('\n'), "not one line: {err}");
        assert!(err.contains(key) && err.contains(what), "{key}, {what}: {err}");
    }

    #[test]
    fn a_secured_bus_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = file_with_mode(dir.path(), "ca.pem", "pem", 0o644);
        let cert = file_with_mode(dir.path(), "c.pem", "pem", 0o644);
        let key = file_with_mode(dir.path(), "c.key", "pem", 0o600);
        let seed = file_with_mode(dir.path(), "sealer.nk", "SU...", 0o400);
        let c = load_with_nats(&format!(
            "tls_ca_file = {ca:?}\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\nnkey_file = {seed:?}\ninbox_prefix = \"_INBOX_sealer\""
        ))
        .unwrap();
        assert_eq!(c.nats.nkey_file.as_deref(), Some(seed.as_path()));
        assert_eq!(c.nats.inbox_prefix, "_INBOX_sealer");
        let password = file_with_mode(dir.path(), "pw", "secret", 0o600);
        let c = load_with_nats(&format!("user = \"uploader\"\npassword_file = {password:?}")).unwrap();
        assert_eq!(c.nats.user.as_deref(), Some("uploader"));
        // The environment can give each service on a host its own user.
        let f = write(GOOD);
        let env = vec![("STRATA_NATS__NKEY_FILE".to_string(), seed.display().to_string())];
        assert_eq!(Config::load(f.path(), env).unwrap().nats.nkey_file.as_deref(), Some(seed.as_path()));
        assert_eq!(Config::load(f.path(), vec![]).unwrap().nats.inbox_prefix, "_INBOX");
    }

    #[test]
    fn a_secret_file_open_to_others_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        for (key, mode) in [("nkey_file", 0o644), ("creds_file", 0o640), ("password_file", 0o604), ("tls_key_file", 0o660)] {
            let path = file_with_mode(dir.path(), key, "secret", mode);
            let mut extra = format!("{key} = {path:?}");
            match key {
                "password_file" => extra.push_str("\nuser = \"u\""),
                "tls_key_file" => {
                    let cert = file_with_mode(dir.path(), "cert.pem", "pem", 0o644);
                    extra.push_str(&format!("\ntls_cert_file = {cert:?}"));
                }
                _ => {}
            }
            let err = load_with_nats(&extra).expect_err(key);
            one_line_naming(&err, &format!("nats.{key}"), &format!("open to group or others (mode {mode:04o})"));
            assert!(err.contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn a_missing_tls_or_credentials_file_is_one_line() {
        let err = load_with_nats("tls_ca_file = \"/nonexistent/ca.pem\"").unwrap_err();
        one_line_naming(&err, "nats.tls_ca_file = '/nonexistent/ca.pem'", "no such file");
        let err = load_with_nats("nkey_file = \"/nonexistent/u.nk\"").unwrap_err();
        one_line_naming(&err, "nats.nkey_file = '/nonexistent/u.nk'", "no such file");
        let dir = tempfile::tempdir().unwrap();
        let err = load_with_nats(&format!("tls_ca_file = {:?}", dir.path())).unwrap_err();
        one_line_naming(&err, "nats.tls_ca_file", "not a file");
    }

    #[test]
    fn bus_credentials_must_be_complete_and_single() {
        let dir = tempfile::tempdir().unwrap();
        let cert = file_with_mode(dir.path(), "c.pem", "pem", 0o644);
        let seed = file_with_mode(dir.path(), "u.nk", "SU", 0o600);
        let creds = file_with_mode(dir.path(), "u.creds", "jwt", 0o600);
        let pw = file_with_mode(dir.path(), "pw", "pw", 0o600);
        let cases = [
            (format!("tls_cert_file = {cert:?}"), "give both tls_cert_file and tls_key_file"),
            (format!("nkey_file = {seed:?}\ncreds_file = {creds:?}"), "at most one of creds_file, nkey_file and user"),
            ("user = \"u\"".to_string(), "give both user and password_file"),
            (format!("password_file = {pw:?}"), "give both user and password_file"),
            ("inbox_prefix = \"_INBOX.>\"".to_string(), "nats.inbox_prefix = '_INBOX.>' must be a subject"),
            ("inbox_prefix = \"\"".to_string(), "nats.inbox_prefix"),
            ("direct_listen = \"10.0.0.5\"".to_string(), "nats.direct_listen = '10.0.0.5' must be an address and port"),
        ];
        for (extra, what) in cases {
            let err = load_with_nats(&extra).expect_err(&extra);
            one_line_naming(&err, "nats", what);
        }
    }
}
