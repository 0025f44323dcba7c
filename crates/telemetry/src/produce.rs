//! Producers polled by a thread of their own that waits a second per poll: [`poll_in_thread`]
//! for any producer, and [`AckedProducer`], whose records' acknowledgements are awaited (what
//! rdkafka's `FutureProducer` does).
//!
//! Why not rdkafka's own thread (`ThreadedProducer`, inside `FutureProducer` too): its poll
//! waits 100 ms, and rdkafka's poll rounds what is left of a wait down to whole milliseconds,
//! so it spins through the last one. That is ~1 % of a core per producer, idle or not: an idle
//! delivery worker took 36 ticks of CPU in 30 s, nearly all in its dead-letter producer's
//! polling thread. A wait of a second spins a tenth as long; events (acknowledgements, failed
//! records' reports) are served as they come either way.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::config::FromClientConfigAndContext as _;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use tokio::sync::oneshot;

/// How long one poll of a producer waits for its events.
pub const POLL_WAIT: Duration = Duration::from_secs(1);

/// Polls `producer(owner)` in a thread named `name` for as long as `owner` is in use elsewhere,
/// each poll waiting up to [`POLL_WAIT`], and calls `after_poll` after each. The thread keeps
/// `owner` only during a poll: dropped everywhere else, it is gone within one.
pub fn poll_in_thread<T, C>(
    name: &str,
    owner: &Arc<T>,
    producer: fn(&T) -> &BaseProducer<C>,
    mut after_poll: impl FnMut(&T) + Send + 'static,
) -> KafkaResult<()>
where
    T: Send + Sync + 'static,
    C: ProducerContext + 'static,
{
    let owner: Weak<T> = Arc::downgrade(owner);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            while let Some(owner) = owner.upgrade() {
                producer(&owner).poll(POLL_WAIT);
                after_poll(&owner);
            }
        })
        .map(drop)
        .map_err(|e| KafkaError::ClientCreation(format!("cannot start the thread {name}: {e}")))
}

/// Hands each record's outcome to whoever awaits it ([`Acked`]).
#[derive(Debug)]
pub struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<oneshot::Sender<KafkaResult<()>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Self::DeliveryOpaque) {
        // Nobody waiting any more is no one to tell.
        let _ = ack.send(result.as_ref().map(drop).map_err(|(e, _)| e.clone()));
    }
}

/// A producer whose every record's acknowledgement by the broker (or failure) can be awaited.
pub struct AckedProducer {
    producer: Arc<BaseProducer<Acks>>,
}

impl std::fmt::Debug for AckedProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckedProducer").finish_non_exhaustive()
    }
}

impl AckedProducer {
    /// A producer of `config`, polled by a thread named `thread_name` until it is dropped.
    pub fn new(config: &ClientConfig, thread_name: &str) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, Acks)?);
        poll_in_thread(thread_name, &producer, |p| p, |_| {})?;
        Ok(Self { producer })
    }

    /// Queues `payload` keyed by `key` for `topic`: the returned future says whether the
    /// broker acknowledged it. Fails at once when the producer cannot take it (its queue is
    /// full, the record is too large).
    pub fn send(&self, topic: &str, key: &[u8], payload: &[u8]) -> KafkaResult<Acked> {
        let (ack, acked) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(topic, Box::new(ack))
            .key(key)
            .payload(payload);
        match self.producer.send(record) {
            Ok(()) => Ok(Acked(acked)),
            Err((error, _)) => Err(error),
        }
    }

    /// Waits up to `timeout` for every queued record to be acknowledged or to fail.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(timeout)
    }
}

/// A queued record's outcome: `Ok` once the broker acknowledged it.
#[derive(Debug)]
pub struct Acked(oneshot::Receiver<KafkaResult<()>>);

impl Future for Acked {
    type Output = KafkaResult<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            // The producer went away with the record (it is dropped at shutdown).
            .map(|outcome| outcome.unwrap_or(Err(KafkaError::Canceled)))
    }
}

#[cfg(test)]
mod tests;
