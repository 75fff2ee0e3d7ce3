use std::time::Duration;

use edgegate_config::{Balancer, Endpoint, Outlier, RetryPolicy, Weight};

use super::*;

fn group(policy: Policy, eps: &[(&str, Locality, u32)]) -> UpstreamGroup {
    UpstreamGroup {
        name: "g".into(),
        endpoints: eps
            .iter()
            .map(|(a, l, w)| Endpoint {
                address: a.parse().expect("addr"),
                locality: *l,
                weight: Weight::new(*w).expect("w"),
            })
            .collect(),
        discovery: None,
        balancer: Balancer { policy, ..Balancer::default() },
        health: None,
        outlier: Outlier {
            consecutive_failures: 2,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 50,
        },
        retry: RetryPolicy::default(),
        tls: None,
    }
}

fn four_local() -> Pool {
    Pool::new(
        &group(
            Policy::PeakEwma,
            &[
                ("10.0.0.1:80", Locality::Local, 1),
                ("10.0.0.2:80", Locality::Local, 1),
                ("10.0.0.3:80", Locality::Local, 1),
                ("10.0.0.4:80", Locality::Local, 1),
            ],
        ),
        None,
        0,
    )
}

fn share(pool: &Pool, n: usize, now: u64) -> Vec<usize> {
    let mut counts = vec![0; pool.endpoints.len()];
    for _ in 0..n {
        counts[pool.pick(now, Tried::default()).expect("a pick")] += 1;
    }
    counts
}

#[test]
fn p2c_avoids_the_slow_endpoint() {
    let pool = four_local();
    for (i, ep) in pool.endpoints.iter().enumerate() {
        let rtt = if i == 3 { Duration::from_millis(200) } else { Duration::from_millis(2) };
        ep.ewma.observe(rtt, 1, Duration::from_secs(10));
    }
    let counts = share(&pool, 10_000, 1);
    // P2C over loads: the slowest of four wins only when paired with itself, never.
    assert_eq!(counts[3], 0, "{counts:?}");
    assert!(counts[..3].iter().all(|&c| c > 2_500), "the fast three share the load: {counts:?}");
}

#[test]
fn p2c_shares_between_endpoints_whose_estimates_differ_by_a_hair() {
    // All four start at default_rtt and decay together; one came back (a restarted pod)
    // with its estimate 1 % above the others'. Nothing is in flight (a light load).
    let pool = four_local();
    let initial = pool.endpoints[0].ewma.cost_us(1, Duration::from_secs(10));
    pool.endpoints[3].ewma.observe(Duration::from_micros((initial * 1.01) as u64), 1, Duration::from_secs(10));
    let counts = share(&pool, 10_000, 1);
    // A strict comparison gave it nothing (it lost every pair it was in); a tie shares.
    assert!(counts.iter().all(|&c| c > 1_800), "{counts:?}");
    // A real difference still decides: twice as slow and it is never picked.
    pool.endpoints[3].ewma.observe(Duration::from_micros((initial * 2.0) as u64), 1, Duration::from_secs(10));
    assert_eq!(share(&pool, 10_000, 1)[3], 0);
}

/// A serving group whose endpoints answer in 200 µs, rebuilt with a fifth endpoint (and,
/// for the remote test, a remote pair) added at `now`.
fn warm_then_grown(now: u64, extra: &[(&str, Locality, u32)]) -> (Pool, Pool) {
    let tau = Duration::from_secs(10);
    let old = four_local();
    for t in (100..=now).step_by(100) {
        for ep in &old.endpoints {
            ep.ewma.observe(Duration::from_micros(200), t, tau);
        }
    }
    let mut grown = old.config.clone();
    let more = group(Policy::PeakEwma, extra);
    grown.endpoints.extend(more.endpoints);
    let new = Pool::new(&grown, Some(&old), now);
    (old, new)
}

#[test]
fn an_endpoint_added_to_a_serving_group_gets_its_share_at_once() {
    let now = 120_000;
    let (_, pool) = warm_then_grown(now, &[("10.0.0.5:80", Locality::Local, 1)]);
    // Started at default_rtt (30 ms) beside peers at 0.2 ms, the newcomer lost every pair
    // it was in for ~40 s; from its peers' estimate it takes its fifth of the picks.
    let counts = share(&pool, 10_000, now);
    assert!(counts.iter().all(|&c| c > 1_500), "{counts:?}");
    let seeded = pool.endpoints[4].ewma.cost_us(now, Duration::from_secs(10));
    assert!((150.0..=250.0).contains(&seeded), "{seeded} µs");
    // A cold newcomer is not flooded: with requests in flight and no answer yet, it loses
    // to idle peers of the same estimate.
    let held: Vec<_> = (0..3).map(|_| endpoint::Attempt::start(Arc::clone(&pool.endpoints[4]), 4)).collect();
    assert_eq!(share(&pool, 2_000, now)[4], 0);
    drop(held);
    // Its first slow answer prices it at once.
    pool.endpoints[4].ewma.observe(Duration::from_millis(50), now, Duration::from_secs(10));
    assert_eq!(share(&pool, 2_000, now)[4], 0);
}

#[test]
fn a_newcomer_is_priced_by_peers_of_its_own_locality_and_healthy_ones_only() {
    let now = 120_000;
    let tau = Duration::from_secs(10);
    let (old, _) = warm_then_grown(now, &[]);
    // Three of the four local peers are slow and out of rotation — two ejected, one failing
    // its active checks: the newcomer takes the one healthy peer's estimate, not the slow
    // majority's median.
    for i in [0, 1, 2] {
        old.endpoints[i].ewma.observe(Duration::from_millis(80), now, tau);
    }
    for i in [0, 1] {
        old.record_failure(i, now);
        old.record_failure(i, now);
    }
    assert_eq!(old.endpoints[2].record_check(false, 1, 1), Some(true));
    assert!((0..3).all(|i| !old.endpoints[i].is_healthy(now)));
    let mut grown = old.config.clone();
    grown.endpoints.extend(
        group(Policy::PeakEwma, &[("10.0.0.5:80", Locality::Local, 1), ("10.1.0.1:80", Locality::Remote, 1)]).endpoints,
    );
    let pool = Pool::new(&grown, Some(&old), now);
    let local = pool.endpoints[4].ewma.cost_us(now, tau);
    assert!((150.0..=250.0).contains(&local), "{local} µs");
    // No remote peer to go by: a remote newcomer starts at default_rtt.
    let remote = pool.endpoints[5].ewma.cost_us(now, tau);
    assert!((remote - 30_000.0).abs() < 1.0, "{remote} µs");
    // A brand-new group has no peers at all.
    let fresh = Pool::new(&grown, None, now);
    assert!(fresh.endpoints.iter().all(|e| (e.ewma.cost_us(now, tau) - 30_000.0).abs() < 1.0));
}

#[test]
fn p2c_never_picks_an_ejected_endpoint() {
    let pool = four_local();
    // The others are slow, so endpoint 0 is the cheapest by far; once ejected it must
    // not be chosen however cheap it looks.
    for ep in &pool.endpoints[1..] {
        ep.ewma.observe(Duration::from_millis(200), 1, Duration::from_secs(10));
    }
    pool.record_failure(0, 1);
    pool.record_failure(0, 1);
    assert!(pool.endpoints[0].is_ejected(1));
    let counts = share(&pool, 5_000, 2);
    assert_eq!(counts[0], 0, "{counts:?}");
    // After the ejection time it is back, and wins every pair it is in (half the picks).
    let later = share(&pool, 5_000, 10_001);
    assert!(later[0] > 2_000, "{later:?}");
}

#[test]
fn in_flight_requests_raise_the_load() {
    let pool = four_local();
    let _busy: Vec<_> = (0..50).map(|_| endpoint::Attempt::start(Arc::clone(&pool.endpoints[1]), 1)).collect();
    let counts = share(&pool, 5_000, 1);
    assert_eq!(counts[1], 0, "{counts:?}");
}

#[test]
fn ejection_is_capped_by_max_ejection_percent() {
    let pool = four_local();
    for i in 0..4 {
        pool.record_failure(i, 1);
        pool.record_failure(i, 1);
    }
    let ejected = pool.endpoints.iter().filter(|e| e.is_ejected(1)).count();
    assert_eq!(ejected, 2, "50 % of four");
}

#[test]
fn locality_falls_back_to_remote_and_returns() {
    let pool = Pool::new(
        &group(
            Policy::PeakEwma,
            &[
                ("10.0.0.1:80", Locality::Local, 1),
                ("10.0.0.2:80", Locality::Local, 1),
                ("10.9.0.1:80", Locality::Remote, 1),
                ("10.9.0.2:80", Locality::Remote, 1),
            ],
        ),
        None,
        0,
    );
    let counts = share(&pool, 2_000, 1);
    assert_eq!(counts[2] + counts[3], 0, "local first: {counts:?}");

    // Both local pods fail active checks: remote takes over.
    for i in 0..2 {
        for _ in 0..3 {
            pool.endpoints[i].record_check(false, 1, 3);
        }
    }
    let counts = share(&pool, 2_000, 1);
    assert_eq!(counts[0] + counts[1], 0, "{counts:?}");
    assert!(counts[2] > 0 && counts[3] > 0);

    // One recovers: traffic returns home.
    pool.endpoints[0].record_check(true, 1, 3);
    let counts = share(&pool, 2_000, 1);
    assert_eq!(counts, vec![2_000, 0, 0, 0]);
}

#[test]
fn overloaded_locals_spill_to_remote() {
    let pool = Pool::new(
        &group(Policy::PeakEwma, &[("10.0.0.1:80", Locality::Local, 1), ("10.9.0.1:80", Locality::Remote, 1)]),
        None,
        0,
    );
    let tau = Duration::from_secs(10);
    pool.endpoints[0].ewma.observe(Duration::from_millis(10), 1, tau);
    pool.endpoints[1].ewma.observe(Duration::from_millis(20), 1, tau);
    assert_eq!(pool.pick(1, Tried::default()), Some(0), "10 ms ≤ 3 × 20 ms");
    let _busy: Vec<_> = (0..10).map(|_| endpoint::Attempt::start(Arc::clone(&pool.endpoints[0]), 0)).collect();
    assert_eq!(pool.pick(1, Tried::default()), Some(1), "10 ms × 11 in flight > 3 × 20 ms");
}

#[test]
fn retries_go_to_a_different_endpoint() {
    let pool = four_local();
    let mut tried = Tried::default();
    for _ in 0..4 {
        let i = pool.pick(1, tried).expect("pick");
        assert!(!tried.contains(i), "picked {i} twice");
        tried.add(i);
    }
    // All tried: still answers rather than failing the request.
    assert!(pool.pick(1, tried).is_some());
}

#[test]
fn every_endpoint_unhealthy_still_picks_one() {
    let pool = four_local();
    for ep in &pool.endpoints {
        for _ in 0..3 {
            ep.record_check(false, 1, 3);
        }
    }
    assert!(pool.pick(1, Tried::default()).is_some());
}

#[test]
fn round_robin_prefers_local_weights_smoothly_and_skips_unhealthy() {
    let pool = Pool::new(
        &group(
            Policy::RoundRobin,
            &[
                ("10.0.0.1:80", Locality::Local, 5),
                ("10.0.0.2:80", Locality::Local, 1),
                ("10.0.0.3:80", Locality::Local, 1),
                ("10.9.0.1:80", Locality::Remote, 1),
            ],
        ),
        None,
        0,
    );
    let picks: String =
        (0..7).filter_map(|_| pool.pick(1, Tried::default())).map(|i| char::from(b'a' + i as u8)).collect();
    assert_eq!(picks, "aabacaa");
    for _ in 0..3 {
        pool.endpoints[0].record_check(false, 1, 3);
    }
    let picks: String =
        (0..4).filter_map(|_| pool.pick(1, Tried::default())).map(|i| char::from(b'a' + i as u8)).collect();
    assert!(!picks.contains('a') && !picks.contains('d'), "{picks}");
}

#[test]
fn endpoint_state_survives_a_rebuild_when_its_address_stays() {
    let g = group(Policy::PeakEwma, &[("10.0.0.1:80", Locality::Local, 1), ("10.0.0.2:80", Locality::Local, 1)]);
    let old = Pool::new(&g, None, 0);
    old.endpoints[1].ewma.observe(Duration::from_millis(150), 1, Duration::from_secs(10));
    old.group.retries.fetch_add(3, Ordering::Relaxed);
    let mut changed = g.clone();
    changed.endpoints.remove(0);
    changed.endpoints.push(Endpoint {
        address: "10.0.0.3:80".parse().expect("addr"),
        locality: Locality::Local,
        weight: Weight::DEFAULT,
    });
    let new = Pool::new(&changed, Some(&old), 5);
    assert!(Arc::ptr_eq(&new.endpoints[0], &old.endpoints[1]), "10.0.0.2 keeps its statistics");
    assert!(new.endpoints[0].ewma.cost_us(1, Duration::from_secs(10)) > 100_000.0);
    assert!(!Arc::ptr_eq(&new.endpoints[1], &old.endpoints[0]));
    assert_eq!(new.group.retries.load(Ordering::Relaxed), 3);
}

/// Closed-loop saturation: the three fast pods each hold five requests and their estimates
/// have spiked (a CPU stall to 40 ms); the slow pod (200 ms) has been idle for 5 s and its
/// estimate has decayed to ~121 ms. By load alone (40 × 6 = 240 > 121) the slow pod would
/// win every pairing it is in — half of all picks. It must get at most 0.5 %.
#[test]
fn busy_fast_pods_do_not_make_a_much_slower_idle_pod_competitive() {
    let pool = four_local();
    let tau = Duration::from_secs(10);
    pool.endpoints[3].ewma.observe(Duration::from_millis(200), 1, tau);
    let now = 5_001;
    let mut held = Vec::new();
    for (i, ep) in pool.endpoints.iter().enumerate().take(3) {
        ep.ewma.observe(Duration::from_millis(10), now - 1, tau);
        ep.ewma.observe(Duration::from_millis(40), now, tau);
        for _ in 0..5 {
            held.push(crate::balancer::endpoint::Attempt::start(Arc::clone(ep), i));
        }
    }
    let slow = pool.endpoints[3].ewma.cost_us(now, tau);
    assert!((110_000.0..130_000.0).contains(&slow), "decayed estimate {slow}");
    let counts = share(&pool, 100_000, now);
    assert!(counts[3] <= 500, "the slow pod got {} of 100,000: {counts:?}", counts[3]);

    // When the fast pods really slow down (150 ms, i.e. within 2× of the slow one),
    // load decides again and the idle pod takes a share.
    for ep in &pool.endpoints[..3] {
        ep.ewma.observe(Duration::from_millis(150), now, tau);
    }
    let counts = share(&pool, 10_000, now);
    assert!(counts[3] > 1_000, "a comparable idle pod is used: {counts:?}");
    drop(held);

    // And a slow pod whose estimate has decayed to near the others' is probed again.
    let pool = four_local();
    for ep in &pool.endpoints[..3] {
        ep.ewma.observe(Duration::from_millis(10), 1, tau);
    }
    pool.endpoints[3].ewma.observe(Duration::from_millis(200), 1, tau);
    let later = 1 + 30_000; // 200 ms × e^-3 ≈ 10 ms
    for ep in &pool.endpoints[..3] {
        ep.ewma.observe(Duration::from_millis(10), later, tau);
    }
    let counts = share(&pool, 10_000, later);
    assert!(counts[3] > 0, "probed again once its estimate decayed: {counts:?}");
}
