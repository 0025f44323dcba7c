//! The qualifier's hot path: one event applied to one user, with 1,000 segments of 2–8
//! conditions over 5,000 traits; and stored users taken out of the store and put back.
//! `make bench` records the figures in docs/BENCHMARKS.md.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use model::pb::{TraitRealization, trait_event};
use model::{Origin, TraitEvent};
use qualifier::config::Definitions;
use qualifier::evaluate::{Evaluator, Histories};
use qualifier::store::{Layout, PartitionStore};

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

/// Users taken from the store and put back as a transaction does, one after another, each
/// not touched in the two transactions before (decoded from their record), with the
/// transaction's end (`settle`: encoding them) every 300 users.
fn store(c: &mut Criterion) {
    const USERS: usize = 10_000;
    const TRANSACTION: usize = 300;
    let now = 1_764_000_000_000_i64;
    let mut store = PartitionStore::default();
    let ids: Vec<String> = (0..USERS).map(|i| format!("user-{i:08}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let mut state = model::UserState {
            user_id: id.clone(),
            last_seen_unix_ms: now,
            ..model::UserState::default()
        };
        // 20 traits of 1–15 realizations each, two memberships, a region.
        for t in 0..20_u64 {
            let times = 1 + (i as u64 + t) % 15;
            state.traits.push(model::pb::TraitHistory {
                trait_id: 1 + (i as u64 * 31 + t * 97) % 5_000,
                times_unix_ms: (0..times as i64).map(|k| now - 60_000 * k).collect(),
            });
        }
        state.memberships = (0..2)
            .map(|s| model::pb::Membership {
                segment_id: s,
                since_unix_ms: now,
                refreshed_unix_ms: 0,
            })
            .collect();
        state.regions = vec![6];
        store.put(state, None);
    }
    settle(&mut store, Layout::Whole);
    settle(&mut store, Layout::Whole);
    let mut next = 0;
    c.bench_function(
        "take, put back and settle a stored user (20 traits, 1-15 times each)",
        |b| {
            b.iter(|| {
                let (state, due) = store.take(black_box(&ids[next])).unwrap();
                store.put(state, due);
                next = (next + 1) % USERS;
                if next % TRANSACTION == 0 {
                    settle(&mut store, Layout::Whole);
                }
            })
        },
    );
}

/// Zipf-heavy users (1,000 trait histories, ~15 KB records) taken, one history changed as an
/// event changes it, and put back, each once per transaction (so still decoded from the
/// transaction before, as busy users are), with the transaction's end every 30: encoded whole
/// (`put`, any history may have changed), and from the record they were taken from with only
/// the changed history encoded (`put_changed`, as the processor puts them back); and so, with
/// each user let go between their transactions and decoded from their record when taken (as a
/// busy user is whom `--warm-state-bytes` has no room for).
fn heavy_users(c: &mut Criterion) {
    const USERS: usize = 30;
    const TRAITS: u64 = 1_000;
    const TRANSACTION: usize = 30;
    let now = 1_764_000_000_000_i64;
    let ids: Vec<String> = (0..USERS).map(|i| format!("heavy-{i:08}")).collect();
    let mut group =
        c.benchmark_group("take, change one history, put back and settle a user of 1000 traits");
    let parts = Layout::Parts { now };
    for (name, splice, layout, cold) in [
        ("whole", false, Layout::Whole, false),
        ("changed history only", true, Layout::Whole, false),
        ("changed history only, in trait parts", true, parts, false),
        (
            "changed history only, decoded again",
            true,
            Layout::Whole,
            true,
        ),
    ] {
        let mut store = PartitionStore::default();
        for id in &ids {
            store.put(
                model::UserState {
                    user_id: id.clone(),
                    last_seen_unix_ms: now,
                    traits: (1..=TRAITS)
                        .map(|trait_id| model::pb::TraitHistory {
                            trait_id,
                            times_unix_ms: vec![now - 60_000, now],
                        })
                        .collect(),
                    ..model::UserState::default()
                },
                None,
            );
        }
        settle(&mut store, layout);
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let (mut state, due) = store.take(black_box(&ids[next])).unwrap();
                let index = next * 7 % TRAITS as usize;
                state.last_seen_unix_ms += 1;
                state.traits[index].times_unix_ms[1] += 1;
                if splice {
                    let trait_id = state.traits[index].trait_id;
                    store.put_changed(state, due, Histories::One(trait_id), true);
                } else {
                    store.put(state, due);
                }
                next = (next + 1) % USERS;
                if next % TRANSACTION == 0 {
                    settle(&mut store, layout);
                    if cold {
                        // An empty transaction: the users are let go, decoded when taken.
                        settle(&mut store, layout);
                    }
                }
            })
        });
    }
    group.finish();
}

/// The transaction's end: the users put back encoded, each changelog record handed over as the
/// processor hands it to the producer. Only the last transaction's users are kept decoded (no
/// budget for more), so that a user taken again later is decoded: that cost is measured.
fn settle(store: &mut PartitionStore, layout: Layout) {
    store
        .settle(layout, 0, |user, record| {
            black_box((user, record));
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
}

criterion_group!(evaluate, benches, store, heavy_users);
criterion_main!(evaluate);
