//! strata-seal-worker, the sealer stage: compresses, then (in an encrypted repository) encrypts chunks, with
//! the primitives of `strata-seal`. The `strata-sealer` service (services/sealer) is a thin binary around
//! [`run`]; the `strata` command runs the same code in single-host mode.
//!
//! Consumes [`strata_messages::PlainChunk`]s from the `Seal` queue and publishes [`SealedChunk`]s on the
//! `Upload` queue. Chunks travel as transient messages ([`Bus::publish_transient`]): a sealer killed at any
//! point loses the chunks it held, and the job that sent them, which keeps every chunk until an uploader
//! confirms it, sends them again. It never touches the repository and
//! holds no state between chunks, so any number of sealers can run on any hosts.
//!
//! Compression is the pipeline's CPU bottleneck (zstd level 1 runs at about 200 MB/s per core on realistic
//! pages, versus GB/s for hashing), so each process runs `pipeline.sealer_workers` tasks, each sealing on a
//! blocking thread.

pub mod metrics;

use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use strata_bus::{Bus, Delivery, GivenBack, Queue};
use strata_messages::{encode_upload, SealedChunk, UploadWork, UPLOAD_WORK_VERSION};
use strata_seal::Sealer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use metrics::{SealerError, SealerMetrics};

/// How many messages a sealer process holds per sealing thread: one being sealed, the others being
/// published or acknowledged (network round trips that need no CPU) or waiting their turn.
const IN_FLIGHT_PER_WORKER: usize = 4;

/// Runs sealing with `workers` threads and `sealer` (the repository's: it holds the data key when the
/// repository is encrypted) until `shutdown` completes, counting what it does in `metrics`.
///
/// One pull stream feeds a task per message; at most `workers` of them compress at once (compression is
/// the CPU the process is for), while the others publish their output and acknowledge their input, which
/// are round trips to the bus. A sealer that waited for each round trip before taking the next chunk
/// spent most of its time idle.
pub async fn run(
    bus: Arc<dyn Bus>,
    workers: usize,
    sealer: Sealer,
    metrics: SealerMetrics,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let mut input = bus.work(Queue::Seal).await?;
    let sealer = Arc::new(sealer);
    let cpu = Arc::new(Semaphore::new(workers));
    let in_flight = Arc::new(Semaphore::new(workers * IN_FLIGHT_PER_WORKER));
    let feeder = {
        let (bus, cancel, metrics) = (bus.clone(), cancel.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let slot = tokio::select! {
                    _ = cancel.cancelled() => break,
                    slot = in_flight.clone().acquire_owned() => slot.expect("never closed"),
                };
                let next = tokio::select! {
                    _ = cancel.cancelled() => break,
                    next = input.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => {
                        let (bus, sealer, metrics, cpu) = (bus.clone(), sealer.clone(), metrics.clone(), cpu.clone());
                        while tasks.try_join_next().is_some() {}
                        tasks.spawn(async move {
                            seal_one(&*bus, &sealer, &cpu, &metrics, delivery).await;
                            drop(slot);
                        });
                    }
                    Some(Err(e)) => {
                        metrics.error(SealerError::Input);
                        warn!(error = %e, "sealer could not take work");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    None => break,
                }
            }
            // Finish what was taken: its output is published and its input acknowledged, or it is
            // redelivered after the ack wait.
            while tasks.join_next().await.is_some() {}
        })
    };
    info!(workers, "sealer running");
    shutdown.await;
    cancel.cancel();
    let _ = feeder.await;
    Ok(())
}

async fn seal_one(
    bus: &dyn Bus,
    sealer: &Arc<Sealer>,
    cpu: &Semaphore,
    metrics: &SealerMetrics,
    delivery: Box<dyn Delivery>,
) {
    let payload: Bytes = delivery.payload().clone();
    let sealer = sealer.clone();
    let thread = cpu.acquire().await.expect("never closed");
    let sealed = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, u64, u64), String> {
        let (chunk, data) = strata_messages::decode_plain_chunk(&payload).map_err(|e| e.to_string())?;
        // The sealed bytes, then the header fields and rkyv's padding.
        let mut message = Vec::with_capacity(strata_seal::sealed_bound(data.len()) + 512);
        let sealed_len = sealer.seal_into(data, i32::from(chunk.compress_level), &mut message);
        let out = SealedChunk {
            version: UPLOAD_WORK_VERSION,
            job: chunk.job.to_string(),
            stanza: chunk.stanza.to_string(),
            id: chunk.id,
            dedup: chunk.dedup,
            raw_len: data.len() as u32,
            sealed_len: sealed_len as u32,
        };
        Ok((encode_upload(&UploadWork::Chunk(out), message), data.len() as u64, sealed_len as u64))
    })
    .await
    .expect("sealing task panicked");
    drop(thread);
    match sealed {
        // Transient, as its input: the job that sent the chunk keeps it until an uploader confirms it and
        // sends it again if it is lost anywhere on the way.
        Ok((out, plain, sealed)) => match bus.publish_transient(Queue::Upload, Bytes::from(out)).await {
            Ok(()) => {
                metrics.sealed(plain, sealed);
                // Kept for the line below (a reference count, not a copy): the ack consumes the delivery.
                let input = delivery.payload().clone();
                if let Err(e) = delivery.ack().await {
                    metrics.error(SealerError::Ack);
                    // The chunk will be sealed again; the uploader stores it once.
                    warn!(job = %job_of(&input), error = %e, "sealer could not acknowledge a chunk");
                }
            }
            Err(e) => {
                metrics.error(SealerError::Publish);
                let job = job_of(delivery.payload());
                match strata_bus::give_back(delivery, e.is_permanent(), std::time::Duration::from_secs(1)).await {
                    GivenBack::Redelivered { after } => {
                        warn!(job = %job, error = %e, "sealer could not hand a chunk to the uploaders; retrying in {after:?}")
                    }
                    // Its job notices on its stall deadline and fails with its own line.
                    gone => error!(job = %job, error = %e, outcome = ?gone, "sealer dropped a chunk it cannot hand to the uploaders"),
                }
            }
        },
        Err(reason) => {
            // A malformed message can never succeed; drop it, its job fails on its stall deadline.
            metrics.error(SealerError::Malformed);
            error!(%reason, "sealer dropped a malformed chunk message");
            let _ = delivery.ack().await;
        }
    }
}

/// The job a delivered chunk belongs to, for the lines that report trouble with it. Read again from the
/// message only then: a span or a copy of the name per chunk would cost on every chunk to serve the few
/// that fail.
fn job_of(message: &[u8]) -> String {
    match strata_messages::decode_plain_chunk(message) {
        Ok((chunk, _)) => chunk.job.to_string(),
        Err(_) => String::from("?"),
    }
}
