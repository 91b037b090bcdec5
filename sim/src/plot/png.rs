//! PNG output: plotters' bitmap backend draws the chart [`SUPERSAMPLE`] times larger than the
//! PNG, and each PNG pixel is the mean of its block of drawn pixels.
//!
//! plotters anti-aliases text and one-pixel lines but fills thicker lines and markers as hard
//! polygons; drawing large and averaging down anti-aliases everything the same way, the way
//! renderers do with supersampling.

use super::draw::{Layout, Target};
use super::{Chart, PNG_SCALE, PlotError, font};
use plotters::backend::BitMapBackend;

/// Drawn pixels per PNG pixel along each axis.
pub const SUPERSAMPLE: u32 = 3;

/// PNG pixels per metre: 192 dpi, so that viewers and LaTeX that honour it show the chart at
/// its size in chart pixels (96 per inch) times [`PNG_SCALE`].
const PIXELS_PER_METRE: u32 = 7559;

/// Renders the chart as PNG bytes.
pub fn render(chart: &Chart) -> Result<Vec<u8>, PlotError> {
    font::register()?;
    let layout = Layout::new(chart, Target::bitmap(f64::from(PNG_SCALE * SUPERSAMPLE)))?;
    let (w, h) = layout.device_size();
    let mut big = vec![0u8; w as usize * h as usize * 3];
    layout.draw(BitMapBackend::with_buffer(&mut big, (w, h)))?;
    let (small, sw, sh) = downsample(&big, w, h, SUPERSAMPLE);
    encode(&small, sw, sh)
}

/// Averages `factor × factor` blocks of an RGB image (`w × h`, both multiples of `factor`; a
/// ragged edge is dropped). Returns the image and its size.
pub fn downsample(rgb: &[u8], w: u32, h: u32, factor: u32) -> (Vec<u8>, u32, u32) {
    /// Output pixels per span checked for plain white at once.
    const SPAN: usize = 16;
    let (sw, sh) = (w / factor, h / factor);
    let (w, f, swu) = (w as usize, factor as usize, sw as usize);
    let area = (f * f) as u32;
    let white = vec![255u8; SPAN * f * 3];
    let mut out = Vec::with_capacity(swu * sh as usize * 3);
    let mut sums = [0u32; SPAN * 3];
    // Most of a chart is paper. Spans whose samples are all white (checked with slice
    // comparisons, which are memcmp even in unoptimised builds) are copied without summing;
    // the others are summed with plain indexed loops.
    for sy in 0..sh as usize {
        let rows: Vec<&[u8]> = (sy * f..(sy + 1) * f)
            .map(|y| &rgb[y * w * 3..(y * w + swu * f) * 3])
            .collect();
        for x0 in (0..swu).step_by(SPAN) {
            let n = SPAN.min(swu - x0);
            let (a, b) = (x0 * f * 3, (x0 + n) * f * 3);
            if rows.iter().all(|row| row[a..b] == white[..b - a]) {
                out.extend_from_slice(&white[..n * 3]);
                continue;
            }
            sums[..n * 3].fill(0);
            for row in &rows {
                let span = &row[a..b];
                let mut i = 0;
                for o in (0..n * 3).step_by(3) {
                    for _ in 0..f {
                        sums[o] += u32::from(span[i]);
                        sums[o + 1] += u32::from(span[i + 1]);
                        sums[o + 2] += u32::from(span[i + 2]);
                        i += 3;
                    }
                }
            }
            // Rounded means, at most 255.
            out.extend(sums[..n * 3].iter().map(|&s| ((s + area / 2) / area) as u8));
        }
    }
    (out, sw, sh)
}

fn encode(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>, PlotError> {
    let mut out = Vec::new();
    {
        let mut encoder = ::png::Encoder::new(&mut out, w, h);
        encoder.set_color(::png::ColorType::Rgb);
        encoder.set_depth(::png::BitDepth::Eight);
        encoder.set_compression(::png::Compression::Best);
        encoder.set_pixel_dims(Some(::png::PixelDimensions {
            xppu: PIXELS_PER_METRE,
            yppu: PIXELS_PER_METRE,
            unit: ::png::Unit::Meter,
        }));
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_matches_a_plain_block_mean() {
        // 40 × 6 samples (more than one span of 16 output pixels per row at factor 2), mostly
        // white with a pattern in places, against the mean computed the obvious way.
        let (w, h, f) = (40u32, 6u32, 2u32);
        let mut rgb = vec![255u8; (w * h * 3) as usize];
        for (i, v) in rgb.iter_mut().enumerate() {
            if (i / 3) % 40 > 30 || (i * 7) % 23 == 0 {
                *v = (i * 37 % 256) as u8;
            }
        }
        let (small, sw, sh) = downsample(&rgb, w, h, f);
        assert_eq!((sw, sh), (20, 3));
        for sy in 0..sh {
            for sx in 0..sw {
                for c in 0..3 {
                    let mut sum = 0u32;
                    for y in sy * f..(sy + 1) * f {
                        for x in sx * f..(sx + 1) * f {
                            sum += u32::from(rgb[((y * w + x) * 3 + c) as usize]);
                        }
                    }
                    let expected = ((sum + 2) / 4) as u8;
                    assert_eq!(
                        small[((sy * sw + sx) * 3 + c) as usize],
                        expected,
                        "({sx}, {sy}) channel {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn downsampling_averages_blocks() {
        // 4 × 2 image: a black and a white 2 × 2 block.
        let mut rgb = vec![0u8; 4 * 2 * 3];
        for y in 0..2 {
            for x in 2..4 {
                rgb[(y * 4 + x) * 3..(y * 4 + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        rgb[0] = 100; // one red sample in the black block
        let (small, w, h) = downsample(&rgb, 4, 2, 2);
        assert_eq!((w, h), (2, 1));
        assert_eq!(small, vec![25, 0, 0, 255, 255, 255]);
    }
}
