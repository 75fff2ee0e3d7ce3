//! The compiled route table (request path step 2, "route"): host lookup by hash, then
//! an exact-path hash lookup, then the longest matching path prefix in a radix tree,
//! then the method bitmask. No regexes, no linear scan over routes.
//!
//! Precedence, most specific first: exact host, then wildcard hosts from the longest
//! suffix to the shortest, then routes without a host. Within one host: exact path,
//! then the longest prefix; among routes on the same path, the first in the file
//! whose methods allow the request. If a path matched but no method did, the result
//! is [`RouteMatch::MethodNotAllowed`] with the methods that would have matched.

use edgegate_config::{HostMatch, MethodSet, PathMatch, Route};
use rustc_hash::FxHashMap;

/// Index of a route in the snapshot's route list.
pub type RouteIdx = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatch {
    Found(RouteIdx),
    MethodNotAllowed(MethodSet),
    NotFound,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    methods: MethodSet,
    route: RouteIdx,
}

/// Routes of one host (or of the wildcard / any-host tables).
#[derive(Debug, Default)]
struct PathTable {
    exact: FxHashMap<Box<str>, Vec<Entry>>,
    prefixes: Node,
}

/// A radix-tree node: `label` is the edge from the parent; children are sorted by
/// their label's first byte, which is unique among siblings.
#[derive(Debug, Default)]
struct Node {
    label: Box<[u8]>,
    entries: Vec<Entry>,
    children: Vec<Node>,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    exact_hosts: FxHashMap<Box<str>, PathTable>,
    /// Keyed by the suffix without `*.`: `*.example.gov.cn` → `example.gov.cn`.
    suffix_hosts: FxHashMap<Box<str>, PathTable>,
    any_host: PathTable,
    len: usize,
}

impl RouteTable {
    pub fn build(routes: &[Route]) -> RouteTable {
        let mut table = RouteTable::default();
        for (i, r) in routes.iter().enumerate() {
            let paths = match &r.host {
                HostMatch::Any => &mut table.any_host,
                HostMatch::Exact(h) => table.exact_hosts.entry(h.as_str().into()).or_default(),
                HostMatch::Suffix(s) => table.suffix_hosts.entry(s.as_str().into()).or_default(),
            };
            paths.insert(&r.path, Entry { methods: r.methods, route: i as RouteIdx });
        }
        table.len = routes.len();
        table
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `host` and `path` are a request's canonical ones (`edgegate_filters::normalise`).
    pub fn find(&self, host: &str, path: &str, method: &str) -> RouteMatch {
        let mut allowed = MethodSet::NONE;
        if let Some(t) = self.exact_hosts.get(host) {
            if let Some(r) = t.find(path, method, &mut allowed) {
                return RouteMatch::Found(r);
            }
        }
        if !self.suffix_hosts.is_empty() {
            // Each label boundary, left to right, is a longer-to-shorter suffix.
            for (i, b) in host.bytes().enumerate() {
                if b != b'.' {
                    continue;
                }
                if let Some(t) = self.suffix_hosts.get(&host[i + 1..]) {
                    if let Some(r) = t.find(path, method, &mut allowed) {
                        return RouteMatch::Found(r);
                    }
                }
            }
        }
        if let Some(r) = self.any_host.find(path, method, &mut allowed) {
            return RouteMatch::Found(r);
        }
        if allowed == MethodSet::NONE {
            RouteMatch::NotFound
        } else {
            RouteMatch::MethodNotAllowed(allowed)
        }
    }
}

impl PathTable {
    fn insert(&mut self, path: &PathMatch, entry: Entry) {
        match path {
            PathMatch::Exact(p) => self.exact.entry(p.as_str().into()).or_default().push(entry),
            PathMatch::Prefix(p) => self.prefixes.insert(p.as_bytes(), entry),
        }
    }

    fn find(&self, path: &str, method: &str, allowed: &mut MethodSet) -> Option<RouteIdx> {
        if !self.exact.is_empty() {
            if let Some(entries) = self.exact.get(path) {
                if let Some(r) = pick(entries, method, allowed) {
                    return Some(r);
                }
            }
        }
        self.prefixes.longest(path.as_bytes(), method, allowed)
    }
}

fn pick(entries: &[Entry], method: &str, allowed: &mut MethodSet) -> Option<RouteIdx> {
    for e in entries {
        if e.methods.contains(method) {
            return Some(e.route);
        }
        *allowed = allowed.union(e.methods);
    }
    None
}

impl Node {
    fn insert(&mut self, key: &[u8], entry: Entry) {
        if key.is_empty() {
            self.entries.push(entry);
            return;
        }
        let slot = self.children.binary_search_by_key(&key[0], |c| c.label[0]);
        let i = match slot {
            Ok(i) => i,
            Err(i) => {
                self.children.insert(i, Node { label: key.into(), entries: vec![entry], children: Vec::new() });
                return;
            }
        };
        let child = &mut self.children[i];
        let common = child.label.iter().zip(key).take_while(|(a, b)| a == b).count();
        if common < child.label.len() {
            // Split the edge: the child keeps the tail of its label under a new parent.
            let tail: Box<[u8]> = child.label[common..].into();
            let head: Box<[u8]> = child.label[..common].into();
            let mut old = std::mem::take(child);
            old.label = tail;
            *child = Node { label: head, entries: Vec::new(), children: vec![old] };
        }
        child.insert(&key[common..], entry);
    }

    /// The deepest node on `path`'s way down whose entries allow `method`; shallower
    /// prefixes are tried when a deeper one matches the path but not the method.
    fn longest(&self, path: &[u8], method: &str, allowed: &mut MethodSet) -> Option<RouteIdx> {
        if let Some(&first) = path.first() {
            if let Ok(i) = self.children.binary_search_by_key(&first, |c| c.label[0]) {
                let child = &self.children[i];
                if path.starts_with(&child.label) {
                    if let Some(r) = child.longest(&path[child.label.len()..], method, allowed) {
                        return Some(r);
                    }
                }
            }
        }
        pick(&self.entries, method, allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgegate_config::{Access, RouteTimeouts, UpstreamId};

    fn route(name: &str, host: HostMatch, path: PathMatch, methods: &[&str]) -> Route {
        let mut set = if methods.is_empty() { MethodSet::ANY } else { MethodSet::NONE };
        for m in methods {
            set.insert(m);
        }
        Route {
            name: name.into(),
            host,
            path,
            methods: set,
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
    }

    fn table() -> (RouteTable, Vec<Route>) {
        use HostMatch::{Any, Exact as Host, Suffix};
        use PathMatch::{Exact as Path, Prefix};
        let routes = vec![
            route("root", Any, Prefix("/".into()), &[]),
            route("api", Host("zwfw.gov.cn".into()), Prefix("/api/".into()), &[]),
            route("api-v2", Host("zwfw.gov.cn".into()), Prefix("/api/v2/".into()), &["GET"]),
            route("api-v2-post", Host("zwfw.gov.cn".into()), Prefix("/api/v2/".into()), &["POST"]),
            route("health", Host("zwfw.gov.cn".into()), Path("/api/health".into()), &[]),
            route("wild", Suffix("gov.cn".into()), Prefix("/w".into()), &[]),
            route("wild-deeper", Suffix("city.gov.cn".into()), Prefix("/w".into()), &[]),
            route("only-put", Host("put.gov.cn".into()), Prefix("/p".into()), &["PUT"]),
        ];
        (RouteTable::build(&routes), routes)
    }

    fn name(t: &(RouteTable, Vec<Route>), host: &str, path: &str, method: &str) -> String {
        match t.0.find(host, path, method) {
            RouteMatch::Found(i) => t.1[i as usize].name.clone(),
            RouteMatch::MethodNotAllowed(m) => format!("405 {}", m.names().collect::<Vec<_>>().join(",")),
            RouteMatch::NotFound => "404".into(),
        }
    }

    #[test]
    fn precedence() {
        let t = table();
        assert_eq!(name(&t, "zwfw.gov.cn", "/api/x", "GET"), "api");
        assert_eq!(name(&t, "zwfw.gov.cn", "/api/v2/x", "GET"), "api-v2");
        assert_eq!(name(&t, "zwfw.gov.cn", "/api/v2/x", "POST"), "api-v2-post");
        // Longest prefix does not allow DELETE: falls back to the shorter prefix.
        assert_eq!(name(&t, "zwfw.gov.cn", "/api/v2/x", "DELETE"), "api");
        assert_eq!(name(&t, "zwfw.gov.cn", "/api/health", "GET"), "health");
        assert_eq!(name(&t, "zwfw.gov.cn", "/api/healthz", "GET"), "api");
        assert_eq!(name(&t, "zwfw.gov.cn", "/other", "GET"), "root");
        assert_eq!(name(&t, "a.city.gov.cn", "/w/1", "GET"), "wild-deeper");
        assert_eq!(name(&t, "a.b.c.gov.cn", "/w/1", "GET"), "wild");
        assert_eq!(name(&t, "gov.cn", "/w/1", "GET"), "root", "a wildcard does not match its bare suffix");
        assert_eq!(name(&t, "put.gov.cn", "/p", "GET"), "root", "falls through to the any-host routes");
    }

    #[test]
    fn method_not_allowed_lists_the_methods_that_would_match() {
        let routes = vec![
            route("g", HostMatch::Any, PathMatch::Prefix("/x".into()), &["GET"]),
            route("p", HostMatch::Any, PathMatch::Exact("/x/y".into()), &["POST", "PUT"]),
        ];
        let t = (RouteTable::build(&routes), routes);
        assert_eq!(name(&t, "h", "/x/y", "DELETE"), "405 GET,POST,PUT");
        assert_eq!(name(&t, "h", "/x/y", "PUT"), "p");
        assert_eq!(name(&t, "h", "/nothing", "GET"), "404");
    }

    #[test]
    fn radix_splits_keep_every_prefix_reachable() {
        let paths = ["/a", "/abc", "/ab", "/b/c", "/b", "/abd/e", "/"];
        let routes: Vec<Route> =
            paths.iter().map(|p| route(p, HostMatch::Any, PathMatch::Prefix((*p).into()), &[])).collect();
        let t = (RouteTable::build(&routes), routes);
        assert_eq!(name(&t, "h", "/abcdef", "GET"), "/abc");
        assert_eq!(name(&t, "h", "/abd/e/f", "GET"), "/abd/e");
        assert_eq!(name(&t, "h", "/abd", "GET"), "/ab");
        assert_eq!(name(&t, "h", "/a", "GET"), "/a");
        assert_eq!(name(&t, "h", "/b/x", "GET"), "/b");
        assert_eq!(name(&t, "h", "/zzz", "GET"), "/");
    }
}
