//! Liveness probes that mean something: a deliberately stalled service (the test-only
//! `SEGMENT_RELAY_TEST_ONLY_STALL`) fails `/livez` within its threshold, a kubelet-like probe
//! loop using the livenessProbe of the service's manifest kills it, and once started again
//! the pipeline completes with nothing lost. And the false positive that matters: a service
//! waiting on a failing or hanging partner for longer than the threshold stays live.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use testkit::receiver::{Receiver, Response};
use testkit::service::Service;
use tokio::time::Instant;

use crate::delivery::{DeliveryTest, T0, change, delivered_users, destination, update, update_now};
use crate::qualifier::{QualifierTest, post, trait_event};

/// The threshold the tests run with (`LIVENESS_STALL_AFTER_SECONDS`), so they take seconds,
/// not minutes; the manifests keep the default (30 s).
const STALL_AFTER_S: u64 = 3;
/// After how long the stalled part stops (the part's registration is at most about when the
/// service turns ready): long enough to see an idle service stay live past its threshold.
const STALL_AT_S: u64 = 6;

/// The livenessProbe (and grace period) of a service's Deployment in `deploy/k8s/base`.
#[derive(Debug)]
struct LivenessProbe {
    path: String,
    period: Duration,
    timeout: Duration,
    failure_threshold: u32,
    grace: Duration,
}

impl LivenessProbe {
    /// Read from `deploy/k8s/base/<service>.yaml`, the values a kubelet would use.
    fn from_manifest(service: &str) -> Self {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/k8s/base")
            .join(format!("{service}.yaml"));
        let yaml = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = yaml.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim() == "livenessProbe:")
            .unwrap_or_else(|| panic!("{}: no livenessProbe", file.display()));
        let indent = |l: &str| l.len() - l.trim_start().len();
        let block: Vec<&str> = lines[start + 1..]
            .iter()
            .copied()
            .filter(|l| !l.trim_start().starts_with('#'))
            .take_while(|l| indent(l) > indent(lines[start]))
            .collect();
        let field = |name: &str| -> Option<String> {
            block.iter().find_map(|l| {
                let rest = l.trim().strip_prefix(name)?.strip_prefix(':')?;
                Some(rest.trim().to_owned())
            })
        };
        let seconds = |name: &str, default: u64| {
            Duration::from_secs(field(name).map_or(default, |v| v.parse().unwrap()))
        };
        let http_get = field("httpGet").expect("livenessProbe.httpGet");
        let path = http_get
            .split([',', '{', '}'])
            .find_map(|part| part.trim().strip_prefix("path:"))
            .expect("livenessProbe.httpGet.path")
            .trim()
            .to_owned();
        let grace = yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .map_or(30, |v| v.trim().parse().unwrap());
        // Kubernetes' defaults where the manifest says nothing.
        Self {
            path,
            period: seconds("periodSeconds", 10),
            timeout: seconds("timeoutSeconds", 1),
            failure_threshold: field("failureThreshold").map_or(3, |v| v.parse().unwrap()),
            grace: Duration::from_secs(grace),
        }
    }

    /// One probe: `Ok(())` on a 2xx within the timeout, else what failed.
    async fn probe(&self, service: &Service) -> Result<(), String> {
        let answer = reqwest::Client::new()
            .get(service.admin_url(&self.path))
            .timeout(self.timeout)
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!(
                "{}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            )),
            Err(error) => Err(format!("no answer: {error}")),
        }
    }

    /// Probes like the kubelet (every period; after `failure_threshold` failures in a row,
    /// SIGTERM, then SIGKILL after the grace period) until the process is gone. Returns the
    /// failures that got it killed. Panics if it is not killed within `within`.
    async fn kill_when_failing(&self, service: &mut Service, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut failures = Vec::new();
        let mut ticker = tokio::time::interval(self.period);
        loop {
            ticker.tick().await;
            assert!(
                Instant::now() < deadline,
                "the probe loop did not restart the service within {within:?}; failures: {failures:?}; its log:\n{}",
                service.log()
            );
            match self.probe(service).await {
                Ok(()) => failures.clear(),
                Err(failure) => failures.push(failure),
            }
            if failures.len() as u32 >= self.failure_threshold {
                break;
            }
        }
        service.terminate();
        let exited = tokio::time::timeout(self.grace, async {
            while service.exit_status().is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if exited.is_err() {
            service.kill9().await;
        }
        failures
    }
}

/// GET `path` of the admin server: (status, body).
async fn admin_get(service: &Service, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(service.admin_url(path))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// Polls `/livez` from `ready` on: it must answer 200 for the first [`STALL_AT_S`] seconds
/// (the service is idle longer than its threshold, and live) and 503 naming `part` by the
/// time the stall plus the threshold passed. Returns the 503 body and `/readyz`'s status then.
async fn livez_fails_within_the_threshold(
    service: &Service,
    ready: Instant,
    part: &str,
) -> (String, u16) {
    let live_until = ready + Duration::from_secs(STALL_AT_S);
    let fail_by = ready + Duration::from_secs(STALL_AT_S + STALL_AFTER_S + 3);
    loop {
        let (status, body) = admin_get(service, "/livez").await;
        let now = Instant::now();
        if status == 503 {
            assert!(
                now >= live_until,
                "/livez failed {:?} after ready, before the stall: {body}",
                now - ready
            );
            assert!(body.contains(part), "{body}");
            let (ready_status, _) = admin_get(service, "/readyz").await;
            return (body, ready_status);
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            now < fail_by,
            "/livez still 200 {:?} after ready: the stalled part was not detected; log:\n{}",
            now - ready,
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_users(receiver: &Receiver, expected: &HashSet<String>, within: Duration) {
    testkit::wait_until(
        &format!("{} users at the partner", expected.len()),
        within,
        || {
            let got = delivered_users(receiver);
            let all = expected.is_subset(&got);
            async move { all }
        },
    )
    .await;
}

fn stall_env(part: &str) -> String {
    format!("{part}@{STALL_AT_S}")
}

#[tokio::test]
async fn a_stalled_delivery_worker_fails_liveness_is_restarted_and_loses_nothing() {
    let probe = LivenessProbe::from_manifest("delivery");
    assert_eq!(probe.path, "/livez");
    let test = DeliveryTest::new(2).await;
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(60, &receiver, "")]);
    let stall = stall_env(&format!("consumer[{}]", test.topic));
    let threshold = STALL_AFTER_S.to_string();
    let env = [
        ("LIVENESS_STALL_AFTER_SECONDS", threshold.as_str()),
        ("SEGMENT_RELAY_TEST_ONLY_STALL", stall.as_str()),
    ];
    let mut stalled = test.start(&config, &env).await;
    let ready = Instant::now();

    let first: Vec<String> = (0..20).map(|i| format!("before{i}")).collect();
    let updates: Vec<_> = first
        .iter()
        .map(|u| update(u, &[], &[], vec![change(14356, true, T0)]))
        .collect();
    test.produce(&test.topic, &updates).await;
    let (body, ready_status) =
        livez_fails_within_the_threshold(&stalled, ready, &format!("consumer[{}]", test.topic))
            .await;
    assert!(body.contains("no progress for"), "{body}");
    // Readiness says nothing about being stuck: the kubelet's liveness probe must act.
    assert_eq!(ready_status, 200);

    let second: Vec<String> = (0..20).map(|i| format!("during{i}")).collect();
    let updates: Vec<_> = second
        .iter()
        .map(|u| update(u, &[], &[], vec![change(14356, true, T0)]))
        .collect();
    test.produce(&test.topic, &updates).await;
    let failures = probe
        .kill_when_failing(&mut stalled, Duration::from_secs(60))
        .await;
    assert!(
        failures.iter().all(|f| f.starts_with("503")),
        "{failures:?}"
    );

    let restarted = test.start(&config, &[]).await;
    let expected: HashSet<String> = first.into_iter().chain(second).collect();
    wait_users(&receiver, &expected, Duration::from_secs(60)).await;
    assert_eq!(admin_get(&restarted, "/livez").await.0, 200);
}

#[tokio::test]
async fn a_stalled_qualifier_fails_liveness_is_restarted_and_loses_nothing() {
    let probe = LivenessProbe::from_manifest("qualifier");
    assert_eq!(probe.path, "/livez");
    let qualifier_test = QualifierTest::new(1).await;
    let mut delivery_test = DeliveryTest::new(1).await;
    delivery_test.topic = qualifier_test.status.clone();
    delivery_test.batch_topic = qualifier_test.status_batch.clone();
    let receiver = Receiver::start().await;
    let config = delivery_test.config(&[destination(61, &receiver, "")]);
    let _delivery = delivery_test.start(&config, &[]).await;
    let definitions = qualifier_test.definitions(crate::pipeline::RULES);
    let stall = stall_env("processing");
    let threshold = STALL_AFTER_S.to_string();
    let mut stalled = qualifier_test
        .start_with(
            &definitions,
            "a",
            &[
                ("LIVENESS_STALL_AFTER_SECONDS", threshold.as_str()),
                ("SEGMENT_RELAY_TEST_ONLY_STALL", stall.as_str()),
            ],
        )
        .await;
    let ready = Instant::now();

    let first: Vec<String> = (0..20).map(|i| format!("before{i}")).collect();
    let lines: Vec<String> = first
        .iter()
        .map(|u| trait_event(u, 1, &crate::qualifier::now(), None))
        .collect();
    assert_eq!(post(&stalled.ingest, &lines).await.0, 202);
    let (body, ready_status) =
        livez_fails_within_the_threshold(&stalled.service, ready, "processing").await;
    assert!(body.contains("no progress for"), "{body}");
    assert_eq!(ready_status, 200);

    // The ingest API still takes events: they wait in Kafka for the restarted process.
    let second: Vec<String> = (0..20).map(|i| format!("during{i}")).collect();
    let lines: Vec<String> = second
        .iter()
        .map(|u| trait_event(u, 1, &crate::qualifier::now(), None))
        .collect();
    assert_eq!(post(&stalled.ingest, &lines).await.0, 202);
    let failures = probe
        .kill_when_failing(&mut stalled.service, Duration::from_secs(60))
        .await;
    assert!(
        failures.iter().all(|f| f.starts_with("503")),
        "{failures:?}"
    );

    let restarted = qualifier_test.start(&definitions, "a").await;
    let expected: HashSet<String> = first.into_iter().chain(second).collect();
    wait_users(&receiver, &expected, Duration::from_secs(90)).await;
    assert_eq!(admin_get(&restarted.service, "/livez").await.0, 200);
}

/// The false positive that would cause restart storms: a partner answering 503, then one
/// hanging longer than the threshold, fill the lanes and hold the consumer back (events wait
/// in Kafka); liveness stays 200 all along, on that worker and on an idle one without
/// partitions, and everything arrives once the partner heals.
#[tokio::test]
async fn delivery_waiting_on_a_failing_or_hanging_partner_stays_live() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.respond(503, Duration::ZERO);
    // Small queues and one lane: the consumer feels the backpressure at once. The request
    // timeout is above the hang, so requests are in flight for longer than the threshold.
    let config = test.config(&[destination(
        62,
        &receiver,
        ", timeout_ms: 8000, max_in_flight: 1, queue_capacity: 4, batch: { linger_ms: 20, max_users: 2 }",
    )]);
    let threshold = STALL_AFTER_S.to_string();
    let env = [("LIVENESS_STALL_AFTER_SECONDS", threshold.as_str())];
    let service = test.start(&config, &env).await;
    // A second worker of the group, with no partition of the one-partition topic: idle.
    let unassigned = test.start(&config, &env).await;
    testkit::wait_for(
        "two members in the group, one of them without partitions",
        Duration::from_secs(30),
        || async { crate::wait::group_assignment(&test.group) },
        |group| {
            group.state == "Stable"
                && group.partitions_per_member.len() == 2
                && group.partitions_per_member.contains(&0)
        },
    )
    .await;
    let users_sent: Vec<String> = (0..60).map(|i| format!("held{i}")).collect();
    // Made now: older than `max_backlog_age` (3 days), a failing batch is dead-lettered
    // instead of waiting for the partner.
    let updates: Vec<_> = users_sent.iter().map(|u| update_now(u)).collect();
    test.produce(&test.topic, &updates).await;

    let watch = |phase: &'static str, for_how_long: Duration| {
        let workers = [&service, &unassigned];
        async move {
            let until = Instant::now() + for_how_long;
            let mut probes = 0;
            while Instant::now() < until {
                for worker in workers {
                    let (status, body) = admin_get(worker, "/livez").await;
                    assert_eq!(status, 200, "{phase}: /livez failed: {body}");
                }
                probes += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            probes
        }
    };
    // Failing: 503 for four thresholds.
    receiver.wait_for_requests(2, Duration::from_secs(30)).await;
    let probes = watch(
        "partner answering 503",
        Duration::from_secs(STALL_AFTER_S * 4),
    )
    .await;
    assert!(probes > 10);
    // Hanging: every request takes twice the threshold.
    receiver.respond_with(Response::status(200).delay(Duration::from_secs(STALL_AFTER_S * 2)));
    watch("partner hanging", Duration::from_secs(STALL_AFTER_S * 4)).await;
    assert!(
        delivered_users(&receiver).len() < users_sent.len(),
        "the partner was slow enough to hold the pipeline back"
    );
    // Healed: everything arrives, and the service was never restarted.
    receiver.respond(200, Duration::ZERO);
    wait_users(
        &receiver,
        &users_sent.into_iter().collect(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(admin_get(&service, "/livez").await.0, 200);
    let metrics = service.metrics().await;
    assert!(
        metrics.contains(&format!(
            "liveness_beat_age_seconds{{part=\"consumer[{}]\"}}",
            test.topic
        )),
        "{metrics}"
    );
}
