//! Creating and checking the server-side objects a bus needs (work-queue streams and their one worker
//! consumer), apart from the bus's traffic: this runs once per connection, and its rules (which settings
//! are Strata's, which are edited in place, which are refused) are read on their own.

use super::*;

/// The stream configuration Strata needs for `queue`.
pub(super) fn stream_config(queue: Queue, max_payload: usize, replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: queue.stream_name().to_string(),
        subjects: queue.stream_subjects().iter().map(|s| s.to_string()).collect(),
        storage: StorageType::File,
        retention: RetentionPolicy::WorkQueue,
        // No size limits are set, so this only matters if an operator adds some: refusing new work then makes
        // the producer back off, where the default (discarding the oldest) would silently lose chunks.
        discard: DiscardPolicy::New,
        max_message_size: i32::try_from(max_payload).unwrap_or(i32::MAX),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Returns the stream's handle, which [`ensure_consumer`] uses rather than looking the stream up again: in a
/// cluster, a stream another process has just created exists for the metadata leader (which answers
/// creates) before its own replicas have elected a leader (which answers lookups), and a lookup meanwhile
/// says "stream not found" (error 10059), which made a service starting beside another exit.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    queue: Queue,
    max_payload: usize,
    replicas: usize,
) -> Result<jetstream::stream::Stream> {
    let name = queue.stream_name();
    let wanted = stream_config(queue, max_payload, replicas);
    let stream = js.get_or_create_stream(wanted.clone()).await.map_err(|e| {
        if e.kind() == jetstream::context::CreateStreamErrorKind::TimedOut {
            return setup_timed_out(&format!("creating or opening stream {name}"), &e);
        }
        BusError::Setup(format!(
            "cannot create or open JetStream stream {name}: {e}\nHINT: the server must be nats-server 2.10 or \
             later with JetStream enabled (`jetstream {{ store_dir: ... }}` or -js)"
        ))
    })?;
    let have = &stream.cached_info().config;
    // Before commits had their own subject, the upload stream took one; what it holds is still good.
    let older_subjects = queue == Queue::Upload && have.subjects == [LEGACY_UPLOAD_SUBJECT];
    if have.retention != wanted.retention
        || have.storage != wanted.storage
        || (have.subjects != wanted.subjects && !older_subjects)
    {
        return Err(BusError::Setup(format!(
            "JetStream stream {name} exists with retention {:?}, storage {:?}, subjects {:?}; Strata needs \
             {:?}, {:?}, {:?}\nHINT: it was not created by Strata; delete it once its messages are not needed \
             (nats CLI: `nats stream rm {name}`)",
            have.retention, have.storage, have.subjects, wanted.retention, wanted.storage, wanted.subjects
        )));
    }
    if have.max_message_size != wanted.max_message_size || have.num_replicas != wanted.num_replicas || older_subjects {
        // The server's max_payload, or the deployment's replica count, changed since the stream was created;
        // follow it (JetStream changes both in place, and the subjects too).
        let mut updated = have.clone();
        updated.max_message_size = wanted.max_message_size;
        updated.num_replicas = wanted.num_replicas;
        updated.subjects = wanted.subjects.clone();
        js.update_stream(&updated)
            .await
            .map_err(|e| BusError::Setup(format!("cannot update max_message_size, num_replicas or subjects of stream {name}: {e}")))?;
        tracing::info!(
            stream = name,
            max_message_size = wanted.max_message_size,
            replicas = wanted.num_replicas,
            "updated the stream's max message size and replicas"
        );
    }
    Ok(stream)
}

/// A JetStream API request made while connecting went unanswered. A server without JetStream says so at
/// once ("no responders"), so this is a server that is there but busy: in a cluster, typically one whose
/// members are still electing the leaders of streams just created, or that just lost a member. Reported as
/// [`BusError::Unreachable`] so that a starting service tries again instead of exiting.
pub(super) fn setup_timed_out(what: &str, e: &dyn std::fmt::Display) -> BusError {
    // The caller puts its URL in.
    BusError::Unreachable {
        url: String::new(),
        reason: format!(
            "{what}: {e} (a cluster may still be electing its stream leaders)\nHINT: a NATS user that may not \
             create Strata's streams and consumers (only the uploader's may, deploy/nats/accounts.conf) waits until \
             an uploader has connected once; a process whose nats.inbox_prefix is not the one its user may \
             subscribe to never hears back"
        ),
    }
}

pub(super) async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
    queue: Queue,
    options: &NatsOptions,
) -> Result<Consumer<pull::Config>> {
    let stream_name = queue.stream_name();
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        BusError::Setup(format!("cannot {what} consumer {WORKER_CONSUMER} on stream {stream_name}: {e}"))
    };
    let wanted = pull::Config {
        durable_name: Some(WORKER_CONSUMER.to_string()),
        description: Some("Strata workers of this stage; all share this one consumer".to_string()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_ack_pending: options.max_ack_pending,
        max_deliver: i64::from(crate::MAX_DELIVERIES),
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(WORKER_CONSUMER, wanted.clone())
        .await
        .map_err(|e| match e.kind() {
            jetstream::stream::ConsumerErrorKind::TimedOut => {
                setup_timed_out(&format!("creating or opening consumer {WORKER_CONSUMER} on stream {stream_name}"), &e)
            }
            _ => setup("create or open", &e),
        })?;
    let have = &consumer.cached_info().config;
    if have.ack_policy != AckPolicy::Explicit || !have.filter_subject.is_empty() || !have.filter_subjects.is_empty() {
        return Err(setup(
            "use",
            &format!(
                "it has ack policy {:?} and filter {:?}{:?}, Strata needs explicit acks and no filter",
                have.ack_policy, have.filter_subject, have.filter_subjects
            ),
        ));
    }
    if have.ack_wait == wanted.ack_wait && have.max_ack_pending == wanted.max_ack_pending && have.max_deliver == wanted.max_deliver {
        return Ok(consumer);
    }
    // Another deployment's settings (or an older version's): these are editable in place.
    let updated = stream.update_consumer(wanted).await.map_err(|e| setup("update", &e))?;
    tracing::info!(
        stream = stream_name,
        ack_wait = ?options.ack_wait,
        max_ack_pending = options.max_ack_pending,
        "updated the worker consumer's settings"
    );
    Ok(updated)
}
