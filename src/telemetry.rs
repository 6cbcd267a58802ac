//! Logging: `RUST_LOG` filters, `CHATPOOL_LOG_FORMAT` picks pretty or JSON lines.
//!
//! Whatever `RUST_LOG` says, other crates log at most at `info`: below it the
//! PostgreSQL driver logs every query's parameters (password hashes, token
//! hashes, message bodies) and tungstenite every frame's payload. chatpool's
//! own events never carry a token, password, hash or body, and log a user's
//! id rather than anything typed.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::LogFormat;

/// Whether an event or span may be logged at all, whatever `RUST_LOG` asks.
fn allowed(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("chatpool") || *meta.level() <= Level::INFO
}

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = filter.and(filter_fn(allowed));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    let _ = match format {
        LogFormat::Pretty => registry.with(layer.with_filter(filter)).try_init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_filter(filter))
            .try_init(),
    };
}
