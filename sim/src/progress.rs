//! Progress reporting: a progress bar when stderr is a terminal, plain log lines otherwise
//! (CI logs, redirected output).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::metrics::RoundMetrics;

/// Reports rounds as they finish.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    name: String,
}

impl Progress {
    /// A reporter for `rounds` rounds of experiment `name`; `enabled = false` is silent except
    /// for tracing at debug level.
    pub fn new(name: &str, rounds: u32, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(u64::from(rounds));
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} rounds {msg} ({elapsed})",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(name.to_string());
            bar
        });
        Self {
            bar,
            name: name.to_string(),
        }
    }

    /// Reports one finished round.
    pub fn round(&self, row: &RoundMetrics) {
        let acc = row
            .accuracy
            .map_or_else(|| "-".to_string(), |a| format!("{:.2}%", a * 100.0));
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!(
                    "acc {acc}, {} in, {} dropped, sim {:.0}s",
                    row.participants, row.dropouts, row.sim_time_s
                ));
                bar.inc(1);
            }
            None => tracing::info!(
                experiment = %self.name,
                round = row.round,
                accuracy = %acc,
                participants = row.participants,
                dropouts = row.dropouts,
                attempts = row.attempts,
                sim_s = format!("{:.1}", row.sim_round_s),
                wall_s = format!("{:.2}", row.wall_s),
                "round done"
            ),
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
