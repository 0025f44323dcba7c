//! `qualifier topics create|check` against the cluster: what the catalog's topics look like
//! there ([`describe`]), creating the missing ones, and the report.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::types::RDKafkaErrorCode;
use telemetry::KafkaSettings;

use super::{
    Catalog, FoundTopic, Problem, TopicNames, TopicSpec, TopicsAction, TopicsCommand, compare,
};

/// The catalog's topics as the cluster has them now (`None`: no such topic).
pub async fn describe(
    kafka: &KafkaSettings,
    catalog: &Catalog,
) -> anyhow::Result<BTreeMap<String, Option<FoundTopic>>> {
    let names: Vec<String> = catalog.topics.iter().map(|t| t.name.clone()).collect();
    let settings = kafka.clone();
    // A consumer's metadata request never creates a topic (a producer's may, where the broker
    // auto-creates topics); the admin client is a producer underneath.
    let shapes = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<_>> {
        let probe: BaseConsumer = settings
            .client_config("segment-relay-topics")
            .create()
            .context("cannot create a Kafka client")?;
        names
            .into_iter()
            .map(|name| {
                let metadata = probe
                    .fetch_metadata(Some(&name), Duration::from_secs(10))
                    .with_context(|| format!("cannot read the metadata of topic `{name}`"))?;
                let shape = metadata
                    .topics()
                    .first()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| {
                        let replicas = t.partitions().iter().map(|p| p.replicas().len());
                        (
                            t.partitions().len() as i32,
                            replicas.min().unwrap_or(0) as i32,
                        )
                    });
                Ok((name, shape))
            })
            .collect()
    })
    .await??;

    let admin = admin(kafka)?;
    let existing: Vec<&str> = shapes
        .iter()
        .filter(|(_, shape)| shape.is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    let specifiers: Vec<ResourceSpecifier<'_>> = existing
        .iter()
        .map(|n| ResourceSpecifier::Topic(n))
        .collect();
    let described = if specifiers.is_empty() {
        Vec::new()
    } else {
        admin
            .describe_configs(&specifiers, &options())
            .await
            .context("cannot describe the topics' configs")?
    };
    let mut configs: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    for (name, result) in existing.iter().zip(described) {
        let resource = result.map_err(|code| {
            anyhow::anyhow!("cannot describe the configs of topic `{name}`: {code}")
        })?;
        let wanted = catalog
            .topics
            .iter()
            .find(|t| t.name == *name)
            .map(|t| &t.configs);
        let values = resource
            .entries
            .into_iter()
            .filter(|e| wanted.is_some_and(|w| w.contains_key(e.name.as_str())))
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        configs.insert(name, values);
    }
    Ok(shapes
        .iter()
        .map(|(name, shape)| {
            let found = shape.map(|(partitions, replication_factor)| FoundTopic {
                partitions,
                replication_factor,
                configs: configs.remove(name.as_str()).unwrap_or_default(),
            });
            (name.clone(), found)
        })
        .collect())
}

fn admin(kafka: &KafkaSettings) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    kafka
        .client_config("segment-relay-topics")
        .create()
        .context("cannot create a Kafka admin client")
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .operation_timeout(Some(Duration::from_secs(30)))
}

/// One line for a spec: its name and settings.
fn summary(spec: &TopicSpec) -> String {
    let configs: Vec<String> = spec
        .configs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{} ({} partitions, replication factor {}, {})",
        spec.name,
        spec.partitions,
        spec.replication_factor,
        configs.join(", ")
    )
}

/// Runs `qualifier topics create|check`: exit 0 when every topic is as the catalog says, 1
/// (with every problem on stderr) otherwise.
pub async fn run(
    command: TopicsCommand,
    names: &TopicNames,
    kafka: &KafkaSettings,
) -> anyhow::Result<ExitCode> {
    let catalog = Catalog::new(names, command.sizing).map_err(anyhow::Error::msg)?;
    let problems = match command.action {
        TopicsAction::Create => create(kafka, &catalog).await?,
        TopicsAction::Check { wait } => {
            let deadline = Instant::now() + Duration::from_secs(wait);
            loop {
                let problems = compare(&catalog, &describe(kafka, &catalog).await?);
                if problems.is_empty() || Instant::now() >= deadline {
                    break problems;
                }
                eprintln!(
                    "{} problem(s), checking again in 2 s (until --wait {wait} s are over): {}",
                    problems.len(),
                    problems[0]
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    if problems.is_empty() {
        for spec in &catalog.topics {
            println!("ok {}", summary(spec));
        }
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        eprintln!("{problem}");
    }
    eprintln!(
        "{} problem(s) on {}: nothing was changed on existing topics",
        problems.len(),
        kafka.brokers
    );
    Ok(ExitCode::FAILURE)
}

/// Creates the missing topics, waits until they have leaders, then compares everything.
async fn create(kafka: &KafkaSettings, catalog: &Catalog) -> anyhow::Result<Vec<Problem>> {
    let before = describe(kafka, catalog).await?;
    let missing: Vec<&TopicSpec> = catalog
        .topics
        .iter()
        .filter(|t| matches!(before.get(&t.name), Some(None) | None))
        .collect();
    if !missing.is_empty() {
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|spec| {
                spec.configs.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(spec.replication_factor),
                    ),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let results = admin(kafka)?
            .create_topics(&new, &options())
            .await
            .context("cannot create the topics")?;
        for (spec, result) in missing.iter().zip(results) {
            match result {
                Ok(_) => println!("created {}", summary(spec)),
                // Another run (or Strimzi) was quicker: verified below like any existing topic.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    println!("{} was created meanwhile by someone else", spec.name)
                }
                Err((_, RDKafkaErrorCode::InvalidReplicationFactor)) => anyhow::bail!(
                    "cannot create topic `{}`: the cluster has fewer brokers than --replication-factor {} \
                     (TOPIC_REPLICATION_FACTOR); set it to what the cluster holds (1 for a single broker)",
                    spec.name,
                    spec.replication_factor
                ),
                Err((_, code)) => anyhow::bail!("cannot create topic `{}`: {code}", spec.name),
            }
        }
    }
    // A created topic takes a moment to show in every broker's metadata.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = describe(kafka, catalog).await?;
        let pending = missing
            .iter()
            .any(|t| matches!(now.get(&t.name), Some(None)));
        if !pending || Instant::now() >= deadline {
            for spec in catalog.topics.iter().filter(|t| !missing.contains(t)) {
                println!(
                    "{} exists: left alone (its settings are verified below)",
                    spec.name
                );
            }
            return Ok(compare(catalog, &now));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
