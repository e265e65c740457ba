//! Why a config was refused. Each variant is one line naming the key (its path in the file, as `nats.tls_ca_file`
//! or `repository 'offsite' retention_full`), since bad input must give one clear error line, and the texts are
//! what operators and the integration tests read: change a message and a test that matches it must change too.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {reason}")]
    Invalid { path: String, reason: InvalidConfig },
    #[error("unknown stanza '{name}' (the config defines: {known})")]
    UnknownStanza { name: String, known: String },
}

/// What is wrong with a config file; [`ConfigError::Invalid`] adds the file's path.
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    #[error("no such file")]
    NoSuchFile,
    /// What the `config` crate or serde reported: a TOML syntax error, an unknown key, a wrong type.
    #[error("{0}")]
    Unparsable(String),
    #[error("bus = '{0}' must be \"local\" or a nats:// URL")]
    Bus(String),
    #[error("no [[repo]] is configured")]
    NoRepository,
    #[error("repository name '{0}' is used twice")]
    RepositoryNameTwice(String),
    #[error("repository '{name}' ({kind}) needs a {key}")]
    RepositoryNeeds { name: String, kind: &'static str, key: &'static str },
    /// Two keys that only make sense together (a key id and its secret, a certificate and its key).
    #[error("{section}: give both {first} and {second}, or neither")]
    BothOrNeither { section: String, first: &'static str, second: &'static str },
    #[error("encryption.type = \"{kind}\" needs {needs}")]
    EncryptionNeeds { kind: &'static str, needs: &'static str },
    #[error("replicator names repository '{0}', which no [[repo]] defines")]
    UnknownReplicatorRepository(String),
    #[error("restore_test.query '{query}' names stanza '{stanza}', which the config does not define")]
    UnknownQueryStanza { query: String, stanza: String },
    #[error("restore_test.query '{query}': min = {min} is above max = {max}")]
    QueryMinAboveMax { query: String, min: f64, max: f64 },
    #[error("alerts.repo_full_warning_percent must not exceed alerts.repo_full_critical_percent")]
    RepoFullWarningAboveCritical,
    #[error("alerts webhook '{0}' must be an http:// or https:// URL")]
    WebhookNotHttp(String),
    #[error("{key} = '{}': its first line must be an http:// or https:// URL", path.display())]
    WebhookFileNotHttp { key: String, path: PathBuf },
    #[error("stanza name '{0}' may only hold letters, digits, '-' and '_'")]
    StanzaName(String),
    #[error("pipeline.chunk_size = {0} must be a multiple of 8192 up to 4 MiB")]
    ChunkSize(usize),
    #[error("pipeline.in_flight_bytes must be at least pipeline.chunk_size")]
    InFlightBelowChunkSize,
    /// A number outside its sane range (see `validate::in_range`).
    #[error("{key} = {value} is out of range: it must be from {lo} to {hi}")]
    OutOfRange { key: String, value: String, lo: String, hi: String },
    #[error("wal_stream.slot = '{0}' must be 1 to 63 of a-z, 0-9 and _ (a replication slot name)")]
    SlotName(String),
    #[error("archive.spool_path = '{}' must be an absolute path", .0.display())]
    SpoolPathRelative(PathBuf),
    #[error("nats: give at most one of creds_file, nkey_file and user (with password_file)")]
    NatsUserTwice,
    #[error("nats.direct_listen = '{0}' must be an address and port, like 10.0.0.5:7422 or 0.0.0.0:0")]
    DirectListen(String),
    #[error("nats.inbox_prefix = '{0}' must be a subject: tokens of letters, digits, '_', '-' and '$' joined by '.'")]
    InboxPrefix(String),
    /// A file a key names (a certificate, a secret).
    #[error("{key} = '{}': no such file", path.display())]
    FileMissing { key: String, path: PathBuf },
    #[error("{key} = '{}': not a file", path.display())]
    NotAFile { key: String, path: PathBuf },
    #[error("{key} = '{}': {source}", path.display())]
    FileUnusable { key: String, path: PathBuf, source: std::io::Error },
    #[error("{key} = '{}': cannot open: {source}", path.display())]
    FileCannotOpen { key: String, path: PathBuf, source: std::io::Error },
    #[error("{key} = '{}' is open to group or others (mode {mode:04o}); allow only its owner (chmod 600)", path.display())]
    SecretOpenToOthers { key: String, path: PathBuf, mode: u32 },
    #[error("{key} = '{}': its first line is empty", path.display())]
    SecretFileEmpty { key: String, path: PathBuf },
    /// A secret given inline and from a file: which one was meant is a guess the config does not make.
    #[error("{section}: give {key} or {key}_file, not both")]
    SecretTwice { section: String, key: &'static str },
}
