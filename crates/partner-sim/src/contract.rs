//! The outbound contract (docs/PARTNER-CONTRACT.md#the-body), checked from the partner's side:
//! the body's shape and types, `User_count`, the date format. Written from the spec, not from
//! delivery's code.

use serde_json::{Map, Value};

/// Why a request breaks the contract. A closed set: it is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Violation {
    NotPost,
    BadContentType,
    MissingIdempotencyKey,
    BadGzip,
    BadJson,
    MissingField,
    UnknownField,
    WrongType,
    UserCountMismatch,
    BadDate,
    BadStatus,
    EmptySegments,
    WrongDestination,
    MissingSignature,
    BadSignature,
    MissingBearer,
    UnknownBearer,
    ExpiredBearer,
}

impl Violation {
    pub const ALL: [Self; 18] = [
        Self::NotPost,
        Self::BadContentType,
        Self::MissingIdempotencyKey,
        Self::BadGzip,
        Self::BadJson,
        Self::MissingField,
        Self::UnknownField,
        Self::WrongType,
        Self::UserCountMismatch,
        Self::BadDate,
        Self::BadStatus,
        Self::EmptySegments,
        Self::WrongDestination,
        Self::MissingSignature,
        Self::BadSignature,
        Self::MissingBearer,
        Self::UnknownBearer,
        Self::ExpiredBearer,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::NotPost => "not_post",
            Self::BadContentType => "bad_content_type",
            Self::MissingIdempotencyKey => "missing_idempotency_key",
            Self::BadGzip => "bad_gzip",
            Self::BadJson => "bad_json",
            Self::MissingField => "missing_field",
            Self::UnknownField => "unknown_field",
            Self::WrongType => "wrong_type",
            Self::UserCountMismatch => "user_count_mismatch",
            Self::BadDate => "bad_date",
            Self::BadStatus => "bad_status",
            Self::EmptySegments => "empty_segments",
            Self::WrongDestination => "wrong_destination",
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::MissingBearer => "missing_bearer",
            Self::UnknownBearer => "unknown_bearer",
            Self::ExpiredBearer => "expired_bearer",
        }
    }
}

/// A violation and a sentence for the `400` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub violation: Violation,
    pub detail: String,
}

fn reject(violation: Violation, detail: impl Into<String>) -> Rejection {
    Rejection {
        violation,
        detail: detail.into(),
    }
}

/// One segment entry as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSegment {
    pub segment_id: String,
    pub active: bool,
    /// Seconds since the Unix epoch, from `DateTime`.
    pub time: i64,
}

/// One `Users` entry as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedUser {
    pub aam_uuid: String,
    pub data_partner_uuid: String,
    pub segments: Vec<ReceivedSegment>,
}

/// A valid body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedBody {
    pub destination_id: String,
    pub users: Vec<ReceivedUser>,
}

/// `EEE MMM dd HH:mm:ss 'UTC' yyyy`, e.g. `Wed Jul 06 16:17:42 UTC 2016`; seconds since epoch.
pub fn parse_date(text: &str) -> Option<i64> {
    let format = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day padding:zero] [hour]:[minute]:[second] UTC [year]"
    );
    let parsed = time::PrimitiveDateTime::parse(text, &format).ok()?;
    // The parser does not check that the weekday is the date's: a partner would.
    let weekday = parsed.weekday().to_string();
    text.starts_with(&weekday[..3])
        .then(|| parsed.assume_utc().unix_timestamp())
}

fn string<'a>(object: &'a Map<String, Value>, field: &str, at: &str) -> Result<&'a str, Rejection> {
    match object.get(field) {
        None => Err(reject(
            Violation::MissingField,
            format!("{at}{field} is missing"),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(reject(
            Violation::WrongType,
            format!("{at}{field} must be a JSON string, got {other}"),
        )),
    }
}

fn integer_string<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    at: &str,
) -> Result<&'a str, Rejection> {
    let value = string(object, field, at)?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(reject(
            Violation::WrongType,
            format!("{at}{field} must be a string of digits, got {value:?}"),
        ));
    }
    Ok(value)
}

fn only_fields(object: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), Rejection> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(reject(
            Violation::UnknownField,
            format!("{at}{unknown} is not part of the contract"),
        )),
        None => Ok(()),
    }
}

fn date(object: &Map<String, Value>, field: &str, at: &str) -> Result<i64, Rejection> {
    let text = string(object, field, at)?;
    parse_date(text).ok_or_else(|| {
        reject(
            Violation::BadDate,
            format!("{at}{field} {text:?} is not like \"Wed Jul 06 16:17:42 UTC 2016\""),
        )
    })
}

fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>, Rejection> {
    value
        .as_object()
        .ok_or_else(|| reject(Violation::WrongType, format!("{at} must be a JSON object")))
}

fn array<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    at: &str,
) -> Result<&'a Vec<Value>, Rejection> {
    match object.get(field) {
        None => Err(reject(
            Violation::MissingField,
            format!("{at}{field} is missing"),
        )),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(reject(
            Violation::WrongType,
            format!("{at}{field} must be an array, got {other}"),
        )),
    }
}

/// Checks a (decompressed) body against the contract.
pub fn check_body(body: &[u8]) -> Result<ReceivedBody, Rejection> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| reject(Violation::BadJson, format!("not JSON: {e}")))?;
    let top = object(&value, "the body")?;
    only_fields(
        top,
        &[
            "ProcessTime",
            "User_DPID",
            "Client_ID",
            "AAM_Destination_Id",
            "User_count",
            "Users",
        ],
        "",
    )?;
    date(top, "ProcessTime", "")?;
    integer_string(top, "User_DPID", "")?;
    string(top, "Client_ID", "")?;
    let destination_id = integer_string(top, "AAM_Destination_Id", "")?.to_owned();
    let user_count: usize = integer_string(top, "User_count", "")?
        .parse()
        .map_err(|_| reject(Violation::WrongType, "User_count is too large"))?;
    let users_json = array(top, "Users", "")?;
    if users_json.len() != user_count {
        return Err(reject(
            Violation::UserCountMismatch,
            format!(
                "User_count is {user_count} but Users has {} entries",
                users_json.len()
            ),
        ));
    }
    let mut users = Vec::with_capacity(users_json.len());
    for (i, user) in users_json.iter().enumerate() {
        let at = format!("Users[{i}].");
        let user = object(user, &format!("Users[{i}]"))?;
        only_fields(
            user,
            &["AAM_UUID", "DataPartner_UUID", "AAM_Regions", "Segments"],
            &at,
        )?;
        let aam_uuid = string(user, "AAM_UUID", &at)?.to_owned();
        let data_partner_uuid = string(user, "DataPartner_UUID", &at)?.to_owned();
        if user.contains_key("AAM_Regions") {
            let regions = array(user, "AAM_Regions", &at)?;
            if regions.is_empty() {
                return Err(reject(
                    Violation::WrongType,
                    format!("{at}AAM_Regions is empty: it must be omitted then"),
                ));
            }
            for region in regions {
                if !region
                    .as_str()
                    .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
                {
                    return Err(reject(
                        Violation::WrongType,
                        format!("{at}AAM_Regions must hold strings of digits, got {region}"),
                    ));
                }
            }
        }
        let segments_json = array(user, "Segments", &at)?;
        if segments_json.is_empty() {
            return Err(reject(
                Violation::EmptySegments,
                format!("{at}Segments is empty"),
            ));
        }
        let mut segments = Vec::with_capacity(segments_json.len());
        for (j, segment) in segments_json.iter().enumerate() {
            let at = format!("{at}Segments[{j}].");
            let segment = object(segment, &at)?;
            only_fields(segment, &["Segment_ID", "Status", "DateTime"], &at)?;
            let segment_id = string(segment, "Segment_ID", &at)?.to_owned();
            let active = match string(segment, "Status", &at)? {
                "1" => true,
                "0" => false,
                other => {
                    return Err(reject(
                        Violation::BadStatus,
                        format!("{at}Status must be \"1\" or \"0\", got {other:?}"),
                    ));
                }
            };
            let time = date(segment, "DateTime", &at)?;
            segments.push(ReceivedSegment {
                segment_id,
                active,
                time,
            });
        }
        users.push(ReceivedUser {
            aam_uuid,
            data_partner_uuid,
            segments,
        });
    }
    Ok(ReceivedBody {
        destination_id,
        users,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"20915","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"2","Users":[{"AAM_UUID":"u1","DataPartner_UUID":"p","AAM_Regions":["6","7"],"Segments":[{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 06 16:17:22 UTC 2016"}]},{"AAM_UUID":"u2","DataPartner_UUID":"","Segments":[{"Segment_ID":"12176","Status":"0","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#;

    fn violation(body: &str) -> Violation {
        check_body(body.as_bytes()).unwrap_err().violation
    }

    #[test]
    fn the_reference_shape_passes() {
        let body = check_body(GOOD.as_bytes()).unwrap();
        assert_eq!(body.destination_id, "423");
        assert_eq!(body.users.len(), 2);
        assert_eq!(
            body.users[0].segments[0],
            ReceivedSegment {
                segment_id: "14356".into(),
                active: true,
                time: 1_467_821_842
            }
        );
    }

    #[test]
    fn each_kind_of_violation_is_named() {
        assert_eq!(violation("{"), Violation::BadJson);
        assert_eq!(violation("[]"), Violation::WrongType);
        assert_eq!(
            violation(&GOOD.replace(r#""User_DPID":"20915""#, r#""User_DPID":20915"#)),
            Violation::WrongType
        );
        assert_eq!(
            violation(&GOOD.replace(r#""Status":"1""#, r#""Status":1"#)),
            Violation::WrongType
        );
        assert_eq!(
            violation(&GOOD.replace(r#""User_count":"2""#, r#""User_count":"3""#)),
            Violation::UserCountMismatch
        );
        assert_eq!(
            violation(&GOOD.replace("Wed Jul 06", "Wed Jul 6")),
            Violation::BadDate
        );
        assert_eq!(
            violation(&GOOD.replace("Wed Jul 27 16:17:42 UTC 2016", "2016-07-27T16:17:42Z")),
            Violation::BadDate
        );
        assert_eq!(
            violation(&GOOD.replace(r#""Status":"0""#, r#""Status":"2""#)),
            Violation::BadStatus
        );
        assert_eq!(
            violation(&GOOD.replace(r#""Client_ID":"74323","#, "")),
            Violation::MissingField
        );
        assert_eq!(
            violation(&GOOD.replace(r#""Client_ID""#, r#""Extra":"x","Client_ID""#)),
            Violation::UnknownField
        );
        assert_eq!(
            violation(&GOOD.replace(r#""AAM_Regions":["6","7"]"#, r#""AAM_Regions":[]"#)),
            Violation::WrongType
        );
        assert_eq!(
            violation(&GOOD.replace(r#""AAM_Regions":["6","7"]"#, r#""AAM_Regions":[6]"#)),
            Violation::WrongType
        );
        let empty = GOOD.replace(
            r#""Segments":[{"Segment_ID":"12176","Status":"0","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]"#,
            r#""Segments":[]"#,
        );
        assert_eq!(violation(&empty), Violation::EmptySegments);
    }

    #[test]
    fn dates_need_the_weekday_month_and_padding_of_the_reference() {
        assert_eq!(parse_date("Thu Jan 01 00:00:00 UTC 1970"), Some(0));
        assert_eq!(parse_date("Thu Jan 1 00:00:00 UTC 1970"), None);
        assert_eq!(parse_date("Thu Jan 01 00:00:00 GMT 1970"), None);
        assert_eq!(
            parse_date("Fri Jan 01 00:00:00 UTC 1970"),
            None,
            "the weekday must match"
        );
    }
}
