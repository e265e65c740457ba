//! The sealer: compresses, then (in an encrypted repository) encrypts chunks.
//!
//! Consumes [`strata_messages::PlainChunk`]s from the `Seal` work queue and publishes [`SealedChunk`]s on the `Upload` queue.
//! It acknowledges its input only after the bus confirmed the output, so a sealer killed at any point loses
//! nothing: the unacknowledged chunk is redelivered to another worker. It never touches the repository and
//! holds no state between chunks, so any number of sealers can run on any hosts.
//!
//! Compression is the pipeline's CPU bottleneck (zstd level 1 runs at about 200 MB/s per core on realistic
//! pages, versus GB/s for hashing), so each process runs `pipeline.sealer_workers` tasks, each sealing on a
//! blocking thread.

pub mod metrics;

use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use strata_bus::{Bus, Delivery, Queue};
use strata_messages::{encode_upload, SealedChunk, UploadWork, UPLOAD_WORK_VERSION};
use strata_seal::Sealer;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use metrics::{SealerError, SealerMetrics};

/// Runs `workers` sealing tasks with `sealer` (the repository's: it holds the data key when the repository is
/// encrypted) until `shutdown` completes, counting what they do in `metrics`.
pub async fn run(
    bus: Arc<dyn Bus>,
    workers: usize,
    sealer: Sealer,
    metrics: SealerMetrics,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for n in 0..workers {
        let mut input = bus.work(Queue::Seal).await?;
        let bus = bus.clone();
        let cancel = cancel.clone();
        let sealer = Arc::new(sealer.clone());
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => break,
                    next = input.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => seal_one(&*bus, &sealer, &metrics, delivery).await,
                    Some(Err(e)) => {
                        metrics.error(SealerError::Input);
                        warn!(worker = n, error = %e, "sealer could not take work");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    None => break,
                }
            }
        }));
    }
    info!(workers, "sealer running");
    shutdown.await;
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn seal_one(bus: &dyn Bus, sealer: &Arc<Sealer>, metrics: &SealerMetrics, delivery: Box<dyn Delivery>) {
    let payload: Bytes = delivery.payload().clone();
    let sealer = sealer.clone();
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
    match sealed {
        Ok((out, plain, sealed)) => match bus.publish_work(Queue::Upload, Bytes::from(out)).await {
            Ok(()) => {
                metrics.sealed(plain, sealed);
                if let Err(e) = delivery.ack().await {
                    metrics.error(SealerError::Ack);
                    // The chunk will be sealed again; the uploader stores it once.
                    warn!(error = %e, "sealer could not acknowledge a chunk");
                }
            }
            Err(e) => {
                metrics.error(SealerError::Publish);
                warn!(error = %e, "sealer could not hand a chunk to the uploaders; it will be retried");
                let _ = delivery.nak(std::time::Duration::from_secs(1)).await;
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
