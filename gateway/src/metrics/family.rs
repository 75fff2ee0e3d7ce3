//! Families built at scrape time, for values that live in atomics of their owners
//! (endpoint state, certificate stores, the cache): each owner describes its families as
//! [`Spec`] constants and registers a [`ScrapeCollector`] that reads its atomics when
//! Prometheus scrapes. One registry renders everything; no module formats exposition text.
//! Series come and go with what they describe: an endpoint removed by a reload leaves no
//! series behind.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

/// One family: name, help, type and label names.
pub struct Spec {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
}

impl Spec {
    /// An empty family to [`Family::push`] samples into.
    pub fn family(&'static self) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(self.name.to_owned());
        mf.set_help(self.help.to_owned());
        mf.set_field_type(self.kind);
        Family { spec: self, mf }
    }

    fn desc(&self) -> Desc {
        Desc::new(
            self.name.to_owned(),
            self.help.to_owned(),
            self.labels.iter().map(|l| (*l).to_owned()).collect(),
            Default::default(),
        )
        .expect("static metric definition")
    }
}

pub struct Family {
    spec: &'static Spec,
    mf: MetricFamily,
}

impl Family {
    fn metric(&self, values: &[&str]) -> proto::Metric {
        debug_assert_eq!(values.len(), self.spec.labels.len(), "{}", self.spec.name);
        let labels = self
            .spec
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect();
        let mut m = proto::Metric::default();
        m.set_label(labels);
        m
    }

    /// A gauge or counter sample.
    pub fn push(&mut self, values: &[&str], value: f64) {
        let mut m = self.metric(values);
        match self.spec.kind {
            MetricType::COUNTER => {
                let mut c = proto::Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.mf.mut_metric().push(m);
    }

    /// A histogram sample from an [`AtomicHistogram`].
    pub fn push_histogram(&mut self, values: &[&str], h: &AtomicHistogram) {
        let mut m = self.metric(values);
        let mut out = proto::Histogram::default();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(h.bounds.len());
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        cumulative += h.counts[h.bounds.len()].load(Ordering::Relaxed);
        out.set_bucket(buckets);
        out.set_sample_count(cumulative);
        out.set_sample_sum(h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        m.set_histogram(out);
        self.mf.mut_metric().push(m);
    }

    pub fn finish(self) -> MetricFamily {
        self.mf
    }
}

/// A collector whose families are read when scraped.
pub struct ScrapeCollector {
    descs: Vec<Desc>,
    collect: Box<dyn Fn() -> Vec<MetricFamily> + Send + Sync>,
}

impl ScrapeCollector {
    pub fn new(
        specs: &'static [Spec],
        collect: impl Fn() -> Vec<MetricFamily> + Send + Sync + 'static,
    ) -> ScrapeCollector {
        ScrapeCollector { descs: specs.iter().map(Spec::desc).collect(), collect: Box::new(collect) }
    }

    /// A collector of label-less values, one per spec in order, read by `read` at scrape
    /// time (process-wide counts kept in atomics elsewhere).
    pub fn values<const N: usize>(
        specs: &'static [Spec; N],
        read: impl Fn() -> [f64; N] + Send + Sync + 'static,
    ) -> ScrapeCollector {
        ScrapeCollector::new(specs, move || {
            specs
                .iter()
                .zip(read())
                .map(|(spec, value)| {
                    let mut family = spec.family();
                    family.push(&[], value);
                    family.finish()
                })
                .collect()
        })
    }
}

impl Collector for ScrapeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        (self.collect)()
    }
}

/// Upper bounds (seconds) of the request and upstream duration histograms: fine from
/// 0.5 ms to 100 ms, where the 50 ms objective is, with tails to 30 s.
pub const BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Most upper bounds an [`AtomicHistogram`] takes.
const MAX_BOUNDS: usize = 15;

/// A histogram kept in atomics by its owner: one add to a bucket and one to the sum per
/// observation (Prometheus' own histogram does four, one a compare-and-swap loop on a
/// float). Buckets are made cumulative, and the count summed, when scraped.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    counts: [AtomicU64; MAX_BOUNDS + 1],
    sum_ns: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram::new(&BUCKETS)
    }
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (seconds, ascending, at most 15).
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        assert!(bounds.len() <= MAX_BOUNDS, "at most {MAX_BOUNDS} bounds");
        AtomicHistogram { bounds, counts: Default::default(), sum_ns: AtomicU64::new(0) }
    }

    pub fn observe(&self, elapsed: std::time::Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = self.bounds.iter().position(|b| secs <= *b).unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    static SPECS: [Spec; 2] = [
        Spec { name: "t_seconds", help: "h", kind: MetricType::HISTOGRAM, labels: &["a"] },
        Spec { name: "t_total", help: "h", kind: MetricType::COUNTER, labels: &["a", "b"] },
    ];

    #[test]
    fn scraped_families_render_as_prometheus_text() {
        let h = std::sync::Arc::new(AtomicHistogram::default());
        h.observe(Duration::from_micros(400));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let h2 = std::sync::Arc::clone(&h);
        let registry = prometheus::Registry::new();
        let c = ScrapeCollector::new(&SPECS, move || {
            let mut hist = SPECS[0].family();
            hist.push_histogram(&["x"], &h2);
            let mut count = SPECS[1].family();
            count.push(&["x", "y\"z"], 2.0);
            vec![hist.finish(), count.finish()]
        });
        registry.register(Box::new(c)).expect("register");
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut out).expect("encode");
        let text = String::from_utf8(out).expect("utf-8");
        for line in [
            "# TYPE t_seconds histogram",
            r#"t_seconds_bucket{a="x",le="0.0005"} 1"#,
            r#"t_seconds_bucket{a="x",le="0.0025"} 1"#,
            r#"t_seconds_bucket{a="x",le="0.005"} 2"#,
            r#"t_seconds_bucket{a="x",le="30"} 2"#,
            r#"t_seconds_bucket{a="x",le="+Inf"} 3"#,
            r#"t_seconds_count{a="x"} 3"#,
            r#"t_seconds_sum{a="x"} 60.0034"#,
            r#"t_total{a="x",b="y\"z"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
