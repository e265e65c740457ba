//! The sealer's metrics, named `strata_sealer_*`. Chunks and bytes are counted per chunk, so in atomics
//! copied into the registry when it is rendered (see `strata_metrics::Registry::on_render`); errors are
//! rare and go to the registry directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_metrics::{Counter, Registry};

/// What went wrong, as the `kind` label of `strata_sealer_errors_total`.
#[derive(Debug, Clone, Copy)]
pub enum SealerError {
    /// The work queue could not be read.
    Input,
    /// A message that is not a chunk; dropped.
    Malformed,
    /// A sealed chunk the upload queue did not take; the input is given back for a retry.
    Publish,
    /// The input's acknowledgement failed after its output was handed on (it will be sealed again).
    Ack,
}

impl SealerError {
    const ALL: [SealerError; 4] = [SealerError::Input, SealerError::Malformed, SealerError::Publish, SealerError::Ack];

    fn label(self) -> &'static str {
        match self {
            SealerError::Input => "input",
            SealerError::Malformed => "malformed",
            SealerError::Publish => "publish",
            SealerError::Ack => "ack",
        }
    }
}

#[derive(Default)]
struct Counts {
    chunks: AtomicU64,
    input_bytes: AtomicU64,
    output_bytes: AtomicU64,
}

#[derive(Clone)]
pub struct SealerMetrics {
    counts: Arc<Counts>,
    errors: Counter,
}

impl SealerMetrics {
    pub fn new(registry: &Registry) -> SealerMetrics {
        let counts = Arc::new(Counts::default());
        let chunks = registry.counter("strata_sealer_chunks_total", "Chunks sealed and handed to the uploaders.");
        let input = registry.counter("strata_sealer_input_bytes_total", "Plain bytes of the chunks sealed.");
        let output = registry.counter("strata_sealer_output_bytes_total", "Sealed (compressed, perhaps encrypted) bytes of the chunks sealed.");
        let seen = counts.clone();
        registry.on_render(move || {
            chunks.set_total(&[], seen.chunks.load(Ordering::Relaxed));
            input.set_total(&[], seen.input_bytes.load(Ordering::Relaxed));
            output.set_total(&[], seen.output_bytes.load(Ordering::Relaxed));
        });
        let errors = registry.counter("strata_sealer_errors_total", "Sealer failures by kind (each message is retried or, if malformed, dropped).");
        for kind in SealerError::ALL {
            errors.inc_by(&[("kind", kind.label())], 0);
        }
        SealerMetrics { counts, errors }
    }

    /// For a sealer nobody scrapes (the single-host mode): the same counting, into a registry of its own.
    pub fn unexported() -> SealerMetrics {
        SealerMetrics::new(&Registry::new())
    }

    /// One chunk of `plain` bytes became `sealed` bytes on the upload queue.
    pub fn sealed(&self, plain: u64, sealed: u64) {
        self.counts.chunks.fetch_add(1, Ordering::Relaxed);
        self.counts.input_bytes.fetch_add(plain, Ordering::Relaxed);
        self.counts.output_bytes.fetch_add(sealed, Ordering::Relaxed);
    }

    pub fn error(&self, kind: SealerError) {
        self.errors.inc(&[("kind", kind.label())]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_start_at_zero_and_add_up() {
        let r = Registry::new();
        let m = SealerMetrics::new(&r);
        let text = r.render();
        for line in [
            "strata_sealer_chunks_total 0\n",
            "strata_sealer_input_bytes_total 0\n",
            "strata_sealer_output_bytes_total 0\n",
            "strata_sealer_errors_total{kind=\"publish\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        m.sealed(1 << 20, 4000);
        m.sealed(8192, 100);
        m.error(SealerError::Publish);
        let text = r.render();
        assert!(text.contains("strata_sealer_chunks_total 2\n"), "{text}");
        assert!(text.contains("strata_sealer_input_bytes_total 1056768\n"), "{text}");
        assert!(text.contains("strata_sealer_output_bytes_total 4100\n"), "{text}");
        assert!(text.contains("strata_sealer_errors_total{kind=\"publish\"} 1\n"), "{text}");
    }
}
