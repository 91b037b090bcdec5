//! Line charts of metrics (accuracy against round, against simulated time), written as SVG and
//! PNG.
//!
//! A [`Chart`] is laid out once into drawing primitives ([`Shape`]); [`Chart::to_svg`] writes
//! them as SVG text and [`raster::render_png`] rasterises them with a compiled-in bitmap font.
//! Doing this by hand rather than with a plotting crate keeps the build small and needs no
//! system font.

pub mod font;
pub mod raster;

use std::fmt::Write as _;
use std::path::Path;

use crate::error::SimError;

/// Canvas width in pixels.
pub const WIDTH: u32 = 1060;
/// Canvas height in pixels.
pub const HEIGHT: u32 = 500;

const LEFT: f64 = 70.0;
const RIGHT: f64 = 400.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

/// Series colours, in order (Okabe-Ito, distinguishable with colour blindness).
pub const PALETTE: [[u8; 3]; 8] = [
    [0, 114, 178],
    [213, 94, 0],
    [0, 158, 115],
    [204, 121, 167],
    [230, 159, 0],
    [86, 180, 233],
    [0, 0, 0],
    [240, 228, 66],
];

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// (x, y) points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A line chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// A fixed y range, or `None` to fit the data.
    pub y_range: Option<(f64, f64)>,
}

/// A drawing primitive in pixel coordinates.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// A straight line.
    Line {
        /// Start and end points.
        from: (f64, f64),
        /// End point.
        to: (f64, f64),
        /// RGB colour.
        color: [u8; 3],
        /// Stroke width.
        width: f64,
    },
    /// Connected line segments.
    Polyline {
        /// The points.
        points: Vec<(f64, f64)>,
        /// RGB colour.
        color: [u8; 3],
        /// Stroke width.
        width: f64,
    },
    /// Text with its anchor at `at` (left, centre or right end of the baseline).
    Text {
        /// Anchor point.
        at: (f64, f64),
        /// The text.
        text: String,
        /// -1 left, 0 centre, 1 right.
        anchor: i8,
        /// Rotated 90° counter-clockwise (for the y label).
        vertical: bool,
    },
}

/// About five round numbers covering `[lo, hi]`.
pub fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..)
        .map(|i| first + f64::from(i) * step)
        .take_while(|t| *t <= hi + step * 1e-9)
        .take(20)
        .collect()
}

fn tick_label(v: f64) -> String {
    if v.abs() >= 1000.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if (v * 10.0).fract().abs() < 1e-9 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Chart {
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        if let Some(r) = self.y_range {
            (y0, y1) = r;
        } else if y1 - y0 < 1e-12 {
            y1 = y0 + 1.0;
        }
        ((x0, x1), (y0, y1))
    }

    /// Lays the chart out into primitives.
    pub fn shapes(&self) -> Vec<Shape> {
        let ((x0, x1), (y0, y1)) = self.ranges();
        let (w, h) = (f64::from(WIDTH), f64::from(HEIGHT));
        let (pw, ph) = (w - LEFT - RIGHT, h - TOP - BOTTOM);
        let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let py = |y: f64| TOP + ph - (y.clamp(y0, y1) - y0) / (y1 - y0) * ph;
        let grey = [200, 200, 200];
        let black = [0, 0, 0];
        let mut out = Vec::new();
        for t in nice_ticks(y0, y1) {
            out.push(Shape::Line {
                from: (LEFT, py(t)),
                to: (LEFT + pw, py(t)),
                color: grey,
                width: 1.0,
            });
            out.push(Shape::Text {
                at: (LEFT - 8.0, py(t) + 5.0),
                text: tick_label(t),
                anchor: 1,
                vertical: false,
            });
        }
        for t in nice_ticks(x0, x1) {
            out.push(Shape::Line {
                from: (px(t), TOP),
                to: (px(t), TOP + ph),
                color: grey,
                width: 1.0,
            });
            out.push(Shape::Text {
                at: (px(t), TOP + ph + 20.0),
                text: tick_label(t),
                anchor: 0,
                vertical: false,
            });
        }
        out.push(Shape::Line {
            from: (LEFT, TOP + ph),
            to: (LEFT + pw, TOP + ph),
            color: black,
            width: 1.5,
        });
        out.push(Shape::Line {
            from: (LEFT, TOP),
            to: (LEFT, TOP + ph),
            color: black,
            width: 1.5,
        });
        out.push(Shape::Text {
            at: (LEFT + pw / 2.0, 25.0),
            text: self.title.clone(),
            anchor: 0,
            vertical: false,
        });
        out.push(Shape::Text {
            at: (LEFT + pw / 2.0, h - 12.0),
            text: self.x_label.clone(),
            anchor: 0,
            vertical: false,
        });
        out.push(Shape::Text {
            at: (20.0, TOP + ph / 2.0),
            text: self.y_label.clone(),
            anchor: 0,
            vertical: true,
        });
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (px(x), py(y))).collect();
            out.push(Shape::Polyline {
                points,
                color,
                width: 2.0,
            });
            let ly = TOP + 10.0 + 22.0 * i as f64;
            let lx = LEFT + pw + 15.0;
            out.push(Shape::Line {
                from: (lx, ly),
                to: (lx + 25.0, ly),
                color,
                width: 3.0,
            });
            out.push(Shape::Text {
                at: (lx + 32.0, ly + 5.0),
                text: s.label.clone(),
                anchor: -1,
                vertical: false,
            });
        }
        out
    }

    /// The chart as an SVG document.
    pub fn to_svg(&self) -> String {
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"13\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let rgb = |c: [u8; 3]| format!("rgb({},{},{})", c[0], c[1], c[2]);
        for shape in self.shapes() {
            let _ = match shape {
                Shape::Line {
                    from,
                    to,
                    color,
                    width,
                } => writeln!(
                    s,
                    "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"{width}\"/>",
                    from.0,
                    from.1,
                    to.0,
                    to.1,
                    rgb(color)
                ),
                Shape::Polyline {
                    points,
                    color,
                    width,
                } => {
                    let pts: Vec<String> = points
                        .iter()
                        .map(|(x, y)| format!("{x:.1},{y:.1}"))
                        .collect();
                    writeln!(
                        s,
                        "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{width}\" stroke-linejoin=\"round\"/>",
                        pts.join(" "),
                        rgb(color)
                    )
                }
                Shape::Text {
                    at,
                    text,
                    anchor,
                    vertical,
                } => {
                    let anchor = match anchor {
                        -1 => "start",
                        0 => "middle",
                        _ => "end",
                    };
                    let rotate = if vertical {
                        format!(" transform=\"rotate(-90 {:.1} {:.1})\"", at.0, at.1)
                    } else {
                        String::new()
                    };
                    writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\"{rotate}>{}</text>",
                        at.0,
                        at.1,
                        escape(&text)
                    )
                }
            };
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes `<stem>.svg` and `<stem>.png` in `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), SimError> {
        let svg = dir.join(format!("{stem}.svg"));
        std::fs::write(&svg, self.to_svg()).map_err(|source| SimError::Io { path: svg, source })?;
        let png = dir.join(format!("{stem}.png"));
        let bytes = raster::render_png(self).map_err(|e| SimError::Io {
            path: png.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        std::fs::write(&png, bytes).map_err(|source| SimError::Io { path: png, source })
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = nice_ticks(1.0, 100.0);
        assert_eq!(t.first(), Some(&20.0));
        assert_eq!(t.last(), Some(&100.0));
    }

    #[test]
    fn svg_holds_every_series_and_label() {
        let chart = Chart {
            title: "acc <vs> round".into(),
            x_label: "round".into(),
            y_label: "accuracy".into(),
            series: vec![
                Series {
                    label: "iid".into(),
                    points: vec![(1.0, 0.5), (2.0, 0.7)],
                },
                Series {
                    label: "dirichlet".into(),
                    points: vec![(1.0, 0.3), (2.0, 0.4)],
                },
            ],
            y_range: Some((0.0, 1.0)),
        };
        let svg = chart.to_svg();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">dirichlet</text>"));
        assert!(svg.contains("acc &lt;vs&gt; round"));
        let png = raster::render_png(&chart).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
