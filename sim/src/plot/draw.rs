//! Laying out a [`Chart`] ([`Layout::new`], pure arithmetic on the font's metrics) and drawing it
//! on any plotters backend ([`Layout::draw`]).
//!
//! plotters draws every shape and glyph; the layout is done here rather than by plotters'
//! `ChartBuilder` because a figure needs things it does not do: the legend placed in the
//! corner that hides no data (or below the plot, growing the canvas, when no corner is free),
//! text set on a baseline so that SVG and PNG agree, and label areas sized to their text.
//!
//! All lengths below are in chart pixels (the SVG's CSS pixels); [`Target::scale`] turns them
//! into device pixels.

use plotters::coord::Shift;
use plotters::element::{Circle, PathElement, Polygon, Rectangle};
use plotters::prelude::{DrawingArea, DrawingBackend, IntoDrawingArea as _};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{
    Color as _, FontDesc, FontFamily, FontStyle, FontTransform, RGBColor, ShapeStyle, TextStyle,
    WHITE,
};

use super::font::{FAMILY, HEIGHT_PER_EM};
use super::ticks::{nice_ticks, round_ticks, tick_labels};
use super::{Chart, HEIGHT, PALETTE, PlotError, WIDTH, XAxis};

const MARGIN: f64 = 12.0;
const TITLE_EM: f64 = 15.5;
const LABEL_EM: f64 = 14.0;
const TICK_EM: f64 = 12.5;
const LEGEND_EM: f64 = 12.5;
/// Ascent of DejaVu Sans (1901 / 2048 em): from the top of the text box to the baseline.
const ASCENT: f64 = 0.928;
/// Half the height of a digit (cap height 0.729 em): centres numbers on a grid line.
const HALF_DIGIT: f64 = 0.364;
const TICK_LEN: f64 = 4.5;
/// Round axes up to this many rounds get a minor tick at every round.
const MAX_ROUND_MINOR_TICKS: u32 = 60;
const LINE_WIDTH: f64 = 2.0;
const MARKER_SIZE: f64 = 3.6;
/// Markers on at most this many points per series (evenly spaced), so long runs stay legible.
const MAX_MARKERS: usize = 16;
const LEGEND_PAD: f64 = 7.0;
const LEGEND_SAMPLE: f64 = 26.0;
const LEGEND_ROW: f64 = LEGEND_EM * 1.5;
const LEGEND_COL_GAP: f64 = 22.0;
const DASH: f64 = 6.0;
const DASH_GAP: f64 = 4.0;

const TEXT: RGBColor = RGBColor(0x22, 0x22, 0x22);
const AXIS: RGBColor = RGBColor(0x4d, 0x4d, 0x4d);
const GRID: RGBColor = RGBColor(0xe4, 0xe4, 0xe4);
const LEGEND_EDGE: RGBColor = RGBColor(0xc8, 0xc8, 0xc8);

/// How one output draws: its device pixels per chart pixel, and how plotters sizes and places
/// text on it.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Device pixels per chart pixel.
    pub scale: f64,
    /// plotters' font size for a one-pixel em: the SVG backend writes `font-size = size / 1.24`,
    /// ab_glyph scales ascent − descent to `size`.
    size_per_em: f64,
    /// Baseline below a `VPos::Top` anchor, in em: the SVG backend sets `dy="0.76em"`, the
    /// bitmap backend puts the baseline half the font size down.
    top_to_baseline: f64,
    /// Thick lines are drawn segment by segment with round joins. plotters' bitmap backend
    /// joins the segments of a thick path with unlimited miters, which shoot far out where a
    /// line turns back on itself; SVG viewers cut miters off themselves.
    round_joins: bool,
}

impl Target {
    /// The SVG backend at `scale` device units per chart pixel.
    pub fn svg(scale: f64) -> Self {
        Self {
            scale,
            size_per_em: 1.24,
            top_to_baseline: 0.76,
            round_joins: false,
        }
    }

    /// The bitmap backend (fonts through ab_glyph) at `scale` device pixels per chart pixel.
    pub fn bitmap(scale: f64) -> Self {
        Self {
            scale,
            size_per_em: HEIGHT_PER_EM,
            top_to_baseline: HEIGHT_PER_EM / 2.0,
            round_joins: true,
        }
    }

    fn font(&self, em: f64, bold: bool) -> FontDesc<'static> {
        let style = if bold {
            FontStyle::Bold
        } else {
            FontStyle::Normal
        };
        let em = em * self.scale;
        let mut size = em * self.size_per_em;
        // The SVG backend writes `size / 1.24` as the font size: of the doubles next to `size`,
        // take one that divides back to the em exactly, so that the file reads `25`, not
        // `25.000000000000004`.
        if let Some(exact) = [size, size.next_up(), size.next_down()]
            .into_iter()
            .find(|s| s / self.size_per_em == em)
        {
            size = exact;
        }
        FontDesc::new(FontFamily::Name(FAMILY), size, style)
    }

    /// Width of `text` in chart pixels.
    fn width(&self, text: &str, em: f64, bold: bool) -> Result<f64, PlotError> {
        let (w, _) = self
            .font(em, bold)
            .box_size(text)
            .map_err(|e| PlotError::Draw(format!("measuring {text:?}: {e}")))?;
        Ok(f64::from(w) / self.scale)
    }

    fn px(&self, v: f64) -> i32 {
        (v * self.scale).round() as i32
    }

    fn point(&self, (x, y): (f64, f64)) -> (i32, i32) {
        (self.px(x), self.px(y))
    }

    fn stroke(&self, color: RGBColor, width: f64) -> ShapeStyle {
        color.stroke_width(((width * self.scale).round() as u32).max(1))
    }
}

/// A rectangle in chart pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    /// Left edge.
    pub x0: f64,
    /// Top edge.
    pub y0: f64,
    /// Right edge.
    pub x1: f64,
    /// Bottom edge.
    pub y1: f64,
}

impl Rect {
    fn contains(&self, (x, y): (f64, f64), slack: f64) -> bool {
        x >= self.x0 - slack && x <= self.x1 + slack && y >= self.y0 - slack && y <= self.y1 + slack
    }
}

/// Where the legend goes.
#[derive(Clone, Debug, PartialEq)]
pub enum LegendPlace {
    /// Nowhere: the chart has no series.
    Absent,
    /// In a corner of the plot, in this box, one entry per row.
    Inside(Rect),
    /// Below the x axis label, in this box, in `columns` columns of this width.
    Below {
        /// The legend's box.
        rect: Rect,
        /// Entries per row.
        columns: usize,
        /// Width of a column.
        column_width: f64,
    },
}

/// A chart laid out for one target: canvas size, plot area, axes, ticks and legend.
#[derive(Clone, Debug)]
pub struct Layout<'c> {
    chart: &'c Chart,
    target: Target,
    /// Canvas width in chart pixels.
    pub width: f64,
    /// Canvas height in chart pixels (taller than [`HEIGHT`] when the legend goes below).
    pub height: f64,
    /// The plot area.
    pub plot: Rect,
    x_range: (f64, f64),
    y_range: (f64, f64),
    x_ticks: Vec<f64>,
    y_ticks: Vec<f64>,
    x_tick_baseline: f64,
    x_label_baseline: f64,
    /// Where the legend goes.
    pub legend: LegendPlace,
    /// The legend's entries, shortened with "…" where they would not fit on the canvas.
    legend_labels: Vec<String>,
    legend_text_width: Vec<f64>,
}

/// `text`, cut short with "…" so that it is at most `max_width` chart pixels wide.
fn fit(target: &Target, text: &str, em: f64, max_width: f64) -> Result<(String, f64), PlotError> {
    let width = target.width(text, em, false)?;
    if width <= max_width {
        return Ok((text.to_string(), width));
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (0..chars.len()).rev() {
        let short: String = chars[..keep].iter().chain(['…'].iter()).collect();
        let width = target.width(&short, em, false)?;
        if width <= max_width || keep == 0 {
            return Ok((short, width));
        }
    }
    Ok((String::new(), 0.0))
}

/// An axis: the range it shows and its labelled ticks.
type Axis = ((f64, f64), Vec<f64>);

/// The x and y axes for the chart's data.
fn ranges(chart: &Chart) -> (Axis, Axis) {
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let finite = |v: &f64| v.is_finite();
    let xs: Vec<f64> = points().map(|p| p.0).filter(finite).collect();
    let ys: Vec<f64> = points().map(|p| p.1).filter(finite).collect();
    let min = |v: &[f64]| v.iter().copied().reduce(f64::min);
    let max = |v: &[f64]| v.iter().copied().reduce(f64::max);

    let (x_range, x_ticks) = match chart.x_axis {
        XAxis::Rounds => {
            let last = max(&xs).unwrap_or(1.0).clamp(1.0, f64::from(u32::MAX));
            let pad = (0.03 * (last - 1.0)).max(0.4);
            ((1.0 - pad, last + pad), round_ticks(last.round() as u32))
        }
        XAxis::FromZero => {
            let last = max(&xs).filter(|m| *m > 0.0).unwrap_or(1.0);
            // A little room left of 0 too, so that a point at 0 is not drawn on the frame.
            ((-0.02 * last, 1.04 * last), nice_ticks(0.0, 1.04 * last, 8))
        }
    };

    // The data's range within the bounds, then a margin around it (which may cross a bound, so
    // that points on it are not drawn on the frame); ticks stay within the bounds.
    let (lo_bound, hi_bound) = chart.y_bounds;
    let clamp = |v: f64| v.clamp(lo_bound.min(hi_bound), hi_bound.max(lo_bound));
    let (lo, hi) = match (min(&ys), max(&ys)) {
        (Some(lo), Some(hi)) => (clamp(lo), clamp(hi)),
        _ => (clamp(0.0), clamp(1.0)),
    };
    let span = hi - lo;
    let pad = if span > 1e-12 {
        0.06 * span
    } else {
        (0.05 * hi.abs()).max(0.5)
    };
    let (lo, hi) = (lo - pad, hi + pad);
    let ticks = nice_ticks(lo.max(lo_bound), hi.min(hi_bound), 6);
    ((x_range, x_ticks), ((lo, hi), ticks))
}

impl<'c> Layout<'c> {
    /// Lays `chart` out for `target`.
    pub fn new(chart: &'c Chart, target: Target) -> Result<Self, PlotError> {
        let ((x_range, x_ticks), (y_range, y_ticks)) = ranges(chart);
        let y_labels = tick_labels(&y_ticks);
        let x_labels = tick_labels(&x_ticks);
        let mut y_tick_width: f64 = 0.0;
        for l in &y_labels {
            y_tick_width = y_tick_width.max(target.width(l, TICK_EM, false)?);
        }
        let last_x_label = match x_labels.last() {
            Some(l) => target.width(l, TICK_EM, false)?,
            None => 0.0,
        };
        let width = f64::from(WIDTH);
        let longest = width - 2.0 * MARGIN - 2.0 * LEGEND_PAD - LEGEND_SAMPLE - 6.0;
        let (legend_labels, legend_text_width): (Vec<String>, Vec<f64>) = chart
            .series
            .iter()
            .map(|s| fit(&target, &s.label, LEGEND_EM, longest))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();

        let top = MARGIN
            + if chart.title.is_empty() {
                0.0
            } else {
                TITLE_EM * 1.2 + 8.0
            };
        let left = MARGIN + LABEL_EM * 1.2 + 8.0 + y_tick_width + 5.0 + TICK_LEN;
        let right = width - (MARGIN + 4.0).max(last_x_label / 2.0 + 6.0);
        // From the plot's bottom edge down: tick marks, tick labels, the axis label, the margin.
        let x_tick_gap = TICK_LEN + 4.0;
        let below_plot = x_tick_gap + TICK_EM * 1.2 + 7.0 + LABEL_EM * 1.2 + MARGIN;

        let mut layout = Layout {
            chart,
            target,
            width,
            height: f64::from(HEIGHT),
            plot: Rect {
                x0: left,
                y0: top,
                x1: right,
                y1: f64::from(HEIGHT) - below_plot,
            },
            x_range,
            y_range,
            x_ticks,
            y_ticks,
            x_tick_baseline: 0.0,
            x_label_baseline: 0.0,
            legend: LegendPlace::Absent,
            legend_labels,
            legend_text_width,
        };
        layout.legend = match layout.free_corner() {
            _ if chart.series.is_empty() => LegendPlace::Absent,
            Some(rect) => LegendPlace::Inside(rect),
            None => {
                // No corner is free: the legend goes below and the canvas grows to hold it,
                // so the plot keeps its size.
                let plot_width = layout.plot.x1 - layout.plot.x0;
                let column_width = layout
                    .legend_text_width
                    .iter()
                    .map(|w| LEGEND_SAMPLE + 6.0 + w + LEGEND_COL_GAP)
                    .fold(0.0, f64::max);
                let n = chart.series.len().max(1);
                let columns =
                    (((plot_width + LEGEND_COL_GAP) / column_width).floor() as usize).clamp(1, n);
                let rows = n.div_ceil(columns);
                // Whole chart pixels, so that every output's canvas is a whole number of them.
                let legend_height = (rows as f64 * LEGEND_ROW + 8.0).ceil();
                layout.height += legend_height;
                let used = columns as f64 * column_width - LEGEND_COL_GAP;
                // Centred under the plot, and on the canvas whatever its width.
                let x0 = (layout.plot.x0 + (plot_width - used) / 2.0)
                    .min(width - MARGIN - used)
                    .max(MARGIN);
                let y1 = layout.height - MARGIN;
                LegendPlace::Below {
                    rect: Rect {
                        x0,
                        y0: y1 - legend_height,
                        x1: x0 + used,
                        y1,
                    },
                    columns,
                    column_width,
                }
            }
        };
        layout.x_tick_baseline = layout.plot.y1 + x_tick_gap + TICK_EM * ASCENT;
        layout.x_label_baseline = layout.x_tick_baseline + TICK_EM * 0.25 + 7.0 + LABEL_EM * ASCENT;
        Ok(layout)
    }

    /// Data to chart pixels.
    fn map(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let p = &self.plot;
        let (x0, x1) = self.x_range;
        let (y0, y1) = self.y_range;
        (
            p.x0 + (x - x0) / (x1 - x0) * (p.x1 - p.x0),
            p.y1 - (y.clamp(y0, y1) - y0) / (y1 - y0) * (p.y1 - p.y0),
        )
    }

    /// Each series' points in chart pixels (non-finite points dropped).
    fn mapped(&self) -> Vec<Vec<(f64, f64)>> {
        self.chart
            .series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .map(|&p| self.map(p))
                    .collect()
            })
            .collect()
    }

    /// The first corner (lower right, upper right, upper left, lower left) where the legend
    /// box covers no line or marker, if the box is small enough to sit inside the plot.
    fn free_corner(&self) -> Option<Rect> {
        let n = self.chart.series.len();
        if n == 0 {
            return None;
        }
        let text = self.legend_text_width.iter().copied().fold(0.0, f64::max);
        let (w, h) = (
            2.0 * LEGEND_PAD + LEGEND_SAMPLE + 6.0 + text,
            2.0 * LEGEND_PAD + n as f64 * LEGEND_ROW,
        );
        let p = &self.plot;
        if w > 0.6 * (p.x1 - p.x0) || h > 0.6 * (p.y1 - p.y0) {
            return None;
        }
        // Points along every segment, two pixels apart: a legend must not hide a line either.
        let mut samples = Vec::new();
        for line in self.mapped() {
            samples.extend(line.iter().copied());
            for pair in line.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let steps = (distance(a, b) / 2.0).ceil().max(1.0) as usize;
                samples.extend((1..steps).map(|i| {
                    let t = i as f64 / steps as f64;
                    (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))
                }));
            }
        }
        let inset = 8.0;
        let corners = [
            (p.x1 - inset - w, p.y1 - inset - h),
            (p.x1 - inset - w, p.y0 + inset),
            (p.x0 + inset, p.y0 + inset),
            (p.x0 + inset, p.y1 - inset - h),
        ];
        corners
            .into_iter()
            .map(|(x0, y0)| Rect {
                x0,
                y0,
                x1: x0 + w,
                y1: y0 + h,
            })
            .find(|r| !samples.iter().any(|&s| r.contains(s, MARKER_SIZE + 3.0)))
    }

    fn text_style(&self, em: f64, bold: bool, h: HPos, vertical: bool) -> TextStyle<'static> {
        let style = self
            .target
            .font(em, bold)
            .color(&TEXT)
            .pos(Pos::new(h, VPos::Top));
        if vertical {
            style.transform(FontTransform::Rotate270)
        } else {
            style
        }
    }

    /// Draws `text` with its baseline at `baseline` (a y, or for vertical text an x) and
    /// anchored at `along` (an x, or for vertical text a y) by `h`.
    #[allow(clippy::too_many_arguments)]
    fn text<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: &str,
        along: f64,
        baseline: f64,
        em: f64,
        bold: bool,
        h: HPos,
        vertical: bool,
    ) -> Result<(), PlotError> {
        let top = baseline - self.target.top_to_baseline * em;
        let pos = if vertical { (top, along) } else { (along, top) };
        area.draw_text(
            text,
            &self.text_style(em, bold, h, vertical),
            self.target.point(pos),
        )
        .map_err(draw_error)
    }

    /// Canvas size in device pixels.
    pub fn device_size(&self) -> (u32, u32) {
        (
            (self.width * self.target.scale).round() as u32,
            (self.height * self.target.scale).round() as u32,
        )
    }

    /// Draws the chart on `backend`, whose size must be [`Layout::device_size`].
    pub fn draw<DB: DrawingBackend>(&self, backend: DB) -> Result<(), PlotError> {
        let root = backend.into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let t = &self.target;
        let p = self.plot;
        let chart = self.chart;

        if !chart.title.is_empty() {
            self.text(
                &root,
                &chart.title,
                (p.x0 + p.x1) / 2.0,
                MARGIN + TITLE_EM * ASCENT,
                TITLE_EM,
                true,
                HPos::Center,
                false,
            )?;
        }

        // Grid, then data, then the frame and ticks over the data's ends.
        let grid = t.stroke(GRID, 1.0);
        for &y in &self.y_ticks {
            let (_, py) = self.map((self.x_range.0, y));
            self.line(&root, &[(p.x0, py), (p.x1, py)], grid)?;
        }
        for &x in &self.x_ticks {
            let (px, _) = self.map((x, self.y_range.0));
            self.line(&root, &[(px, p.y0), (px, p.y1)], grid)?;
        }

        let lines = self.mapped();
        for (i, (series, points)) in chart.series.iter().zip(&lines).enumerate() {
            self.polyline(&root, points, PALETTE[i % PALETTE.len()], series.dashed)?;
            for &m in markers(points.len(), i, chart.series.len())
                .iter()
                .filter_map(|&k| points.get(k))
            {
                self.marker(&root, i, m)?;
            }
        }
        if lines.iter().all(Vec::is_empty) {
            self.text(
                &root,
                "no data",
                (p.x0 + p.x1) / 2.0,
                (p.y0 + p.y1) / 2.0,
                LABEL_EM,
                false,
                HPos::Center,
                false,
            )?;
        }

        let axis = t.stroke(AXIS, 1.0);
        root.draw(&Rectangle::new(
            [t.point((p.x0, p.y0)), t.point((p.x1, p.y1))],
            axis,
        ))
        .map_err(draw_error)?;
        for (&x, label) in self.x_ticks.iter().zip(tick_labels(&self.x_ticks)) {
            let (px, _) = self.map((x, self.y_range.0));
            self.line(&root, &[(px, p.y1), (px, p.y1 + TICK_LEN)], axis)?;
            self.text(
                &root,
                &label,
                px,
                self.x_tick_baseline,
                TICK_EM,
                false,
                HPos::Center,
                false,
            )?;
        }
        // Every round gets a short unlabelled tick, so that rounds can be counted off the axis.
        if chart.x_axis == XAxis::Rounds {
            let last = self.x_range.1.floor() as u32;
            if last <= MAX_ROUND_MINOR_TICKS {
                for r in 1..=last {
                    if !self.x_ticks.contains(&f64::from(r)) {
                        let (px, _) = self.map((f64::from(r), self.y_range.0));
                        self.line(&root, &[(px, p.y1), (px, p.y1 + TICK_LEN * 0.6)], axis)?;
                    }
                }
            }
        }
        for (&y, label) in self.y_ticks.iter().zip(tick_labels(&self.y_ticks)) {
            let (_, py) = self.map((self.x_range.0, y));
            self.line(&root, &[(p.x0 - TICK_LEN, py), (p.x0, py)], axis)?;
            self.text(
                &root,
                &label,
                p.x0 - TICK_LEN - 5.0,
                py + TICK_EM * HALF_DIGIT,
                TICK_EM,
                false,
                HPos::Right,
                false,
            )?;
        }
        self.text(
            &root,
            &chart.x_label,
            (p.x0 + p.x1) / 2.0,
            self.x_label_baseline,
            LABEL_EM,
            false,
            HPos::Center,
            false,
        )?;
        self.text(
            &root,
            &chart.y_label,
            (p.y0 + p.y1) / 2.0,
            MARGIN + LABEL_EM * ASCENT,
            LABEL_EM,
            false,
            HPos::Center,
            true,
        )?;

        self.draw_legend(&root)?;
        root.present().map_err(draw_error)
    }

    fn draw_legend<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), PlotError> {
        let t = &self.target;
        let n = self.chart.series.len();
        // (x of the sample line's start, y of the row's middle) for each entry.
        let rows: Vec<(f64, f64)> = match &self.legend {
            LegendPlace::Absent => return Ok(()),
            LegendPlace::Inside(r) => {
                root.draw(&Rectangle::new(
                    [t.point((r.x0, r.y0)), t.point((r.x1, r.y1))],
                    WHITE.mix(0.9).filled(),
                ))
                .map_err(draw_error)?;
                root.draw(&Rectangle::new(
                    [t.point((r.x0, r.y0)), t.point((r.x1, r.y1))],
                    t.stroke(LEGEND_EDGE, 1.0),
                ))
                .map_err(draw_error)?;
                (0..n)
                    .map(|i| {
                        (
                            r.x0 + LEGEND_PAD,
                            r.y0 + LEGEND_PAD + (i as f64 + 0.5) * LEGEND_ROW,
                        )
                    })
                    .collect()
            }
            LegendPlace::Below {
                rect,
                columns,
                column_width,
            } => (0..n)
                .map(|i| {
                    (
                        rect.x0 + (i % columns) as f64 * column_width,
                        rect.y0 + 6.0 + ((i / columns) as f64 + 0.5) * LEGEND_ROW,
                    )
                })
                .collect(),
        };
        let entries = self.chart.series.iter().zip(&self.legend_labels);
        for (i, ((series, label), (x, y))) in entries.zip(rows).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            self.polyline(
                root,
                &[(x, y), (x + LEGEND_SAMPLE, y)],
                color,
                series.dashed,
            )?;
            self.marker(root, i, (x + LEGEND_SAMPLE / 2.0, y))?;
            self.text(
                root,
                label,
                x + LEGEND_SAMPLE + 6.0,
                y + LEGEND_EM * HALF_DIGIT,
                LEGEND_EM,
                false,
                HPos::Left,
                false,
            )?;
        }
        Ok(())
    }

    fn line<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        points: &[(f64, f64)],
        style: ShapeStyle,
    ) -> Result<(), PlotError> {
        let pts: Vec<(i32, i32)> = points.iter().map(|&q| self.target.point(q)).collect();
        area.draw(&PathElement::new(pts, style)).map_err(draw_error)
    }

    /// A data line: solid, or dashed ([`DASH`] on, [`DASH_GAP`] off).
    fn polyline<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        points: &[(f64, f64)],
        color: RGBColor,
        dashed: bool,
    ) -> Result<(), PlotError> {
        let pieces = if dashed {
            dashes(points, DASH, DASH_GAP)
        } else {
            vec![points.to_vec()]
        };
        let t = &self.target;
        let style = t.stroke(color, LINE_WIDTH);
        for piece in pieces {
            if !t.round_joins {
                self.line(area, &piece, style)?;
                continue;
            }
            for pair in piece.windows(2) {
                self.line(area, pair, style)?;
            }
            // Round joins and caps.
            if piece.len() > 1 {
                for &p in &piece {
                    area.draw(&Circle::new(
                        t.point(p),
                        t.px(LINE_WIDTH / 2.0),
                        color.filled(),
                    ))
                    .map_err(draw_error)?;
                }
            }
        }
        Ok(())
    }

    /// Series `i`'s marker centred at `at`: a filled circle, square, triangle, diamond or
    /// downward triangle, so that lines stay apart in grey print and for colour-blind readers.
    fn marker<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        i: usize,
        (x, y): (f64, f64),
    ) -> Result<(), PlotError> {
        let t = &self.target;
        let fill = PALETTE[i % PALETTE.len()].filled();
        let r = MARKER_SIZE;
        let poly = |offsets: &[(f64, f64)]| -> Vec<(i32, i32)> {
            offsets
                .iter()
                .map(|&(dx, dy)| t.point((x + dx * r, y + dy * r)))
                .collect()
        };
        let result = match i % 5 {
            0 => area.draw(&Circle::new(t.point((x, y)), t.px(r), fill)),
            1 => area.draw(&Polygon::new(
                poly(&[(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)]),
                fill,
            )),
            2 => area.draw(&Polygon::new(
                poly(&[(0.0, -1.25), (1.1, 0.7), (-1.1, 0.7)]),
                fill,
            )),
            3 => area.draw(&Polygon::new(
                poly(&[(0.0, -1.3), (1.1, 0.0), (0.0, 1.3), (-1.1, 0.0)]),
                fill,
            )),
            _ => area.draw(&Polygon::new(
                poly(&[(0.0, 1.25), (1.1, -0.7), (-1.1, -0.7)]),
                fill,
            )),
        };
        result.map_err(draw_error)
    }
}

/// Which of a series' `n` points get a marker: all of them up to `MAX_MARKERS` (16), otherwise
/// every k-th, each series starting at a different offset so that markers of close lines do
/// not sit on top of each other.
pub fn markers(n: usize, series: usize, of: usize) -> Vec<usize> {
    if n <= MAX_MARKERS {
        return (0..n).collect();
    }
    let every = n.div_ceil(MAX_MARKERS);
    let offset = (series * every) / of.max(1);
    (offset..n).step_by(every).collect()
}

/// Euclidean distance with a correctly rounded `sqrt` (unlike `hypot`, whose last bit may differ
/// between platforms' maths libraries and move a dash in the SVG snapshots).
fn distance(a: (f64, f64), b: (f64, f64)) -> f64 {
    ((b.0 - a.0) * (b.0 - a.0) + (b.1 - a.1) * (b.1 - a.1)).sqrt()
}

/// The "on" stretches of a polyline dashed `on` long with `off` gaps, as polylines.
pub fn dashes(points: &[(f64, f64)], on: f64, off: f64) -> Vec<Vec<(f64, f64)>> {
    let mut pieces = Vec::new();
    let Some(&first) = points.first() else {
        return pieces;
    };
    let (mut drawing, mut left) = (true, on);
    let mut current = vec![first];
    for pair in points.windows(2) {
        let (mut a, b) = (pair[0], pair[1]);
        let mut length = distance(a, b);
        while length > left {
            let t = left / length;
            a = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
            length -= left;
            if drawing {
                current.push(a);
                pieces.push(std::mem::take(&mut current));
            } else {
                current = vec![a];
            }
            drawing = !drawing;
            left = if drawing { on } else { off };
        }
        left -= length;
        if drawing {
            current.push(b);
        }
    }
    if drawing && current.len() > 1 {
        pieces.push(current);
    }
    pieces
}

fn draw_error(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{Series, font};

    fn chart(series: Vec<Vec<(f64, f64)>>) -> Chart {
        Chart {
            title: "t".into(),
            x_label: "Round".into(),
            y_label: "y".into(),
            x_axis: XAxis::Rounds,
            y_bounds: (0.0, 100.0),
            series: series
                .into_iter()
                .enumerate()
                .map(|(i, points)| Series {
                    label: format!("run {i}"),
                    points,
                    dashed: false,
                })
                .collect(),
        }
    }

    #[test]
    fn the_legend_takes_a_corner_that_hides_no_data() {
        font::register().unwrap();
        // A rising line leaves the lower right free.
        let rising = chart(vec![
            (1..=10)
                .map(|r| (f64::from(r), f64::from(r) * 10.0))
                .collect(),
        ]);
        let layout = Layout::new(&rising, Target::svg(2.0)).unwrap();
        let LegendPlace::Inside(r) = layout.legend else {
            panic!("{:?}", layout.legend)
        };
        assert!(r.x0 > (layout.plot.x0 + layout.plot.x1) / 2.0, "{r:?}");
        assert!(r.y0 > (layout.plot.y0 + layout.plot.y1) / 2.0, "{r:?}");
        assert_eq!(layout.height, f64::from(HEIGHT));
        // A falling line leaves the upper right free.
        let falling = chart(vec![
            (1..=10)
                .map(|r| (f64::from(r), 100.0 - f64::from(r) * 10.0))
                .collect(),
        ]);
        let layout = Layout::new(&falling, Target::svg(2.0)).unwrap();
        let LegendPlace::Inside(r) = layout.legend else {
            panic!("{:?}", layout.legend)
        };
        assert!(
            r.x0 > (layout.plot.x0 + layout.plot.x1) / 2.0
                && r.y1 < (layout.plot.y0 + layout.plot.y1) / 2.0,
            "{r:?}"
        );
    }

    #[test]
    fn with_every_corner_taken_the_legend_goes_below_and_the_canvas_grows() {
        font::register().unwrap();
        let cross = chart(vec![
            (1..=10)
                .map(|r| (f64::from(r), f64::from(r) * 10.0))
                .collect(),
            (1..=10)
                .map(|r| (f64::from(r), 100.0 - f64::from(r) * 10.0))
                .collect(),
        ]);
        let layout = Layout::new(&cross, Target::bitmap(6.0)).unwrap();
        let LegendPlace::Below { rect, columns, .. } = &layout.legend else {
            panic!("{:?}", layout.legend)
        };
        assert_eq!(*columns, 2);
        assert!(rect.y0 > layout.plot.y1 && rect.y1 <= layout.height);
        assert!(layout.height > f64::from(HEIGHT));
        assert_eq!(layout.device_size().0, WIDTH * 6);
    }

    #[test]
    fn an_empty_chart_has_no_legend_and_long_labels_are_cut_to_fit() {
        font::register().unwrap();
        let empty = chart(vec![]);
        let layout = Layout::new(&empty, Target::svg(2.0)).unwrap();
        assert_eq!(layout.legend, LegendPlace::Absent);
        assert_eq!(layout.height, f64::from(HEIGHT));
        assert!(empty.to_svg().unwrap().contains("no data"));

        let mut long = chart(vec![vec![(1.0, 50.0), (2.0, 60.0)]]);
        long.series[0].label = "a very long sweep label, ".repeat(10);
        let layout = Layout::new(&long, Target::bitmap(6.0)).unwrap();
        let label = &layout.legend_labels[0];
        assert!(label.ends_with('…') && label.len() < long.series[0].label.len());
        let LegendPlace::Below { rect, .. } = layout.legend else {
            panic!("{:?}", layout.legend)
        };
        assert!(rect.x1 <= f64::from(WIDTH) - MARGIN + 1.0, "{rect:?}");
    }

    #[test]
    fn dashes_alternate_along_the_line() {
        let pieces = dashes(&[(0.0, 0.0), (20.0, 0.0)], 6.0, 4.0);
        assert_eq!(
            pieces,
            vec![vec![(0.0, 0.0), (6.0, 0.0)], vec![(10.0, 0.0), (16.0, 0.0)]]
        );
        // Across a corner, a dash bends with the line.
        let pieces = dashes(&[(0.0, 0.0), (4.0, 0.0), (4.0, 10.0)], 6.0, 4.0);
        assert_eq!(pieces[0], vec![(0.0, 0.0), (4.0, 0.0), (4.0, 2.0)]);
        assert_eq!(pieces[1], vec![(4.0, 6.0), (4.0, 10.0)]);
        assert!(dashes(&[], 6.0, 4.0).is_empty());
    }

    #[test]
    fn long_series_get_staggered_markers() {
        assert_eq!(markers(5, 0, 3), vec![0, 1, 2, 3, 4]);
        let a = markers(100, 0, 3);
        let b = markers(100, 1, 3);
        assert!(a.len() <= MAX_MARKERS && b.len() <= MAX_MARKERS);
        assert!(a.iter().all(|i| !b.contains(i)), "{a:?} {b:?}");
    }
}
