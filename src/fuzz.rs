//! Fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/` and by `cargo test`, which
//! replays the committed corpora and a seeded stream of random inputs on stable.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use crate::balance::{Endpoint, EndpointSet, EndpointTable, weighted_order};

/// Drives an [`EndpointTable`] with arbitrary inserts and removes and checks every snapshot
/// against a `BTreeMap` model, including that old snapshots never change.
///
/// Input: a sequence of 2-byte operations `[op, arg]`: `op % 4 == 3` removes key `arg % 100`,
/// anything else inserts key `arg % 100` with weight `op / 4 % 4 + 1`.
pub fn endpoint_table(data: &[u8]) {
    let mut table: EndpointTable<u8, ()> = EndpointTable::new();
    let mut model: BTreeMap<u8, u32> = BTreeMap::new();
    let mut kept: Vec<(EndpointSet<u8, ()>, BTreeMap<u8, u32>)> = Vec::new();
    for (step, op) in data.chunks_exact(2).enumerate() {
        let key = op[1] % 100;
        if op[0] % 4 == 3 {
            let removed = table.remove(&key).map(|e| *e.key());
            assert_eq!(removed, model.remove(&key).map(|_| key));
        } else {
            let weight = u32::from(op[0] / 4 % 4 + 1);
            let old = table.insert(Endpoint::new(key, (), weight, "fuzz"));
            assert_eq!(old.map(|e| e.weight()), model.insert(key, weight));
        }
        let snapshot = table.snapshot();
        check(&snapshot, &model);
        for (k, w) in &model {
            assert_eq!(table.get(k).map(|e| e.weight()), Some(*w));
        }
        if step % 7 == 0 {
            kept.push((snapshot, model.clone()));
        }
    }
    for (snapshot, model) in &kept {
        check(snapshot, model);
    }
}

fn check(set: &EndpointSet<u8, ()>, model: &BTreeMap<u8, u32>) {
    assert_eq!(set.len(), model.len());
    let mut seen: BTreeMap<u8, u32> = BTreeMap::new();
    for i in 0..set.len() {
        let endpoint = set.get(i).expect("dense index");
        assert!(seen.insert(*endpoint.key(), endpoint.weight()).is_none());
    }
    assert!(set.get(set.len()).is_none());
    assert_eq!(&seen, model);
    let uniform = model
        .values()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        <= 1;
    assert_eq!(set.has_uniform_weights(), uniform);
}

/// Checks [`weighted_order`] on arbitrary weights: one period holds each index exactly
/// `weight / gcd` times.
pub fn weighted_round_robin(data: &[u8]) {
    let weights: Vec<u32> = data
        .iter()
        .take(64)
        .map(|&b| u32::from(b % 50) + 1)
        .collect();
    if weights.is_empty() {
        return;
    }
    let order = weighted_order(&weights);
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    let mut counts = vec![0u32; weights.len()];
    for &i in &order {
        counts[i as usize] += 1;
    }
    for (count, weight) in counts.iter().zip(&weights) {
        assert_eq!(*count, weight / g);
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

// ---------------------------------------------------------------------------------------------
// The circuit breaker against a reference model.

use std::collections::VecDeque;
use std::time::Duration;

use crate::breaker::{BreakerConfig, Mode, State, Window};
use crate::breaker_fuzz::{Core, Ending, Permit, Refusal};
use crate::classify::Outcome;

#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Closed,
    Open { until: u64 },
    HalfOpen { admitted: u32, succeeded: u32 },
}

#[derive(Debug, Clone, Copy)]
struct ModelPermit {
    trial: bool,
    counted: bool,
    period: u64,
}

/// A deliberately naive breaker: every event kept in a list, counts recomputed each time.
struct Model {
    window: Window,
    minimum_calls: u64,
    failure_rate: f64,
    slow: Option<(u64, f64)>,
    config: BreakerConfig,
    trials: u32,
    state: ModelState,
    mode: Mode,
    reopens: u32,
    period: u64,
    /// (bucket number or sequence, failure, slow)
    events: VecDeque<(u64, bool, bool)>,
}

impl Model {
    fn counts(&self, now: u64) -> (u64, u64, u64) {
        let live: Vec<&(u64, bool, bool)> = match self.window {
            Window::Time { length, buckets } => {
                let width = length.as_nanos() as u64 / u64::from(buckets);
                let current = now / width;
                self.events
                    .iter()
                    .filter(|(b, ..)| *b <= current && current - *b < u64::from(buckets))
                    .collect()
            }
            Window::Count { calls } => self.events.iter().rev().take(calls as usize).collect(),
        };
        let calls = live.len() as u64;
        let failures = live.iter().filter(|e| e.1).count() as u64;
        let slow = live.iter().filter(|e| e.2).count() as u64;
        (calls, failures, slow)
    }

    fn trips(&self, now: u64) -> bool {
        let (calls, failures, slow) = self.counts(now);
        calls > 0
            && calls >= self.minimum_calls
            && (failures as f64 * 100.0 >= self.failure_rate * calls as f64
                || self
                    .slow
                    .is_some_and(|(_, pct)| slow as f64 * 100.0 >= pct * calls as f64))
    }

    fn open(&mut self, now: u64) {
        let d = self.config.open_duration(self.reopens).as_nanos() as u64;
        self.state = ModelState::Open {
            until: now.saturating_add(d),
        };
        self.period += 1;
    }

    fn acquire(&mut self, now: u64) -> Result<ModelPermit, Refusal> {
        let permit = |trial, counted, period| ModelPermit {
            trial,
            counted,
            period,
        };
        match self.mode {
            Mode::ForcedOpen => return Err(Refusal::Forced),
            Mode::Disabled => return Ok(permit(false, false, self.period)),
            Mode::ForcedClosed | Mode::MetricsOnly => return Ok(permit(false, true, self.period)),
            Mode::Normal => {}
        }
        if let ModelState::Open { until } = self.state {
            if now <= until {
                return Err(Refusal::Open { until_ns: until });
            }
            self.state = ModelState::HalfOpen {
                admitted: 0,
                succeeded: 0,
            };
            self.period += 1;
        }
        match &mut self.state {
            ModelState::Closed => Ok(permit(false, true, self.period)),
            ModelState::HalfOpen { admitted, .. } if *admitted < self.trials => {
                *admitted += 1;
                Ok(permit(true, true, self.period))
            }
            _ => Err(Refusal::TrialsBusy),
        }
    }

    fn record(&mut self, p: ModelPermit, ending: Ending, elapsed: u64, now: u64) {
        if !p.counted {
            return;
        }
        let slow = self.slow.is_some_and(|(limit, _)| elapsed > limit);
        if p.trial {
            let ModelState::HalfOpen {
                admitted,
                succeeded,
            } = &mut self.state
            else {
                return;
            };
            if p.period != self.period {
                return;
            }
            match ending {
                Ending::Classified(Outcome::Success) if !slow => {
                    *succeeded += 1;
                    if *succeeded >= self.trials {
                        self.state = ModelState::Closed;
                        self.events.clear();
                        self.reopens = 0;
                        self.period += 1;
                    }
                }
                Ending::Classified(Outcome::Ignored) => *admitted = admitted.saturating_sub(1),
                _ => {
                    self.reopens += 1;
                    self.open(now);
                }
            }
            return;
        }
        let failure = match ending {
            Ending::Classified(Outcome::Success) => false,
            Ending::Classified(Outcome::Failure) => true,
            _ => return,
        };
        let key = match self.window {
            Window::Time { length, buckets } => {
                now / (length.as_nanos() as u64 / u64::from(buckets))
            }
            Window::Count { .. } => 0,
        };
        self.events.push_back((key, failure, slow));
        if (failure || slow)
            && self.mode == Mode::Normal
            && self.state == ModelState::Closed
            && self.trips(now)
        {
            self.reopens = 0;
            self.open(now);
        }
    }

    fn set_mode(&mut self, mode: Mode) {
        let before = self.mode;
        self.mode = mode;
        if before == mode {
            return;
        }
        match mode {
            Mode::ForcedOpen => {
                self.state = ModelState::Open { until: u64::MAX };
                self.period += 1;
            }
            Mode::Normal => {
                if self.state != ModelState::Closed {
                    self.events.clear();
                    self.state = ModelState::Closed;
                    self.period += 1;
                }
            }
            _ => {
                self.state = ModelState::Closed;
                self.period += 1;
            }
        }
    }

    fn reset(&mut self) {
        self.mode = Mode::Normal;
        self.state = ModelState::Closed;
        self.events.clear();
        self.reopens = 0;
        self.period += 1;
    }

    fn state(&self) -> State {
        match self.state {
            ModelState::Closed => State::Closed,
            ModelState::Open { .. } => State::Open,
            ModelState::HalfOpen { .. } => State::HalfOpen,
        }
    }
}

/// Which states a run of [`breaker`] visited, so tests can check the harness is not vacuous.
#[derive(Debug, Default, Clone, Copy)]
pub struct Visited {
    pub open: bool,
    pub half_open: bool,
    pub reclosed: bool,
}

/// Drives the breaker's state machine with an arbitrary configuration and sequence of admits,
/// completions, clock advances, mode changes and resets, and checks state, counts and every
/// admission decision against [`Model`].
pub fn breaker(data: &[u8]) -> Visited {
    let mut visited = Visited::default();
    let Some((head, ops)) = data.split_first_chunk::<4>() else {
        return visited;
    };
    let window = match head[0] % 4 {
        0 => Window::Time {
            length: Duration::from_secs(10),
            buckets: 10,
        },
        1 => Window::Time {
            length: Duration::from_secs(1),
            buckets: 4,
        },
        2 => Window::Count { calls: 5 },
        _ => Window::Count { calls: 10 },
    };
    let mut config = BreakerConfig::default()
        .window(window)
        .minimum_calls(u32::from(head[1] % 6) + 1)
        .failure_rate([20.0, 50.0, 100.0][usize::from(head[1] / 6 % 3)])
        .trials(u32::from(head[2] % 3) + 1)
        .open_for(Duration::from_secs(5));
    if head[2] & 0x10 != 0 {
        config = config.open_backoff(2.0, Duration::from_secs(20));
    }
    let slow = (head[3] & 1 != 0).then_some((Duration::from_millis(50), 50.0));
    if let Some((limit, pct)) = slow {
        config = config.slow_calls(limit, pct);
    }
    config.validate().unwrap();
    let core = Core::new(config.clone());
    let mut model = Model {
        window,
        minimum_calls: u64::from(config.minimum_calls),
        failure_rate: config.failure_rate,
        slow: slow.map(|(d, p)| (d.as_nanos() as u64, p)),
        trials: config.trials,
        config,
        state: ModelState::Closed,
        mode: Mode::Normal,
        reopens: 0,
        period: 0,
        events: VecDeque::new(),
    };
    const MS: u64 = 1_000_000;
    let steps = [
        0,
        1,
        MS,
        250 * MS,
        1_000 * MS,
        5_000 * MS,
        5_000 * MS + 1,
        10_000 * MS,
    ];
    let mut now = 0u64;
    let mut outstanding: Vec<(Permit, ModelPermit)> = Vec::new();
    for op in ops.chunks_exact(2) {
        let (kind, arg) = (op[0] % 8, op[1]);
        match kind {
            0 | 1 => now += steps[usize::from(arg % 8)],
            2..=4 => {
                let real = core.acquire(now).0;
                let expected = model.acquire(now);
                match (real, expected) {
                    (Ok(r), Ok(m)) => {
                        assert_eq!(
                            (r.trial(), r.counted()),
                            (m.trial, m.counted),
                            "permit kind"
                        );
                        outstanding.push((r, m));
                    }
                    (Err(r), Err(m)) => assert_eq!(r, m, "refusal"),
                    (r, m) => panic!("acquire at {now}: real {r:?}, model {m:?}"),
                }
            }
            5 | 6 if !outstanding.is_empty() => {
                let (r, m) = outstanding.swap_remove(usize::from(arg) % outstanding.len());
                let ending = match arg / 64 {
                    0 => Ending::Classified(Outcome::Success),
                    1 => Ending::Classified(Outcome::Failure),
                    2 => Ending::Classified(Outcome::Ignored),
                    _ => Ending::Cancelled,
                };
                let elapsed = if arg & 0x20 != 0 { 100 * MS } else { MS };
                core.record(r, ending, elapsed, now);
                model.record(m, ending, elapsed, now);
            }
            7 => {
                if arg % 8 == 7 {
                    core.reset();
                    model.reset();
                } else {
                    let mode = [
                        Mode::Normal,
                        Mode::Normal,
                        Mode::Normal,
                        Mode::ForcedOpen,
                        Mode::ForcedClosed,
                        Mode::Disabled,
                        Mode::MetricsOnly,
                    ][usize::from(arg % 7)];
                    core.set_mode(mode);
                    model.set_mode(mode);
                }
            }
            _ => {}
        }
        let before = visited;
        assert_eq!(core.state(), model.state(), "state at {now}");
        match core.state() {
            State::Open => visited.open = true,
            State::HalfOpen => visited.half_open = true,
            State::Closed => visited.reclosed |= before.half_open,
        }
        let counts = core.counts(now);
        assert_eq!(
            (counts.calls, counts.failures, counts.slow),
            model.counts(now),
            "counts at {now}"
        );
    }
    visited
}

// ---------------------------------------------------------------------------------------------
// Header parsers.

/// Feeds arbitrary bytes to every time-header parser (no panic, sane answers) and checks that
/// a `grpc-timeout` formatted from an arbitrary duration parses back to at most that duration,
/// within the precision of eight digits.
#[cfg(feature = "http")]
pub fn headers(data: &[u8]) {
    use crate::http::headers::{
        Pushback, format_grpc_timeout, parse_grpc_retry_pushback, parse_grpc_timeout,
        parse_retry_after,
    };
    use std::time::{Duration, UNIX_EPOCH};

    let text = String::from_utf8_lossy(data);
    if let Some(timeout) = parse_grpc_timeout(&text) {
        assert!(text.len() <= 9, "at most 8 digits and a unit: {text:?}");
        let back = parse_grpc_timeout(&format_grpc_timeout(timeout)).unwrap();
        assert_eq!(
            back, timeout,
            "a parsed value is exact in its own unit: {text:?}"
        );
    }
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Some(wait) = parse_retry_after(&text, now) {
        let trimmed = text.trim();
        if trimmed.bytes().all(|b| b.is_ascii_digit()) {
            assert_eq!(Some(wait.as_secs()), trimmed.parse().ok());
        }
    }
    if let Pushback::RetryAfter(wait) = parse_grpc_retry_pushback(&text) {
        assert_eq!(Some(wait.as_millis() as u64), text.trim().parse().ok());
    }
    if let Some(bytes) = data.first_chunk::<12>() {
        let secs = u64::from_le_bytes(bytes[..8].try_into().unwrap()) >> (bytes[8] % 64);
        let nanos = u32::from_le_bytes(bytes[8..].try_into().unwrap()) % 1_000_000_000;
        let d = Duration::new(secs, nanos);
        let back = parse_grpc_timeout(&format_grpc_timeout(d)).unwrap();
        assert!(back <= d, "{d:?} grew to {back:?}");
        let cap = Duration::from_secs(99_999_999 * 3600);
        if d <= cap {
            let lost = (d - back).as_nanos();
            assert!(
                lost == 0 || lost * 100_000 <= d.as_nanos(),
                "{d:?} -> {back:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ReplayBody.

/// A body of given frames, each ready at once, with an exact size hint when known.
#[cfg(feature = "http")]
struct Frames(
    std::collections::VecDeque<http_body::Frame<bytes::Bytes>>,
    Option<u64>,
);

#[cfg(feature = "http")]
impl http_body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.1
            .map(http_body::SizeHint::with_exact)
            .unwrap_or_default()
    }
}

/// Reads up to `frames` frames (all when `None`): the data, the trailers, and an error if any.
#[cfg(feature = "http")]
fn read_body<B: http_body::Body<Data = bytes::Bytes> + Unpin>(
    body: &mut B,
    frames: Option<usize>,
) -> (Vec<u8>, Option<http::HeaderMap>, Option<String>)
where
    B::Error: std::fmt::Display,
{
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    let (mut data, mut trailers) = (Vec::new(), None);
    let mut n = 0;
    while frames.is_none_or(|max| n < max) {
        match std::pin::Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Poll::Ready(Some(Err(error))) => return (data, trailers, Some(error.to_string())),
            Poll::Ready(None) => break,
            Poll::Pending => panic!("a ready body must never pend"),
        }
        n += 1;
    }
    (data, trailers, None)
}

/// Arbitrary chunking, cap, trailers and a first attempt that stops at an arbitrary frame:
/// a clone sends exactly the original bytes and trailers while the body is replayable, and
/// fails with `BodyNotReplayable` once more than the cap was read.
#[cfg(feature = "http")]
pub fn replay_body(data: &[u8]) {
    use crate::http::ReplayBody;
    let Some((&[cap_sel, stop, flags], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let cap = [0usize, 1, 7, 64, 300, 65_536][usize::from(cap_sel % 6)];
    // Chunk sizes from the input; content is the input itself.
    let mut frames = std::collections::VecDeque::new();
    let mut content = Vec::new();
    let mut at = 0;
    for &len in rest.iter().take(64) {
        let len = usize::from(len % 40);
        let chunk: Vec<u8> = rest.iter().cycle().skip(at).take(len).copied().collect();
        at += len;
        content.extend_from_slice(&chunk);
        frames.push_back(http_body::Frame::data(bytes::Bytes::from(chunk)));
    }
    let mut expected_trailers = None;
    if flags & 1 != 0 {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        expected_trailers = Some(trailers.clone());
        frames.push_back(http_body::Frame::trailers(trailers));
    }
    let total_frames = frames.len();
    // Sometimes the body says its size up front, as a `Content-Length` body does.
    let hint = (flags & 2 != 0).then_some(content.len() as u64);
    let mut first = ReplayBody::with_cap(Frames(frames, hint), cap);
    if hint.is_some_and(|h| h > cap as u64) {
        assert!(!first.is_replayable(), "known too large from the start");
    }
    let stop = usize::from(stop) % (total_frames + 2);
    let (read_first, _, first_error) = read_body(&mut first, Some(stop));
    assert_eq!(first_error, None, "the first attempt always sends");
    assert!(content.starts_with(&read_first));
    let replayable = first.is_replayable();
    let mut second = first.clone();
    let (again, trailers, error) = read_body(&mut second, None);
    if replayable {
        assert_eq!(error, None);
        assert_eq!(again, content, "a replay sends every byte, in order");
        assert_eq!(trailers, expected_trailers);
    } else {
        assert!(
            read_first.len() > cap || hint.is_some_and(|h| h > cap as u64),
            "not replayable only past the cap"
        );
        // A clone that starts before anyone read the stream may still send it once.
        if !(read_first.is_empty() && stop == 0) {
            assert!(error.is_some_and(|e| e.contains("replay cap")));
        }
    }
    // The first attempt can still finish its own stream (when it is the one that claimed it).
    let (rest_of_first, _, rest_error) = read_body(&mut first, None);
    if !replayable && rest_error.is_none() {
        assert_eq!([read_first, rest_of_first].concat(), content);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut inputs = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                inputs.push(std::fs::read(entry.path()).unwrap());
            }
        }
        assert!(
            !inputs.is_empty(),
            "no committed corpus in {}",
            dir.display()
        );
        inputs
    }

    fn random_inputs(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let len = (rng.next_u32() as usize) % max_len;
                (0..len).map(|_| rng.next_u32() as u8).collect()
            })
            .collect()
    }

    #[test]
    fn endpoint_table_corpus() {
        for input in corpus("endpoint_table") {
            endpoint_table(&input);
        }
    }

    #[test]
    fn endpoint_table_random() {
        for input in random_inputs(7, 300, 600) {
            endpoint_table(&input);
        }
    }

    #[test]
    fn breaker_corpus() {
        for input in corpus("breaker") {
            breaker(&input);
        }
    }

    #[test]
    fn breaker_random() {
        let (mut open, mut half_open, mut reclosed) = (0, 0, 0);
        for input in random_inputs(13, 2000, 400) {
            let visited = breaker(&input);
            open += usize::from(visited.open);
            half_open += usize::from(visited.half_open);
            reclosed += usize::from(visited.reclosed);
        }
        // The random inputs must reach every state, or the comparison proves little.
        assert!(
            open > 200 && half_open > 100 && reclosed > 50,
            "{open} {half_open} {reclosed}"
        );
    }

    #[cfg(feature = "http")]
    #[test]
    fn headers_corpus_and_random() {
        for input in corpus("headers")
            .into_iter()
            .chain(random_inputs(17, 3000, 40))
        {
            headers(&input);
        }
    }

    #[cfg(feature = "http")]
    #[test]
    fn replay_body_corpus_and_random() {
        for input in corpus("replay_body")
            .into_iter()
            .chain(random_inputs(19, 3000, 80))
        {
            replay_body(&input);
        }
    }

    #[test]
    fn weighted_round_robin_corpus_and_random() {
        for input in corpus("weighted_round_robin")
            .into_iter()
            .chain(random_inputs(11, 200, 64))
        {
            weighted_round_robin(&input);
        }
    }
}
