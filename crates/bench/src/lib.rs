//! The workloads of `make bench` (deploy/bench.sh), shared by the macro benchmarks (through
//! the `relay-bench` binary) and the criterion micro-benchmarks, so both measure the same
//! shapes: 1,000 segments of 2–8 conditions over 5,000 traits; 20 destinations, each segment
//! routed to two of them; 1–3 changes per status update.

use std::fmt::Write as _;

use model::{ChangeReason, Origin, PartnerIds, SegmentChange, SegmentStatusUpdate};

mod state_bytes;

pub use state_bytes::StateBytes;

/// Data partner of every benchmark user's synced partner id.
pub const DATA_PARTNER: u64 = 1234;
/// First destination id; destination `d` has id `DESTINATION_BASE + d`.
pub const DESTINATION_BASE: u64 = 500;

/// The qualifier's definitions (`segments.yaml`): `traits` traits with a 30-day time-to-live
/// and `segments` segments (ids 1…) of 2–8 conditions each, deterministic for `seed`. A rule
/// is any of its positive conditions (presence, frequency, recency) and none of its exclusions,
/// `(A OR B >= 2 OR C WITHIN 7d) AND NOT D` — as audiences are built — so a user qualifies for
/// the few segments whose traits they show, not for every segment by a lone `NOT`.
pub fn qualifier_definitions_yaml(segments: u64, traits: u64, seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut yaml = String::from("traits:\n");
    for t in 1..=traits {
        let _ = writeln!(yaml, "  - {{ id: {t}, ttl: 30d }}");
    }
    yaml.push_str("segments:\n");
    for s in 1..=segments {
        let (mut any, mut none) = (Vec::new(), Vec::new());
        for i in 0..rng.usize(2..=8) {
            let t = rng.u64(1..=traits);
            match i % 4 {
                0 => any.push(format!("T{t}")),
                1 => none.push(format!("NOT T{t}")),
                2 => any.push(format!("T{t} >= 2")),
                _ => any.push(format!("T{t} WITHIN 7d")),
            }
        }
        let mut rule = format!("({})", any.join(" OR "));
        for exclusion in none {
            rule.push_str(" AND ");
            rule.push_str(&exclusion);
        }
        let _ = writeln!(yaml, "  - {{ id: {s}, rule: \"{rule}\" }}");
    }
    yaml
}

/// The destinations (indexes `0..destinations`) segment `segment` is routed to: `fan_out`
/// consecutive ones (wrapping), or all of them when there are fewer. With `s` segments each
/// destination then maps about `s × fan_out / destinations`.
pub fn routes(segment: u64, destinations: u64, fan_out: u64) -> impl Iterator<Item = u64> {
    let first = segment % destinations;
    (0..fan_out.min(destinations)).map(move |i| (first + i) % destinations)
}

/// Where the benchmark's delivery sends and what it reads.
#[derive(Debug, Clone)]
pub struct DeliveryFixture {
    pub destinations: u64,
    /// How many destinations each segment is routed to ([`routes`]).
    pub fan_out: u64,
    pub segments: u64,
    /// `https://host:port`; destination `d` posts to `{base_url}/d{d}`.
    pub base_url: String,
    pub ca_file: String,
    /// Suffix of the topic and group names (`kafka.sh topics SUFFIX` creates the topics).
    pub suffix: String,
    pub max_users: u32,
    pub linger_ms: u64,
    /// Concurrent requests per destination.
    pub max_in_flight: u32,
    /// Updates buffered per lane (`None`: delivery's default).
    pub queue_capacity: Option<u32>,
    /// The worker's `queue_budget_mb` (`None`: delivery's default).
    pub queue_budget_mb: Option<u32>,
    /// Share of requests (0–1) partner-sim answers 503: 0 in a benchmark, 1 in bench.sh's
    /// known-bad run `BENCH_FAULT=failing-partner`, whose checks must then fail.
    pub partner_error_rate: f64,
    /// The status of those failures: 503 (transient: the batch waits and is tried again) or
    /// one of delivery's `permanent_codes` such as 422 (dead-lettered after its retry).
    pub partner_error_status: u16,
    /// The first `down` destinations' partners answer 503 to everything, for the whole run
    /// (the isolation benchmark: the others must not pay for them).
    pub down: u64,
    /// How long partner-sim takes to answer, uniform between the two (ms): 1–5 in a benchmark,
    /// 45–50 in bench.sh's known-bad run `BENCH_FAULT=slow-partner`, whose request check must
    /// then fail.
    pub partner_latency_ms: [u64; 2],
}

impl DeliveryFixture {
    /// delivery's `destinations.yaml`: every destination HMAC-SHA256 signed (key from
    /// `BENCH_HMAC_KEY`), maps the segments [`routes`] gives it.
    pub fn destinations_yaml(&self) -> String {
        let s = &self.suffix;
        let mut yaml = format!(
            "{}kafka:\n  group_id: delivery-bench{s}\n  topic: segment-status{s}\n  batch_topic: segment-status-batch{s}\n  dlq_topic: segment-status-dlq{s}\n  delivery_log_topic: delivery-log{s}\n\
             defaults:\n  batch: {{ max_users: {}, linger_ms: {} }}\n  max_in_flight: {}\n{}destinations:\n",
            self.queue_budget_mb
                .map_or(String::new(), |mb| format!("queue_budget_mb: {mb}\n")),
            self.max_users,
            self.linger_ms,
            self.max_in_flight,
            self.queue_capacity
                .map_or(String::new(), |q| format!("  queue_capacity: {q}\n")),
        );
        // Each destination's segments, in one pass over the segments (in ascending order).
        let mut mapped = vec![Vec::new(); self.destinations as usize];
        for segment in 1..=self.segments {
            for d in routes(segment, self.destinations, self.fan_out) {
                mapped[d as usize].push(format!("\"{segment}\": \"{segment}\""));
            }
        }
        for (d, segments) in (0..self.destinations).zip(mapped) {
            let _ = writeln!(
                yaml,
                "  - {{ id: {id}, name: bench-{d}, url: \"{base}/d{d}\", ca_file: \"{ca}\", client_id: \"{id}\", user_dpid: 20915, \
                 data_partner: {DATA_PARTNER}, segments: {{ {map} }}, auth: {{ hmac: {{ key_env: BENCH_HMAC_KEY, header: X-Signature, algorithm: sha256 }} }} }}",
                id = DESTINATION_BASE + d,
                base = self.base_url,
                ca = self.ca_file,
                map = segments.join(", "),
            );
        }
        yaml
    }

    /// partner-sim's endpoints for those destinations, answering in `partner_latency_ms` (and
    /// failing `partner_error_rate` of the requests with `partner_error_status`).
    pub fn partner_sim_yaml(&self) -> String {
        let mut yaml = String::from("endpoints:\n");
        for d in 0..self.destinations {
            let outage = if d < self.down {
                ", outage: { after_s: 0, for_s: 100000000, status: 503 }"
            } else {
                ""
            };
            let _ = writeln!(
                yaml,
                "  - {{ path: /d{d}, destination_id: {}, auth: {{ hmac: {{ key_env: BENCH_HMAC_KEY, header: X-Signature, algorithm: sha256 }} }}, \
                 behaviour: {{ latency_ms: [{}, {}], error_rate: {}, error_status: {}{outage} }} }}",
                DESTINATION_BASE + d,
                self.partner_latency_ms[0],
                self.partner_latency_ms[1],
                self.partner_error_rate,
                self.partner_error_status
            );
        }
        yaml
    }
}

/// The `index`-th status update of the delivery benchmark: user `index % users`, 1–3 changes,
/// each (user, segment) pair at most once in the whole run (for `index < users * segments / 3`)
/// so the partner's count of distinct changes is exact.
pub fn status_update(
    index: u64,
    users: u64,
    segments: u64,
    now_unix_ms: i64,
) -> SegmentStatusUpdate {
    let user = index % users;
    let round = index / users;
    let changes = 1 + index % 3;
    SegmentStatusUpdate {
        user_id: format!("{:038}", user * 7_919 + 1),
        regions: vec![6, 7],
        partner_ids: vec![PartnerIds {
            data_partner_id: DATA_PARTNER,
            partner_uuids: vec![format!("p-{user}")],
        }],
        changes: (0..changes)
            .map(|k| {
                let segment = 1 + (user * 7 + round * 3 + k) % segments;
                if k == 1 {
                    SegmentChange::unsegmented(segment, ChangeReason::Ttl, now_unix_ms)
                } else {
                    SegmentChange::qualified(segment, now_unix_ms)
                }
            })
            .collect(),
        origin: Origin::Realtime as i32,
        produced_unix_ms: now_unix_ms,
        // Increasing per user, as the qualifier's are.
        sequence: u64::try_from(now_unix_ms).unwrap_or(0) * 1024 + index,
        only_data_partner_id: None,
    }
}

/// What the qualifier must make of a topic of trait events: the events read back, in order
/// per user, and which of them it ignores. A user's events after their first opt-out are
/// ignored (the qualifier keeps no traits of an opted-out user); with Zipf-like activity a
/// handful of opt-outs among the heaviest users make that a large share of all events, so the
/// expected count is read from the events themselves rather than guessed from the opt-out
/// share.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventOutcomes {
    /// Records in the topic.
    pub events: u64,
    /// Opt-out events among them.
    pub opt_outs: u64,
    /// Events whose user opted out earlier: exactly what the qualifier counts as ignored.
    pub after_opt_out: u64,
    /// Records that are not a `TraitEvent` (the qualifier counts them as invalid).
    pub undecodable: u64,
    opted_out: std::collections::HashSet<String>,
}

impl EventOutcomes {
    /// Counts one record, in topic order (a user's records share a partition, so topic order
    /// is the order the qualifier applies them in).
    pub fn add(&mut self, event: Option<&model::TraitEvent>) {
        self.events += 1;
        let Some(event) = event else {
            self.undecodable += 1;
            return;
        };
        let opt_out = matches!(event.event, Some(model::pb::trait_event::Event::OptOut(_)));
        self.opt_outs += u64::from(opt_out);
        if self.opted_out.contains(&event.user_id) {
            self.after_opt_out += 1;
        } else if opt_out {
            self.opted_out.insert(event.user_id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_segment_goes_to_fan_out_distinct_destinations_or_all_there_are() {
        for fan_out in [1, 2, 5] {
            let mut mapped = vec![0_u64; 1_000];
            for segment in 1..=1_000 {
                for destinations in [2, 20, 1_000] {
                    let to: Vec<u64> = routes(segment, destinations, fan_out).collect();
                    assert_eq!(to.len() as u64, fan_out.min(destinations));
                    assert_eq!(
                        to.iter().collect::<HashSet<_>>().len(),
                        to.len(),
                        "distinct"
                    );
                    assert!(to.iter().all(|&d| d < destinations));
                    if destinations == 1_000 {
                        to.iter().for_each(|&d| mapped[d as usize] += 1);
                    }
                }
                assert_eq!(routes(segment, 1, fan_out).collect::<Vec<_>>(), [0]);
            }
            // 1,000 segments over 1,000 destinations: each destination maps `fan_out`.
            assert!(
                mapped.iter().all(|&m| m == fan_out),
                "{fan_out}: {mapped:?}"
            );
        }
    }

    #[test]
    fn only_the_events_after_a_users_first_opt_out_are_ignored() {
        use model::pb::{OptOut, TraitRealization, trait_event::Event};
        let event = |user: &str, opt_out: bool| model::TraitEvent {
            user_id: user.to_owned(),
            origin: 0,
            event: Some(if opt_out {
                Event::OptOut(OptOut { time_unix_ms: 0 })
            } else {
                Event::TraitRealization(TraitRealization {
                    trait_id: 1,
                    time_unix_ms: 0,
                    region: None,
                })
            }),
        };
        let mut outcomes = EventOutcomes::default();
        for e in [
            event("a", false),
            event("a", true),  // applied: the opt-out itself
            event("b", false), // another user: applied
            event("a", false), // ignored
            event("a", true),  // ignored: already opted out
        ] {
            outcomes.add(Some(&e));
        }
        outcomes.add(None);
        assert_eq!(
            (
                outcomes.events,
                outcomes.opt_outs,
                outcomes.after_opt_out,
                outcomes.undecodable
            ),
            (6, 2, 2, 1)
        );
    }

    #[test]
    fn no_user_and_segment_pair_repeats_within_the_benchmark_sizes() {
        let (users, segments) = (1_000, 1_000);
        let mut seen = HashSet::new();
        for index in 0..(users * 20) {
            let update = status_update(index, users, segments, 0);
            for change in &update.changes {
                assert!(
                    seen.insert((update.user_id.clone(), change.segment_id)),
                    "update {index} repeats segment {}",
                    change.segment_id
                );
            }
        }
    }
}
