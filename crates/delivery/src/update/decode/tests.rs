//! The decoder reads what prost reads: for any input, both decode it to the same update or
//! both refuse it.

use model::SegmentStatusUpdate;
use model::strategies::any_status_update;
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use prost::Message as _;
use prost::encoding::encode_varint as varint;
use testkit::fuzz::length_delimited;

use super::Decoder;

/// What prost makes of `bytes`, and what the decoder makes of them, unpacked to compare.
fn both(bytes: &[u8]) -> (Option<SegmentStatusUpdate>, Option<SegmentStatusUpdate>) {
    let prost = SegmentStatusUpdate::decode(bytes).ok();
    let ours = Decoder::default().decode(bytes).ok().map(|u| u.to_proto());
    (prost, ours)
}

fn key(tag: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(tag << 3 | u32::from(wire)), out);
}

/// An update's fields, each as a message of its own: concatenated in any order they are one
/// message (protobuf merges them), repeated elements in the order they come.
fn field_chunks(update: &SegmentStatusUpdate, unpacked_regions: bool) -> Vec<Vec<u8>> {
    let one = |u: SegmentStatusUpdate| u.encode_to_vec();
    let mut chunks = vec![
        one(SegmentStatusUpdate {
            user_id: update.user_id.clone(),
            ..Default::default()
        }),
        one(SegmentStatusUpdate {
            origin: update.origin,
            produced_unix_ms: update.produced_unix_ms,
            ..Default::default()
        }),
        one(SegmentStatusUpdate {
            sequence: update.sequence,
            only_data_partner_id: update.only_data_partner_id,
            ..Default::default()
        }),
    ];
    if unpacked_regions {
        for &region in &update.regions {
            let mut chunk = Vec::new();
            key(2, 0, &mut chunk);
            varint(u64::from(region), &mut chunk);
            chunks.push(chunk);
        }
    } else {
        chunks.push(one(SegmentStatusUpdate {
            regions: update.regions.clone(),
            ..Default::default()
        }));
    }
    for partner in &update.partner_ids {
        chunks.push(one(SegmentStatusUpdate {
            partner_ids: vec![partner.clone()],
            ..Default::default()
        }));
    }
    for change in &update.changes {
        chunks.push(change_chunk(&change.encode_to_vec()));
    }
    chunks
}

fn change_chunk(change: &[u8]) -> Vec<u8> {
    length_delimited(4, change)
}

/// A field this version does not know, of any wire type, groups nested in groups included.
fn unknown_field() -> impl Strategy<Value = Vec<u8>> {
    let leaf = (
        9u32..40,
        0u8..6,
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..12),
    )
        .prop_filter("no stray end of group", |(_, wire, _, _)| *wire != 4)
        .prop_map(|(tag, wire, value, bytes)| {
            let mut out = Vec::new();
            key(tag, wire, &mut out);
            match wire {
                0 => varint(value, &mut out),
                1 => out.extend_from_slice(&value.to_le_bytes()),
                2 => {
                    varint(bytes.len() as u64, &mut out);
                    out.extend_from_slice(&bytes);
                }
                3 => key(tag, 4, &mut out),
                _ => out.extend_from_slice(&(value as u32).to_le_bytes()),
            }
            out
        });
    leaf.prop_recursive(3, 12, 4, |inner| {
        (9u32..40, prop::collection::vec(inner, 0..4)).prop_map(|(tag, fields)| {
            let mut out = Vec::new();
            key(tag, 3, &mut out);
            out.extend(fields.concat());
            key(tag, 4, &mut out);
            out
        })
    })
}

/// A well-formed message: an update's fields in any order, packed or unpacked regions,
/// unknown fields among them, a change carrying unknown fields of its own.
fn well_formed() -> impl Strategy<Value = Vec<u8>> {
    (
        any_status_update(),
        any::<bool>(),
        prop::collection::vec(unknown_field(), 0..4),
        prop::collection::vec(unknown_field(), 0..2),
    )
        .prop_flat_map(|(update, unpacked, unknown, in_change)| {
            let mut chunks = field_chunks(&update, unpacked);
            chunks.extend(unknown);
            if let Some(change) = update.changes.first() {
                let mut bytes = change.encode_to_vec();
                bytes.extend(in_change.concat());
                chunks.push(change_chunk(&bytes));
            }
            Just(chunks).prop_shuffle().prop_map(|c| c.concat())
        })
}

/// Damage done to a message: cut short, a byte changed, a byte put in.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Cut(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::None),
        any::<prop::sample::Index>().prop_map(Damage::Cut),
        (any::<prop::sample::Index>(), 1u8..).prop_map(|(i, m)| Damage::Flip(i, m)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
    ]
}

fn apply(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    match damage {
        Damage::None => {}
        Damage::Cut(at) => bytes.truncate(at.index(bytes.len())),
        Damage::Flip(at, mask) => {
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
        }
        Damage::Insert(at, byte) => bytes.insert(at.index(bytes.len()), *byte),
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_decoder_reads_any_message_as_prost_does(
        bytes in well_formed(),
        damage in damage(),
    ) {
        let bytes = apply(bytes, &damage);
        let (prost, ours) = both(&bytes);
        prop_assert_eq!(ours, prost, "{:02x?}", bytes);
    }

    #[test]
    fn the_decoder_refuses_what_prost_refuses_in_any_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        let (prost, ours) = both(&bytes);
        prop_assert_eq!(ours, prost, "{:02x?}", bytes);
    }
}

/// Inputs at the edges of the wire format, each decoded (or refused) as prost does.
#[test]
fn edge_cases_are_read_as_prost_reads_them() {
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("tag 0", vec![0x00, 0x01]),
        ("wire type 6", vec![0x0e]),
        ("wire type 7", vec![0x0f]),
        ("user_id as a varint", vec![0x08, 0x01]),
        ("changes as a varint", vec![0x20, 0x01]),
        ("sequence as a string", vec![0x3a, 0x00]),
        ("regions as fixed32", vec![0x15, 1, 0, 0, 0]),
        ("end of a group never started", vec![0x4c]),
        ("a group left open", vec![0x4b, 0x50, 0x01]),
        ("a group closed with another's tag", vec![0x4b, 0x54]),
        ("a length past the end", vec![0x0a, 0x05, b'u']),
        ("user_id not UTF-8", vec![0x0a, 0x02, 0xc3, 0x28]),
        (
            "a partner id not UTF-8",
            vec![0x1a, 0x04, 0x12, 0x02, 0xff, 0xfe],
        ),
        (
            "a packed region crossing its field's end",
            vec![0x12, 0x01, 0x80, 0x01],
        ),
        (
            "a change crossing its field's end",
            vec![0x22, 0x01, 0x08, 0x01],
        ),
        ("ten-byte varint ending in 1", {
            let mut b = vec![0x38];
            b.extend([0xff; 9]);
            b.push(0x01);
            b
        }),
        ("ten-byte varint ending in 2", {
            let mut b = vec![0x38];
            b.extend([0xff; 9]);
            b.push(0x02);
            b
        }),
        ("eleven-byte varint", {
            let mut b = vec![0x38];
            b.extend([0x80; 10]);
            b.push(0x00);
            b
        }),
        (
            "a key over 32 bits",
            vec![0x80, 0x80, 0x80, 0x80, 0x10, 0x00],
        ),
        ("a negative time", {
            let change = model::SegmentChange::qualified(1, -5);
            change_chunk(&change.encode_to_vec())
        }),
        ("a status past i32", {
            let mut change = Vec::new();
            key(2, 0, &mut change);
            varint(u64::MAX, &mut change);
            change_chunk(&change)
        }),
        ("a region past u32", {
            let mut b = Vec::new();
            key(2, 0, &mut b);
            varint(1 << 40 | 7, &mut b);
            b
        }),
    ];
    // Unknown groups nested as deep as prost allows, and one deeper, at the top and in a change.
    for depth in [98, 99, 100, 101] {
        let mut group = Vec::new();
        for _ in 0..depth {
            key(9, 3, &mut group);
        }
        for _ in 0..depth {
            key(9, 4, &mut group);
        }
        cases.push(("nested groups", group.clone()));
        cases.push(("nested groups in a change", change_chunk(&group)));
    }
    let mut read = 0;
    for (name, bytes) in &cases {
        let (prost, ours) = both(bytes);
        assert_eq!(ours, prost, "{name}: {bytes:02x?}");
        read += usize::from(prost.is_some());
    }
    assert!(
        read > 5 && read < cases.len(),
        "{read} of {} decoded",
        cases.len()
    );
}

/// The decoder's scratch space is emptied between messages: nothing of one update is in the
/// next.
#[test]
fn one_decoder_reads_message_after_message() {
    let mut decoder = Decoder::default();
    let runner = &mut proptest::test_runner::TestRunner::deterministic();
    for _ in 0..200 {
        let update = any_status_update().new_tree(runner).unwrap().current();
        let packed = decoder.decode(&update.encode_to_vec()).unwrap();
        assert_eq!(packed.to_proto(), update);
    }
}
