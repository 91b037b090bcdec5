//! Line charts of a run's metrics, written as SVG and PNG, fit to go into a paper.
//!
//! A [`Chart`] holds the data and the words (title, axis labels with units, one legend entry per
//! line); [`figures`] builds the charts a run gets (accuracy against round and against time,
//! loss against round) and [`figures::write`] writes them. Drawing is done by `plotters`:
//! [`draw::Layout`] sizes the plot area to its labels, puts the legend where it hides no data
//! and sets every text on its baseline; text uses the DejaVu Sans faces compiled in by
//! [`font`], so no system font is needed. The PNG is drawn three times larger and averaged
//! down ([`png`]), which anti-aliases lines, markers and text alike.
//!
//! Lines are told apart by colour (the Okabe–Ito palette, safe for colour-blind readers) and by
//! marker shape (so they stay apart in grey print). Round axes count rounds as people do, from
//! 1 in whole rounds; time axes pick seconds, minutes or hours.
//!
//! The SVG output is deterministic, and `tests/plot_snapshots.rs` compares it with committed
//! files so that a change in the drawing shows in review (`UPDATE_SNAPSHOTS=1` rewrites them).

pub mod draw;
pub mod figures;
pub mod font;
pub mod png;
pub mod ticks;

use std::path::Path;

use plotters::backend::SVGBackend;
use plotters::style::RGBColor;

use crate::error::SimError;
use draw::{Layout, Target};
use font::FontError;

/// Canvas width in chart pixels (CSS pixels in the SVG).
pub const WIDTH: u32 = 720;
/// Canvas height in chart pixels, without a legend below the plot (which adds its rows).
pub const HEIGHT: u32 = 450;
/// PNG pixels per chart pixel: 1440 × 900 by default, sharp on high-density screens and at
/// print size (4.8 × 3 inches at 300 dpi).
pub const PNG_SCALE: u32 = 2;
/// SVG user units per chart pixel: coordinates are whole units, so this gives half-pixel
/// precision to the lines while `width` and `height` keep the chart's size.
const SVG_SCALE: u32 = 2;

/// Line colours, in order: the Okabe–Ito palette (Okabe and Ito 2008, distinguishable with
/// every common colour-vision deficiency) without its yellow, too faint on white.
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
];

/// What the x axis counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XAxis {
    /// Rounds: whole numbers from 1, ticks at round numbers of rounds (1, 5, 10, …).
    Rounds,
    /// A quantity that starts at zero (time): the axis shows 0 whatever the data.
    FromZero,
}

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// (x, y) points, in x order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (a secondary quantity, such as the training loss beside the test loss).
    pub dashed: bool,
}

/// A line chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X axis label, with its unit.
    pub x_label: String,
    /// Y axis label, with its unit.
    pub y_label: String,
    /// What the x axis counts.
    pub x_axis: XAxis,
    /// What the y values can be: (0, 100) for a percentage, (0, ∞) for a loss. The axis fits
    /// the data with a small margin, and its ticks stay within these bounds.
    pub y_bounds: (f64, f64),
    /// The lines, one colour and marker each, in legend order.
    pub series: Vec<Series>,
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The embedded font is unusable.
    #[error(transparent)]
    Font(#[from] FontError),
    /// plotters failed to measure or draw (its error type depends on the backend, so it is
    /// kept as text).
    #[error("drawing the chart: {0}")]
    Draw(String),
    /// The PNG encoder failed.
    #[error("encoding the PNG: {0}")]
    Png(#[from] ::png::EncodingError),
}

impl Chart {
    /// The chart as an SVG document.
    pub fn to_svg(&self) -> Result<String, PlotError> {
        font::register()?;
        let layout = Layout::new(self, Target::svg(f64::from(SVG_SCALE)))?;
        let (w, h) = layout.device_size();
        let mut svg = String::new();
        layout.draw(SVGBackend::with_string(&mut svg, (w, h)))?;
        // plotters writes width and height in its own units; the chart's size is a
        // SVG_SCALE-th of that (the viewBox keeps the units).
        let (cw, ch) = (layout.width.round(), layout.height.round());
        Ok(svg.replacen(
            &format!("<svg width=\"{w}\" height=\"{h}\""),
            &format!("<svg width=\"{cw}\" height=\"{ch}\""),
            1,
        ))
    }

    /// The chart as a PNG (RGB, [`PNG_SCALE`] pixels per chart pixel), anti-aliased.
    pub fn to_png(&self) -> Result<Vec<u8>, PlotError> {
        png::render(self)
    }

    /// Writes `<stem>.svg` and `<stem>.png` in `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), SimError> {
        let svg_path = dir.join(format!("{stem}.svg"));
        let svg = self.to_svg().map_err(|source| SimError::Plot {
            path: svg_path.clone(),
            source,
        })?;
        std::fs::write(&svg_path, svg).map_err(|source| SimError::Io {
            path: svg_path,
            source,
        })?;
        let png_path = dir.join(format!("{stem}.png"));
        let png = self.to_png().map_err(|source| SimError::Plot {
            path: png_path.clone(),
            source,
        })?;
        std::fs::write(&png_path, png).map_err(|source| SimError::Io {
            path: png_path,
            source,
        })
    }
}
