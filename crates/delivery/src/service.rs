//! Builds the running service from a validated config: metrics, one sender per destination,
//! the dead-letter writer, and an input pipeline per topic (real-time, and the lower-priority
//! batch lane with its own consumer and lanes, so a bulk backlog never delays real time).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use telemetry::{KafkaSettings, ServiceRuntime};

use crate::config::{AuthConfig, DeliveryConfig};
use crate::consumer::{InputPipeline, Shared};
use crate::dead_letter::DeadLetterWriter;
use crate::metrics::Metrics;
use crate::sender::DestinationSender;

/// Metrics, senders and the dead-letter writer, built once per process.
pub fn build_shared(
    config: &DeliveryConfig,
    kafka: &KafkaSettings,
    registry: &prometheus::Registry,
) -> anyhow::Result<Shared> {
    let metrics = Metrics::register(registry).context("cannot register metrics")?;
    let senders = config
        .destinations
        .iter()
        .map(|destination| {
            if destination.allow_insecure_http {
                tracing::warn!(destination = destination.id, url = %destination.url, "allow_insecure_http is set: this destination may receive data over plain HTTP.");
            }
            if matches!(destination.auth, AuthConfig::None) {
                tracing::warn!(destination = destination.id, "No auth configured: requests to this destination are neither signed nor authenticated.");
            }
            DestinationSender::new(destination.clone(), metrics.destination(destination.id)).map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dead_letters = Arc::new(
        DeadLetterWriter::new(kafka, &config.kafka.dlq_topic)
            .context("cannot create the dead-letter producer")?,
    );
    Ok(Shared {
        senders,
        dead_letters,
        metrics,
    })
}

/// Fails with the fix when a topic the service needs does not exist (consumers do not create
/// topics, and a typo would otherwise wait forever).
pub async fn require_topics(kafka: &KafkaSettings, topics: &[&str]) -> anyhow::Result<()> {
    let kafka = kafka.clone();
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = kafka.client_config("delivery-probe").create()?;
        for topic in &topics {
            let metadata = probe.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let exists = metadata.topics().first().is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
            anyhow::ensure!(
                exists,
                "topic `{topic}` does not exist on {}: create it (make kafka-up creates the defaults) or set kafka.* in the config",
                kafka.brokers
            );
        }
        Ok(())
    })
    .await?
}

/// Runs delivery until SIGTERM, then drains every pipeline.
pub async fn run(config: DeliveryConfig, runtime: &ServiceRuntime) -> anyhow::Result<()> {
    let mut topics = vec![config.kafka.topic.as_str(), config.kafka.dlq_topic.as_str()];
    topics.extend(config.kafka.batch_topic.as_deref());
    require_topics(&runtime.kafka, &topics).await?;

    let shared = build_shared(&config, &runtime.kafka, &runtime.registry)?;
    let mut pipelines = vec![InputPipeline::start(
        &runtime.kafka,
        &config.kafka,
        &config.kafka.topic,
        &config.kafka.group_id,
        shared.clone(),
    )?];
    if let Some(batch_topic) = &config.kafka.batch_topic {
        pipelines.push(InputPipeline::start(
            &runtime.kafka,
            &config.kafka,
            batch_topic,
            &config.kafka.batch_group_id,
            shared.clone(),
        )?);
    }
    runtime.health.set_ready();
    tracing::info!(destinations = shared.senders.len(), group = %config.kafka.group_id, "Delivery is running.");

    let running: Vec<_> = pipelines
        .into_iter()
        .map(|pipeline| tokio::spawn(pipeline.run(runtime.shutdown.clone())))
        .collect();
    for pipeline in running {
        pipeline.await.context("an input pipeline panicked")?;
    }
    Ok(())
}
