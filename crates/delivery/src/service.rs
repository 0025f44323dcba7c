//! Builds the running service from a validated config: metrics, one sender per destination,
//! the dead-letter writer, and an input pipeline per topic (real-time, and the lower-priority
//! batch lane with its own consumer and lanes, so a bulk backlog never delays real time).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use telemetry::watch::Files;
use telemetry::{KafkaSettings, ServiceRuntime};

use crate::config::{AuthConfig, DeliveryConfig};
use crate::consumer::{InputPipeline, Role, Shared};
use crate::dead_letter::DeadLetterWriter;
use crate::delivery_log::DeliveryLog;
use crate::metrics::Metrics;
use crate::order::Order;
use crate::sender::DestinationSender;

/// Senders for the config's destinations and the dead-letter writer, reporting to `metrics`.
/// Blocks while the delivery log's writer reads its topic's partitions (up to 10 s).
pub fn build_shared(
    config: &DeliveryConfig,
    kafka: &KafkaSettings,
    metrics: &Metrics,
) -> anyhow::Result<Shared> {
    let log = match &config.kafka.delivery_log_topic {
        Some(topic) => Some(
            DeliveryLog::start(
                kafka,
                topic,
                metrics.log_records.clone(),
                metrics.log_dropped.clone(),
            )
            .with_context(|| format!("cannot start the delivery log writer to {topic}"))?,
        ),
        None => None,
    };
    let senders = config
        .destinations
        .iter()
        .map(|destination| build_sender(destination, metrics, log.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let dead_letters = Arc::new(
        DeadLetterWriter::new(kafka, &config.kafka.dlq_topic)
            .context("cannot create the dead-letter producer")?,
    );
    Ok(Shared {
        senders,
        log,
        dead_letters,
        metrics: metrics.clone(),
        budget: crate::budget::QueueBudget::new(config.queue_budget_bytes),
        order: config.kafka.batch_topic.as_ref().map(|_| Order::default()),
        liveness: None,
    })
}

/// The sender of one destination, with the warnings its config deserves at every start.
fn build_sender(
    destination: &Arc<crate::config::DestinationConfig>,
    metrics: &Metrics,
    log: Option<&Arc<DeliveryLog>>,
) -> Result<Arc<DestinationSender>, crate::sender::SenderBuildError> {
    if destination.dangerous_allow_http {
        let token_url = match &destination.auth {
            AuthConfig::OAuth2(oauth) => Some(oauth.token_url.as_str()),
            AuthConfig::None | AuthConfig::Hmac(_) => None,
        };
        tracing::warn!(destination = destination.id, url = %destination.url, token_url, "dangerous_allow_http is set: this destination (and its OAuth token endpoint) may be sent data and credentials over plain HTTP, unencrypted and unauthenticated. Use it for tests and local demos only.");
    }
    if matches!(destination.auth, AuthConfig::None) {
        tracing::warn!(
            destination = destination.id,
            "No auth configured: requests to this destination are neither signed nor authenticated."
        );
    }
    DestinationSender::new(
        destination.clone(),
        metrics.destination(destination.id, destination.max_backlog_age),
        log.filter(|_| destination.delivery_log).cloned(),
    )
    .map(Arc::new)
}

/// The senders for a reloaded config: a destination whose config is unchanged keeps its
/// sender (connections, token, circuit, everything in its lanes); any other gets a new one.
fn reconcile(
    running: &[Arc<DestinationSender>],
    config: &DeliveryConfig,
    metrics: &Metrics,
    log: Option<&Arc<DeliveryLog>>,
) -> anyhow::Result<Vec<Arc<DestinationSender>>> {
    config
        .destinations
        .iter()
        .map(
            |destination| match running.iter().find(|s| s.config.id == destination.id) {
                Some(sender) if *sender.config == **destination => Ok(sender.clone()),
                _ => Ok(build_sender(destination, metrics, log)?),
            },
        )
        .collect()
}

/// Fails with the fix when a topic the service needs does not exist.
pub async fn require_topics(kafka: &KafkaSettings, topics: &[&str]) -> anyhow::Result<()> {
    let kafka = kafka.clone();
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        kafka
            .require_topics(&names)
            .map(drop)
            .map_err(anyhow::Error::msg)
    })
    .await?
}

/// Fails with the fix when the batch topic's partition count differs from the real-time
/// topic's: a user must be on the same partition number in both, so that one worker reads
/// both topics of a user (per-user order across them, see `order`).
async fn require_equal_partitions(
    kafka: &KafkaSettings,
    topic: &str,
    batch_topic: &str,
) -> anyhow::Result<()> {
    let kafka = kafka.clone();
    let names = [topic.to_owned(), batch_topic.to_owned()];
    let counts = tokio::task::spawn_blocking(move || {
        kafka
            .require_topics(&[&names[0], &names[1]])
            .map_err(anyhow::Error::msg)
    })
    .await??;
    if counts[0] != counts[1] {
        anyhow::bail!(
            "kafka.batch_topic: `{batch_topic}` has {} partitions and kafka.topic `{topic}` has {}: they must be equal, so that \
             a user's changes on both are read by one worker (per-user order across them); recreate `{batch_topic}` with {} \
             partitions while it is empty (adding partitions to a topic in use moves users to other partitions)",
            counts[1],
            counts[0],
            counts[0]
        );
    }
    Ok(())
}

/// Runs delivery until SIGTERM, then drains every pipeline. When the config file, or a file
/// it names (a secret, a CA bundle), changes and the new config is valid, the pipelines apply
/// its destinations without stopping: unchanged destinations go on untouched, a changed one (a
/// rotated secret too) restarts from its position, so its next request uses the new secret; a
/// removed one stops, an added one starts. A change of the `kafka:` block (topics, groups,
/// timing) drains the pipelines and starts them again. An invalid new config is rejected with
/// a log line and the running config stays in force.
pub async fn run(
    config_path: &Path,
    mut config: DeliveryConfig,
    runtime: &ServiceRuntime,
) -> anyhow::Result<()> {
    let metrics = Metrics::register(&runtime.registry).context("cannot register metrics")?;
    // What is running, as it was read: a change after reading is seen, never skipped.
    let mut loaded = config.files.clone();
    loop {
        let generation = runtime.shutdown.child_token();
        let (mut running, reconfigurers, mut senders, log, budget) =
            start_generation(&config, runtime, &metrics, &generation).await?;
        let mut backfills = crate::resync::backfill::Backfills::start(
            &runtime.kafka,
            &config.kafka,
            &metrics,
            &generation,
            &senders,
        );
        let (mut failure, mut restart, mut watching) = (None, None, true);
        loop {
            tokio::select! {
                ended = running.join_next() => {
                    let Some(ended) = ended else { break };
                    // A pipeline that fails makes the process unready, stops the others
                    // (they drain) and exits non-zero: its partitions move to a healthy
                    // process instead of freezing here.
                    if let Err(error) = ended.context("an input pipeline panicked").and_then(|r| r)
                        && failure.is_none()
                    {
                        runtime.health.set_not_ready(format!("{error:#}"));
                        generation.cancel();
                        failure = Some(error);
                    }
                }
                change = watch_config(config_path, &loaded, &generation), if watching => {
                    let Some((seen, new_config)) = change else {
                        watching = false; // shutting down: the pipelines drain
                        continue;
                    };
                    tracing::info!(file = %config_path.display(), destinations = new_config.destinations.len(), "Config reloaded.");
                    if new_config.kafka != config.kafka {
                        tracing::info!("The kafka block changed: the pipelines drain and start again with it.");
                        restart = Some(new_config);
                        watching = false;
                        generation.cancel();
                        continue;
                    }
                    // A new sender's HTTPS client reads the system's root certificates
                    // from disk: that blocks.
                    let (running, built) = (senders.clone(), (metrics.clone(), log.clone()));
                    let reconciled = tokio::task::spawn_blocking(move || {
                        reconcile(&running, &new_config, &built.0, built.1.as_ref())
                            .map(|next| (next, new_config))
                    })
                    .await
                    .context("building the senders panicked")
                    .and_then(|reconciled| reconciled);
                    match reconciled {
                        Ok((next, new_config)) => {
                            for pipeline in &reconfigurers {
                                let _ = pipeline.send(next.clone());
                            }
                            backfills.apply(&next);
                            budget.set_capacity(new_config.queue_budget_bytes);
                            senders = next;
                            loaded = new_config.files.clone();
                            config = new_config;
                        }
                        Err(error) => {
                            tracing::error!(error = %format!("{error:#}"), "The changed config cannot be applied; the running config stays in force.");
                            loaded = seen;
                        }
                    }
                }
            }
        }
        backfills.stopped().await;
        if let Some(log) = &log {
            log.flush(std::time::Duration::from_secs(5));
        }
        if let Some(error) = failure {
            return Err(error);
        }
        match restart {
            Some(new_config) if !runtime.shutdown.is_cancelled() => {
                loaded = new_config.files.clone();
                config = new_config;
            }
            _ => return Ok(()),
        }
    }
}

/// Resolves with a new valid config when the config file or a file it names (a secret, a CA
/// bundle) changes, with the files as they were seen changed (`None` when `stop` is
/// cancelled). An invalid change is logged and waited past.
async fn watch_config(
    path: &Path,
    current: &Files,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<(Files, DeliveryConfig)> {
    let mut current = current.clone();
    loop {
        let seen = current.changed(stop).await?;
        let changed: Vec<_> = seen
            .changed_since(&current)
            .map(|p| p.display().to_string())
            .collect();
        tracing::info!(?changed, "A config file changed; reading the config again.");
        // Reading the files (the config, the secrets and CA bundles it names) blocks.
        let owned = path.to_owned();
        let loaded = tokio::task::spawn_blocking(move || DeliveryConfig::load(&owned))
            .await
            .map_err(|panicked| panicked.to_string())
            .and_then(|loaded| loaded.map_err(|invalid| invalid.to_string()));
        match loaded {
            Ok(config) => return Some((seen, config)),
            Err(error) => {
                tracing::error!(%error, "The changed config is invalid and was rejected; the running config stays in force.");
                current = seen;
            }
        }
    }
}

/// The running pipelines of one `kafka:` config, where to send them reloaded destination
/// lists, and the senders they run with.
type Generation = (
    tokio::task::JoinSet<anyhow::Result<()>>,
    Vec<tokio::sync::mpsc::UnboundedSender<Vec<Arc<DestinationSender>>>>,
    Vec<Arc<DestinationSender>>,
    Option<Arc<DeliveryLog>>,
    Arc<crate::budget::QueueBudget>,
);

async fn start_generation(
    config: &DeliveryConfig,
    runtime: &ServiceRuntime,
    metrics: &Metrics,
    generation: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Generation> {
    let mut topics = vec![config.kafka.topic.as_str(), config.kafka.dlq_topic.as_str()];
    topics.extend(config.kafka.batch_topic.as_deref());
    topics.extend(config.kafka.delivery_log_topic.as_deref());
    require_topics(&runtime.kafka, &topics).await?;

    // Off the runtime: the delivery log's writer asks for its topic's partitions.
    let mut shared = {
        let (config, kafka, metrics) = (config.clone(), runtime.kafka.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || build_shared(&config, &kafka, &metrics)).await??
    };
    shared.liveness = Some(runtime.health.liveness().clone());
    // The batch pipeline first: the real-time one's rebalances assign its partitions.
    let batch = match &config.kafka.batch_topic {
        Some(batch_topic) => {
            require_equal_partitions(&runtime.kafka, &config.kafka.topic, batch_topic).await?;
            Some(InputPipeline::start(
                &runtime.kafka,
                &config.kafka,
                batch_topic,
                &config.kafka.batch_group_id,
                shared.clone(),
                Role::Batch,
            )?)
        }
        None => None,
    };
    let mut pipelines = vec![InputPipeline::start(
        &runtime.kafka,
        &config.kafka,
        &config.kafka.topic,
        &config.kafka.group_id,
        shared.clone(),
        Role::RealTime {
            follower: batch.as_ref().map(InputPipeline::follower),
        },
    )?];
    pipelines.extend(batch);
    runtime.health.set_ready();
    tracing::info!(destinations = shared.senders.len(), group = %config.kafka.group_id, "Delivery is running.");
    let reconfigurers = pipelines.iter().map(InputPipeline::reconfigurer).collect();
    let running = pipelines
        .into_iter()
        .map(|pipeline| pipeline.run(generation.clone()))
        .collect();
    Ok((
        running,
        reconfigurers,
        shared.senders,
        shared.log,
        shared.budget,
    ))
}
