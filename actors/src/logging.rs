//! Installs the process's `tracing` subscriber from `[log]` (an EnvFilter directive, text or
//! JSON lines on stderr, the connection span's fields on every event inside it) and applies
//! a reloaded `[log]` to it live. Must never panic when a subscriber is already set, nor
//! when the format changes while spans are open.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use siprox::config::{LogConfig, LogFormat};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// What a reload changes in the installed subscriber.
struct Live {
    filter: reload::Handle<EnvFilter, Registry>,
    /// Both formatters stay installed and one is switched on: a JSON layer that appeared
    /// after a span was opened would not find its fields on that span (and would panic).
    text: Arc<AtomicBool>,
    json: Arc<AtomicBool>,
    /// The `[log]` in force.
    current: Mutex<LogConfig>,
}

static LIVE: OnceLock<Live> = OnceLock::new();

/// An event format that writes nothing while switched off.
struct Switch<F> {
    inner: F,
    on: Arc<AtomicBool>,
}

impl<S, N, F> FormatEvent<S, N> for Switch<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if !self.on.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber; `false` when one was already installed (tests) or the
/// filter does not parse (config validation already refuses such a filter).
pub fn init(cfg: &LogConfig) -> bool {
    let Ok(filter) = EnvFilter::try_new(&cfg.level) else {
        return false;
    };
    let (filter, handle) = reload::Layer::new(filter);
    let text_on = Arc::new(AtomicBool::new(cfg.format == LogFormat::Text));
    let json_on = Arc::new(AtomicBool::new(cfg.format == LogFormat::Json));
    // Colour codes only for a person at a terminal, never into journald or a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .map_event_format(|f| Switch {
            inner: f,
            on: text_on.clone(),
        });
    let json = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .map_event_format(|f| Switch {
            inner: f,
            on: json_on.clone(),
        });
    let installed = Registry::default()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .is_ok();
    if installed {
        let _ = LIVE.set(Live {
            filter: handle,
            text: text_on,
            json: json_on,
            current: Mutex::new(cfg.clone()),
        });
    }
    installed
}

/// Applies a reloaded `[log]` to the installed subscriber: `Ok(true)` when it changed
/// something, `Ok(false)` when it was already in force or no subscriber of ours is installed
/// (a runtime embedded in a test), `Err` with the reason when the level does not parse
/// (the running level stays).
pub fn apply(cfg: &LogConfig) -> Result<bool, String> {
    let Some(live) = LIVE.get() else {
        return Ok(false);
    };
    let Ok(mut current) = live.current.lock() else {
        return Ok(false);
    };
    if *current == *cfg {
        return Ok(false);
    }
    if current.level != cfg.level {
        let filter = EnvFilter::try_new(&cfg.level)
            .map_err(|e| format!("[log] level `{}`: {e}", cfg.level))?;
        live.filter
            .reload(filter)
            .map_err(|e| format!("[log] level: {e}"))?;
    }
    live.text
        .store(cfg.format == LogFormat::Text, Ordering::Relaxed);
    live.json
        .store(cfg.format == LogFormat::Json, Ordering::Relaxed);
    *current = cfg.clone();
    Ok(true)
}
