//! The single-host bus: bounded in-process channels with the same contract as the NATS one.
//!
//! Work queues are bounded `async_channel`-style queues (a tokio mpsc receiver shared by the workers behind a
//! mutex), so a fast producer waits for slow workers instead of growing memory. Nothing is persisted: in the
//! single-host mode every stage lives and dies with the process, and a crash fails the backup, which the
//! manifest-last rule makes harmless. `nak` puts the message back at the end of the queue.

use super::{Bus, BusError, Delivery, EventStream, Queue, Result, WorkStream};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, Mutex as AsyncMutex};

/// Messages a work queue holds before `publish_work` waits.
const QUEUE_DEPTH: usize = 32;
/// Events a slow subscriber may fall behind before it starts losing them (which events are allowed to do).
const EVENT_BACKLOG: usize = 4096;
/// The single-host bus carries chunks by reference; this only mirrors the limit of the deployed NATS config
/// so that a chunk size that works here also works on a fleet.
const LOCAL_MAX_PAYLOAD: usize = 8 * 1024 * 1024;
/// Subjects kept before those nobody listens to are dropped from the map.
const PRUNE_SUBJECTS_ABOVE: usize = 1024;

/// A queued message and how often it was delivered before.
type Queued = (Bytes, u32);

struct WorkChannel {
    tx: mpsc::Sender<Queued>,
    rx: Arc<AsyncMutex<mpsc::Receiver<Queued>>>,
}

/// An in-process [`Bus`]; clones share the same queues and subjects.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

/// Members of a queue group share one receiver, so each event reaches one of them.
type SharedReceiver = Arc<AsyncMutex<broadcast::Receiver<Bytes>>>;

struct Inner {
    queues: HashMap<Queue, WorkChannel>,
    subjects: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    /// (subject, group) -> the group's receiver.
    groups: Mutex<HashMap<(String, String), SharedReceiver>>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBus {
    pub fn new() -> Self {
        let queues = Queue::ALL
            .iter()
            .map(|q| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                (*q, WorkChannel { tx, rx: Arc::new(AsyncMutex::new(rx)) })
            })
            .collect();
        LocalBus {
            inner: Arc::new(Inner {
                queues,
                subjects: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn sender(&self, subject: &str) -> broadcast::Sender<Bytes> {
        let mut subjects = self.inner.subjects.lock().expect("bus subject map poisoned");
        // Reply subjects are used once. A subject nobody listens to holds nothing (a new subscriber only
        // sees what is sent after it subscribes), so dropping it changes nothing but the map's size.
        if subjects.len() >= PRUNE_SUBJECTS_ABOVE && !subjects.contains_key(subject) {
            subjects.retain(|_, tx| tx.receiver_count() > 0);
        }
        subjects.entry(subject.to_string()).or_insert_with(|| broadcast::channel(EVENT_BACKLOG).0).clone()
    }
}

struct LocalDelivery {
    payload: Bytes,
    /// Deliveries of this message so far, this one included.
    deliveries: u32,
    requeue: mpsc::Sender<Queued>,
}

#[async_trait]
impl Delivery for LocalDelivery {
    fn payload(&self) -> &Bytes {
        &self.payload
    }
    fn deliveries(&self) -> u32 {
        self.deliveries
    }
    async fn ack(self: Box<Self>) -> Result<()> {
        Ok(())
    }
    /// Requeued after `delay`, unless it was delivered [`crate::MAX_DELIVERIES`] times: then it is dropped,
    /// as NATS's `max_deliver` does.
    async fn nak(self: Box<Self>, delay: Duration) -> Result<()> {
        if self.deliveries >= crate::MAX_DELIVERIES {
            return Ok(());
        }
        let requeue = self.requeue.clone();
        let queued = (self.payload, self.deliveries);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = requeue.send(queued).await;
        });
        Ok(())
    }
    async fn term(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

struct LocalWork {
    rx: Arc<AsyncMutex<mpsc::Receiver<Queued>>>,
    requeue: mpsc::Sender<Queued>,
}

impl LocalWork {
    fn wrap(&self, (payload, before): Queued) -> Box<dyn Delivery> {
        Box::new(LocalDelivery { payload, deliveries: before + 1, requeue: self.requeue.clone() })
    }
}

#[async_trait]
impl WorkStream for LocalWork {
    async fn next(&mut self) -> Option<Result<Box<dyn Delivery>>> {
        let payload = self.rx.lock().await.recv().await?;
        Some(Ok(self.wrap(payload)))
    }
    async fn next_within(&mut self, wait: Duration) -> Result<Option<Box<dyn Delivery>>> {
        let mut rx = match tokio::time::timeout(wait, self.rx.lock()).await {
            Ok(rx) => rx,
            Err(_) => return Ok(None),
        };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(payload)) => Ok(Some(self.wrap(payload))),
            Ok(None) => Err(BusError::Closed),
            Err(_) => Ok(None),
        }
    }
}

struct LocalEvents {
    rx: Arc<AsyncMutex<broadcast::Receiver<Bytes>>>,
}

#[async_trait]
impl EventStream for LocalEvents {
    async fn next(&mut self) -> Option<Bytes> {
        let mut rx = self.rx.lock().await;
        loop {
            match rx.recv().await {
                Ok(b) => return Some(b),
                // A lagging subscriber loses events, as it would on NATS; the waiter's deadline copes.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish_work(&self, queue: Queue, payload: Bytes) -> Result<()> {
        if payload.len() > LOCAL_MAX_PAYLOAD {
            return Err(BusError::TooLarge { size: payload.len(), limit: LOCAL_MAX_PAYLOAD });
        }
        self.inner.queues[&queue].tx.send((payload, 0)).await.map_err(|_| BusError::Closed)
    }

    async fn work(&self, queue: Queue) -> Result<Box<dyn WorkStream>> {
        let ch = &self.inner.queues[&queue];
        Ok(Box::new(LocalWork { rx: ch.rx.clone(), requeue: ch.tx.clone() }))
    }

    async fn publish_event(&self, subject: &str, payload: Bytes) -> Result<()> {
        // No subscriber is not an error: events are best-effort.
        let _ = self.sender(subject).send(payload);
        Ok(())
    }

    async fn subscribe(&self, subject: &str, group: Option<&str>) -> Result<Box<dyn EventStream>> {
        let tx = self.sender(subject);
        let rx = match group {
            // Members of a group share one receiver, so each event reaches one of them.
            Some(group) => {
                let mut groups = self.inner.groups.lock().expect("bus group map poisoned");
                groups
                    .entry((subject.to_string(), group.to_string()))
                    .or_insert_with(|| Arc::new(AsyncMutex::new(tx.subscribe())))
                    .clone()
            }
            None => Arc::new(AsyncMutex::new(tx.subscribe())),
        };
        Ok(Box::new(LocalEvents { rx }))
    }

    async fn queue_depth(&self, queue: Queue) -> Result<u64> {
        let tx = &self.inner.queues[&queue].tx;
        Ok((tx.max_capacity() - tx.capacity()) as u64)
    }

    fn max_payload(&self) -> usize {
        LOCAL_MAX_PAYLOAD
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_is_shared_between_workers_and_nak_redelivers() {
        let bus = LocalBus::new();
        let mut w1 = bus.work(Queue::Seal).await.unwrap();
        let mut w2 = bus.work(Queue::Seal).await.unwrap();
        bus.publish_work(Queue::Seal, Bytes::from_static(b"a")).await.unwrap();
        bus.publish_work(Queue::Seal, Bytes::from_static(b"b")).await.unwrap();
        let a = w1.next().await.unwrap().unwrap();
        let b = w2.next().await.unwrap().unwrap();
        assert_eq!(a.payload().as_ref(), b"a");
        assert_eq!(b.payload().as_ref(), b"b");
        a.nak(Duration::ZERO).await.unwrap();
        let again = w2.next().await.unwrap().unwrap();
        assert_eq!(again.payload().as_ref(), b"a");
        assert!(w1.next_within(Duration::from_millis(20)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn queue_depth_counts_messages_not_yet_taken() {
        let bus = LocalBus::new();
        assert_eq!(bus.queue_depth(Queue::Upload).await.unwrap(), 0);
        bus.publish_work(Queue::Upload, Bytes::from_static(b"a")).await.unwrap();
        bus.publish_work(Queue::Upload, Bytes::from_static(b"b")).await.unwrap();
        assert_eq!(bus.queue_depth(Queue::Upload).await.unwrap(), 2);
        assert_eq!(bus.queue_depth(Queue::Seal).await.unwrap(), 0);
        let mut w = bus.work(Queue::Upload).await.unwrap();
        let a = w.next().await.unwrap().unwrap();
        assert_eq!(bus.queue_depth(Queue::Upload).await.unwrap(), 1);
        a.nak(Duration::ZERO).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while bus.queue_depth(Queue::Upload).await.unwrap() != 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a nak puts the message back");
    }

    #[tokio::test]
    async fn events_reach_every_plain_subscriber_and_one_group_member() {
        let bus = LocalBus::new();
        let mut s1 = bus.subscribe("x", None).await.unwrap();
        let mut s2 = bus.subscribe("x", None).await.unwrap();
        let mut g1 = bus.subscribe("x", Some("g")).await.unwrap();
        bus.publish_event("x", Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(s1.next().await.unwrap().as_ref(), b"1");
        assert_eq!(s2.next().await.unwrap().as_ref(), b"1");
        assert_eq!(g1.next().await.unwrap().as_ref(), b"1");
    }

    #[tokio::test]
    async fn subjects_used_once_do_not_pile_up_and_live_ones_keep_their_subscribers() {
        let bus = LocalBus::new();
        let mut kept = bus.subscribe("kept", None).await.unwrap();
        for n in 0..(3 * PRUNE_SUBJECTS_ABOVE) {
            let reply = format!("reply.{n}");
            let _answers = bus.subscribe(&reply, None).await.unwrap();
            bus.publish_event(&reply, Bytes::from_static(b"a")).await.unwrap();
        }
        assert!(bus.inner.subjects.lock().unwrap().len() <= PRUNE_SUBJECTS_ABOVE + 1);
        bus.publish_event("kept", Bytes::from_static(b"still here")).await.unwrap();
        assert_eq!(kept.next().await.unwrap().as_ref(), b"still here");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_message_is_redelivered_with_growing_pauses_until_the_bus_gives_up() {
        let bus = LocalBus::new();
        bus.publish_work(Queue::Seal, Bytes::from_static(b"m")).await.unwrap();
        let mut work = bus.work(Queue::Seal).await.unwrap();
        let mut pauses = Vec::new();
        let gave_up = loop {
            let d = work.next_within(Duration::from_secs(3600)).await.unwrap().expect("redelivered");
            match crate::give_back(d, false, Duration::from_secs(1)).await {
                crate::GivenBack::Redelivered { after } => pauses.push(after.as_secs()),
                other => break other,
            }
        };
        assert_eq!(gave_up, crate::GivenBack::GaveUp { deliveries: crate::MAX_DELIVERIES });
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(work.next_within(Duration::from_secs(3600)).await.unwrap().is_none(), "dropped for good");
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_drops_the_message_at_once() {
        let bus = LocalBus::new();
        bus.publish_work(Queue::Seal, Bytes::from_static(b"m")).await.unwrap();
        let mut work = bus.work(Queue::Seal).await.unwrap();
        let d = work.next().await.unwrap().unwrap();
        assert_eq!(d.deliveries(), 1);
        assert_eq!(crate::give_back(d, true, Duration::from_secs(1)).await, crate::GivenBack::Dropped);
        assert!(work.next_within(Duration::from_secs(3600)).await.unwrap().is_none());
    }
}
