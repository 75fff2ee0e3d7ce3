//! Criterion benches live in `benches/`; this crate holds only what several of them share.

use std::time::Duration;

use edgegate_config::RouteCache;

/// A cached route as the benches use it: 30 s fresh, `Accept-Language` in the key,
/// no stale serving.
pub fn route_cache() -> RouteCache {
    RouteCache {
        ttl: Duration::from_secs(30),
        vary: vec!["accept-language".into()],
        public: false,
        stale_if_error: Duration::ZERO,
        stale_while_revalidate: Duration::ZERO,
        per_user: false,
        honour_client_no_cache: false,
        cache_set_cookie: false,
    }
}
