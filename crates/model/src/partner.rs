//! The JSON body a partner receives (docs/PARTNER-CONTRACT.md#the-body) and its date format.
//!
//! Every scalar is a JSON *string*, even the numeric ones, exactly as the reference's code
//! sample shows. [`write_request`] writes a body through serde: the reference. Delivery writes
//! the same bytes in pieces, each user's entries ([`write_user`]) as the user joins a batch and
//! the head ([`write_head`]) when it is sent; the types borrow from the batch, and numbers and
//! dates are written straight into the output, with no allocation per field.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

/// A request body: one destination, one batch.
#[derive(Debug)]
pub struct PartnerRequest<'a> {
    /// When this request was built (`ProcessTime`), ms since the Unix epoch.
    pub process_time_unix_ms: i64,
    /// The device-ID namespace of the users (`User_DPID`, e.g. 20915 = iOS IDFA).
    pub user_dpid: u64,
    /// The receiving system's client id (`Client_ID`).
    pub client_id: &'a str,
    /// The id the partner assigned to this destination (`AAM_Destination_Id`).
    pub destination_id: u64,
    /// One entry per (user, partner id); `User_count` is their number.
    pub users: &'a [PartnerUser<'a>],
}

/// One `Users` entry.
#[derive(Debug)]
pub struct PartnerUser<'a> {
    /// Our user id (`AAM_UUID`).
    pub aam_uuid: &'a str,
    /// The user's id at the destination's data partner (`DataPartner_UUID`); `""` when none.
    pub data_partner_uuid: &'a str,
    /// Regions the user was seen in (`AAM_Regions`); omitted from the JSON when empty.
    pub regions: &'a [u32],
    pub segments: &'a [PartnerSegment],
}

/// One `Segments` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerSegment {
    /// The destination's id for the segment (`Segment_ID`), from its segment mapping.
    pub segment_id: Arc<str>,
    /// `Status`: `"1"` when active, `"0"` when inactive, opted out or unsegmented.
    pub active: bool,
    /// `DateTime`: when the user qualified or was unsegmented, ms since the Unix epoch.
    pub time_unix_ms: i64,
}

impl Serialize for PartnerRequest<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("PartnerRequest", 6)?;
        s.serialize_field("ProcessTime", &PartnerDate(self.process_time_unix_ms))?;
        s.serialize_field("User_DPID", &AsString(self.user_dpid))?;
        s.serialize_field("Client_ID", self.client_id)?;
        s.serialize_field("AAM_Destination_Id", &AsString(self.destination_id))?;
        s.serialize_field("User_count", &AsString(self.users.len()))?;
        s.serialize_field("Users", self.users)?;
        s.end()
    }
}

impl Serialize for PartnerUser<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = if self.regions.is_empty() { 3 } else { 4 };
        let mut s = serializer.serialize_struct("PartnerUser", fields)?;
        s.serialize_field("AAM_UUID", self.aam_uuid)?;
        s.serialize_field("DataPartner_UUID", self.data_partner_uuid)?;
        if self.regions.is_empty() {
            s.skip_field("AAM_Regions")?;
        } else {
            s.serialize_field("AAM_Regions", &Regions(self.regions))?;
        }
        s.serialize_field("Segments", self.segments)?;
        s.end()
    }
}

impl Serialize for PartnerSegment {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("PartnerSegment", 3)?;
        s.serialize_field("Segment_ID", &*self.segment_id)?;
        s.serialize_field("Status", if self.active { "1" } else { "0" })?;
        s.serialize_field("DateTime", &PartnerDate(self.time_unix_ms))?;
        s.end()
    }
}

/// Serializes a number as a JSON string without allocating.
struct AsString<T>(T);

impl<T: fmt::Display> Serialize for AsString<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

struct Regions<'a>(&'a [u32]);

impl Serialize for Regions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(AsString))
    }
}

/// A time in the partner date format, `EEE MMM dd HH:mm:ss 'UTC' yyyy` in UTC with English
/// names and a zero-padded day: `Wed Jul 06 16:17:42 UTC 2016` (Java's `Date.toString()` in
/// UTC). Holds ms since the Unix epoch; the milliseconds are not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartnerDate(pub i64);

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A date's fields as the partner format shows them.
struct DateParts {
    weekday: &'static str,
    month: &'static str,
    day: i64,
    second_of_day: i64,
    year: i64,
}

impl PartnerDate {
    fn parts(self) -> DateParts {
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        DateParts {
            // 1970-01-01 was a Thursday.
            weekday: WEEKDAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)],
            month: MONTHS[usize::try_from(month - 1).unwrap_or(0)],
            day,
            second_of_day: secs.rem_euclid(86_400),
            year,
        }
    }

    /// The date's 28 bytes, written without the formatting machinery (this runs for every
    /// segment of every body), for years 1000–9999; `None` outside them. The last date is
    /// kept per thread for the next, whole when it falls in the same second and its day's
    /// part (weekday, month, day, year) when on the same day: the dates of a batch mostly
    /// fall within a few seconds, and working out the calendar, then the time of day, was
    /// most of the cost.
    fn fixed_width(self) -> Option<[u8; 28]> {
        thread_local! {
            /// The last date written on this thread: its second since 1970 and its bytes.
            static LAST: Cell<(i64, [u8; 28])> = const { Cell::new((i64::MIN, [0; 28])) };
        }
        let secs = self.0.div_euclid(1000);
        let (last, mut out) = LAST.with(Cell::get);
        if last == secs {
            return Some(out);
        }
        let days = secs.div_euclid(86_400);
        if last == i64::MIN || last.div_euclid(86_400) != days {
            out = Self::day_bytes(days)?;
        }
        let second_of_day = secs.rem_euclid(86_400);
        out[11..13].copy_from_slice(&two_digits(second_of_day / 3600));
        out[14..16].copy_from_slice(&two_digits(second_of_day / 60 % 60));
        out[17..19].copy_from_slice(&two_digits(second_of_day % 60));
        LAST.with(|cell| cell.set((secs, out)));
        Some(out)
    }

    /// A date's 28 bytes with the day's fields written, for the day `days` after 1970-01-01 in
    /// years 1000–9999; `None` outside them.
    fn day_bytes(days: i64) -> Option<[u8; 28]> {
        let p = Self(days.checked_mul(86_400_000)?).parts();
        if !(1000..=9999).contains(&p.year) {
            return None;
        }
        let mut out = *b"Thu Jan 01 00:00:00 UTC 1970";
        out[0..3].copy_from_slice(p.weekday.as_bytes());
        out[4..7].copy_from_slice(p.month.as_bytes());
        out[8..10].copy_from_slice(&two_digits(p.day));
        out[24..26].copy_from_slice(&two_digits(p.year / 100));
        out[26..28].copy_from_slice(&two_digits(p.year % 100));
        Some(out)
    }
}

/// The last two decimal digits of `n` (0 ≤ n).
fn two_digits(n: i64) -> [u8; 2] {
    [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]
}

impl fmt::Display for PartnerDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(bytes) = self.fixed_width() {
            return f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?);
        }
        let p = self.parts();
        write!(
            f,
            "{} {} {:02} {:02}:{:02}:{:02} UTC {}",
            p.weekday,
            p.month,
            p.day,
            p.second_of_day / 3600,
            p.second_of_day / 60 % 60,
            p.second_of_day % 60,
            p.year
        )
    }
}

impl Serialize for PartnerDate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.fixed_width() {
            Some(bytes) => serializer
                .serialize_str(std::str::from_utf8(&bytes).map_err(serde::ser::Error::custom)?),
            None => serializer.collect_str(self),
        }
    }
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Serializes `request` as JSON into `out` (cleared first), reusing its capacity.
pub fn write_request(request: &PartnerRequest<'_>, out: &mut Vec<u8>) -> serde_json::Result<()> {
    out.clear();
    request.serialize(&mut serde_json::Serializer::new(out))
}

/// The body up to its first `Users` entry, `{"ProcessTime":…,"User_count":"…","Users":[`, appended
/// to `out`: followed by `user_count` entries ([`write_user`], commas between) and `]}`, it is
/// the body [`write_request`] writes. Delivery writes each user's entries as the user joins a
/// batch, while their update is in the cache, and the body from them when it is sent.
pub fn write_head(
    process_time_unix_ms: i64,
    user_dpid: u64,
    client_id: &str,
    destination_id: u64,
    user_count: usize,
    out: &mut Vec<u8>,
) {
    use std::io::Write as _;
    out.extend_from_slice(br#"{"ProcessTime":""#);
    write_date(process_time_unix_ms, out);
    write_infallible(write!(out, r#"","User_DPID":"{user_dpid}","Client_ID":"#));
    write_str(client_id, out);
    write_infallible(write!(
        out,
        r#","AAM_Destination_Id":"{destination_id}","User_count":"{user_count}","Users":["#
    ));
}

/// Appends one `Users` entry, as the body has it, to `out`: the bytes serde writes for it
/// ([`write_request`], the reference), with the field names, numbers and dates written as they
/// are (serde scans each for characters to escape; none has any) and only the strings from the
/// input escaped.
pub fn write_user(user: &PartnerUser<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"AAM_UUID":"#);
    write_str(user.aam_uuid, out);
    out.extend_from_slice(br#","DataPartner_UUID":"#);
    write_str(user.data_partner_uuid, out);
    if !user.regions.is_empty() {
        out.extend_from_slice(br#","AAM_Regions":["#);
        for (i, region) in user.regions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(itoa::Buffer::new().format(*region).as_bytes());
            out.push(b'"');
        }
        out.push(b']');
    }
    out.extend_from_slice(br#","Segments":["#);
    for (i, segment) in user.segments.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"Segment_ID":"#);
        write_str(&segment.segment_id, out);
        out.extend_from_slice(if segment.active {
            br#","Status":"1","DateTime":""#
        } else {
            br#","Status":"0","DateTime":""#
        });
        write_date(segment.time_unix_ms, out);
        out.extend_from_slice(br#""}"#);
    }
    out.extend_from_slice(b"]}");
}

/// A JSON string, quoted and escaped as serde_json writes it. An id rarely has a character to
/// escape: one pass without branches finds out, and such a string is copied as it is
/// (serde_json's escape scan, a table lookup and branch per byte, was ~2 % of a drain's CPU).
fn write_str(value: &str, out: &mut Vec<u8>) {
    let escapes = value.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escapes {
        write_infallible(serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from));
    } else {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

/// A [`PartnerDate`], without its quotes.
fn write_date(unix_ms: i64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    match PartnerDate(unix_ms).fixed_width() {
        Some(date) => out.extend_from_slice(&date),
        None => write_infallible(write!(out, "{}", PartnerDate(unix_ms))),
    }
}

/// Writing into a `Vec` cannot fail, nor can serializing borrowed strings and numbers.
fn write_infallible(result: std::io::Result<()>) {
    if let Err(error) = result {
        unreachable!("writing a partner body into memory failed: {error}");
    }
}

#[cfg(test)]
mod tests;
