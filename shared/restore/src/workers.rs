//! The end of a restore's worker pool. Full and delta restore both cut their work into units taken by a
//! fixed number of workers; what must be the same for both is how the pool ends when one of them fails.

use anyhow::anyhow;
use tokio::task::JoinSet;

/// Waits for every worker of a pool; on the first failure the others are aborted and awaited too, so that
/// none is still running (and none finds its blocking task cancelled by the runtime's shutdown) when the
/// error is returned. A worker that panicked is an error like any other.
pub(crate) async fn join_workers(mut workers: JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        let err = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            // Only this function aborts, after the first failure, whose error is the one returned.
            Err(e) if e.is_cancelled() => continue,
            Err(e) => anyhow!("a restore worker failed: {e}"),
        };
        if failure.is_none() {
            failure = Some(err);
            workers.abort_all();
        }
    }
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_worker_stops_the_others_and_a_panicked_one_is_an_error() {
        // A worker that never ends unless aborted: join_workers returns only because it aborts it.
        let mut workers = JoinSet::new();
        workers.spawn(std::future::pending::<anyhow::Result<()>>());
        workers.spawn(async { Err(anyhow!("chunk damaged")) });
        assert_eq!(join_workers(workers).await.unwrap_err().to_string(), "chunk damaged");
        let mut workers = JoinSet::new();
        workers.spawn(async { panic!("a bug in a worker") });
        workers.spawn(async { Ok(()) });
        let e = join_workers(workers).await.unwrap_err().to_string();
        assert!(e.contains("panicked"), "{e}");
    }
}
