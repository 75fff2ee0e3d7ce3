//! Upstream selection (request path step 7, "upstream select"): local endpoints first,
//! remote ones only when the group has no local endpoint, smooth weighted round robin
//! within the chosen locality. The latency-aware P2C balancer replaces the pick here;
//! the interface (`Pool::pick`) stays.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use edgegate_config::{Locality, UpstreamGroup};

/// One upstream group's endpoints, ready to pick from without locks.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    endpoints: Vec<SocketAddr>,
    /// Endpoint indices in weighted round-robin order, for the preferred locality.
    schedule: Vec<u16>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(group: &UpstreamGroup) -> Pool {
        let local: Vec<usize> =
            (0..group.endpoints.len()).filter(|&i| group.endpoints[i].locality == Locality::Local).collect();
        let preferred = if local.is_empty() { (0..group.endpoints.len()).collect() } else { local };
        let weights: Vec<(usize, i64)> =
            preferred.iter().map(|&i| (i, i64::from(group.endpoints[i].weight.get()))).collect();
        Pool {
            name: group.name.clone(),
            endpoints: group.endpoints.iter().map(|e| e.address).collect(),
            schedule: smooth_weighted_order(&weights),
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint. Validation guarantees at least one endpoint per group.
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let idx = self.schedule[n % self.schedule.len()];
        self.endpoints.get(usize::from(idx)).copied()
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }
}

/// nginx's smooth weighted round robin, unrolled once over a full cycle: weights
/// 5,1,1 give a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.
fn smooth_weighted_order(weights: &[(usize, i64)]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|(_, w)| w).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, (_, w)) in weights.iter().enumerate() {
            current[k] += w;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        order.push(weights[best].0 as u16);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgegate_config::{Endpoint, Weight};

    fn group(eps: &[(&str, Locality, u32)]) -> UpstreamGroup {
        UpstreamGroup {
            name: "g".into(),
            endpoints: eps
                .iter()
                .map(|(a, l, w)| Endpoint {
                    address: a.parse().expect("addr"),
                    locality: *l,
                    weight: Weight::new(*w).expect("weight"),
                })
                .collect(),
        }
    }

    #[test]
    fn prefers_local_endpoints() {
        let pool = Pool::new(&group(&[
            ("10.0.0.1:80", Locality::Remote, 1),
            ("10.0.0.2:80", Locality::Local, 1),
            ("10.0.0.3:80", Locality::Local, 1),
        ]));
        let picks: Vec<String> = (0..4).filter_map(|_| pool.pick()).map(|a| a.to_string()).collect();
        assert_eq!(picks, ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.2:80", "10.0.0.3:80"]);
    }

    #[test]
    fn remote_only_groups_still_serve() {
        let pool = Pool::new(&group(&[("10.0.0.1:80", Locality::Remote, 1)]));
        assert_eq!(pool.pick().map(|a| a.to_string()).as_deref(), Some("10.0.0.1:80"));
    }

    #[test]
    fn weights_are_smooth_and_proportional() {
        let pool = Pool::new(&group(&[
            ("10.0.0.1:80", Locality::Local, 5),
            ("10.0.0.2:80", Locality::Local, 1),
            ("10.0.0.3:80", Locality::Local, 1),
        ]));
        let picks: Vec<u8> = (0..7).filter_map(|_| pool.pick()).map(|a| a.ip().to_string().as_bytes()[7]).collect();
        assert_eq!(picks, b"1121311");
    }
}
