//! A stored manifest the collector works against: the reference of a diff or incr backup, or the
//! checkpoint an interrupted backup left.
//!
//! The collector has no repository access of its own, so the manifest's chunks come through an uploader
//! ([`FetchRequest`]), still sealed, and are checked against their content address here. The file lists are
//! kept as fetched (validated once, then read in place) with an index from a hash of each path, which for
//! 300,000 files is a few tens of MB instead of the several hundred owned entries would take.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use strata_bus::Bus;
use strata_messages::manifest::ArchivedFileList;
use strata_messages::{
    decode, encode, subjects, ChunkRef, FetchRequest, FetchedChunk, FileEntry, FileKind, FileList, ManifestHead,
    FORMAT_VERSION,
};

/// How long the collector waits for each chunk of a manifest.
/// Longer than one S3 attempt (`strata_storage::RetryPolicy`: 60 s), so that an uploader whose read
/// stalled once and was retried still answers in time.
const FETCH_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the collector waits for the first answer before asking again.
const REASK_INTERVAL: Duration = Duration::from_secs(3);
/// Chunks asked for in one request: bounds the replies in flight.
const FETCH_BATCH: usize = 8;

pub struct LoadedManifest {
    pub head: ManifestHead,
    /// The file lists' plain bytes, each validated as a [`FileList`].
    lists: Vec<Vec<u8>>,
    /// Hash of a file's path -> (list, entry). A collision only costs reading the file: [`Self::file`]
    /// compares the path.
    by_path: HashMap<u64, (u32, u32)>,
}

fn path_key(path: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

impl LoadedManifest {
    /// Fetches a manifest (head and file lists) through an uploader. `job` names the reply subject; `what`
    /// names the manifest in errors.
    pub async fn fetch(bus: &dyn Bus, sealer: &strata_seal::Sealer, job: &str, what: &str, head_chunks: &[ChunkRef]) -> anyhow::Result<LoadedManifest> {
        let head_bytes: Vec<u8> = fetch_chunks(bus, sealer, job, what, head_chunks).await?.concat();
        let head = decode::<ManifestHead>(&head_bytes)
            .map(strata_messages::to_owned::<ManifestHead>)
            .with_context(|| format!("the {what} is unreadable"))?;
        let mut lists = Vec::with_capacity(head.file_lists.len());
        let mut by_path = HashMap::new();
        for batch in head.file_lists.chunks(FETCH_BATCH) {
            for bytes in fetch_chunks(bus, sealer, job, what, batch).await? {
                let list = decode::<FileList>(&bytes).with_context(|| format!("a file list of the {what} is unreadable"))?;
                let n = lists.len() as u32;
                for (i, f) in list.files.iter().enumerate() {
                    if matches!(f.kind, strata_messages::manifest::ArchivedFileKind::File) {
                        by_path.entry(path_key(f.path.as_str())).or_insert((n, i as u32));
                    }
                }
                lists.push(bytes);
            }
        }
        Ok(LoadedManifest { head, lists, by_path })
    }

    /// The manifest's entry for a regular file at `path`.
    pub fn file(&self, path: &str) -> Option<FileEntry> {
        let &(list, index) = self.by_path.get(&path_key(path))?;
        // SAFETY: every list was validated by `decode` when it was fetched, and is never modified.
        let list = unsafe { rkyv::access_unchecked::<ArchivedFileList>(&self.lists[list as usize]) };
        let entry = &list.files[index as usize];
        (entry.path.as_str() == path).then(|| strata_messages::to_owned::<FileEntry>(entry)).filter(|e| e.kind == FileKind::File)
    }

    /// The stored chunk a piece of one of this manifest's entries points into.
    pub fn chunk(&self, number: u32) -> Option<ChunkRef> {
        self.head.chunks.get(number as usize).copied().filter(|c| !c.is_unknown())
    }
}

/// Fetches stored chunks through an uploader and returns their plain bytes, in order.
async fn fetch_chunks(
    bus: &dyn Bus,
    sealer: &strata_seal::Sealer,
    job: &str,
    what: &str,
    chunks: &[ChunkRef],
) -> anyhow::Result<Vec<Vec<u8>>> {
    static REQUESTS: AtomicU64 = AtomicU64::new(0);
    let reply = subjects::fetch_reply(job, REQUESTS.fetch_add(1, Ordering::Relaxed));
    let mut answers = bus.subscribe(&reply, None).await?;
    let request = Bytes::from(encode(&FetchRequest { version: FORMAT_VERSION, reply: reply.clone(), chunks: chunks.to_vec() }));
    bus.publish_event(subjects::FETCH, request.clone()).await?;
    bus.flush().await?;
    let mut parts: Vec<Option<Vec<u8>>> = vec![None; chunks.len()];
    let mut missing = parts.len();
    let mut waited = Duration::ZERO;
    while missing > 0 {
        // A request is an event: one published before any uploader subscribed (an uploader still starting,
        // or restarting) reaches nobody. Until the first answer shows an uploader has it, ask again.
        let wait = if missing == parts.len() { REASK_INTERVAL } else { FETCH_TIMEOUT };
        let payload = match tokio::time::timeout(wait, answers.next()).await {
            Ok(p) => p.ok_or_else(|| anyhow!("the bus closed while fetching the {what}"))?,
            Err(_) if missing == parts.len() && waited + wait < FETCH_TIMEOUT => {
                waited += wait;
                bus.publish_event(subjects::FETCH, request.clone()).await?;
                bus.flush().await?;
                continue;
            }
            Err(_) => bail!("no uploader sent the {what} within {} s; is an uploader running?", FETCH_TIMEOUT.as_secs()),
        };
        waited = Duration::ZERO;
        match strata_messages::to_owned::<FetchedChunk>(decode::<FetchedChunk>(&payload)?) {
            FetchedChunk::Sealed { index, bytes } => {
                let i = index as usize;
                let chunk = chunks.get(i).ok_or_else(|| anyhow!("an uploader sent chunk {i} of a {}-chunk request", parts.len()))?;
                if parts[i].is_none() {
                    parts[i] = Some(sealer.unseal(&bytes, &chunk.id).with_context(|| format!("the {what}"))?);
                    missing -= 1;
                }
            }
            FetchedChunk::Failed(reason) => bail!("cannot read the {what}: {reason}"),
        }
    }
    Ok(parts.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use strata_bus::LocalBus;

    #[tokio::test]
    async fn a_fetch_published_before_any_uploader_listens_is_asked_again() {
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
        let sealer = strata_seal::Sealer::default();
        let plain = b"a file list".to_vec();
        let sealed = sealer.seal(&plain, 1);
        let chunk = ChunkRef { id: sealer.chunk_id(&plain), pack: [7; 16], offset: 0, sealed_len: sealed.len() as u32, raw_len: plain.len() as u32 };
        // An uploader that starts listening only after the first request went out (one still starting).
        let uploader_bus = bus.clone();
        let uploader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut requests = uploader_bus.subscribe(subjects::FETCH, Some(subjects::UPLOADER_GROUP)).await.unwrap();
            let payload = requests.next().await.expect("a request asked again");
            let request = strata_messages::to_owned::<FetchRequest>(decode::<FetchRequest>(&payload).unwrap());
            let answer = FetchedChunk::Sealed { index: 0, bytes: sealed };
            uploader_bus.publish_event(&request.reply, Bytes::from(encode(&answer))).await.unwrap();
        });
        let parts = fetch_chunks(&*bus, &sealer, "job", "test manifest", &[chunk]).await.expect("fetched on the second ask");
        assert_eq!(parts, vec![plain]);
        uploader.await.unwrap();
    }
}
