//! The catalog, the comparison with what a cluster has, and the Strimzi resources kept in step
//! with the catalog. (Against the real broker: tests/e2e/qualifier/topics.rs.)

use std::collections::BTreeMap;

use serde::Deserialize;

use super::*;

fn names() -> TopicNames {
    TopicNames {
        events: "trait-events".to_owned(),
        status: "segment-status".to_owned(),
        status_batch: "segment-status-batch".to_owned(),
        changelog: "qualifier-changelog".to_owned(),
        dlq: "segment-status-dlq".to_owned(),
        delivery_log: Some("delivery-log".to_owned()),
    }
}

const PRODUCTION: Sizing = Sizing {
    partitions: 6,
    replication_factor: 3,
};

/// What a cluster holding exactly the catalog would report.
fn as_found(catalog: &Catalog) -> BTreeMap<String, Option<FoundTopic>> {
    catalog
        .topics
        .iter()
        .map(|t| {
            let found = FoundTopic {
                partitions: t.partitions,
                replication_factor: t.replication_factor,
                configs: t
                    .configs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            };
            (t.name.clone(), Some(found))
        })
        .collect()
}

fn topic<'a>(
    found: &'a mut BTreeMap<String, Option<FoundTopic>>,
    name: &str,
) -> &'a mut FoundTopic {
    found.get_mut(name).unwrap().as_mut().unwrap()
}

#[test]
fn the_catalog_compacts_the_changelog_and_keeps_dead_letters() {
    let catalog = Catalog::new(&names(), PRODUCTION).unwrap();
    assert_eq!(catalog.topics.len(), 6);
    let changelog = catalog.by_role(Role::Changelog).unwrap();
    assert_eq!(changelog.configs["cleanup.policy"], "compact");
    assert!(!changelog.configs.contains_key("retention.ms"));
    assert_eq!(
        changelog.partitions,
        catalog.by_role(Role::Events).unwrap().partitions
    );
    assert_eq!(
        catalog.by_role(Role::DeadLetters).unwrap().configs["retention.ms"],
        "-1"
    );
    for spec in &catalog.topics {
        assert_eq!(spec.configs["min.insync.replicas"], "2", "{}", spec.name);
    }
    let single = Catalog::new(
        &names(),
        Sizing {
            partitions: 1,
            replication_factor: 1,
        },
    )
    .unwrap();
    assert_eq!(single.topics[0].configs["min.insync.replicas"], "1");
}

#[test]
fn no_delivery_log_topic_leaves_it_out() {
    let catalog = Catalog::new(
        &TopicNames {
            delivery_log: None,
            ..names()
        },
        PRODUCTION,
    )
    .unwrap();
    assert!(catalog.by_role(Role::DeliveryLog).is_none());
}

#[test]
fn two_roles_on_one_topic_are_refused() {
    let error = Catalog::new(
        &TopicNames {
            changelog: "trait-events".to_owned(),
            ..names()
        },
        PRODUCTION,
    )
    .unwrap_err();
    assert!(
        error.contains("kafka.events_topic / KAFKA_EVENTS_TOPIC and kafka.changelog_topic / KAFKA_CHANGELOG_TOPIC"),
        "{error}"
    );
}

#[test]
fn a_cluster_as_the_catalog_says_has_no_problem() {
    let catalog = Catalog::new(&names(), PRODUCTION).unwrap();
    assert_eq!(compare(&catalog, &as_found(&catalog)), vec![]);
}

#[test]
fn a_mis_partitioned_changelog_is_named_with_both_counts() {
    let catalog = Catalog::new(&names(), PRODUCTION).unwrap();
    let mut found = as_found(&catalog);
    topic(&mut found, "qualifier-changelog").partitions = 3;
    let problems = compare(&catalog, &found);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    let copartition = &problems[1];
    assert_eq!(copartition.topic, "qualifier-changelog");
    assert_eq!(
        copartition.setting,
        "partitions, co-partitioned with input `trait-events`"
    );
    assert_eq!(copartition.found, "3");
    assert!(copartition.expected.starts_with("6 "));
    assert!(copartition.fix.contains("--partitions 6"), "{copartition}");

    // Both away from the catalog's 6 but equal to each other: only the catalog's count.
    topic(&mut found, "trait-events").partitions = 3;
    let problems = compare(&catalog, &found);
    assert!(
        problems.iter().all(|p| p.setting == "partitions"),
        "{problems:#?}"
    );
}

#[test]
fn the_start_up_refusal_names_both_topics_and_counts() {
    assert_eq!(copartition_problem("in", 6, "log", 6), None);
    let fewer = copartition_problem("in", 12, "log", 6).unwrap();
    assert!(
        fewer.starts_with("changelog `log` has 6 partitions but input `in` has 12"),
        "{fewer}"
    );
    assert!(fewer.contains("--partitions 12"), "{fewer}");
    let more = copartition_problem("in", 6, "log", 12).unwrap();
    assert!(more.contains("recreate `log` with 6 partitions"), "{more}");
}

#[test]
fn every_differing_setting_is_reported_with_found_and_expected() {
    let catalog = Catalog::new(&names(), PRODUCTION).unwrap();
    let mut found = as_found(&catalog);
    topic(&mut found, "qualifier-changelog")
        .configs
        .insert("cleanup.policy".to_owned(), "delete".to_owned());
    topic(&mut found, "segment-status-dlq")
        .configs
        .insert("retention.ms".to_owned(), "604800000".to_owned());
    topic(&mut found, "segment-status").replication_factor = 1;
    topic(&mut found, "segment-status-batch").partitions = 12;
    found.insert("delivery-log".to_owned(), None);
    let problems: Vec<String> = compare(&catalog, &found)
        .iter()
        .map(ToString::to_string)
        .collect();
    let expected = [
        "topic `qualifier-changelog`: cleanup.policy: found delete, expected compact; fix: `kafka-configs.sh --alter",
        "topic `segment-status-dlq`: retention.ms: found 604800000, expected -1;",
        "topic `segment-status`: replication factor: found 1, expected 3;",
        "topic `segment-status-batch`: partitions: found 12, expected 6;",
        "topic `segment-status-batch`: partitions, equal to real-time `segment-status`: found 12, expected 6",
        "topic `delivery-log`: existence: found no such topic, expected the topic; fix: run `qualifier topics create`",
    ];
    for line in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(line)),
            "missing `{line}` in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}

/// The parts of a Strimzi `KafkaTopic` the catalog decides.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KafkaTopic {
    api_version: String,
    kind: String,
    spec: KafkaTopicSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KafkaTopicSpec {
    topic_name: String,
    partitions: i32,
    replicas: i32,
    config: BTreeMap<String, serde_json::Value>,
}

const STRIMZI_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/k8s/topics/strimzi"
);

/// The differences between Strimzi resources (YAML) and the catalog, one line each.
fn strimzi_differences(yaml: &str, catalog: &Catalog) -> Vec<String> {
    let resources: Vec<KafkaTopic> = serde_saphyr::from_multiple(yaml).unwrap();
    let mut differences = Vec::new();
    let mut declared: BTreeMap<String, TopicSpec> = BTreeMap::new();
    for resource in resources {
        if resource.api_version != "kafka.strimzi.io/v1beta2" || resource.kind != "KafkaTopic" {
            differences.push(format!(
                "{}: a {} of {}, expected KafkaTopic of kafka.strimzi.io/v1beta2",
                resource.spec.topic_name, resource.kind, resource.api_version
            ));
        }
        let configs: BTreeMap<String, String> = resource
            .spec
            .config
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), value)
            })
            .collect();
        let Some(spec) = catalog
            .topics
            .iter()
            .find(|t| t.name == resource.spec.topic_name)
        else {
            differences.push(format!(
                "{}: in the YAML, not in the catalog",
                resource.spec.topic_name
            ));
            continue;
        };
        let wanted: BTreeMap<String, String> = spec
            .configs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        if (resource.spec.partitions, resource.spec.replicas, &configs)
            != (spec.partitions, spec.replication_factor, &wanted)
        {
            differences.push(format!(
                "{}: YAML has partitions {}, replicas {}, config {configs:?}; the catalog {}, {}, {wanted:?}",
                spec.name,
                resource.spec.partitions,
                resource.spec.replicas,
                spec.partitions,
                spec.replication_factor
            ));
        }
        declared.insert(spec.name.clone(), spec.clone());
    }
    for spec in &catalog.topics {
        if !declared.contains_key(&spec.name) {
            differences.push(format!("{}: in the catalog, not in the YAML", spec.name));
        }
    }
    differences
}

#[test]
fn strimzi_resources_match_the_catalog() {
    let yaml = std::fs::read_to_string(format!("{STRIMZI_DIR}/topics.yaml")).unwrap();
    let catalog = Catalog::new(&names(), PRODUCTION).unwrap();
    assert_eq!(strimzi_differences(&yaml, &catalog), Vec::<String>::new());

    // The comparison can fail: one value changed, one topic dropped.
    let changed = yaml.replacen("cleanup.policy: compact", "cleanup.policy: delete", 1);
    let differences = strimzi_differences(&changed, &catalog);
    assert_eq!(differences.len(), 1, "{differences:#?}");
    assert!(differences[0].starts_with("qualifier-changelog: YAML has"));
    let (without_last, _) = yaml.rsplit_once("---").unwrap();
    assert_eq!(
        strimzi_differences(without_last, &catalog),
        vec!["delivery-log: in the catalog, not in the YAML"]
    );

    // The topic operator only takes resources labelled with their cluster.
    let kustomization =
        std::fs::read_to_string(format!("{STRIMZI_DIR}/kustomization.yaml")).unwrap();
    assert!(kustomization.contains("strimzi.io/cluster:"));
}
