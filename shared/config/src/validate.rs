//! From the file as written ([`RawConfig`]) to the config Strata runs with ([`Config`]): every check serde
//! cannot make, and the resolving of what the typed form leaves no room for (kinds, defaults that depend
//! on other keys, secrets in files).
//!
//! The first problem found is the error, one line naming the key ([`InvalidConfig`]): bad input gets one
//! clear line, not a list that scrolls the useful part away. The checks run in a fixed order (the bus, the
//! repositories, encryption, ... the ranges last), so the same file always gives the same line.

use crate::raw::{RawAlerts, RawConfig, RawEncryption, RawRepo, RawRepoType};
use crate::secrets::{inline_or_file, key_path, owner_only_file, readable_file};
use crate::sections::NatsConfig;
use crate::typed::*;
use crate::InvalidConfig;

/// The highest zstd level a config may ask for: zstd's slowest regular level (20 to 22 are its "ultra"
/// levels, which need hundreds of MiB per compressor and make a backup take minutes instead of seconds).
pub const MAX_COMPRESS_LEVEL: i32 = 19;

/// The most workers of one kind a config may ask for per process: far above what any core count needs,
/// low enough that a typo (a byte count in a worker key) is caught.
pub const MAX_WORKERS: usize = 256;

impl RawConfig {
    pub(crate) fn validate(self) -> Result<Config, InvalidConfig> {
        let bus = parse_bus(&self.bus)?;
        validate_nats(&self.nats)?;
        if self.repo.is_empty() {
            return Err(InvalidConfig::NoRepository);
        }
        let mut repo = Vec::with_capacity(self.repo.len());
        for (i, r) in self.repo.iter().enumerate() {
            if self.repo[..i].iter().any(|o| o.name == r.name) {
                return Err(InvalidConfig::RepositoryNameTwice(r.name.clone()));
            }
            repo.push(r.clone().validate()?);
        }
        let encryption = self.encryption.clone().validate()?;
        let known = |n: &str| self.repo.iter().any(|r| r.name == n);
        for n in self.replicator.source.iter().chain(&self.replicator.targets) {
            if !known(n) {
                return Err(InvalidConfig::UnknownReplicatorRepository(n.clone()));
            }
        }
        for q in &self.restore_test.query {
            if let Some(st) = &q.stanza {
                if !self.stanza.contains_key(st) {
                    return Err(InvalidConfig::UnknownQueryStanza { query: q.name.clone(), stanza: st.clone() });
                }
            }
        }
        let alerts = self.alerts.clone().validate()?;
        for name in self.stanza.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(InvalidConfig::StanzaName(name.clone()));
            }
        }
        let p = &self.pipeline;
        if p.chunk_size == 0 || !p.chunk_size.is_multiple_of(8192) || p.chunk_size > 4 * 1024 * 1024 {
            return Err(InvalidConfig::ChunkSize(p.chunk_size));
        }
        if p.in_flight_bytes < p.chunk_size {
            return Err(InvalidConfig::InFlightBelowChunkSize);
        }
        self.check_ranges()?;
        Ok(Config {
            bus,
            nats: self.nats,
            pipeline: self.pipeline,
            archive: self.archive,
            wal_stream: self.wal_stream,
            stanza: self.stanza,
            repo,
            encryption,
            replicator: self.replicator,
            verifier: self.verifier,
            restore_test: self.restore_test,
            alerts,
            audit: self.audit,
            metrics: self.metrics,
        })
    }

    /// Every numeric key against its sane range (see [`in_range`]): a value outside is refused at load
    /// rather than discovered as a backup that always fails (`stall_timeout_secs = 0`) or takes minutes
    /// (`compress_level = 999`, which zstd quietly caps at its slowest level).
    fn check_ranges(&self) -> Result<(), InvalidConfig> {

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
                return Err(InvalidConfig::SlotName(slot.clone()));
            }
        }
        if let Some(spool) = &self.archive.spool_path {
            if !spool.is_absolute() {
                return Err(InvalidConfig::SpoolPathRelative(spool.clone()));
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
                    return Err(InvalidConfig::QueryMinAboveMax { query: q.name.clone(), min, max });
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
}

/// `value` within `lo..=hi`, or the one-line error naming `key` and the allowed range (NaN is refused).
fn in_range<T: PartialOrd + std::fmt::Display>(key: &str, value: T, lo: T, hi: T) -> Result<(), InvalidConfig> {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(InvalidConfig::OutOfRange { key: key.into(), value: value.to_string(), lo: lo.to_string(), hi: hi.to_string() })
    }
}

fn parse_bus(bus: &str) -> Result<BusConfig, InvalidConfig> {
    if bus == "local" {
        Ok(BusConfig::Local)
    } else if bus.starts_with("nats://") || bus.starts_with("tls://") {
        Ok(BusConfig::Nats(bus.to_string()))
    } else {
        Err(InvalidConfig::Bus(bus.to_string()))
    }
}

/// The checks serde cannot make of `[nats]`: files that exist, secrets only their owner may read, one way
/// to authenticate. The secret files are read by the bus when it connects.
fn validate_nats(n: &NatsConfig) -> Result<(), InvalidConfig> {
    for (key, path) in [("nats.tls_ca_file", &n.tls_ca_file), ("nats.tls_cert_file", &n.tls_cert_file)] {
        if let Some(path) = path {
            readable_file(key, path)?;
        }
    }
    let secrets = [
        ("nats.tls_key_file", &n.tls_key_file),
        ("nats.creds_file", &n.creds_file),
        ("nats.nkey_file", &n.nkey_file),
        ("nats.password_file", &n.password_file),
    ];
    for (key, path) in secrets {
        if let Some(path) = path {
            owner_only_file(key, path)?;
        }
    }
    let both = |first, second| InvalidConfig::BothOrNeither { section: "nats".into(), first, second };
    if n.tls_cert_file.is_some() != n.tls_key_file.is_some() {
        return Err(both("tls_cert_file", "tls_key_file"));
    }
    let ways = [n.creds_file.is_some(), n.nkey_file.is_some(), n.user.is_some()];
    if ways.iter().filter(|w| **w).count() > 1 {
        return Err(InvalidConfig::NatsUserTwice);
    }
    if n.user.is_some() != n.password_file.is_some() {
        return Err(both("user", "password_file"));
    }
    if let Some(listen) = &n.direct_listen {
        listen.parse::<std::net::SocketAddr>().map_err(|_| InvalidConfig::DirectListen(listen.clone()))?;
    }
    let p = &n.inbox_prefix;
    if p.is_empty()
        || p.starts_with('.')
        || p.ends_with('.')
        || p.contains("..")
        || !p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
    {
        return Err(InvalidConfig::InboxPrefix(p.clone()));
    }
    Ok(())
}

/// An access key pair from its four keys (`<prefix>access_key_id[_file]`, `<prefix>secret_access_key[_file]`):
/// both parts or neither, each inline or from a file.
fn static_credentials(
    section: &str,
    [id_key, secret_key]: [&'static str; 2],
    id: (Option<String>, Option<std::path::PathBuf>),
    secret: (Option<String>, Option<std::path::PathBuf>),
) -> Result<Option<StaticCredentials>, InvalidConfig> {
    let access_key_id = inline_or_file(section, id_key, id.0, id.1)?;
    let secret_access_key = inline_or_file(section, secret_key, secret.0, secret.1)?;
    match (access_key_id, secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(StaticCredentials { access_key_id, secret_access_key })),
        (None, None) => Ok(None),
        _ => Err(InvalidConfig::BothOrNeither { section: section.to_string(), first: id_key, second: secret_key }),
    }
}

impl RawRepo {
    fn validate(self) -> Result<RepoConfig, InvalidConfig> {
        let section = format!("repository '{}'", self.name);
        let kind = match self.kind {
            RawRepoType::Posix if self.path.as_os_str().is_empty() => {
                return Err(InvalidConfig::RepositoryNeeds { name: self.name, kind: "posix", key: "path" });
            }
            RawRepoType::Posix => RepoKind::Posix { path: self.path },
            RawRepoType::S3 if self.bucket.is_empty() => {
                return Err(InvalidConfig::RepositoryNeeds { name: self.name, kind: "s3", key: "bucket" });
            }
            RawRepoType::S3 => {
                let custom_endpoint = self.endpoint.is_some();
                RepoKind::S3(S3Repo {
                    bucket: self.bucket,
                    prefix: self.prefix,
                    region: self.region.unwrap_or_else(|| "us-east-1".into()),
                    endpoint: self.endpoint,
                    path_style: self.path_style.unwrap_or(custom_endpoint),
                    credentials: static_credentials(
                        &section,
                        ["access_key_id", "secret_access_key"],
                        (self.access_key_id, self.access_key_id_file),
                        (self.secret_access_key, self.secret_access_key_file),
                    )?,
                    storage_class: self.storage_class,
                    checksums: self.checksums.unwrap_or(!custom_endpoint),
                })
            }
        };
        Ok(RepoConfig {
            name: self.name,
            kind,
            retention_full: self.retention_full,
            retention_full_days: self.retention_full_days,
            retention_min_age_days: self.retention_min_age_days,
            retention_diff: self.retention_diff,
            retention_archive_extra_days: self.retention_archive_extra_days,
            expire_auto: self.expire_auto,
            tier: self.tier,
            archive_required: self.archive_required,
        })
    }
}

impl RawEncryption {
    fn validate(self) -> Result<EncryptionConfig, InvalidConfig> {
        match self.kind {
            EncryptionType::Kms if self.kms_key_id.is_none() => {
                return Err(InvalidConfig::EncryptionNeeds { kind: "kms", needs: "encryption.kms_key_id" })
            }
            EncryptionType::Passphrase if self.passphrase_file.is_none() && self.passphrase_env.is_none() => {
                return Err(InvalidConfig::EncryptionNeeds {
                    kind: "passphrase",
                    needs: "encryption.passphrase_file or encryption.passphrase_env",
                })
            }
            _ => {}
        }
        let kms_credentials = static_credentials(
            "encryption",
            ["kms_access_key_id", "kms_secret_access_key"],
            (self.kms_access_key_id, self.kms_access_key_id_file),
            (self.kms_secret_access_key, self.kms_secret_access_key_file),
        )?;
        Ok(EncryptionConfig {
            kind: self.kind,
            kms_key_id: self.kms_key_id,
            kms_region: self.kms_region,
            kms_endpoint: self.kms_endpoint,
            kms_credentials,
            passphrase_file: self.passphrase_file,
            passphrase_env: self.passphrase_env,
        })
    }
}

impl RawAlerts {
    fn validate(self) -> Result<AlertsConfig, InvalidConfig> {
        if self.repo_full_warning_percent > self.repo_full_critical_percent {
            return Err(InvalidConfig::RepoFullWarningAboveCritical);
        }
        let webhook = |key: &'static str, inline, file: Option<std::path::PathBuf>| -> Result<Option<String>, InvalidConfig> {
            let from_file = file.clone().map(|path| (key_path("alerts", &format!("{key}_file")), path));
            let url = inline_or_file("alerts", key, inline, file)?.map(|s| s.expose().to_string());
            if let Some(url) = &url {
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    // A URL read from a file is a secret: the error names the file, not the URL.
                    return Err(match from_file {
                        Some((key, path)) => InvalidConfig::WebhookFileNotHttp { key, path },
                        None => InvalidConfig::WebhookNotHttp(url.clone()),
                    });
                }
            }
            Ok(url)
        };
        Ok(AlertsConfig {
            webhook_critical: webhook("webhook_critical", self.webhook_critical, self.webhook_critical_file)?,
            webhook_warning: webhook("webhook_warning", self.webhook_warning, self.webhook_warning_file)?,
            webhook_info: webhook("webhook_info", self.webhook_info, self.webhook_info_file)?,
            resend_secs: self.resend_secs,
            backup_late_factor: self.backup_late_factor,
            repo_full_warning_percent: self.repo_full_warning_percent,
            repo_full_critical_percent: self.repo_full_critical_percent,
            archive_lag_warning_secs: self.archive_lag_warning_secs,
            backup_duration_increase_percent: self.backup_duration_increase_percent,
        })
    }
}
