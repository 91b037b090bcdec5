//! Where axis ticks go and how their labels read: round numbers (1, 2, 2.5 or 5 times a power of
//! ten) on continuous axes, whole rounds counted from 1 on round axes, and the time unit that
//! keeps time labels short.

/// A tick step `mantissa × 10^exponent`, kept as integers so that tick values print exactly
/// (0.6, not 0.6000000000000001).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    mantissa: i64,
    exponent: i32,
}

impl Step {
    fn value(self) -> f64 {
        self.times(1)
    }

    /// `k` steps, computed as an integer scaled by a power of ten: one rounding at most.
    fn times(self, k: i64) -> f64 {
        let n = (k * self.mantissa) as f64;
        if self.exponent >= 0 {
            n * 10f64.powi(self.exponent)
        } else {
            n / 10f64.powi(-self.exponent)
        }
    }
}

/// Round ticks covering `[lo, hi]`: the smallest step of 1, 2 or 5 × 10ⁿ, or 25 × 10ⁿ (never
/// 2.5, whose labels would need a decimal more than their neighbours), that gives at most
/// `max_ticks` of them.
pub fn nice_ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return Vec::new();
    }
    let span = (hi - lo).max(f64::EPSILON * hi.abs().max(1.0));
    let max_ticks = max_ticks.max(2);
    // Start a decade below the step that would give `max_ticks` ticks and walk up.
    let mut exponent = (span / max_ticks as f64).log10().floor() as i32 - 1;
    loop {
        for (mantissa, shift) in [(1, 0), (2, 0), (25, -1), (5, 0)] {
            let step = Step {
                mantissa,
                exponent: exponent + shift,
            };
            if mantissa == 25 && step.exponent < 0 {
                continue;
            }
            let first = (lo / step.value() - 1e-9).ceil() as i64;
            let last = (hi / step.value() + 1e-9).floor() as i64;
            if last - first < max_ticks as i64 {
                return (first..=last).map(|k| step.times(k)).collect();
            }
        }
        exponent += 1;
    }
}

/// Ticks for a round axis over rounds `1..=last`: whole rounds, a step of 1, 2 or 5 × 10ⁿ with
/// at most six multiples, and round 1 itself once the step is 5 or more (people count rounds
/// from 1, so `1, 5, 10, 15`, never `0` or `2.5`).
pub fn round_ticks(last: u32) -> Vec<f64> {
    let last = i64::from(last.max(1));
    // 1, 2, 5, 10, 20, 50, …: the first with at most six multiples up to `last`.
    let step = (0u32..)
        .map(|k| [1, 2, 5][(k % 3) as usize] * 10i64.pow(k / 3))
        .find(|s| last / s <= 6)
        .unwrap_or(1);
    let mut ticks: Vec<f64> = (1..=last / step).map(|k| (k * step) as f64).collect();
    if step >= 5 || ticks.is_empty() {
        ticks.insert(0, 1.0);
    }
    ticks
}

/// Labels for ticks, with as many decimals as the finest of them needs (at most six), the
/// same for all, and a true minus sign.
pub fn tick_labels(ticks: &[f64]) -> Vec<String> {
    let decimals = (0..=6)
        .find(|&d| {
            let scale = 10f64.powi(d);
            ticks
                .iter()
                .all(|t| ((t * scale) - (t * scale).round()).abs() < 1e-6 * scale.max(1.0))
        })
        .unwrap_or(6) as usize;
    ticks
        .iter()
        .map(|&t| {
            let t = if t == 0.0 { 0.0 } else { t }; // no "-0"
            let s = format!("{:.*}", decimals, t.abs());
            if t < 0.0 { format!("\u{2212}{s}") } else { s }
        })
        .collect()
}

/// A unit for a time axis whose largest value is `max_seconds`: seconds up to two minutes,
/// minutes up to two hours, hours beyond. Returns (seconds per unit, unit symbol).
pub fn time_unit(max_seconds: f64) -> (f64, &'static str) {
    if max_seconds < 120.0 {
        (1.0, "s")
    } else if max_seconds < 7200.0 {
        (60.0, "min")
    } else {
        (3600.0, "h")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuous_ticks_are_round_exact_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 1.0, 6), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(
            nice_ticks(0.0, 100.0, 6),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(nice_ticks(7.3, 86.1, 6), vec![20.0, 40.0, 60.0, 80.0]);
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 5.0, 10.0]);
        assert_eq!(
            nice_ticks(0.0, 100.0, 5),
            vec![0.0, 25.0, 50.0, 75.0, 100.0]
        );
        assert_eq!(nice_ticks(2.95, 3.18, 6), vec![2.95, 3.0, 3.05, 3.1, 3.15]);
        assert_eq!(nice_ticks(0.0, 14.8, 7), vec![0.0, 5.0, 10.0]);
        assert_eq!(nice_ticks(-1.0, 1.0, 6), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        for (lo, hi) in [(0.0, 1e-7), (12.5, 12.5), (0.001, 12345.0), (-3e6, 2e6)] {
            let t = nice_ticks(lo, hi, 6);
            assert!(!t.is_empty() && t.len() <= 6, "{lo}..{hi}: {t:?}");
            assert!(t.iter().all(|&x| x >= lo - 1e-9 && x <= hi + 1e-9), "{t:?}");
        }
        assert!(nice_ticks(f64::NAN, 1.0, 6).is_empty());
    }

    #[test]
    fn round_ticks_count_from_one_in_whole_rounds() {
        assert_eq!(round_ticks(1), vec![1.0]);
        assert_eq!(round_ticks(5), vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(round_ticks(10), vec![2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(round_ticks(15), vec![1.0, 5.0, 10.0, 15.0]);
        assert_eq!(round_ticks(20), vec![1.0, 5.0, 10.0, 15.0, 20.0]);
        assert_eq!(round_ticks(100), vec![1.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(round_ticks(1000)[..3], [1.0, 200.0, 400.0]);
        for last in 1..500 {
            let t = round_ticks(last);
            assert!(
                t.iter()
                    .all(|x| x.fract() == 0.0 && *x >= 1.0 && *x <= f64::from(last))
            );
            assert!(t.len() <= 7, "{last}: {t:?}");
        }
    }

    #[test]
    fn labels_share_the_decimals_the_finest_tick_needs() {
        assert_eq!(tick_labels(&[0.0, 20.0, 40.0]), ["0", "20", "40"]);
        assert_eq!(tick_labels(&[0.0, 2.5, 5.0]), ["0.0", "2.5", "5.0"]);
        assert_eq!(tick_labels(&[3.0, 3.05, 3.1]), ["3.00", "3.05", "3.10"]);
        assert_eq!(
            tick_labels(&[-0.5, 0.0, 0.5]),
            ["\u{2212}0.5", "0.0", "0.5"]
        );
        assert_eq!(tick_labels(&[1200.0, 1400.0]), ["1200", "1400"]);
    }

    #[test]
    fn time_units_keep_labels_short() {
        assert_eq!(time_unit(90.0), (1.0, "s"));
        assert_eq!(time_unit(1800.0), (60.0, "min"));
        assert_eq!(time_unit(36_000.0), (3600.0, "h"));
    }
}
