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

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

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

/// The installed writer, kept for [`flush`].
static INSTALLED: Mutex<Option<LineQueue>> = Mutex::new(None);

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
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.send(Message::Line(line.to_vec())).is_err() {
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

/// The writer thread: writes lines as they come, flushing whenever the queue is empty.
fn write_lines(rx: mpsc::Receiver<Message>, queued: &AtomicUsize, out: impl Write) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    // A closed or failing stdout loses the line; there is nowhere to report it.
                    let _ = out.write_all(&line);
                }
                Message::Stop(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
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
    let result = if std::io::stdout().is_terminal() {
        builder.compact().try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    };
    if let Err(e) = result {
        eprintln!("edgegate: logging already initialised: {e}");
        writer.stop(FLUSH_WAIT);
        return;
    }
    if let Ok(mut slot) = INSTALLED.lock() {
        *slot = Some(writer);
    }
}

/// Writes out queued log lines (waiting up to a second); call before the process exits.
pub fn flush() {
    let writer = INSTALLED.lock().ok().and_then(|mut slot| slot.take());
    if let Some(writer) = writer {
        writer.stop(FLUSH_WAIT);
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
    ScrapeCollector::new(&SPECS, || {
        let mut dropped = SPECS[0].family();
        dropped.push(&[], DROPPED.load(Ordering::Relaxed) as f64);
        vec![dropped.finish()]
    })
}

#[cfg(test)]
mod tests {
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
        let closed = open.lock().unwrap();
        // BufWriter holds 8 KiB before it writes: lines of 1 KiB fill it after 8, so the
        // writer thread is stuck in the gate with at most ~9 lines taken off the queue.
        let queue = LineQueue::spawn(Gate { open: Arc::clone(&open), lines: Arc::clone(&lines) }, 4).unwrap();
        let dropped_before = DROPPED.load(Ordering::Relaxed);
        let line = |i: usize| {
            let mut l = format!("{i:04}").into_bytes();
            l.resize(1023, b'.');
            l.push(b'\n');
            l
        };
        for i in 0..40 {
            (&queue).write_all(&line(i)).unwrap();
        }
        // The thread takes lines off while the test writes, so how many were dropped
        // depends on timing: at least 40 - 4 queued - 9 taken, and never none.
        std::thread::sleep(Duration::from_millis(50));
        let dropped = DROPPED.load(Ordering::Relaxed) - dropped_before;
        assert!(dropped >= 40 - 4 - 9, "dropped {dropped}");
        drop(closed);
        assert!(queue.stop(Duration::from_secs(5)), "the writer thread stopped and answered");
        let written = lines.lock().unwrap().clone();
        let kept: Vec<usize> = written
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| std::str::from_utf8(&l[..4]).unwrap().parse().unwrap())
            .collect();
        assert_eq!(kept.len() as u64 + dropped, 40, "every line written or counted as dropped");
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "written in order: {kept:?}");
        assert_eq!(kept[0], 0, "the first lines are kept, later ones dropped");
        // After stop nothing writes: a line is counted as dropped, not lost silently.
        (&queue).write_all(&line(99)).unwrap();
        assert!(DROPPED.load(Ordering::Relaxed) - dropped_before > dropped);
    }

    #[test]
    fn stop_writes_everything_queued_before_it() {
        let open = Arc::new(Mutex::new(()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let queue = LineQueue::spawn(Gate { open, lines: Arc::clone(&lines) }, 1_000).unwrap();
        for i in 0..500 {
            (&queue).write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(queue.stop(Duration::from_secs(5)));
        let written = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count(), 500);
        assert_eq!(written.lines().last(), Some("line 499"));
    }
}
