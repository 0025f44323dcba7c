//! The resync loop: changelog records → per-partition chunks (latest record per user) → the
//! user's view for the destination → the destination's lanes, with each record's offset
//! tracked until the lanes finish it; every second the finished prefix of each partition is
//! committed. A partition whose pass is read pauses; once its users are finished it either
//! opens a converge pass or is committed complete (see `settle` and `partition`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::{Message as _, Offset};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batcher::{EventSource, RoutedEvent};
use crate::lane::{Lane, lane_of};
use crate::resync::partition::{Fetched, Phase, Take};
use crate::resync::read::{ChangelogConsumer, KAFKA_TIMEOUT, ResyncContext};
use crate::resync::view::{SegmentFilter, SentUsers, view};
use crate::resync::{Ending, Job, Membership};
use crate::sender::{DestinationSender, Priority};

mod settle;

/// Records read per partition before they are routed (or sooner, on the next tick).
const CHUNK: usize = 500;
const TICK: Duration = Duration::from_millis(200);
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How often a backfill whose own partitions are complete asks whether the group's are.
const GROUP_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What the loop does next.
enum Step {
    Go,
    Stop,
    Done,
}

/// One resync's changelog consumer, lanes and what it sent.
pub(super) struct Engine {
    consumer: Arc<ChangelogConsumer>,
    sender: Arc<DestinationSender>,
    filter: SegmentFilter,
    membership: Membership,
    drain_timeout: Duration,
    lanes: Vec<mpsc::Sender<RoutedEvent>>,
    lane_tasks: JoinSet<()>,
    /// Per partition, what this run sent as 1 (kept across a rebalance: a partition that
    /// comes back still knows).
    sent: HashMap<i32, SentUsers>,
    /// What the broker confirmed as committed, per partition.
    committed: HashMap<i32, (i64, String)>,
    next_group_check: Instant,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("destination", &self.sender.config.id)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// The engine of `job`, its lanes started (`max_in_flight` of them, each queueing at most
    /// one batch, so a stop has little to finish).
    pub(super) fn new(job: Job, consumer: Arc<ChangelogConsumer>) -> Self {
        let sender = job.sender;
        let context = consumer.context().clone();
        let capacity = sender
            .config
            .batch
            .max_users
            .min(sender.config.queue_capacity)
            .max(1);
        let mut lane_tasks = JoinSet::new();
        let lanes = (0..sender.config.max_in_flight)
            .map(|_| {
                let (tx, rx) = mpsc::channel(capacity);
                lane_tasks.spawn(
                    Lane {
                        events: rx,
                        sender: sender.clone(),
                        dead_letters: job.dead_letters.clone(),
                        watermarks: Some((context.watermarks.clone(), 0)),
                        input_topic: Arc::from(job.changelog_topic.as_str()),
                        hold_transient: true,
                        priority: Priority::Batch,
                        outcomes: Some(job.progress.clone()),
                        heartbeat: None,
                    }
                    .run(),
                );
                tx
            })
            .collect();
        Self {
            consumer,
            sender,
            filter: job.filter,
            membership: job.membership,
            drain_timeout: job.drain_timeout,
            lanes,
            lane_tasks,
            sent: HashMap::new(),
            committed: HashMap::new(),
            next_group_check: Instant::now(),
        }
    }

    fn context(&self) -> &ResyncContext {
        self.consumer.context()
    }

    /// Reads, routes and commits until every partition is complete or `stop` is cancelled.
    pub(super) async fn run(mut self, stop: CancellationToken) -> anyhow::Result<Ending> {
        let consumer = self.consumer.clone();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_commit = Instant::now() + COMMIT_INTERVAL;
        loop {
            let step = tokio::select! {
                biased;
                () = stop.cancelled() => Step::Stop,
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let partition = message.partition();
                        let fetched = Fetched {
                            offset: message.offset(),
                            key: message.key().map(<[u8]>::to_vec),
                            payload: message.payload().map(<[u8]>::to_vec),
                        };
                        drop(message);
                        self.take(partition, fetched, &stop).await?
                    }
                    Err(error) => {
                        tracing::warn!(destination = self.sender.config.id, %error, "Cannot read the changelog; trying again.");
                        Step::Go
                    }
                },
                _ = tick.tick() => self.on_tick(&stop, &mut next_commit).await?,
            };
            match step {
                Step::Go => {}
                Step::Stop => return Ok(self.interrupt().await),
                Step::Done => break,
            }
        }
        self.lanes.clear();
        while self.lane_tasks.join_next().await.is_some() {}
        Ok(Ending::Complete)
    }

    /// Indexes, reads, holds or ignores one fetched record; routes the partition's chunk when
    /// it is full or the pass's end is reached.
    async fn take(
        &mut self,
        partition: i32,
        fetched: Fetched,
        stop: &CancellationToken,
    ) -> anyhow::Result<Step> {
        // (flush the chunk, the pass's end was reached, the main pass's keys are indexed)
        let (flush, reached, indexed) = {
            let context = self.consumer.context();
            let mut runs = context.runs();
            let Some(run) = runs.get_mut(&partition) else {
                return Ok(Step::Go);
            };
            match run.classify(fetched.offset) {
                Take::Ignore => return Ok(Step::Go),
                Take::Index => {
                    run.index(fetched.offset, fetched.key.as_deref());
                    (false, false, run.is_indexed(None))
                }
                Take::Hold => {
                    run.hold(fetched);
                    let reached = run.phase == Phase::Reading;
                    (reached, reached, false)
                }
                Take::Read => {
                    context.progress.read(1);
                    let offset = fetched.offset;
                    if let Err(error) = run.read(fetched) {
                        tracing::warn!(destination = context.destination, topic = %context.topic, partition, offset, %error, "Skipping a changelog record that is not a user state.");
                    }
                    let reached = run.is_read(None);
                    (reached || run.chunk_len() >= CHUNK, reached, false)
                }
            }
        };
        if indexed {
            self.start_reading(partition).await?;
        }
        if flush && !self.flush(partition, stop).await {
            return Ok(Step::Stop);
        }
        if reached {
            self.reach(partition);
        }
        Ok(Step::Go)
    }

    /// The main pass's keys are indexed: its records are read from its start (a pass without
    /// a record settles at once).
    async fn start_reading(&self, partition: i32) -> anyhow::Result<()> {
        let start = match self.context().runs().get_mut(&partition) {
            Some(run) => run.start_reading(),
            None => return Ok(()),
        };
        let Some(start) = start else {
            self.pause(partition);
            return Ok(());
        };
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || {
            let topic = &consumer.context().topic;
            consumer.seek(topic, partition, Offset::Offset(start), KAFKA_TIMEOUT)
        })
        .await
        .context("a seek panicked")?
        .with_context(|| {
            format!("cannot read changelog partition {partition} again from offset {start}")
        })
    }

    /// Routes the partition's chunk: each record's offset is tracked, and the user's view (if
    /// there is anything to send) goes to the user's lane. False when stopped meanwhile.
    async fn flush(&mut self, partition: i32, stop: &CancellationToken) -> bool {
        let routed = self.route(partition);
        for event in routed {
            let lane = lane_of(&event.update, self.lanes.len());
            self.sender.metrics.queue_depth.inc();
            let sent = tokio::select! {
                biased;
                () = stop.cancelled() => false,
                sent = self.lanes[lane].send(event) => sent.is_ok(),
            };
            if !sent {
                self.sender.metrics.queue_depth.dec();
                return false;
            }
            self.context().progress.sent(1);
        }
        true
    }

    /// The chunk's users to send, their offsets tracked (every record's, sent or not).
    fn route(&mut self, partition: i32) -> Vec<RoutedEvent> {
        let context = self.consumer.context();
        let Some(entries) = context.runs().get_mut(&partition).map(|run| run.flush()) else {
            return Vec::new();
        };
        let now = telemetry::clock::unix_ms();
        let data_partner = self.sender.config.data_partner;
        let sent = self.sent.entry(partition).or_default();
        let mut table = context.watermarks.lock();
        let mut routed = Vec::new();
        for (offset, entry) in entries {
            let update = entry.and_then(|(user, record)| {
                view(&user, &record, &self.filter, data_partner, sent, now)
            });
            let mut targets = if update.is_some() {
                vec![0]
            } else {
                Vec::new()
            };
            let Some(assignment) = table.track(partition, offset, &mut targets) else {
                return Vec::new(); // revoked meanwhile: its next owner reads it
            };
            routed.extend(update.map(|update| RoutedEvent {
                held: Default::default(),
                update: update.into(),
                source: Some(EventSource {
                    assignment,
                    offset,
                    catch_up: false,
                    written_unix_ms: None,
                }),
            }));
        }
        routed
    }

    /// The pass's end was reached: the partition pauses until its users are finished.
    fn reach(&self, partition: i32) {
        if let Some(run) = self.context().runs().get_mut(&partition) {
            run.reach();
        }
        self.pause(partition);
    }

    fn pause(&self, partition: i32) {
        if let Err(error) = self.consumer.pause(&self.context().list(&[partition])) {
            tracing::debug!(partition, %error, "Cannot pause a changelog partition; what it fetches is held.");
        }
    }

    async fn on_tick(
        &mut self,
        stop: &CancellationToken,
        next_commit: &mut Instant,
    ) -> anyhow::Result<Step> {
        if let Some(reason) = self.context().fatal() {
            anyhow::bail!(reason);
        }
        let positions = self.consumer.position().unwrap_or_default();
        let position = |p: i32| {
            positions
                .find_partition(&self.context().topic, p)
                .and_then(|e| e.offset().to_raw())
        };
        let indexed: Vec<i32> = self
            .context()
            .runs()
            .iter()
            .filter(|(p, run)| run.is_indexed(position(**p)))
            .map(|(&p, _)| p)
            .collect();
        for partition in indexed {
            self.start_reading(partition).await?;
        }
        let reading: Vec<(i32, bool)> = self
            .context()
            .runs()
            .iter()
            .filter(|(_, run)| run.phase == Phase::Reading)
            .map(|(&p, run)| (p, run.is_read(position(p))))
            .collect();
        for (partition, reached) in reading {
            if !self.flush(partition, stop).await {
                return Ok(Step::Stop);
            }
            if reached {
                self.reach(partition);
            }
        }
        if !self.settle(stop).await? {
            return Ok(Step::Stop);
        }
        if Instant::now() >= *next_commit {
            self.commit_progress().await;
            *next_commit = Instant::now() + COMMIT_INTERVAL;
        }
        Ok(if self.is_done().await? {
            Step::Done
        } else {
            Step::Go
        })
    }
}
