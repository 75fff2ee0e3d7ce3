//! One audit record and its chain hash.
//!
//! The hash covers an unambiguous binary encoding of every field (numbers as big-endian
//! u64, text as a u32 length and its bytes, in a fixed order, after a version tag), so
//! editing any field, moving a record to another sequence number, or swapping two records
//! changes a hash: `hash = SHA-256(prev_hash ‖ encoding)`.
//!
//! `trace_id` came after the first logs were written: it is encoded last, and only when
//! set, so a record without one encodes as it always did and older logs still verify.
//! Every field before it has a fixed size or a length prefix, so the tail is unambiguous.
//!
//! That encoding is the first one (`v1`), of the rows of the `records` table, one column
//! per field. Records written since are entries (`v2`, the `entries` table): the fields
//! stored as one JSON array (SQLite's `json_extract` reads them), and the hash covers the
//! stored text itself: `hash = SHA-256(prev_hash ‖ "edgegate-audit-v2\0" ‖ seq ‖ time_ms
//! ‖ text)`, numbers as big-endian u64. One text to bind instead of twenty columns makes a
//! record about a third cheaper to write (docs/benchmarks.md), and a verifier hashes the
//! bytes it read without re-encoding them.
//!
//! Records written since are rows of records (`v3`, the `batches` table): the records one
//! transaction writes (up to [`ROW_RECORDS`]) as one JSON array of arrays, each record's
//! array every field of [`Record`] in its order (`seq`, `time_ms`, `node`, …), and one hash
//! over the row: `hash = SHA-256(prev_hash ‖ "edgegate-audit-v3\0" ‖ first_seq ‖ last_seq ‖
//! min_ms ‖ max_ms ‖ text)`. SQLite's work per row, not per record, takes about a third off
//! the writer's CPU per record, half its user time (docs/benchmarks.md); an edit anywhere in
//! a row changes its hash.
//!
//! Records written since are rows with their node and config (`v4`, the `record_rows`
//! table): the same rows, but what every record of a row shares is said once, by the row —
//! its `node` and `config` in columns of their own, each record's `seq` by its place
//! (`first_seq` + its index) — and each record's array holds the rest
//! ([`ROW_FIELDS`]). The hash covers those columns too: `hash = SHA-256(prev_hash ‖
//! "edgegate-audit-v4\0" ‖ first_seq ‖ last_seq ‖ min_ms ‖ max_ms ‖ node ‖ config ‖ text)`,
//! each of `node` and `config` as a u32 length and its bytes. A record is about 30 % shorter
//! (the config's fingerprint alone was 73 of its ~310 bytes), and the writer spends about
//! 13 % less on it (docs/benchmarks.md). A reload between two records ends a row.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record a node ever writes.
pub const GENESIS: [u8; 32] = [0; 32];

/// What the gateway remembers about one request. Text fields are empty when not known
/// (no route, anonymous caller, served without an upstream).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Monotonic per node, across restarts; assigned by the store.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the request finished.
    pub time_ms: u64,
    /// The node that served the request; assigned by the store.
    pub node: String,
    pub request_id: String,
    pub route: String,
    /// The client by the trusted-proxy rule.
    pub client_ip: String,
    /// The verified user's id.
    pub user: String,
    pub method: String,
    /// Canonical host and path, as routed and authorised.
    pub host: String,
    pub path: String,
    /// The query string, values redacted unless `audit.fields.query: keep`.
    pub query: String,
    /// How the access step ended: public, allowed, unauthenticated,
    /// token_checks_limited, token_check_timed_out, rate_limited, denied, no_policy, error.
    pub outcome: String,
    /// The policy decision the route is guarded by.
    pub rule: String,
    /// Fingerprint of the config that served the request.
    pub config: String,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    pub duration_us: u64,
    /// The endpoint of the last upstream attempt.
    pub upstream: String,
    /// Cache result: hit, coalesced, stale, miss, refresh, bypass; empty on uncached routes.
    pub cache: String,
    /// The W3C trace id (32 hex digits) the request belonged to; empty when it had none.
    #[serde(default)]
    pub trace_id: String,
}

const VERSION_TAG: &[u8] = b"edgegate-audit-v1\0";
const ENTRY_TAG: &[u8] = b"edgegate-audit-v2\0";
const ROW_TAG: &[u8] = b"edgegate-audit-v3\0";
const NODE_ROW_TAG: &[u8] = b"edgegate-audit-v4\0";

/// The most records one row of the log holds: a transaction of more writes more rows. A
/// row of 128 (~28 KB; ~40 KB when every record held its node and config) keeps SQLite's
/// copies of it below the C allocator's threshold for memory of its own (`mmap`): rows of
/// 512 took 47 page faults per thousand records, and the system time they cost ate a fifth
/// of what rows save (docs/benchmarks.md).
pub const ROW_RECORDS: u64 = 128;

/// Which records a row of the log holds, and the earliest and latest time among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first_seq: u64,
    pub last_seq: u64,
    pub min_ms: u64,
    pub max_ms: u64,
}

/// `SHA-256(prev ‖ "edgegate-audit-v3\0" ‖ first_seq ‖ last_seq ‖ min_ms ‖ max_ms ‖ text)`: a
/// row's chain hash, over its text as stored.
pub fn row_hash(span: &Span, text: &[u8], prev: &[u8; 32]) -> [u8; 32] {
    let mut h = span_hasher(prev, ROW_TAG, span);
    h.update(text);
    h.finalize().into()
}

/// A hasher holding what every row's chain hash begins with: `prev ‖ tag ‖ first_seq ‖
/// last_seq ‖ min_ms ‖ max_ms`.
fn span_hasher(prev: &[u8; 32], tag: &[u8], span: &Span) -> Sha256 {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(tag);
    for n in [span.first_seq, span.last_seq, span.min_ms, span.max_ms] {
        h.update(n.to_be_bytes());
    }
    h
}

/// What every record of a row with its node and config (`v4`) shares, said once by the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowHead<'a> {
    pub span: Span,
    pub node: &'a str,
    pub config: &'a str,
}

/// `SHA-256(prev ‖ "edgegate-audit-v4\0" ‖ first_seq ‖ last_seq ‖ min_ms ‖ max_ms ‖ node ‖
/// config ‖ text)`, the texts `node` and `config` each as a u32 length and its bytes: the
/// chain hash of a row with its node and config, over its text as stored.
pub fn node_row_hash(head: &RowHead<'_>, text: &[u8], prev: &[u8; 32]) -> [u8; 32] {
    let mut h = span_hasher(prev, NODE_ROW_TAG, &head.span);
    for t in [head.node, head.config] {
        h.update((t.len() as u32).to_be_bytes());
        h.update(t.as_bytes());
    }
    h.update(text);
    h.finalize().into()
}

/// The position of each field in a record's JSON array in a row with its node and config
/// (`json_extract(value, '$[5]')` is the method); `seq`, `node` and `config` are the row's.
pub const ROW_FIELDS: [&str; 17] = [
    "time_ms",
    "request_id",
    "route",
    "client_ip",
    "user",
    "method",
    "host",
    "path",
    "query",
    "outcome",
    "rule",
    "status",
    "bytes",
    "duration_us",
    "upstream",
    "cache",
    "trace_id",
];

/// A record as a row with its node and config holds it: every field of [`Record`] but the
/// three the row holds, in [`ROW_FIELDS`]' order (read from a JSON array field by field).
#[derive(Deserialize)]
struct RowRecord {
    time_ms: u64,
    request_id: String,
    route: String,
    client_ip: String,
    user: String,
    method: String,
    host: String,
    path: String,
    query: String,
    outcome: String,
    rule: String,
    status: u16,
    bytes: u64,
    duration_us: u64,
    upstream: String,
    cache: String,
    trace_id: String,
}

/// The position of each field in an entry's JSON array, for SQL over the log
/// (`json_extract(record, '$[6]')` is the method) and for the view the store creates.
pub const ENTRY_FIELDS: [&str; 18] = [
    "node",
    "request_id",
    "route",
    "client_ip",
    "user",
    "method",
    "host",
    "path",
    "query",
    "outcome",
    "rule",
    "config",
    "status",
    "bytes",
    "duration_us",
    "upstream",
    "cache",
    "trace_id",
];

/// `SHA-256(prev ‖ "edgegate-audit-v2\0" ‖ seq ‖ time_ms ‖ text)`: an entry's chain hash,
/// over the text as stored.
pub fn entry_hash(seq: u64, time_ms: u64, text: &[u8], prev: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(ENTRY_TAG);
    h.update(seq.to_be_bytes());
    h.update(time_ms.to_be_bytes());
    h.update(text);
    h.finalize().into()
}

/// A record's fields as borrowed text and numbers, without the two the store assigns
/// (`seq`, `node`): what [`crate::audit::Store::insert`] numbers, chains and writes. The
/// gateway's writer builds it straight from the queued record's one buffer, so no field is
/// copied into a `String` of its own on the way to the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub time_ms: u64,
    pub request_id: &'a str,
    pub route: &'a str,
    pub client_ip: &'a str,
    pub user: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub outcome: &'a str,
    pub rule: &'a str,
    pub config: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub duration_us: u64,
    pub upstream: &'a str,
    pub cache: &'a str,
    pub trace_id: &'a str,
}

/// What the store can write: anything that lends out a record's [`Fields`].
pub trait AsFields {
    fn fields(&self) -> Fields<'_>;

    /// True when the record has checked that none of its text fields holds a byte JSON
    /// escapes (`"`, `\`, a control character): its JSON text is then written without
    /// checking each field again. False, the default, when it has not checked.
    fn json_plain(&self) -> bool {
        false
    }
}

impl AsFields for Record {
    fn fields(&self) -> Fields<'_> {
        Fields {
            time_ms: self.time_ms,
            request_id: &self.request_id,
            route: &self.route,
            client_ip: &self.client_ip,
            user: &self.user,
            method: &self.method,
            host: &self.host,
            path: &self.path,
            query: &self.query,
            outcome: &self.outcome,
            rule: &self.rule,
            config: &self.config,
            status: self.status,
            bytes: self.bytes,
            duration_us: self.duration_us,
            upstream: &self.upstream,
            cache: &self.cache,
            trace_id: &self.trace_id,
        }
    }
}

impl Fields<'_> {
    /// The text fields from `node` to `config`, in the order both encodings write them.
    fn leading_texts<'b>(&'b self, node: &'b str) -> [&'b str; 12] {
        [
            node,
            self.request_id,
            self.route,
            self.client_ip,
            self.user,
            self.method,
            self.host,
            self.path,
            self.query,
            self.outcome,
            self.rule,
            self.config,
        ]
    }

    /// The bytes the chain hash covers, for the record numbered `seq` on `node`.
    pub fn encode(&self, seq: u64, node: &str, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, t: &str) {
            out.extend_from_slice(&(t.len() as u32).to_be_bytes());
            out.extend_from_slice(t.as_bytes());
        }
        out.clear();
        out.extend_from_slice(VERSION_TAG);
        for n in [seq, self.time_ms] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        for t in self.leading_texts(node) {
            text(out, t);
        }
        for n in [u64::from(self.status), self.bytes, self.duration_us] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        text(out, self.upstream);
        text(out, self.cache);
        if !self.trace_id.is_empty() {
            text(out, self.trace_id);
        }
    }

    /// The entry's text: the fields as one JSON array, in the order of [`ENTRY_FIELDS`].
    pub fn entry_text(&self, node: &str, out: &mut String) {
        out.clear();
        out.push('[');
        self.push_from_node(node, out);
    }

    /// Appends the record as a row with its node and config holds it: one JSON array of the
    /// fields in [`ROW_FIELDS`]' order. `plain`: no text field needs escaping (as
    /// [`AsFields::json_plain`] says), so none is checked.
    pub fn push_node_row_record(&self, out: &mut String, plain: bool) {
        out.push('[');
        out.push_str(itoa::Buffer::new().format(self.time_ms));
        out.push(',');
        let texts = [
            self.request_id,
            self.route,
            self.client_ip,
            self.user,
            self.method,
            self.host,
            self.path,
            self.query,
            self.outcome,
            self.rule,
        ];
        self.push_items(&texts, out, plain);
    }

    /// Appends the record numbered `seq` as a row of records (`v3`) holds it: one JSON array
    /// of every field of [`Record`], in its order. The writer no longer writes these rows;
    /// tests build logs of them.
    #[cfg(test)]
    pub(crate) fn push_row_record(&self, seq: u64, node: &str, out: &mut String) {
        out.push('[');
        let mut n = itoa::Buffer::new();
        out.push_str(n.format(seq));
        out.push(',');
        out.push_str(n.format(self.time_ms));
        out.push(',');
        self.push_from_node(node, out);
    }

    /// The fields from `node` on as JSON array items, and the array's closing bracket.
    fn push_from_node(&self, node: &str, out: &mut String) {
        self.push_items(&self.leading_texts(node), out, false);
    }

    /// `texts` as JSON array items, then `status`, `bytes`, `duration_us`, `upstream`,
    /// `cache` and `trace_id`, and the array's closing bracket: how every JSON form of a
    /// record ends. `plain`: no text needs escaping, so none is checked.
    fn push_items(&self, texts: &[&str], out: &mut String, plain: bool) {
        if plain {
            self.push_items_with(texts, out, crate::json::push_plain_string);
        } else {
            self.push_items_with(texts, out, crate::json::push_string);
        }
    }

    /// [`Fields::push_items`] with each text written by `push`.
    #[inline]
    fn push_items_with(&self, texts: &[&str], out: &mut String, push: impl Fn(&mut String, &str)) {
        // Room for the whole text at once: each field with its quotes and comma, the three
        // numbers (20 digits at most each, and a comma), the bracket.
        let fields = [self.upstream, self.cache, self.trace_id];
        out.reserve(texts.iter().chain(&fields).map(|t| t.len() + 3).sum::<usize>() + 3 * 21 + 1);
        for t in texts {
            push(out, t);
            out.push(',');
        }
        let mut n = itoa::Buffer::new();
        for v in [u64::from(self.status), self.bytes, self.duration_us] {
            out.push_str(n.format(v));
            out.push(',');
        }
        push(out, self.upstream);
        out.push(',');
        push(out, self.cache);
        out.push(',');
        push(out, self.trace_id);
        out.push(']');
    }

    /// `SHA-256(prev ‖ encoding)`; `scratch` is reused between records.
    pub fn chain_hash(&self, seq: u64, node: &str, prev: &[u8; 32], scratch: &mut Vec<u8>) -> [u8; 32] {
        self.encode(seq, node, scratch);
        let mut h = Sha256::new();
        h.update(prev);
        h.update(scratch.as_slice());
        h.finalize().into()
    }
}

impl Record {
    /// A record from an entry's columns and text; an error names what is wrong with the text.
    pub fn from_entry(seq: u64, time_ms: u64, text: &str) -> Result<Record, String> {
        // `Record` declares its fields in the entry's order, after `seq` and `time_ms`, and a
        // struct is read from a JSON array field by field in that order.
        let rest = text.trim_start().strip_prefix('[').ok_or("not an entry's fields: not a JSON array")?;
        serde_json::from_str(&format!("[{seq},{time_ms},{rest}")).map_err(|e| format!("not an entry's fields: {e}"))
    }

    /// The records of a row's text, which must be those numbered `span.first_seq` to
    /// `span.last_seq`, in order; an error names what is wrong with the text.
    pub fn from_row(span: &Span, text: &str) -> Result<Vec<Record>, String> {
        // `Record` declares its fields in a row's order, and a struct is read from a JSON
        // array field by field in that order.
        let records: Vec<Record> = serde_json::from_str(text).map_err(|e| format!("not a row of records: {e}"))?;
        let numbered = (span.first_seq..=span.last_seq).eq(records.iter().map(|r| r.seq));
        if !numbered {
            return Err(format!("the row does not hold records {}..={} in order", span.first_seq, span.last_seq));
        }
        Ok(records)
    }

    /// The records of the text of a row with its node and config: as many as `head`'s span
    /// names, numbered from its first, each with the row's node and config; an error names
    /// what is wrong with the text.
    pub fn from_node_row(head: &RowHead<'_>, text: &str) -> Result<Vec<Record>, String> {
        let rows: Vec<RowRecord> = serde_json::from_str(text).map_err(|e| format!("not a row of records: {e}"))?;
        let span = &head.span;
        if span.last_seq < span.first_seq || rows.len() as u64 != span.last_seq - span.first_seq + 1 {
            return Err(format!("the row does not hold records {}..={}", span.first_seq, span.last_seq));
        }
        Ok(rows
            .into_iter()
            .zip(span.first_seq..)
            .map(|(r, seq)| Record {
                seq,
                time_ms: r.time_ms,
                node: head.node.to_owned(),
                request_id: r.request_id,
                route: r.route,
                client_ip: r.client_ip,
                user: r.user,
                method: r.method,
                host: r.host,
                path: r.path,
                query: r.query,
                outcome: r.outcome,
                rule: r.rule,
                config: head.config.to_owned(),
                status: r.status,
                bytes: r.bytes,
                duration_us: r.duration_us,
                upstream: r.upstream,
                cache: r.cache,
                trace_id: r.trace_id,
            })
            .collect())
    }

    /// The bytes the chain hash covers.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.fields().encode(self.seq, &self.node, out);
    }

    /// `SHA-256(prev ‖ encoding)`; `scratch` is reused between records.
    pub fn chain_hash(&self, prev: &[u8; 32], scratch: &mut Vec<u8>) -> [u8; 32] {
        self.fields().chain_hash(self.seq, &self.node, prev, scratch)
    }
}

/// Most bytes of a query a record keeps (after redaction).
pub const RECORD_QUERY_MAX: usize = 1024;

/// Appends the query with each value replaced by `REDACTED` (names kept, so an auditor
/// still sees which parameters were sent): `id=42&q=x` → `id=REDACTED&q=REDACTED`,
/// stopping once `limit` bytes past where it began are written.
fn redact_query_upto(query: &str, out: &mut String, limit: usize) {
    let start = out.len();
    for (i, param) in crate::query::params(query).enumerate() {
        if out.len() - start > limit {
            return;
        }
        if i > 0 {
            out.push('&');
        }
        out.push_str(param.name());
        if param.value().is_some() {
            out.push_str("=REDACTED");
        }
    }
}

/// Appends the query as a record keeps it: its values redacted unless `keep`, and at most
/// [`RECORD_QUERY_MAX`] bytes of that, then `…[N bytes]` (the query's length as sent) when
/// it was longer. A query of thousands of junk parameters would otherwise make each record
/// three times what the client sent (every short value becomes `REDACTED`), and a flood of
/// them fill the log with it; the names an auditor needs come first.
pub fn record_query_into(query: &str, keep: bool, out: &mut String) {
    let start = out.len();
    if keep {
        out.push_str(query);
    } else {
        redact_query_upto(query, out, RECORD_QUERY_MAX);
    }
    if out.len() - start > RECORD_QUERY_MAX {
        out.truncate(start + floor_char_boundary(&out[start..], RECORD_QUERY_MAX));
        out.push_str("…[");
        out.push_str(&query.len().to_string());
        out.push_str(" bytes]");
    }
}

/// What a request can put in its audit record — the user, host, path, query, request id
/// and rule, as arbitrary text — cannot change what the record says: written as a row of a
/// log writes it (checked, and unchecked when nothing needs escaping), it reads back as
/// the same record, with no string or array ended early and no field added; and the query
/// kept is the query with each value redacted (unless kept), cut at
/// [`RECORD_QUERY_MAX`] bytes on a character boundary with the query's length after it.
/// `data`: a first byte whose low bit says whether values are kept, then the six texts
/// separated by NUL (invalid UTF-8 replaced, as nothing but text reaches a record). Used
/// by the fuzz target (`fuzz/fuzz_targets/audit_record.rs`) and, over its corpus, by
/// `cargo test`.
#[doc(hidden)]
pub fn assert_invariants(data: &[u8]) {
    let (keep, data) = match data.split_first() {
        Some((flags, rest)) => (flags & 1 == 1, rest),
        None => (false, data),
    };
    let mut parts = data.split(|&b| b == 0).map(String::from_utf8_lossy);
    let mut next = || parts.next().unwrap_or_default();
    let (user, host, path, query, request_id, rule) = (next(), next(), next(), next(), next(), next());

    let mut kept = String::new();
    record_query_into(&query, keep, &mut kept);
    let whole = if keep {
        query.to_string()
    } else {
        let redacted: Vec<String> = query
            .split('&')
            .map(|p| p.split_once('=').map_or_else(|| p.to_owned(), |(name, _)| format!("{name}=REDACTED")))
            .collect();
        redacted.join("&")
    };
    if whole.len() <= RECORD_QUERY_MAX {
        assert_eq!(kept, whole, "the query as kept");
    } else {
        let marker = format!("…[{} bytes]", query.len());
        let cut = kept.strip_suffix(&marker).expect("a cut query ends with its length");
        assert!(cut.len() <= RECORD_QUERY_MAX && cut.len() + 4 > RECORD_QUERY_MAX, "cut at {}", cut.len());
        assert!(whole.starts_with(cut), "the cut query is the start of the whole one");
    }

    let fields = Fields {
        time_ms: 1_796_619_866_323,
        request_id: &request_id,
        route: "permits",
        client_ip: "203.0.113.7",
        user: &user,
        method: "GET",
        host: &host,
        path: &path,
        query: &kept,
        outcome: "allowed",
        rule: &rule,
        config: "sha256:c0ffee",
        status: 200,
        bytes: 37,
        duration_us: 512,
        upstream: "10.42.0.15:8080",
        cache: "MISS",
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
    };
    let head = RowHead {
        span: Span { first_seq: 9, last_seq: 9, min_ms: 0, max_ms: 0 },
        node: "edge-1",
        config: "sha256:c0ffee",
    };
    let plain = !crate::json::needs_escaping([&*request_id, &user, &host, &path, &kept, &rule].concat().as_bytes());
    for unchecked in [false, plain] {
        let mut text = String::from("[");
        fields.push_node_row_record(&mut text, unchecked);
        text.push(']');
        let read = Record::from_node_row(&head, &text).expect("a written record reads back");
        assert_eq!(read.len(), 1, "one record, no more: {text}");
        assert_eq!(read.first().map(Record::fields), Some(fields), "the record as written: {text}");
    }
}

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Lower-case hex of a hash, for export and messages.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    crate::hex::push(bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's corpus (its seeds and what it found), replayed on every test run.
    #[test]
    fn fuzz_corpus_holds_the_invariants() {
        for input in crate::testing::fuzz_corpus("audit_record", 6) {
            assert_invariants(&input);
        }
    }

    fn sample() -> Record {
        Record {
            seq: 7,
            time_ms: 1_700_000_000_000,
            node: "edge-1".into(),
            request_id: "r1".into(),
            route: "permits".into(),
            method: "GET".into(),
            host: "h.test".into(),
            path: "/p".into(),
            status: 200,
            ..Record::default()
        }
    }

    #[test]
    fn every_field_and_the_predecessor_change_the_hash() {
        let mut scratch = Vec::new();
        let base = sample().chain_hash(&GENESIS, &mut scratch);
        let mut edits: Vec<Record> = Vec::new();
        for edit in [
            |r: &mut Record| r.seq += 1,
            |r: &mut Record| r.time_ms += 1,
            |r: &mut Record| r.node.push('x'),
            |r: &mut Record| r.request_id.push('x'),
            |r: &mut Record| r.route.push('x'),
            |r: &mut Record| r.client_ip.push('x'),
            |r: &mut Record| r.user.push('x'),
            |r: &mut Record| r.method.push('x'),
            |r: &mut Record| r.host.push('x'),
            |r: &mut Record| r.path.push('x'),
            |r: &mut Record| r.query.push('x'),
            |r: &mut Record| r.outcome.push('x'),
            |r: &mut Record| r.rule.push('x'),
            |r: &mut Record| r.config.push('x'),
            |r: &mut Record| r.status += 1,
            |r: &mut Record| r.bytes += 1,
            |r: &mut Record| r.duration_us += 1,
            |r: &mut Record| r.upstream.push('x'),
            |r: &mut Record| r.cache.push('x'),
            |r: &mut Record| r.trace_id.push('x'),
        ] {
            let mut r = sample();
            edit(&mut r);
            edits.push(r);
        }
        for r in &edits {
            assert_ne!(r.chain_hash(&GENESIS, &mut scratch), base, "{r:?}");
        }
        assert_ne!(sample().chain_hash(&[1; 32], &mut scratch), base);
        // Moving text from one field to the next is not the same record.
        let mut a = sample();
        a.host = "h.test/p".into();
        a.path = String::new();
        assert_ne!(a.chain_hash(&GENESIS, &mut scratch), base);
    }

    #[test]
    fn a_record_without_a_trace_encodes_as_before_trace_ids_existed() {
        // The encoding of `sample()` as the first logs wrote it, pinned: logs written
        // before `trace_id` existed must keep verifying.
        let mut expected = b"edgegate-audit-v1\0".to_vec();
        expected.extend_from_slice(&7u64.to_be_bytes());
        expected.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        for text in ["edge-1", "r1", "permits", "", "", "GET", "h.test", "/p", "", "", "", ""] {
            expected.extend_from_slice(&(text.len() as u32).to_be_bytes());
            expected.extend_from_slice(text.as_bytes());
        }
        for n in [200u64, 0, 0] {
            expected.extend_from_slice(&n.to_be_bytes());
        }
        expected.extend_from_slice(&[0; 8]);
        let mut out = Vec::new();
        sample().encode(&mut out);
        assert_eq!(out, expected);
        let mut traced = sample();
        traced.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".into();
        traced.encode(&mut out);
        assert_eq!(out.len(), expected.len() + 4 + 32);
    }

    #[test]
    fn an_entry_is_pinned_text_hashed_as_stored() {
        // Logs written with entries must keep verifying: the text and what the hash
        // covers are pinned here.
        let mut r = sample();
        r.user = "a\"b\\c\u{1}é".into();
        let mut text = String::new();
        r.fields().entry_text("edge-1", &mut text);
        assert_eq!(
            text,
            r#"["edge-1","r1","permits","","a\"b\\c\u0001é","GET","h.test","/p","","","","",200,0,0,"","",""]"#
        );
        let mut expected = Sha256::new();
        expected.update([9u8; 32]);
        expected.update(b"edgegate-audit-v2\0");
        expected.update(7u64.to_be_bytes());
        expected.update(1_700_000_000_000u64.to_be_bytes());
        expected.update(text.as_bytes());
        let expected: [u8; 32] = expected.finalize().into();
        assert_eq!(entry_hash(7, 1_700_000_000_000, text.as_bytes(), &[9; 32]), expected);
        let back = Record::from_entry(7, 1_700_000_000_000, &text).expect("parses");
        assert_eq!(back, r);
        assert!(Record::from_entry(7, 0, "[\"edge-1\"]").expect_err("short").contains("not an entry"));
    }

    #[test]
    fn a_row_is_pinned_text_hashed_as_stored() {
        // Logs written as rows of records must keep verifying: a record's text in a row and
        // what a row's hash covers are pinned here.
        let mut r = sample();
        r.user = "a\"b".into();
        let mut text = String::from("[");
        r.fields().push_row_record(7, "edge-1", &mut text);
        text.push(',');
        r.fields().push_row_record(8, "edge-1", &mut text);
        text.push(']');
        let one = r#"1700000000000,"edge-1","r1","permits","","a\"b","GET","h.test","/p","","","","",200,0,0,"","","""#;
        assert_eq!(text, format!("[[7,{one}],[8,{one}]]"));
        let span = Span { first_seq: 7, last_seq: 8, min_ms: 1_700_000_000_000, max_ms: 1_700_000_000_000 };
        let mut expected = Sha256::new();
        expected.update([9u8; 32]);
        expected.update(b"edgegate-audit-v3\0");
        for n in [7u64, 8, 1_700_000_000_000, 1_700_000_000_000] {
            expected.update(n.to_be_bytes());
        }
        expected.update(text.as_bytes());
        let expected: [u8; 32] = expected.finalize().into();
        assert_eq!(row_hash(&span, text.as_bytes(), &[9; 32]), expected);
        let back = Record::from_row(&span, &text).expect("parses");
        let mut second = r.clone();
        (r.node, second.seq, second.node) = ("edge-1".into(), 8, "edge-1".into());
        assert_eq!(back, [r, second]);
        let wrong = Span { last_seq: 9, ..span };
        assert!(Record::from_row(&wrong, &text).expect_err("short").contains("does not hold records 7..=9"));
    }

    #[test]
    fn a_row_with_its_node_and_config_is_pinned_text_hashed_as_stored() {
        // Logs written as rows with their node and config must keep verifying: a record's
        // text in such a row and what the row's hash covers are pinned here.
        let mut r = sample();
        (r.user, r.config, r.trace_id) = ("a\"b".into(), "sha256:5f".into(), "4bf9".into());
        let mut text = String::from("[");
        r.fields().push_node_row_record(&mut text, false);
        text.push(',');
        r.fields().push_node_row_record(&mut text, false);
        text.push(']');
        let one = r#"1700000000000,"r1","permits","","a\"b","GET","h.test","/p","","","",200,0,0,"","","4bf9""#;
        assert_eq!(text, format!("[[{one}],[{one}]]"));
        let span = Span { first_seq: 7, last_seq: 8, min_ms: 1_700_000_000_000, max_ms: 1_700_000_000_000 };
        let head = RowHead { span, node: "edge-1", config: "sha256:5f" };
        let mut expected = Sha256::new();
        expected.update([9u8; 32]);
        expected.update(b"edgegate-audit-v4\0");
        for n in [7u64, 8, 1_700_000_000_000, 1_700_000_000_000] {
            expected.update(n.to_be_bytes());
        }
        expected.update(6u32.to_be_bytes());
        expected.update(b"edge-1");
        expected.update(9u32.to_be_bytes());
        expected.update(b"sha256:5f");
        expected.update(text.as_bytes());
        let expected: [u8; 32] = expected.finalize().into();
        assert_eq!(node_row_hash(&head, text.as_bytes(), &[9; 32]), expected);
        // Text moved between the node and the config is not the same row.
        let moved = RowHead { node: "edge-1s", config: "ha256:5f", ..head };
        assert_ne!(node_row_hash(&moved, text.as_bytes(), &[9; 32]), expected);
        let back = Record::from_node_row(&head, &text).expect("parses");
        let mut second = r.clone();
        (r.seq, r.node) = (7, "edge-1".into());
        (second.seq, second.node) = (8, "edge-1".into());
        assert_eq!(back, [r, second]);
        // The view reads the fields by these positions.
        let values: Vec<Vec<serde_json::Value>> = serde_json::from_str(&text).expect("arrays");
        assert_eq!(values[0].len(), ROW_FIELDS.len());
        assert_eq!((ROW_FIELDS[4], &values[0][4]), ("user", &serde_json::json!("a\"b")));
        assert_eq!((ROW_FIELDS[11], &values[0][11]), ("status", &serde_json::json!(200)));
        assert_eq!((ROW_FIELDS[16], &values[0][16]), ("trace_id", &serde_json::json!("4bf9")));
        for span in [Span { last_seq: 9, ..span }, Span { last_seq: 7, ..span }, Span { last_seq: 6, ..span }] {
            let err = Record::from_node_row(&RowHead { span, ..head }, &text).expect_err("not its span");
            assert!(err.contains("does not hold records 7..="), "{err}");
        }
    }

    #[test]
    fn every_field_comes_back_from_an_entry_in_its_place() {
        let mut texts = (0..).map(|i| format!("t{i}"));
        let mut next = || texts.next().unwrap_or_default();
        let r = Record {
            seq: 3,
            time_ms: 4,
            node: next(),
            request_id: next(),
            route: next(),
            client_ip: next(),
            user: next(),
            method: next(),
            host: next(),
            path: next(),
            query: next(),
            outcome: next(),
            rule: next(),
            config: next(),
            status: 5,
            bytes: 6,
            duration_us: 7,
            upstream: next(),
            cache: next(),
            trace_id: next(),
        };
        let mut text = String::new();
        r.fields().entry_text(&r.node, &mut text);
        assert_eq!(Record::from_entry(3, 4, &text), Ok(r.clone()));
        // The array's order is the one SQL's view names.
        let values: Vec<serde_json::Value> = serde_json::from_str(&text).expect("array");
        assert_eq!(values.len(), ENTRY_FIELDS.len());
        assert_eq!((ENTRY_FIELDS[4], &values[4]), ("user", &serde_json::json!(r.user)));
        assert_eq!((ENTRY_FIELDS[12], &values[12]), ("status", &serde_json::json!(5)));
        assert_eq!((ENTRY_FIELDS[17], &values[17]), ("trace_id", &serde_json::json!(r.trace_id)));
    }

    #[test]
    fn query_values_are_redacted_names_kept() {
        let redact_query = |q: &str| {
            let mut out = String::from("kept|");
            record_query_into(q, false, &mut out);
            out.strip_prefix("kept|").map(str::to_owned).expect("appended, not replaced")
        };
        assert_eq!(redact_query("id=42&q=x&flag"), "id=REDACTED&q=REDACTED&flag");
        // A record keeps the first RECORD_QUERY_MAX bytes, then the length as sent.
        let junk = "a=1&".repeat(3_000);
        let mut out = String::new();
        record_query_into(&junk, false, &mut out);
        assert!(out.starts_with("a=REDACTED&a=REDACTED&"), "{out}");
        assert!(out.ends_with("…[12000 bytes]"), "{out}");
        assert_eq!(out.len(), RECORD_QUERY_MAX + "…[12000 bytes]".len());
        let mut kept = String::new();
        let wide = "名=".repeat(500);
        record_query_into(&wide, true, &mut kept);
        assert!(kept.ends_with("…[2000 bytes]") && kept.len() <= RECORD_QUERY_MAX + 20, "{kept}");
        let mut short = String::new();
        record_query_into("id=42", false, &mut short);
        assert_eq!(short, "id=REDACTED");
        let mut short = String::new();
        record_query_into("id=42", true, &mut short);
        assert_eq!(short, "id=42");
        assert_eq!(redact_query("a=1=2"), "a=REDACTED");
        assert_eq!(redact_query(""), "");
    }

    /// The byte walk redacts as splitting at `&` and then at the first `=` does, for the
    /// shapes a client can send: empty parameters, a trailing or leading `&`, names without
    /// values, values with `=`, multi-byte characters, and long queries cut at the limit.
    #[test]
    fn the_redaction_walk_splits_as_str_split_does() {
        fn by_split(query: &str, limit: usize) -> String {
            let mut out = String::new();
            for (i, pair) in query.split('&').enumerate() {
                if out.len() > limit {
                    break;
                }
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((name, _)) => {
                        out.push_str(name);
                        out.push_str("=REDACTED");
                    }
                    None => out.push_str(pair),
                }
            }
            out
        }
        let long = format!("{}x", "名=値&a&&=b&".repeat(400));
        for query in ["", "&", "&&", "a", "a=", "=", "=b", "a=b&", "&a=b", "a&&b", "a=b=c&d", "名=値&鍵", long.as_str()]
        {
            for limit in [0, 3, 16, RECORD_QUERY_MAX] {
                let mut out = String::new();
                redact_query_upto(query, &mut out, limit);
                assert_eq!(out, by_split(query, limit), "{query:?} up to {limit}");
            }
        }
    }
}
