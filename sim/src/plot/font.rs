//! The chart font, compiled in: DejaVu Sans regular and bold, cut down to the characters chart
//! text needs (`sim/assets/fonts/`, with its licence and the script that made the subset).
//!
//! plotters' `ab_glyph` backend measures and rasterises text with fonts registered under a
//! family name; [`register`] does that once per process. The family name doubles as the SVG
//! `font-family` attribute, so it is a CSS font list: an SVG viewer uses DejaVu Sans where it
//! is installed and a sans-serif font with similar widths otherwise.

use std::sync::OnceLock;

use plotters::style::{FontStyle, register_font};

/// The family that charts ask for, written verbatim into SVG `font-family` attributes.
pub const FAMILY: &str = "DejaVu Sans, Verdana, Arial, sans-serif";

/// DejaVu Sans 2.37, subset (see `sim/assets/fonts/README.md`).
pub static REGULAR: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// DejaVu Sans Bold 2.37, subset.
pub static BOLD: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");

/// DejaVu Sans' ascent minus descent in em (2384 / 2048 font units). ab_glyph scales a font so
/// that this height is the requested size in pixels, where SVG's `font-size` is the em: text
/// sizes are converted with it so that both outputs draw the same em.
pub const HEIGHT_PER_EM: f64 = 2384.0 / 2048.0;

/// Why the embedded font could not be registered (a corrupt build, since the bytes are
/// compiled in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the embedded chart font ({face}) is not a valid TrueType font; rebuild with sim/assets/fonts/subset.sh"
)]
pub struct FontError {
    /// Which face failed.
    pub face: &'static str,
}

/// Registers the embedded faces with plotters, once per process; later calls return the first
/// call's result.
pub fn register() -> Result<(), FontError> {
    static REGISTERED: OnceLock<Result<(), FontError>> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        register_font(FAMILY, FontStyle::Normal, REGULAR).map_err(|_| FontError {
            face: "DejaVuSans.ttf",
        })?;
        register_font(FAMILY, FontStyle::Bold, BOLD).map_err(|_| FontError {
            face: "DejaVuSans-Bold.ttf",
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_faces_register_and_measure_text() {
        use plotters::style::{FontDesc, FontFamily};
        register().unwrap();
        let regular = FontDesc::new(FontFamily::Name(FAMILY), 20.0, FontStyle::Normal);
        let bold = FontDesc::new(FontFamily::Name(FAMILY), 20.0, FontStyle::Bold);
        let (w, _) = regular.box_size("Round").unwrap();
        let (wb, _) = bold.box_size("Round").unwrap();
        // Proportional widths from the font's metrics: bold is wider, "i" narrower than "W".
        assert!(w > 30 && wb > w, "regular {w}, bold {wb}");
        let (narrow, _) = regular.box_size("iiii").unwrap();
        let (wide, _) = regular.box_size("WWWW").unwrap();
        assert!(narrow * 2 < wide, "{narrow} vs {wide}");
    }
}
