//! Image decoding, bilinear resizing and the ImageNet preprocessing.
//!
//! Resizing follows `cv2.resize(..., INTER_LINEAR)` on float data, which is also
//! `F.interpolate(mode="bilinear", align_corners=False)` without antialiasing: half-pixel
//! centres, source coordinates clamped to the edges. The same function upsamples CAM maps.

use std::path::Path;

pub use image::RgbImage;

use crate::{Error, Result, Tensor};

mod jpeg_warnings;
mod tiff_jpeg;
mod tiff_kinds;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The per-channel normalisation a model was trained with, on RGB in \[0, 1\]:
/// `(x - mean) / std` (torchvision's `transforms.Normalize(mean, std)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet's, which every torchvision classification weight uses.
    pub const IMAGENET: Normalization = Normalization {
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };

    /// A normalisation whose values are finite and whose std is positive (else an error
    /// naming the value).
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Result<Self> {
        let n = Normalization { mean, std };
        n.check()?;
        Ok(n)
    }

    /// Finite means and positive stds (the fields are public: checked where they are used).
    pub fn check(&self) -> Result<()> {
        let Normalization { mean, std } = self;
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::Invalid(format!(
                "normalisation mean {m}: not a number"
            )));
        }
        // (Pixels are scaled to [0, 1] first, as torchvision's ToTensor does: a mean on the
        // 0-255 scale would turn every input into a large constant.)
        if let Some(m) = mean.iter().find(|m| !(0.0..=1.0).contains(*m)) {
            return Err(Error::Invalid(format!(
                "normalisation mean {m}: outside [0, 1]; the mean and std are those of pixels \
                 scaled to [0, 1] (divide 0-255 values by 255)"
            )));
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::Invalid(format!(
                "normalisation std {s}: must be a positive number"
            )));
        }
        // (1/std multiplies pixels in [0, 1]: so small a std would give infinite inputs.)
        if let Some(s) = std.iter().find(|s| !(1.0 / **s).is_finite()) {
            return Err(Error::Invalid(format!(
                "normalisation std {s}: too small (the normalised inputs would not be finite)"
            )));
        }
        Ok(())
    }

    /// Three comma-separated numbers (`0.5,0.5,0.5`) or a JSON list of three (`[0.5, 0.5,
    /// 0.5]`), for `what` (`mean`, `std`) in errors.
    pub fn triple(text: &str, what: &str) -> Result<[f32; 3]> {
        let t = text.trim();
        let inner = t
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(t);
        let v: Vec<f32> = (inner.split(','))
            .map(|x| x.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::Invalid(format!("{what} `{text}`: not three numbers")))?;
        v.try_into().map_err(|v: Vec<f32>| {
            Error::Invalid(format!("{what} `{text}`: {} numbers, not 3", v.len()))
        })
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization::IMAGENET
    }
}

/// Decodes any format the `image` crate reads (sniffed from the bytes, not the extension) to
/// 8-bit RGB: grayscale is replicated, alpha dropped, 16-bit and float scaled to 8 bits, and
/// the EXIF orientation (JPEG, PNG, TIFF, WebP) applied, so the image is upright.
pub fn load_rgb8(path: &Path) -> Result<RgbImage> {
    let bad = |reason: String| Error::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    // A FIFO or a device would block or never end: only regular files are read.
    let meta = std::fs::metadata(path).map_err(|e| match std::fs::read_link(path) {
        Ok(to) if e.kind() == std::io::ErrorKind::NotFound => bad(format!(
            "a symbolic link to {}, which does not exist",
            to.display()
        )),
        _ => Error::io(path, e),
    })?;
    if !meta.is_file() {
        return Err(bad(match meta.is_dir() {
            true => "a folder, not an image file".into(),
            false => "not a regular file (a pipe, socket or device)".into(),
        }));
    }
    // The format is known from the first bytes: a large file that is no image is not read
    // whole to find that out. TGA has no signature: its extension names it.
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = Vec::with_capacity(64);
    (&mut f)
        .take(64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    if head.is_empty() {
        return Err(bad("the file is empty (0 bytes)".into()));
    }
    let format = match image::guess_format(&head) {
        Ok(f) => f,
        Err(_) => match image::ImageFormat::from_path(path) {
            Ok(image::ImageFormat::Tga) => image::ImageFormat::Tga,
            _ => return Err(bad(unrecognised(&head))),
        },
    };
    f.rewind().map_err(|e| Error::io(path, e))?;
    // A JPEG is read whole (its end marker and scans are looked for: see `jpeg_scans`), an ICO too
    // (see `ico_png`); every other format is decoded from the file as it is read, so a file
    // with a valid signature and gigabytes of anything after it fails at its first bad chunk,
    // not after being read.
    if !read_whole(format) {
        let reader = std::io::BufReader::new(f);
        return guarded(|| decode_unguarded(reader, format)).map_err(bad);
    }
    if meta.len() > MAX_WHOLE_BYTES {
        return Err(bad(format!(
            "a {format:?} file of {} MiB: larger than any {format:?} whose pixels fit the {} \
             MiB allowed for one image",
            meta.len() >> 20,
            image::Limits::default().max_alloc.unwrap_or(0) >> 20
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    guarded(|| decode_bytes(&bytes, Some(format))).map_err(bad)
}

/// Why a file whose first bytes no decoder here knows is refused: the format named where
/// they are one's that this build does not decode (HEIC photographs from phones, JPEG XL,
/// JPEG 2000, Photoshop, PDF, SVG), so the message says what to convert.
fn unrecognised(head: &[u8]) -> String {
    let ftyp = |brands: &[&[u8; 4]]| {
        head.get(4..8) == Some(b"ftyp") && brands.iter().any(|b| head.get(8..12) == Some(&b[..]))
    };
    let text = String::from_utf8_lossy(&head[..head.len().min(64)]);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    // (The ftyp box: its size, `ftyp`, the major brand, a version, the compatible brands.)
    let ftyp_end = head
        .get(..4)
        .map_or(0, |n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]));
    let brands = head
        .get(8..(ftyp_end as usize).min(head.len()))
        .unwrap_or_default();
    let avif =
        head.get(4..8) == Some(b"ftyp") && (brands.chunks(4)).any(|b| b == b"avif" || b == b"avis");
    let kind = if avif {
        "an AVIF image"
    } else if ftyp(&[
        b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
    ]) {
        "a HEIF image (HEIC, as phones save photographs)"
    } else if head.starts_with(&[0xFF, 0x0A]) || head.starts_with(b"\0\0\0\x0CJXL \r\n\x87\n") {
        "a JPEG XL image"
    } else if head.starts_with(b"\0\0\0\x0CjP  \r\n\x87\n")
        || head.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
    {
        "a JPEG 2000 image"
    } else if head.starts_with(b"8BPS") {
        "a Photoshop document"
    } else if head.starts_with(b"%PDF") {
        "a PDF document"
    } else if text.starts_with("<svg") || (text.starts_with("<?xml") && text.contains("<svg")) {
        "an SVG drawing"
    } else {
        return "not a recognised image format".into();
    };
    format!("{kind}, which this build does not decode; convert it to JPEG or PNG")
}

/// The formats whose files are read whole before decoding.
fn read_whole(format: image::ImageFormat) -> bool {
    matches!(format, image::ImageFormat::Jpeg | image::ImageFormat::Ico)
}

/// The largest file read whole: twice the bytes of the largest image the default limits let
/// a decoder make (8-bit RGB), far more than any JPEG compression of it takes.
const MAX_WHOLE_BYTES: u64 = 2 * (512 << 20);

/// An image file's width and height from its header alone (no pixels decoded); None when
/// the header cannot be read (decoding the file then says why). A JPEG's are read from its
/// frame header (the `image` crate's JPEG decoder reads the whole file first).
pub fn peek_dims(path: &Path) -> Option<(u32, u32)> {
    // Opening a FIFO blocks until something writes to it: only regular files are opened
    // (`load_rgb8` says what the rest are).
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let reader = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?;
    match reader.format()? {
        image::ImageFormat::Jpeg => {
            jpeg_dims(std::io::BufReader::new(std::fs::File::open(path).ok()?))
        }
        f if read_whole(f) => None,
        // (A gray + alpha or palette TIFF's from the `tiff` crate: see `tiff_kinds`.)
        image::ImageFormat::Tiff => guarded(|| reader.into_dimensions().map_err(|e| e.to_string()))
            .ok()
            .or_else(|| {
                let file = std::io::BufReader::new(std::fs::File::open(path).ok()?);
                tiff::decoder::Decoder::new(file).ok()?.dimensions().ok()
            }),
        // (A PNG's header is read up to its pixels, ICC profile included: limited as when
        // it is decoded.)
        f => {
            let file = std::io::BufReader::new(std::fs::File::open(path).ok()?);
            guarded(|| (reader_for(file, f).into_dimensions()).map_err(|e| e.to_string())).ok()
        }
    }
}

/// A JPEG's (width, height) from its first frame header (SOF0..SOF15 but DHT, JPG, DAC),
/// the segments before it skipped by their lengths.
fn jpeg_dims(mut r: impl std::io::Read + std::io::Seek) -> Option<(u32, u32)> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b).ok()?;
    if b != [0xFF, 0xD8] {
        return None;
    }
    // (Segments of at most 64 KB each: the frame header comes within the first few. Garbage
    // between segments is not looked through: the decoder then says what is wrong.)
    for _ in 0..1024 {
        // A marker: 0xFF, fill bytes, the code.
        r.read_exact(&mut b[..1]).ok()?;
        if b[0] != 0xFF {
            return None;
        }
        let mut code = 0xFF;
        for _ in 0..1024 {
            r.read_exact(&mut b[..1]).ok()?;
            code = b[0];
            if code != 0xFF {
                break;
            }
        }
        if matches!(code, 0x00 | 0x01 | 0xD0..=0xD8 | 0xFF) {
            continue;
        }
        r.read_exact(&mut b).ok()?;
        let len = u16::from_be_bytes(b) as i64;
        if len < 2 {
            return None;
        }
        if matches!(code, 0xC0..=0xCF) && !matches!(code, 0xC4 | 0xC8 | 0xCC) {
            // Precision (1), height (2), width (2).
            let mut f = [0u8; 5];
            r.read_exact(&mut f).ok()?;
            let (h, w) = (
                u16::from_be_bytes([f[1], f[2]]),
                u16::from_be_bytes([f[3], f[4]]),
            );
            return Some((w as u32, h as u32));
        }
        r.seek(std::io::SeekFrom::Current(len - 2)).ok()?;
    }
    None
}

/// [`load_rgb8`] of a file's bytes (the format sniffed from them).
pub fn decode_rgb8(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    // A decoder bug on a malformed file must fail that file, not the whole run.
    guarded(|| decode_bytes(bytes, None))
}

/// Decodes bytes in memory; `format` where the caller knows it, else sniffed.
fn decode_bytes(
    bytes: &[u8],
    format: Option<image::ImageFormat>,
) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("the file is empty (0 bytes)".into());
    }
    let format = match format {
        Some(f) => f,
        None => image::guess_format(bytes).map_err(|_| unrecognised(bytes))?,
    };
    if format == image::ImageFormat::Jpeg {
        return decode_jpeg(bytes);
    }
    let decoded = decode_unguarded(std::io::Cursor::new(bytes), format);
    match (decoded, format) {
        // The `image` crate takes only RGBA PNGs inside an ICO; PIL writes RGB ones.
        (Err(e), image::ImageFormat::Ico) => match ico_png(bytes) {
            Some(png) => decode_unguarded(std::io::Cursor::new(png), image::ImageFormat::Png),
            None => Err(e),
        },
        (r, _) => r,
    }
}

/// The JPEG decoders fill what is missing from a file cut short, or past corrupt data, with
/// grey and say nothing: the network would explain a picture that is half missing.
const TRUNCATED_JPEG: &str = "truncated JPEG: the file ends before the image's end marker \
     (EOI), as an interrupted download or copy leaves it; the decoder would fill what is \
     missing with grey";

/// A JPEG by libjpeg (unless `GRADCAM_JPEG_DECODER=image`), else by the `image` crate; a
/// file cut short or damaged inside its image data is refused ([`TRUNCATED_JPEG`]).
fn decode_jpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let scans = jpeg_scans(bytes);
    // Each scan of a progressive JPEG passes over the whole image, and the decoders take
    // repeated scans with a warning: a small file of many would take minutes.
    if scans.scans > MAX_JPEG_SCANS {
        return Err(format!(
            "a JPEG of {} scans: more than the {MAX_JPEG_SCANS} decoded (a progressive JPEG has \
             a few dozen at most), so it is damaged or made to stall decoders",
            scans.scans
        ));
    }
    let buffered = scans.buffered || scans.scans > 1;
    // Without its end marker a file may still hold all of its one scan (only the marker
    // lost, which cv2 reads whole): libjpeg says whether data was missing. A file of several
    // scans may have lost whole scans, which no decoder notices.
    let libjpeg = jpeg_by_libjpeg();
    if !scans.ended && (buffered || !libjpeg) {
        return Err(TRUNCATED_JPEG.into());
    }
    if libjpeg {
        match decode_jpeg_libjpeg(bytes, buffered) {
            Some(Ok(img)) => return Ok(img),
            Some(Err(JpegError::TooLarge(e))) => return Err(e),
            Some(Err(JpegError::Lost(_))) if !scans.ended => return Err(TRUNCATED_JPEG.into()),
            Some(Err(JpegError::Lost(why))) => {
                return Err(format!(
                    "damaged JPEG (libjpeg: {why}): the decoder would fill the rest of the image \
                     with grey"
                ))
            }
            _ if !scans.ended => return Err(TRUNCATED_JPEG.into()),
            // What libjpeg refuses (12-bit, lossless, a header it finds damaged) the `image`
            // crate may still read; when it cannot either, libjpeg's message says more.
            Some(Err(JpegError::Libjpeg(e))) => {
                return decode_jpeg_by_image(bytes, buffered).map_err(|_| e)
            }
            None => {}
        }
    }
    decode_jpeg_by_image(bytes, buffered)
}

/// Whether JPEGs go through `decode_jpeg_libjpeg`: yes unless `GRADCAM_JPEG_DECODER=image`
/// (the `image` crate's decoder: SIMD, faster on large photographs, but not cv2's pixels).
pub fn jpeg_by_libjpeg() -> bool {
    static LIBJPEG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LIBJPEG.get_or_init(|| jpeg_decoder_env() != Ok(Some(false)))
}

/// `GRADCAM_JPEG_DECODER` read: Some(true) for `libjpeg`, Some(false) for `image`, None
/// where unset or empty; Err naming a value that is neither (a typo would otherwise pass
/// silently as the default; the CLI refuses it before any command runs).
pub fn jpeg_decoder_env() -> std::result::Result<Option<bool>, String> {
    const ENV: &str = "GRADCAM_JPEG_DECODER";
    let v = match std::env::var(ENV) {
        Ok(v) => v,
        Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => v.to_string_lossy().into_owned(),
    };
    match v.trim() {
        "" => Ok(None),
        "libjpeg" => Ok(Some(true)),
        "image" => Ok(Some(false)),
        _ => Err(format!(
            "{ENV}={v}: not a JPEG decoder (`libjpeg`, the default, or `image`)"
        )),
    }
}

/// Decodes a JPEG with libjpeg-turbo's decoder (the one inside mozjpeg, built from C by the
/// `mozjpeg-sys` crate): its accurate integer IDCT, "fancy" (triangular) chroma upsampling and
/// fixed-point YCbCr → RGB, which are also what `cv2.imread` (pytorch-grad-cam's examples) and
/// PIL decode with, so a photograph gives the peer's pixels bit for bit. (The `image` crate's
/// decoder upsamples chroma differently: up to 4 levels apart on 10-30 % of the pixels of a
/// 4:2:0 JPEG, most photographs.) The EXIF orientation is applied by [`jpeg_orientation`].
///
/// None for what is left to the `image` crate: a colour space other than YCbCr, grayscale,
/// RGB, CMYK and YCCK, and images past the decoding limit (refused there, naming it).
fn decode_jpeg_libjpeg(
    bytes: &[u8],
    buffered: bool,
) -> Option<std::result::Result<RgbImage, JpegError>> {
    // libjpeg reports a fatal error by unwinding with its message, and warnings of lost data
    // are kept ([`jpeg_warnings`]).
    let fatal = |p: Box<dyn std::any::Any + Send>| {
        let msg = (p.downcast_ref::<String>().cloned())
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "no message".into());
        msg.trim_start_matches("libjpeg fatal error: ").to_string()
    };
    let run = std::panic::catch_unwind(|| {
        let builder = mozjpeg::Decompress::builder().with_err(jpeg_warnings::error_mgr());
        let d = match builder.from_mem(bytes) {
            Ok(d) => d,
            Err(e) => return Some(Err(JpegError::Libjpeg(e.to_string()))),
        };
        use mozjpeg::ColorSpace as Cs;
        let cmyk = match d.color_space() {
            Cs::JCS_YCbCr | Cs::JCS_GRAYSCALE | Cs::JCS_RGB => false,
            Cs::JCS_CMYK | Cs::JCS_YCCK => true,
            _ => return None,
        };
        let (w, h) = (d.width(), d.height());
        let max = image::Limits::default().max_alloc.unwrap_or(u64::MAX);
        if w == 0 || h == 0 || (w as u64 * h as u64 * 3) > max {
            return None;
        }
        if let Err(e) = jpeg_memory(&d, cmyk, buffered) {
            return Some(Err(JpegError::TooLarge(e)));
        }
        let orientation = jpeg_orientation(bytes);
        Some(
            (|| {
                let px = if cmyk {
                    let mut s = d.to_colorspace(Cs::JCS_CMYK)?;
                    let mut px = vec![0u8; w * h * 4];
                    s.read_scanlines_into::<u8>(&mut px)?;
                    s.finish()?;
                    cmyk_to_rgb(&px)
                } else {
                    let mut s = d.rgb()?;
                    let mut px = vec![0u8; w * h * 3];
                    s.read_scanlines_into::<u8>(&mut px)?;
                    s.finish()?;
                    px
                };
                let img = RgbImage::from_raw(w as u32, h as u32, px).expect("w * h * 3 bytes");
                Ok::<_, std::io::Error>((img, orientation))
            })()
            .map_err(|e| JpegError::Libjpeg(e.to_string())),
        )
    });
    let lost = jpeg_warnings::take_lost();
    let (img, orientation) = match run {
        Ok(None) => return None,
        Ok(Some(Ok(_))) if lost.is_some() => return Some(Err(JpegError::Lost(lost?))),
        Ok(Some(Ok(r))) => r,
        Ok(Some(Err(JpegError::Libjpeg(e)))) => {
            let why = format!("damaged or unsupported JPEG (libjpeg: {e})");
            return Some(Err(JpegError::Libjpeg(why)));
        }
        Ok(Some(Err(e))) => return Some(Err(e)),
        Err(p) => {
            let why = format!("damaged or unsupported JPEG (libjpeg: {})", fatal(p));
            return Some(Err(JpegError::Libjpeg(why)));
        }
    };
    let mut img = image::DynamicImage::ImageRgb8(img);
    img.apply_orientation(orientation);
    Some(Ok(img.into_rgb8()))
}

/// Refuses a JPEG whose decoding would take more than twice the pixels' allowance: the
/// pixels (CMYK's four bytes before the three of RGB) and, for a progressive or multi-scan
/// file (`buffered`), every block's coefficients (2 bytes a sample), which a decoder holds
/// until the last scan (libjpeg and the `image` crate's alike). A small file can declare a
/// frame whose coefficients alone take gigabytes.
fn jpeg_memory<R>(
    d: &mozjpeg::Decompress<R>,
    cmyk: bool,
    buffered: bool,
) -> std::result::Result<(), String> {
    let max = image::Limits::default().max_alloc.unwrap_or(u64::MAX);
    let (w, h) = (d.width(), d.height());
    let pixels = w as u64 * h as u64 * if cmyk { 7 } else { 3 };
    let coefficients: u64 = match buffered {
        true => (d.components().iter())
            .map(|c| c.width_in_blocks as u64 * c.height_in_blocks as u64 * 128)
            .sum(),
        false => 0,
    };
    if pixels + coefficients <= max.saturating_mul(2) {
        return Ok(());
    }
    Err(format!(
        "decoding this {w}×{h} JPEG would take {} MiB ({} of them its progressive scans' \
         coefficients), more than the {} MiB allowed for one JPEG's decoding (a decompression \
         bomb, or a picture far larger than a model needs)",
        (pixels + coefficients) >> 20,
        coefficients >> 20,
        max.saturating_mul(2) >> 20
    ))
}

/// [`jpeg_memory`] of a progressive or multi-scan JPEG for the `image` crate's decoder (whose
/// own limit counts only the pixels), from libjpeg's reading of the header; Ok where libjpeg
/// cannot read it (the decoder then says what is wrong).
fn jpeg_memory_by_header(bytes: &[u8], buffered: bool) -> std::result::Result<(), String> {
    if !buffered {
        return Ok(());
    }
    let run = std::panic::catch_unwind(|| {
        let builder = mozjpeg::Decompress::builder().with_err(jpeg_warnings::error_mgr());
        let d = builder.from_mem(bytes).ok()?;
        use mozjpeg::ColorSpace as Cs;
        let cmyk = matches!(d.color_space(), Cs::JCS_CMYK | Cs::JCS_YCCK);
        Some(jpeg_memory(&d, cmyk, buffered))
    });
    // (Warnings about the header are not about lost pixels: dropped.)
    jpeg_warnings::take_lost();
    run.ok().flatten().unwrap_or(Ok(()))
}

/// Why [`decode_jpeg_libjpeg`] gave no image.
enum JpegError {
    /// libjpeg's message: the `image` crate's decoder is tried next.
    Libjpeg(String),
    /// Past the memory allowed for decoding: refused outright.
    TooLarge(String),
    /// Decoded, but libjpeg's warning says part of the image data was lost (filled with
    /// grey): refused outright.
    Lost(String),
}

/// RGB from a CMYK JPEG's samples as stored (Adobe's inverted convention; YCCK comes out of
/// libjpeg the same way) by `cv2.imread`'s integer rule, R = K − ((255 − C)·K >> 8), so a print
/// workflow's CMYK photograph gives the peer's pixels too.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for p in cmyk.chunks_exact(4) {
        let k = p[3] as u32;
        rgb.extend(
            p[..3]
                .iter()
                .map(|&c| (k - (((255 - c as u32) * k) >> 8)) as u8),
        );
    }
    rgb
}

/// The largest image of an ICO file when it is stored as a PNG: the directory's entries
/// (6-byte header, then 16 bytes each: width and height, 0 meaning 256, ..., the data's size
/// and offset) give where each image's bytes lie.
fn ico_png(b: &[u8]) -> Option<&[u8]> {
    let u16_at = |i: usize| Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize);
    let count = u16_at(4)? as usize;
    let side = |v: u8| if v == 0 { 256 } else { v as usize };
    // The largest image, whatever its kind: a cut-short or BMP-coded largest one leaves
    // the decoder's error standing rather than a smaller picture explained in its place.
    let (_, data) = (0..count)
        .filter_map(|k| {
            let e = 6 + 16 * k;
            let (w, h) = (side(*b.get(e)?), side(*b.get(e + 1)?));
            let (size, offset) = (u32_at(e + 8)?, u32_at(e + 12)?);
            Some((w * h, b.get(offset..offset.checked_add(size)?)))
        })
        .max_by_key(|&(area, _)| area)?;
    data.filter(|d| d.starts_with(b"\x89PNG\r\n\x1a\n"))
}

fn decode_unguarded<R: std::io::BufRead + std::io::Seek>(
    mut source: R,
    format: image::ImageFormat,
) -> std::result::Result<RgbImage, String> {
    // (Decoding AVIF needs the dav1d library, which this build leaves out.)
    if format == image::ImageFormat::Avif {
        return Err(
            "AVIF images cannot be decoded by this build; convert them to PNG or JPEG".into(),
        );
    }
    let start = source.stream_position().map_err(|e| e.to_string())?;
    let tiff = match format == image::ImageFormat::Tiff {
        true => tiff_kinds::header(&mut source),
        false => tiff_kinds::Header::default(),
    };
    let rewind = |s: &mut R| {
        s.seek(std::io::SeekFrom::Start(start))
            .map_err(|e| e.to_string())
    };
    rewind(&mut source)?;
    // A JPEG-compressed TIFF's strips go through libjpeg, as cv2's libtiff decodes them (or
    // the `image` crate's JPEG decoder where GRADCAM_JPEG_DECODER chose it).
    if tiff.jpeg {
        if let Some(r) = tiff_jpeg::jpeg_tiff(&mut source) {
            return r;
        }
        rewind(&mut source)?;
    }
    match decode_by_image(&mut source, format, tiff.unassociated) {
        Ok(r) => r,
        // The `image` crate takes no gray + alpha, palette or gray float TIFF, and its
        // message for other kinds names a colour type `Unknown(32)`.
        Err(e @ image::ImageError::Unsupported(_)) if format == image::ImageFormat::Tiff => {
            let by_tiff =
                (rewind(&mut source).ok()).and_then(|_| tiff_kinds::unsupported(&mut source));
            by_tiff.unwrap_or_else(|| Err(why(e)))
        }
        Err(e) => Err(why(e)),
    }
}

/// The most a PNG's ancillary chunks may take in all (ICC profile, text, XMP, EXIF), an
/// eighth of a whole image's limit.
const PNG_CHUNK_BYTES: u64 = 64 << 20;

/// The `image` crate's decoding; Err where it has no decoder for the file (its header).
/// `unassociated`: an RGBA TIFF's alpha is unassociated ([`tiff_kinds::Header`]).
fn decode_by_image<R: std::io::BufRead + std::io::Seek>(
    source: R,
    format: image::ImageFormat,
    unassociated: bool,
) -> std::result::Result<std::result::Result<RgbImage, String>, image::ImageError> {
    let reader = reader_for(source, format);
    // Decoded as `ImageReader::decode` does: the output's bytes are reserved from the default
    // limits and the decoder gets what is left for its own buffers. Unlike `decode`, the
    // decoder is kept long enough to read the EXIF orientation.
    let decoder = match reader.into_decoder() {
        Err(image::ImageError::Limits(_)) if format == image::ImageFormat::Png => {
            return Ok(Err(format!(
                "its metadata chunks (text, XMP, EXIF) take more than the {} MiB allowed",
                PNG_CHUNK_BYTES >> 20
            )))
        }
        r => r?,
    };
    Ok(decode_with(decoder, format, None, unassociated))
}

/// The `image` crate's reader of `format`, with [`PNG_CHUNK_BYTES`] for PNGs.
fn reader_for<R: std::io::BufRead + std::io::Seek>(
    source: R,
    format: image::ImageFormat,
) -> image::ImageReader<R> {
    let mut reader = image::ImageReader::new(source);
    reader.set_format(format);
    if format == image::ImageFormat::Png {
        // The png decoder inflates an ICC profile (iCCP) or a text chunk up to its memory
        // limit, which the `image` crate sets to a whole image's 512 MiB: a 4 MB file would
        // take that much before a pixel is read, on every thread. Its pixels are not counted
        // in this limit (the output buffer is reserved from the default limits below). A
        // profile past it is dropped (it is unused here); text past it fails the file.
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(PNG_CHUNK_BYTES);
        reader.limits(limits);
    }
    reader
}

/// A JPEG by the `image` crate's decoder, turned by its first Exif segment's orientation as
/// the libjpeg path and cv2 do (the decoder itself takes the last).
fn decode_jpeg_by_image(bytes: &[u8], buffered: bool) -> std::result::Result<RgbImage, String> {
    jpeg_memory_by_header(bytes, buffered)?;
    let decoder =
        image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(bytes)).map_err(why)?;
    let orientation = jpeg_orientation(bytes);
    decode_with(decoder, image::ImageFormat::Jpeg, Some(orientation), false)
}

/// The orientation of a JPEG's first Exif segment (APP1 `Exif\0\0`) before its first scan, as
/// `cv2.imread` takes it ([`walk_jpeg`]); none turns nothing.
fn jpeg_orientation(b: &[u8]) -> image::metadata::Orientation {
    let mut found = None;
    walk_jpeg(b, |m, data| match (m, data.strip_prefix(b"Exif\0\0")) {
        (0xDA, _) => false,
        (0xE1, Some(exif)) => {
            found = image::metadata::Orientation::from_exif_chunk(exif);
            false
        }
        _ => true,
    });
    found.unwrap_or(image::metadata::Orientation::NoTransforms)
}

/// An opened decoder's image in 8-bit RGB, upright: by `orientation`, else the decoder's;
/// with `unassociated`, an 8-bit RGBA image's colour multiplied by its alpha ([`tiff_kinds::premultiplied`]).
fn decode_with(
    mut decoder: impl image::ImageDecoder,
    format: image::ImageFormat,
    orientation: Option<image::metadata::Orientation>,
    unassociated: bool,
) -> std::result::Result<RgbImage, String> {
    let orientation = match orientation {
        Some(o) => o,
        None => decoder.orientation().map_err(why)?,
    };
    let mut limits = image::Limits::default();
    limits.reserve(decoder.total_bytes()).map_err(why)?;
    decoder.set_limits(limits).map_err(why)?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(why)?;
    let tiff = format == image::ImageFormat::Tiff;
    match &img {
        image::DynamicImage::ImageRgb32F(b) => float_samples(b.iter().map(|&v| v as f64), tiff)?,
        image::DynamicImage::ImageRgba32F(b) => float_samples(b.iter().map(|&v| v as f64), tiff)?,
        _ => {}
    }
    // Photographs from cameras and phones are often stored sideways with an EXIF tag saying
    // how to turn them; viewers, and `cv2.imread` in pytorch-grad-cam's examples, turn them
    // upright, so the model sees the picture the user sees. (Turned once in 8-bit RGB, the
    // smallest copy.)
    let rgb = high_bytes_as_cv2(&img, format).or_else(|| {
        unassociated
            .then(|| tiff_kinds::premultiplied(&img))
            .flatten()
    });
    let mut img = image::DynamicImage::ImageRgb8(rgb.unwrap_or_else(|| img.to_rgb8()));
    img.apply_orientation(orientation);
    let img = img.into_rgb8();
    if img.width() == 0 || img.height() == 0 {
        return Err("the image is empty (0 pixels)".into());
    }
    Ok(img)
}

/// Floating-point samples are read as 0 black and 1 white, clamped: refused where any is NaN
/// or infinite (which would come out white, or black, without a word), and in a TIFF (`scaled`)
/// where they plainly are not on that scale (a maximum past 2: 0..255 or raw sensor values,
/// which would come out white). A high dynamic range format (HDR, OpenEXR) goes past 1 by
/// design: its highlights clip.
fn float_samples(v: impl Iterator<Item = f64>, scaled: bool) -> std::result::Result<(), String> {
    let (mut n, mut bad, mut lo, mut hi) = (0usize, 0usize, f64::INFINITY, f64::NEG_INFINITY);
    for x in v {
        n += 1;
        match x.is_finite() {
            true => (lo, hi) = (lo.min(x), hi.max(x)),
            false => bad += 1,
        }
    }
    if bad > 0 {
        return Err(format!(
            "{bad} of its {n} floating-point samples are NaN or infinite (a damaged image, or \
             data that is not a picture)"
        ));
    }
    if scaled && hi > 2.0 {
        return Err(format!(
            "floating-point samples from {lo:.3} to {hi:.3}: float images are read as 0 = black and \
             1 = white, so this one would come out clipped to white; scale it to 0..1 or \
             convert it to an 8- or 16-bit image"
        ));
    }
    Ok(())
}

/// A 16-bit image in 8 bits where `cv2.imread` keeps each sample's high byte, v >> 8, rather
/// than rounding v / 257 as the `image` crate (one level apart on a quarter of the samples):
/// every 16-bit PNG (libpng's `png_set_strip_16`) and PNM, and a grayscale 16-bit TIFF (cv2
/// rounds colour ones as the `image` crate does). None where the `image` crate's rounding is
/// cv2's. (A PNM of another maximum than 65535 is scaled to it first, which cv2 does not do:
/// its pixels there are the raw values' high bytes, near black.)
fn high_bytes_as_cv2(img: &image::DynamicImage, format: image::ImageFormat) -> Option<RgbImage> {
    use image::DynamicImage as D;
    match (format, img) {
        (image::ImageFormat::Png | image::ImageFormat::Pnm, _) => {}
        (image::ImageFormat::Tiff, D::ImageLuma16(_) | D::ImageLumaA16(_)) => {}
        _ => return None,
    }
    let (w, h) = (img.width(), img.height());
    let high = |v: u16| (v >> 8) as u8;
    // (Each sample's high byte, per pixel: gray replicated, alpha dropped.)
    let mut px = Vec::with_capacity(w as usize * h as usize * 3);
    match img {
        D::ImageLuma16(b) => px.extend(b.as_raw().iter().flat_map(|&v| [high(v); 3])),
        D::ImageLumaA16(b) => px.extend(b.as_raw().chunks_exact(2).flat_map(|p| [high(p[0]); 3])),
        D::ImageRgb16(b) => px.extend(b.as_raw().iter().map(|&v| high(v))),
        D::ImageRgba16(b) => px.extend(
            (b.as_raw().chunks_exact(4)).flat_map(|p| [high(p[0]), high(p[1]), high(p[2])]),
        ),
        _ => return None,
    }
    RgbImage::from_raw(w, h, px)
}

/// The most scans a JPEG may have: libjpeg-turbo's documentation advises programs that decode
/// untrusted files to limit them; encoders write a few dozen at most.
const MAX_JPEG_SCANS: usize = 500;

/// What [`jpeg_scans`] finds of a JPEG's main image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct JpegScans {
    scans: usize,
    /// Whether libjpeg holds the whole image's coefficients until the last scan: a
    /// progressive frame (SOF2, 6, 10, 14) or a scan of fewer components than the frame.
    buffered: bool,
    /// Whether the file reaches the image's end marker (EOI).
    ended: bool,
}

/// The scans of a JPEG's main image, as far as the file goes ([`walk_jpeg`]: an embedded
/// thumbnail lies inside a segment, skipped whole; data after the EOI, a second picture or a
/// phone's video, is not looked at).
fn jpeg_scans(b: &[u8]) -> JpegScans {
    let mut found = JpegScans::default();
    let mut components = 0;
    let ended = walk_jpeg(b, |m, data| {
        // A frame header's component count (after its precision, height and width) and a
        // scan header's (its first byte).
        match m {
            0xC0..=0xCF if !matches!(m, 0xC4 | 0xC8 | 0xCC) => {
                components = data.get(5).copied().unwrap_or(0);
                found.buffered |= matches!(m, 0xC2 | 0xC6 | 0xCA | 0xCE);
            }
            0xDA => {
                found.buffered |= data.first().is_some_and(|&n| n < components);
                found.scans += 1;
            }
            _ => {}
        }
        true
    });
    found.ended = ended.is_some();
    found
}

/// Walks a JPEG's segments from the SOI to the EOI, calling `visit(marker, segment data after
/// its length)` for each until it returns false; a scan's entropy-coded data is read up to the
/// next marker that is not a restart or a stuffed 0xFF, and bytes between segments are passed
/// over as libjpeg does. None where the file ends before its EOI marker (or a segment before
/// its length says); bytes that are not a JPEG are not walked.
fn walk_jpeg(b: &[u8], mut visit: impl FnMut(u8, &[u8]) -> bool) -> Option<()> {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Some(());
    }
    let mut i = 2;
    loop {
        // The next marker: 0xFF, fill bytes, the code.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let &m = b.get(i)?;
        i += 1;
        match m {
            0xD9 => return Some(()),
            // Markers without a length (a stray stuffed byte counts as one).
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = b
            .get(i..i + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)?;
        let data = b.get(i + 2..(i + len).min(b.len())).unwrap_or_default();
        if !visit(m, data) {
            return Some(());
        }
        i += len;
        if i > b.len() {
            return None;
        }
        if m == 0xDA {
            // The scan's data: up to a marker, past stuffed zeros and restarts.
            loop {
                while i < b.len() && b[i] != 0xFF {
                    i += 1;
                }
                match b.get(i + 1) {
                    None => return None,
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// The decoder's error, with the limit named when the image is too large to decode.
fn why(e: image::ImageError) -> String {
    match e {
        // (Its own words, there or inside a format's error (QOI's): "failed to fill whole
        // buffer".)
        e if matches!(&e, image::ImageError::IoError(io)
            if io.kind() == std::io::ErrorKind::UnexpectedEof)
            || e.to_string().contains("failed to fill whole buffer") =>
        {
            "the file ends before its image data does: cut short, as an interrupted download or \
             copy leaves it, or damaged"
                .into()
        }
        image::ImageError::Limits(l) => format!(
            "{l}: decoding it would take more than the {} MiB allowed for one image \
             (a decompression bomb, or a picture far larger than a model needs)",
            image::Limits::default().max_alloc.unwrap_or(0) >> 20
        ),
        // (Float or 32-bit samples, unusual colour types: the file is fine, this decoder is not.)
        // (Dimensions past what the decoder can address are a damaged or made-up header, which
        // converting would not mend.)
        image::ImageError::Unsupported(u) if u.to_string().contains("dimensions") => {
            match zero_dimensions(&u.to_string()) {
                // (The decoder says "too large" of a 0-pixel side too.)
                Some((w, h)) => format!("its header gives it {w}×{h} pixels: a damaged header"),
                None => {
                    format!("{u}: a damaged header, or a picture far larger than a model needs")
                }
            }
        }
        image::ImageError::Unsupported(u) => {
            format!("{u}; convert it to an 8- or 16-bit RGB or grayscale PNG, TIFF or JPEG")
        }
        e => e.to_string(),
    }
}

/// The (width, height) in the `image` crate's "Image dimensions (W x H ..." text where one is 0.
fn zero_dimensions(text: &str) -> Option<(u64, u64)> {
    let dims = text
        .split("dimensions (")
        .nth(1)?
        .split([' ', ')'])
        .next()?;
    let (w, h) = dims.split_once('x')?;
    let (w, h) = (w.parse().ok()?, h.parse().ok()?);
    (w == 0 || h == 0).then_some((w, h))
}

/// Runs `f`, turning a panic inside it into an error that carries the panic's message.
fn guarded<T>(
    f: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = (p.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(format!("the image decoder failed on this file ({msg})"))
    })
}

/// Per-axis sampling table: for each output index, (i0, i1, weight of i1).
fn axis_table(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let s = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(src - 1);
            let i1 = (i0 + 1).min(src - 1);
            let f = if i0 == src - 1 {
                0.0
            } else {
                (s - i0 as f64) as f32
            };
            (i0, i1, f)
        })
        .collect()
}

/// Bilinear resize of an interleaved (H, W, C) f32 image to (oh, ow).
///
/// # Panics
/// If `src` does not hold h·w·c values.
pub fn resize_bilinear(
    src: &[f32],
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), h * w * c);
    resize_with(|i| src[i], (h, w, c), (oh, ow))
}

/// The same resize reading the source through `at(flat index)`, so 8-bit images are converted
/// on the fly instead of being copied whole to f32 first.
pub fn resize_with(
    at: impl Fn(usize) -> f32,
    (h, w, c): (usize, usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    if (h, w) == (oh, ow) {
        return (0..h * w * c).map(at).collect();
    }
    let rows = BilinearRows::new(at, (h, w, c), (oh, ow));
    let mut out = vec![0f32; oh * ow * c];
    for (oy, row) in out.chunks_exact_mut((ow * c).max(1)).enumerate() {
        rows.row(oy, row);
    }
    out
}

/// A bilinear resize to (oh, ow) given a row at a time, with [`resize_with`]'s arithmetic:
/// it holds only the source rows resized across, so a map upsampled to a photograph of
/// 100 megapixels costs a few rows, not the whole image per map.
pub struct BilinearRows {
    /// Per output row: (source row, next source row, weight of the next).
    ty: Vec<(usize, usize, f32)>,
    /// Source row → its place in `across` (`usize::MAX`: no output row reads it).
    slot: Vec<usize>,
    /// The source rows output rows read, resized across: `ow · c` values each.
    across: Vec<f32>,
    /// Values per output row, `ow · c`.
    rw: usize,
}

impl BilinearRows {
    /// The resize of an interleaved (h, w, c) image read through `at(flat index)`. A source
    /// without pixels has nothing to sample: its rows are black (zeros) rather than a panic.
    pub fn new(
        at: impl Fn(usize) -> f32,
        (h, w, c): (usize, usize, usize),
        (oh, ow): (usize, usize),
    ) -> Self {
        let rw = ow * c;
        if h * w == 0 || oh * rw == 0 {
            return BilinearRows {
                ty: Vec::new(),
                slot: Vec::new(),
                across: Vec::new(),
                rw,
            };
        }
        let ty = axis_table(h, oh);
        let tx = axis_table(w, ow);
        // Separable: each source row an output row reads is resized across once, then output
        // rows blend two of those. The same arithmetic as four taps per output value, in the
        // same order, for a fraction of the reads (an upsampled map reuses each row for many
        // outputs).
        let mut slot = vec![usize::MAX; h];
        let mut rows = 0;
        for &(y0, y1, _) in &ty {
            for y in [y0, y1] {
                if slot[y] == usize::MAX {
                    slot[y] = rows;
                    rows += 1;
                }
            }
        }
        let mut across = vec![0f32; rows * rw];
        for (y, &at_slot) in slot.iter().enumerate().filter(|(_, &s)| s != usize::MAX) {
            let dst = &mut across[at_slot * rw..(at_slot + 1) * rw];
            let r = y * w * c;
            for (ox, &(x0, x1, fx)) in tx.iter().enumerate() {
                for ch in 0..c {
                    dst[ox * c + ch] = at(r + x0 * c + ch) * (1.0 - fx) + at(r + x1 * c + ch) * fx;
                }
            }
        }
        BilinearRows {
            ty,
            slot,
            across,
            rw,
        }
    }

    /// Output row `oy` (`ow · c` values) into `out`.
    pub fn row(&self, oy: usize, out: &mut [f32]) {
        let Some(&(y0, y1, fy)) = self.ty.get(oy) else {
            out.fill(0.0);
            return;
        };
        let rw = self.rw;
        let top = &self.across[self.slot[y0] * rw..(self.slot[y0] + 1) * rw];
        let bot = &self.across[self.slot[y1] * rw..(self.slot[y1] + 1) * rw];
        (out.iter_mut().zip(top).zip(bot)).for_each(|((o, t), b)| *o = t * (1.0 - fy) + b * fy);
    }
}

/// Target input size of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputSize {
    /// Resize every image to S×S (224 is torchvision's).
    Square(usize),
    /// Keep each image's own size.
    Native,
}

impl InputSize {
    pub fn for_image(&self, img: &RgbImage) -> (usize, usize) {
        match *self {
            InputSize::Square(s) => (s, s),
            InputSize::Native => (img.height() as usize, img.width() as usize),
        }
    }
}

/// RGB8 → \[0,1\] → resize to (h, w) → ImageNet normalisation, written as CHW into `out`.
///
/// # Panics
/// If `out` holds fewer than 3·h·w values.
pub fn preprocess_into(img: &RgbImage, hw: (usize, usize), out: &mut [f32]) {
    preprocess_into_with(img, hw, &Normalization::IMAGENET, out)
}

/// [`preprocess_into`] with a model's own normalisation.
///
/// # Panics
/// If `out` holds fewer than 3·h·w values.
pub fn preprocess_into_with(
    img: &RgbImage,
    (h, w): (usize, usize),
    norm: &Normalization,
    out: &mut [f32],
) {
    let (ih, iw) = (img.height() as usize, img.width() as usize);
    let px = img.as_raw();
    let hwc = resize_with(|i| px[i] as f32 / 255.0, (ih, iw, 3), (h, w));
    for c in 0..3 {
        let plane = &mut out[c * h * w..(c + 1) * h * w];
        for (i, v) in plane.iter_mut().enumerate() {
            *v = (hwc[i * 3 + c] - norm.mean[c]) / norm.std[c];
        }
    }
}

/// A batch of images, all brought to the same (h, w), as an NCHW tensor (ImageNet's
/// normalisation).
pub fn preprocess(images: &[&RgbImage], hw: (usize, usize)) -> Tensor {
    preprocess_with(images, hw, &Normalization::IMAGENET)
}

/// [`preprocess`] with a model's own normalisation ([`crate::model::Graph::normalization`]).
pub fn preprocess_with(images: &[&RgbImage], hw: (usize, usize), norm: &Normalization) -> Tensor {
    use rayon::prelude::*;
    let per = 3 * hw.0 * hw.1;
    let mut data = vec![0f32; images.len() * per];
    // (A 0-sized input gives an empty tensor; the backends refuse it by name.)
    data.par_chunks_mut(per.max(1))
        .zip(images.par_iter())
        .for_each(|(out, img)| preprocess_into_with(img, hw, norm, out));
    Tensor::new([images.len(), 3, hw.0, hw.1], data)
}

#[cfg(test)]
mod normalization_tests {
    use super::*;

    /// A model's own normalisation against ImageNet's, undone and redone by hand:
    /// x_own = (x_imagenet·std_in + mean_in − mean) / std, within 1e-5 (f32 rounding).
    #[test]
    fn own_normalisation_is_imagenets_redone() {
        let img = RgbImage::from_fn(13, 7, |x, y| {
            image::Rgb([(x * 19) as u8, (y * 31) as u8, 200])
        });
        let own = Normalization::new([0.5, 0.4, 0.3], [0.2, 0.25, 0.5]).unwrap();
        let (a, b) = (
            preprocess(&[&img], (5, 9)),
            preprocess_with(&[&img], (5, 9), &own),
        );
        for (i, (x, y)) in a.data().iter().zip(b.data()).enumerate() {
            let c = i / 45;
            let raw = x * IMAGENET_STD[c] + IMAGENET_MEAN[c];
            let want = (raw - own.mean[c]) / own.std[c];
            assert!((y - want).abs() < 1e-5, "{i}: {y} vs {want}");
        }
        assert_eq!(
            Normalization::triple(" [1, 2,3] ", "mean").unwrap(),
            [1.0, 2.0, 3.0]
        );
        assert!(Normalization::triple("1,2", "mean").is_err());
        assert!(Normalization::triple("", "mean").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The separable resize against four taps per output value written out from cv2's rule
    /// (source x = (ox + ½)·w/ow − ½, clamped at 0; the right neighbour clamped at the edge),
    /// in f64 (within 1e-6: the weights' f32 rounding) and in f32 as the resize computed
    /// before it was separable (bit for bit): up, down, uneven, one pixel, three channels,
    /// one axis kept.
    #[test]
    fn resize_bilinear_matches_four_taps() {
        let tap = |n: usize, o: usize, d: usize| {
            let s = ((d as f64 + 0.5) * n as f64 / o as f64 - 0.5).max(0.0);
            let i0 = (s as usize).min(n - 1);
            (
                i0,
                (i0 + 1).min(n - 1),
                if i0 + 1 >= n { 0.0 } else { s - i0 as f64 },
            )
        };
        for (h, w, c, oh, ow) in [
            (7, 7, 1, 224, 224),
            (14, 9, 1, 5, 31),
            (1, 1, 1, 3, 4),
            (5, 6, 3, 5, 9),
            (6, 5, 3, 9, 5),
            (33, 17, 3, 8, 40),
            (2, 3, 1, 1, 1),
        ] {
            let src: Vec<f32> = (0..h * w * c)
                .map(|i| ((i * 37) % 101) as f32 / 7.0)
                .collect();
            let got = resize_bilinear(&src, h, w, c, oh, ow);
            for oy in 0..oh {
                let (y0, y1, fy) = tap(h, oh, oy);
                for ox in 0..ow {
                    let (x0, x1, fx) = tap(w, ow, ox);
                    for ch in 0..c {
                        let v = |y: usize, x: usize| src[(y * w + x) * c + ch] as f64;
                        let top = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
                        let bot = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
                        let want = top * (1.0 - fy) + bot * fy;
                        let g = got[(oy * ow + ox) * c + ch];
                        let (ty, tx) = (axis_table(h, oh)[oy], axis_table(w, ow)[ox]);
                        let s = |y: usize, x: usize| src[(y * w + x) * c + ch];
                        let top32 = s(ty.0, tx.0) * (1.0 - tx.2) + s(ty.0, tx.1) * tx.2;
                        let bot32 = s(ty.1, tx.0) * (1.0 - tx.2) + s(ty.1, tx.1) * tx.2;
                        let old = top32 * (1.0 - ty.2) + bot32 * ty.2;
                        assert_eq!(g.to_bits(), old.to_bits(), "{h}x{w}x{c} -> {oh}x{ow}");
                        let g = g as f64;
                        assert!(
                            (g - want).abs() <= 1e-6 * (1.0 + want.abs()),
                            "{h}x{w}x{c} -> {oh}x{ow} at ({oy}, {ox}, {ch}): {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// A decoder that panics fails its file with the panic's message (the CLI then reports
    /// that file and goes on); ordinary results pass through unchanged.
    #[test]
    fn a_panicking_decoder_fails_its_file_only() {
        let r: std::result::Result<(), String> = guarded(|| panic!("row {} out of range", 7));
        let err = r.unwrap_err();
        assert!(
            err.contains("decoder failed") && err.contains("row 7 out of range"),
            "{err}"
        );
        assert_eq!(
            guarded(|| Err::<(), _>("bad".to_string())),
            Err("bad".into())
        );
        assert_eq!(guarded(|| Ok::<_, String>(3)), Ok(3));
        let err = decode_rgb8(b"not an image").unwrap_err();
        assert!(err.contains("not a recognised image format"), "{err}");
        let err = decode_rgb8(b"").unwrap_err();
        assert!(err.contains("empty (0 bytes)"), "{err}");
    }

    /// A file whose header claims a huge picture fails with the limit named, before any
    /// pixel memory is taken.
    #[test]
    fn a_decompression_bomb_is_refused() {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode_image(&RgbImage::new(8, 8))
            .unwrap();
        // SOF0: FF C0, length (2), precision (1), height (2), width (2).
        let sof = jpeg.windows(2).position(|m| m == [0xff, 0xc0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xea, 0x60, 0xea, 0x60]); // 60000 x 60000
        let err = decode_rgb8(&jpeg).unwrap_err();
        assert!(err.contains("512 MiB allowed"), "{err}");
        // Dimensions past what a decoder addresses (farbfeld: magic, then width and height as
        // 32-bit big-endian): said to be a bad header, not a format to convert from.
        let mut ff = b"farbfeld".to_vec();
        ff.extend_from_slice(&[0xff; 8]);
        ff.extend_from_slice(&[0; 16]);
        let err = decode_rgb8(&ff).unwrap_err();
        assert!(
            err.contains("a damaged header") && !err.contains("convert it"),
            "{err}"
        );
    }

    /// A header giving a side of 0 pixels is called damaged, not "too large" (the decoder's
    /// own word for it).
    #[test]
    fn a_header_without_pixels_is_called_damaged() {
        let mut bmp = Vec::new();
        RgbImage::new(8, 5)
            .write_to(&mut std::io::Cursor::new(&mut bmp), image::ImageFormat::Bmp)
            .unwrap();
        bmp[18..22].copy_from_slice(&0i32.to_le_bytes()); // BITMAPINFOHEADER's width
        let err = decode_rgb8(&bmp).unwrap_err();
        assert!(
            err.contains("0×5 pixels: a damaged header") && !err.contains("too large"),
            "{err}"
        );
        assert_eq!(
            zero_dimensions("Image dimensions (12x0 w/3 channels)"),
            Some((12, 0))
        );
        assert_eq!(zero_dimensions("Image dimensions (9x7 w/3 channels)"), None);
    }

    /// libjpeg's fatal errors come back as the file's error with libjpeg's message (it
    /// unwinds through the C code; nothing may escape `decode_rgb8`), and damaged scan data,
    /// which libjpeg (and cv2) would decode with a warning and the rest grey, is refused
    /// naming libjpeg's warning.
    #[test]
    fn libjpeg_errors_name_the_problem() {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode_image(&RgbImage::from_fn(16, 16, |x, y| {
                image::Rgb([x as u8 * 9, y as u8 * 7, 99])
            }))
            .unwrap();
        // DHT: FF C4, length (2), class and id (1), 16 counts: more codes than a table holds.
        let dht = jpeg.windows(2).position(|m| m == [0xff, 0xc4]).unwrap();
        let mut bad = jpeg.clone();
        bad[dht + 5..dht + 21].fill(0xff);
        let err = decode_rgb8(&bad).unwrap_err();
        // (The `image` crate's decoder, under GRADCAM_JPEG_DECODER=image, words it its way.)
        assert!(
            !jpeg_by_libjpeg()
                || err.starts_with("damaged or unsupported JPEG (libjpeg: ")
                    && err.contains("Huffman"),
            "{err}"
        );
        // A flipped byte in the scan's data: the Huffman codes after it are out of step and
        // run into the end marker.
        let sos = jpeg.windows(2).rposition(|m| m == [0xff, 0xda]).unwrap();
        let mut flipped = jpeg.clone();
        flipped[sos + 16] ^= 0x5a;
        match (jpeg_by_libjpeg(), decode_rgb8(&flipped)) {
            (true, Err(e)) => assert!(
                e.starts_with("damaged JPEG (libjpeg: Corrupt JPEG data"),
                "{e}"
            ),
            (true, Ok(_)) => panic!("a damaged JPEG was decoded"),
            // (The `image` crate's decoder says nothing.)
            (false, r) => assert_eq!(r.unwrap().dimensions(), (16, 16)),
        }
    }

    /// A JPEG whose scans repeat past the limit is refused before decoding (libjpeg would
    /// decode every repeat with a warning); the file it was made from decodes.
    #[test]
    fn jpegs_of_too_many_scans_are_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode");
        let jpeg = std::fs::read(dir.join("s422_progressive.jpg")).unwrap();
        assert!(decode_rgb8(&jpeg).is_ok());
        let scans = jpeg_scans(&jpeg);
        assert!((2..=MAX_JPEG_SCANS).contains(&scans.scans) && scans.buffered && scans.ended);
        // The last scan (its header to the EOI), repeated.
        let last = jpeg.windows(2).rposition(|m| m == [0xff, 0xda]).unwrap();
        let eoi = jpeg.len() - 2;
        let mut bad = jpeg[..eoi].to_vec();
        for _ in 0..MAX_JPEG_SCANS {
            bad.extend_from_slice(&jpeg[last..eoi]);
        }
        bad.extend_from_slice(&[0xff, 0xd9]);
        let err = decode_rgb8(&bad).unwrap_err();
        assert!(err.contains("scans") && err.contains("stall"), "{err}");
    }

    /// A progressive JPEG whose pixels fit the limit but whose coefficients, held until the
    /// last scan, take it past twice that is refused before either decoder allocates them
    /// (the `image` crate's, under GRADCAM_JPEG_DECODER=image, took minutes and gigabytes).
    #[test]
    fn progressive_jpegs_count_their_coefficients() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode");
        let mut jpeg = std::fs::read(dir.join("s422_progressive.jpg")).unwrap();
        // SOF2: FF C2, length (2), precision (1), height (2), width (2): 13000 × 12500, 4:2:2,
        // 3 bytes a pixel (487 MB) and 4 of coefficients.
        let sof = jpeg.windows(2).position(|m| m == [0xff, 0xc2]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0x30, 0xd4, 0x32, 0xc8]);
        let err = decode_rgb8(&jpeg).unwrap_err();
        assert!(
            err.contains("coefficients") && err.contains("1024 MiB allowed"),
            "{err}"
        );
        // Its first scan alone (the DC scan, then the EOI): libjpeg would still hold every
        // coefficient, so it is refused the same way.
        let mut sos = jpeg
            .windows(2)
            .enumerate()
            .filter(|(_, m)| *m == [0xff, 0xda]);
        let (second, _) = sos.nth(1).unwrap();
        let mut one = jpeg[..second].to_vec();
        one.extend_from_slice(&[0xff, 0xd9]);
        assert_eq!(
            jpeg_scans(&one),
            JpegScans {
                scans: 1,
                buffered: true,
                ended: true
            }
        );
        let err = decode_rgb8(&one).unwrap_err();
        assert!(err.contains("coefficients"), "{err}");
        // Baseline files hold none.
        let baseline = std::fs::read(dir.join("s420.jpg")).unwrap();
        assert_eq!(
            jpeg_scans(&baseline),
            JpegScans {
                scans: 1,
                buffered: false,
                ended: true
            }
        );
    }

    /// Gray + alpha TIFFs, which the `image` crate refuses, are read by the `tiff` crate: a
    /// planar one (gray plane, then alpha; cv2 5.0 reads it as garbage) as its interleaved
    /// twin (whose pixels tests/parity.rs checks against cv2's); one whose strip would pass
    /// the limit is refused naming it; a TIFF of another unsupported kind keeps the `image`
    /// crate's message.
    #[test]
    fn gray_alpha_tiffs_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode");
        let interleaved = std::fs::read(dir.join("graya16_tiff.tif")).unwrap();
        let planar = std::fs::read(dir.join("planar/graya16_tiff.tif")).unwrap();
        let want = decode_rgb8(&interleaved).unwrap();
        assert_eq!((want.width(), want.height()), (23, 19));
        assert_eq!(
            peek_dims(&dir.join("planar/graya16_tiff.tif")),
            Some((23, 19))
        );
        assert_eq!(decode_rgb8(&planar).unwrap(), want);
        // Width, height, rows per strip and the strip's bytes (LONG values of IFD entries 0,
        // 1, 7 and 8) made 30000 × 30000: 3.6 GB of samples.
        let ifd = u32::from_le_bytes(interleaved[4..8].try_into().unwrap()) as usize;
        let mut huge = interleaved.clone();
        for (k, v) in [
            (0, 30000),
            (1, 30000),
            (7, 30000),
            (8, 30000u32 * 30000 * 4),
        ] {
            let at = ifd + 2 + 12 * k + 8;
            huge[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        let err = decode_rgb8(&huge).unwrap_err();
        assert!(
            err.contains("30000×30000") && err.contains("512 MiB"),
            "{err}"
        );
        // Two samples a pixel said to be RGB (PhotometricInterpretation, the fifth entry, 2):
        // neither gray + alpha nor RGB.
        let mut rgb2 = interleaved.clone();
        let photometric = ifd + 2 + 12 * 4;
        assert_eq!(rgb2[photometric..photometric + 2], 262u16.to_le_bytes());
        rgb2[photometric + 8] = 2;
        let err = decode_rgb8(&rgb2).unwrap_err();
        assert!(err.contains("convert it"), "{err}");
    }

    /// Floating-point TIFFs: gray ones (32- and 64-bit, which the `image` crate refuses)
    /// read as the `image` crate reads a float RGB one with that gray in each channel, which
    /// is round(255 · clamp(v, 0, 1)) (written out here); NaN or infinite samples, and samples
    /// on another scale than 0..1, refused naming them; other sample kinds refused naming
    /// theirs.
    #[test]
    fn float_tiffs_decode_or_say_why_not() {
        use tiff::encoder::{colortype, TiffEncoder};
        fn tiff<C: colortype::ColorType>(w: u32, h: u32, data: &[C::Inner]) -> Vec<u8>
        where
            [C::Inner]: tiff::encoder::TiffValue,
        {
            let mut out = std::io::Cursor::new(Vec::new());
            let mut enc = TiffEncoder::new(&mut out).unwrap();
            enc.write_image::<C>(w, h, data).unwrap();
            out.into_inner()
        }
        let (w, h) = (7, 5);
        let gray: Vec<f32> = (0..w * h).map(|i| (i as f32 * 0.037) - 0.1).collect();
        let rgb: Vec<f32> = gray.iter().flat_map(|&g| [g; 3]).collect();
        let want: Vec<u8> = gray
            .iter()
            .flat_map(|&g| [(g.clamp(0.0, 1.0) * 255.0).round() as u8; 3])
            .collect();
        let by_image = decode_rgb8(&tiff::<colortype::RGB32Float>(w, h, &rgb)).unwrap();
        assert_eq!(by_image.as_raw(), &want);
        let g32 = decode_rgb8(&tiff::<colortype::Gray32Float>(w, h, &gray)).unwrap();
        assert_eq!(g32, by_image);
        let g64: Vec<f64> = gray.iter().map(|&g| g as f64).collect();
        let g64 = decode_rgb8(&tiff::<colortype::Gray64Float>(w, h, &g64)).unwrap();
        assert_eq!(g64, by_image);
        // Not finite, gray or RGB: refused, counting the samples.
        let mut nan = gray.clone();
        (nan[3], nan[9]) = (f32::NAN, f32::INFINITY);
        let err = decode_rgb8(&tiff::<colortype::Gray32Float>(w, h, &nan)).unwrap_err();
        assert!(
            err.contains("2 of its 35 floating-point samples are NaN"),
            "{err}"
        );
        let nan3: Vec<f32> = nan.iter().flat_map(|&g| [g; 3]).collect();
        let err = decode_rgb8(&tiff::<colortype::RGB32Float>(w, h, &nan3)).unwrap_err();
        assert!(err.contains("6 of its 105 floating-point"), "{err}");
        // On a 0..255 scale: refused, naming the range.
        let wide: Vec<f32> = gray.iter().map(|&g| g * 255.0).collect();
        let err = decode_rgb8(&tiff::<colortype::Gray32Float>(w, h, &wide)).unwrap_err();
        assert!(err.contains("to 295.2") && err.contains("0..1"), "{err}");
        let wide3: Vec<f32> = wide.iter().flat_map(|&g| [g; 3]).collect();
        let err = decode_rgb8(&tiff::<colortype::RGB32Float>(w, h, &wide3)).unwrap_err();
        assert!(err.contains("clipped to white"), "{err}");
        // Sample kinds read by neither decoder.
        let i16s: Vec<i16> = (0..w as i16 * h as i16).collect();
        let err = decode_rgb8(&tiff::<colortype::GrayI16>(w, h, &i16s)).unwrap_err();
        assert!(
            err.contains("16-bit signed integer samples, 1 a pixel (gray)")
                && err.contains("convert"),
            "{err}"
        );
        let f64s: Vec<f64> = rgb.iter().map(|&v| v as f64).collect();
        let err = decode_rgb8(&tiff::<colortype::RGB64Float>(w, h, &f64s)).unwrap_err();
        assert!(
            err.contains("64-bit floating-point samples, 3 a pixel (RGB)"),
            "{err}"
        );
    }

    /// A file with an image's signature and a huge body is not read whole: a PNG is decoded
    /// as it is read (64 GiB of zeros after the signature fail at the first chunk; reading
    /// them first would exhaust memory), a JPEG larger than any the limits allow is refused by
    /// its size. Both files are sparse: they take no disk.
    /// Files cut short say so, in words, whatever their format's decoder says.
    #[test]
    fn files_cut_short_say_so() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode");
        for name in [
            "rgb16_tiff.tif",
            "rgba8_unassoc_tiff.tif",
            "rgb_jpeg_tiff.tif",
        ] {
            let whole = std::fs::read(dir.join(name)).unwrap();
            let err = decode_rgb8(&whole[..whole.len() * 2 / 3]).unwrap_err();
            assert!(err.contains("cut short"), "{name}: {err}");
        }
        // QOI's decoder says it inside its own error.
        let mut qoi = std::io::Cursor::new(Vec::new());
        let img = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 77]));
        img.write_to(&mut qoi, image::ImageFormat::Qoi).unwrap();
        let qoi = qoi.into_inner();
        let err = decode_rgb8(&qoi[..qoi.len() / 2]).unwrap_err();
        assert!(err.contains("cut short"), "qoi: {err}");
    }

    #[test]
    fn huge_files_are_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("huge.png");
        std::fs::write(&png, b"\x89PNG\r\n\x1a\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&png)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        let err = load_rgb8(&png).unwrap_err().to_string();
        assert!(err.contains("huge.png"), "{err}");
        let jpg = dir.path().join("huge.jpg");
        std::fs::write(&jpg, [0xFF, 0xD8, 0xFF, 0xE0, 0, 16]).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&jpg)
            .unwrap()
            .set_len(8 << 30)
            .unwrap();
        let err = load_rgb8(&jpg).unwrap_err().to_string();
        assert!(err.contains("a Jpeg file of 8192 MiB"), "{err}");
        // Its size is not read from the whole file either (the `image` crate would).
        assert_eq!(peek_dims(&jpg), None);
        // An ordinary PNG still decodes from the file as it is read; its size, and an
        // ordinary JPEG's from its frame header, are read without decoding.
        let src = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 50, 9]));
        let ok = dir.path().join("ok.png");
        src.save(&ok).unwrap();
        assert_eq!(load_rgb8(&ok).unwrap(), src);
        assert_eq!(peek_dims(&ok), Some((7, 5)));
        let jpg = dir.path().join("ok.jpg");
        src.save(&jpg).unwrap();
        assert_eq!(peek_dims(&jpg), Some((7, 5)));
        assert_eq!(peek_dims(&dir.path().join("missing.png")), None);
    }

    /// An ICO whose images are RGB PNGs (as PIL writes them; the `image` crate's ICO reader
    /// takes RGBA ones only) decodes to its largest image.
    #[test]
    fn ico_of_rgb_pngs_decodes_its_largest_image() {
        let png = |w: u32, h: u32| {
            let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 9, y as u8 * 7, 5]));
            let mut out = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                .unwrap();
            (img, out)
        };
        let (small, small_png) = png(8, 6);
        let (large, large_png) = png(20, 12);
        let mut ico = vec![0, 0, 1, 0, 2, 0];
        let mut offset = 6 + 2 * 16;
        for (img, data) in [(&small, &small_png), (&large, &large_png)] {
            ico.extend_from_slice(&[img.width() as u8, img.height() as u8, 0, 0, 1, 0, 32, 0]);
            ico.extend_from_slice(&(data.len() as u32).to_le_bytes());
            ico.extend_from_slice(&(offset as u32).to_le_bytes());
            offset += data.len();
        }
        ico.extend_from_slice(&small_png);
        ico.extend_from_slice(&large_png);
        assert_eq!(decode_rgb8(&ico).unwrap(), large);
        // The largest cut short: an error (not the smaller picture), never a panic.
        assert!(decode_rgb8(&ico[..ico.len() - 10]).is_err());
        assert!(decode_rgb8(&ico[..6 + 32 + 10]).is_err());
        assert_eq!(small.width(), 8);
    }

    /// A PNG whose ICC profile (iCCP) inflates past [`PNG_CHUNK_BYTES`] decodes to its
    /// pixels with the profile dropped, not inflated (the `image` crate would take up to
    /// 512 MiB for it); a profile of ordinary size is still read.
    #[test]
    fn png_profiles_are_inflated_only_so_far() {
        use image::ImageDecoder;
        let png_of = |img: &image::GrayImage| {
            let mut out = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                .unwrap();
            out
        };
        // A zlib stream of 80 MiB of zeros: the IDAT of a black image that size.
        let zeros = png_of(&image::GrayImage::new(8192, 10240));
        let mut zlib = Vec::new();
        let mut at = 8;
        while at + 8 <= zeros.len() {
            let len = u32::from_be_bytes(zeros[at..at + 4].try_into().unwrap()) as usize;
            if &zeros[at + 4..at + 8] == b"IDAT" {
                zlib.extend_from_slice(&zeros[at + 8..at + 8 + len]);
            }
            at += 12 + len;
        }
        let small = image::GrayImage::from_fn(7, 5, |x, y| image::Luma([(x * 30 + y) as u8]));
        let plain = png_of(&small);
        let with_profile = |zlib: &[u8]| {
            let mut data = b"icc\0\0".to_vec();
            data.extend_from_slice(zlib);
            let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
            chunk.extend_from_slice(b"iCCP");
            chunk.extend_from_slice(&data);
            let crc = crc32(&chunk[4..]);
            chunk.extend_from_slice(&crc.to_be_bytes());
            // (After the signature and IHDR: 8 + 25 bytes.)
            [&plain[..33], &chunk, &plain[33..]].concat()
        };
        let profile = |png: &[u8]| {
            let r = reader_for(std::io::Cursor::new(png), image::ImageFormat::Png);
            r.into_decoder().unwrap().icc_profile().unwrap()
        };
        let bomb = with_profile(&zlib);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        assert_eq!(profile(&bomb), None);
        let want = image::DynamicImage::ImageLuma8(small).to_rgb8();
        assert_eq!(decode_rgb8(&bomb).unwrap(), want);
        // A profile of 3 bytes, stored (zlib header, one stored block, Adler-32).
        let stored = [
            0x78, 0x01, 0x01, 0x03, 0x00, 0xfc, 0xff, 1, 2, 3, 0x00, 0x0d, 0x00, 0x07,
        ];
        assert_eq!(profile(&with_profile(&stored)), Some(vec![1, 2, 3]));
        assert_eq!(decode_rgb8(&with_profile(&stored)).unwrap(), want);
    }

    /// CRC-32 (ISO-HDLC, as PNG's chunks use it), bit by bit.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// TGA, which has no signature, is read by its extension; AVIF (no decoder in this
    /// build) is refused by name.
    #[test]
    fn tga_by_extension_and_avif_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let tga = dir.path().join("a.TGA");
        src.save_with_format(&tga, image::ImageFormat::Tga).unwrap();
        assert_eq!(load_rgb8(&tga).unwrap(), src);
        let other = dir.path().join("a.dat");
        std::fs::copy(&tga, &other).unwrap();
        assert!(load_rgb8(&other)
            .unwrap_err()
            .to_string()
            .contains("not a recognised"));
        let mut avif = vec![0, 0, 0, 0x1c];
        avif.extend_from_slice(b"ftypavif\0\0\0\0avifmif1miaf");
        avif.resize(64, 0);
        assert!(decode_rgb8(&avif).unwrap_err().contains("AVIF"));
        // Formats named by their first bytes; other bytes are just not recognised.
        let named = |head: &[u8], kind: &str| {
            let err = decode_rgb8(head).unwrap_err();
            assert!(
                err.starts_with(kind) && err.contains("convert it"),
                "{kind}: {err}"
            );
        };
        named(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "a HEIF image (HEIC");
        named(b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic", "a HEIF image");
        named(b"\0\0\0\x18ftypmif1\0\0\0\0mif1avif", "an AVIF image");
        // ("avif" past the ftyp box is no brand.)
        named(b"\0\0\0\x14ftypmif1\0\0\0\0mif1heicavif", "a HEIF image");
        named(&[0xFF, 0x0A, 0xFA, 0x7F], "a JPEG XL image");
        named(
            b"\0\0\0\x0CJXL \r\n\x87\n\0\0\0\x14ftypjxl ",
            "a JPEG XL image",
        );
        named(
            b"\0\0\0\x0CjP  \r\n\x87\n\0\0\0\x14ftypjp2 ",
            "a JPEG 2000 image",
        );
        named(&[0xFF, 0x4F, 0xFF, 0x51, 0, 0x2F], "a JPEG 2000 image");
        named(b"8BPS\0\x01\0\0", "a Photoshop document");
        named(b"%PDF-1.7\n", "a PDF document");
        named(b"\xEF\xBB\xBF <svg xmlns=", "an SVG drawing");
        named(
            b"<?xml version=\"1.0\"?>\n<svg width=\"10\"",
            "an SVG drawing",
        );
        let err = decode_rgb8(b"<?xml version=\"1.0\"?>\n<html>").unwrap_err();
        assert_eq!(err, "not a recognised image format");
    }

    /// A JPEG cut short is refused (its decoder would fill the rest with grey); whole ones
    /// decode, with data after their end marker (an appended picture or video, whose bytes
    /// may hold any marker) or an embedded thumbnail's end marker before the main image's.
    #[test]
    fn truncated_jpegs_are_refused() {
        let src = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&src)
            .unwrap();
        let whole = decode_rgb8(&jpeg).unwrap();
        for cut in [jpeg.len() / 2, jpeg.len() - 3, 20] {
            let err = decode_rgb8(&jpeg[..cut]).unwrap_err();
            assert!(err.contains("truncated JPEG"), "cut at {cut}: {err}");
        }
        // Its end marker alone lost: libjpeg (and cv2) read every pixel; the `image` crate's
        // decoder cannot tell, so there it is refused.
        let no_eoi = decode_rgb8(&jpeg[..jpeg.len() - 2]);
        match jpeg_by_libjpeg() {
            true => assert_eq!(no_eoi.unwrap(), whole),
            false => assert!(no_eoi.unwrap_err().contains("truncated JPEG")),
        }
        // Cut short in the middle with an end marker put back: libjpeg's "premature end of
        // data segment" is refused (the `image` crate's decoder is silent about it).
        let mut patched = jpeg[..jpeg.len() / 2].to_vec();
        patched.extend_from_slice(&[0xFF, 0xD9]);
        if jpeg_by_libjpeg() {
            let err = decode_rgb8(&patched).unwrap_err();
            assert!(
                err.contains("damaged JPEG") && err.contains("premature end of data segment"),
                "{err}"
            );
        }
        // Bytes between segments (as some cameras write) lose nothing: no refusal.
        let sos = jpeg.windows(2).position(|m| m == [0xff, 0xda]).unwrap();
        let mut padded = jpeg[..sos].to_vec();
        padded.extend_from_slice(&[0x00, 0x12, 0x34]);
        padded.extend_from_slice(&jpeg[sos..]);
        assert_eq!(decode_rgb8(&padded).unwrap(), whole);
        let mut trailer = jpeg.clone();
        trailer.extend_from_slice(&[0x00, 0xFF, 0xDA, 0x00, 0x08, 0x01, 0x02, 0xFF, 0xC4]);
        trailer.extend_from_slice(&jpeg);
        assert_eq!(decode_rgb8(&trailer).unwrap(), decode_rgb8(&jpeg).unwrap());
        // An APP1 segment holding a thumbnail (a whole JPEG, EOI included) after the SOI.
        let mut with_thumb = jpeg[..2].to_vec();
        with_thumb.extend_from_slice(&[0xFF, 0xE1]);
        with_thumb.extend_from_slice(&(jpeg.len() as u16 + 2).to_be_bytes());
        with_thumb.extend_from_slice(&jpeg);
        with_thumb.extend_from_slice(&jpeg[2..]);
        assert!(decode_rgb8(&with_thumb).is_ok());
        let cut = with_thumb.len() - jpeg.len() / 3;
        assert!(decode_rgb8(&with_thumb[..cut])
            .unwrap_err()
            .contains("truncated JPEG"));
    }

    /// 16-bit PNM samples become 8 bits as `cv2.imread` makes them, v >> 8 (checked with
    /// OpenCV 5.0 on these values: not the rounded v / 257); a maximum below 65535 is scaled.
    #[test]
    fn sixteen_bit_pnm_keeps_the_high_bytes() {
        let v: Vec<u16> = (0..5 * 7 * 3).map(|i| (i * 2039 + 128) as u16).collect();
        let be: Vec<u8> = v.iter().flat_map(|x| x.to_be_bytes()).collect();
        let ppm = [b"P6\n7 5\n65535\n".as_slice(), &be].concat();
        let img = decode_rgb8(&ppm).unwrap();
        let want: Vec<u8> = v.iter().map(|x| (x >> 8) as u8).collect();
        assert_eq!(img.as_raw(), &want);
        let gray = &be[..5 * 7 * 2];
        let pgm = [b"P5\n7 5\n65535\n".as_slice(), gray].concat();
        let img = decode_rgb8(&pgm).unwrap();
        let want: Vec<u8> = v[..35].iter().flat_map(|x| [(x >> 8) as u8; 3]).collect();
        assert_eq!(img.as_raw(), &want);
        // A maximum of 1000: 1000 is white, 500 mid-grey.
        let pgm = [b"P5\n2 1\n1000\n".as_slice(), &[3, 232, 1, 244]].concat();
        let px = decode_rgb8(&pgm).unwrap().into_raw();
        assert!(px[0] == 255 && (126..=128).contains(&px[3]), "{px:?}");
    }

    /// A JPEG whose EXIF orientation says "turn 90° clockwise" (6, as phones write portrait
    /// photographs) decodes upright: the same pixels as the untagged file turned by
    /// `imageops::rotate90`, with width and height swapped.
    #[test]
    fn exif_orientation_is_applied() {
        let (w, h) = (24u32, 16u32);
        let src = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 10) as u8,
                (y * 15) as u8,
                if x < w / 2 { 40 } else { 220 },
            ])
        });
        let mut plain = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 95)
            .encode_image(&src)
            .unwrap();
        // APP1 "Exif": a little-endian TIFF header and one IFD entry, Orientation (0x0112),
        // SHORT, count 1, value `o`; inserted right after the SOI marker.
        let app1 = |o: u8| {
            let mut seg =
                b"\xff\xe1\x00\x22Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\x01\x00".to_vec();
            seg.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, o, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(seg.len(), 0x22 + 2);
            seg
        };
        let tag = |segments: &[Vec<u8>]| {
            let mut tagged = plain[..2].to_vec();
            segments.iter().for_each(|s| tagged.extend_from_slice(s));
            tagged.extend_from_slice(&plain[2..]);
            tagged
        };
        let tagged = tag(&[app1(6)]);
        let upright = decode_rgb8(&tagged).unwrap();
        let stored = decode_rgb8(&plain).unwrap();
        assert_eq!((stored.width(), stored.height()), (w, h));
        assert_eq!((upright.width(), upright.height()), (h, w));
        assert_eq!(upright, image::imageops::rotate90(&stored));
        // The stored top-left corner (dark, blue 40) is now the top-right one.
        let px = upright.get_pixel(h - 1, 0);
        assert!(px[0] < 30 && px[1] < 30 && px[2] < 90, "{px:?}");
        // Two Exif segments: the first one counts, as in cv2.imread (OpenCV 4.10: 6 then 3
        // turns the picture 90°, 3 then 6 turns it 180°).
        assert_eq!(decode_rgb8(&tag(&[app1(6), app1(3)])).unwrap(), upright);
        let half_turn = image::imageops::rotate180(&stored);
        assert_eq!(decode_rgb8(&tag(&[app1(3), app1(6)])).unwrap(), half_turn);
        // An XMP segment (APP1 too) before the Exif one: the Exif one counts (cv2 5.0 too).
        let xmp = b"\xff\xe1\x00\x1fhttp://ns.adobe.com/xap/1.0/\x00".to_vec();
        assert_eq!(xmp.len(), 0x1f + 2);
        assert_eq!(decode_rgb8(&tag(&[xmp.clone(), app1(6)])).unwrap(), upright);
        // The `image` crate's decoder (GRADCAM_JPEG_DECODER=image, or where libjpeg fails)
        // is turned by the same segment (by itself it takes the last).
        let stored_by_image = decode_jpeg_by_image(&plain, false).unwrap();
        let by_image = |segments: &[Vec<u8>]| decode_jpeg_by_image(&tag(segments), false).unwrap();
        let turned = image::imageops::rotate90(&stored_by_image);
        assert_eq!(by_image(&[app1(6), app1(3)]), turned);
        assert_eq!(by_image(&[xmp, app1(6)]), turned);
        assert_eq!(
            by_image(&[app1(3), app1(6)]),
            image::imageops::rotate180(&stored_by_image)
        );
    }
}
