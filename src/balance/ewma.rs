//! Peak-sensitive EWMA of latency, in which failures count as expensive.
//!
//! A sample above the current estimate replaces it at once (the *peak*), so an endpoint that
//! slows down is avoided immediately; a lower sample pulls the estimate down smoothly with weight
//! `1 − e^(−Δt/τ)`. When read, the estimate decays toward zero with the time since the last
//! sample, so an endpoint that has not been tried for a while looks cheap again and gets probed.
//!
//! tower's `PeakEwma` feeds an error's (short) latency in like any response, so an endpoint that
//! fails in 1 ms looks like the fastest one and attracts nearly all traffic. Here a failure's
//! sample is at least the configured penalty, so a fast-failing endpoint looks slow instead.
//!
//! All values are nanoseconds; the functions are pure so the glue can keep the state in atomics.

/// The estimate after observing `sample_ns` at `now_ns`, given the previous estimate and when it
/// was last updated.
pub(crate) fn observe(prev_ns: f64, prev_at: u64, sample_ns: f64, now_ns: u64, tau_ns: f64) -> f64 {
    if sample_ns > prev_ns {
        return sample_ns;
    }
    let elapsed = now_ns.saturating_sub(prev_at) as f64;
    let keep = (-elapsed / tau_ns).exp();
    prev_ns * keep + sample_ns * (1.0 - keep)
}

/// The estimate as seen at `now_ns`: decayed toward zero since it was last updated.
pub(crate) fn decayed(prev_ns: f64, prev_at: u64, now_ns: u64, tau_ns: f64) -> f64 {
    let elapsed = now_ns.saturating_sub(prev_at) as f64;
    if elapsed <= 0.0 {
        return prev_ns;
    }
    prev_ns * (-elapsed / tau_ns).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: f64 = 10e9;

    #[test]
    fn peaks_replace_at_once() {
        assert_eq!(observe(1e6, 0, 5e6, 0, TAU), 5e6);
    }

    #[test]
    fn lower_samples_pull_down_with_elapsed_time() {
        let after_no_time = observe(10e6, 0, 1e6, 0, TAU);
        assert_eq!(
            after_no_time, 10e6,
            "no elapsed time: no weight on the new sample"
        );
        let after_tau = observe(10e6, 0, 1e6, 10_000_000_000, TAU);
        let expected = 10e6 * (-1.0f64).exp() + 1e6 * (1.0 - (-1.0f64).exp());
        assert!((after_tau - expected).abs() < 1.0);
    }

    #[test]
    fn reads_decay_toward_zero() {
        assert_eq!(decayed(8e6, 5, 5, TAU), 8e6);
        let d = decayed(8e6, 0, 10_000_000_000, TAU);
        assert!((d - 8e6 / std::f64::consts::E).abs() < 1.0);
        assert!(decayed(8e6, 0, 1_000_000_000_000, TAU) < 1.0);
    }
}
