//! The traffic model: which user does what, deterministic for a seed.

use model::pb::{IdSync, OptOut, TraitRealization, trait_event};
use model::{Origin, TraitEvent};

/// What to generate.
#[derive(Debug, Clone)]
pub struct TrafficModel {
    pub users: usize,
    pub traits: Vec<u64>,
    pub regions: Vec<u32>,
    pub data_partner: u64,
    /// Share of events that are ID syncs (0–1).
    pub id_sync_share: f64,
    /// Share of events that are opt-outs (0–1).
    pub opt_out_share: f64,
    /// Zipf exponent of user activity: user k is picked with weight 1/k^s.
    pub zipf: f64,
    pub user_prefix: String,
}

/// Draws events from a [`TrafficModel`]; the same seed gives the same sequence.
#[derive(Debug)]
pub struct Generator {
    model: TrafficModel,
    rng: fastrand::Rng,
    /// Cumulative user weights, for picking a user by binary search.
    cdf: Vec<f64>,
}

impl Generator {
    pub fn new(model: TrafficModel, seed: u64) -> Self {
        let mut total = 0.0;
        let cdf = (1..=model.users.max(1))
            .map(|k| {
                total += 1.0 / (k as f64).powf(model.zipf);
                total
            })
            .collect();
        Self {
            model,
            rng: fastrand::Rng::with_seed(seed),
            cdf,
        }
    }

    fn user(&mut self) -> usize {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let x = self.rng.f64() * total;
        self.cdf.partition_point(|&c| c < x).min(self.cdf.len() - 1)
    }

    /// The next event, happening at `now_unix_ms`.
    pub fn next_event(&mut self, now_unix_ms: i64) -> TraitEvent {
        let user = self.user();
        let user_id = format!("{}{user}", self.model.user_prefix);
        let roll = self.rng.f64();
        let event = if roll < self.model.opt_out_share {
            trait_event::Event::OptOut(OptOut {
                time_unix_ms: now_unix_ms,
            })
        } else if roll < self.model.opt_out_share + self.model.id_sync_share {
            trait_event::Event::IdSync(IdSync {
                data_partner_id: self.model.data_partner,
                partner_uuid: format!(
                    "{}-{:x}",
                    self.model.data_partner,
                    self.rng.u32(..) % 4 + (user as u32) * 4
                ),
                time_unix_ms: now_unix_ms,
            })
        } else {
            let trait_id = self
                .model
                .traits
                .get(self.rng.usize(..self.model.traits.len().max(1)))
                .copied()
                .unwrap_or(0);
            let region = (!self.model.regions.is_empty())
                .then(|| self.model.regions[self.rng.usize(..self.model.regions.len())]);
            trait_event::Event::TraitRealization(TraitRealization {
                trait_id,
                time_unix_ms: now_unix_ms,
                region,
            })
        };
        TraitEvent {
            user_id,
            origin: Origin::Realtime as i32,
            event: Some(event),
        }
    }
}

/// The ingest API's JSON line for an event.
pub fn to_json_line(event: &TraitEvent) -> String {
    let time = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    };
    match &event.event {
        Some(trait_event::Event::TraitRealization(r)) => {
            let region = r
                .region
                .map(|r| format!(r#","region":{r}"#))
                .unwrap_or_default();
            format!(
                r#"{{"type":"trait","user":"{}","trait":{},"time":"{}"{region}}}"#,
                event.user_id,
                r.trait_id,
                time(r.time_unix_ms)
            )
        }
        Some(trait_event::Event::IdSync(s)) => format!(
            r#"{{"type":"id_sync","user":"{}","data_partner":{},"partner_uuid":"{}"}}"#,
            event.user_id, s.data_partner_id, s.partner_uuid
        ),
        Some(trait_event::Event::OptOut(o)) => {
            format!(
                r#"{{"type":"opt_out","user":"{}","time":"{}"}}"#,
                event.user_id,
                time(o.time_unix_ms)
            )
        }
        Some(trait_event::Event::Forget(f)) => format!(
            r#"{{"type":"forget","user":"{}","time":"{}"}}"#,
            event.user_id,
            time(f.time_unix_ms)
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> TrafficModel {
        TrafficModel {
            users: 1000,
            traits: vec![101, 102],
            regions: vec![6, 7],
            data_partner: 1234,
            id_sync_share: 0.1,
            opt_out_share: 0.01,
            zipf: 1.1,
            user_prefix: "u".into(),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_traffic() {
        let (mut a, mut b) = (Generator::new(model(), 7), Generator::new(model(), 7));
        let (xs, ys): (Vec<_>, Vec<_>) =
            (0..100).map(|_| (a.next_event(1), b.next_event(1))).unzip();
        assert_eq!(xs, ys);
        let mut c = Generator::new(model(), 8);
        assert_ne!(xs, (0..100).map(|_| c.next_event(1)).collect::<Vec<_>>());
    }

    #[test]
    fn activity_is_skewed_and_shares_hold() {
        let mut generator = Generator::new(model(), 1);
        let events: Vec<_> = (0..20_000).map(|_| generator.next_event(1)).collect();
        let top = events.iter().filter(|e| e.user_id == "u0").count();
        let tail = events.iter().filter(|e| e.user_id == "u999").count();
        assert!(top > 20 * tail.max(1), "user 0: {top}, user 999: {tail}");
        let syncs = events
            .iter()
            .filter(|e| matches!(e.event, Some(trait_event::Event::IdSync(_))))
            .count();
        assert!((1_600..2_400).contains(&syncs), "{syncs} id syncs of 20000");
    }

    #[test]
    fn json_lines_use_the_ingest_shapes() {
        let event = TraitEvent {
            user_id: "u1".into(),
            origin: 1,
            event: Some(trait_event::Event::TraitRealization(TraitRealization {
                trait_id: 101,
                time_unix_ms: 1_469_636_242_000,
                region: Some(6),
            })),
        };
        assert_eq!(
            to_json_line(&event),
            r#"{"type":"trait","user":"u1","trait":101,"time":"2016-07-27T16:17:22Z","region":6}"#
        );
    }
}
