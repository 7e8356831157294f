//! Times as operators read them: UTC, to the second, from the millisecond stamps bootplane
//! stores.

use time::macros::format_description;
use time::OffsetDateTime;

/// `2025-11-21 13:20:00` for a stamp in milliseconds since the epoch (UTC); `-` for none.
pub fn format_time(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms.div_euclid(1000)) * 1_000_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

#[cfg(test)]
mod tests {
    use super::format_time;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(format_time(Some(0)), "1970-01-01 00:00:00");
        assert_eq!(format_time(Some(1_763_731_200_000)), "2025-11-21 13:20:00");
        assert_eq!(format_time(Some(1_763_731_200_999)), "2025-11-21 13:20:00");
        assert_eq!(format_time(Some(-1)), "1969-12-31 23:59:59");
        assert_eq!(format_time(None), "-");
    }
}
