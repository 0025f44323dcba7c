//! Reading a `SegmentStatusUpdate` off the wire straight into its packed form.
//!
//! prost would decode each input message into seven allocations that the consumer frees again
//! as soon as it has packed them ([`Update::new`]). Here the wire format is read in place: the
//! fields' values and the ranges of the strings go into scratch vectors the [`Decoder`] keeps,
//! and are packed into one allocation. The same input decodes or fails as with prost: fields
//! in any order or repeated, packed or unpacked regions, unknown fields and groups skipped, a
//! string that is not UTF-8 refused (a property test compares the two over any input).

use std::ops::Range;

use super::{Change, Head, Update, pack};

/// prost's limit on nested groups and messages.
const RECURSION_LIMIT: u32 = 100;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const DELIMITED: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// Why bytes are not a `SegmentStatusUpdate`: what is wrong, and in which field when it is
/// a known one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    field: Option<&'static str>,
    problem: &'static str,
}

impl DecodeError {
    fn new(problem: &'static str) -> Self {
        Self {
            field: None,
            problem,
        }
    }

    fn in_field(field: &'static str, problem: &'static str) -> Self {
        Self {
            field: Some(field),
            problem,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field {
            Some(field) => write!(f, "{field}: {}", self.problem),
            None => f.write_str(self.problem),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes updates; its scratch space is kept from one to the next, so that decoding allocates
/// only the packed update.
#[derive(Debug, Default)]
pub struct Decoder {
    changes: Vec<Change>,
    regions: Vec<u32>,
    /// Each data partner's id and its ids' ranges in `uuids`.
    partners: Vec<(u64, Range<usize>)>,
    /// Where each partner id lies in the input.
    uuids: Vec<Range<usize>>,
    packed: Vec<u8>,
}

impl Decoder {
    /// The update `payload` encodes, packed.
    pub fn decode(&mut self, payload: &[u8]) -> Result<Update, DecodeError> {
        self.changes.clear();
        self.regions.clear();
        self.partners.clear();
        self.uuids.clear();
        let mut head = Head::default();
        let mut user = 0..0;
        let mut input = Input {
            bytes: payload,
            at: 0,
            end: payload.len(),
        };
        while input.at < input.end {
            let (tag, wire) = input.key()?;
            match tag {
                1 => user = input.string(wire, "user_id")?,
                2 if wire == DELIMITED => {
                    let mut packed = input.delimited("regions")?;
                    while packed.at < packed.end {
                        self.regions.push(packed.varint()? as u32);
                    }
                }
                2 => self.regions.push(input.scalar(wire, "regions")? as u32),
                3 => {
                    expect(wire, DELIMITED, "partner_ids")?;
                    let mut entry = input.delimited("partner_ids")?;
                    let (mut id, first) = (0, self.uuids.len());
                    while entry.at < entry.end {
                        match entry.key()? {
                            (1, wire) => id = entry.scalar(wire, "data_partner_id")?,
                            (2, wire) => self.uuids.push(entry.string(wire, "partner_uuids")?),
                            (tag, wire) => entry.skip(wire, tag, RECURSION_LIMIT - 1)?,
                        }
                    }
                    self.partners.push((id, first..self.uuids.len()));
                }
                4 => {
                    expect(wire, DELIMITED, "changes")?;
                    let mut entry = input.delimited("changes")?;
                    let mut change = Change {
                        segment_id: 0,
                        status: 0,
                        reason: 0,
                        time_unix_ms: 0,
                    };
                    while entry.at < entry.end {
                        match entry.key()? {
                            (1, wire) => change.segment_id = entry.scalar(wire, "segment_id")?,
                            (2, wire) => change.status = entry.scalar(wire, "status")? as i32,
                            (3, wire) => change.reason = entry.scalar(wire, "reason")? as i32,
                            (4, wire) => {
                                change.time_unix_ms = entry.scalar(wire, "time_unix_ms")? as i64;
                            }
                            (tag, wire) => entry.skip(wire, tag, RECURSION_LIMIT - 1)?,
                        }
                    }
                    self.changes.push(change);
                }
                5 => head.origin = input.scalar(wire, "origin")? as i32,
                6 => head.produced_unix_ms = input.scalar(wire, "produced_unix_ms")? as i64,
                7 => head.sequence = input.scalar(wire, "sequence")?,
                8 => head.only_data_partner_id = Some(input.scalar(wire, "only_data_partner_id")?),
                _ => input.skip(wire, tag, RECURSION_LIMIT)?,
            }
        }
        let uuids = &self.uuids;
        pack(
            &mut self.packed,
            &head,
            self.changes.iter().copied(),
            self.regions.iter().copied(),
            &payload[user],
            self.partners.iter().map(|(id, range)| {
                let ids = uuids[range.clone()].iter();
                (*id, ids.map(|r| &payload[r.clone()]))
            }),
        );
        Ok(Update(self.packed.as_slice().into()))
    }
}

/// The part of the input being read: a message, or one nested in it.
struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
    end: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        if self.at == self.end {
            return Err(DecodeError::new("the message ends within a field"));
        }
        self.at += 1;
        Ok(self.bytes[self.at - 1])
    }

    /// A base-128 varint of at most ten bytes, as prost reads one.
    fn varint(&mut self) -> Result<u64, DecodeError> {
        // Most are one byte: keys, lengths, small numbers.
        if self.at < self.end && self.bytes[self.at] < 0x80 {
            self.at += 1;
            return Ok(u64::from(self.bytes[self.at - 1]));
        }
        let mut value = 0;
        let mut shift = 0;
        while shift < 64 {
            let byte = self.byte()?;
            if shift == 63 && byte > 1 {
                break;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
            shift += 7;
        }
        Err(DecodeError::new("a varint is longer than 64 bits"))
    }

    /// A field's tag and wire type.
    fn key(&mut self) -> Result<(u32, u8), DecodeError> {
        let key = u32::try_from(self.varint()?)
            .map_err(|_| DecodeError::new("a field key is too large"))?;
        let wire = (key & 7) as u8;
        if wire > FIXED32 {
            return Err(DecodeError::new("a field has an unknown wire type"));
        }
        if key >> 3 == 0 {
            return Err(DecodeError::new("a field has tag 0"));
        }
        Ok((key >> 3, wire))
    }

    /// The value of a varint field.
    fn scalar(&mut self, wire: u8, field: &'static str) -> Result<u64, DecodeError> {
        expect(wire, VARINT, field)?;
        self.varint()
    }

    /// The input a length-delimited field holds; this input goes on after it.
    fn delimited(&mut self, field: &'static str) -> Result<Self, DecodeError> {
        let len = self.varint()?;
        if len > (self.end - self.at) as u64 {
            return Err(DecodeError::in_field(
                field,
                "its length runs past the message's end",
            ));
        }
        let start = self.at;
        self.at += len as usize;
        Ok(Input {
            bytes: self.bytes,
            at: start,
            end: self.at,
        })
    }

    /// Where a string field's UTF-8 lies.
    fn string(&mut self, wire: u8, field: &'static str) -> Result<Range<usize>, DecodeError> {
        expect(wire, DELIMITED, field)?;
        let value = self.delimited(field)?;
        let range = value.at..value.end;
        std::str::from_utf8(&self.bytes[range.clone()])
            .map_err(|_| DecodeError::in_field(field, "not UTF-8"))?;
        Ok(range)
    }

    /// Passes over a field this version does not know (groups nested at most `limit` deep).
    fn skip(&mut self, wire: u8, tag: u32, limit: u32) -> Result<(), DecodeError> {
        if limit == 0 {
            return Err(DecodeError::new("unknown groups are nested too deep"));
        }
        let len = match wire {
            VARINT => self.varint().map(|_| 0)?,
            FIXED64 => 8,
            DELIMITED => self.varint()?,
            FIXED32 => 4,
            START_GROUP => loop {
                match self.key()? {
                    (inner, END_GROUP) if inner == tag => break 0,
                    (_, END_GROUP) => {
                        return Err(DecodeError::new("a group ends with another's tag"));
                    }
                    (inner, wire) => self.skip(wire, inner, limit - 1)?,
                }
            },
            _ => return Err(DecodeError::new("a group ends that did not start")),
        };
        if len > (self.end - self.at) as u64 {
            return Err(DecodeError::new("the message ends within an unknown field"));
        }
        self.at += len as usize;
        Ok(())
    }
}

/// A known field must come in its own wire type.
fn expect(wire: u8, expected: u8, field: &'static str) -> Result<(), DecodeError> {
    if wire == expected {
        Ok(())
    } else {
        Err(DecodeError::in_field(field, "the wrong wire type"))
    }
}

#[cfg(test)]
mod tests;
