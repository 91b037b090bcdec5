//! The charts, drawn from fixed data, against committed files.
//!
//! SVG output is compared byte for byte with `tests/snapshots/*.svg`, so a change in the drawing
//! (layout, fonts, colours, ticks, legend placement, or a plotters upgrade) shows up in review
//! as a diff of those files. When a change is intended, rewrite them and commit the result:
//!
//! ```sh
//! UPDATE_SNAPSHOTS=1 cargo test -p cohort-sim --no-default-features --test plot_snapshots
//! ```
//!
//! PNG output is not compared byte for byte (the bytes depend on the rasteriser's and the
//! encoder's versions for no visible reason); the tests decode it and check its size, that it
//! holds the chart's colours and text, and that edges are anti-aliased.

use std::path::{Path, PathBuf};

use cohort_sim::plot::figures::{Clock, Curve, RoundPoint, charts};
use cohort_sim::plot::{Chart, HEIGHT, PALETTE, PNG_SCALE, Series, WIDTH, XAxis};

/// A run-like curve from rational arithmetic only (no `exp` or `sin`, whose last bits may
/// differ between platforms' maths libraries): accuracy rising towards `top` with a
/// deterministic wiggle, losses falling, time advancing unevenly.
fn curve(label: &str, rounds: u32, speed: f32, top: f32) -> Curve {
    Curve {
        label: label.into(),
        points: (1..=rounds)
            .map(|r| {
                let x = r as f32;
                let wiggle = ((r * 37 + label.len() as u32) % 11) as f32 * 0.004;
                RoundPoint {
                    round: r,
                    time_s: f64::from(r) * 21.5 + f64::from((r * 13) % 7) * 9.0,
                    accuracy: Some(top - (top - 0.1) / (1.0 + speed * x) + wiggle),
                    loss: Some(2.3 / (1.0 + speed * x) + wiggle),
                    train_loss: Some(2.0 / (1.0 + speed * x * 1.2) + wiggle / 2.0),
                }
            })
            .collect(),
    }
}

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

/// Compares `svg` with `tests/snapshots/<name>.svg`, or writes it there with
/// `UPDATE_SNAPSHOTS=1`.
fn check_snapshot(name: &str, svg: &str) {
    let path = snapshot_dir().join(format!("{name}.svg"));
    if std::env::var("UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
        std::fs::create_dir_all(snapshot_dir()).unwrap();
        std::fs::write(&path, svg).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    if expected != svg {
        let actual = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.svg"));
        std::fs::write(&actual, svg).unwrap();
        let (line, old, new) = expected
            .lines()
            .zip(svg.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i + 1, a, b))
            .unwrap_or((
                expected.lines().count().min(svg.lines().count()) + 1,
                "",
                "",
            ));
        panic!(
            "{name}.svg differs from {} from line {line}:\n- {old}\n+ {new}\nThe new drawing is in {}. \
             If the change is intended, rerun with UPDATE_SNAPSHOTS=1 and commit tests/snapshots/.",
            path.display(),
            actual.display()
        );
    }
}

fn single_run() -> Vec<Curve> {
    vec![curve("digits-secagg", 15, 0.35, 0.86)]
}

fn sweep() -> Vec<Curve> {
    vec![
        curve("iid, fed_avg", 30, 0.15, 0.88),
        curve("dirichlet alpha=0.1, fed_avg", 30, 0.08, 0.80),
        curve("dirichlet alpha=1.0, fed_avg", 30, 0.13, 0.87),
        curve("iid, fed_adam eta=0.01", 30, 0.6, 0.94),
        curve("dirichlet alpha=0.1, fed_adam eta=0.01", 30, 0.3, 0.92),
        curve("dirichlet alpha=1.0, fed_adam eta=0.01", 30, 0.5, 0.93),
    ]
}

#[test]
fn single_run_charts_match_their_snapshots() {
    let charts = charts(&single_run(), Clock::Simulated);
    assert_eq!(charts.len(), 3);
    for (stem, chart) in &charts {
        check_snapshot(&format!("run-{stem}"), &chart.to_svg().unwrap());
    }
}

#[test]
fn sweep_charts_match_their_snapshots() {
    for (stem, chart) in &charts(&sweep(), Clock::Simulated) {
        check_snapshot(&format!("sweep-{stem}"), &chart.to_svg().unwrap());
    }
}

#[test]
fn live_time_axis_matches_its_snapshot() {
    let live = vec![curve("digits-secagg (live)", 15, 0.35, 0.8)];
    let (stem, chart) = &charts(&live, Clock::WallClock)[1];
    assert_eq!(*stem, "accuracy_vs_time");
    check_snapshot("live-accuracy_vs_time", &chart.to_svg().unwrap());
}

#[test]
fn svg_reads_as_a_chart() {
    let (_, chart) = &charts(&single_run(), Clock::Simulated)[0];
    let svg = chart.to_svg().unwrap();
    // Chart-sized, with the embedded font's family first and the palette's first colour.
    assert!(
        svg.starts_with(&format!(
            "<svg width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {} {}\"",
            WIDTH * 2,
            HEIGHT * 2
        )),
        "{}",
        &svg[..200]
    );
    assert!(svg.contains("font-family=\"DejaVu Sans, "));
    assert!(svg.contains("stroke=\"#0072B2\""));
    for text in [
        "Test accuracy by round",
        "Round",
        "Test accuracy (%)",
        "digits-secagg",
    ] {
        assert!(svg.contains(&format!("\n{text}\n</text>")), "{text}");
    }
    // Round ticks count from 1; there is no round 0 or 2.5.
    for tick in ["1", "5", "10", "15"] {
        assert!(svg.contains(&format!("\n{tick}\n</text>")), "tick {tick}");
    }
    assert!(!svg.contains("\n0\n</text>") && !svg.contains("\n2.5\n</text>"));
    // Labels are escaped.
    let mut odd = chart.clone();
    odd.series[0].label = "a<b & c".into();
    assert!(odd.to_svg().unwrap().contains("a&lt;b &amp; c"));
}

struct Decoded {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

fn decode(png: &[u8]) -> Decoded {
    let decoder = png::Decoder::new(png);
    let mut reader = decoder.read_info().unwrap();
    let mut rgb = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgb).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    rgb.truncate(info.buffer_size());
    Decoded {
        width: info.width,
        height: info.height,
        rgb,
    }
}

impl Decoded {
    fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.width + x) * 3) as usize;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    fn pixels(&self) -> impl Iterator<Item = [u8; 3]> + '_ {
        self.rgb.chunks_exact(3).map(|p| [p[0], p[1], p[2]])
    }
}

#[test]
fn png_decodes_at_its_size_with_data_text_and_smooth_edges() {
    let (_, chart) = &charts(&single_run(), Clock::Simulated)[0];
    let png = decode(&chart.to_png().unwrap());
    assert_eq!(
        (png.width, png.height),
        (WIDTH * PNG_SCALE, HEIGHT * PNG_SCALE)
    );

    let white = png.pixels().filter(|p| *p == [255, 255, 255]).count();
    let total = (png.width * png.height) as usize;
    // Mostly white paper, but not blank.
    assert!(
        white > total / 2 && white < total * 99 / 100,
        "{white} of {total} white"
    );

    // The line's colour, solid, where the line is thick.
    let blue = [PALETTE[0].0, PALETTE[0].1, PALETTE[0].2];
    let solid_blue = png.pixels().filter(|p| *p == blue).count();
    assert!(
        solid_blue > 2_000,
        "{solid_blue} pixels of the series colour"
    );

    // Anti-aliasing: along the line's edges pixels mix its colour with the paper's, in
    // several proportions (without it they would be one or the other).
    let mix = |p: [u8; 3]| -> Option<u8> {
        let a: Vec<f64> = (0..3)
            .map(|c| (255.0 - f64::from(p[c])) / (255.0 - f64::from(blue[c])))
            .collect();
        let (lo, hi) = (
            a.iter().copied().fold(1.0, f64::min),
            a.iter().copied().fold(0.0, f64::max),
        );
        (hi - lo < 0.06 && lo > 0.05 && hi < 0.95).then_some((a[2] * 20.0).round() as u8)
    };
    let blended: Vec<u8> = png.pixels().filter_map(mix).collect();
    let levels: std::collections::HashSet<u8> = blended.iter().copied().collect();
    assert!(
        blended.len() > 1_000 && levels.len() >= 6,
        "{} blended pixels in {} proportions",
        blended.len(),
        levels.len()
    );

    // The title is drawn with the embedded font: dark pixels in the band above the plot,
    // centred, and grey ones (anti-aliased glyph edges) beside them.
    let band = (png.height / 50)..(png.height / 15);
    let dark = band
        .clone()
        .flat_map(|y| (png.width / 3..png.width * 2 / 3).map(move |x| (x, y)))
        .filter(|&(x, y)| png.pixel(x, y).iter().all(|&c| c < 80))
        .count();
    let grey = band
        .flat_map(|y| (png.width / 3..png.width * 2 / 3).map(move |x| (x, y)))
        .filter(|&(x, y)| png.pixel(x, y).iter().all(|&c| (100..220).contains(&c)))
        .count();
    assert!(
        dark > 500 && grey > 100,
        "title: {dark} dark, {grey} grey pixels"
    );
}

#[test]
fn png_grows_to_hold_a_legend_below_the_plot() {
    // Two crossing lines leave no corner free for the legend.
    let line = |label: &str, f: fn(f64) -> f64| Series {
        label: label.into(),
        points: (1..=20).map(|r| (f64::from(r), f(f64::from(r)))).collect(),
        dashed: false,
    };
    let crossing = Chart {
        title: "Crossing".into(),
        x_label: "Round".into(),
        y_label: "Test accuracy (%)".into(),
        x_axis: XAxis::Rounds,
        y_bounds: (0.0, 100.0),
        series: vec![
            line("rising", |r| r * 5.0),
            line("falling", |r| 100.0 - r * 5.0),
        ],
    };
    check_snapshot("legend-below", &crossing.to_svg().unwrap());
    let svg = crossing.to_svg().unwrap();
    let png = decode(&crossing.to_png().unwrap());
    assert_eq!(png.width, WIDTH * PNG_SCALE);
    assert!(png.height > HEIGHT * PNG_SCALE, "{}", png.height);
    // The SVG has the same size in chart pixels.
    assert!(svg.starts_with(&format!(
        "<svg width=\"{WIDTH}\" height=\"{}\"",
        png.height / PNG_SCALE
    )));
    // Both series' colours are in the picture.
    for c in PALETTE.iter().take(2) {
        assert!(png.pixels().any(|p| p == [c.0, c.1, c.2]), "{c:?}");
    }
}
