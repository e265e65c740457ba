//! The message bus between Strata's stages.
//!
//! Stages exchange chunks through two kinds of channel, and this crate owns both behind the [`Bus`] trait:
//!
//! - **work queues** ([`Queue`]): durable, competing-consumer queues, one per stage. A message published with
//!   [`Bus::publish_work`] is stored by the bus once the call returns; each message goes to exactly one worker of
//!   the pool, which must [`Delivery::ack`] it once its output is safely handed on. An unacknowledged message is
//!   redelivered (NATS: after the ack wait) to some worker.
//! - **events** ([`Bus::publish_event`], [`Bus::subscribe`]): fire-and-forget notifications on a subject
//!   (chunk-stored confirmations, backup requests and status). They may be lost; every consumer of an event
//!   waits with a deadline and fails cleanly instead of hanging, so correctness never depends on them.
//!
//! Two implementations: [`nats::NatsBus`] (JetStream work-queue streams plus core NATS subjects) for a fleet,
//! and [`local::LocalBus`] (bounded in-process channels) for the single-host mode, where every stage runs as a
//! task of one process. Nothing above this crate knows which one it talks to. [`retrying::RetryingBus`]
//! wraps a fleet bus so that a work publish outlasts a NATS cluster's leader election.

pub mod direct;
pub mod local;
pub mod nats;
pub mod retrying;

use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

pub use local::LocalBus;
pub use nats::NatsBus;
pub use retrying::RetryingBus;

/// A stage's durable work queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// Plain chunks from the collector (and archive-push), waiting to be compressed and encrypted.
    Seal,
    /// Sealed chunks and commit requests, waiting for an uploader.
    Upload,
    /// Backups and WAL files to copy from one repository to another, waiting for a replicator.
    Replicate,
}

impl Queue {
    pub const ALL: [Queue; 3] = [Queue::Seal, Queue::Upload, Queue::Replicate];

    /// The JetStream stream holding this queue.
    pub fn stream_name(self) -> &'static str {
        match self {
            Queue::Seal => "STRATA_SEAL",
            Queue::Upload => "STRATA_UPLOAD",
            Queue::Replicate => "STRATA_REPLICATE",
        }
    }

    /// The core NATS subject of this queue's transient messages ([`Bus::publish_transient`]), which
    /// its workers receive beside the durable ones, as a queue group.
    pub fn transient_subject(self) -> &'static str {
        match self {
            Queue::Seal => "strata.data.seal",
            Queue::Upload => "strata.data.upload",
            Queue::Replicate => "strata.data.replicate",
        }
    }

    /// The subject work of this queue is published on ([`Bus::publish_work`]).
    pub fn subject(self) -> &'static str {
        match self {
            Queue::Seal => "strata.work.seal",
            Queue::Upload => "strata.work.upload.chunk",
            Queue::Replicate => "strata.work.replicate",
        }
    }

    /// Every subject the queue's stream takes messages from: [`Queue::subject`], and for the upload queue
    /// also [`COMMIT_SUBJECT`]. Workers take both alike.
    pub fn stream_subjects(self) -> &'static [&'static str] {
        match self {
            Queue::Seal => &["strata.work.seal"],
            Queue::Upload => &["strata.work.upload.chunk", COMMIT_SUBJECT],
            Queue::Replicate => &["strata.work.replicate"],
        }
    }
}

/// The upload queue's subject for commit requests and checkpoints ([`Bus::publish_commit`]). It is apart
/// from the sealed chunks' subject only so that a server can let sealers publish chunks and not commits: a
/// commit is what makes a backup or WAL file exist, and only its job's owner (a collector, or the `strata`
/// command on a database host) may ask for one.
pub const COMMIT_SUBJECT: &str = "strata.work.upload.commit";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot reach the message bus at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the bus did not confirm a publish on {subject}: {reason}")]
    PublishFailed { subject: String, reason: String },
    #[error("message of {size} bytes exceeds the bus limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("bus setup failed: {0}")]
    Setup(String),
    #[error("the bus is closed")]
    Closed,
}

impl BusError {
    /// True when retrying the same call cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, BusError::TooLarge { .. } | BusError::Setup(_) | BusError::Closed)
    }
}

pub type Result<T> = std::result::Result<T, BusError>;


/// One message taken from a work queue. It must be acknowledged once the worker's output is durable
/// (published on the next queue, or written to the repository); dropping it unacknowledged makes the bus
/// redeliver it.
#[async_trait]
pub trait Delivery: Send + Sync {
    fn payload(&self) -> &Bytes;
    /// Whether the message may be a commit request: true when it was published with [`Bus::publish_commit`]
    /// (NATS: it came on [`COMMIT_SUBJECT`], which the server lets only job owners publish to). An uploader
    /// drops a commit request that was not, since any producer of chunks could have sent it. The
    /// in-process bus has no other producers than the `strata` command itself: always true there.
    fn commit_allowed(&self) -> bool {
        true
    }
    /// Removes the message from the queue. Returns once the bus has confirmed it.
    async fn ack(self: Box<Self>) -> Result<()>;
    /// Gives the message back for redelivery (to any worker) after `delay`; after [`MAX_DELIVERIES`]
    /// deliveries the bus drops it instead. Workers call [`give_back`] rather than this.
    async fn nak(self: Box<Self>, delay: Duration) -> Result<()>;
    /// Drops the message for good: its processing failed in a way no redelivery can fix. The job that sent
    /// it notices on its own deadline (work is never lost silently: the sender still holds what it sent).
    async fn term(self: Box<Self>) -> Result<()>;
    /// How often this message has been delivered, this delivery included.
    fn deliveries(&self) -> u32 {
        1
    }
    /// Tells the bus the worker is still at it, so a long task is not redelivered to another worker
    /// meanwhile (NATS: an in-progress ack, which restarts the ack wait). The in-process bus never
    /// redelivers on its own, so there it does nothing.
    async fn keep_alive(&self) -> Result<()> {
        Ok(())
    }
}

/// Deliveries of one work message after which the bus stops redelivering it (NATS: the worker
/// consumers' `max_deliver`): a message that keeps failing is not retried forever.
pub const MAX_DELIVERIES: u32 = 10;

/// Hands back a message whose processing failed. A `permanent` failure ends it ([`Delivery::term`]); a
/// transient one is redelivered, after a pause of `first_pause` doubled with each earlier delivery, at most
/// a minute; after [`MAX_DELIVERIES`] the bus drops it. Returns what happened, for the worker's log line.
pub async fn give_back(delivery: Box<dyn Delivery>, permanent: bool, first_pause: Duration) -> GivenBack {
    let deliveries = delivery.deliveries();
    if permanent || deliveries >= MAX_DELIVERIES {
        let _ = delivery.term().await;
        return if permanent { GivenBack::Dropped } else { GivenBack::GaveUp { deliveries } };
    }
    let pause = first_pause.saturating_mul(1 << deliveries.saturating_sub(1).min(16)).min(MAX_REDELIVERY_PAUSE);
    let _ = delivery.nak(pause).await;
    GivenBack::Redelivered { after: pause }
}

const MAX_REDELIVERY_PAUSE: Duration = Duration::from_secs(60);

/// What [`give_back`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GivenBack {
    /// It will be delivered again after the pause.
    Redelivered { after: Duration },
    /// Its failure was permanent: it is gone.
    Dropped,
    /// It failed on each of its `deliveries`: it is gone.
    GaveUp { deliveries: u32 },
}

/// A worker's handle on a work queue.
#[async_trait]
pub trait WorkStream: Send {
    /// Waits for the next message (durable or transient); `None` once the bus is closed.
    async fn next(&mut self) -> Option<Result<Box<dyn Delivery>>>;
    /// Returns the next message if one arrives within `wait`, else `Ok(None)`. Lets batching workers notice
    /// that their input went idle.
    async fn next_within(&mut self, wait: Duration) -> Result<Option<Box<dyn Delivery>>>;
}

/// A subscription to an event subject.
#[async_trait]
pub trait EventStream: Send {
    /// Waits for the next event; `None` once the subscription ended.
    async fn next(&mut self) -> Option<Bytes>;
}

#[async_trait]
pub trait Bus: Send + Sync {
    /// Stores `payload` on `queue`. Returns only once the bus holds it durably (JetStream's publish ack).
    async fn publish_work(&self, queue: Queue, payload: Bytes) -> Result<()>;
    /// Like [`Bus::publish_work`], but a message with the same `id` published again while the first is
    /// within the bus's deduplication window (NATS: the stream's duplicate window, 2 minutes) is stored
    /// once: several producers that find the same work do not double it. The in-process bus has a single
    /// producer per queue and does not deduplicate.
    async fn publish_work_once(&self, queue: Queue, id: &str, payload: Bytes) -> Result<()> {
        let _ = id;
        self.publish_work(queue, payload).await
    }
    /// Hands `payload` to one worker of `queue` without storing it: over NATS a core message to the
    /// queue's workers (a queue group), which is lost if no worker takes it, if the worker dies, or if a
    /// server on its way dies. For bulk data whose producer keeps it until the far end confirms it and
    /// sends it again otherwise ([`Bus::transient_may_be_lost`]): the job's chunks, which the commit rule
    /// already makes independent of the bus keeping them. Storing every chunk in a JetStream stream on
    /// its way to the sealers and again to the uploaders cost more CPU than compressing it (ARCHITECTURE.md,
    /// "The bus"). Default: [`Bus::publish_work`].
    async fn publish_transient(&self, queue: Queue, payload: Bytes) -> Result<()> {
        self.publish_work(queue, payload).await
    }
    /// Whether a [`Bus::publish_transient`] message can be lost, so that its producer must keep it and send
    /// it again when no confirmation comes. The in-process bus loses nothing while the process lives.
    fn transient_may_be_lost(&self) -> bool {
        false
    }
    /// Like [`Bus::publish_work`] on [`Queue::Upload`], for a commit request or a checkpoint: on NATS it
    /// goes to [`COMMIT_SUBJECT`] (see there why), and the uploaders take it from the same stream.
    async fn publish_commit(&self, payload: Bytes) -> Result<()> {
        self.publish_work(Queue::Upload, payload).await
    }
    /// Joins the pool of workers of `queue`.
    async fn work(&self, queue: Queue) -> Result<Box<dyn WorkStream>>;
    /// Sends a best-effort event.
    async fn publish_event(&self, subject: &str, payload: Bytes) -> Result<()>;
    /// Receives the events of `subject`. With a `group`, each event goes to one member of the group only.
    async fn subscribe(&self, subject: &str, group: Option<&str>) -> Result<Box<dyn EventStream>>;
    /// How many messages `queue` holds that no worker has finished: the depth a stage's backlog shows
    /// (exported as `strata_bus_queue_depth`). NATS: the stream's message count, which on a work-queue
    /// stream is every message stored and not yet acknowledged, delivered or not. In-process: the messages
    /// waiting in the channel (a taken message is finished there, acks do nothing).
    async fn queue_depth(&self, queue: Queue) -> Result<u64>;
    /// The largest payload this bus carries.
    fn max_payload(&self) -> usize;
    /// Makes sure every event published before this call left the process (NATS flush).
    async fn flush(&self) -> Result<()>;
}
