//! The qualifier's hot path: one event applied to one user, with 1,000 segments of 2–8
//! conditions over 5,000 traits. `make bench` records the figures in docs/BENCHMARKS.md.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use model::pb::{TraitRealization, trait_event};
use model::{Origin, TraitEvent};
use qualifier::config::Definitions;
use qualifier::evaluate::Evaluator;

fn definitions() -> Definitions {
    let yaml = relay_bench::qualifier_definitions_yaml(1_000, 5_000, 1);
    Definitions::parse(Path::new("bench.yaml"), &yaml).unwrap()
}

fn benches(c: &mut Criterion) {
    let definitions = definitions();
    let mut evaluator = Evaluator::default();
    let now = 1_764_000_000_000_i64;
    // A user with 20 realizations of traits the rules use.
    let mut state = None;
    let mut rng = fastrand::Rng::with_seed(2);
    for i in 0..20 {
        let event = TraitEvent {
            user_id: "u".into(),
            origin: Origin::Realtime as i32,
            event: Some(trait_event::Event::TraitRealization(TraitRealization {
                trait_id: rng.u64(1..=5_000),
                time_unix_ms: now - 1_000 * i,
                region: Some(6),
            })),
        };
        state = evaluator
            .on_event(&definitions, state, None, &event, now)
            .unwrap()
            .state;
    }
    let event = TraitEvent {
        user_id: "u".into(),
        origin: Origin::Realtime as i32,
        event: Some(trait_event::Event::TraitRealization(TraitRealization {
            trait_id: 42,
            time_unix_ms: now,
            region: Some(7),
        })),
    };
    // The user's timer lies ahead: only the segments using trait 42 are evaluated.
    let later = Some(now + 60_000);
    c.bench_function("apply one event (1000 segments, 5000 traits)", |b| {
        b.iter(|| {
            evaluator
                .on_event(
                    &definitions,
                    black_box(state.clone()),
                    later,
                    black_box(&event),
                    now,
                )
                .unwrap()
        })
    });
    // A timer boundary has passed (or the user is new): every segment is evaluated.
    c.bench_function("apply one event, evaluating all 1000 segments", |b| {
        b.iter(|| {
            evaluator
                .on_event(
                    &definitions,
                    black_box(state.clone()),
                    None,
                    black_box(&event),
                    now,
                )
                .unwrap()
        })
    });
}

criterion_group!(evaluate, benches);
criterion_main!(evaluate);
