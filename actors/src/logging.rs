//! Installs the process's `tracing` subscriber from `[log]`: an EnvFilter directive and text
//! or JSON lines on stderr, with the connection span's fields (`conn.id`, `peer`,
//! `transport`) on every event inside it. Must never panic when a subscriber is already set.

use siprox::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `false` when one was already installed (tests) or the
/// filter does not parse (config validation already refuses such a filter).
pub fn init(cfg: &LogConfig) -> bool {
    let Ok(filter) = EnvFilter::try_new(&cfg.level) else {
        return false;
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into journald or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cfg.format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
            .is_ok(),
    }
}
