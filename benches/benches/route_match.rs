//! Route matching at 10, 1,000 and 10,000 routes.
//!
//! Run: cargo bench -p edgegate-benches --bench route_match
//!
//! Routes are spread like a city's services: up to 100 exact hosts plus wildcard hosts,
//! each with path prefixes and exact paths, some restricted by method. Lookups cycle
//! through hits at every depth plus misses, so no single branch is measured warm.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgegate::router::{RouteMatch, RouteTable};
use edgegate_config::{Access, HostMatch, MethodSet, PathMatch, Route, RouteTimeouts, UpstreamId};
use edgegate_filters::normalise::CanonicalRequest;

fn routes(n: usize) -> Vec<Route> {
    let hosts = (n / 100).clamp(1, 100);
    (0..n)
        .map(|i| {
            let h = i % hosts;
            let k = i / hosts;
            let host = match h % 10 {
                9 => HostMatch::Suffix(format!("district{h}.gov.cn")),
                _ => HostMatch::Exact(format!("svc{h}.zwfw.gov.cn")),
            };
            let path = if k % 4 == 3 {
                PathMatch::Exact(format!("/api/service-{k}/status"))
            } else {
                PathMatch::Prefix(format!("/api/service-{k}/v{}/", k % 3))
            };
            let mut methods = MethodSet::NONE;
            if k.is_multiple_of(5) {
                methods.insert("GET");
                methods.insert("HEAD");
            } else {
                methods = MethodSet::ANY;
            }
            Route {
                name: format!("r{i}"),
                host,
                path,
                methods,
                upstream: UpstreamId(0),
                timeouts: RouteTimeouts::default(),
                access: Access::Public,
                cache: None,
                allow_encoded_slash: false,
                body_limit: None,
                rate_limit: None,
                max_inflight: None,
                websocket: false,
            }
        })
        .collect()
}

/// (host as sent, path, method): hits on prefixes and exact paths, wildcard hosts,
/// and misses on host and on path.
fn requests(n: usize) -> Vec<(String, String, &'static str)> {
    let hosts = (n / 100).clamp(1, 100);
    let per_host = (n / hosts).max(1);
    (0..64)
        .map(|j| {
            let h = (j * 7) % hosts;
            let k = (j * 13) % per_host;
            let host = match (j % 16, h % 10) {
                (15, _) => "unknown.example.org:443".to_owned(),
                (_, 9) => format!("Street-{j}.District{h}.gov.cn"),
                _ => format!("SVC{h}.zwfw.gov.cn:8443"),
            };
            let path = match (j % 8, k % 4) {
                (7, _) => "/no/such/service".to_owned(),
                (_, 3) => format!("/api/service-{k}/status"),
                _ => format!("/api/service-{k}/v{}/forms/residence-permit/123", k % 3),
            };
            (host, path, if j % 3 == 0 { "POST" } else { "GET" })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let rs = routes(n);
        let table = RouteTable::build(&rs);
        let reqs = requests(n);
        let found = reqs
            .iter()
            .filter(|(h, p, m)| {
                let c = CanonicalRequest::new(Some(h.as_bytes()), p.as_bytes()).unwrap_or_default();
                matches!(table.find(c.host(), c.path(), m), RouteMatch::Found(_))
            })
            .count();
        assert!(found > reqs.len() / 2, "benchmark requests should mostly hit: {found}/{}", reqs.len());
        group.throughput(Throughput::Elements(1));
        // The whole of steps 1 and 2: canonical host and path, then the table.
        group.bench_with_input(BenchmarkId::new("canonical+find", n), &n, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                let (h, p, m) = &reqs[i % reqs.len()];
                i += 1;
                let c =
                    CanonicalRequest::new(Some(black_box(h.as_bytes())), black_box(p.as_bytes())).unwrap_or_default();
                black_box(table.find(c.host(), c.path(), m))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
