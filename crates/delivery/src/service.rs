//! Builds the running service from a validated config: metrics, one sender per destination,
//! the dead-letter writer, and an input pipeline per topic (real-time, and the lower-priority
//! batch lane with its own consumer and lanes, so a bulk backlog never delays real time).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use telemetry::{KafkaSettings, ServiceRuntime};

use crate::config::{AuthConfig, DeliveryConfig};
use crate::consumer::{InputPipeline, Shared};
use crate::dead_letter::DeadLetterWriter;
use crate::metrics::Metrics;
use crate::sender::DestinationSender;

/// Senders for the config's destinations and the dead-letter writer, reporting to `metrics`.
pub fn build_shared(
    config: &DeliveryConfig,
    kafka: &KafkaSettings,
    metrics: &Metrics,
) -> anyhow::Result<Shared> {
    let senders = config
        .destinations
        .iter()
        .map(|destination| {
            if destination.dangerous_allow_http {
                let token_url = match &destination.auth {
                    AuthConfig::OAuth2(oauth) => Some(oauth.token_url.as_str()),
                    AuthConfig::None | AuthConfig::Hmac(_) => None,
                };
                tracing::warn!(destination = destination.id, url = %destination.url, token_url, "dangerous_allow_http is set: this destination (and its OAuth token endpoint) may be sent data and credentials over plain HTTP, unencrypted and unauthenticated. Use it for tests and local demos only.");
            }
            if matches!(destination.auth, AuthConfig::None) {
                tracing::warn!(destination = destination.id, "No auth configured: requests to this destination are neither signed nor authenticated.");
            }
            DestinationSender::new(destination.clone(), metrics.destination(destination.id, destination.max_backlog_age)).map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dead_letters = Arc::new(
        DeadLetterWriter::new(kafka, &config.kafka.dlq_topic)
            .context("cannot create the dead-letter producer")?,
    );
    Ok(Shared {
        senders,
        dead_letters,
        metrics: metrics.clone(),
    })
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

/// Runs delivery until SIGTERM, then drains every pipeline. When the config file changes and
/// the new one is valid, the pipelines drain (as on SIGTERM: finished offsets committed) and
/// start again with it; an invalid new file is rejected with a log line and the running
/// config stays in force.
pub async fn run(
    config_path: &Path,
    mut config: DeliveryConfig,
    runtime: &ServiceRuntime,
) -> anyhow::Result<()> {
    let metrics = Metrics::register(&runtime.registry).context("cannot register metrics")?;
    let mut loaded = std::fs::read(config_path).unwrap_or_default();
    loop {
        let generation = runtime.shutdown.child_token();
        let watcher = tokio::spawn(watch_config(
            config_path.to_owned(),
            loaded.clone(),
            generation.clone(),
        ));
        run_generation(&config, runtime, &metrics, generation).await?;
        watcher.abort();
        let Ok(Some((bytes, new_config))) = watcher.await else {
            return Ok(());
        };
        if runtime.shutdown.is_cancelled() {
            return Ok(());
        }
        tracing::info!(file = %config_path.display(), destinations = new_config.destinations.len(), "Config reloaded.");
        (loaded, config) = (bytes, new_config);
    }
}

/// Resolves with a new valid config (and cancels `generation`) when the file changes; an
/// invalid change is logged and waited past.
async fn watch_config(
    path: std::path::PathBuf,
    mut current: Vec<u8>,
    generation: tokio_util::sync::CancellationToken,
) -> Option<(Vec<u8>, DeliveryConfig)> {
    loop {
        let bytes = telemetry::watch::file_change(&path, &current, &generation).await?;
        match DeliveryConfig::parse(&path, &String::from_utf8_lossy(&bytes), &|name| {
            std::env::var(name).ok()
        }) {
            Ok(config) => {
                generation.cancel();
                return Some((bytes, config));
            }
            Err(error) => {
                tracing::error!(%error, "The changed config file is invalid and was rejected; the running config stays in force.");
                current = bytes;
            }
        }
    }
}

async fn run_generation(
    config: &DeliveryConfig,
    runtime: &ServiceRuntime,
    metrics: &Metrics,
    generation: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut topics = vec![config.kafka.topic.as_str(), config.kafka.dlq_topic.as_str()];
    topics.extend(config.kafka.batch_topic.as_deref());
    require_topics(&runtime.kafka, &topics).await?;

    let shared = build_shared(config, &runtime.kafka, metrics)?;
    let mut pipelines = vec![InputPipeline::start(
        &runtime.kafka,
        &config.kafka,
        &config.kafka.topic,
        &config.kafka.group_id,
        shared.clone(),
        true,
    )?];
    if let Some(batch_topic) = &config.kafka.batch_topic {
        pipelines.push(InputPipeline::start(
            &runtime.kafka,
            &config.kafka,
            batch_topic,
            &config.kafka.batch_group_id,
            shared.clone(),
            false,
        )?);
    }
    runtime.health.set_ready();
    tracing::info!(destinations = shared.senders.len(), group = %config.kafka.group_id, "Delivery is running.");

    let mut running: tokio::task::JoinSet<_> = pipelines
        .into_iter()
        .map(|pipeline| pipeline.run(generation.clone()))
        .collect();
    // A pipeline that fails makes the process unready, stops the others (they drain) and
    // exits non-zero: its partitions move to a healthy process instead of freezing here.
    let mut failure = None;
    while let Some(ended) = running.join_next().await {
        let result = ended
            .context("an input pipeline panicked")
            .and_then(|result| result);
        if let Err(error) = result
            && failure.is_none()
        {
            runtime.health.set_not_ready(format!("{error:#}"));
            generation.cancel();
            failure = Some(error);
        }
    }
    failure.map_or(Ok(()), Err)
}
