//! Stored records compressed: a user's record is kept compressed (zstd, with a dictionary made
//! of the partition's first records) while they are cold, and decompressed when they are taken.
//! The records of the Zipf-heavy fixture took 199 B per user in memory, and take 128 B with those
//! over [`PACKED_OVER`] bytes compressed, for no CPU per event measurably (docs/BENCHMARKS.md,
//! "The qualifier's records compressed in memory").
//!
//! The dictionary is the first records themselves, 64 KiB of them end to end (zstd's raw content
//! dictionary): a record is mostly field tags, lengths, trait and segment ids and times near the
//! other users', which zstd finds in them as matches. A dictionary trained by zstd's
//! trainer from 2 MiB of records packed them no smaller (115.6 B per user against 114.5) and
//! left the process ~10 MB larger after the training, which one restore does per partition.
//!
//! A compressed record starts with a byte a record never starts with (0: no protobuf field has
//! the number 0), then the plain record's length (a varint) and the zstd frame, without its magic
//! number, dictionary id, content size or checksum (the store reads back only what it wrote, and
//! each would be bytes per user).
//!
//! Until the dictionary is complete, records are kept as they are and the first ones (longer
//! than [`PACKED_OVER`] bytes) copied into it; the store packs the records it holds once it is.
//! Records of [`PACKED_OVER`] bytes or fewer are kept as they are, and so is a record that does
//! not come out shorter.

use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};
use zstd_safe::{CCtx, CParameter, DCtx, DParameter, FrameFormat};

use super::PartitionStore;
use super::users::Entry;

/// The byte a compressed record starts with.
const PACKED: u8 = 0;

/// Records of at most this many bytes are kept as they are: a light user's record would save
/// tens of bytes for ~2 µs at each let-go and take. At 1M light users (records of ~70 B) packing
/// those over 64 B took 1.21× the CPU per event, over 128 B 1.08×; at the Zipf-heavy fixture
/// over 256 B left 128 B per user of 199 (64: 105 B) for no CPU measurably.
pub(super) const PACKED_OVER: usize = 256;

/// The dictionary's size: the first records of at least this many bytes in all.
pub(super) const DICTIONARY_BYTES: usize = 64 << 10;

/// zstd's level: its default, 3.
const LEVEL: i32 = 3;

/// The compressor's window and match tables, smaller than level 3's own (a 2 MiB window, 128 K
/// and 64 K entries): the contexts are per partition, and took ~1.5 MB each after a busy user's
/// record of tens of KB at level 3's, ~0.7 MB at these. They packed the fixture's records into
/// 0.7 % more bytes (10.19 MB against 10.12 for 82,471 users).
const WINDOW_LOG: u32 = 17;
const TABLE_LOG: u32 = 14;

/// What [`Packer::pack`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Packed {
    /// Kept as it was: already compressed, too short, not shorter compressed, or copied into
    /// the dictionary, which is not complete yet.
    Kept,
    /// Compressed.
    Compressed,
    /// Copied into the dictionary, which is now complete: the records stored before are to be
    /// packed now.
    Ready,
}

/// Compresses and decompresses one partition's records.
#[derive(Debug)]
pub(super) struct Packer {
    stage: Stage,
    /// Where a record is compressed, or decompressed to be read.
    scratch: Vec<u8>,
}

enum Stage {
    /// Copying records into the dictionary until it holds `until` bytes.
    Gathering { dictionary: Vec<u8>, until: usize },
    Ready {
        compress: CCtx<'static>,
        decompress: DCtx<'static>,
    },
    /// zstd refused the dictionary or a setting (it does not with these): records are kept as
    /// they are.
    Off,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Gathering { .. } => "Gathering",
            Stage::Ready { .. } => "Ready",
            Stage::Off => "Off",
        })
    }
}

impl Default for Packer {
    fn default() -> Self {
        Self::with_dictionary_of(DICTIONARY_BYTES)
    }
}

impl Packer {
    /// A packer whose dictionary is the first records of at least `bytes` bytes in all.
    pub(super) fn with_dictionary_of(bytes: usize) -> Self {
        let stage = Stage::Gathering {
            dictionary: Vec::new(),
            until: bytes,
        };
        Self {
            stage,
            scratch: Vec::new(),
        }
    }

    /// Whether the dictionary is complete, and records packed.
    #[cfg(test)]
    pub(super) fn is_ready(&self) -> bool {
        matches!(self.stage, Stage::Ready { .. })
    }

    /// Compresses `record` in place if it is worth it (see [`Packed`]).
    #[cfg(test)]
    pub(super) fn pack(&mut self, record: &mut Box<[u8]>) -> Packed {
        self.pack_from(record, 0)
    }

    /// Compresses the record in `bytes` from `start` on in place if it is worth it (see
    /// [`Packed`]); the bytes before it stay (an entry's id: `store/users.rs`).
    fn pack_from(&mut self, bytes: &mut Box<[u8]>, start: usize) -> Packed {
        let record = &bytes[start..];
        if record.len() <= PACKED_OVER || is_packed(record) {
            return Packed::Kept;
        }
        match &mut self.stage {
            Stage::Off => Packed::Kept,
            Stage::Gathering { dictionary, until } => {
                dictionary.extend_from_slice(record);
                if dictionary.len() < *until {
                    return Packed::Kept;
                }
                self.stage = ready(dictionary);
                Packed::Ready
            }
            Stage::Ready { compress, .. } => {
                let (len, frame) = (record.len(), &mut self.scratch);
                frame.clear();
                frame.reserve(zstd_safe::compress_bound(len));
                let header = 1 + encoded_len_varint(len as u64);
                // zstd fails only for want of room, and the room is its own bound.
                match compress.compress2(frame, record) {
                    Ok(written) if header + written < len => {
                        let mut packed = Vec::with_capacity(start + header + written);
                        packed.extend_from_slice(&bytes[..start]);
                        packed.push(PACKED);
                        encode_varint(len as u64, &mut packed);
                        packed.extend_from_slice(frame);
                        *bytes = packed.into_boxed_slice();
                        Packed::Compressed
                    }
                    _ => Packed::Kept,
                }
            }
        }
    }

    /// Packs the record of a user the store holds, whose bytes `held` counts.
    fn pack_held(&mut self, entry: &mut Entry, held: &mut usize) -> Packed {
        *held -= entry.held().len();
        let start = entry.held_start();
        let packed = self.pack_from(entry.bytes_mut(), start);
        *held += entry.held().len();
        packed
    }

    /// The record in `bytes` from `start` on as it was packed, and where it starts: in the
    /// same allocation if it was kept as it was, else in one of its own, from 0.
    pub(super) fn unpack(&mut self, bytes: Box<[u8]>, start: usize) -> (Box<[u8]>, usize) {
        if !is_packed(&bytes[start..]) {
            return (bytes, start);
        }
        let mut plain = Vec::new();
        self.decompress(&bytes[start..], &mut plain);
        (plain.into_boxed_slice(), 0)
    }

    /// `record`'s plain bytes, to be read (decompressed into the packer's scratch if packed).
    pub(super) fn read<'a>(&'a mut self, record: &'a [u8]) -> &'a [u8] {
        if !is_packed(record) {
            return record;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        self.decompress(record, &mut scratch);
        self.scratch = scratch;
        &self.scratch
    }

    /// Decompresses a packed record into `plain` (cleared first).
    fn decompress(&mut self, record: &[u8], plain: &mut Vec<u8>) {
        let Stage::Ready { decompress, .. } = &mut self.stage else {
            unreachable!("a record is packed only once the dictionary is complete");
        };
        let mut rest = &record[1..];
        // The store reads back only what `pack` wrote (tested below), so neither can fail.
        let len = decode_varint(&mut rest).expect("a packed record starts with its length");
        let len = usize::try_from(len).expect("a packed record's length fits memory");
        plain.clear();
        plain.reserve_exact(len);
        let written = decompress.decompress(plain, rest);
        assert_eq!(
            written,
            Ok(len),
            "a packed record decompresses to its length"
        );
    }
}

impl PartitionStore {
    /// Ends the warm set's transaction (`store/warm.rs`), packing the records of the users it
    /// lets go.
    pub(super) fn end_warm_transaction(&mut self, warm_budget: usize) {
        let (users, packer, held) = (&mut self.users, &mut self.packer, &mut self.held);
        let mut ready = false;
        self.warm.end_transaction(warm_budget, |user_id, record| {
            // A short record is kept as it is: no lookup for it.
            if record > PACKED_OVER
                && let Some(entry) = users.get_mut(user_id)
            {
                ready |= packer.pack_held(entry, held) == Packed::Ready;
            }
        });
        if ready {
            self.pack_cold();
        }
    }

    /// Packs the records of the users not kept decoded: at a restore's end, and when the
    /// dictionary completes (a warm user's record stays as it is, the base their next record
    /// is spliced from). The records copied into the dictionary by this pass are packed by a
    /// second one.
    pub fn pack_cold(&mut self) {
        for _ in 0..2 {
            let mut ready = false;
            for entry in self.users.iter_mut() {
                // A short record is kept as it is: its id is not looked up.
                if entry.held().len() > PACKED_OVER && !self.warm.contains(entry.id()) {
                    ready |= self.packer.pack_held(entry, &mut self.held) == Packed::Ready;
                }
            }
            if !ready {
                return;
            }
        }
    }
}

/// Whether `record` is compressed.
pub(super) fn is_packed(record: &[u8]) -> bool {
    record.first() == Some(&PACKED)
}

/// Contexts set up with `dictionary` (the partition's first records), or [`Stage::Off`] when
/// zstd refuses it or a setting (it says why in the log).
fn ready(dictionary: &[u8]) -> Stage {
    let (mut compress, mut decompress) = (CCtx::create(), DCtx::create());
    let set_up = [
        compress.set_parameter(CParameter::CompressionLevel(LEVEL)),
        compress.set_parameter(CParameter::Format(FrameFormat::Magicless)),
        compress.set_parameter(CParameter::ContentSizeFlag(false)),
        compress.set_parameter(CParameter::ChecksumFlag(false)),
        compress.set_parameter(CParameter::DictIdFlag(false)),
        compress.set_parameter(CParameter::WindowLog(WINDOW_LOG)),
        compress.set_parameter(CParameter::HashLog(TABLE_LOG)),
        compress.set_parameter(CParameter::ChainLog(TABLE_LOG)),
        compress.load_dictionary(dictionary),
        decompress.set_parameter(DParameter::Format(FrameFormat::Magicless)),
        decompress.load_dictionary(dictionary),
    ];
    if let Some(Err(code)) = set_up.into_iter().find(Result::is_err) {
        let error = zstd_safe::get_error_name(code);
        tracing::warn!(
            error,
            "zstd refused its settings or dictionary: the partition's stored records are kept uncompressed."
        );
        return Stage::Off;
    }
    Stage::Ready {
        compress,
        decompress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records alike as users' records are: the same fields, varied values.
    fn records(count: usize) -> Vec<Box<[u8]>> {
        (0..count)
            .map(|i| {
                let mut record = Vec::new();
                for t in 0..(i % 7 + 20) {
                    record.extend_from_slice(&[0x12, 12, 0x08, (t * 3) as u8, 0x12, 8]);
                    record.extend_from_slice(
                        &(1_780_000_000_000u64 + (i * 7919 + t) as u64).to_le_bytes(),
                    );
                }
                record.extend_from_slice(&[0x58, 0xd3, 0xa1, 0x8c, 0xf7, 0x9e, 0x01]);
                record.into_boxed_slice()
            })
            .collect()
    }

    #[test]
    fn records_are_kept_until_the_dictionary_is_complete_then_packed_shorter_and_read_back() {
        let mut packer = Packer::with_dictionary_of(64 << 10);
        let records = records(4000);
        let mut outcomes = Vec::new();
        let mut stored = Vec::new();
        for record in &records {
            let mut held = record.clone();
            outcomes.push(packer.pack(&mut held));
            stored.push(held);
        }
        let ready = outcomes
            .iter()
            .position(|o| *o == Packed::Ready)
            .expect("the dictionary completed");
        assert!(outcomes[..ready].iter().all(|o| *o == Packed::Kept));
        assert!(packer.is_ready());
        // The records copied into the dictionary were kept as they were: packed now, as the
        // store does.
        for held in &mut stored[..=ready] {
            assert_eq!(packer.pack(held), Packed::Compressed);
        }
        let (plain, packed): (usize, usize) = (
            records.iter().map(|r| r.len()).sum(),
            stored.iter().map(|r| r.len()).sum(),
        );
        assert!(packed * 2 < plain, "packed {packed} B of {plain}");
        for (record, held) in records.iter().zip(stored) {
            assert!(is_packed(&held));
            assert_eq!(packer.read(&held), &record[..]);
            let mut again = held.clone();
            assert_eq!(packer.pack(&mut again), Packed::Kept, "packed twice");
            let (plain, start) = packer.unpack(held, 0);
            assert_eq!((&plain[start..], start), (&record[..], 0));
            // Behind a user's id (a store's entry): the id stays as it was.
            let id = b"\x0a\x06user-7";
            let mut entry: Box<[u8]> = [&id[..], record].concat().into();
            assert_eq!(packer.pack_from(&mut entry, id.len()), Packed::Compressed);
            assert_eq!(&entry[..id.len()], id);
            assert_eq!(packer.read(&entry[id.len()..]), &record[..]);
            assert_eq!(
                packer.pack_from(&mut entry, id.len()),
                Packed::Kept,
                "packed twice"
            );
            let (plain, start) = packer.unpack(entry, id.len());
            assert_eq!((&plain[start..], start), (&record[..], 0));
        }
    }

    #[test]
    fn short_records_and_those_that_do_not_shrink_are_kept_as_they_are() {
        let mut packer = Packer::with_dictionary_of(64 << 10);
        for mut record in records(4000) {
            packer.pack(&mut record);
        }
        assert!(packer.is_ready());
        let mut short = Box::from(&[0x12u8; PACKED_OVER][..]);
        assert_eq!(packer.pack(&mut short), Packed::Kept);
        // Bytes no dictionary or match shrinks.
        let mut rng = fastrand::Rng::with_seed(7);
        let mut noise: Box<[u8]> = (0..400).map(|_| rng.u8(..)).collect();
        noise[0] = 0x12;
        let before = noise.clone();
        assert_eq!(packer.pack(&mut noise), Packed::Kept);
        assert_eq!(noise, before);
        assert_eq!(packer.unpack(noise, 0), (before, 0));
    }

    #[test]
    fn the_contexts_stay_small_after_a_busy_users_record() {
        let mut packer = Packer::with_dictionary_of(64 << 10);
        for mut record in records(4000) {
            packer.pack(&mut record);
        }
        // A busy user's record of tens of KB: level 3's own window and tables grew the
        // compressor's context to ~1.0 MB here (with the decompressor's, ~1.2 MB).
        let mut busy: Box<[u8]> = records(3000)
            .iter()
            .flat_map(|r| r.iter().copied())
            .take(30_000)
            .collect();
        assert_eq!(packer.pack(&mut busy), Packed::Compressed);
        let Stage::Ready {
            compress,
            decompress,
        } = &packer.stage
        else {
            panic!("the dictionary is complete");
        };
        let bytes = compress.sizeof() + decompress.sizeof();
        assert!(bytes < 900 << 10, "the contexts take {bytes} B");
    }
}
