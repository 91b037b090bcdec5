//! Per-round metrics and the run summary, and how they are written (`metrics.csv`,
//! `summary.json`).
//!
//! Every column except `wall_s` is a function of the experiment and its seed: two runs of the
//! same file give byte-identical rows apart from that column. The CSV is written by the `csv`
//! crate from [`CsvRow`] through serde; numbers are in their shortest exact form (`0.825`,
//! not `0.825000`), empty cells mean "not measured".

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
    /// Dropouts by phase (R0 advertise keys, R1 share keys, R2 masked input, R2.5 consistency
    /// check, R3 unmask).
    pub dropouts_by_phase: [usize; 5],
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
    /// Differential privacy: ε spent after this round (at the task's δ); `None` without DP.
    pub epsilon: Option<f64>,
    /// Why attempts aborted, in order (not in the CSV).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub abort_reasons: Vec<String>,
}

/// The header of `metrics.csv`: the fields of [`CsvRow`], in order.
pub const CSV_HEADER: &str = "round,attempts,completed,accuracy,loss,train_loss,participants,dropouts,\
dropouts_r0,dropouts_r1,dropouts_r2,dropouts_r2_5,dropouts_r3,removed,stopped,bytes_up,bytes_down,sim_round_s,sim_time_s,epsilon,wall_s";

/// One row of `metrics.csv` as it is written: [`RoundMetrics`] with the dropouts by phase in
/// their own columns, `completed` as 0 or 1, and the times rounded (microseconds for simulated
/// time, milliseconds for wall time) so that the text stays short and still round-trips.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct CsvRow {
    /// The round, from 1.
    pub round: u32,
    /// Attempts made.
    pub attempts: u32,
    /// 1 if an attempt completed, else 0.
    pub completed: u8,
    /// Test accuracy after the round (empty when not evaluated).
    pub accuracy: Option<f32>,
    /// Test loss after the round (empty when not evaluated).
    pub loss: Option<f32>,
    /// Example-weighted training loss of the participants.
    pub train_loss: Option<f32>,
    /// Clients whose update is in the aggregate.
    pub participants: usize,
    /// Dropouts, all attempts, all phases.
    pub dropouts: usize,
    /// Dropouts in R0 (advertise keys).
    pub dropouts_r0: usize,
    /// Dropouts in R1 (share keys).
    pub dropouts_r1: usize,
    /// Dropouts in R2 (masked input).
    pub dropouts_r2: usize,
    /// Dropouts in R2.5 (consistency check).
    #[serde(default)]
    pub dropouts_r2_5: usize,
    /// Dropouts in R3 (unmask).
    pub dropouts_r3: usize,
    /// Clients removed for breaking a rule.
    pub removed: usize,
    /// Over-selected clients told to stop.
    pub stopped: usize,
    /// Bytes sent by clients.
    pub bytes_up: u64,
    /// Bytes sent to clients.
    pub bytes_down: u64,
    /// Simulated seconds of the round.
    pub sim_round_s: f64,
    /// Simulated seconds since the start of the run.
    pub sim_time_s: f64,
    /// ε spent after the round (empty without DP).
    pub epsilon: Option<f64>,
    /// Wall-clock seconds the round took to simulate.
    pub wall_s: f64,
}

/// `x` rounded to `decimals` places (as a double: the nearest one to the rounded decimal).
fn rounded(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

impl From<&RoundMetrics> for CsvRow {
    fn from(r: &RoundMetrics) -> Self {
        let [
            dropouts_r0,
            dropouts_r1,
            dropouts_r2,
            dropouts_r2_5,
            dropouts_r3,
        ] = r.dropouts_by_phase;
        Self {
            round: r.round,
            attempts: r.attempts,
            completed: u8::from(r.completed),
            accuracy: r.accuracy,
            loss: r.loss,
            train_loss: r.train_loss,
            participants: r.participants,
            dropouts: r.dropouts,
            dropouts_r0,
            dropouts_r1,
            dropouts_r2,
            dropouts_r2_5,
            dropouts_r3,
            removed: r.removed,
            stopped: r.stopped,
            bytes_up: r.bytes_up,
            bytes_down: r.bytes_down,
            sim_round_s: rounded(r.sim_round_s, 6),
            sim_time_s: rounded(r.sim_time_s, 6),
            epsilon: r.epsilon,
            wall_s: rounded(r.wall_s, 3),
        }
    }
}

/// Rows as CSV text through serde: `header` (comma-separated, the rows' field names in order)
/// and one line per row. The header is written even when there are no rows.
pub fn csv_text<T: Serialize>(
    header: &str,
    rows: impl IntoIterator<Item = T>,
) -> Result<String, csv::Error> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    writer.write_record(header.split(','))?;
    for row in rows {
        writer.serialize(row)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| csv::Error::from(e.into_error()))?;
    // Every field came from a `str` or a number, so the bytes are UTF-8.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The whole `metrics.csv`: [`CSV_HEADER`] and one [`CsvRow`] per round.
pub fn to_csv(rows: &[RoundMetrics]) -> Result<String, csv::Error> {
    csv_text(CSV_HEADER, rows.iter().map(CsvRow::from))
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
    /// Differential privacy (absent without DP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacySummary>,
}

/// `summary.json`'s `privacy`: the plan and what the run spent.
#[derive(Clone, Debug, Serialize)]
pub struct PrivacySummary {
    /// "central" or "distributed".
    pub mode: String,
    /// The plan in words (as `task show` prints it).
    pub plan: String,
    /// The budget ε.
    pub epsilon_budget: f64,
    /// δ.
    pub delta: f64,
    /// z.
    pub noise_multiplier: f64,
    /// The privacy round limit.
    pub max_rounds: u64,
    /// Distributed mode: bits per coordinate.
    pub bits: Option<u8>,
    /// ε spent at the end of the run.
    pub epsilon_spent: f64,
    /// ε spent after each round (the `epsilon` column of metrics.csv).
    pub epsilon_by_round: Vec<f64>,
    /// Whether the run stopped because the next round did not fit the budget.
    pub budget_exhausted: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(round: u32) -> RoundMetrics {
        RoundMetrics {
            round,
            attempts: 2,
            completed: round != 2,
            accuracy: (round != 3).then_some(0.825),
            loss: Some(0.4321),
            train_loss: None,
            participants: 17,
            dropouts: 6,
            dropouts_by_phase: [1, 2, 0, 0, 3],
            removed: 0,
            stopped: 4,
            bytes_up: 123_456_789_012,
            bytes_down: 42,
            sim_round_s: 12.345_678_9,
            sim_time_s: 1e-7,
            wall_s: 0.123_456,
            epsilon: (round == 1).then_some(0.5),
            abort_reasons: vec!["quorum".into()],
        }
    }

    #[test]
    fn the_header_is_the_row_type_in_field_order() {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(CsvRow::from(&row(1))).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(text.lines().next(), Some(CSV_HEADER));
        assert_eq!(to_csv(&[]).unwrap(), format!("{CSV_HEADER}\n"));
    }

    #[test]
    fn rows_read_back_as_written() {
        let rows: Vec<RoundMetrics> = (1..=3).map(row).collect();
        let text = to_csv(&rows).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[1],
            "1,2,1,0.825,0.4321,,17,6,1,2,0,0,3,0,4,123456789012,42,12.345679,0.0,0.5,0.123"
        );
        // Round 2 failed, round 3 was not evaluated: 0 and an empty cell.
        assert!(lines[2].starts_with("2,2,0,0.825,"), "{}", lines[2]);
        assert!(lines[3].starts_with("3,2,1,,0.4321,"), "{}", lines[3]);
        let back: Vec<CsvRow> = csv::Reader::from_reader(text.as_bytes())
            .deserialize()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<CsvRow> = rows.iter().map(CsvRow::from).collect();
        assert_eq!(back, expected);
        assert_eq!(back[0].sim_round_s, 12.345_679);
    }
}
