//! Retry budget: retries may add at most `ratio` of the group's requests over a sliding
//! window (deposits fade with a 10 s time constant), plus a small floor per second so a
//! quiet group can still retry. Retries can therefore never multiply an outage.
//! Lock-free: the token balance shares one `AtomicU64` with its timestamp, like the
//! peak-EWMA estimate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a deposit counts, as a decay time constant.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct RetryBudget {
    /// Token balance (f32) and the ms stamp of its last change (u32).
    tokens: AtomicU64,
    /// Second number (u32) and retries taken from that second's floor (u32).
    floor: AtomicU64,
}

fn pack(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

fn decayed(tokens: f32, stamp: u32, now_ms: u64) -> f32 {
    let elapsed = (now_ms as u32).wrapping_sub(stamp) as f32;
    tokens * (-elapsed / WINDOW.as_millis() as f32).exp()
}

impl RetryBudget {
    pub fn new() -> RetryBudget {
        RetryBudget { tokens: AtomicU64::new(pack(0f32.to_bits(), 0)), floor: AtomicU64::new(0) }
    }

    /// Every original request deposits `ratio` of a retry.
    pub fn deposit(&self, ratio: f64, now_ms: u64) {
        self.update(now_ms, |t| Some(t + ratio as f32));
    }

    /// Takes one retry if the floor for this second or the balance allows it.
    pub fn try_withdraw(&self, min_per_second: u32, now_ms: u64) -> bool {
        let second = (now_ms / 1000) as u32;
        let mut current = self.floor.load(Ordering::Relaxed);
        loop {
            let (sec, used) = unpack(current);
            let used = if sec == second { used } else { 0 };
            if used >= min_per_second {
                break;
            }
            match self.floor.compare_exchange_weak(
                current,
                pack(second, used + 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
        self.update(now_ms, |t| (t >= 1.0).then_some(t - 1.0))
    }

    /// The current balance, for metrics.
    pub fn balance(&self, now_ms: u64) -> f32 {
        let (bits, stamp) = unpack(self.tokens.load(Ordering::Relaxed));
        decayed(f32::from_bits(bits), stamp, now_ms)
    }

    fn update(&self, now_ms: u64, change: impl Fn(f32) -> Option<f32>) -> bool {
        let mut current = self.tokens.load(Ordering::Relaxed);
        loop {
            let (bits, stamp) = unpack(current);
            let Some(next) = change(decayed(f32::from_bits(bits), stamp, now_ms)) else { return false };
            match self.tokens.compare_exchange_weak(
                current,
                pack(next.to_bits(), now_ms as u32),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_ratio_of_requests() {
        let b = RetryBudget::new();
        // 100 requests at 20 % fund 20 retries; with no per-second floor, the 21st is refused.
        for _ in 0..100 {
            b.deposit(0.2, 1_000);
        }
        let granted = (0..50).filter(|_| b.try_withdraw(0, 1_000)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_floor_allows_a_few_retries_per_second_without_traffic() {
        let b = RetryBudget::new();
        assert_eq!((0..10).filter(|_| b.try_withdraw(3, 5_000)).count(), 3);
        assert_eq!((0..10).filter(|_| b.try_withdraw(3, 5_999)).count(), 0, "same second");
        assert_eq!((0..10).filter(|_| b.try_withdraw(3, 6_000)).count(), 3, "next second");
    }

    #[test]
    fn deposits_fade_over_the_window() {
        let b = RetryBudget::new();
        for _ in 0..100 {
            b.deposit(0.2, 0);
        }
        let later = b.balance(WINDOW.as_millis() as u64);
        assert!((later - 20.0 * (-1.0f32).exp()).abs() < 0.01, "{later}");
    }
}
