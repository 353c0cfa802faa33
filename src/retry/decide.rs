//! The retry decision, as a pure function of what happened and what is left.

use std::time::Duration;

/// What an attempt's result says about retrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// The request provably never reached a server (no endpoint, open circuit, connection
    /// refused, full bulkhead): safe to retry on any method.
    NeverSent,
    /// It may have reached a server and the outcome is worth another try (per-try timeout,
    /// 502/503/504, 429 with `Retry-After`, gRPC UNAVAILABLE, a broken connection): retried
    /// only when the request is idempotent.
    Retryable,
    /// Success, or a failure another try would not fix.
    Final,
}

/// Why a result was returned instead of retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// Nothing to retry: a success or a final failure.
    Final,
    /// A retryable outcome on a request that is not safe to send twice.
    NotIdempotent,
    /// The maximum number of attempts was made.
    AttemptsExhausted,
    /// The server said not to retry (`grpc-retry-pushback-ms` negative or malformed).
    Pushback,
    /// `Retry-After` asks for a longer wait than allowed.
    RetryAfterTooLong,
    /// The wait would outlive the request's deadline.
    Deadline,
    /// The retry budget is spent.
    Budget,
    /// The request body was larger than the replay cap.
    BodyNotReplayable,
}

impl StopReason {
    /// A lowercase name, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Final => "final",
            Self::NotIdempotent => "not_idempotent",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::Pushback => "pushback",
            Self::RetryAfterTooLong => "retry_after_too_long",
            Self::Deadline => "deadline",
            Self::Budget => "budget",
            Self::BodyNotReplayable => "body_not_replayable",
        }
    }
}

/// What the server asked for, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerHint {
    /// `Retry-After` (HTTP) or `grpc-retry-pushback-ms` (gRPC): wait exactly this long.
    pub wait: Option<Duration>,
    /// `grpc-retry-pushback-ms` said not to retry.
    pub dont_retry: bool,
}

/// Everything a decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    /// The class of the last result.
    pub class: RetryClass,
    /// The request's method is idempotent, or it carries the `Idempotent` marker.
    pub idempotent: bool,
    /// Attempts made so far (1 after the first).
    pub attempts: u32,
    /// The most attempts allowed, the first included.
    pub max_attempts: u32,
    /// What the server asked for.
    pub hint: ServerHint,
    /// The longest server-requested wait to honour.
    pub max_server_wait: Duration,
    /// The backoff for this retry.
    pub backoff: Duration,
    /// Time left before the request's deadline, if it has one.
    pub deadline_left: Option<Duration>,
    /// Whether the request body can be sent again.
    pub replayable: bool,
}

/// Retry after the returned wait, or stop for the returned reason. `withdraw` (the budget) is
/// asked last, only when everything else allows a retry, so a refused retry costs nothing.
pub fn decide(s: Situation, withdraw: impl FnOnce() -> bool) -> Result<Duration, StopReason> {
    match s.class {
        RetryClass::Final => return Err(StopReason::Final),
        RetryClass::Retryable if !s.idempotent => return Err(StopReason::NotIdempotent),
        RetryClass::Retryable | RetryClass::NeverSent => {}
    }
    if s.attempts >= s.max_attempts {
        return Err(StopReason::AttemptsExhausted);
    }
    if s.hint.dont_retry {
        return Err(StopReason::Pushback);
    }
    let wait = match s.hint.wait {
        Some(wait) if wait > s.max_server_wait => return Err(StopReason::RetryAfterTooLong),
        Some(wait) => wait,
        None => s.backoff,
    };
    if s.deadline_left.is_some_and(|left| left <= wait) {
        return Err(StopReason::Deadline);
    }
    if !s.replayable {
        return Err(StopReason::BodyNotReplayable);
    }
    if !withdraw() {
        return Err(StopReason::Budget);
    }
    Ok(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Situation {
        Situation {
            class: RetryClass::Retryable,
            idempotent: true,
            attempts: 1,
            max_attempts: 3,
            hint: ServerHint::default(),
            max_server_wait: Duration::from_secs(10),
            backoff: Duration::from_millis(20),
            deadline_left: None,
            replayable: true,
        }
    }

    #[test]
    fn table() {
        let ms = Duration::from_millis;
        let cases: Vec<(Situation, Result<Duration, StopReason>)> = vec![
            (base(), Ok(ms(20))),
            (
                Situation {
                    class: RetryClass::Final,
                    ..base()
                },
                Err(StopReason::Final),
            ),
            (
                Situation {
                    idempotent: false,
                    ..base()
                },
                Err(StopReason::NotIdempotent),
            ),
            (
                Situation {
                    idempotent: false,
                    class: RetryClass::NeverSent,
                    ..base()
                },
                Ok(ms(20)),
            ),
            (
                Situation {
                    attempts: 3,
                    ..base()
                },
                Err(StopReason::AttemptsExhausted),
            ),
            (
                Situation {
                    hint: ServerHint {
                        wait: None,
                        dont_retry: true,
                    },
                    ..base()
                },
                Err(StopReason::Pushback),
            ),
            (
                Situation {
                    hint: ServerHint {
                        wait: Some(ms(1500)),
                        dont_retry: false,
                    },
                    ..base()
                },
                Ok(ms(1500)),
            ),
            (
                Situation {
                    hint: ServerHint {
                        wait: Some(ms(20_000)),
                        dont_retry: false,
                    },
                    ..base()
                },
                Err(StopReason::RetryAfterTooLong),
            ),
            (
                Situation {
                    deadline_left: Some(ms(20)),
                    ..base()
                },
                Err(StopReason::Deadline),
            ),
            (
                Situation {
                    deadline_left: Some(ms(21)),
                    ..base()
                },
                Ok(ms(20)),
            ),
            (
                Situation {
                    replayable: false,
                    ..base()
                },
                Err(StopReason::BodyNotReplayable),
            ),
        ];
        for (situation, expected) in cases {
            assert_eq!(decide(situation, || true), expected, "{situation:?}");
        }
        assert_eq!(decide(base(), || false), Err(StopReason::Budget));
    }

    #[test]
    fn the_budget_is_not_touched_when_another_rule_stops() {
        let mut asked = false;
        let _ = decide(
            Situation {
                attempts: 3,
                ..base()
            },
            || {
                asked = true;
                true
            },
        );
        assert!(!asked);
    }
}
