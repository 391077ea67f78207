//! Captures the WARN and ERROR events that siprox (running in this test process) logs
//! through `tracing`, so tests can assert "no error in the log". Installs one global
//! subscriber per test binary; must never swallow a test's own panic output.
//!
//! `SIPROX_TEST_LOG=<filter>` (e.g. `debug`) also prints events to the test's output.

use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter::LevelFilter, EnvFilter};

/// One captured event.
#[derive(Debug, Clone)]
pub struct Logged {
    pub level: Level,
    pub target: String,
    /// The message and the fields, `name=value` separated by spaces.
    pub text: String,
}

static EVENTS: Mutex<Vec<Logged>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<bool> = OnceLock::new();

struct Capture;

#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        } else {
            self.0.push_str(&format!("{}={value:?}", field.name()));
        }
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut t = Text::default();
        event.record(&mut t);
        let mut ev = EVENTS.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a runaway logger must not eat the test's memory.
        if ev.len() < 100_000 {
            ev.push(Logged {
                level: *event.metadata().level(),
                target: event.metadata().target().to_owned(),
                text: t.0,
            });
        }
    }
}

/// Install the capturing subscriber (idempotent). Returns false when another global
/// subscriber was installed first (then nothing is captured).
pub fn install() -> bool {
    install_at(LevelFilter::WARN)
}

/// [`install`] capturing from `level` up (e.g. INFO, for a test of what siprox logs at
/// INFO). The first install in a test binary sets the level.
pub fn install_at(level: LevelFilter) -> bool {
    *INSTALLED.get_or_init(|| {
        let print = std::env::var("SIPROX_TEST_LOG").ok().map(|f| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(EnvFilter::new(f))
        });
        tracing_subscriber::registry()
            .with(Capture.with_filter(level))
            .with(print)
            .try_init()
            .is_ok()
    })
}

/// Every captured event at `level` or more severe.
pub fn at_least(level: Level) -> Vec<Logged> {
    EVENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|e| e.level <= level)
        .cloned()
        .collect()
}

/// Captured ERROR events.
pub fn errors() -> Vec<Logged> {
    at_least(Level::ERROR)
}
