//! Structured logs through `tracing`: JSON lines when stdout is not a terminal (what
//! a log collector wants), human-readable otherwise. Writes go through a background
//! thread so the request path never blocks on stdout. Pingora's own `log` records are
//! bridged in. `EDGEGATE_LOG` (EnvFilter syntax) sets the level; default `info`.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

const LOG_BUFFER_LINES: usize = 16_384;

pub fn init() {
    // 16k lines of buffer (the default 128k costs ~4 MiB of memory touched at start);
    // lines beyond it are dropped rather than blocking a request.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .finish(std::io::stdout());
    let filter = EnvFilter::try_from_env("EDGEGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let result = if std::io::stdout().is_terminal() {
        builder.compact().try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    };
    if let Err(e) = result {
        eprintln!("edgegate: logging already initialised: {e}");
    }
    if let Ok(mut slot) = GUARD.lock() {
        *slot = Some(guard);
    }
}

/// Writes out buffered log lines; call before the process exits.
pub fn flush() {
    if let Ok(mut slot) = GUARD.lock() {
        slot.take();
    }
}
