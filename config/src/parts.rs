//! Two lists about a config, each written once and used by every reader: the files it is
//! made of besides the YAML ([`Config::dependencies`]: the reload fingerprint and the
//! file watcher), and the settings that only apply when the process starts
//! ([`START_TIME_FIELDS`]: reloads keep the running values and report the field paths).

use std::path::PathBuf;

use crate::model::Config;

/// A file or directory the config refers to, as written in the config (relative paths
/// are relative to the config file's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The config field that names it, e.g. `upstreams.pods.tls.ca`.
    pub field: String,
    pub path: PathBuf,
    /// A directory: every file in it counts (the policy directory).
    pub dir: bool,
}

impl Config {
    /// Every file and directory this config is made of besides the YAML itself: the policy
    /// directory, the JWKS, listener certificates and keys, upstream CA bundles.
    pub fn dependencies(&self) -> Vec<Dependency> {
        let file = |field: String, path: &PathBuf| Dependency { field, path: path.clone(), dir: false };
        let mut deps = Vec::new();
        if let Some(p) = &self.policies {
            deps.push(Dependency { field: "policies.dir".into(), path: p.dir.clone(), dir: true });
        }
        if let Some(jwt) = &self.jwt {
            deps.push(file("identity.jwt.keys".into(), &jwt.keys));
        }
        if let Some(token) = &self.admin.token_file {
            deps.push(file("admin.token_file".into(), token));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            for (j, pair) in l.tls.iter().flat_map(|t| t.certificates.iter().enumerate()) {
                deps.push(file(format!("listeners[{i}].tls.certificates[{j}].cert"), &pair.cert));
                deps.push(file(format!("listeners[{i}].tls.certificates[{j}].key"), &pair.key));
            }
        }
        for g in &self.upstreams {
            if let Some(ca) = g.tls.as_ref().and_then(|t| t.ca.as_ref()) {
                deps.push(file(format!("upstreams.{}.tls.ca", g.name), ca));
            }
        }
        deps
    }

    /// Applies `running`'s start-time settings to this (new) config and returns the field
    /// paths that differed: they take effect on the next restart.
    pub fn keep_start_time_settings(&mut self, running: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        for f in START_TIME_FIELDS {
            if !(f.same)(self, running) {
                (f.keep)(self, running);
                changed.push(f.path);
            }
        }
        changed
    }
}

/// A setting fixed when the process starts.
pub struct StartTimeField {
    /// Its field path in the config file.
    pub path: &'static str,
    same: fn(&Config, &Config) -> bool,
    keep: fn(&mut Config, &Config),
}

/// What is bound and how: certificates and HSTS apply live, the rest (TLS session
/// resumption too) needs a restart.
type ListenerShape<'a> =
    (&'a str, std::net::SocketAddr, bool, Option<(bool, usize, Option<&'a std::path::Path>)>, Option<u16>);

fn listener_shape(c: &Config) -> Vec<ListenerShape<'_>> {
    c.listeners
        .iter()
        .map(|l| {
            let tls = l.tls.as_ref().map(|t| (t.session_tickets, t.session_cache, t.session_ticket_keys.as_deref()));
            (l.name.as_str(), l.address, l.behind_tls, tls, l.redirect_https)
        })
        .collect()
}

/// A start-time field that is one value in the config: compared and kept by the same
/// expression, so the two cannot drift apart.
macro_rules! field {
    ($path:literal, $($field:ident).+) => {
        StartTimeField {
            path: $path,
            same: |a, b| a.$($field).+ == b.$($field).+,
            keep: |new, running| new.$($field).+ = running.$($field).+.clone(),
        }
    };
}

/// Every setting that only applies at start, in one place.
pub const START_TIME_FIELDS: &[StartTimeField] = &[
    StartTimeField {
        path: "listeners",
        same: |a, b| listener_shape(a) == listener_shape(b),
        keep: |new, running| new.listeners = running.listeners.clone(),
    },
    field!("admin.address", admin.address),
    field!("runtime.threads", runtime.threads),
    field!("runtime.work_stealing", runtime.work_stealing),
    field!("runtime.tls_handshake_threads", runtime.tls_handshake_threads),
    field!("shutdown.grace_period", shutdown.grace_period),
    field!("limits.keepalive_requests", limits.keepalive_requests),
    field!("limits.h2_max_concurrent_streams", limits.h2_max_concurrent_streams),
    // Also the HTTP/2 header-list limit, which is fixed when the server starts.
    field!("limits.header_bytes", limits.header_bytes),
    field!("cache.memory", cache.memory),
    field!("cache.status_header", cache.status_header),
    field!("cache.redis", redis),
    field!("audit.db", audit.db),
    field!("audit.node", audit.node),
    field!("audit.signing_key", audit.signing_key),
    field!("audit.synchronous", audit.synchronous_full),
    field!("audit.checkpoint_records", audit.checkpoint_records),
    field!("audit.checkpoint_interval", audit.checkpoint_interval),
    field!("audit.commit_interval", audit.commit_interval),
    field!("audit.verify_interval", audit.verify_interval),
    field!("audit.verify_full_interval", audit.verify_full_interval),
    field!("audit.retention", audit.retention),
    field!("audit.max_size", audit.max_size),
    field!("audit.forward", audit.forward),
    field!("tracing.otlp", tracing.otlp),
];

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listeners: [{name: p, address: '127.0.0.1:8080'}]\nupstreams: {a: {endpoints: [{address: '10.0.0.1:80'}]}}\nroutes: [{name: r, upstream: a, public: true}]\n";

    fn config(extra: &str) -> Config {
        Config::from_yaml(&format!("{BASE}{extra}")).expect("valid")
    }

    #[test]
    fn start_time_changes_are_kept_and_named_by_field_path() {
        let running = config("cache: {memory: 64MiB}\n");
        let mut new = config("cache: {memory: 128MiB, status_header: X-Edge-Cache}\nruntime: {threads: 3}\n");
        let changed = new.keep_start_time_settings(&running);
        assert_eq!(changed, vec!["runtime.threads", "cache.memory", "cache.status_header"]);
        assert_eq!(new.cache, running.cache, "running values kept");
        assert_eq!(new.runtime, running.runtime);
        let mut same = config("cache: {memory: 64MiB}\n");
        assert!(same.keep_start_time_settings(&running).is_empty());
    }

    #[test]
    fn dependencies_name_every_file_with_its_field() {
        let c = Config::from_yaml(
            "listeners: [{name: p, address: '127.0.0.1:8443', tls: {certificates: [{cert: a.crt, key: a.key}]}}]
upstreams: {pods: {endpoints: [{address: '10.0.0.1:443'}], tls: {sni: pods.local, ca: ca/bundle.pem}}}
routes: [{name: r, upstream: pods, policy: data.x.allow}]
policies: {dir: policy}
identity: {jwt: {issuer: i, audience: a, keys: jwks.json}}
",
        )
        .expect("valid");
        let deps: Vec<(String, String, bool)> =
            c.dependencies().into_iter().map(|d| (d.field, d.path.display().to_string(), d.dir)).collect();
        let want = [
            ("policies.dir", "policy", true),
            ("identity.jwt.keys", "jwks.json", false),
            ("listeners[0].tls.certificates[0].cert", "a.crt", false),
            ("listeners[0].tls.certificates[0].key", "a.key", false),
            ("upstreams.pods.tls.ca", "ca/bundle.pem", false),
        ];
        let want: Vec<(String, String, bool)> =
            want.iter().map(|(f, p, d)| (f.to_string(), p.to_string(), *d)).collect();
        assert_eq!(deps, want);
    }
}
