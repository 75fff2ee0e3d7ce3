//! Peak-EWMA cost of an endpoint, as in Finagle and linkerd2-proxy: a latency estimate
//! that jumps up to any slower observation at once and decays back slowly, so one slow
//! pod stops receiving traffic after its first slow answer rather than after many.
//!
//! On a response with round-trip `rtt` at time `t`: if `rtt > cost` then `cost = rtt`,
//! else `w = exp(-(t - stamp)/tau)`, `cost = cost*w + rtt*(1-w)`; `stamp = t`. Reads
//! decay the cost towards zero with the same `tau`, so an endpoint that has not been
//! tried for a while gets probed again.
//!
//! Cost (µs, as `f32`) and stamp (ms, `u32`, wrapping) share one `AtomicU64` updated by
//! compare-and-swap: lock-free, and the pair is always consistent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug)]
pub struct PeakEwma {
    state: AtomicU64,
}

fn pack(cost_us: f32, stamp_ms: u32) -> u64 {
    (u64::from(cost_us.to_bits()) << 32) | u64::from(stamp_ms)
}

fn unpack(v: u64) -> (f32, u32) {
    (f32::from_bits((v >> 32) as u32), v as u32)
}

/// `exp(-elapsed/tau)`, the weight kept by the old estimate.
fn keep(stamp_ms: u32, now_ms: u64, tau: Duration) -> f32 {
    let elapsed = (now_ms as u32).wrapping_sub(stamp_ms) as f32;
    // Through `u64`: a `u128` to `f32` conversion is a library call, not an instruction.
    (-elapsed / (tau.as_millis() as u64).max(1) as f32).exp()
}

impl PeakEwma {
    pub fn new(initial: Duration, now_ms: u64) -> PeakEwma {
        PeakEwma { state: AtomicU64::new(pack(initial.as_micros() as u64 as f32, now_ms as u32)) }
    }

    pub fn observe(&self, rtt: Duration, now_ms: u64, tau: Duration) {
        let rtt = rtt.as_micros() as u64 as f32;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (cost, stamp) = unpack(current);
            let next = if rtt > cost {
                rtt
            } else {
                let w = keep(stamp, now_ms, tau);
                cost * w + rtt * (1.0 - w)
            };
            match self.state.compare_exchange_weak(
                current,
                pack(next, now_ms as u32),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The current estimate in microseconds, decayed for the time since it was last
    /// updated.
    pub fn cost_us(&self, now_ms: u64, tau: Duration) -> f32 {
        let (cost, stamp) = unpack(self.state.load(Ordering::Relaxed));
        cost * keep(stamp, now_ms, tau)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::clock::now_ms;

    const TAU: Duration = Duration::from_secs(10);

    #[test]
    fn a_slower_answer_raises_the_cost_at_once() {
        let e = PeakEwma::new(Duration::from_millis(30), 0);
        e.observe(Duration::from_millis(200), 1, TAU);
        assert!((e.cost_us(1, TAU) - 200_000.0).abs() < 1.0);
    }

    #[test]
    fn a_faster_answer_moves_the_cost_by_the_elapsed_weight() {
        let e = PeakEwma::new(Duration::from_millis(100), 0);
        // One tau later the old estimate keeps e^-1 of its weight.
        e.observe(Duration::from_millis(10), 10_000, TAU);
        let w = (-1.0f32).exp();
        let expected = 100_000.0 * w + 10_000.0 * (1.0 - w);
        assert!((e.cost_us(10_000, TAU) - expected).abs() < 1.0, "{}", e.cost_us(10_000, TAU));
        // An immediate second fast answer barely moves it (w ≈ 1).
        e.observe(Duration::from_millis(10), 10_000, TAU);
        assert!((e.cost_us(10_000, TAU) - expected).abs() < 1.0);
    }

    #[test]
    fn idle_cost_decays_towards_zero_on_read() {
        let e = PeakEwma::new(Duration::from_millis(200), 0);
        let later = e.cost_us(20_000, TAU);
        assert!((later - 200_000.0 * (-2.0f32).exp()).abs() < 1.0, "{later}");
    }

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let start = now_ms();
        let e = PeakEwma::new(Duration::from_millis(50), start);
        e.observe(Duration::from_millis(200), now_ms(), TAU);
        tokio::time::advance(Duration::from_secs(10)).await;
        let decayed = e.cost_us(now_ms(), TAU);
        assert!((decayed - 200_000.0 * (-1.0f32).exp()).abs() < 100.0, "{decayed}");
        e.observe(Duration::from_millis(1), now_ms(), TAU);
        let w = (-1.0f32).exp();
        assert!((e.cost_us(now_ms(), TAU) - (200_000.0 * w + 1_000.0 * (1.0 - w))).abs() < 100.0);
    }
}
