//! Names of the event subjects. Work queues are named by `strata_bus::Queue`.

/// Where backup requests for a stanza go; collectors of that stanza listen in one queue group.
pub fn backup_requests(stanza: &str) -> String {
    format!("strata.collect.{}", token(stanza))
}

/// The queue group collectors of a stanza join, so one collector takes each request.
pub const COLLECTOR_GROUP: &str = "collectors";

/// Status of a backup, from its collector to whoever asked for it.
pub fn backup_status(label: &str) -> String {
    format!("strata.backup.{}.status", token(label))
}

/// Confirmations for one job's chunks and commit, from uploaders to the job's owner.
pub fn job_events(job: &str) -> String {
    format!("strata.job.{}", token(job))
}

/// NATS subject tokens cannot hold '.', '*', '>' or whitespace; labels and stanza names are restricted by the
/// config and the CLI, but map anything else to '_' so a subject is never malformed.
fn token(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Where chunk fetch requests go; uploaders listen in one queue group ([`UPLOADER_GROUP`]).
pub const FETCH: &str = "strata.fetch";

/// The queue group uploaders join for fetch requests, so one of them answers each.
pub const UPLOADER_GROUP: &str = "uploaders";

/// Where the answers to one fetch request go: `request` numbers the job's requests, so an answer that
/// comes late (to a request asked twice) never lands among the answers to the next one.
pub fn fetch_reply(job: &str, request: u64) -> String {
    format!("strata.fetch.reply.{}.{request}", token(job))
}
