//! Structured logs through `tracing`: JSON lines when stdout is not a terminal (what
//! a log collector wants), human-readable otherwise. Writes go through a background
//! thread so the request path never blocks on stdout. Pingora's own `log` records are
//! bridged in. `EDGEGATE_LOG` (EnvFilter syntax) sets the level; default `info`.
//!
//! The queue to that thread holds at most [`LOG_BUFFER_LINES`] lines; a line beyond them
//! is dropped and counted (`edgegate_log_lines_dropped_total`) rather than blocking a
//! request. Its memory is taken as lines queue up and given back as they are written: a
//! queue of fixed slots would write every slot at start (16,384 slots, 128 pages faulted in
//! before the first request) to hold what is, most of the time, no line at all.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, SystemTime};

use prometheus::proto::MetricType;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::metrics::family::{ScrapeCollector, Spec};

/// Most lines waiting for the writer thread (~0.3 s of access log at 50,000 requests/s).
pub const LOG_BUFFER_LINES: usize = 16_384;

/// How long [`flush`] waits for the writer thread to write what is queued.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Lines dropped because the queue was full, since start.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The installed writer, and whether its lines are JSON (stdout is not a terminal).
static INSTALLED: OnceLock<(LineQueue, bool)> = OnceLock::new();

enum Message {
    Line(Vec<u8>),
    /// Write everything queued before this, flush, answer and stop.
    Stop(mpsc::Sender<()>),
}

/// The sending side: a `tracing` writer that queues each formatted event as one line.
#[derive(Clone)]
pub struct LineQueue {
    tx: mpsc::Sender<Message>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl LineQueue {
    /// A queue of at most `limit` lines and the thread that writes them to `out`.
    pub fn spawn(out: impl Write + Send + 'static, limit: usize) -> std::io::Result<LineQueue> {
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&queued);
        std::thread::Builder::new().name("log-writer".into()).spawn(move || write_lines(rx, &counted, out))?;
        Ok(LineQueue { tx, queued, limit })
    }

    /// Asks the writer thread to write what is queued and stop; true when it did so
    /// within `within`.
    pub fn stop(&self, within: Duration) -> bool {
        let (ack, done) = mpsc::channel();
        self.tx.send(Message::Stop(ack)).is_ok() && done.recv_timeout(within).is_ok()
    }

    fn push(&self, line: &[u8]) {
        if self.take_room() {
            self.send(line.to_vec());
        }
    }

    /// Queues a whole line (newline included) without copying it.
    pub fn push_line(&self, line: Vec<u8>) {
        if self.take_room() {
            self.send(line);
        }
    }

    fn take_room(&self) -> bool {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn send(&self, line: Vec<u8>) {
        if self.tx.send(Message::Line(line)).is_err() {
            // The writer thread is gone (stopped at exit): nothing will write it.
            self.queued.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Write for &LineQueue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LineQueue {
    type Writer = &'a LineQueue;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// After a pass that wrote lines the writer thread rests this long before the next, so
/// that under load a pass takes many lines in a few writes and no request has to wake it;
/// when a pass finds nothing queued it waits for the next line instead (one wake-up after
/// each quiet spell, none while idle).
const WRITE_EVERY: Duration = Duration::from_millis(10);

/// The writer thread's buffer: a pass's lines go out in writes of up to this much.
const WRITE_BUFFER: usize = 64 * 1024;

/// The writer thread: writes what is queued in passes [`WRITE_EVERY`] apart, flushing
/// after each.
fn write_lines(rx: mpsc::Receiver<Message>, queued: &AtomicUsize, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, out);
    let stopped = 'serve: loop {
        let Ok(first) = rx.recv() else { break None };
        let mut next = Some(first);
        loop {
            while let Some(message) = next {
                match message {
                    Message::Line(line) => {
                        queued.fetch_sub(1, Ordering::Relaxed);
                        // A closed or failing stdout loses the line; there is nowhere to report it.
                        let _ = out.write_all(&line);
                    }
                    Message::Stop(ack) => break 'serve Some(ack),
                }
                next = rx.try_recv().ok();
            }
            let _ = out.flush();
            std::thread::sleep(WRITE_EVERY);
            match rx.try_recv() {
                Ok(message) => next = Some(message),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => break 'serve None,
            }
        }
    };
    let _ = out.flush();
    // Closed before answering: a line sent after the answer fails and is counted as dropped.
    drop(rx);
    if let Some(ack) = stopped {
        let _ = ack.send(());
    }
}

pub fn init() {
    let writer = match LineQueue::spawn(std::io::stdout(), LOG_BUFFER_LINES) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("edgegate: cannot start the log writer thread: {e}");
            return;
        }
    };
    let filter = EnvFilter::try_from_env("EDGEGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer.clone());
    let json = !std::io::stdout().is_terminal();
    let result = if json {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    } else {
        builder.compact().try_init()
    };
    if let Err(e) = result {
        eprintln!("edgegate: logging already initialised: {e}");
        writer.stop(FLUSH_WAIT);
        return;
    }
    let _ = INSTALLED.set((writer, json));
}

/// Writes out queued log lines (waiting up to a second); call before the process exits.
/// Later calls return at once: the writer thread has stopped.
pub fn flush() {
    if let Some((writer, _)) = INSTALLED.get() {
        writer.stop(FLUSH_WAIT);
    }
}

/// Where lines built with [`JsonLine`] go: `Some` once [`init`] has set up JSON lines
/// (stdout not a terminal); `None` otherwise, and the caller logs through `tracing`.
pub fn json_lines() -> Option<&'static LineQueue> {
    INSTALLED.get().and_then(|(writer, json)| json.then_some(writer))
}

/// A JSON log line written field by field, in the shape `tracing`'s JSON lines have
/// (`timestamp`, `level`, the fields in order, `target`), for the line written per
/// request: through `tracing`'s formatter the access-log line cost ~29,000 instructions
/// (field visitors, a serializer, the event's dispatch), ~6,500 this way (callgrind,
/// writer thread included).
/// Keys are the caller's literals; values are escaped as JSON strings by the escaper the
/// audit record's text uses (`edgegate_filters::json`), which writes every control character
/// as `\u00XX` where `tracing` writes `\n`, `\r` and `\t` — the same JSON.
pub struct JsonLine {
    buf: String,
}

impl JsonLine {
    /// A line at level INFO, stamped now (UTC, microseconds, as `tracing` stamps them).
    pub fn info() -> JsonLine {
        let mut buf = String::with_capacity(384);
        buf.push_str("{\"timestamp\":\"");
        let _ = std::fmt::Write::write_fmt(
            &mut buf,
            format_args!("{}", humantime::format_rfc3339_micros(SystemTime::now())),
        );
        buf.push_str("\",\"level\":\"INFO\"");
        JsonLine { buf }
    }

    fn key(&mut self, key: &'static str) {
        self.buf.push_str(",\"");
        self.buf.push_str(key);
        self.buf.push_str("\":");
    }

    pub fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        edgegate_filters::json::push_string(&mut self.buf, value);
    }

    /// A value written by its `Display`, as a JSON string (formatted first: the rare
    /// fields — an error, a client that is not an IPv4 address — take this way).
    pub fn display(&mut self, key: &'static str, value: impl Display) {
        self.str(key, &value.to_string());
    }

    pub fn u64(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.buf.push_str(itoa::Buffer::new().format(value));
    }

    /// An address as a JSON string, as `SocketAddr`'s `Display` writes it; an IPv4 one
    /// without the formatting machinery.
    pub fn socket(&mut self, key: &'static str, addr: std::net::SocketAddr) {
        let std::net::SocketAddr::V4(v4) = addr else { return self.display(key, addr) };
        self.key(key);
        self.buf.push('"');
        let mut ip = [0u8; 64];
        // ASCII digits and dots.
        let ip = edgegate_filters::addr::format_ip(std::net::IpAddr::V4(*v4.ip()), &mut ip);
        self.buf.extend(ip.iter().map(|&b| char::from(b)));
        self.buf.push(':');
        self.buf.push_str(itoa::Buffer::new().format(v4.port()));
        self.buf.push('"');
    }

    /// The line, closed with its target and a newline.
    pub fn finish(mut self, target: &'static str) -> Vec<u8> {
        self.str("target", target);
        self.buf.push_str("}\n");
        self.buf.into_bytes()
    }
}

static SPECS: [Spec; 1] = [Spec {
    name: "edgegate_log_lines_dropped_total",
    help: "Log lines (access log included) dropped because the writer thread had fallen 16384 lines behind stdout",
    kind: MetricType::COUNTER,
    labels: &[],
}];

/// The dropped-lines counter, read at scrape time.
pub fn collector() -> ScrapeCollector {
    ScrapeCollector::values(&SPECS, || [DROPPED.load(Ordering::Relaxed) as f64])
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A writer that holds every line until the test lets it go.
    struct Gate {
        open: Arc<Mutex<()>>,
        lines: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            self.lines.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_beyond_the_bound_are_dropped_and_counted_and_the_rest_are_written_in_order() {
        let open = Arc::new(Mutex::new(()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let closed = open.lock().expect("gate");
        // The writer's buffer holds four lines of 16 KiB; the fifth makes it write, and it is
        // stuck in the gate with at most five lines taken off the queue.
        let queue =
            LineQueue::spawn(Gate { open: Arc::clone(&open), lines: Arc::clone(&lines) }, 4).expect("writer thread");
        let dropped_before = DROPPED.load(Ordering::Relaxed);
        let line = |i: usize| {
            let mut l = format!("{i:04}").into_bytes();
            l.resize(WRITE_BUFFER / 4 - 1, b'.');
            l.push(b'\n');
            l
        };
        for i in 0..40 {
            (&queue).write_all(&line(i)).expect("queued");
        }
        // The thread takes lines off while the test writes, so how many were dropped
        // depends on timing: at least 40 - 4 queued - 5 taken, and never none.
        std::thread::sleep(Duration::from_millis(50));
        let dropped = DROPPED.load(Ordering::Relaxed) - dropped_before;
        assert!(dropped >= 40 - 4 - 5, "dropped {dropped}");
        drop(closed);
        assert!(queue.stop(Duration::from_secs(5)), "the writer thread stopped and answered");
        let written = lines.lock().expect("lines").clone();
        let kept: Vec<usize> = written
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| std::str::from_utf8(&l[..4]).ok().and_then(|n| n.parse().ok()).expect("numbered line"))
            .collect();
        assert_eq!(kept.len() as u64 + dropped, 40, "every line written or counted as dropped");
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "written in order: {kept:?}");
        assert_eq!(kept[0], 0, "the first lines are kept, later ones dropped");
        // After stop nothing writes: a line is counted as dropped, not lost silently.
        (&queue).write_all(&line(99)).expect("counted");
        assert!(DROPPED.load(Ordering::Relaxed) - dropped_before > dropped);
    }

    /// Values a client controls (a raw path, a Host header) with every character JSON
    /// must escape, and some it must not.
    const HOSTILE: [&str; 6] = [
        "/api/a\"b\\c%ZZ",
        "x\"y\",\"status\":200,\"z\":\"",
        "line\nbreak\rreturn\ttab",
        "\u{0}\u{1}\u{8}\u{c}\u{1b}\u{1f}",
        "/caf\u{e9}/\u{4e2d}\u{6587}/\u{1f600}",
        "\\\"\\\"",
    ];

    #[test]
    fn a_json_line_holds_each_hostile_value_exactly_and_nothing_else() {
        for value in HOSTILE {
            let mut line = JsonLine::info();
            line.str("path", value);
            line.display("error", format_args!("upstream said {value}"));
            line.u64("status", 400);
            let bytes = line.finish("edgegate::access");
            assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1, "one line: {bytes:?}");
            assert!(bytes.ends_with(b"}\n"));
            let parsed: serde_json::Value = serde_json::from_slice(&bytes).expect("valid JSON");
            let object = parsed.as_object().expect("an object");
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            assert_eq!(keys.len(), 6, "no key smuggled in through a value: {keys:?}");
            assert_eq!(object["path"], *value);
            assert_eq!(object["error"], format!("upstream said {value}"));
            assert_eq!(object["status"], 400);
            assert_eq!(object["level"], "INFO");
            assert_eq!(object["target"], "edgegate::access");
        }
    }

    /// The line `tracing`'s JSON formatter writes for the same event, as the gateway sets
    /// it up (`flatten_event`, no current span).
    fn through_tracing(path: &str, status: u16) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Captured(Arc::clone(&sink)))
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "edgegate::access", request_id = "r-1", path, status, client = %"127.0.0.1:9");
        });
        let bytes = out.lock().expect("captured").clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("captured").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_line_has_the_keys_order_and_values_tracing_gives_the_same_event() {
        for value in HOSTILE {
            let expected_text = through_tracing(value, 404);
            let expected: serde_json::Value =
                serde_json::from_str(&expected_text).expect("tracing wrote one JSON line");
            let mut line = JsonLine::info();
            line.str("request_id", "r-1");
            line.str("path", value);
            line.u64("status", 404);
            line.display("client", "127.0.0.1:9");
            let bytes = line.finish("edgegate::access");
            let ours: serde_json::Value = serde_json::from_slice(&bytes).expect("valid JSON");
            let keys = |v: &serde_json::Value| v.as_object().expect("object").keys().cloned().collect::<Vec<_>>();
            // serde_json's map keeps keys sorted, so compare the text's order separately.
            let order = |text: &str| {
                let mut at: Vec<(usize, String)> =
                    keys(&ours).into_iter().map(|k| (text.find(&format!("\"{k}\":")).expect("key"), k)).collect();
                at.sort();
                at.into_iter().map(|(_, k)| k).collect::<Vec<_>>()
            };
            assert_eq!(keys(&ours), keys(&expected));
            for key in ["level", "request_id", "path", "status", "client", "target"] {
                assert_eq!(ours[key], expected[key], "{key}");
            }
            let ours_text = String::from_utf8(bytes).expect("UTF-8");
            assert_eq!(order(&ours_text), order(&expected_text));
            assert_eq!(order(&ours_text), ["timestamp", "level", "request_id", "path", "status", "client", "target"]);
            // Both stamp UTC with microseconds: 2026-12-02T13:38:11.445547Z.
            for stamp in [&ours["timestamp"], &expected["timestamp"]] {
                let t = stamp.as_str().expect("a string");
                assert_eq!(t.len(), 27, "{t}");
                assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.', "{t}");
                assert!(humantime::parse_rfc3339(t).is_ok(), "{t}");
            }
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for addr in ["127.0.0.1:9", "10.42.0.15:65535", "255.255.255.255:80", "[2001:db8::1]:443", "[::ffff:1.2.3.4]:1"]
        {
            let addr: std::net::SocketAddr = addr.parse().expect("address");
            let mut line = JsonLine::info();
            line.socket("client", addr);
            let parsed: serde_json::Value = serde_json::from_slice(&line.finish("t")).expect("JSON");
            assert_eq!(parsed["client"], addr.to_string());
        }
    }

    #[test]
    fn stop_writes_everything_queued_before_it() {
        let open = Arc::new(Mutex::new(()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let queue = LineQueue::spawn(Gate { open, lines: Arc::clone(&lines) }, 1_000).expect("writer thread");
        for i in 0..500 {
            (&queue).write_all(format!("line {i}\n").as_bytes()).expect("queued");
        }
        assert!(queue.stop(Duration::from_secs(5)));
        let written = String::from_utf8(lines.lock().expect("lines").clone()).expect("UTF-8");
        assert_eq!(written.lines().count(), 500);
        assert_eq!(written.lines().last(), Some("line 499"));
    }
}
