//! The balancer's metric families, read from the endpoint and group atomics the request
//! path already keeps when Prometheus scrapes (recording costs nothing beyond them).
//! Labels: `upstream` (group name), `endpoint` (address), `locality`, `result` — never
//! anything per request. Endpoints a reload removed disappear with the snapshot.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use edgegate_config::Locality;
use prometheus::proto::{MetricFamily, MetricType};

use super::endpoint::{EndpointState, UpstreamResult};
use super::Pool;
use crate::metrics::family::{ScrapeCollector, Spec};
use crate::state::GatewayState;

const ENDPOINT: &[&str] = &["upstream", "endpoint", "locality"];

static SPECS: [Spec; 11] = [
    Spec {
        name: "edgegate_endpoint_cost_seconds",
        help: "Peak-EWMA latency estimate of the endpoint",
        kind: MetricType::GAUGE,
        labels: ENDPOINT,
    },
    Spec {
        name: "edgegate_endpoint_inflight",
        help: "Requests in flight to the endpoint",
        kind: MetricType::GAUGE,
        labels: ENDPOINT,
    },
    Spec {
        name: "edgegate_endpoint_healthy",
        help: "1 when the endpoint is eligible for new requests",
        kind: MetricType::GAUGE,
        labels: ENDPOINT,
    },
    Spec {
        name: "edgegate_endpoint_ejected",
        help: "1 while outlier detection has the endpoint ejected",
        kind: MetricType::GAUGE,
        labels: ENDPOINT,
    },
    Spec {
        name: "edgegate_endpoint_active_down",
        help: "1 while active health checks fail",
        kind: MetricType::GAUGE,
        labels: ENDPOINT,
    },
    Spec {
        name: "edgegate_endpoint_ejections_total",
        help: "Times the endpoint was ejected",
        kind: MetricType::COUNTER,
        labels: ENDPOINT,
    },
    Spec {
        name: "edgegate_upstream_requests_total",
        help: "Attempts sent to the endpoint, by result: response (a status below 500), 5xx, connect_error, timeout, error",
        kind: MetricType::COUNTER,
        labels: &["upstream", "endpoint", "locality", "result"],
    },
    Spec {
        name: "edgegate_upstream_duration_seconds",
        help: "Time from an attempt's start to the endpoint's response head",
        kind: MetricType::HISTOGRAM,
        labels: ENDPOINT,
    },
    Spec {
        name: "edgegate_upstream_retries_total",
        help: "Retries sent to the group",
        kind: MetricType::COUNTER,
        labels: &["upstream"],
    },
    Spec {
        name: "edgegate_upstream_retries_denied_total",
        help: "Retries refused by the retry budget",
        kind: MetricType::COUNTER,
        labels: &["upstream"],
    },
    Spec {
        name: "edgegate_upstream_retry_budget",
        help: "Retry tokens available",
        kind: MetricType::GAUGE,
        labels: &["upstream"],
    },
];

/// The collector, reading the serving snapshot's pools at each scrape.
pub fn collector(state: Weak<GatewayState>) -> ScrapeCollector {
    ScrapeCollector::new(&SPECS, move || match state.upgrade() {
        Some(state) => collect(&state.snapshot.load().pools, super::clock::now_ms()),
        None => Vec::new(),
    })
}

fn collect(pools: &[std::sync::Arc<Pool>], now: u64) -> Vec<MetricFamily> {
    type PerEndpoint = fn(&Pool, &EndpointState, u64) -> f64;
    let gauges: [PerEndpoint; 6] = [
        |p, e, now| f64::from(e.ewma.cost_us(now, p.config.balancer.decay)) / 1e6,
        |_, e, _| f64::from(e.in_flight()),
        |_, e, now| f64::from(u8::from(e.is_healthy(now))),
        |_, e, now| f64::from(u8::from(e.is_ejected(now))),
        |_, e, _| f64::from(u8::from(e.is_active_down())),
        |_, e, _| e.ejections_total() as f64,
    ];
    // Every endpoint with its address formatted once per scrape, not once per family.
    let endpoints: Vec<(&Pool, &EndpointState, String, &str)> = pools
        .iter()
        .flat_map(|pool| {
            pool.endpoints.iter().zip(&pool.config.endpoints).map(move |(ep, cfg)| {
                let locality = match cfg.locality {
                    Locality::Local => "local",
                    Locality::Remote => "remote",
                };
                (&**pool, &**ep, ep.address.to_string(), locality)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(SPECS.len());
    for (spec, value) in SPECS.iter().zip(gauges) {
        let mut family = spec.family();
        for (pool, ep, address, locality) in &endpoints {
            family.push(&[pool.name(), address, locality], value(pool, ep, now));
        }
        out.push(family.finish());
    }
    let mut requests = SPECS[6].family();
    let mut duration = SPECS[7].family();
    for (pool, ep, address, locality) in &endpoints {
        for result in UpstreamResult::ALL {
            requests.push(&[pool.name(), address, locality, result.label()], ep.stats.count(result) as f64);
        }
        duration.push_histogram(&[pool.name(), address, locality], &ep.stats.duration);
    }
    out.push(requests.finish());
    out.push(duration.finish());
    type PerGroup = fn(&Pool, u64) -> f64;
    let groups: [PerGroup; 3] = [
        |p, _| p.group.retries.load(Ordering::Relaxed) as f64,
        |p, _| p.group.retries_denied.load(Ordering::Relaxed) as f64,
        |p, now| f64::from(p.group.budget.balance(now)),
    ];
    for (spec, value) in SPECS[8..].iter().zip(groups) {
        let mut family = spec.family();
        for pool in pools {
            family.push(&[pool.name()], value(pool, now));
        }
        out.push(family.finish());
    }
    out
}
