//! What a target is missing, and how far behind that puts it (its lag).
//!
//! A scan lists the source's and the target's objects (three listings each: `keys`, `stanza`, `pack`),
//! and for every committed backup record and WAL record of the source works out the packs it needs.
//! A backup or WAL file is pending for a target when its record, or any pack it needs, is absent there
//! (or of another size). Checkpoints of running backups (`.partial`) are not replicated: they are only
//! worth something to the repository whose backup they resume.
//!
//! The lag is the sum over what is pending, each object counted once (packs are shared): objects, bytes,
//! and the oldest of them (by its modification time in the source) with its name. `info` and the
//! replicator's metrics both come from [`Scanner::plan`], so they always agree.
//!
//! Records never change once written, so a [`Scanner`] remembers the packs each record needs and reads
//! a record's manifest only once per process.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use strata_keys::KEY_FILE;
use strata_messages::PackId;
use strata_repo::{pack_path, Repo, RepoError};
use strata_storage::ObjectInfo;

/// One unit of replication work for a target: a whole backup or a whole WAL file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Item {
    Wal { stanza: String, name: String },
    Backup { stanza: String, label: String },
}

impl Item {
    /// Stable and unique per item, for the bus's duplicate detection and for logs.
    pub fn key(&self) -> String {
        match self {
            Item::Wal { stanza, name } => format!("{stanza}.wal.{name}"),
            Item::Backup { stanza, label } => format!("{stanza}.backup.{label}"),
        }
    }
}

/// How far a target is behind its source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lag {
    /// Objects still to copy (records, packs, key file and stanza descriptions).
    pub objects: u64,
    pub bytes: u64,
    /// The longest-waiting object still to copy: its path and when it was written in the source (Unix
    /// seconds).
    pub oldest: Option<(String, i64)>,
}

impl Lag {
    /// Seconds since the oldest uncopied object was written in the source (0 when nothing is pending).
    pub fn seconds(&self, now: i64) -> u64 {
        self.oldest.as_ref().map(|(_, t)| (now - t).max(0) as u64).unwrap_or(0)
    }

    fn add(&mut self, o: &ObjectInfo) {
        self.objects += 1;
        self.bytes += o.size;
        if self.oldest.as_ref().is_none_or(|(_, t)| o.modified < *t) {
            self.oldest = Some((o.path.clone(), o.modified));
        }
    }
}

/// What a target is missing: the items to copy now, oldest kinds first (WAL, then backups), the items
/// that wait for one of those, and the lag.
///
/// An item that needs a missing pack which an earlier item of `items` also needs waits (`waiting`) until
/// a later scan: copied side by side, by two workers or two replicator hosts, both would find the pack
/// absent and write it (an incremental backup shares most of its packs with its full backup). Once the
/// earlier copy wrote the pack, the next scan sees it there and the item goes ahead.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub items: Vec<Item>,
    pub waiting: Vec<Item>,
    /// The packs each item of `items` and `waiting` needs that the target lacks (paths, in order).
    pub missing_packs: HashMap<Item, Vec<String>>,
    pub lag: Lag,
}

/// Scans, remembering the packs of records it has read.
#[derive(Default)]
pub struct Scanner {
    /// Record path -> (its size, the packs it needs).
    packs_of: HashMap<String, (u64, Vec<PackId>)>,
}

async fn listing(repo: &Repo, prefix: &str) -> Result<Vec<ObjectInfo>, RepoError> {
    repo.storage()
        .list(prefix)
        .await
        .map_err(|source| RepoError::Storage { repo: format!("'{}' ({})", repo.name(), repo.storage().describe()), source })
}

async fn listings(repo: &Repo) -> Result<BTreeMap<String, ObjectInfo>, RepoError> {
    let mut out = BTreeMap::new();
    for prefix in ["keys", "stanza", "pack"] {
        for o in listing(repo, prefix).await? {
            out.insert(o.path.clone(), o);
        }
    }
    Ok(out)
}

impl Scanner {
    /// Works out what `target` lacks of what `source` holds (see the module docs).
    pub async fn plan(&mut self, source: &Repo, target: &Repo) -> Result<Plan, RepoError> {
        let theirs = listings(target).await?;
        let ours = listings(source).await?;
        let missing = |o: &ObjectInfo| theirs.get(&o.path).map(|t| t.size) != Some(o.size);
        let mut plan = Plan::default();
        // Packs are shared between items: each object counts once.
        let count = |lag: &mut Lag, o: &ObjectInfo, seen: &mut HashSet<String>| {
            if seen.insert(o.path.clone()) {
                lag.add(o);
            }
        };
        let mut seen: HashSet<String> = HashSet::new();
        // Missing packs an item of `plan.items` copies.
        let mut claimed: HashSet<String> = HashSet::new();
        if let Some(k) = ours.get(KEY_FILE) {
            if missing(k) {
                count(&mut plan.lag, k, &mut seen);
            }
        }
        let mut wal = Vec::new();
        let mut backups = Vec::new();
        for o in ours.values().filter(|o| o.path.starts_with("stanza/")) {
            let parts: Vec<&str> = o.path.split('/').collect();
            match parts.as_slice() {
                ["stanza", _, "stanza.json"] if missing(o) => count(&mut plan.lag, o, &mut seen),
                ["stanza", stanza, "backup", file] => {
                    if let Some(label) = file.strip_suffix(".record") {
                        backups.push((o, Item::Backup { stanza: stanza.to_string(), label: label.to_string() }));
                    }
                }
                ["stanza", stanza, "wal", _, name] => {
                    wal.push((o, Item::Wal { stanza: stanza.to_string(), name: name.to_string() }))
                }
                _ => {}
            }
        }
        for (record, item) in wal.into_iter().chain(backups) {
            let Some(packs) = self.packs(source, record, &item).await? else { continue };
            let mut pending: Vec<&ObjectInfo> = Vec::new();
            for id in packs {
                // A pack the source lacks is the source's problem; the copy reports it.
                if let Some(p) = ours.get(&pack_path(&id)) {
                    if missing(p) {
                        pending.push(p);
                    }
                }
            }
            if missing(record) {
                pending.push(record);
            }
            if !pending.is_empty() {
                let packs = pending.iter().filter(|o| o.path.starts_with("pack/")).map(|o| o.path.clone()).collect();
                plan.missing_packs.insert(item.clone(), packs);
                let shares = pending.iter().any(|o| claimed.contains(&o.path));
                for o in pending {
                    count(&mut plan.lag, o, &mut seen);
                    if !shares && o.path.starts_with("pack/") {
                        claimed.insert(o.path.clone());
                    }
                }
                if shares {
                    plan.waiting.push(item);
                } else {
                    plan.items.push(item);
                }
            }
        }
        Ok(plan)
    }

    /// The packs a record needs; `None` when the record vanished since the listing (expired).
    async fn packs(&mut self, source: &Repo, record: &ObjectInfo, item: &Item) -> Result<Option<Vec<PackId>>, RepoError> {
        if let Some((size, packs)) = self.packs_of.get(&record.path) {
            if *size == record.size {
                return Ok(Some(packs.clone()));
            }
        }
        let packs: Vec<PackId> = match item {
            Item::Wal { stanza, name } => match source.wal(stanza, name).await? {
                Some(w) => w.chunks.iter().map(|c| c.pack).collect::<HashSet<_>>().into_iter().collect(),
                None => return Ok(None),
            },
            Item::Backup { stanza, label } => match source.backup(stanza, label).await {
                Ok(b) => source.backup_packs(&b).await?.into_iter().collect(),
                Err(RepoError::NoBackup { .. }) => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        self.packs_of.insert(record.path.clone(), (record.size, packs.clone()));
        Ok(Some(packs))
    }
}

/// The lag of `target` behind `source`, computed now (what `info` shows).
pub async fn lag(source: &Repo, target: &Repo) -> Result<Lag, RepoError> {
    Ok(Scanner::default().plan(source, target).await?.lag)
}
