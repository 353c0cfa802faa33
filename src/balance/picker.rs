//! Pickers: how a balancer chooses one endpoint from the published set.
//!
//! A picker is pure: it reads the set, the endpoints' atomics, the time and random numbers handed
//! to it in a [`PickContext`], and returns an index. State shared by every clone of a balancer
//! (the round-robin position) lives in the picker behind atomics; per-set data derived from the
//! weights (the weighted round-robin order) is computed once per published set by
//! [`Pick::schedule`], on the discovery task, never on the request path.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

use super::endpoint::Endpoint;
use super::ewma;
use super::set::EndpointSet;
use crate::classify::Outcome;

/// A small, fast, seedable random source for pickers (not cryptographic).
#[derive(Debug, Clone)]
pub struct PickRng(SmallRng);

impl PickRng {
    /// A generator from a seed: the same seed gives the same choices.
    pub fn with_seed(seed: u64) -> Self {
        Self(crate::rng::small_rng(seed))
    }

    /// A randomly seeded generator.
    pub fn new() -> Self {
        Self::with_seed(crate::rng::random_seed())
    }

    /// The next random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

impl Default for PickRng {
    fn default() -> Self {
        Self::new()
    }
}

/// What a picker gets besides the set: the time, a random source, and whether ejected
/// endpoints must be skipped.
pub struct PickContext<'a> {
    now_ns: u64,
    rng: &'a mut PickRng,
    skip_ejected: bool,
}

impl<'a> PickContext<'a> {
    /// A context at `now_ns` (nanoseconds since the balancer's epoch) drawing from `rng`.
    pub fn new(now_ns: u64, rng: &'a mut PickRng) -> Self {
        Self {
            now_ns,
            rng,
            skip_ejected: false,
        }
    }

    /// The same, skipping endpoints whose circuit breaker will not admit a call now.
    pub fn skipping_ejected(now_ns: u64, rng: &'a mut PickRng) -> Self {
        Self {
            now_ns,
            rng,
            skip_ejected: true,
        }
    }

    /// Whether pickers must check [`is_eligible`](Self::is_eligible) at all.
    #[inline]
    pub fn skips_ejected(&self) -> bool {
        self.skip_ejected
    }

    /// Whether `endpoint` may be chosen: every picker skips an endpoint whose breaker is open
    /// (until its trial is due) or whose half-open trial slots are taken.
    #[inline]
    pub fn is_eligible<K, S>(&self, endpoint: &Endpoint<K, S>) -> bool {
        !self.skip_ejected || endpoint.may_admit(self.now_ns)
    }

    /// Now, in nanoseconds since the balancer was built.
    pub fn now_nanos(&self) -> u64 {
        self.now_ns
    }

    /// A uniformly random `u64`.
    pub fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A random integer in `0..n` (0 when `n` is 0).
    pub fn random_below(&mut self, n: usize) -> usize {
        below(self.rng.next_u64(), n)
    }
}

impl fmt::Debug for PickContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickContext")
            .field("now_ns", &self.now_ns)
            .finish_non_exhaustive()
    }
}

/// Two distinct indices in `0..n` (n ≥ 2) from one random draw: the low and high halves,
/// each mapped onto its range.
#[inline]
fn draw_two(cx: &mut PickContext<'_>, n: usize) -> (usize, usize) {
    let random = cx.random_u64();
    let a = below(random << 32, n);
    let mut b = below(random & 0xffff_ffff_0000_0000, n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// Maps a random `u64` onto `0..n` with one multiplication (Lemire's range reduction).
#[inline]
fn below(random: u64, n: usize) -> usize {
    ((u128::from(random) * n as u128) >> 64) as usize
}

/// `a mod d` for a running counter, without a division on the hot path.
#[derive(Debug, Clone, Copy)]
struct FastMod {
    magic: u64,
    divisor: u32,
}

impl FastMod {
    fn new(divisor: u32) -> Self {
        let divisor = divisor.max(1);
        Self {
            magic: (u64::MAX / u64::from(divisor)).wrapping_add(1),
            divisor,
        }
    }

    #[inline]
    fn rem(self, a: u32) -> u32 {
        let low = self.magic.wrapping_mul(u64::from(a));
        ((u128::from(low) * u128::from(self.divisor)) >> 64) as u32
    }
}

/// A finished call, as reported to [`Pick::observe`].
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// How long the call took, in nanoseconds.
    pub latency_ns: u64,
    /// How the classifier counted it.
    pub outcome: Outcome,
    /// When it finished, in nanoseconds since the balancer was built.
    pub now_ns: u64,
}

/// A strategy for choosing an endpoint.
///
/// Implemented by [`RoundRobin`], [`LeastConn`], [`P2c`] and the run-time choice [`Picker`].
pub trait Pick: Send + Sync + 'static {
    /// Data derived from a published set (for example a weighted order), computed off the
    /// request path whenever discovery publishes.
    type Schedule: Send + Sync + 'static;

    /// Derives the schedule for a newly published set.
    fn schedule<K, S>(&self, set: &EndpointSet<K, S>) -> Self::Schedule;

    /// Chooses the index of an endpoint in `set`, or `None` when the set is empty.
    fn pick<K, S>(
        &self,
        set: &EndpointSet<K, S>,
        schedule: &Self::Schedule,
        cx: &mut PickContext<'_>,
    ) -> Option<usize>;

    /// Learns from a finished call. The default does nothing.
    fn observe<K, S>(&self, endpoint: &Endpoint<K, S>, observation: Observation) {
        let _ = (endpoint, observation);
    }
}

// ---------------------------------------------------------------------------------------------
// Round robin

/// Round robin, weighted with nginx's smooth weighted round-robin.
///
/// Every clone of a balancer shares one position, so the sequence continues across clones and
/// threads. With equal weights the pick is one atomic increment and a multiply. With unequal
/// weights, the discovery task computes the smooth weighted order once per published set
/// (weights 5, 1, 1 give `a a b a c a a`, exactly nginx's sequence), and a pick indexes it.
/// Very large weighted sets — endpoints × total weight above 2²² — use an earliest-deadline
/// order instead, with the same proportions but not nginx's interleaving.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicU32,
}

impl RoundRobin {
    /// A round-robin picker starting at the first endpoint.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The round-robin schedule of one published set.
#[derive(Debug, Clone)]
pub struct RoundRobinSchedule {
    modulo: FastMod,
    order: Option<Arc<[u32]>>,
}

impl Pick for RoundRobin {
    type Schedule = RoundRobinSchedule;

    fn schedule<K, S>(&self, set: &EndpointSet<K, S>) -> RoundRobinSchedule {
        if set.has_uniform_weights() {
            return RoundRobinSchedule {
                modulo: FastMod::new(u32::try_from(set.len()).unwrap_or(u32::MAX)),
                order: None,
            };
        }
        let weights: Vec<u32> = set.iter().map(|e| e.weight()).collect();
        let order = weighted_order(&weights);
        RoundRobinSchedule {
            modulo: FastMod::new(u32::try_from(order.len()).unwrap_or(u32::MAX)),
            order: Some(order.into()),
        }
    }

    #[inline]
    fn pick<K, S>(
        &self,
        set: &EndpointSet<K, S>,
        schedule: &RoundRobinSchedule,
        cx: &mut PickContext<'_>,
    ) -> Option<usize> {
        if set.is_empty() {
            return None;
        }
        let next = || {
            let position = schedule
                .modulo
                .rem(self.next.fetch_add(1, Ordering::Relaxed));
            match &schedule.order {
                None => Some(position as usize),
                Some(order) => order.get(position as usize).map(|&i| i as usize),
            }
        };
        if !cx.skips_ejected() {
            return next();
        }
        // Walk the order past ejected endpoints, at most one full period.
        let period = schedule.order.as_ref().map_or(set.len(), |o| o.len());
        (0..period).find_map(|_| next().filter(|&i| set.get(i).is_some_and(|e| cx.is_eligible(e))))
    }
}

/// The weighted round-robin order for `weights`: indices, one period long.
///
/// Weights are first divided by their greatest common divisor, so 10/20 is the same as 1/2.
pub fn weighted_order(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().fold(0u32, |g, &w| gcd(g, w.max(1)));
    let weights: Vec<u64> = weights
        .iter()
        .map(|&w| u64::from(w.max(1) / divisor.max(1)))
        .collect();
    let total: u64 = weights.iter().sum();
    if (weights.len() as u64).saturating_mul(total) <= 1 << 22 {
        smooth_weighted(&weights, total)
    } else {
        earliest_deadline(&weights)
    }
}

/// nginx's smooth weighted round-robin, one full period: every step adds each weight to its
/// peer's running score, picks the highest score (the earlier peer on a tie) and subtracts the
/// total from the winner.
fn smooth_weighted(weights: &[u64], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (score, &weight) in current.iter_mut().zip(weights) {
            *score += weight as i64;
        }
        let best = argmax_first(&current).unwrap_or(0);
        current[best] -= total as i64;
        order.push(best as u32);
    }
    order
}

/// The index of the highest score; the earliest one on a tie.
fn argmax_first(scores: &[i64]) -> Option<usize> {
    let mut best: Option<(usize, i64)> = None;
    for (i, &score) in scores.iter().enumerate() {
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// A weight-proportional order in O(total · log n): each peer's k-th turn is due at
/// `(k + 1) / weight`; turns are taken earliest first, ties to the earlier peer.
fn earliest_deadline(weights: &[u64]) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    // Quantise so the period stays bounded (about a million picks).
    let total: u64 = weights.iter().sum();
    let scale = (total / (1 << 20)).max(1);
    let weights: Vec<u64> = weights.iter().map(|&w| (w / scale).max(1)).collect();
    let total: u64 = weights.iter().sum();
    // Turn k of a peer with weight w is due at (k + 1) / w, scaled to stay an integer.
    let due = |turn: u64, weight: u64| {
        (u128::from(turn) + 1) * (u128::from(u64::MAX) / u128::from(weight))
    };
    let mut heap: BinaryHeap<Reverse<(u128, usize, u64)>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Reverse((due(0, w), i, 0)))
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    while (order.len() as u64) < total {
        let Some(Reverse((_, i, turn))) = heap.pop() else {
            break;
        };
        order.push(i as u32);
        heap.push(Reverse((due(turn + 1, weights[i]), i, turn + 1)));
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

// ---------------------------------------------------------------------------------------------
// Least connections

/// Least connections: the endpoint with the fewest in-flight calls per unit of weight.
///
/// Loads are compared as `in_flight_a × weight_b < in_flight_b × weight_a`, as nginx does; ties
/// are broken uniformly at random. Each pick scans the whole set (O(n)): it is exact, and cheap
/// up to a few hundred endpoints; beyond that [`P2c`] gives nearly the same balance in O(1).
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastConn {
    _private: (),
}

impl LeastConn {
    /// A least-connection picker.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Pick for LeastConn {
    type Schedule = ();

    fn schedule<K, S>(&self, _: &EndpointSet<K, S>) {}

    fn pick<K, S>(
        &self,
        set: &EndpointSet<K, S>,
        _: &(),
        cx: &mut PickContext<'_>,
    ) -> Option<usize> {
        let mut best: Option<(u64, u64)> = None; // (in_flight, weight) of the least loaded
        let mut first = 0;
        let mut ties = 0usize;
        for (i, endpoint) in set.iter().enumerate() {
            if !cx.is_eligible(endpoint) {
                continue;
            }
            let load = (endpoint.in_flight() as u64, u64::from(endpoint.weight()));
            match best {
                Some(b) if load.0 * b.1 > b.0 * load.1 => {}
                Some(b) if load.0 * b.1 == b.0 * load.1 => ties += 1,
                _ => {
                    best = Some(load);
                    first = i;
                    ties = 1;
                }
            }
        }
        let best = best?;
        if ties == 1 {
            return Some(first);
        }
        // A second pass takes the k-th of the tied endpoints, k uniform: one random draw.
        let mut k = cx.random_below(ties);
        for (i, endpoint) in set.iter().enumerate().skip(first) {
            let load = (endpoint.in_flight() as u64, u64::from(endpoint.weight()));
            if load.0 * best.1 == best.0 * load.1 && cx.is_eligible(endpoint) {
                if k == 0 {
                    return Some(i);
                }
                k -= 1;
            }
        }
        // In-flight counts moved between the passes: the first minimum is still a good answer.
        Some(first)
    }
}

// ---------------------------------------------------------------------------------------------
// Power of two choices

/// Power of two choices over a peak-EWMA latency estimate in which failures count as expensive.
///
/// Each pick draws two distinct endpoints at random and takes the one with the lower cost,
/// `latency estimate × (in_flight + 1) / weight`. An endpoint that has never answered is costed
/// at [`initial_latency`](Self::initial_latency), so new endpoints share load with known ones
/// until their first answers come back. A failed call records a latency of at least
/// [`failure_penalty`](Self::failure_penalty), and at least twice the endpoint's current
/// estimate, so an endpoint that fails fast does not look fast, and one that keeps failing is
/// tried exponentially less often. An endpoint nothing has been heard from for a whole
/// [`decay`](Self::decay) time, with no call in flight, gets the next call it is drawn for
/// (one probe at a time), and that answer replaces its old estimate: an instance that failed
/// and healed rejoins within a decay time instead of waiting minutes for its penalty to decay.
///
/// Like every power-of-two-choices balancer, it still sends a call to a bad endpoint when both
/// draws are bad: with `k` bad endpoints out of `n`, about `k(k − 1) / (n(n − 1))` of calls.
/// Taking sick endpoints out entirely is the job of per-endpoint circuit breakers.
#[derive(Debug, Clone, Copy)]
pub struct P2c {
    decay_ns: f64,
    /// `decay_ns` in whole nanoseconds, like `inverse_decay` precomputed for the pick: the
    /// integer comparison that decides whether a probe is due costs less than a conversion.
    decay_whole_ns: u64,
    inverse_decay: f64,
    failure_penalty_ns: f64,
    initial_latency_ns: f64,
}

impl Default for P2c {
    fn default() -> Self {
        Self {
            decay_ns: 10e9,
            decay_whole_ns: 10_000_000_000,
            inverse_decay: 1e-10,
            failure_penalty_ns: 1e9,
            initial_latency_ns: 30e6,
        }
    }
}

impl P2c {
    /// A P2C picker with the default decay (10 s), failure penalty (1 s) and initial latency
    /// (30 ms).
    pub fn new() -> Self {
        Self::default()
    }

    /// How fast the latency estimate forgets: the time constant of the decay. Default is 10 s
    /// (Finagle's).
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay_ns = (decay.as_nanos() as f64).max(1.0);
        self.decay_whole_ns = u64::try_from(decay.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.inverse_decay = 1.0 / self.decay_ns;
        self
    }

    /// The latency a failed call is recorded as, at least. Default is 1 s; set it above the
    /// slowest latency a healthy endpoint has. Consecutive failures double it, up to 64 times.
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty_ns = penalty.as_nanos() as f64;
        self
    }

    /// The latency assumed for an endpoint that has not answered yet. Default is 30 ms.
    pub fn initial_latency(mut self, latency: Duration) -> Self {
        self.initial_latency_ns = (latency.as_nanos() as f64).max(1.0);
        self
    }

    /// The latency estimate (nanoseconds) and its timestamp; an endpoint that has never
    /// answered gets the initial latency, undecayed.
    #[inline]
    fn estimate<K, S>(&self, endpoint: &Endpoint<K, S>, now_ns: u64) -> (f64, u64) {
        let (estimate, at) = endpoint.cost_state();
        if estimate == 0.0 {
            (self.initial_latency_ns, now_ns)
        } else {
            (estimate, at)
        }
    }

    /// The cost the picker compares for `endpoint` at `now_ns`:
    /// `decayed latency estimate × (in_flight + 1) / weight`, in nanoseconds.
    pub fn cost<K, S>(&self, endpoint: &Endpoint<K, S>, now_ns: u64) -> f64 {
        let (estimate, at) = self.estimate(endpoint, now_ns);
        let in_flight = endpoint.in_flight() as f64;
        ewma::decayed(estimate, at, now_ns, self.decay_ns) * (in_flight + 1.0)
            / f64::from(endpoint.weight())
    }
}

impl P2c {
    /// Whether to take `y` over `x`, loading each endpoint's state once.
    ///
    /// An endpoint nothing has been heard from for a whole decay time, with an estimate and no
    /// call in flight, wins as a probe: its estimate is too old to trust, and one answer
    /// refreshes it. Without this, an instance whose failures pushed its estimate up (the
    /// penalty doubles, to 64 s) would get nothing for minutes after it healed, since P2c
    /// never picks the dearer of two.
    ///
    /// Otherwise `cost(y) < cost(x)`, decided with one `exp` and no division: both estimates
    /// decay by `e^(−(now − t)/τ)`, so only the difference of their timestamps matters, and
    /// the weights move across the comparison as products.
    #[inline]
    fn prefers<K, S>(&self, x: &Endpoint<K, S>, y: &Endpoint<K, S>, now_ns: u64) -> bool {
        let (ex, tx) = x.cost_state();
        let (ey, ty) = y.cost_state();
        let (fx, fy) = (x.in_flight(), y.in_flight());
        // Both observed within the decay time: the usual case, one comparison.
        let oldest = tx.min(ty);
        if now_ns.saturating_sub(oldest) > self.decay_whole_ns {
            if let Some(take_y) = self.probe([(ex, tx, fx), (ey, ty, fy)], now_ns) {
                return take_y;
            }
        }
        let (ex, tx) = self.known_or_initial(ex, tx, now_ns);
        let (ey, ty) = self.known_or_initial(ey, ty, now_ns);
        let lhs = ey * (fy as f64 + 1.0) * f64::from(x.weight());
        let rhs = ex * (fx as f64 + 1.0) * f64::from(y.weight());
        // lhs·e^(−(now−ty)/τ) < rhs·e^(−(now−tx)/τ)  ⇔  lhs < rhs·e^((tx−ty)/τ)
        let z = (tx as f64 - ty as f64) * self.inverse_decay;
        // Busy endpoints were updated within a fraction of τ of each other; there e^z is
        // 1 + z + z²/2 to within 2·10⁻⁷, several times cheaper than `exp`.
        let skew = if z.abs() < 0.01 {
            1.0 + z + 0.5 * z * z
        } else {
            z.exp()
        };
        lhs < rhs * skew
    }

    /// The probe rule, out of line (rarely reached): `Some(false)` takes the first endpoint,
    /// `Some(true)` the second, `None` leaves the choice to their costs.
    #[cold]
    #[inline(never)]
    fn probe(&self, pair: [(f64, u64, usize); 2], now_ns: u64) -> Option<bool> {
        pair.iter()
            .position(|&(estimate, at, in_flight)| self.stale(estimate, at, in_flight, now_ns))
            .map(|i| i == 1)
    }

    /// Whether an endpoint with this state is due a probe at `now_ns`.
    fn stale(&self, estimate: f64, at: u64, in_flight: usize, now_ns: u64) -> bool {
        estimate != 0.0 && in_flight == 0 && now_ns.saturating_sub(at) > self.decay_whole_ns
    }

    /// An estimate of zero means "never answered": cost it at the initial latency, now.
    #[inline]
    fn known_or_initial(&self, estimate: f64, at: u64, now_ns: u64) -> (f64, u64) {
        if estimate == 0.0 {
            (self.initial_latency_ns, now_ns)
        } else {
            (estimate, at)
        }
    }
}

impl Pick for P2c {
    type Schedule = ();

    fn schedule<K, S>(&self, _: &EndpointSet<K, S>) {}

    #[inline]
    fn pick<K, S>(
        &self,
        set: &EndpointSet<K, S>,
        _: &(),
        cx: &mut PickContext<'_>,
    ) -> Option<usize> {
        let n = set.len();
        if n <= 1 {
            return set.get(0).filter(|e| cx.is_eligible(e)).map(|_| 0);
        }
        if !cx.skips_ejected() {
            let (a, b) = draw_two(cx, n);
            let (ea, eb) = (set.get(a)?, set.get(b)?);
            let now = cx.now_nanos();
            return Some(if self.prefers(ea, eb, now) { b } else { a });
        }
        for _ in 0..4 {
            let (a, b) = draw_two(cx, n);
            let (ea, eb) = (set.get(a)?, set.get(b)?);
            // An ejected endpoint whose trial is due wins: its cost is from before it
            // failed, and its trial slots bound what it receives.
            let now = cx.now_nanos();
            if ea.trial_due(now) {
                return Some(a);
            }
            if eb.trial_due(now) {
                return Some(b);
            }
            match (cx.is_eligible(ea), cx.is_eligible(eb)) {
                (true, true) if self.prefers(ea, eb, now) => return Some(b),
                (true, _) => return Some(a),
                (false, true) => return Some(b),
                (false, false) => {} // both ejected: draw again
            }
        }
        // Mostly ejected: take the first eligible endpoint from a random start.
        let start = cx.random_below(n);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| set.get(i).is_some_and(|e| cx.is_eligible(e)))
    }

    fn observe<K, S>(&self, endpoint: &Endpoint<K, S>, observation: Observation) {
        let (estimate, at) = endpoint.cost_state();
        let mut sample = observation.latency_ns as f64;
        if observation.outcome == Outcome::Failure {
            // A failure costs at least the penalty, and at least twice what the endpoint costs
            // now, so consecutive failures back off exponentially (up to 64 × the penalty) and
            // a loaded slow endpoint never looks worse than one that keeps failing.
            let current = ewma::decayed(estimate, at, observation.now_ns, self.decay_ns);
            sample = sample
                .max(self.failure_penalty_ns)
                .max((2.0 * current).min(64.0 * self.failure_penalty_ns));
        }
        // A zero estimate means "never answered"; keep real samples strictly positive.
        let sample = sample.max(1.0);
        // An estimate older than the decay time is too old to trust (the probe rule in
        // `prefers` is what sends such an endpoint a call): the answer replaces it. Averaged
        // in, a fast answer would barely move an estimate that failures pushed to seconds, and
        // the endpoint would wait minutes for the penalty to decay.
        let stale = observation.now_ns.saturating_sub(at) > self.decay_whole_ns;
        let next = if estimate == 0.0 || stale {
            sample
        } else {
            ewma::observe(estimate, at, sample, observation.now_ns, self.decay_ns)
        };
        endpoint.set_cost(next, observation.now_ns);
    }
}

// ---------------------------------------------------------------------------------------------
// Run-time choice

/// A picker chosen at run time (from a flag or a config file).
#[derive(Debug)]
pub enum Picker {
    /// See [`RoundRobin`].
    RoundRobin(RoundRobin),
    /// See [`LeastConn`].
    LeastConn(LeastConn),
    /// See [`P2c`].
    P2c(P2c),
}

/// The schedule of a [`Picker`].
#[derive(Debug)]
pub enum PickerSchedule {
    /// Round robin's order.
    RoundRobin(RoundRobinSchedule),
    /// Nothing to precompute.
    None,
}

impl Pick for Picker {
    type Schedule = PickerSchedule;

    fn schedule<K, S>(&self, set: &EndpointSet<K, S>) -> PickerSchedule {
        match self {
            Self::RoundRobin(rr) => PickerSchedule::RoundRobin(rr.schedule(set)),
            Self::LeastConn(_) | Self::P2c(_) => PickerSchedule::None,
        }
    }

    #[inline]
    fn pick<K, S>(
        &self,
        set: &EndpointSet<K, S>,
        schedule: &PickerSchedule,
        cx: &mut PickContext<'_>,
    ) -> Option<usize> {
        match (self, schedule) {
            (Self::RoundRobin(rr), PickerSchedule::RoundRobin(s)) => rr.pick(set, s, cx),
            (Self::RoundRobin(rr), PickerSchedule::None) => rr.pick(set, &rr.schedule(set), cx),
            (Self::LeastConn(lc), _) => lc.pick(set, &(), cx),
            (Self::P2c(p2c), _) => p2c.pick(set, &(), cx),
        }
    }

    fn observe<K, S>(&self, endpoint: &Endpoint<K, S>, observation: Observation) {
        if let Self::P2c(p2c) = self {
            p2c.observe(endpoint, observation);
        }
    }
}

impl std::str::FromStr for Picker {
    type Err = UnknownPicker;

    /// Parses `round-robin` (or `rr`), `least-conn` (or `lc`), `p2c`.
    fn from_str(name: &str) -> Result<Self, UnknownPicker> {
        match name.to_ascii_lowercase().replace('_', "-").as_str() {
            "round-robin" | "roundrobin" | "rr" => Ok(Self::RoundRobin(RoundRobin::new())),
            "least-conn" | "leastconn" | "least-connections" | "lc" => {
                Ok(Self::LeastConn(LeastConn::new()))
            }
            "p2c" | "power-of-two-choices" => Ok(Self::P2c(P2c::new())),
            _ => Err(UnknownPicker(name.to_owned())),
        }
    }
}

/// Which picker, as data (a config file's `picker = "least-conn"`); [`Picker::from`] makes a
/// fresh one.
///
/// # Examples
///
/// ```
/// use seawall::balance::{Picker, PickerKind};
///
/// let kind: PickerKind = "rr".parse()?;
/// assert_eq!(kind, PickerKind::RoundRobin);
/// assert!(matches!(Picker::from(kind), Picker::RoundRobin(_)));
/// # Ok::<(), seawall::balance::UnknownPicker>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PickerKind {
    /// [`RoundRobin`].
    RoundRobin,
    /// [`LeastConn`].
    LeastConn,
    /// [`P2c`], the default.
    #[default]
    P2c,
}

impl std::str::FromStr for PickerKind {
    type Err = UnknownPicker;

    /// Parses the names [`Picker`] parses.
    fn from_str(name: &str) -> Result<Self, UnknownPicker> {
        Ok(match name.parse::<Picker>()? {
            Picker::RoundRobin(_) => Self::RoundRobin,
            Picker::LeastConn(_) => Self::LeastConn,
            Picker::P2c(_) => Self::P2c,
        })
    }
}

impl From<PickerKind> for Picker {
    fn from(kind: PickerKind) -> Self {
        match kind {
            PickerKind::RoundRobin => Self::RoundRobin(RoundRobin::new()),
            PickerKind::LeastConn => Self::LeastConn(LeastConn::new()),
            PickerKind::P2c => Self::P2c(P2c::new()),
        }
    }
}

/// A picker name that [`Picker::from_str`](std::str::FromStr) does not know.
#[derive(Debug, Clone)]
pub struct UnknownPicker(String);

impl fmt::Display for UnknownPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown picker `{}`: use round-robin, least-conn or p2c",
            self.0
        )
    }
}

impl std::error::Error for UnknownPicker {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::EndpointTable;

    fn set(weights: &[u32]) -> EndpointSet<usize, ()> {
        let mut table = EndpointTable::new();
        for (key, &weight) in weights.iter().enumerate() {
            table.insert(Endpoint::new(key, (), weight, "test"));
        }
        table.snapshot()
    }

    fn picks<P: Pick>(picker: &P, set: &EndpointSet<usize, ()>, n: usize, seed: u64) -> Vec<usize> {
        let schedule = picker.schedule(set);
        let mut rng = PickRng::with_seed(seed);
        (0..n)
            .map(|_| {
                let mut cx = PickContext::new(0, &mut rng);
                picker.pick(set, &schedule, &mut cx).unwrap()
            })
            .collect()
    }

    #[test]
    fn fast_mod_matches_remainder() {
        for divisor in [
            1u32,
            2,
            3,
            7,
            10,
            64,
            100,
            1000,
            9999,
            10_000,
            65_537,
            u32::MAX,
        ] {
            let m = FastMod::new(divisor);
            for a in [
                0u32,
                1,
                2,
                63,
                64,
                99,
                12_345,
                1 << 31,
                u32::MAX - 1,
                u32::MAX,
            ] {
                assert_eq!(m.rem(a), a % divisor, "{a} % {divisor}");
            }
        }
    }

    #[test]
    fn round_robin_sequence_and_evenness() {
        let s = set(&[1, 1, 1]);
        assert_eq!(picks(&RoundRobin::new(), &s, 7, 0), [0, 1, 2, 0, 1, 2, 0]);
        let s = set(&[1; 10]);
        let mut counts = [0; 10];
        for i in picks(&RoundRobin::new(), &s, 10_000, 0) {
            counts[i] += 1;
        }
        assert_eq!(counts, [1000; 10]);
    }

    #[test]
    fn smooth_weighted_round_robin_is_nginx_order() {
        // a=5, b=1, c=1 gives a a b a c a a (nginx commit 52327e0627f4).
        let s = set(&[5, 1, 1]);
        assert_eq!(
            picks(&RoundRobin::new(), &s, 14, 0),
            [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]
        );
        assert_eq!(weighted_order(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        // Weights are reduced by their gcd first.
        assert_eq!(weighted_order(&[10, 2, 2]), weighted_order(&[5, 1, 1]));
        // Ties go to the earlier peer.
        assert_eq!(weighted_order(&[1, 1]), [0, 1]);
        assert_eq!(weighted_order(&[2, 1]), [0, 1, 0]);
    }

    #[test]
    fn large_weighted_sets_keep_proportions() {
        // 3000 endpoints × total weight ≫ 2^22 takes the earliest-deadline path.
        let weights: Vec<u32> = (0..3000).map(|i| 1 + (i % 7)).collect();
        let order = weighted_order(&weights);
        let mut counts = vec![0u32; weights.len()];
        for &i in &order {
            counts[i as usize] += 1;
        }
        assert_eq!(counts, weights);
    }

    #[test]
    fn least_conn_picks_least_loaded() {
        let s = set(&[1, 1, 1]);
        for _ in 0..3 {
            s.get(0).unwrap().acquire();
        }
        s.get(1).unwrap().acquire();
        s.get(2).unwrap().acquire();
        s.get(2).unwrap().acquire();
        assert!(picks(&LeastConn::new(), &s, 50, 1).iter().all(|&i| i == 1));
    }

    #[test]
    fn least_conn_weighs_and_breaks_ties_at_random() {
        // 4 in flight on weight 4 (load 1) beats 2 on weight 1 (load 2).
        let s = set(&[4, 1]);
        for _ in 0..4 {
            s.get(0).unwrap().acquire();
        }
        for _ in 0..2 {
            s.get(1).unwrap().acquire();
        }
        assert!(picks(&LeastConn::new(), &s, 20, 2).iter().all(|&i| i == 0));

        let s = set(&[1; 4]);
        s.get(3).unwrap().acquire();
        let mut counts = [0; 4];
        for i in picks(&LeastConn::new(), &s, 3000, 3) {
            counts[i] += 1;
        }
        assert_eq!(counts[3], 0);
        for &c in &counts[..3] {
            assert!((850..1150).contains(&c), "ties not uniform: {counts:?}");
        }
    }

    #[test]
    fn p2c_avoids_slow_and_fast_failing_endpoints() {
        let p2c = P2c::new();
        let s = set(&[1, 1, 1, 1]);
        let ms = 1_000_000;
        // 0 and 1: healthy at 1 ms; 2: slow at 200 ms; 3: fails in 1 ms.
        for round in 0..5u64 {
            let now = round * ms;
            for (i, latency, outcome) in [
                (0, ms, Outcome::Success),
                (1, ms, Outcome::Success),
                (2, 200 * ms, Outcome::Success),
                (3, ms, Outcome::Failure),
            ] {
                p2c.observe(
                    s.get(i).unwrap(),
                    Observation {
                        latency_ns: latency,
                        outcome,
                        now_ns: now,
                    },
                );
            }
        }
        let mut counts = [0; 4];
        let mut rng = PickRng::with_seed(4);
        for _ in 0..4000 {
            let mut cx = PickContext::new(5 * ms, &mut rng);
            counts[p2c.pick(&s, &(), &mut cx).unwrap()] += 1;
        }
        // The two healthy endpoints take everything; the slow one only wins against the failing one.
        assert_eq!(
            counts[3], 0,
            "fast-failing endpoint attracted traffic: {counts:?}"
        );
        assert!(
            counts[2] < 4000 / 5,
            "slow endpoint got too much: {counts:?}"
        );
        assert!(counts[0] + counts[1] > 3000, "{counts:?}");
    }

    #[test]
    fn p2c_draws_two_distinct_endpoints() {
        // With two endpoints both are always compared, so the cheaper one always wins.
        let p2c = P2c::new();
        let s = set(&[1, 1]);
        p2c.observe(
            s.get(0).unwrap(),
            Observation {
                latency_ns: 5_000_000,
                outcome: Outcome::Success,
                now_ns: 0,
            },
        );
        p2c.observe(
            s.get(1).unwrap(),
            Observation {
                latency_ns: 1_000_000,
                outcome: Outcome::Success,
                now_ns: 0,
            },
        );
        assert!(picks(&p2c, &s, 500, 5).iter().all(|&i| i == 1));
    }

    #[test]
    fn p2c_costs_a_new_endpoint_at_the_initial_latency() {
        let p2c = P2c::new().initial_latency(Duration::from_millis(30));
        let s = set(&[1, 1]);
        let known = s.get(0).unwrap();
        let fresh = s.get(1).unwrap();
        let observe = |latency_ns, outcome| {
            p2c.observe(
                known,
                Observation {
                    latency_ns,
                    outcome,
                    now_ns: 0,
                },
            );
        };
        // A known 10 ms endpoint beats a fresh one (30 ms)...
        observe(10_000_000, Outcome::Success);
        assert!(picks(&p2c, &s, 100, 6).iter().all(|&i| i == 0));
        // ...until it carries three calls (10 ms × 4 > 30 ms × 1).
        for _ in 0..3 {
            known.acquire();
        }
        assert!(picks(&p2c, &s, 100, 7).iter().all(|&i| i == 1));
        // A known failure (1 s) loses to a fresh endpoint even while that one is busy.
        for _ in 0..3 {
            known.release();
        }
        observe(1_000_000, Outcome::Failure);
        fresh.acquire();
        fresh.acquire();
        assert!(picks(&p2c, &s, 100, 8).iter().all(|&i| i == 1));
        assert_eq!(p2c.cost(fresh, 123), 3.0 * 30e6);
    }

    #[test]
    fn p2c_compares_decayed_estimates_of_different_ages() {
        // a: 10 ms, measured 20 s ago (decays to 10 ms·e⁻² ≈ 1.35 ms); b: 5 ms, measured now.
        let p2c = P2c::new().decay(Duration::from_secs(10));
        let s = set(&[1, 1]);
        let second = 1_000_000_000;
        p2c.observe(
            s.get(0).unwrap(),
            Observation {
                latency_ns: 10_000_000,
                outcome: Outcome::Success,
                now_ns: 0,
            },
        );
        p2c.observe(
            s.get(1).unwrap(),
            Observation {
                latency_ns: 5_000_000,
                outcome: Outcome::Success,
                now_ns: 20 * second,
            },
        );
        let now = 20 * second;
        assert!(p2c.cost(s.get(0).unwrap(), now) < p2c.cost(s.get(1).unwrap(), now));
        let mut rng = PickRng::with_seed(9);
        for _ in 0..50 {
            let mut cx = PickContext::new(now, &mut rng);
            assert_eq!(p2c.pick(&s, &(), &mut cx), Some(0));
        }
        // Close in time (within 1% of τ) the cheap expansion must agree with the exact cost.
        let t = 20 * second + 50_000_000;
        p2c.observe(
            s.get(0).unwrap(),
            Observation {
                latency_ns: 6_000_000,
                outcome: Outcome::Success,
                now_ns: t,
            },
        );
        let exact_a = p2c.cost(s.get(0).unwrap(), t);
        let exact_b = p2c.cost(s.get(1).unwrap(), t);
        let mut cx = PickContext::new(t, &mut rng);
        let expected = if exact_a <= exact_b { 0 } else { 1 };
        assert_eq!(
            p2c.pick(&s, &(), &mut cx),
            Some(expected),
            "{exact_a} vs {exact_b}"
        );
    }

    #[test]
    fn p2c_probes_an_endpoint_unheard_from_for_a_decay_time_once_at_a_time() {
        // a failed until its estimate reached 64 s; b answers in 1 ms and keeps answering.
        let p2c = P2c::new().decay(Duration::from_secs(10));
        let s = set(&[1, 1]);
        let (a, b) = (s.get(0).unwrap(), s.get(1).unwrap());
        let second = 1_000_000_000u64;
        for _ in 0..8 {
            p2c.observe(
                a,
                Observation {
                    latency_ns: 1_000_000,
                    outcome: Outcome::Failure,
                    now_ns: 0,
                },
            );
        }
        let pick_at = |now: u64, rng: &mut PickRng| {
            p2c.observe(
                b,
                Observation {
                    latency_ns: 1_000_000,
                    outcome: Outcome::Success,
                    now_ns: now,
                },
            );
            let mut cx = PickContext::new(now, rng);
            p2c.pick(&s, &(), &mut cx).unwrap()
        };
        let mut rng = PickRng::with_seed(3);
        // Within the decay time, the penalised endpoint is never chosen.
        for t in 1..=10 {
            assert_eq!(pick_at(t * second, &mut rng), 1, "at {t} s");
        }
        // Past it, one probe goes to a; none while that probe is in flight.
        assert_eq!(pick_at(11 * second, &mut rng), 0, "a is probed");
        a.acquire();
        assert_eq!(pick_at(12 * second, &mut rng), 1, "one probe at a time");
        // The probe answers in 0.5 ms: the answer replaces the 12 s old estimate (averaged in, it
        // would have left 19 s of decayed failures), and a, now the cheaper, takes calls again.
        a.release();
        p2c.observe(
            a,
            Observation {
                latency_ns: 500_000,
                outcome: Outcome::Success,
                now_ns: 12 * second,
            },
        );
        assert_eq!(p2c.cost(a, 12 * second), 5e5);
        for i in 1..=5 {
            assert_eq!(pick_at(12 * second + i, &mut rng), 0, "a is back");
        }
    }

    #[test]
    fn picker_names() {
        for (name, ok) in [
            ("rr", true),
            ("round-robin", true),
            ("least_conn", true),
            ("P2C", true),
            ("random", false),
        ] {
            assert_eq!(name.parse::<Picker>().is_ok(), ok, "{name}");
        }
        assert!(
            "random"
                .parse::<Picker>()
                .unwrap_err()
                .to_string()
                .contains("round-robin")
        );
    }
}
