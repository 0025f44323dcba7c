//! Delivery's hot paths, per event or per batch: decode, route, batch, encode, sign.
//! `make bench` runs these and records the figures in docs/BENCHMARKS.md.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use delivery::auth::sign;
use delivery::batcher::{DestinationBatch, RoutedEvent};
use delivery::config::{DeliveryConfig, HmacAlgorithm};
use delivery::payload::{idempotency_key, write_body};
use delivery::router::Router;
use delivery::update::{Decoder, Update};
use model::{ChangeReason, Origin, PartnerIds, SegmentChange, SegmentStatusUpdate};
use prost::Message as _;

/// 20 destinations, each mapping 50 of 1000 segments (overlapping).
fn config() -> DeliveryConfig {
    let mut yaml = String::from("destinations:\n");
    for d in 0..20_u64 {
        let segments: Vec<String> = (0..50)
            .map(|i| format!("{}: \"s{}\"", (d * 37 + i * 19) % 1000, i))
            .collect();
        yaml.push_str(&format!(
            "  - {{ id: {}, url: https://p{d}.example/in, client_id: c, user_dpid: 20915, data_partner: 1234, segments: {{ {} }}, batch: {{ max_users: 1000, max_bytes: 10485760 }} }}\n",
            400 + d,
            segments.join(", ")
        ));
    }
    DeliveryConfig::parse(Path::new("bench.yaml"), &yaml, &|_| None).unwrap()
}

fn update(user: u64) -> SegmentStatusUpdate {
    SegmentStatusUpdate {
        user_id: format!("{:038}", user * 7_919),
        regions: vec![6, 7],
        partner_ids: vec![PartnerIds {
            data_partner_id: 1234,
            partner_uuids: vec![format!("p-{user}")],
        }],
        changes: (0..3)
            .map(|i| {
                let (segment, time) = ((user * 13 + i * 101) % 1000, 1_764_000_000_000 + i as i64);
                if i % 2 == 0 {
                    SegmentChange::qualified(segment, time)
                } else {
                    SegmentChange::unsegmented(segment, ChangeReason::Ttl, time)
                }
            })
            .collect(),
        origin: Origin::Realtime as i32,
        produced_unix_ms: 1_764_000_000_000,
        sequence: 1_764_000_000_000 * 1024 + user,
        only_data_partner_id: None,
    }
}

fn benches(c: &mut Criterion) {
    let config = config();
    let encoded = update(1).encode_to_vec();
    c.bench_function("decode SegmentStatusUpdate", |b| {
        b.iter(|| SegmentStatusUpdate::decode(black_box(encoded.as_slice())).unwrap())
    });
    // What the consumer did until 78659bf, and what it does instead: the wire read straight
    // into the packed update.
    c.bench_function("decode with prost, then pack", |b| {
        b.iter(|| {
            let update = SegmentStatusUpdate::decode(black_box(encoded.as_slice())).unwrap();
            Update::new(&update)
        })
    });
    let mut decoder = Decoder::default();
    c.bench_function("decode into the packed update", |b| {
        b.iter(|| decoder.decode(black_box(encoded.as_slice())).unwrap())
    });

    let mut router = Router::new(&config.destinations);
    let one = Update::new(&update(1));
    let mut targets = Vec::new();
    c.bench_function("route one update (20 destinations)", |b| {
        b.iter(|| {
            router.route(black_box(&one), &mut targets);
            targets.len()
        })
    });

    let destination = config.destinations[0].clone();
    let updates: Vec<Update> = (0..1000).map(|u| Update::new(&update(u))).collect();
    // An event holding nothing against a queue budget (as replays and resyncs make them).
    let event = |update: &Update| RoutedEvent {
        update: update.clone(),
        source: None,
        held: Default::default(),
    };
    let mut group = c.benchmark_group("batch of 1000 users");
    group.throughput(Throughput::Elements(1000));
    // Since the entries are written as users join, adding writes their JSON, and the body
    // copies it (named apart from the earlier figures, which split the work the other way).
    group.bench_function("add to batch, entries written", |b| {
        b.iter(|| {
            let mut batch = DestinationBatch::new(destination.clone());
            for update in &updates {
                batch.add(event(update)).unwrap();
            }
            batch.body_bytes()
        })
    });
    // As a lane fills its batch: one batch from request to request, and each user's part of
    // their delivery log records written as they join.
    let mut lane_batch = DestinationBatch::new(destination.clone());
    lane_batch.keep_log();
    group.bench_function("a lane's batch with the log: added, then taken", |b| {
        b.iter(|| {
            for update in &updates {
                lane_batch.add(event(update)).unwrap();
            }
            lane_batch.take_events().len()
        })
    });
    let mut batch = DestinationBatch::new(destination.clone());
    for update in &updates {
        batch.add(event(update)).unwrap();
    }
    let mut body = Vec::with_capacity(batch.body_bytes());
    group.bench_function("write JSON body from the entries", |b| {
        b.iter(|| {
            write_body(black_box(&batch), 1_764_000_000_000, &mut body);
            body.len()
        })
    });
    group.bench_function("idempotency key", |b| {
        b.iter(|| idempotency_key(black_box(&batch), "segment-status"))
    });
    group.finish();

    write_body(&batch, 1_764_000_000_000, &mut body);
    let mut group = c.benchmark_group("HMAC of a 1000-user body");
    group.throughput(Throughput::Bytes(body.len() as u64));
    for (name, algorithm) in [
        ("md5", HmacAlgorithm::Md5),
        ("sha1", HmacAlgorithm::Sha1),
        ("sha256", HmacAlgorithm::Sha256),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| sign(algorithm, b"a-partner-key", black_box(&body)))
        });
    }
    group.finish();
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
