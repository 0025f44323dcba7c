//! The wall clock as both services and their tools read it: milliseconds since the Unix epoch.

/// Milliseconds since the Unix epoch, now. A clock before 1970 reads 0 and one past
/// `i64::MAX` ms reads `i64::MAX`: neither can happen on a working host, and neither panics.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_milliseconds_not_seconds_or_micros() {
        // 2026-01-01 and 2100-01-01 in milliseconds: seconds or microseconds fall outside.
        let now = super::unix_ms();
        assert!(
            (1_767_225_600_000..4_102_444_800_000).contains(&now),
            "{now}"
        );
    }
}
