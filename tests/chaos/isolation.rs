//! Isolation: one destination fails in one way for a while, mid-load. The healthy
//! destinations keep their delivered rate and end-to-end p99 (compared with a window before
//! the fault, in the same run); the failing one's changes wait in Kafka (its backlog grows,
//! delivery's memory does not) and it catches up by itself once the partner answers again:
//! nothing dead-lettered, nothing missing, per-user order at the partner, no replay.

use std::time::{Duration, Instant};

use testkit::service::{Service, metric_value};

use crate::broker::ChaosBroker;
use crate::ledger::Ledger;
use crate::load::Load;
use crate::proxy::Mode;
use crate::scenarios::{Scale, assert_balanced, drain, load_note, rss_kb};
use crate::system::{DESTINATIONS, FAULTY, System, SystemSpec};

/// How the faulty partner fails during its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 on every request.
    Unavailable,
    /// No answer within delivery's 3 s timeout.
    Hang,
    /// Accepts, but answers just under the timeout (2.8 s).
    Slow,
    /// 429 with `Retry-After: 2`.
    RateLimited,
    /// The TLS handshake fails (a proxy answers plain text).
    TlsFailure,
    /// Connections are refused (nothing listens).
    Refused,
}

impl Fault {
    /// partner-sim's behaviour for the faulty partner.
    fn behaviour(self, after_s: u64, for_s: u64) -> String {
        let how = match self {
            Self::Unavailable => "status: 503",
            Self::Hang => "status: 503, delay_ms: 10000",
            Self::Slow => "status: 200, delay_ms: 2800",
            Self::RateLimited => "status: 429, retry_after_s: 2",
            // The proxy in front of it makes these.
            Self::TlsFailure | Self::Refused => return "{ latency_ms: [2, 20] }".to_owned(),
        };
        format!(
            "{{ latency_ms: [2, 20], outage: {{ after_s: {after_s}, for_s: {for_s}, {how} }} }}"
        )
    }

    /// The proxy mode that makes the fault, for the faults partner-sim cannot make.
    fn proxy_mode(self) -> Option<Mode> {
        match self {
            Self::TlsFailure => Some(Mode::BreakTls),
            Self::Refused => Some(Mode::Refuse),
            Self::Unavailable | Self::Hang | Self::Slow | Self::RateLimited => None,
        }
    }

    /// The `outcome` of `delivery_requests_total` the fault shows as (a slow partner's
    /// requests succeed).
    fn outcome(self) -> Option<&'static str> {
        match self {
            Self::Unavailable | Self::RateLimited => Some("http_status"),
            Self::Hang => Some("timeout"),
            Self::TlsFailure => Some("tls"),
            Self::Refused => Some("connect"),
            Self::Slow => None,
        }
    }

    /// Whether the partner fails (a slow one accepts everything, late).
    fn fails(self) -> bool {
        self.outcome().is_some()
    }

    /// The fault's duration: the long form holds a 503 outage for 10 minutes, to show
    /// delivery's memory flat over it.
    fn duration(self, scale: Scale) -> Duration {
        if scale.name == "long" && self == Self::Unavailable {
            Duration::from_secs(600)
        } else {
            scale.isolation_fault
        }
    }
}

/// The healthy destinations' counters, summed over the workers.
#[derive(Debug, Clone, Default)]
struct Healthy {
    delivered: f64,
    /// `(le, cumulative count)` of the end-to-end latency histogram.
    buckets: Vec<(f64, f64)>,
}

impl Healthy {
    fn add(&mut self, metrics: &str) {
        for other in DESTINATIONS.iter().filter(|d| d.id != FAULTY.id) {
            let destination = format!("destination=\"{}\"", other.id);
            self.delivered += metric_value(
                metrics,
                &format!("delivery_changes_total{{{destination},outcome=\"delivered\"}}"),
            )
            .unwrap_or(0.0);
            for line in metrics.lines().filter(|l| {
                l.starts_with("delivery_end_to_end_latency_seconds_bucket{")
                    && l.contains(&destination)
            }) {
                let le = line
                    .split("le=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(|v| {
                        if v == "+Inf" {
                            f64::INFINITY
                        } else {
                            v.parse().unwrap_or(f64::NAN)
                        }
                    });
                let count = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
                if let (Some(le), Some(count)) = (le, count) {
                    match self.buckets.iter_mut().find(|(l, _)| *l == le) {
                        Some((_, c)) => *c += count,
                        None => self.buckets.push((le, count)),
                    }
                }
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// Delivered changes per second and the p99 bucket bound between `self` and `later`.
    fn window(&self, later: &Self, seconds: f64) -> (f64, f64) {
        let rate = (later.delivered - self.delivered) / seconds;
        let counts: Vec<(f64, f64)> = later
            .buckets
            .iter()
            .map(|&(le, c)| {
                let before = self
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |b| b.1);
                (le, c - before)
            })
            .collect();
        let total = counts.last().map_or(0.0, |c| c.1);
        let p99 = counts
            .iter()
            .find(|&&(_, c)| c >= 0.99 * total)
            .map_or(f64::NAN, |&(le, _)| le);
        (rate, p99)
    }
}

/// The values over the workers (and topics) of a series of the faulty destination.
fn faulty_values<'a>(texts: &'a [String], name: &'a str) -> impl Iterator<Item = f64> + 'a {
    let destination = format!("destination=\"{}\"", FAULTY.id);
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(move |l| l.starts_with(name) && l.contains(&destination))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

fn faulty_sum(texts: &[String], name: &str) -> f64 {
    faulty_values(texts, name).sum()
}

pub async fn isolation(broker: &ChaosBroker, scale: Scale, fault: Fault) -> Ledger {
    let settings = broker.settings();
    // The change rate grows for the first seconds of a load (users qualify as their traits
    // accumulate): the baseline is the 10 s before the fault, after 10 s of load.
    let warmup = Duration::from_secs(20);
    let baseline_from = Duration::from_secs(10);
    let fault_for = fault.duration(scale);
    let spec = SystemSpec {
        faulty_behaviour: fault.behaviour(warmup.as_secs(), fault_for.as_secs()),
        proxy_faulty: fault.proxy_mode().is_some(),
        // Small queues: the failing destination's lanes fill within a second, so its
        // changes must wait in Kafka.
        delivery_defaults: "{ batch: { max_users: 100, linger_ms: 100 }, max_in_flight: 2, \
                            queue_capacity: 50, retry_backoff_ms: 100, \
                            backoff: { initial_ms: 200, max_ms: 2000 }, \
                            circuit: { failure_threshold: 5, cooldown_ms: 2000 } }"
            .to_owned(),
        ..SystemSpec::default()
    };
    let name = format!("isolation-{fault:?}").to_lowercase();
    let mut system = System::start(broker, &name, &spec).await;
    let pids: Vec<u32> = system.workers.iter().filter_map(Service::pid).collect();
    // The outage window counts from partner-sim's start, right before the load.
    let sim_started = Instant::now();
    let load = Load::start(&system.launch.ingest, scale.rate, scale.users, 5);
    let fault_end = warmup + fault_for;
    let load_for = fault_end + Duration::from_secs(8);

    let snapshot = |workers: &[Service]| {
        let workers: Vec<_> = workers.iter().map(|w| w.admin_url("/metrics")).collect();
        async move {
            let mut healthy = Healthy::default();
            let mut texts = Vec::new();
            for url in workers {
                let text = match reqwest::get(url).await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                healthy.add(&text);
                texts.push(text);
            }
            (healthy, texts)
        }
    };
    let rss_now = || {
        pids.iter()
            .filter_map(|&p| rss_kb(p))
            .map(|r| r.0)
            .max()
            .unwrap_or(0)
    };

    // Baseline: the window before the fault.
    let at = |t: Duration| tokio::time::sleep_until((sim_started + t).into());
    at(baseline_from).await;
    let (baseline_start, _) = snapshot(&system.workers).await;
    let mut rss_baseline = rss_now();
    while sim_started.elapsed() < warmup {
        rss_baseline = rss_baseline.max(rss_now());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (baseline_end, _) = snapshot(&system.workers).await;
    let baseline_s = (warmup - baseline_from).as_secs_f64();
    let proxy_mode = fault.proxy_mode();
    if let (Some(proxy), Some(mode)) = (&system.proxy, proxy_mode) {
        proxy.set(mode);
    }

    // The fault (measured from 2 s in, once the circuit and the backlog are established).
    at(warmup + Duration::from_secs(2)).await;
    let (fault_start, _) = snapshot(&system.workers).await;
    let (mut peak_backlog, mut peak_age, mut rss_fault) = (0.0_f64, 0.0_f64, 0_u64);
    while sim_started.elapsed() < fault_end {
        let (_, texts) = snapshot(&system.workers).await;
        peak_backlog = peak_backlog.max(faulty_sum(&texts, "delivery_backlog_messages{"));
        peak_age =
            faulty_values(&texts, "delivery_backlog_oldest_age_seconds{").fold(peak_age, f64::max);
        rss_fault = rss_fault.max(rss_now());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let (Some(proxy), Some(_)) = (&system.proxy, proxy_mode) {
        proxy.set(Mode::Forward);
    }
    let (fault_stop, texts) = snapshot(&system.workers).await;
    let healthy_detaches: f64 = DESTINATIONS
        .iter()
        .filter(|d| d.id != FAULTY.id)
        .map(|d| {
            texts
                .iter()
                .filter_map(|t| {
                    metric_value(
                        t,
                        &format!("delivery_detaches_total{{destination=\"{}\"}}", d.id),
                    )
                })
                .sum::<f64>()
        })
        .sum();
    let fault_s = (fault_for - Duration::from_secs(2)).as_secs_f64();

    // Catch-up: from the partner's recovery until nothing of it waits any more.
    let catch_up = loop {
        let (_, texts) = snapshot(&system.workers).await;
        let waiting = faulty_sum(&texts, "delivery_backlog_messages{")
            + faulty_sum(&texts, "delivery_queue_depth{");
        let since_recovery = sim_started.elapsed().saturating_sub(fault_end);
        if waiting == 0.0 || since_recovery > scale.drain {
            break (waiting, since_recovery);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    while sim_started.elapsed() < load_for {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = load.stop().await;
    system.assert_running();
    let mut ledger = drain(&name, &system, &settings, scale.drain).await;

    let (base_rate, base_p99) = baseline_start.window(&baseline_end, baseline_s);
    let (fault_rate, fault_p99) = fault_start.window(&fault_stop, fault_s);
    ledger.notes.push(load_note(&report, scale.rate));
    ledger.notes.push(format!(
        "{} {} {fault:?} for {} s from {} s: healthy destinations {base_rate:.0} changes/s, p99 ≤ {base_p99} s before; \
         {fault_rate:.0} changes/s ({:.2}×), p99 ≤ {fault_p99} s during; failing destination's peak backlog {peak_backlog:.0} \
         messages, oldest {peak_age:.0} s; the healthy ones fell behind (detached) {healthy_detaches:.0} times by the fault's end; delivery RSS {} MiB before, {} MiB at most during; caught up {:.1} s after the partner recovered",
        FAULTY.id,
        FAULTY.path,
        fault_for.as_secs(),
        warmup.as_secs(),
        fault_rate / base_rate,
        rss_baseline / 1024,
        rss_fault / 1024,
        catch_up.1.as_secs_f64(),
    ));
    assert_balanced(&ledger);
    for line in &ledger.lines {
        assert_eq!(
            line.dead_lettered,
            0,
            "{} {}: a transient fault dead-lettered changes\n{}",
            line.id,
            line.path,
            ledger.render()
        );
    }
    assert!(
        ledger.line(FAULTY.id).delivered > 0,
        "nothing reached the failing destination\n{}",
        ledger.render()
    );
    assert_eq!(
        catch_up.0,
        0.0,
        "the failing destination still had {} changes waiting {} s after its partner recovered",
        catch_up.0,
        scale.drain.as_secs()
    );
    if let Some(outcome) = fault.outcome() {
        let series = format!(
            "delivery_requests_total{{destination=\"{}\",outcome=\"{outcome}\"}}",
            FAULTY.id
        );
        let failed: f64 = texts.iter().filter_map(|t| metric_value(t, &series)).sum();
        assert!(
            failed > 0.0,
            "no request to the failing destination ended as `{outcome}`: the fault did not happen; its requests: {:?}",
            texts
                .iter()
                .flat_map(|t| t.lines())
                .filter(|l| l.starts_with("delivery_requests_total{")
                    && l.contains(&format!("destination=\"{}\"", FAULTY.id)))
                .collect::<Vec<_>>()
        );
    }
    if fault.fails() {
        assert!(
            peak_backlog > 0.0,
            "the failing destination never fell behind into Kafka (peak backlog 0): the scenario proves nothing"
        );
    }
    // Generous bounds (a shared 2-core machine); the precise ratios go to RELIABILITY.md.
    assert!(
        fault_rate >= 0.75 * base_rate,
        "the healthy destinations slowed from {base_rate:.0} to {fault_rate:.0} changes/s during the fault\n{}",
        ledger.render()
    );
    assert!(
        fault_p99 <= (2.0 * base_p99).max(base_p99 + 0.5),
        "the healthy destinations' p99 went from {base_p99} s to {fault_p99} s during the fault\n{}",
        ledger.render()
    );
    assert!(
        rss_fault <= rss_baseline + 48 * 1024,
        "delivery's RSS grew from {} MiB to {} MiB during the fault",
        rss_baseline / 1024,
        rss_fault / 1024
    );
    ledger
}
