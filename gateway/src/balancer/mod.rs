//! Upstream selection (request path step 7, "upstream select"): local endpoints first,
//! the fastest of them by power-of-two-choices over peak-EWMA load, remote endpoints
//! only when no local one is healthy or every local one is `remote_factor` times more
//! loaded than the best remote. Round robin stays available as a baseline. Passive
//! outlier ejection and active health checks decide which endpoints are eligible.
//!
//! Nothing here locks: endpoint state is atomics (`endpoint`), the pick reads them.

pub mod budget;
pub mod clock;
pub mod endpoint;
pub mod ewma;
pub mod metrics;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgegate_config::{Locality, Policy, UpstreamGroup};

use self::budget::RetryBudget;
use self::endpoint::EndpointState;

/// State of an upstream group that outlives config changes to the group: its retry
/// budget and counters.
#[derive(Debug, Default)]
pub struct GroupState {
    pub budget: RetryBudget,
    pub retries: AtomicU64,
    pub retries_denied: AtomicU64,
}

/// How many times slower than the other a P2C candidate must be for its lower in-flight
/// count not to matter (see [`Pool::better`]).
const SPEED_GAP: f32 = 2.0;

/// Loads within this factor of each other are a tie, which goes to the first of the two
/// random draws — a coin toss (see [`Pool::better`]).
const TIE: f32 = 1.05;

/// One upstream group, ready to pick from.
#[derive(Debug)]
pub struct Pool {
    pub config: UpstreamGroup,
    pub endpoints: Vec<Arc<EndpointState>>,
    pub group: Arc<GroupState>,
    local: Vec<u16>,
    remote: Vec<u16>,
    /// Smooth weighted round-robin orders of the local and remote endpoints.
    rr_local: Vec<u16>,
    rr_remote: Vec<u16>,
    next: AtomicUsize,
}

/// Endpoints already tried by this request, by index (endpoints beyond 64 are never
/// excluded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }
}

impl Pool {
    /// Builds a pool, keeping the state of endpoints (by address) and of the group from
    /// `previous`, the same group in the snapshot being replaced. An endpoint new to the
    /// group starts from its peers' estimate ([`newcomer_rtt`]).
    pub fn new(group: &UpstreamGroup, previous: Option<&Pool>, now_ms: u64) -> Pool {
        let mut seeds: [Option<Duration>; 2] = [None; 2];
        let endpoints = group
            .endpoints
            .iter()
            .map(|e| {
                previous
                    .and_then(|p| p.endpoints.iter().find(|old| old.address == e.address))
                    .map(Arc::clone)
                    .unwrap_or_else(|| {
                        let seed = seeds[usize::from(e.locality == Locality::Remote)]
                            .get_or_insert_with(|| newcomer_rtt(group, previous, e.locality, now_ms));
                        Arc::new(EndpointState::new(e.address, *seed, now_ms))
                    })
            })
            .collect();
        let of = |loc: Locality| -> Vec<u16> {
            (0..group.endpoints.len()).filter(|&i| group.endpoints[i].locality == loc).map(|i| i as u16).collect()
        };
        let (local, remote) = (of(Locality::Local), of(Locality::Remote));
        let order = |set: &[u16]| {
            smooth_weighted_order(
                &set.iter().map(|&i| (i, group.endpoints[usize::from(i)].weight.get())).collect::<Vec<_>>(),
            )
        };
        Pool {
            rr_local: order(&local),
            rr_remote: order(&remote),
            local,
            remote,
            endpoints,
            group: previous.map(|p| Arc::clone(&p.group)).unwrap_or_default(),
            config: group.clone(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Picks an endpoint for a request, avoiding the ones in `tried` when another
    /// exists. When no endpoint is healthy, health is ignored rather than failing every
    /// request (Envoy's "panic mode"): a wrong ejection must not take a service down.
    pub fn pick(&self, now_ms: u64, tried: Tried) -> Option<usize> {
        let healthy_untried = |i: usize| !tried.contains(i) && self.endpoints[i].is_healthy(now_ms);
        let picked = match self.config.balancer.policy {
            Policy::PeakEwma => self.pick_ewma(now_ms, &healthy_untried),
            Policy::RoundRobin => self
                .pick_rr(&self.rr_local, &healthy_untried)
                .or_else(|| self.pick_rr(&self.rr_remote, &healthy_untried)),
        };
        picked
            .or_else(|| {
                self.p2c(&self.local, now_ms, &|i| !tried.contains(i))
                    .or_else(|| self.p2c(&self.remote, now_ms, &|i| !tried.contains(i)))
            })
            .or_else(|| self.p2c(&self.local, now_ms, &|_| true).or_else(|| self.p2c(&self.remote, now_ms, &|_| true)))
    }

    fn pick_ewma(&self, now_ms: u64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let tau = self.config.balancer.decay;
        let local = self.p2c(&self.local, now_ms, eligible);
        if self.remote.is_empty() {
            return local;
        }
        let Some(local) = local else { return self.p2c(&self.remote, now_ms, eligible) };
        let Some(remote) = self.p2c(&self.remote, now_ms, eligible) else { return Some(local) };
        let limit = self.endpoints[remote].load(now_ms, tau) * self.config.balancer.remote_factor as f32;
        if self.endpoints[local].load(now_ms, tau) <= limit {
            return Some(local);
        }
        // The chosen local one is overloaded; go remote only if every local one is.
        let every_local_over = self
            .local
            .iter()
            .map(|&i| usize::from(i))
            .filter(|&i| eligible(i))
            .all(|i| self.endpoints[i].load(now_ms, tau) > limit);
        Some(if every_local_over { remote } else { local })
    }

    /// Power of two choices: two distinct random eligible endpoints of `set`, the less
    /// loaded wins. Usually every endpoint is eligible, so two random draws (a few
    /// retries when they land on ineligible ones) settle it in constant time; otherwise
    /// count the eligible ones and pick among them, still without allocating.
    fn p2c(&self, set: &[u16], now_ms: u64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        const DRAWS: usize = 4;
        if set.len() >= 2 {
            let draw = |skip: Option<usize>| {
                (0..DRAWS)
                    .map(|_| usize::from(set[fastrand::usize(..set.len())]))
                    .find(|&i| Some(i) != skip && eligible(i))
            };
            if let Some(a) = draw(None) {
                if let Some(b) = draw(Some(a)) {
                    return Some(self.better(a, b, now_ms));
                }
            }
        }
        let n = set.iter().filter(|&&i| eligible(usize::from(i))).count();
        let nth = |k: usize| set.iter().map(|&i| usize::from(i)).filter(|&i| eligible(i)).nth(k);
        match n {
            0 => None,
            1 => nth(0),
            _ => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth(a)?, nth(b)?);
                Some(self.better(a, b, now_ms))
            }
        }
    }

    /// The better of two candidates. Between endpoints of comparable speed, the less loaded
    /// (latency estimate × (in flight + 1)). Between one at least [`SPEED_GAP`] times slower
    /// than the other, the faster, whatever its queue: its estimate already includes the
    /// queueing, and counting the queue again would make a pod 40× slower look competitive
    /// whenever the fast ones are busy (closed-loop saturation). Once the fast ones really
    /// slow down — or an idle slow one's estimate has decayed close to theirs — loads
    /// decide again, so a recovered pod is still probed. Loads within [`TIE`] of each other
    /// are a tie, decided by the draw: the estimates of endpoints that started together
    /// decay together from `default_rtt` for tens of seconds (a new observation weighs by
    /// the time since the last one), a hair apart, and a strict comparison handed every
    /// pick to the one a hair cheaper — a restarted pod whose estimate came back 1 % higher
    /// than the others' got almost nothing (the `pod-failure` scenario).
    fn better(&self, a: usize, b: usize, now_ms: u64) -> usize {
        let tau = self.config.balancer.decay;
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        let (ca, cb) = (ea.ewma.cost_us(now_ms, tau), eb.ewma.cost_us(now_ms, tau));
        if ca * SPEED_GAP < cb {
            return a;
        }
        if cb * SPEED_GAP < ca {
            return b;
        }
        let (la, lb) = (ca * (ea.in_flight() + 1) as f32, cb * (eb.in_flight() + 1) as f32);
        if la <= lb * TIE {
            a
        } else {
            b
        }
    }

    fn pick_rr(&self, order: &[u16], eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        if order.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..order.len()).map(|k| usize::from(order[(start + k) % order.len()])).find(|&i| eligible(i))
    }

    /// Records a connect failure or 5xx at endpoint `index`, ejecting it after the
    /// configured streak unless that would eject more than `max_ejection_percent` of
    /// the group (one endpoint may always be ejected).
    pub fn record_failure(&self, index: usize, now_ms: u64) {
        let Some(ep) = self.endpoints.get(index) else { return };
        let o = &self.config.outlier;
        if ep.record_failure() < o.consecutive_failures || ep.is_ejected(now_ms) {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now_ms)).count();
        let allowed = (self.endpoints.len() * o.max_ejection_percent as usize / 100).max(1);
        if ejected >= allowed {
            return;
        }
        let span = ep.eject(now_ms, o.base_ejection_time, o.max_ejection_time);
        tracing::warn!(upstream = %self.name(), endpoint = %ep.address, ejected_for_ms = span.as_millis() as u64, "endpoint ejected after consecutive failures");
    }

    pub fn record_success(&self, index: usize) {
        if let Some(ep) = self.endpoints.get(index) {
            ep.record_success();
        }
    }
}

/// The latency estimate an endpoint new to the group starts from: the median of the
/// current estimates of its healthy peers of the same locality in the pool being replaced,
/// or `default_rtt` when there are none (a new group, or none of them healthy). A pod added
/// to a serving group (scale-up, a rescheduled pod at a new address) is taken to be like its
/// siblings and gets its share at once; starting it at `default_rtt` (30 ms) beside peers
/// answering in 0.2 ms made it [`SPEED_GAP`] times slower than any of them, and it was not
/// picked at all until that estimate had decayed to within `SPEED_GAP` of theirs — about 40 s at
/// `decay: 10s`. A newcomer that is in fact slow (a cold start) is not flooded meanwhile:
/// its requests in flight count against it in every pick, and its first slow answer raises
/// its estimate at once (peak EWMA).
fn newcomer_rtt(group: &UpstreamGroup, previous: Option<&Pool>, locality: Locality, now_ms: u64) -> Duration {
    let default = group.balancer.default_rtt;
    let Some(previous) = previous else { return default };
    let tau = group.balancer.decay;
    let mut costs: Vec<f32> = previous
        .config
        .endpoints
        .iter()
        .zip(&previous.endpoints)
        .filter(|(e, state)| e.locality == locality && state.is_healthy(now_ms))
        .map(|(_, state)| state.ewma.cost_us(now_ms, tau))
        .collect();
    if costs.is_empty() {
        return default;
    }
    costs.sort_unstable_by(f32::total_cmp);
    // The lower middle of an even count: of two peers, the faster one's estimate.
    Duration::from_micros(costs[(costs.len() - 1) / 2] as u64)
}

/// nginx's smooth weighted round robin, unrolled once over a full cycle: weights
/// 5,1,1 give a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.
fn smooth_weighted_order(weights: &[(u16, u16)]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|&(_, w)| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, &(_, w)) in weights.iter().enumerate() {
            current[k] += i64::from(w);
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        order.push(weights[best].0);
    }
    order
}

#[cfg(test)]
mod tests;
