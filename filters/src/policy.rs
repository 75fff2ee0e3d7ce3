//! Policy (request path step 5): a default-deny Rego decision per route, evaluated
//! in-process with regorus. Policies are compiled once per config snapshot into an RVM
//! program; each worker thread keeps its own VM loaded with that program, so deciding
//! shares no lock between workers. The input document is built as regorus values
//! directly, never through JSON text.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use regorus::rvm::program::Program;
use regorus::rvm::RegoVM;
use regorus::utils::limits::ExecutionTimerConfig;

/// Longest a single decision may run before it is abandoned (and denied).
pub const EVALUATION_LIMIT: std::time::Duration = std::time::Duration::from_millis(5);
use edgegate_config::files;
use regorus::{Engine, Value};

use crate::identity::User;

/// The compiled policies of one snapshot.
pub struct PolicySet {
    program: Arc<Program>,
    data: Value,
    /// Files the set was built from, for reports.
    pub files: Vec<PathBuf>,
    /// The fields of `input.request` any policy reads, and whether one reads `input.source`
    /// (all of them when one reads `input` as a whole). Only the request fields read are
    /// built: when no policy reads the headers or the query — the costly part — they are
    /// not, and when policies read them by name only, only the entries named.
    pub request: RequestFields,
    /// Told apart from every other set this process compiles (a reload's set is a new
    /// one), so that a decision remembered under one set is never taken for another's.
    generation: u64,
    /// Why the set's decisions are not remembered, for `edgegate check`; `None` when every
    /// builtin the program calls gives the same result on the same arguments
    /// ([`PURE_BUILTINS`]) and no policy reads the request's headers or query other than
    /// by named entries: the set then decides the same on the same input, so its decisions
    /// may be remembered (keyed by the method, host, path, client address and the entries
    /// named too when a policy reads them).
    evaluates_each: Option<String>,
    /// Picks a remembered anonymous decision's slot ([`REMEMBERED_ANONYMOUS`]).
    slots: ahash::RandomState,
    /// The wall-clock limit of one decision ([`EVALUATION_LIMIT`]).
    limit: std::time::Duration,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet").field("files", &self.files).finish_non_exhaustive()
    }
}

/// Reads every `.rego` file of `dir` (not recursive) and `data.json` / `data.yaml` as the
/// `data` document into an engine. Errors name the file.
/// The rules the `.rego` files in `dir` define, as `data.<package>.<rule>` (test files and
/// `test_*` rules left out), read from the source text: rule heads start a line. For
/// messages that name what exists; the compiler stays the judge of what is valid.
pub fn rule_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.ends_with(".rego") || name.ends_with("_test.rego") {
            continue;
        }
        let Ok(text) = read_rego(&path) else { continue };
        let mut package = None;
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("package ") {
                package = Some(p.trim().to_owned());
                continue;
            }
            let head = line.strip_prefix("default ").unwrap_or(line);
            let ident: String = head.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let rest = head[ident.len()..].trim_start();
            let is_head = !ident.is_empty()
                && !ident.starts_with(|c: char| c.is_ascii_digit())
                && ident != "import"
                && !ident.starts_with("test_")
                && ["if", ":=", "=", "{", "[", "contains"].iter().any(|t| rest.starts_with(t));
            if let (true, Some(p)) = (is_head, &package) {
                let full = format!("data.{p}.{ident}");
                if !out.contains(&full) {
                    out.push(full);
                }
            }
        }
    }
    out.sort();
    out
}

/// A policy directory read into an engine.
pub struct PolicyDir {
    pub engine: Engine,
    /// Its `.rego` files, sorted.
    pub files: Vec<PathBuf>,
    /// The fields of `input.request` the policies other than `*_test.rego` files read (all
    /// of them when one reads `input` as a whole), judged from each file's text as read.
    pub request: RequestFields,
}

pub fn engine_for(dir: &Path) -> Result<PolicyDir, Vec<String>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| vec![format!("cannot read policy directory {}: {e}", dir.display())])?;
    // At most one entry past the bound is listed: a directory of millions is not walked.
    let mut files: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).take(files::DIRECTORY_ENTRIES + 1).collect();
    if files.len() > files::DIRECTORY_ENTRIES {
        return Err(vec![format!(
            "policy directory {} has more than {} entries",
            dir.display(),
            files::DIRECTORY_ENTRIES
        )]);
    }
    files.sort();
    let mut engine = Engine::new();
    let mut errors = Vec::new();
    let mut rego = Vec::new();
    let mut rego_bytes = 0u64;
    let mut request = RequestFields::default();
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let result = if name.ends_with(".rego") {
            rego.push(path.clone());
            match read_rego(path) {
                Ok(text) => {
                    // Each file's parse is bounded by its size; together they may not pass
                    // this, so that a directory of many files cannot hold a reload for long.
                    rego_bytes += text.len() as u64;
                    if rego_bytes > files::REGO_DIRECTORY {
                        errors.push(format!(
                            "{}: the Rego files of the directory pass {} MiB together",
                            path.display(),
                            files::REGO_DIRECTORY >> 20
                        ));
                        break;
                    }
                    // `*_test.rego` files hold `test_*` rules that feed their own inputs
                    // (`with input as …`); they are never a route's decision.
                    if !name.ends_with("_test.rego") {
                        request = request.union(request_fields(&text));
                    }
                    engine.add_policy(path.display().to_string(), text).map(|_| ()).map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            }
        } else if name == "data.json" || name == "data.yaml" || name == "data.yml" {
            data_document(path).and_then(|v| engine.add_data(v).map_err(|e| e.to_string()))
        } else {
            Ok(())
        };
        if let Err(e) = result {
            errors.push(format!("{}: {e}", path.display()));
        }
    }
    if rego.is_empty() && errors.is_empty() {
        errors.push(format!("no .rego files in {}", dir.display()));
    }
    if errors.is_empty() {
        Ok(PolicyDir { engine, files: rego, request })
    } else {
        Err(errors)
    }
}

/// A Rego file's text: a regular file of at most regorus' 1 MiB.
fn read_rego(path: &Path) -> Result<String, String> {
    files::read_text(path, files::REGO_FILE).map_err(|e| format!("cannot read: {e}"))
}

fn data_document(path: &Path) -> Result<Value, String> {
    let text = files::read_text(path, files::DATA_FILE).map_err(|e| format!("cannot read: {e}"))?;
    let json: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    } else {
        serde_yaml::from_str(&text).map_err(|e| e.to_string())?
    };
    Value::from_json_str(&json.to_string()).map_err(|e| e.to_string())
}

impl PolicySet {
    /// Compiles the policies of `dir` for the given decisions (rule paths such as
    /// `data.government.digital.allow`). Every decision must name an existing rule.
    pub fn load(dir: &Path, decisions: &[&str]) -> Result<PolicySet, Vec<String>> {
        let PolicyDir { mut engine, files, request } = engine_for(dir)?;
        let data = engine.get_data();
        let Some(first) = decisions.first() else {
            return Err(vec!["no route names a policy decision".into()]);
        };
        let entry: regorus::Rc<str> = (*first).into();
        let compiled = engine.compile_with_entrypoint(&entry).map_err(|e| vec![format!("{}: {e}", dir.display())])?;
        let program = regorus::languages::rego::compiler::Compiler::compile_from_policy(&compiled, decisions)
            .map_err(|e| vec![format!("{}: {e}", dir.display())])?;
        let impure: Vec<&str> = program
            .builtin_info_table
            .iter()
            .map(|b| b.name.as_str())
            .filter(|name| PURE_BUILTINS.binary_search(name).is_err())
            .collect();
        let evaluates_each = if !impure.is_empty() {
            Some(format!("they call {}, whose result is not fixed by its arguments", impure.join(", ")))
        } else if program.has_host_await {
            Some("they wait on the host".to_owned())
        } else if request.headers == Names::All || request.query == Names::All {
            Some("they read the request's headers or query other than entry by named entry".to_owned())
        } else {
            None
        };
        let generation = GENERATION.fetch_add(1, AtomicOrdering::Relaxed);
        Ok(PolicySet {
            program,
            data,
            files,
            request,
            generation,
            evaluates_each,
            slots: ahash::RandomState::new(),
            limit: EVALUATION_LIMIT,
        })
    }

    /// What `edgegate check` says of the set's decisions: remembered per verified token and
    /// for requests without one, or evaluated on every request and why.
    pub fn decisions_summary(&self) -> String {
        if let Some(why) = &self.evaluates_each {
            return format!("decided on every request: {why}");
        }
        let mut summary = "decisions are remembered for the same input, a verified token's with the token, \
                           a request's without one by each worker"
            .to_owned();
        // What the input holds of the headers and query, which a question is keyed by.
        for (what, names) in [("headers", &self.request.headers), ("query parameters", &self.request.query)] {
            if let Names::Named(names) = names {
                // A header that carries secrets is named in vain: it never enters the input.
                let shown: Vec<&str> = names.iter().map(|n| &**n).filter(|n| !HIDDEN_HEADERS.contains(n)).collect();
                if !shown.is_empty() {
                    summary.push_str(&format!("; the input's {what}: {}", shown.join(", ")));
                }
            }
        }
        summary
    }

    /// This set with another wall-clock limit per decision, for tests whose subject is not
    /// the limit (a debug build on a loaded machine can pass 5 ms on a first decision that
    /// loads time zones).
    #[doc(hidden)]
    pub fn with_limit(mut self, limit: std::time::Duration) -> PolicySet {
        self.limit = limit;
        self
    }

    /// Whether this set's decisions are remembered (see [`PolicySet::remembered`]): it
    /// calls only builtins whose result depends on their arguments alone, and no policy
    /// reads the request's headers or query other than by named entries.
    pub fn remembers(&self) -> bool {
        self.evaluates_each.is_none()
    }

    /// The decision this set made before for `user` — a verified user, or none — on the
    /// same question, when it remembers decisions. The rest of the input document — the
    /// action, the route, whether the connection is encrypted, whether the audit log
    /// accepts records, and the request's method, host and path, the headers and query
    /// parameters it names, and the client's address when a policy reads them — is part of
    /// the question, so any change to it is a new one. A user's decisions are kept with the
    /// user; those on requests without one by each worker thread, in
    /// [`REMEMBERED_ANONYMOUS`] slots.
    pub fn remembered(&self, user: Option<&User>, asked: &Asked<'_>) -> Option<bool> {
        if !self.remembers() {
            return None;
        }
        let named = self.named(asked);
        let asked = self.keyed(asked);
        let Some(user) = user else {
            return ANONYMOUS.with_borrow(|table| {
                let slot = table.slots.get(self.slot(&asked, &named))?.as_ref()?;
                slot.answers(self.generation, &asked, &named).then_some(slot.allowed)
            });
        };
        let answers = user.decisions.0.lock().ok()?;
        answers.iter().find(|a| a.answers(self.generation, &asked, &named)).map(|a| a.allowed)
    }

    /// The values of the headers and query parameters this set reads by name, as the input
    /// is built of them: each entry's name and value, length-prefixed (so that no two
    /// sequences of entries give the same text), the headers' then `|` then the query's.
    /// Empty when the set reads neither by name (the usual case: no allocation).
    fn named(&self, asked: &Asked<'_>) -> String {
        let by_name = |names: &Names| matches!(names, Names::Named(_));
        let (headers, query) = (&self.request.headers, &self.request.query);
        if !by_name(headers) && !by_name(query) {
            return String::new();
        }
        let mut text = String::new();
        let push = |text: &mut String, (name, value): (&str, &str)| {
            for part in [name, value] {
                text.push_str(itoa::Buffer::new().format(part.len()));
                text.push(':');
                text.push_str(part);
            }
        };
        if by_name(headers) {
            header_pairs(asked.headers, headers).for_each(|pair| push(&mut text, pair));
        }
        text.push('|');
        if by_name(query) {
            read_query_pairs(asked.query, query).for_each(|pair| push(&mut text, pair));
        }
        text
    }

    /// `asked` with the request's fields and the client address this set does not read
    /// left out (as empty, as none).
    fn keyed<'a>(&self, asked: &Asked<'a>) -> Asked<'a> {
        let read = |yes: bool, field: &'a str| if yes { field } else { "" };
        Asked {
            method: read(self.request.method, asked.method),
            host: read(self.request.host, asked.host),
            path: read(self.request.path, asked.path),
            ip: asked.ip.filter(|_| self.request.source),
            ..*asked
        }
    }

    /// The slot of this worker's table of anonymous decisions a (keyed) question takes.
    fn slot(&self, q: &Asked<'_>, named: &str) -> usize {
        let hash = self.slots.hash_one((q.decision, q.action, q.route, q.request(), named, q.encrypted, q.audit, q.ip));
        (hash % REMEMBERED_ANONYMOUS as u64) as usize
    }

    /// Remembers this set's decision for `user` (or for requests without one) on `asked`
    /// (a decision evaluated, never an error), when it remembers decisions: the user's
    /// oldest is forgotten past [`REMEMBERED_PER_USER`]; an anonymous decision takes its
    /// slot from whichever question held it.
    pub fn remember(&self, user: Option<&User>, asked: &Asked<'_>, allowed: bool) {
        if !self.remembers() {
            return;
        }
        let named = self.named(asked);
        let asked = &self.keyed(asked);
        if asked.request().iter().map(|f| f.len()).sum::<usize>() + named.len() > REMEMBERED_REQUEST_BYTES {
            return;
        }
        let answer = Answer {
            set: self.generation,
            decision: asked.decision.into(),
            action: asked.action.into(),
            route: asked.route.into(),
            request: asked.request().map(Box::from),
            named: named.as_str().into(),
            encrypted: asked.encrypted,
            audit: asked.audit,
            ip: asked.ip,
            allowed,
        };
        let Some(user) = user else {
            let slot = self.slot(asked, &named);
            ANONYMOUS.with_borrow_mut(|table| {
                if table.set != self.generation {
                    // The first anonymous decision of a new set: the last set's go.
                    table.set = self.generation;
                    table.slots.clear();
                    table.slots.resize_with(REMEMBERED_ANONYMOUS, || None);
                }
                if let Some(held) = table.slots.get_mut(slot) {
                    *held = Some(answer);
                }
            });
            return;
        };
        let Ok(mut answers) = user.decisions.0.lock() else { return };
        answers.retain(|a| a.set == self.generation && !a.answers(self.generation, asked, &named));
        if answers.len() >= REMEMBERED_PER_USER {
            answers.remove(0);
        }
        answers.push(answer);
    }

    /// Evaluates `decision` for `input`. Only a boolean `true` allows; anything else —
    /// false, undefined, another value, an error — is a deny (the error is returned so
    /// it can be counted and logged).
    ///
    /// A panic in the evaluation (a builtin's bug on some input) is an error too, not the
    /// end of the request's task with no answer: the worker's VM, which the panic may have
    /// left in any state, is dropped and built again at its next decision.
    pub fn allows(&self, decision: &str, input: Value) -> Result<bool, String> {
        unpanicked(|| self.evaluate(decision, input))
    }

    fn evaluate(&self, decision: &str, input: Value) -> Result<bool, String> {
        VM.with(|slot| {
            let mut slot = slot.borrow_mut();
            let fresh = !matches!(&*slot, Some((p, _)) if Arc::ptr_eq(p, &self.program));
            if fresh {
                let mut vm = RegoVM::new();
                // A runaway policy must not hold a worker: past the wall-clock limit (or
                // the VM's instruction budget) evaluation fails, and failure denies.
                vm.set_execution_timer_config(Some(ExecutionTimerConfig {
                    limit: self.limit,
                    check_interval: std::num::NonZeroU32::MIN.saturating_add(63),
                }));
                // A builtin's error (a value of the wrong type, a size past a bound) ends
                // the evaluation as an error, a deny with its reason, as `edgegate policy
                // test` evaluates; not undefined, which made `not f(x)` true for any `x`
                // whose `f` failed — whatever the client sent to make it fail.
                vm.set_strict_builtin_errors(true);
                vm.load_program(Arc::clone(&self.program));
                vm.set_data(self.data.clone()).map_err(|e| e.to_string())?;
                *slot = Some((Arc::clone(&self.program), vm));
            }
            let Some((_, vm)) = slot.as_mut() else { return Err("no policy VM".to_owned()) };
            vm.set_input(input);
            match vm.execute_entry_point_by_name(decision) {
                Ok(Value::Bool(b)) => Ok(b),
                Ok(_) => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// `evaluate`'s outcome, a panic in it an error: the worker's VM, which the panic may have
/// left in any state, is dropped (the next decision builds another).
fn unpanicked(evaluate: impl FnOnce() -> Result<bool, String>) -> Result<bool, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(evaluate)).unwrap_or_else(|_| {
        VM.with(|slot| slot.borrow_mut().take());
        Err("policy evaluation panicked".to_owned())
    })
}

/// Numbers the policy sets this process compiles.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The builtins whose result depends on their arguments alone (sorted). A policy set
/// that calls any other — the clock (`time.now_ns`), randomness (`rand.intn`,
/// `uuid.rfc4122`), output (`trace`), a pause (`test.sleep`), the network (`http.send`),
/// or a builtin not listed here (one a later regorus adds) — evaluates on every request.
pub const PURE_BUILTINS: &[&str] = &[
    "__builtin_sets.intersection",
    "__builtin_sets.union",
    "abs",
    "array.concat",
    "array.reverse",
    "array.slice",
    "base64.decode",
    "base64.encode",
    "base64.is_valid",
    "base64url.decode",
    "base64url.encode",
    "base64url.encode_no_pad",
    "bits.and",
    "bits.lsh",
    "bits.negate",
    "bits.or",
    "bits.rsh",
    "bits.xor",
    "ceil",
    "concat",
    "contains",
    "count",
    "endswith",
    "floor",
    "format_int",
    "glob.match",
    "glob.quote_meta",
    "graph.reachable",
    "graph.reachable_paths",
    "hex.decode",
    "hex.encode",
    "indexof",
    "indexof_n",
    "intersection",
    "is_array",
    "is_boolean",
    "is_null",
    "is_number",
    "is_object",
    "is_set",
    "is_string",
    "json.filter",
    "json.is_valid",
    "json.marshal",
    "json.marshal_with_options",
    "json.match_schema",
    "json.patch",
    "json.remove",
    "json.unmarshal",
    "json.verify_schema",
    "lower",
    "max",
    "min",
    "net.cidr_contains",
    "net.cidr_expand",
    "net.cidr_is_valid",
    "numbers.range",
    "numbers.range_step",
    "object.filter",
    "object.get",
    "object.keys",
    "object.remove",
    "object.subset",
    "object.union",
    "object.union_n",
    "product",
    "regex.find_n",
    "regex.globs_match",
    "regex.is_valid",
    "regex.match",
    "regex.replace",
    "regex.split",
    "regex.template_match",
    "replace",
    "round",
    "semver.compare",
    "semver.is_valid",
    "sort",
    "split",
    "sprintf",
    "startswith",
    "strings.any_prefix_match",
    "strings.any_suffix_match",
    "strings.count",
    "strings.replace_n",
    "strings.reverse",
    "substring",
    "sum",
    "time.add_date",
    "time.clock",
    "time.date",
    "time.diff",
    "time.format",
    "time.parse_duration_ns",
    "time.parse_ns",
    "time.parse_rfc3339_ns",
    "time.weekday",
    "to_number",
    "trim",
    "trim_left",
    "trim_prefix",
    "trim_right",
    "trim_space",
    "trim_suffix",
    "type_name",
    "union",
    "units.parse",
    "units.parse_bytes",
    "upper",
    "urlquery.decode",
    "urlquery.decode_object",
    "urlquery.encode",
    "urlquery.encode_object",
    "uuid.parse",
    "walk",
    "yaml.is_valid",
    "yaml.marshal",
    "yaml.unmarshal",
];

/// Decisions remembered per verified user at most (a citizen's requests go to a few
/// routes from one address); past it the oldest is forgotten.
pub const REMEMBERED_PER_USER: usize = 4;

/// Decisions on requests without a verified user (anonymous, or with a token that did not
/// verify, on an `identity: optional` route) each worker thread remembers at most: a table
/// of this many slots, a question's slot picked by a keyed hash of it. A question whose
/// slot another took since is evaluated again; each worker's table holds at most ~0.5 MiB.
pub const REMEMBERED_ANONYMOUS: usize = 1024;

/// The most bytes of method, host and path, and of the headers and query parameters a
/// policy reads by name, together a remembered decision keeps: a request with more is
/// evaluated each time, so that a token's decisions take a few hundred bytes at most.
pub const REMEMBERED_REQUEST_BYTES: usize = 256;

/// A decision's question, besides the user: every other field of the input document (of
/// the request section, what a set that remembers may read: method, host, path, and the
/// headers and query parameters it names) and the rule asked.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub decision: &'a str,
    pub action: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
    pub encrypted: bool,
    pub audit: bool,
    pub ip: Option<IpAddr>,
}

impl Asked<'_> {
    /// The request's method, host and path.
    fn request(&self) -> [&str; 3] {
        [self.method, self.host, self.path]
    }
}

/// One remembered decision: the set that made it, the question, the answer.
struct Answer {
    set: u64,
    decision: Box<str>,
    action: Box<str>,
    route: Box<str>,
    /// Method, host and path as the set read them (empty when it does not).
    request: [Box<str>; 3],
    /// The headers and query parameters the set reads by name (`PolicySet::named`).
    named: Box<str>,
    encrypted: bool,
    audit: bool,
    ip: Option<IpAddr>,
    allowed: bool,
}

impl Answer {
    fn answers(&self, set: u64, q: &Asked<'_>, named: &str) -> bool {
        self.set == set
            && self.encrypted == q.encrypted
            && self.audit == q.audit
            && self.ip == q.ip
            && same(&self.decision, q.decision)
            && same(&self.action, q.action)
            && same(&self.route, q.route)
            && same(&self.request[0], q.method)
            && same(&self.request[1], q.host)
            && same(&self.request[2], q.path)
            && same(&self.named, named)
    }
}

/// `a == b`, without comparing the bytes of two empty strings: an empty `Box<str>` points
/// at address 1, and glibc's `memcmp` for AVX-512 machines, asked to compare no bytes
/// there, makes a masked load whose fault is suppressed — a microcode assist that took
/// ~80 ns a comparison on an Intel Xeon (docs/benchmarks.md).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a.as_bytes() == b.as_bytes())
}

/// The decisions remembered for one verified user (kept with the verified token, so
/// forgotten with it).
#[derive(Default)]
pub struct Remembered(Mutex<Vec<Answer>>);

impl std::fmt::Debug for Remembered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |a| a.len());
        write!(f, "Remembered({n})")
    }
}

/// A copy of a user remembers nothing yet.
impl Clone for Remembered {
    fn clone(&self) -> Self {
        Remembered::default()
    }
}

/// What a user's requests were decided is not part of who the user is.
impl PartialEq for Remembered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

thread_local! {
    /// This worker's VM and the program it has loaded. A new snapshot's program is
    /// loaded on the first decision after a reload.
    static VM: RefCell<Option<(Arc<Program>, RegoVM)>> = const { RefCell::new(None) };
    /// This worker's decisions on requests without a user, for one set.
    static ANONYMOUS: RefCell<AnonymousAnswers> = const { RefCell::new(AnonymousAnswers { set: 0, slots: Vec::new() }) };
}

/// A worker's remembered decisions on requests without a user: the set that made them
/// (sets are numbered from 1) and [`REMEMBERED_ANONYMOUS`] slots, empty until the set's
/// first.
struct AnonymousAnswers {
    set: u64,
    slots: Vec<Option<Answer>>,
}

/// Which fields of `input.request` a policy reads, and whether it reads `input.source`
/// (the client's address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFields {
    pub method: bool,
    pub host: bool,
    pub path: bool,
    pub query: Names,
    pub headers: Names,
    /// `input.source`: not a request field, but read the same way.
    pub source: bool,
}

/// Which entries of a map of the input (the headers, the query) a policy reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Names {
    #[default]
    Unread,
    /// Only these, each by its name written out (`headers["x-channel"]`,
    /// `query.form`): sorted, each once. The map is built of these alone, and a decision
    /// on it may be remembered, keyed by their values.
    Named(Vec<Box<str>>),
    /// The map as a whole, or by names not written out (`headers[k]`): built whole, and
    /// decided on every request.
    All,
}

impl Names {
    /// Whether the map is built at all.
    pub fn is_read(&self) -> bool {
        !matches!(self, Names::Unread)
    }

    /// Whether an entry of this name is built.
    pub fn reads(&self, name: &str) -> bool {
        match self {
            Names::Unread => false,
            Names::Named(names) => names.binary_search_by(|n| (**n).cmp(name)).is_ok(),
            Names::All => true,
        }
    }

    fn add(&mut self, name: &str) {
        match self {
            Names::Unread => *self = Names::Named(vec![name.into()]),
            Names::Named(names) => {
                if let Err(at) = names.binary_search_by(|n| (**n).cmp(name)) {
                    names.insert(at, name.into());
                }
            }
            Names::All => {}
        }
    }

    fn union(self, other: Names) -> Names {
        match (self, other) {
            (Names::All, _) | (_, Names::All) => Names::All,
            (Names::Unread, n) | (n, Names::Unread) => n,
            (Names::Named(names), Names::Named(more)) => {
                let mut all = Names::Named(names);
                for name in &more {
                    all.add(name);
                }
                all
            }
        }
    }
}

impl RequestFields {
    /// Every field: what a policy gets that reads the request other than field by field.
    pub const ALL: RequestFields =
        RequestFields { method: true, host: true, path: true, query: Names::All, headers: Names::All, source: true };

    /// Whether the request section is built at all.
    pub fn any(&self) -> bool {
        self.method || self.host || self.path || self.query.is_read() || self.headers.is_read()
    }

    fn union(self, other: RequestFields) -> RequestFields {
        RequestFields {
            method: self.method || other.method,
            host: self.host || other.host,
            path: self.path || other.path,
            query: self.query.union(other.query),
            headers: self.headers.union(other.headers),
            source: self.source || other.source,
        }
    }
}

/// Which fields of `input.request` this policy source reads, and whether it reads
/// `input.source` (`input.source…` does): each `input.request.FIELD` names one;
/// `input.request` used otherwise (`input.request[f]`, `r := input.request`,
/// `import input.request as r`), or `input` other than through a fixed top-level field
/// (`input[x]`, `f(input)`, `import input`), reads them all. The headers and the query are
/// read by name when every use names its entry written out — `.name` or `["name"]` (a
/// string without escapes) — and whole otherwise (`headers[k]`, `count(headers)`,
/// `h := headers`). Conservative: when unsure, all.
pub fn request_fields(source: &str) -> RequestFields {
    let bytes = source.as_bytes();
    let ident = |from: usize| -> &str {
        let len = source[from..].bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
        &source[from..from + len]
    };
    let mut fields = RequestFields::default();
    let mut from = 0;
    while let Some(pos) = source[from..].find("input") {
        let at = from + pos;
        from = at + 5;
        let before = at.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
            continue; // part of another identifier or a field path
        }
        match bytes.get(at + 5) {
            Some(b'.') if ident(at + 6) == "request" => {
                let after = at + 6 + "request".len();
                let field = if bytes.get(after) == Some(&b'.') { ident(after + 1) } else { "" };
                // What follows `.query` / `.headers`: the entry it names, if written out.
                let entry = || {
                    let at = after + 1 + field.len();
                    match bytes.get(at) {
                        Some(b'.') => Some(ident(at + 1)).filter(|name| !name.is_empty()),
                        Some(b'[') if bytes.get(at + 1) == Some(&b'"') => {
                            let text = &source[at + 2..];
                            let end = text.find(['"', '\\'])?;
                            (text[end..].starts_with("\"]")).then(|| &text[..end])
                        }
                        _ => None,
                    }
                };
                let read = |names: &mut Names| match entry() {
                    Some(name) => names.add(name),
                    None => *names = Names::All,
                };
                match field {
                    "method" => fields.method = true,
                    "host" => fields.host = true,
                    "path" => fields.path = true,
                    "query" => read(&mut fields.query),
                    "headers" => read(&mut fields.headers),
                    // `input.request.other`: no such field, undefined whatever is built.
                    f if !f.is_empty() => {}
                    _ => return RequestFields::ALL,
                }
            }
            Some(b'.') if ident(at + 6) == "source" => fields.source = true,
            Some(b'.') => {}
            Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => continue, // e.g. `inputs`
            _ => return RequestFields::ALL,
        }
    }
    fields
}

/// What the gateway knows about a request, for the policy input document.
pub struct Request<'a> {
    pub action: &'a str,
    pub user: Option<&'a User>,
    pub data_encrypted: bool,
    pub audit_enabled: bool,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub route: &'a str,
    pub source_ip: Option<std::net::IpAddr>,
}

fn s(v: &str) -> Value {
    Value::from(v)
}

/// Claims as regorus values, without a detour through JSON text.
fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (None, Some(u), _) => Value::from(u),
            (None, None, Some(f)) => Value::from(f),
            _ => Value::Undefined,
        },
        serde_json::Value::String(t) => s(t),
        serde_json::Value::Array(items) => Value::from(items.iter().map(from_json).collect::<Vec<_>>()),
        serde_json::Value::Object(map) => {
            Value::from(map.iter().map(|(k, v)| (s(k), from_json(v))).collect::<BTreeMap<Value, Value>>())
        }
    }
}

/// The values of each name, those of a name given more than once joined by `sep` in their
/// order. A field or query parameter given more than once reaches the policy as all its
/// values, never as one of them: pods disagree on which one counts (the first, the last,
/// all), so a policy that allows on one value (`scope == "public"`) must not see `public`
/// when a pod may act on the `private` sent beside it. Fields are joined as HTTP combines
/// them (`, `).
///
/// The pairs are sorted by name (stably, so a name's values keep their order), grouped, and
/// the object made from the sorted groups as they are (`object`). Inserting each name into
/// a map by a search cost ~160 ns a name (regorus values compared at each step, the
/// tree's nodes split, then walked into the object and freed): a 16 KiB query of 2,000
/// distinct names took ~0.33 ms. A name's values are joined once, when its group is
/// complete, so a name sent n times stays linear (joining at each repetition copied n²
/// bytes).
fn grouped<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>, sep: &str) -> Value {
    let mut pairs: Vec<(u64, &str, &str)> = pairs.map(|(name, v)| (sort_key(name), name, v)).collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| if whole(a.0) { a.1.cmp(b.1) } else { Ordering::Equal }));
    let groups = pairs.chunk_by(|a, b| a.0 == b.0 && (!whole(a.0) || a.1 == b.1)).filter_map(|group| {
        let ((_, name, first), rest) = group.split_first()?;
        if rest.is_empty() {
            // A name without a value (`?debug`) shares one empty string.
            let value = if first.is_empty() { KEYS.empty.clone() } else { s(first) };
            return Some((s(name), value));
        }
        let mut all = String::with_capacity(group.iter().map(|(_, _, v)| v.len() + sep.len()).sum());
        all.push_str(first);
        for (_, _, v) in rest {
            all.push_str(sep);
            all.push_str(v);
        }
        Some((s(name), s(&all)))
    });
    object(groups.collect())
}

/// A name as a number in the order of its bytes: its first seven bytes big-endian and
/// zero-padded, then its length up to 8 in the low byte. A name shorter than eight bytes
/// is all in its number, so two such names are equal if and only if their numbers are and
/// are sorted by comparing two integers; longer names with the same first seven bytes are
/// compared by their bytes as well (`whole`). A shorter name sorts before a longer one it
/// begins, by the length, as bytes do. Comparing short names through `memcmp` was most of
/// the sort's time (a query of 4,096 two-letter names: ~50,000 calls).
fn sort_key(name: &str) -> u64 {
    let head = name.bytes().take(7).enumerate().fold(0, |word, (i, b)| word | u64::from(b) << (56 - 8 * i));
    head | name.len().min(8) as u64
}

/// Whether two names with the same `sort_key` may still differ (both eight bytes or longer).
fn whole(key: u64) -> bool {
    key & 0xff == 8
}

/// An object of entries in key order (`Value`'s order: strings by their bytes), taken as
/// they are (regorus patch 88), without the map that `Value::from(BTreeMap)` builds only to
/// walk into the same sorted slice and free. Entries out of order are sorted, so a mistake
/// costs time, never a wrong document.
fn object(entries: Vec<(Value, Value)>) -> Value {
    // Wrapped as it is: `into_value` would freeze the object again, a no-op here.
    Value::Object(regorus::Rc::new(regorus::value::Object::from_sorted(entries)))
}

/// A query's parameters as the policy sees them, each split at its first `=` (a name
/// without one has the value `""`); empty ones skipped.
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    crate::query::params(query).filter(|p| !p.pair.is_empty()).map(|p| (p.name(), p.value().unwrap_or("")))
}

/// The request's headers a policy sees, of those `names` says it reads: each a name and a
/// value, in the map's order; one that carries secrets never, nor a value that is not text.
fn header_pairs<'a>(headers: &'a http::HeaderMap, names: &'a Names) -> impl Iterator<Item = (&'a str, &'a str)> {
    let shown =
        headers.iter().filter(move |(name, _)| !HIDDEN_HEADERS.contains(&name.as_str()) && names.reads(name.as_str()));
    shown.filter_map(|(name, v)| Some((name.as_str(), v.to_str().ok()?)))
}

/// The query's parameters a policy sees ([`query_pairs`]), of those `names` says it reads.
fn read_query_pairs<'a>(query: Option<&'a str>, names: &'a Names) -> impl Iterator<Item = (&'a str, &'a str)> {
    query_pairs(query.unwrap_or("")).filter(move |(name, _)| names.reads(name))
}

/// Headers that carry secrets never enter the policy input (nor its logs).
const HIDDEN_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

struct Keys {
    action: Value,
    user: Value,
    id: Value,
    role: Value,
    claims: Value,
    data_encrypted: Value,
    audit: Value,
    /// `input.audit` whole, for each state: the same two documents on every request.
    audit_on: Value,
    audit_off: Value,
    request: Value,
    method: Value,
    host: Value,
    path: Value,
    query: Value,
    headers: Value,
    route: Value,
    source: Value,
    ip: Value,
    /// `""`: the value of a query parameter sent without one, shared.
    empty: Value,
}

/// The document's field names, allocated once rather than per request.
static KEYS: std::sync::LazyLock<Keys> = std::sync::LazyLock::new(|| Keys {
    action: s("action"),
    user: s("user"),
    id: s("id"),
    role: s("role"),
    claims: s("claims"),
    data_encrypted: s("data_encrypted"),
    audit: s("audit"),
    audit_on: audit_section(true),
    audit_off: audit_section(false),
    request: s("request"),
    method: s("method"),
    host: s("host"),
    path: s("path"),
    query: s("query"),
    headers: s("headers"),
    route: s("route"),
    source: s("source"),
    ip: s("ip"),
    empty: s(""),
});

/// `input.user` for a verified citizen: the `sub` claim as `id`, the role claim as `role`
/// (when it is a string), and every claim as `claims`.
pub(crate) fn user_input(id: &str, role: Option<&str>, claims: &serde_json::Map<String, serde_json::Value>) -> Value {
    let k = &*KEYS;
    let mut user = BTreeMap::new();
    user.insert(k.id.clone(), s(id));
    if let Some(role) = role {
        user.insert(k.role.clone(), s(role));
    }
    let claims: BTreeMap<Value, Value> = claims.iter().map(|(k, v)| (s(k), from_json(v))).collect();
    user.insert(k.claims.clone(), Value::from(claims));
    Value::from(user)
}

fn audit_section(enabled: bool) -> Value {
    Value::from(BTreeMap::from([(s("enabled"), Value::from(enabled))]))
}

/// The input document (docs/configuration.md, "Access"), built directly as regorus values,
/// its request section with the `fields` the policies read (none: no section).
pub fn input(r: &Request<'_>, fields: &RequestFields) -> Value {
    let k = &*KEYS;
    // The fields in their order as keys (`Value`'s string order), as `object` takes them.
    let mut doc = Vec::with_capacity(7);
    doc.push((k.action.clone(), s(r.action)));
    doc.push((k.audit.clone(), if r.audit_enabled { k.audit_on.clone() } else { k.audit_off.clone() }));
    doc.push((k.data_encrypted.clone(), Value::from(r.data_encrypted)));
    if fields.any() {
        // In key order, as `object` takes them.
        let mut request = Vec::with_capacity(5);
        if fields.headers.is_read() {
            request.push((k.headers.clone(), grouped(header_pairs(r.headers, &fields.headers), ", ")));
        }
        for (read, key, value) in
            [(fields.host, &k.host, r.host), (fields.method, &k.method, r.method), (fields.path, &k.path, r.path)]
        {
            if read {
                request.push((key.clone(), s(value)));
            }
        }
        if fields.query.is_read() {
            request.push((k.query.clone(), grouped(read_query_pairs(r.query, &fields.query), ",")));
        }
        doc.push((k.request.clone(), object(request)));
    }
    doc.push((k.route.clone(), s(r.route)));
    let source = match r.source_ip {
        Some(ip) => vec![(k.ip.clone(), s(crate::addr::ip_str(ip, &mut [0u8; 64])))],
        None => Vec::new(),
    };
    doc.push((k.source.clone(), object(source)));
    if let Some(u) = r.user {
        // Built when the token was verified, and shared by every request that sends it.
        doc.push((k.user.clone(), u.input().clone()));
    }
    object(doc)
}

/// One `test_*` rule's outcome, as `opa test` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub name: String,
    pub passed: bool,
    pub error: Option<String>,
}

/// Runs every `test_*` rule of the policies in `dir`: a test passes when it evaluates
/// to `true`.
pub fn run_tests(dir: &Path) -> Result<Vec<TestResult>, Vec<String>> {
    let PolicyDir { mut engine, files, .. } = engine_for(dir)?;
    let mut results = Vec::new();
    for file in &files {
        let text = read_rego(file).map_err(|e| vec![format!("{}: {e}", file.display())])?;
        let Some(package) = text.lines().find_map(|l| l.trim().strip_prefix("package ")).map(str::trim) else {
            continue;
        };
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| {
                let name = l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next()?;
                name.starts_with("test_").then_some(name)
            })
            .collect();
        names.dedup();
        for name in names {
            let rule = format!("data.{package}.{name}");
            let (passed, error) = match engine.eval_rule(rule.clone()) {
                Ok(Value::Bool(true)) => (true, None),
                Ok(_) => (false, None),
                Err(e) => (false, Some(e.to_string())),
            };
            results.push(TestResult { name: rule, passed, error });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests;
