//! Rasterising a chart's primitives into a PNG: lines are stamped with round brushes (good
//! enough at chart scale, no anti-aliasing), text uses the 5×7 font at twice its size.

use super::font;
use super::{Chart, HEIGHT, Shape, WIDTH};

/// Font pixels per canvas pixel.
const TEXT_SCALE: usize = 2;

struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            rgb: vec![255; w * h * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    fn brush(&mut self, cx: f64, cy: f64, width: f64, c: [u8; 3]) {
        let r = (width / 2.0).max(0.5);
        let (x0, x1) = ((cx - r).floor() as i64, (cx + r).ceil() as i64);
        let (y0, y1) = ((cy - r).floor() as i64, (cy + r).ceil() as i64);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                if dx * dx + dy * dy <= r * r + 0.25 {
                    self.set(x, y, c);
                }
            }
        }
    }

    fn line(&mut self, a: (f64, f64), b: (f64, f64), width: f64, c: [u8; 3]) {
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let steps = (len * 2.0).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            self.brush(a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1), width, c);
        }
    }

    fn text(&mut self, at: (f64, f64), text: &str, anchor: i8, vertical: bool) {
        let n = text.chars().count();
        let len = (n * font::ADVANCE * TEXT_SCALE) as f64;
        let shift = match anchor {
            -1 => 0.0,
            0 => len / 2.0,
            _ => len,
        };
        let glyph_h = (font::HEIGHT * TEXT_SCALE) as f64;
        for (k, ch) in text.chars().enumerate() {
            let g = font::glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..font::WIDTH {
                    if bits & (0x10 >> col) == 0 {
                        continue;
                    }
                    for sy in 0..TEXT_SCALE {
                        for sx in 0..TEXT_SCALE {
                            // Along the text and across it, in font pixels scaled.
                            let u = (k * font::ADVANCE + col) * TEXT_SCALE + sx;
                            let v = row * TEXT_SCALE + sy;
                            let (u, v) = (u as f64 - shift, v as f64 - glyph_h);
                            let (x, y) = if vertical {
                                (at.0 + v, at.1 - u)
                            } else {
                                (at.0 + u, at.1 + v)
                            };
                            self.set(x as i64, y as i64, [0, 0, 0]);
                        }
                    }
                }
            }
        }
    }
}

/// Renders the chart as PNG bytes.
pub fn render_png(chart: &Chart) -> Result<Vec<u8>, png::EncodingError> {
    let (w, h) = (WIDTH as usize, HEIGHT as usize);
    let mut canvas = Canvas::new(w, h);
    for shape in chart.shapes() {
        match shape {
            Shape::Line {
                from,
                to,
                color,
                width,
            } => canvas.line(from, to, width, color),
            Shape::Polyline {
                points,
                color,
                width,
            } => {
                for pair in points.windows(2) {
                    canvas.line(pair[0], pair[1], width, color);
                }
                if let [only] = points.as_slice() {
                    canvas.brush(only.0, only.1, width * 2.0, color);
                }
            }
            Shape::Text {
                at,
                text,
                anchor,
                vertical,
            } => canvas.text(at, &text, anchor, vertical),
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&canvas.rgb)?;
    }
    Ok(out)
}
