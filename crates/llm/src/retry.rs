//! Retry policy: exponential backoff with full jitter that honours `Retry-After`.

use std::time::{Duration, SystemTime};

use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts per request, the first included.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A server's `Retry-After` longer than this is cut to it, so one bad header cannot
    /// park a row for an hour.
    pub max_retry_after_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            max_retry_after_ms: 120_000,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` (1-based) failed.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(Duration::from_millis(self.max_retry_after_ms));
        }
        let exp = self
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max_backoff_ms).max(1);
        // Full jitter: spread retries of many rows so they do not hit the server in waves.
        Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
    }
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<f64>() {
        // Any number a server sends (1e20, inf, -1, NaN) gives a duration or none; the policy
        // caps it (`max_retry_after_ms`). Never `from_secs_f64`, which panics on overflow.
        return (secs >= 0.0).then(|| Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..Default::default()
        };
        let d1 = p.delay(1, None).as_millis();
        assert!((50..=100).contains(&d1), "{d1}");
        let d3 = p.delay(3, None).as_millis();
        assert!((200..=400).contains(&d3), "{d3}");
        let d10 = p.delay(10, None).as_millis();
        assert!((500..=1000).contains(&d10), "{d10}");
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let p = RetryPolicy {
            max_retry_after_ms: 5000,
            ..Default::default()
        };
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn parses_both_retry_after_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(3)));
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(10));
        h.insert("retry-after", past.parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&h), None);
        for huge in ["1e20", "inf", "1e400", "18446744073709551616"] {
            h.insert("retry-after", huge.parse().unwrap());
            let d = parse_retry_after(&h).unwrap();
            assert_eq!(
                RetryPolicy::default().delay(1, Some(d)),
                Duration::from_secs(120)
            );
        }
        for none in ["-1", "NaN", "-inf"] {
            h.insert("retry-after", none.parse().unwrap());
            assert_eq!(parse_retry_after(&h), None, "{none}");
        }
    }
}
