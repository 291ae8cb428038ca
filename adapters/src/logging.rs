//! Logging for the adapters' binaries: one place that sets it up, so every
//! binary logs the same way (to stderr; stdout is for their results).

use anyhow::Context;

/// Logs to stderr with `RUST_LOG`, or `log` (tracing `EnvFilter` syntax,
/// the binary's `--log`) without it; colours only on a terminal.
pub fn init(log: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log))
        .with_context(|| format!("--log {log:?} is not a valid filter; try --log info"))?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
    Ok(())
}
