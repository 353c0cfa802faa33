//! Parsers for the headers that carry time: `grpc-timeout`, `Retry-After`,
//! `grpc-retry-pushback-ms`.
//!
//! They are pure functions of their input (and of `now` where a date is involved), return
//! `None` or a "don't" answer for anything malformed, and never panic: they read what upstreams
//! send, and upstreams send anything. Each is fuzzed (see `fuzz/`).

use std::time::{Duration, SystemTime};

use http::HeaderName;

// Header names parsed once: a lookup by `&str` parses the name on every call.
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub(crate) static GRPC_RETRY_PUSHBACK_MS: HeaderName =
    HeaderName::from_static("grpc-retry-pushback-ms");

/// The most digits a `grpc-timeout` value may have (gRPC's HTTP/2 protocol spec).
const GRPC_TIMEOUT_DIGITS: usize = 8;
const GRPC_TIMEOUT_MAX: u64 = 99_999_999;

/// Parses a `grpc-timeout` value: at most 8 ASCII digits and a unit, one of `H` (hours),
/// `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds), `n` (nanoseconds).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::http::headers::parse_grpc_timeout;
///
/// assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
/// assert_eq!(parse_grpc_timeout("123456789n"), None); // nine digits
/// assert_eq!(parse_grpc_timeout("10"), None); // no unit
/// ```
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty()
        || digits.len() > GRPC_TIMEOUT_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats `timeout` as a `grpc-timeout` value in the finest unit that fits in 8 digits,
/// rounding down, so the receiver never gets more time than the sender has. Durations longer
/// than 99 999 999 hours are capped there.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::http::headers::format_grpc_timeout;
///
/// assert_eq!(format_grpc_timeout(Duration::from_millis(50)), "50000000n");
/// assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250000u");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(90)), "90000000u");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(100_000)), "100000S");
/// ```
pub fn format_grpc_timeout(timeout: Duration) -> String {
    let nanos = timeout.as_nanos();
    for (unit, per) in [
        ('n', 1u128),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ] {
        let value = nanos / per;
        if value <= u128::from(GRPC_TIMEOUT_MAX) {
            return format!("{value}{unit}");
        }
    }
    format!("{GRPC_TIMEOUT_MAX}H")
}

/// Parses a `Retry-After` value into how long to wait from `now`: either delta-seconds
/// (`120`) or an HTTP-date in any of the three forms HTTP allows
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT`,
/// `Sun Nov  6 08:49:37 1994`). A date in the past means "now" (zero). Anything else is
/// `None`.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use seawall::http::headers::parse_retry_after;
///
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
/// assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What a `grpc-retry-pushback-ms` value tells a client (gRFC A6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// Retry after exactly this long (it replaces the backoff).
    RetryAfter(Duration),
    /// Do not retry: the value was negative or not an integer.
    DontRetry,
}

/// Parses a `grpc-retry-pushback-ms` value: a non-negative integer of milliseconds means
/// "retry after that long"; a negative or malformed value means "do not retry".
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::http::headers::{Pushback, parse_grpc_retry_pushback};
///
/// assert_eq!(parse_grpc_retry_pushback("1500"), Pushback::RetryAfter(Duration::from_millis(1500)));
/// assert_eq!(parse_grpc_retry_pushback("-1"), Pushback::DontRetry);
/// assert_eq!(parse_grpc_retry_pushback("1.5"), Pushback::DontRetry);
/// ```
pub fn parse_grpc_retry_pushback(value: &str) -> Pushback {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Pushback::DontRetry;
    }
    match value.parse::<u64>() {
        Ok(ms) => Pushback::RetryAfter(Duration::from_millis(ms)),
        // More digits than fit in a u64: an absurdly long wait, as good as "don't".
        Err(_) => Pushback::DontRetry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn grpc_timeout_units_and_limits() {
        for (input, expected) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("1M", Some(Duration::from_secs(60))),
            ("1S", Some(Duration::from_secs(1))),
            ("1m", Some(Duration::from_millis(1))),
            ("1u", Some(Duration::from_micros(1))),
            ("1n", Some(Duration::from_nanos(1))),
            ("0m", Some(Duration::ZERO)),
            ("99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
            ("00000001S", Some(Duration::from_secs(1))),
            ("123456789S", None),
            ("", None),
            ("S", None),
            ("1s", None),
            ("-1S", None),
            ("+1S", None),
            (" 1S", None),
            ("1 S", None),
            ("1é", None),
        ] {
            assert_eq!(parse_grpc_timeout(input), expected, "{input:?}");
        }
    }

    #[test]
    fn grpc_timeout_format_rounds_down_and_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(99_999_999),
            Duration::from_nanos(100_000_000),
            Duration::from_millis(1500),
            Duration::from_secs(86_400),
            Duration::from_secs(u64::MAX / 2),
        ] {
            let formatted = format_grpc_timeout(d);
            let back = parse_grpc_timeout(&formatted).unwrap();
            assert!(back <= d, "{d:?} -> {formatted} -> {back:?}");
        }
        assert_eq!(
            format_grpc_timeout(Duration::from_nanos(100_000_001)),
            "100000u"
        );
    }

    #[test]
    fn retry_after_both_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        for (input, expected) in [
            ("0", Some(Duration::ZERO)),
            (" 5 ", Some(Duration::from_secs(5))),
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(Duration::ZERO)),
            (
                "Sun, 06 Nov 1994 08:49:47 GMT",
                Some(Duration::from_secs(10)),
            ),
            (
                "Sunday, 06-Nov-94 08:49:47 GMT",
                Some(Duration::from_secs(10)),
            ),
            ("Sun Nov  6 08:49:47 1994", Some(Duration::from_secs(10))),
            ("Sat, 05 Nov 1994 08:49:37 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("1.5", None),
            ("99999999999999999999999", None),
            ("", None),
            ("tomorrow", None),
        ] {
            assert_eq!(parse_retry_after(input, now), expected, "{input:?}");
        }
    }

    #[test]
    fn pushback() {
        assert_eq!(
            parse_grpc_retry_pushback("0"),
            Pushback::RetryAfter(Duration::ZERO)
        );
        for bad in ["", "-5", "abc", "1e3", "99999999999999999999999"] {
            assert_eq!(
                parse_grpc_retry_pushback(bad),
                Pushback::DontRetry,
                "{bad:?}"
            );
        }
    }
}
