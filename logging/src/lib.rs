//! Log set-up shared by every Cohort binary (`cohort-coordinator`, `cohort-edge`,
//! `cohort-loopback`, `cohort-sim`), so that they all behave alike:
//!
//! - logs go to standard error, standard output being the command's own output;
//! - `--log-format text` (the default) is for people: ANSI colour only when standard error is a
//!   terminal and `NO_COLOR` is unset, so a log redirected to a file or a pipe holds no escape
//!   codes;
//! - `--log-format json` writes one JSON object per line, for log collectors;
//! - `RUST_LOG` overrides each binary's default filter.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// The `--log-format` option every binary takes: `#[command(flatten)] log: LogArgs` in its
/// `clap` parser, then [`LogArgs::init`].
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct LogArgs {
    /// Log lines as text for people (colour only on a terminal) or JSON for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// [`init`] with the chosen format.
    pub fn init(&self, default_filter: &str) {
        init(self.log_format, default_filter);
    }
}

/// Whether text logs are coloured: only on a terminal, and never when `NO_COLOR` is set
/// (<https://no-color.org>).
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. `default_filter` (an `EnvFilter` directive such as
/// `"warn,cohort_edge=info"`) applies unless `RUST_LOG` is set. A second call does nothing (the
/// first subscriber stays), so tests may call it freely.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => {
            let colour = use_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            builder.with_ansi(colour).try_init()
        }
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_ansi(false)
            .try_init(),
    };
    // Already installed (a test harness, or a second call): keep the first.
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(
            !use_colour(false, None),
            "a file or a pipe gets no escape codes"
        );
        assert!(
            !use_colour(true, Some(OsStr::new("1"))),
            "NO_COLOR turns colour off"
        );
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
    }
}
