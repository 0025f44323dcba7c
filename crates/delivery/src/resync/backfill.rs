//! `backfill: true`: a destination that asks for it gets every current membership of its
//! segments once, from the running service, in the background — the same resync as
//! `delivery resync`, in consumer group `<kafka.group_id>-backfill-<D>` *subscribed* to the
//! changelog, so the delivery workers share its partitions and each does its share once. A
//! partition committed complete is skipped, so a restart (or a config reload) sends nothing
//! again. Its users go through batch-priority lanes of the process's own sender for the
//! destination, which yield the rate limit to real time: live traffic never waits for it.
//!
//! A backfill that fails (the changelog cannot be read) is logged at ERROR and tried again a
//! minute later while the destination asks for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use telemetry::KafkaSettings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::dead_letter::DeadLetterWriter;
use crate::metrics::Metrics;
use crate::resync::progress::Progress;
use crate::resync::{Ending, Job, Membership, SegmentFilter};
use crate::sender::DestinationSender;

/// How long a failed backfill waits before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The backfills of one service generation (one `kafka:` config).
#[derive(Debug)]
pub struct Backfills {
    kafka: KafkaSettings,
    config: KafkaConfig,
    changelog_topic: String,
    metrics: Metrics,
    /// The generation's: cancelled when the service stops or the `kafka:` block changes.
    stop: CancellationToken,
    dead_letters: Option<Arc<DeadLetterWriter>>,
    running: HashMap<u64, Running>,
    /// Backfills stopped by a config change, still finishing what they sent.
    stopping: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Running {
    sender: Arc<DestinationSender>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Backfills {
    /// Starts a backfill for each of `senders` whose destination asks for one. The changelog
    /// topic is the qualifier's: `kafka.changelog_topic` (`KAFKA_CHANGELOG_TOPIC`).
    pub fn start(
        kafka: &KafkaSettings,
        config: &KafkaConfig,
        metrics: &Metrics,
        stop: &CancellationToken,
        senders: &[Arc<DestinationSender>],
    ) -> Self {
        let mut backfills = Self {
            kafka: kafka.clone(),
            config: config.clone(),
            changelog_topic: config.changelog_topic.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
            dead_letters: None,
            running: HashMap::new(),
            stopping: Vec::new(),
        };
        backfills.apply(senders);
        backfills
    }

    /// After a config reload: a destination that asks for a backfill and has none running with
    /// its sender gets one (a changed destination's starts again with its new sender, from the
    /// group's commits); one removed, or no longer asking, has its backfill stopped.
    pub fn apply(&mut self, senders: &[Arc<DestinationSender>]) {
        let wanted: HashMap<u64, &Arc<DestinationSender>> = senders
            .iter()
            .filter(|s| s.config.backfill)
            .map(|s| (s.config.id, s))
            .collect();
        let outdated: Vec<u64> = self
            .running
            .iter()
            .filter(|(id, r)| wanted.get(id).is_none_or(|s| !Arc::ptr_eq(s, &r.sender)))
            .map(|(&id, _)| id)
            .collect();
        for id in outdated {
            if let Some(running) = self.running.remove(&id) {
                running.stop.cancel();
                self.stopping.push(running.task);
            }
        }
        for (id, sender) in wanted {
            if !self.running.contains_key(&id)
                && let Some(running) = self.spawn(sender)
            {
                self.running.insert(id, running);
            }
        }
    }

    fn spawn(&mut self, sender: &Arc<DestinationSender>) -> Option<Running> {
        let dead_letters = match &self.dead_letters {
            Some(writer) => writer.clone(),
            None => match DeadLetterWriter::new(&self.kafka, &self.config.dlq_topic) {
                Ok(writer) => self.dead_letters.insert(Arc::new(writer)).clone(),
                Err(error) => {
                    tracing::error!(destination = sender.config.id, %error, "Cannot create the backfill's dead-letter producer; the backfill starts at the next config change or restart.");
                    return None;
                }
            },
        };
        let stop = self.stop.child_token();
        let plan = Plan {
            kafka: self.kafka.clone(),
            sender: sender.clone(),
            changelog_topic: self.changelog_topic.clone(),
            group: format!("{}-backfill-{}", self.config.group_id, sender.config.id),
            dead_letters,
            progress: Arc::new(Progress::new(&self.metrics, sender.config.id)),
            drain_timeout: self.config.drain_timeout,
        };
        let task = tokio::spawn(plan.run(stop.clone()));
        Some(Running {
            sender: sender.clone(),
            stop,
            task,
        })
    }

    /// Waits until every backfill stopped (they stop with the generation).
    pub async fn stopped(self) {
        let tasks = self.running.into_values().map(|r| r.task);
        for task in tasks.chain(self.stopping) {
            if let Err(error) = task.await {
                tracing::error!(%error, "A backfill task panicked.");
            }
        }
    }
}

/// Everything one destination's backfill needs.
#[derive(Debug)]
struct Plan {
    kafka: KafkaSettings,
    sender: Arc<DestinationSender>,
    changelog_topic: String,
    group: String,
    dead_letters: Arc<DeadLetterWriter>,
    progress: Arc<Progress>,
    drain_timeout: Duration,
}

impl Plan {
    /// Runs the backfill until it is complete or `stop` is cancelled, trying again after a
    /// failure.
    async fn run(self, stop: CancellationToken) {
        let id = self.sender.config.id;
        loop {
            let job = Job {
                sender: self.sender.clone(),
                filter: SegmentFilter::all(&self.sender.config),
                changelog_topic: self.changelog_topic.clone(),
                group: self.group.clone(),
                membership: Membership::Subscribed,
                dead_letters: self.dead_letters.clone(),
                progress: self.progress.clone(),
                drain_timeout: self.drain_timeout,
            };
            match crate::resync::run(job, &self.kafka, stop.clone()).await {
                Ok(Ending::Complete) => {
                    let done = self.progress.snapshot();
                    tracing::info!(destination = id, group = %self.group, users_sent = done.sent, users_delivered = done.delivered, "Backfill of destination complete.");
                    return;
                }
                Ok(Ending::AlreadyComplete { as_of_unix_ms }) => {
                    tracing::info!(destination = id, group = %self.group, complete_since = %model::rfc3339_ms(as_of_unix_ms), "Backfill of destination was complete already; nothing to send.");
                    return;
                }
                Ok(Ending::Interrupted) => return,
                Err(error) => {
                    tracing::error!(destination = id, topic = %self.changelog_topic, error = %format!("{error:#}"), "Backfill cannot go on; it tries again in a minute.");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY_AFTER) => {}
            }
        }
    }
}
