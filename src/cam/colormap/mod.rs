//! How an overlay looks: the colormap and the image's weight in the blend, as
//! pytorch-grad-cam's `show_cam_on_image(img, mask, use_rgb=True, colormap=cv2.COLORMAP_JET,
//! image_weight=0.5)` takes them.

mod tables;

pub use tables::{ALL, JET};

use crate::{Error, Result};

/// One of OpenCV's colormaps ([`ALL`]), by its number there (`cv2.COLORMAP_JET` = 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Colormap(usize);

impl Colormap {
    /// OpenCV's COLORMAP_JET, pytorch-grad-cam's default.
    pub const JET: Colormap = Colormap(2);

    /// By name, as OpenCV spells it without `COLORMAP_` (any case; `-` for `_`):
    /// `jet`, `turbo`, `viridis`, `twilight-shifted`, ... An unknown name is an error that
    /// lists them all.
    pub fn by_name(name: &str) -> Result<Colormap> {
        let want = name.trim().to_lowercase().replace('-', "_");
        (ALL.iter().position(|(n, _)| *n == want))
            .map(Colormap)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown colormap {name:?}: one of {}",
                    Self::names().join(", ")
                ))
            })
    }

    /// By OpenCV's number (`cv2.COLORMAP_*`); None past the last.
    pub fn by_number(n: usize) -> Option<Colormap> {
        (n < ALL.len()).then_some(Colormap(n))
    }

    /// Every colormap's name, in OpenCV's order.
    pub fn names() -> Vec<&'static str> {
        ALL.iter().map(|(n, _)| *n).collect()
    }

    pub fn name(self) -> &'static str {
        ALL[self.0].0
    }

    /// OpenCV's number for it.
    pub fn number(self) -> usize {
        self.0
    }

    /// RGB for each uint8(255·m).
    pub fn table(self) -> &'static [[u8; 3]; 256] {
        ALL[self.0].1
    }
}

impl Default for Colormap {
    fn default() -> Self {
        Colormap::JET
    }
}

impl std::str::FromStr for Colormap {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Colormap::by_name(s)
    }
}

impl std::fmt::Display for Colormap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The overlay's colormap and the image's share of the blend:
/// c = (1 − w)·colormap(m)/255 + w·img/255, then c / max(c) as bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OverlayStyle {
    pub colormap: Colormap,
    /// w in [0, 1]: 0 shows the colormap alone, 1 the image alone. An f64 as Python's float:
    /// 1 − w is taken in f64 and rounded to f32 once, as numpy does (`1 - 0.8` gives f32 0.2,
    /// where f32 arithmetic gives 0.19999999), so the bytes are the peer's.
    pub image_weight: f64,
}

/// pytorch-grad-cam's image weight.
pub const IMAGE_WEIGHT: f64 = 0.5;

impl Default for OverlayStyle {
    fn default() -> Self {
        OverlayStyle {
            colormap: Colormap::JET,
            image_weight: IMAGE_WEIGHT,
        }
    }
}

impl OverlayStyle {
    /// A style whose image weight lies in [0, 1] (else an error naming it, as
    /// show_cam_on_image refuses one).
    pub fn new(colormap: Colormap, image_weight: f64) -> Result<Self> {
        let s = OverlayStyle {
            colormap,
            image_weight,
        };
        s.check()?;
        Ok(s)
    }

    /// The blend's weights as f32: (colormap's 1 − w, image's w), each rounded once from f64.
    pub fn weights(&self) -> (f32, f32) {
        ((1.0 - self.image_weight) as f32, self.image_weight as f32)
    }

    /// The image weight lies in [0, 1] (the fields are public: checked where it is used).
    pub fn check(&self) -> Result<()> {
        if (0.0..=1.0).contains(&self.image_weight) {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "image weight {}: must lie in [0, 1]",
            self.image_weight
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names and numbers are OpenCV's (cv2.COLORMAP_JET == 2, COLORMAP_TURBO == 20,
    /// COLORMAP_VIRIDIS == 16); the tables are its colours (cv2.applyColorMap of 0 and 255).
    #[test]
    fn colormaps_are_opencvs() {
        assert_eq!(Colormap::by_name("jet").unwrap(), Colormap::JET);
        assert_eq!(Colormap::JET.number(), 2);
        assert_eq!(Colormap::by_name("Turbo").unwrap().number(), 20);
        assert_eq!(Colormap::by_name("viridis").unwrap().number(), 16);
        let ts = Colormap::by_name("twilight-shifted").unwrap();
        assert_eq!(ts.name(), "twilight_shifted");
        assert_eq!(Colormap::by_number(ts.number()), Some(ts));
        assert_eq!(Colormap::by_number(ALL.len()), None);
        // cv2.applyColorMap(np.uint8([[0, 255]]), cv2.COLORMAP_VIRIDIS)[..., ::-1]
        let v = Colormap::by_name("viridis").unwrap().table();
        assert_eq!((v[0], v[255]), ([68, 1, 84], [253, 231, 37]));
        assert_eq!((JET[0], JET[255]), ([0, 0, 128], [128, 0, 0]));
        let e = Colormap::by_name("jett").unwrap_err().to_string();
        assert!(e.contains("\"jett\"") && e.contains("turbo"), "{e}");
    }

    #[test]
    fn image_weights_outside_0_1_are_refused() {
        for w in [0.0, 0.3, 1.0] {
            assert!(OverlayStyle::new(Colormap::JET, w).is_ok(), "{w}");
        }
        for w in [-0.1, 1.5, f64::NAN] {
            let e = OverlayStyle::new(Colormap::JET, w).unwrap_err().to_string();
            assert!(e.contains("[0, 1]"), "{e}");
        }
    }
}
