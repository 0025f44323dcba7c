//! How a resync's partitions finish: a pass whose users were all delivered (or
//! dead-lettered) opens a converge pass or is committed complete; every second the finished
//! prefix of each partition is committed; a stop drains the lanes (bounded) and commits what
//! is finished.

use anyhow::Context as _;
use rdkafka::consumer::Consumer as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Engine, GROUP_CHECK_INTERVAL, Step};
use crate::resync::partition::{Marker, Next, Phase};
use crate::resync::read::{self, KAFKA_TIMEOUT};
use crate::resync::{Ending, Membership};

impl Engine {
    /// Closes every pass whose users are finished: a converge pass follows, or the partition
    /// is complete. False when stopped meanwhile.
    pub(super) async fn settle(&mut self, stop: &CancellationToken) -> anyhow::Result<bool> {
        let settled: Vec<i32> = {
            let context = self.context();
            let table = context.watermarks.lock();
            context
                .runs()
                .iter()
                .filter(|&(&p, run)| table.lowest_position(p).is_some_and(|l| run.is_settled(l)))
                .map(|(&p, _)| p)
                .collect()
        };
        for partition in settled {
            let (topic, consumer) = (self.context().topic.clone(), self.consumer.clone());
            let (_, end) = tokio::task::spawn_blocking(move || {
                consumer.fetch_watermarks(&topic, partition, KAFKA_TIMEOUT)
            })
            .await
            .context("reading a partition's end panicked")?
            .with_context(|| format!("cannot read the end of changelog partition {partition}"))?;
            let next = match self.context().runs().get_mut(&partition) {
                Some(run) => (run.after_settled(end), run.pass, run.take_held()),
                None => continue,
            };
            match next {
                (Next::Pass { target }, pass, held) => {
                    tracing::debug!(
                        destination = self.sender.config.id,
                        partition,
                        pass,
                        target,
                        "Records were written since the last pass: a converge pass reads them."
                    );
                    self.consumer.resume(&self.context().list(&[partition]))?;
                    for record in held {
                        if let Step::Stop = self.take(partition, record, stop).await? {
                            return Ok(false);
                        }
                    }
                }
                (Next::Complete, _, _) => self.complete(partition).await?,
            }
        }
        Ok(true)
    }

    /// Commits the partition complete and stops tracking it.
    async fn complete(&mut self, partition: i32) -> anyhow::Result<()> {
        let context = self.context();
        let Some(offset) = context.runs().get(&partition).map(|r| r.target) else {
            return Ok(());
        };
        let marker = Marker::Complete {
            at_unix_ms: telemetry::clock::unix_ms(),
        }
        .metadata();
        let positions = vec![(partition, offset, marker)];
        self.commit(positions)
            .await
            .with_context(|| format!("cannot commit changelog partition {partition} complete"))?;
        let context = self.context();
        context.watermarks.lock().revoke(partition);
        context.progress.partition_done();
        self.next_group_check = Instant::now();
        let context = self.context();
        if context.announce {
            tracing::info!(destination = context.destination, topic = %context.topic, partition, offset, "Backfill of partition complete.");
        }
        Ok(())
    }

    /// Commits, for every partition not complete, what is finished (if it moved).
    pub(super) async fn commit_progress(&mut self) {
        let positions: Vec<_> = self
            .context()
            .progress_commits()
            .into_iter()
            .filter(|(p, o, m)| self.committed.get(p) != Some(&(*o, m.clone())))
            .collect();
        if let Err(error) = self.commit(positions).await {
            tracing::warn!(destination = self.sender.config.id, error = %format!("{error:#}"), "Cannot commit the resync's progress; trying again.");
        }
    }

    async fn commit(&mut self, positions: Vec<(i32, i64, String)>) -> anyhow::Result<()> {
        let consumer = self.consumer.clone();
        let done = positions.clone();
        tokio::task::spawn_blocking(move || {
            read::commit(&*consumer, &consumer.context().topic, &positions)
        })
        .await
        .context("a commit panicked")??;
        for (partition, offset, metadata) in done {
            self.committed.insert(partition, (offset, metadata));
        }
        Ok(())
    }

    /// Whether the run is over: every partition complete — for a backfill, its own and then
    /// the group's (until then it stays a member, ready to take over another worker's).
    pub(super) async fn is_done(&mut self) -> anyhow::Result<bool> {
        let (owned, all_complete) = {
            let runs = self.context().runs();
            (
                !runs.is_empty(),
                runs.values().all(|r| r.phase == Phase::Complete),
            )
        };
        if !all_complete {
            return Ok(false);
        }
        match self.membership {
            Membership::Assigned { .. } => Ok(owned),
            Membership::Subscribed if Instant::now() < self.next_group_check => Ok(false),
            Membership::Subscribed => {
                self.next_group_check = Instant::now() + GROUP_CHECK_INTERVAL;
                let consumer = self.consumer.clone();
                let complete = tokio::task::spawn_blocking(move || {
                    read::group_complete(&*consumer, &consumer.context().topic)
                })
                .await
                .context("reading the group's commits panicked")??;
                Ok(complete.is_some())
            }
        }
    }

    /// Stops reading, gives the users handed to the lanes `drain_timeout` to finish, and
    /// commits what is finished.
    pub(super) async fn interrupt(mut self) -> Ending {
        self.lanes.clear();
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while self.lane_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                destination = self.sender.config.id,
                drain_timeout_ms = self.drain_timeout.as_millis() as u64,
                "Users handed to the lanes did not finish in time; the next run sends them again."
            );
            self.lane_tasks.abort_all();
        }
        self.commit_progress().await;
        Ending::Interrupted
    }
}
