//! What a worker holds: the work stream it pulls from, each delivery and how it is acknowledged, and event
//! subscriptions; the message-level half of the NATS bus, apart from connecting and setup.

use super::*;

/// The queue group of a queue's workers on its transient subject.
pub(super) fn transient_group(queue: Queue) -> String {
    format!("{}_WORKERS", queue.stream_name())
}

/// A worker's pull subscription on its queue's shared consumer, and its membership of the queue's group on
/// the transient subject.
pub(super) struct NatsWork {
    pub(super) messages: pull::Stream,
    pub(super) transient: async_nats::Subscriber,
    /// Transient messages from producers this worker is connected to directly.
    pub(super) direct: Option<DirectWorker>,
    pub(super) queue: Queue,
    pub(super) url: String,
    pub(super) timeout: Duration,
}

#[async_trait]
impl WorkStream for NatsWork {
    /// An `Err(Unreachable)` reports connection trouble and the stream goes on (async-nats re-issues its pull
    /// after reconnecting); an `Err(Setup)` means the consumer is gone, and the stream then ends.
    ///
    /// Cancel safety: cancel-safe; a message that arrives after the future is dropped stays buffered for the
    /// next call.
    async fn next(&mut self) -> Option<Result<Box<dyn Delivery>>> {
        let item = tokio::select! {
            item = self.messages.next() => item?,
            message = self.transient.next() => {
                return Some(Ok(Box::new(TransientDelivery { payload: message?.payload }) as Box<dyn Delivery>))
            }
            Some(payload) = async {
                match &mut self.direct {
                    Some(direct) => direct.messages.recv().await,
                    None => None,
                }
            } => return Some(Ok(Box::new(TransientDelivery { payload }) as Box<dyn Delivery>)),
        };
        Some(match item {
            Ok(message) => {
                Ok(Box::new(NatsDelivery { message, queue: self.queue, timeout: self.timeout }) as Box<dyn Delivery>)
            }
            Err(e) => {
                use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
                let reason = format!("pulling from {}: {e}", self.queue.stream_name());
                match e.kind() {
                    // The stream of messages has ended for good (async-nats stops it); retrying needs setup.
                    Kind::ConsumerDeleted | Kind::PushBasedConsumer | Kind::RequestLimitExceeded => {
                        Err(BusError::Setup(reason))
                    }
                    // Connection trouble; async-nats re-issues the pull after reconnecting.
                    _ => Err(BusError::Unreachable { url: self.url.clone(), reason }),
                }
            }
        })
    }

    async fn next_within(&mut self, wait: Duration) -> Result<Option<Box<dyn Delivery>>> {
        match tokio::time::timeout(wait, self.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(BusError::Closed),
            Ok(Some(delivery)) => delivery.map(Some),
        }
    }
}

/// One JetStream message, held until acked or nacked; dropping it leaves redelivery to the ack wait.
pub(super) struct NatsDelivery {
    pub(super) message: jetstream::Message,
    pub(super) queue: Queue,
    pub(super) timeout: Duration,
}

impl NatsDelivery {
    /// Sends `kind` and waits for the server to confirm it.
    async fn confirm(&self, kind: AckKind) -> Result<()> {
        let failed = |reason: String| BusError::PublishFailed {
            subject: format!("ack of {}", self.queue.stream_name()),
            reason,
        };
        // double_ack_with waits for the server with the JetStream context's request timeout; the outer timeout
        // only guards against a hang in the client.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), self.message.double_ack_with(kind)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!("no confirmation within {:?}", self.timeout))),
        }
    }
}

#[async_trait]
impl Delivery for NatsDelivery {
    fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// Also a message on the upload stream's pre-split subject: queued before the upgrade, by a collector.
    fn commit_allowed(&self) -> bool {
        matches!(self.message.subject.as_str(), crate::COMMIT_SUBJECT | LEGACY_UPLOAD_SUBJECT)
    }

    /// Returns once the server confirmed the ack; on a work-queue stream the message is then deleted.
    async fn ack(self: Box<Self>) -> Result<()> {
        self.confirm(AckKind::Ack).await
    }

    /// Returns once the server confirmed the nak; the message is redelivered after `delay` (unless the
    /// consumer's `max_deliver` is reached).
    async fn nak(self: Box<Self>, delay: Duration) -> Result<()> {
        self.confirm(AckKind::Nak((!delay.is_zero()).then_some(delay))).await
    }

    /// Returns once the server confirmed the term; the message is never redelivered.
    async fn term(self: Box<Self>) -> Result<()> {
        self.confirm(AckKind::Term).await
    }

    fn deliveries(&self) -> u32 {
        self.message.info().map(|i| i.delivered.clamp(1, i64::from(u32::MAX)) as u32).unwrap_or(1)
    }

    /// Not confirmed: a lost one only means the task may be redelivered, which workers tolerate.
    async fn keep_alive(&self) -> Result<()> {
        self.message.ack_with(AckKind::Progress).await.map_err(|e| BusError::PublishFailed {
            subject: format!("in-progress ack of {}", self.queue.stream_name()),
            reason: e.to_string(),
        })
    }
}

/// A transient message ([`Bus::publish_transient`]): nothing to acknowledge; a message given up on is
/// simply gone, and its producer sends it again.
pub(super) struct TransientDelivery {
    pub(super) payload: Bytes,
}

#[async_trait]
impl Delivery for TransientDelivery {
    fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Commits travel only through JetStream, on the commit subject.
    fn commit_allowed(&self) -> bool {
        false
    }

    async fn ack(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    async fn nak(self: Box<Self>, _delay: Duration) -> Result<()> {
        Ok(())
    }

    async fn term(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// A core NATS subscription; dropping it unsubscribes.
pub(super) struct NatsEvents {
    pub(super) subscriber: async_nats::Subscriber,
}

#[async_trait]
impl EventStream for NatsEvents {
    async fn next(&mut self) -> Option<Bytes> {
        self.subscriber.next().await.map(|message| message.payload)
    }
}
