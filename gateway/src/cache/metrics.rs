//! The cache's metric families, read at scrape time from the in-process cache and the
//! Redis level's counters.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use prometheus::proto::MetricType;

use crate::metrics::family::{ScrapeCollector, Spec};
use crate::state::GatewayState;

static SPECS: [Spec; 7] = [
    Spec {
        name: "edgegate_cache_entries",
        help: "Responses in the in-process cache",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Spec {
        name: "edgegate_cache_bytes",
        help: "Bytes the cached responses weigh against the budget",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Spec {
        name: "edgegate_cache_evictions_total",
        help: "Entries evicted to stay within the memory budget",
        kind: MetricType::COUNTER,
        labels: &[],
    },
    Spec {
        name: "edgegate_cache_l2_hits_total",
        help: "Answers found in Redis after an in-process miss",
        kind: MetricType::COUNTER,
        labels: &[],
    },
    Spec {
        name: "edgegate_cache_l2_errors_total",
        help: "Redis commands that failed or timed out",
        kind: MetricType::COUNTER,
        labels: &[],
    },
    Spec {
        name: "edgegate_cache_l2_breaker_open",
        help: "1 while Redis is being skipped after failures",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Spec {
        name: "edgegate_cache_l2_lookup_seconds",
        help: "Time spent on Redis lookups",
        kind: MetricType::HISTOGRAM,
        labels: &[],
    },
];

pub fn collector(state: Weak<GatewayState>) -> ScrapeCollector {
    ScrapeCollector::new(&SPECS, move || {
        let Some(state) = state.upgrade() else { return Vec::new() };
        let cache = &state.cache.responses;
        let mut out = Vec::with_capacity(SPECS.len());
        for (spec, value) in
            SPECS[..3].iter().zip([cache.entry_count() as f64, cache.weighted_size() as f64, cache.evictions() as f64])
        {
            let mut family = spec.family();
            family.push(&[], value);
            out.push(family.finish());
        }
        // The Redis families exist only when Redis is configured.
        if let Some(l2) = &state.cache.l2 {
            for (spec, value) in SPECS[3..6].iter().zip([
                l2.hits.load(Ordering::Relaxed) as f64,
                l2.errors.load(Ordering::Relaxed) as f64,
                f64::from(u8::from(l2.is_open())),
            ]) {
                let mut family = spec.family();
                family.push(&[], value);
                out.push(family.finish());
            }
            let mut lookup = SPECS[6].family();
            lookup.push_histogram(&[], &l2.lookup);
            out.push(lookup.finish());
        }
        out
    })
}
