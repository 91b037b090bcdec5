//! The charts a run gets, from its per-round figures: test accuracy against round and against
//! time, and the loss against round when the run has one. With several runs (a sweep), each
//! chart has one line per run on shared axes.

use std::path::Path;

use super::ticks::time_unit;
use super::{Chart, Series, XAxis};
use crate::error::SimError;
use crate::metrics::RoundMetrics;

/// What the charts read from one round.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPoint {
    /// The round, from 1.
    pub round: u32,
    /// Seconds since the run started, at the end of the round (simulated or wall-clock, see
    /// [`Clock`]).
    pub time_s: f64,
    /// Test accuracy after the round, as a fraction.
    pub accuracy: Option<f32>,
    /// Test loss after the round.
    pub loss: Option<f32>,
    /// The participants' example-weighted training loss.
    pub train_loss: Option<f32>,
}

/// One run's line: its legend label and its rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    /// The legend entry (the experiment's name, or a sweep point's label).
    pub label: String,
    /// The rounds, in order.
    pub points: Vec<RoundPoint>,
}

impl Curve {
    /// A simulated run's curve from its `metrics.csv` rows.
    pub fn from_metrics(label: impl Into<String>, rows: &[RoundMetrics]) -> Self {
        Self {
            label: label.into(),
            points: rows
                .iter()
                .map(|r| RoundPoint {
                    round: r.round,
                    time_s: r.sim_time_s,
                    accuracy: r.accuracy,
                    loss: r.loss,
                    train_loss: r.train_loss,
                })
                .collect(),
        }
    }
}

/// Which clock the time axis shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The simulator's virtual clock.
    Simulated,
    /// Real time (live mode).
    WallClock,
}

fn series(
    curves: &[Curve],
    x: impl Fn(&RoundPoint) -> f64,
    y: impl Fn(&RoundPoint) -> Option<f32>,
) -> Vec<Series> {
    curves
        .iter()
        .map(|c| Series {
            label: c.label.clone(),
            points: c
                .points
                .iter()
                .filter_map(|p| y(p).map(|v| (x(p), f64::from(v))))
                .collect(),
            dashed: false,
        })
        .collect()
}

/// The charts for `curves`, each with the file stem it is written under:
/// `accuracy_vs_round`, `accuracy_vs_time` and, when any round has a loss, `loss_vs_round`.
pub fn charts(curves: &[Curve], clock: Clock) -> Vec<(&'static str, Chart)> {
    let percent = |p: &RoundPoint| p.accuracy.map(|a| a * 100.0);
    let round = |p: &RoundPoint| f64::from(p.round);
    let mut out = vec![(
        "accuracy_vs_round",
        Chart {
            title: "Test accuracy by round".into(),
            x_label: "Round".into(),
            y_label: "Test accuracy (%)".into(),
            x_axis: XAxis::Rounds,
            y_bounds: (0.0, 100.0),
            series: series(curves, round, percent),
        },
    )];

    let last_time = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.time_s))
        .fold(0.0, f64::max);
    let (per_unit, unit) = time_unit(last_time);
    let (clock_name, title) = match clock {
        Clock::Simulated => ("Simulated time", "Test accuracy over simulated time"),
        Clock::WallClock => ("Wall-clock time", "Test accuracy over wall-clock time"),
    };
    out.push((
        "accuracy_vs_time",
        Chart {
            title: title.into(),
            x_label: format!("{clock_name} ({unit})"),
            y_label: "Test accuracy (%)".into(),
            x_axis: XAxis::FromZero,
            y_bounds: (0.0, 100.0),
            series: series(curves, |p| p.time_s / per_unit, percent),
        },
    ));

    let has = |f: fn(&RoundPoint) -> Option<f32>| {
        curves
            .iter()
            .any(|c| c.points.iter().any(|p| f(p).is_some()))
    };
    let (test, train) = (has(|p| p.loss), has(|p| p.train_loss));
    let loss = match (curves, test, train) {
        // One run: its test loss and its participants' training loss together.
        ([only], _, _) if test || train => {
            let mut lines = Vec::new();
            if test {
                lines.extend(series(std::slice::from_ref(only), round, |p| p.loss));
                lines[0].label = "test".into();
            }
            if train {
                let mut s = series(std::slice::from_ref(only), round, |p| p.train_loss);
                s[0].label = "training (participants)".into();
                s[0].dashed = true;
                lines.extend(s);
            }
            Some(("Loss by round", "Loss", lines))
        }
        (_, true, _) => Some((
            "Test loss by round",
            "Test loss",
            series(curves, round, |p| p.loss),
        )),
        (_, false, true) => Some((
            "Training loss by round",
            "Training loss (participants)",
            series(curves, round, |p| p.train_loss),
        )),
        _ => None,
    };
    if let Some((title, y_label, series)) = loss {
        out.push((
            "loss_vs_round",
            Chart {
                title: title.into(),
                x_label: "Round".into(),
                y_label: y_label.into(),
                x_axis: XAxis::Rounds,
                y_bounds: (0.0, f64::INFINITY),
                series,
            },
        ));
    }
    out
}

/// One DP run of a sweep, for [`accuracy_vs_epsilon`].
#[derive(Clone, Debug, PartialEq)]
pub struct EpsilonPoint {
    /// The series: "no DP", "central", "distributed".
    pub mode: String,
    /// ε spent (0 for no DP).
    pub epsilon: f64,
    /// Final test accuracy, as a fraction.
    pub accuracy: f32,
}

/// Final test accuracy against ε spent, one line per DP mode (points sorted by ε); runs
/// without DP are drawn as a dashed level across the ε range. `None` without a DP run.
pub fn accuracy_vs_epsilon(points: &[EpsilonPoint]) -> Option<Chart> {
    let dp: Vec<&EpsilonPoint> = points.iter().filter(|p| p.mode != "no DP").collect();
    let (lo, hi) = dp.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
        (lo.min(p.epsilon), hi.max(p.epsilon))
    });
    if dp.is_empty() {
        return None;
    }
    let mut modes: Vec<&str> = Vec::new();
    for p in points {
        if !modes.contains(&p.mode.as_str()) {
            modes.push(&p.mode);
        }
    }
    let series = modes
        .into_iter()
        .map(|mode| {
            let mut pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.mode == mode)
                .map(|p| (p.epsilon, f64::from(p.accuracy) * 100.0))
                .collect();
            let baseline = mode == "no DP";
            if baseline {
                let acc = pts.iter().map(|p| p.1).sum::<f64>() / pts.len().max(1) as f64;
                pts = vec![(lo, acc), (hi, acc)];
            }
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                label: mode.to_string(),
                points: pts,
                dashed: baseline,
            }
        })
        .collect();
    Some(Chart {
        title: "Final test accuracy against the privacy budget spent".into(),
        x_label: "ε spent (δ as configured)".into(),
        y_label: "Test accuracy (%)".into(),
        x_axis: XAxis::FromZero,
        y_bounds: (0.0, 100.0),
        series,
    })
}

/// Writes [`charts`] as SVG and PNG into `dir`.
pub fn write(dir: &Path, curves: &[Curve], clock: Clock) -> Result<(), SimError> {
    for (stem, chart) in charts(curves, clock) {
        chart.write(dir, stem)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(label: &str, rounds: u32, with_loss: bool) -> Curve {
        Curve {
            label: label.into(),
            points: (1..=rounds)
                .map(|r| RoundPoint {
                    round: r,
                    time_s: f64::from(r) * 90.0,
                    accuracy: Some(0.5 + 0.02 * r as f32),
                    loss: with_loss.then_some(1.0 / r as f32),
                    train_loss: with_loss.then_some(0.8 / r as f32),
                })
                .collect(),
        }
    }

    #[test]
    fn a_run_gets_accuracy_by_round_and_time_and_its_losses() {
        let charts = charts(&[curve("digits", 10, true)], Clock::Simulated);
        let stems: Vec<&str> = charts.iter().map(|c| c.0).collect();
        assert_eq!(
            stems,
            ["accuracy_vs_round", "accuracy_vs_time", "loss_vs_round"]
        );
        let acc = &charts[0].1;
        assert_eq!(acc.series[0].points[0], (1.0, f64::from(0.52f32 * 100.0)));
        // 900 s of simulated time reads in minutes.
        let time = &charts[1].1;
        assert_eq!(time.x_label, "Simulated time (min)");
        assert_eq!(time.series[0].points[1].0, 3.0);
        let loss = &charts[2].1;
        let labels: Vec<(&str, bool)> = loss
            .series
            .iter()
            .map(|s| (s.label.as_str(), s.dashed))
            .collect();
        assert_eq!(labels, [("test", false), ("training (participants)", true)]);
    }

    #[test]
    fn a_sweep_gets_one_line_per_run_and_wall_clock_is_named() {
        let runs = [
            curve("iid", 5, true),
            curve("dirichlet", 5, true),
            curve("shards", 5, false),
        ];
        let charts = charts(&runs, Clock::WallClock);
        assert_eq!(charts[1].1.x_label, "Wall-clock time (min)");
        for (_, c) in &charts {
            let labels: Vec<&str> = c.series.iter().map(|s| s.label.as_str()).collect();
            assert_eq!(labels, ["iid", "dirichlet", "shards"], "{}", c.title);
        }
        assert_eq!(charts[2].1.y_label, "Test loss");
        // Without any loss there is no loss chart.
        assert_eq!(
            super::charts(&[curve("x", 3, false)], Clock::Simulated).len(),
            2
        );
    }
}
