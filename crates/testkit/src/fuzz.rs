//! Fuzzing with proptest, on the stable toolchain and inside `cargo test`: arbitrary bytes,
//! and structure-aware inputs made by mutating the seeds of a committed corpus
//! (`crates/<crate>/tests/corpus/<target>/`, every file of which is also run as a regression
//! case). `FUZZ_CASES` sets the cases per property: a short run by default (`make test`), a
//! long one when set (`make chaos` sets `FUZZ_CASES=200000`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// Cases per property when `FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 512;

/// Cases per fuzz property: `FUZZ_CASES`, else [`DEFAULT_CASES`]. A value that is not a
/// positive number is a mistake worth stopping for, not a reason to run the short form.
pub fn cases() -> u32 {
    match std::env::var("FUZZ_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("FUZZ_CASES must be a positive number, got `{text}`")),
        Err(_) => DEFAULT_CASES,
    }
}

/// The proptest configuration of a fuzz property: [`cases`] cases; failures are not persisted
/// to files (a failing input is printed, and belongs in the corpus once fixed).
pub fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// The corpus directory `tests/corpus/<target>` of the crate at `manifest_dir`.
pub fn corpus_dir(manifest_dir: &str, target: &str) -> PathBuf {
    Path::new(manifest_dir)
        .join("tests")
        .join("corpus")
        .join(target)
}

/// Every file of the corpus, sorted by name: (file name, bytes). Panics when the corpus is
/// missing or empty: a fuzz target without seeds would quietly fuzz less.
pub fn corpus(manifest_dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(manifest_dir, target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    assert!(
        !files.is_empty(),
        "the fuzz corpus {} is empty",
        dir.display()
    );
    files.sort();
    files
}

/// Runs `f` and panics if it took longer than `limit`: an input that makes a parser hang
/// (or go quadratic) is a failure like a panic.
pub fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    assert!(took <= limit, "{what} took {took:?}, more than {limit:?}");
    out
}

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Truncate(Index),
    /// A range of another seed, inserted.
    Splice(Index, Index, Index, usize),
}

/// Bytes that tend to matter to JSON, protobuf and the rule language.
const INTERESTING: &[u8] =
    b"\x00\x01\x7f\x80\xff\"\\[]{}:,\n\r\t ()T0123456789-+.eEtrufalsnNOTANDORWITHINd><=";

fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![any::<u8>(), proptest::sample::select(INTERESTING.to_vec()),]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8_u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<Index>(), byte()).prop_map(|(at, b)| Mutation::SetByte(at, b)),
        (any::<Index>(), proptest::collection::vec(byte(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1..32_usize).prop_map(|(at, len)| Mutation::Delete(at, len)),
        (any::<Index>(), 1..64_usize).prop_map(|(at, len)| Mutation::Duplicate(at, len)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>(), any::<Index>(), 1..64_usize)
            .prop_map(|(at, seed, from, len)| Mutation::Splice(at, seed, from, len)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation, seeds: &[Vec<u8>]) {
    // Positions index the current bytes, end included (insertions may append).
    let at = |i: &Index, bytes: &Vec<u8>| i.index(bytes.len() + 1);
    match mutation {
        Mutation::FlipBit(i, bit) => {
            if !bytes.is_empty() {
                let at = i.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
        }
        Mutation::SetByte(i, b) => {
            if !bytes.is_empty() {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
        }
        Mutation::Insert(i, new) => {
            let at = at(i, bytes);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Delete(i, len) => {
            let at = at(i, bytes);
            let end = (at + len).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Duplicate(i, len) => {
            let at = at(i, bytes);
            let end = (at + len).min(bytes.len());
            let copy = bytes[at..end].to_vec();
            bytes.splice(end..end, copy);
        }
        Mutation::Truncate(i) => {
            let at = at(i, bytes);
            bytes.truncate(at);
        }
        Mutation::Splice(i, seed, from, len) => {
            let other = &seeds[seed.index(seeds.len())];
            let from = from.index(other.len() + 1);
            let end = (from + len).min(other.len());
            let at = at(i, bytes);
            bytes.splice(at..at, other[from..end].iter().copied());
        }
    }
}

/// Structure-aware inputs: a seed with 1 to 8 mutations (bit flips, interesting bytes,
/// insertions, deletions, duplicated ranges, truncation, ranges spliced in from other seeds).
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "mutations need at least one seed");
    let count = seeds.len();
    (0..count, proptest::collection::vec(mutation(), 1..8)).prop_map(move |(seed, edits)| {
        let mut bytes = seeds[seed].clone();
        for edit in &edits {
            apply(&mut bytes, edit, &seeds);
        }
        bytes
    })
}

/// Arbitrary bytes (up to 4 KiB) half of the time, mutated seeds the other half.
pub fn bytes(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096),
        mutated(seeds),
    ]
}

/// `message` with unknown fields appended, one of each wire type protobuf has (varint,
/// 64-bit, length-delimited, 32-bit), under field numbers no schema of ours uses: what a
/// message written by a newer producer looks like to an older consumer.
pub fn with_unknown_fields(message: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    // Field 1000, varint: tag (1000 << 3 | 0) = 8000 → 0xc0 0x3e; value 300 → 0xac 0x02.
    out.extend_from_slice(&[0xc0, 0x3e, 0xac, 0x02]);
    // Field 1001, 64-bit: tag 8009 → 0xc9 0x3e; 8 bytes.
    out.extend_from_slice(&[0xc9, 0x3e, 1, 2, 3, 4, 5, 6, 7, 8]);
    // Field 1002, length-delimited: tag 8018 → 0xd2 0x3e; length 5; "extra".
    out.extend_from_slice(&[0xd2, 0x3e, 5]);
    out.extend_from_slice(b"extra");
    // Field 1003, 32-bit: tag 8029 → 0xdd 0x3e; 4 bytes.
    out.extend_from_slice(&[0xdd, 0x3e, 9, 9, 9, 9]);
    out
}

/// A length-delimited field `field` holding `bytes` (e.g. a nested message), to build inputs
/// by hand.
pub fn length_delimited(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 10);
    varint(&mut out, u64::from(field) << 3 | 2);
    varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_well_formed_protobuf() {
        // Parse the appended tail by hand: four fields of the four wire types.
        let tail = with_unknown_fields(&[]);
        let mut fields = Vec::new();
        let mut i = 0;
        while i < tail.len() {
            let tag = u32::from(tail[i] & 0x7f) | u32::from(tail[i + 1]) << 7;
            i += 2;
            let (number, wire_type) = (tag >> 3, tag & 7);
            i += match wire_type {
                0 => 2,
                1 => 8,
                2 => 1 + usize::from(tail[i]),
                5 => 4,
                other => panic!("wire type {other}"),
            };
            fields.push((number, wire_type));
        }
        assert_eq!(i, tail.len());
        assert_eq!(fields, [(1000, 0), (1001, 1), (1002, 2), (1003, 5)]);
        assert_eq!(length_delimited(4, b"ab"), [0x22, 2, b'a', b'b']);
    }

    #[test]
    fn mutations_change_seeds_and_stay_in_bounds() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let seeds = vec![b"{\"a\":1}".to_vec(), Vec::new(), b"T1 AND T2".to_vec()];
        let mut runner = TestRunner::deterministic();
        let strategy = mutated(seeds.clone());
        let mut changed = 0;
        for _ in 0..500 {
            let value = strategy.new_tree(&mut runner).unwrap().current();
            changed += usize::from(!seeds.contains(&value));
        }
        assert!(
            changed > 300,
            "only {changed} of 500 inputs differ from a seed"
        );
    }
}
