//! One experiment from file to outputs: set up, run the engine with progress, and write
//! `metrics.csv`, `summary.json` and the plots.

use std::path::Path;

use crate::config::Experiment;
use crate::engine::Engine;
use crate::error::SimError;
use crate::metrics::{RoundMetrics, Summary, to_csv};
use crate::plot::figures::{self, Clock, Curve};
use crate::progress::Progress;
use crate::setup;
use crate::trainer::LocalTrainer;

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// One row per round.
    pub rows: Vec<RoundMetrics>,
    /// Totals and headline numbers.
    pub summary: Summary,
    /// The final global weights.
    pub global: Vec<f32>,
}

/// Loads the experiment's data, runs it with the trainer it asks for (the built-in MLP, or burn
/// through `cohort-learning` with `trainer = "burn"` and the `learning` feature), and writes the
/// outputs into `out` when given.
pub fn run_experiment(
    exp: &Experiment,
    out: Option<&Path>,
    show_progress: bool,
) -> Result<RunOutput, SimError> {
    let setup = setup::build(exp)?;
    let mut result = run_with_trainer(
        exp,
        &*setup.trainer,
        setup.partitions,
        &setup.source,
        show_progress,
    )?;
    result.summary.majority_baseline = Some(setup.majority_baseline);
    if let Some(dir) = out {
        write_outputs(dir, exp, &result)?;
    }
    Ok(result)
}

/// Runs an experiment with any trainer and partition (tests use small deterministic trainers).
pub fn run_with_trainer(
    exp: &Experiment,
    trainer: &dyn LocalTrainer,
    partitions: Vec<Vec<usize>>,
    source: &str,
    show_progress: bool,
) -> Result<RunOutput, SimError> {
    let mut engine = Engine::new(exp.clone(), trainer, partitions)?;
    let initial = engine.evaluate()?;
    let progress = Progress::new(&exp.task.id, exp.task.rounds, show_progress);
    let rows = engine.run(&mut |row| progress.round(row))?;
    progress.finish();
    let mut summary = Summary {
        name: exp.task.id.clone(),
        seed: exp.run.seed,
        rounds: 0,
        initial_accuracy: initial.accuracy,
        majority_baseline: None,
        final_accuracy: None,
        final_loss: None,
        best_accuracy: None,
        target_accuracy: exp.run.target_accuracy,
        rounds_to_target: None,
        attempts: 0,
        aborted_attempts: 0,
        failed_rounds: 0,
        dropouts: 0,
        stopped: 0,
        bytes_up: 0,
        bytes_down: 0,
        sim_time_s: 0.0,
        wall_s: 0.0,
        peak_rss_bytes: None,
        secagg: exp.task.secagg.enabled,
        quantization_tolerance: exp
            .task
            .secagg
            .enabled
            .then(|| engine.quantizer().tolerance()),
        num_params: engine.global().len(),
        data_source: source.to_string(),
        privacy: engine.privacy_summary(&rows),
    };
    summary.totals(&rows);
    Ok(RunOutput {
        rows,
        summary,
        global: engine.global().to_vec(),
    })
}

fn write(path: &Path, text: &str) -> Result<(), SimError> {
    std::fs::write(path, text).map_err(|source| SimError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `metrics.csv`, `summary.json`, `experiment.toml` (the resolved experiment) and the
/// accuracy plots into `dir` (created if needed).
pub fn write_outputs(dir: &Path, exp: &Experiment, out: &RunOutput) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let csv = dir.join("metrics.csv");
    let text = to_csv(&out.rows).map_err(|source| SimError::Csv {
        path: csv.clone(),
        source,
    })?;
    write(&csv, &text)?;
    let summary = serde_json::to_string_pretty(&out.summary)
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    write(&dir.join("summary.json"), &(summary + "\n"))?;
    if let Ok(resolved) = exp.to_toml() {
        write(&dir.join("experiment.toml"), &resolved)?;
    }
    write_plots(dir, &[(exp.task.id.clone(), out.rows.as_slice())])
}

/// Writes the charts of [`figures::charts`] (accuracy against round and against simulated
/// time, loss against round), SVG and PNG, with one line per run.
pub fn write_plots(dir: &Path, runs: &[(String, &[RoundMetrics])]) -> Result<(), SimError> {
    let curves: Vec<Curve> = runs
        .iter()
        .map(|(label, rows)| Curve::from_metrics(label.clone(), rows))
        .collect();
    figures::write(dir, &curves, Clock::Simulated)
}
