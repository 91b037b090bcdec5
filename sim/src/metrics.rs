//! Per-round metrics and the run summary, and how they are written (`metrics.csv`,
//! `summary.json`).
//!
//! Every column except `wall_s` is a function of the experiment and its seed: two runs of the
//! same file give byte-identical rows apart from that column.

use std::fmt::Write as _;

use serde::Serialize;

/// One round's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundMetrics {
    /// The round, from 1.
    pub round: u32,
    /// Attempts made (1 unless attempts aborted and were retried).
    pub attempts: u32,
    /// Whether an attempt completed and the model was updated.
    pub completed: bool,
    /// Test accuracy after the round (when evaluated).
    pub accuracy: Option<f32>,
    /// Test loss after the round (when evaluated).
    pub loss: Option<f32>,
    /// Example-weighted training loss of the participants.
    pub train_loss: Option<f32>,
    /// Clients whose update is in the aggregate.
    pub participants: usize,
    /// Dropouts, all attempts, all phases.
    pub dropouts: usize,
    /// Dropouts by phase (R0 advertise keys, R1 share keys, R2 masked input, R3 unmask).
    pub dropouts_by_phase: [usize; 4],
    /// Clients removed by the server for breaking a rule.
    pub removed: usize,
    /// Over-selected clients told to stop because enough updates had arrived, all attempts.
    pub stopped: usize,
    /// Bytes sent by clients, all attempts.
    pub bytes_up: u64,
    /// Bytes sent to clients, all attempts.
    pub bytes_down: u64,
    /// Simulated seconds of the round, all attempts.
    pub sim_round_s: f64,
    /// Simulated seconds since the start of the run, at the end of the round.
    pub sim_time_s: f64,
    /// Wall-clock seconds the round took to simulate (the only non-deterministic column).
    pub wall_s: f64,
    /// Why attempts aborted, in order (not in the CSV).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub abort_reasons: Vec<String>,
}

/// The CSV header.
pub const CSV_HEADER: &str = "round,attempts,completed,accuracy,loss,train_loss,participants,dropouts,\
dropouts_r0,dropouts_r1,dropouts_r2,dropouts_r3,removed,stopped,bytes_up,bytes_down,sim_round_s,sim_time_s,wall_s";

fn opt(v: Option<f32>) -> String {
    v.map_or_else(String::new, |x| format!("{x:.6}"))
}

impl RoundMetrics {
    /// The row as CSV (no newline).
    pub fn csv_row(&self) -> String {
        let mut s = String::new();
        let d = self.dropouts_by_phase;
        let _ = write!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.6},{:.3}",
            self.round,
            self.attempts,
            u8::from(self.completed),
            opt(self.accuracy),
            opt(self.loss),
            opt(self.train_loss),
            self.participants,
            self.dropouts,
            d[0],
            d[1],
            d[2],
            d[3],
            self.removed,
            self.stopped,
            self.bytes_up,
            self.bytes_down,
            self.sim_round_s,
            self.sim_time_s,
            self.wall_s
        );
        s
    }
}

/// The whole CSV file.
pub fn to_csv(rows: &[RoundMetrics]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&r.csv_row());
        s.push('\n');
    }
    s
}

/// `summary.json`: the run at a glance.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The experiment's name.
    pub name: String,
    /// The seed.
    pub seed: u64,
    /// Rounds run.
    pub rounds: u32,
    /// Test accuracy of the initial model.
    pub initial_accuracy: f32,
    /// The test accuracy of always predicting the most common class: the bar a model must
    /// clear to have learned anything (absent for runs with a custom trainer).
    pub majority_baseline: Option<f32>,
    /// The last evaluated accuracy.
    pub final_accuracy: Option<f32>,
    /// The last evaluated test loss.
    pub final_loss: Option<f32>,
    /// The best evaluated accuracy.
    pub best_accuracy: Option<f32>,
    /// The experiment's target accuracy, if any.
    pub target_accuracy: Option<f32>,
    /// The first round whose evaluation reached the target.
    pub rounds_to_target: Option<u32>,
    /// Total attempts, and of them how many aborted.
    pub attempts: u32,
    /// Attempts that aborted.
    pub aborted_attempts: u32,
    /// Rounds that gave up after `max_attempts`.
    pub failed_rounds: u32,
    /// Total dropouts.
    pub dropouts: usize,
    /// Total over-selected clients told to stop.
    pub stopped: usize,
    /// Total bytes up.
    pub bytes_up: u64,
    /// Total bytes down.
    pub bytes_down: u64,
    /// Simulated seconds.
    pub sim_time_s: f64,
    /// Wall seconds.
    pub wall_s: f64,
    /// Peak resident memory of the process, in bytes (Linux only).
    pub peak_rss_bytes: Option<u64>,
    /// SecAgg+ on or off.
    pub secagg: bool,
    /// The quantisation tolerance (per coordinate per round) with SecAgg+ on.
    pub quantization_tolerance: Option<f32>,
    /// Model parameters.
    pub num_params: usize,
    /// Where the data came from.
    pub data_source: String,
}

impl Summary {
    /// Fills in the totals from the rows.
    pub fn totals(&mut self, rows: &[RoundMetrics]) {
        self.rounds = rows.len() as u32;
        self.attempts = rows.iter().map(|r| r.attempts).sum();
        self.aborted_attempts = rows
            .iter()
            .map(|r| r.attempts - u32::from(r.completed))
            .sum();
        self.failed_rounds = rows.iter().filter(|r| !r.completed).count() as u32;
        self.dropouts = rows.iter().map(|r| r.dropouts).sum();
        self.stopped = rows.iter().map(|r| r.stopped).sum();
        self.bytes_up = rows.iter().map(|r| r.bytes_up).sum();
        self.bytes_down = rows.iter().map(|r| r.bytes_down).sum();
        self.sim_time_s = rows.last().map_or(0.0, |r| r.sim_time_s);
        self.wall_s = rows.iter().map(|r| r.wall_s).sum();
        let evaluated: Vec<(u32, f32)> = rows
            .iter()
            .filter_map(|r| r.accuracy.map(|a| (r.round, a)))
            .collect();
        self.final_accuracy = evaluated.last().map(|x| x.1);
        self.final_loss = rows.iter().rev().find_map(|r| r.loss);
        self.best_accuracy = evaluated.iter().map(|x| x.1).reduce(f32::max);
        self.rounds_to_target = self
            .target_accuracy
            .and_then(|t| evaluated.iter().find(|x| x.1 >= t).map(|x| x.0));
        self.peak_rss_bytes = peak_rss_bytes();
    }
}

/// The process's peak resident set size (`VmHWM` in `/proc/self/status`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
