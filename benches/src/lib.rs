//! Criterion benches live in `benches/`; this crate holds only what several of them share.

use std::time::Duration;

use edgegate_config::RouteCache;

/// A cached route as the benches use it: 30 s fresh, `Accept-Language` in the key,
/// no stale serving.
pub fn route_cache() -> RouteCache {
    RouteCache { vary: vec!["accept-language".into()], ..RouteCache::with_ttl(Duration::from_secs(30)) }
}
