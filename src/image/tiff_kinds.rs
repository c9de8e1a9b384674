//! TIFFs the `image` crate refuses: gray + alpha and palette (colour map) images, read as
//! `cv2.imread` reads them, and gray floating-point ones, read as the `image` crate reads
//! float RGB; other kinds are refused naming their samples. They are decoded by the `tiff`
//! crate, which does the strips, tiles, compression and predictors; this file only turns its
//! samples into RGB. Also RGBA with unassociated alpha, which the `image` crate reads but cv2
//! premultiplies.

use std::io::{Read, Seek, SeekFrom};

use image::RgbImage;
use tiff::decoder::{Decoder, DecodingResult};
use tiff::tags::Tag;

pub(super) type Decoded = Option<std::result::Result<RgbImage, String>>;

/// The `tiff` crate's decoder over `source`, its buffers held to the `image` crate's default
/// limit for one image (its size in MiB returned beside it, for messages).
pub(super) fn limited<R: Read + Seek>(source: R) -> Option<(Decoder<R>, usize)> {
    let max = image::Limits::default().max_alloc? as usize;
    let mut limits = tiff::decoder::Limits::default();
    limits.decoding_buffer_size = max;
    Some((Decoder::new(source).ok()?.with_limits(limits), max >> 20))
}

pub(super) fn tag_u16<R: Read + Seek>(d: &mut Decoder<R>, t: Tag) -> Option<u16> {
    d.find_tag_unsigned::<u16>(t).ok().flatten()
}

/// The image's orientation tag (none: upright).
pub(super) fn orientation<R: Read + Seek>(d: &mut Decoder<R>) -> image::metadata::Orientation {
    tag_u16(d, Tag::Orientation)
        .and_then(|o| image::metadata::Orientation::from_exif(o.try_into().ok()?))
        .unwrap_or(image::metadata::Orientation::NoTransforms)
}

/// The whole first image's samples: 8-bit ones as they are, 16-bit ones by their high byte.
/// Refused, naming the limit, where they or the 8-bit RGB image made of them would pass it.
fn samples<R: Read + Seek>(
    d: &mut Decoder<R>,
    (w, h): (u32, u32),
    max_mib: usize,
) -> Option<std::result::Result<Vec<u8>, String>> {
    if (w as u64 * h as u64 * 3) >> 20 >= max_mib as u64 {
        return Some(Err(too_large((w, h), max_mib)));
    }
    match d.read_image() {
        Ok(DecodingResult::U8(v)) => Some(Ok(v)),
        Ok(DecodingResult::U16(v)) => Some(Ok(v.iter().map(|&g| (g >> 8) as u8).collect())),
        Ok(_) => None,
        Err(tiff::TiffError::LimitsExceeded) => Some(Err(too_large((w, h), max_mib))),
        Err(e) => Some(Err(e.to_string())),
    }
}

pub(super) fn too_large((w, h): (u32, u32), max_mib: usize) -> String {
    format!(
        "a {w}×{h} TIFF: decoding it would take more than the {max_mib} MiB allowed for one \
         image (a decompression bomb, or a picture far larger than a model needs)"
    )
}

/// `px` (w·h RGB triples) as an upright image.
pub(super) fn upright(
    (w, h): (u32, u32),
    px: Vec<u8>,
    turn: image::metadata::Orientation,
) -> std::result::Result<RgbImage, String> {
    let img = RgbImage::from_raw(w, h, px).ok_or("a TIFF without its pixels")?;
    let mut img = image::DynamicImage::ImageRgb8(img);
    img.apply_orientation(turn);
    Ok(img.into_rgb8())
}

/// What a TIFF's first header says about how to read it, read once for every TIFF.
#[derive(Clone, Copy, Default)]
pub(super) struct Header {
    /// JPEG-compressed (compression 7): its strips go through [`super::tiff_jpeg`].
    pub jpeg: bool,
    /// The extra sample is unassociated alpha (ExtraSamples = 2, as PIL writes RGBA): cv2
    /// reads an 8-bit one through libtiff's RGBA interface, which multiplies the colour by it.
    pub unassociated: bool,
}

/// [`Header`] of a TIFF; all false where the header cannot be read (the decoder then says
/// why).
pub(super) fn header<R: Read + Seek>(source: R) -> Header {
    let Ok(mut d) = Decoder::new(source) else {
        return Header::default();
    };
    Header {
        jpeg: tag_u16(&mut d, Tag::Compression) == Some(7),
        unassociated: d.get_tag_u32_vec(Tag::ExtraSamples).is_ok_and(|v| v == [2]),
    }
}

/// An 8-bit RGBA image's colour multiplied by its alpha as libtiff's RGBA interface does
/// (`(v·a + 127) / 255`), which is what `cv2.imread` gives of an RGBA TIFF with unassociated
/// alpha; None for other images.
pub(super) fn premultiplied(img: &image::DynamicImage) -> Option<RgbImage> {
    let image::DynamicImage::ImageRgba8(b) = img else {
        return None;
    };
    let times = |v: u8, a: u8| ((v as u32 * a as u32 + 127) / 255) as u8;
    let px = (b.as_raw().chunks_exact(4))
        .flat_map(|p| [times(p[0], p[3]), times(p[1], p[3]), times(p[2], p[3])])
        .collect();
    RgbImage::from_raw(b.width(), b.height(), px)
}

/// A TIFF the `image` crate has no decoder for, its header read once: gray + alpha and
/// palette ones as `cv2.imread` reads them, gray floating-point ones as the `image` crate
/// reads float RGB, any other refused naming its kind of samples. None where not even its
/// header can be read (the `image` crate's error then stands).
pub(super) fn unsupported<R: Read + Seek>(mut source: R) -> Decoded {
    let start = source.stream_position().ok()?;
    let palette = |mut source: R| {
        source.seek(SeekFrom::Start(start)).ok()?;
        palette_tiff(source)
    };
    let Some((mut d, max_mib)) = limited(&mut source) else {
        // (The `tiff` crate may balk at a palette TIFF's header, which is read patched.)
        return palette(source);
    };
    let photometric = tag_u16(&mut d, Tag::PhotometricInterpretation);
    let float = tag_u16(&mut d, Tag::SampleFormat) == Some(3);
    match (d.colortype(), photometric) {
        (_, Some(3)) => {
            drop(d);
            palette(source)
        }
        (
            Ok(tiff::ColorType::Multiband {
                bit_depth: 8 | 16,
                num_samples: 2,
            }),
            Some(1),
        ) => gray_alpha(d, max_mib),
        (Ok(tiff::ColorType::Gray(32 | 64)), Some(1)) if float => gray_float(d, max_mib),
        _ => Some(Err(format!(
            "{}, which this build does not read (it reads 1-, 8- and 16-bit unsigned samples, \
             and on a 0..1 scale 32-bit floating-point RGB(A) and 32- or 64-bit \
             floating-point gray); convert it to an 8- or 16-bit RGB or grayscale PNG, TIFF \
             or JPEG",
            sample_kind(&mut d)
        ))),
    }
}

/// A gray + alpha TIFF (8 or 16 bits, gray stored black-is-zero) as `cv2.imread` reads it:
/// the gray replicated (a 16-bit one's high byte), the alpha dropped, the orientation tag
/// applied.
fn gray_alpha<R: Read + Seek>(mut d: Decoder<R>, max_mib: usize) -> Decoded {
    let turn = orientation(&mut d);
    let (w, h) = match d.dimensions() {
        Ok(wh) => wh,
        Err(e) => return Some(Err(e.to_string())),
    };
    // Interleaved samples (gray, alpha) per pixel, or (planar configuration 2) the gray
    // plane first: the `tiff` crate then reads only that one.
    let planar = tag_u16(&mut d, Tag::PlanarConfiguration) == Some(2);
    let step = if planar { 1 } else { 2 };
    let pixels = w as usize * h as usize;
    let gray: Vec<u8> = match samples(&mut d, (w, h), max_mib)? {
        Ok(v) => v.into_iter().step_by(step).take(pixels).collect(),
        Err(e) => return Some(Err(e)),
    };
    if w == 0 || h == 0 || gray.len() != pixels {
        return Some(Err(format!("{w}×{h} gray + alpha TIFF without its pixels")));
    }
    let px = gray.iter().flat_map(|&g| [g; 3]).collect();
    Some(upright((w, h), px, turn))
}

/// A grayscale TIFF of 32- or 64-bit floating-point samples (black is zero), which neither
/// the `image` crate nor cv2 reads: read as the `image` crate reads float RGB, 0 black and 1
/// white, clamped ([`super::float_samples`] refuses what is not finite or not on that scale),
/// the gray replicated, the orientation tag applied.
fn gray_float<R: Read + Seek>(mut d: Decoder<R>, max_mib: usize) -> Decoded {
    let turn = orientation(&mut d);
    let (w, h) = match d.dimensions() {
        Ok(wh) => wh,
        Err(e) => return Some(Err(e.to_string())),
    };
    if (w as u64 * h as u64 * 3) >> 20 >= max_mib as u64 {
        return Some(Err(too_large((w, h), max_mib)));
    }
    let gray: Vec<f64> = match d.read_image() {
        Ok(DecodingResult::F32(v)) => v.into_iter().map(f64::from).collect(),
        Ok(DecodingResult::F64(v)) => v,
        Ok(_) => return None,
        Err(tiff::TiffError::LimitsExceeded) => return Some(Err(too_large((w, h), max_mib))),
        Err(e) => return Some(Err(e.to_string())),
    };
    let pixels = w as usize * h as usize;
    if w == 0 || h == 0 || gray.len() < pixels {
        return Some(Err(format!("{w}×{h} gray float TIFF without its pixels")));
    }
    let gray = &gray[..pixels];
    if let Err(e) = super::float_samples(gray.iter().copied(), true) {
        return Some(Err(e));
    }
    // (The `image` crate's float → 8-bit rule: clamped to 0..1, times 255, rounded.)
    let level = |g: f64| (g.clamp(0.0, 1.0) as f32 * 255.0).round() as u8;
    let px = gray.iter().flat_map(|&g| [level(g); 3]).collect();
    Some(upright((w, h), px, turn))
}

/// What a TIFF's samples are, for refusing a kind that nothing here reads: "a TIFF of 16-bit
/// signed integer samples, 1 a pixel (gray)".
fn sample_kind<R: Read + Seek>(d: &mut Decoder<R>) -> String {
    let first = |d: &mut Decoder<R>, t: Tag| {
        d.find_tag_unsigned_vec::<u16>(t)
            .ok()
            .flatten()
            .and_then(|v| v.first().copied())
    };
    // (The TIFF defaults: 1 bit, unsigned integer, 1 sample a pixel.)
    let bits = first(d, Tag::BitsPerSample).unwrap_or(1);
    let kind = match first(d, Tag::SampleFormat).unwrap_or(1) {
        1 => "unsigned integer",
        2 => "signed integer",
        3 => "floating-point",
        _ => "untyped",
    };
    let n = tag_u16(d, Tag::SamplesPerPixel).unwrap_or(1);
    let space = match tag_u16(d, Tag::PhotometricInterpretation) {
        Some(0 | 1) => "gray".to_string(),
        Some(2) => "RGB".into(),
        Some(3) => "palette".into(),
        Some(5) => "CMYK".into(),
        Some(6) => "YCbCr".into(),
        Some(p) => format!("colour space {p}"),
        None => "no colour space given".into(),
    };
    format!("a TIFF of {bits}-bit {kind} samples, {n} a pixel ({space})")
}

/// A palette TIFF (PhotometricInterpretation 3: one 1-, 2-, 4- or 8-bit index a pixel into
/// a colour map) as `cv2.imread` reads it through libtiff: each index's colour, whose 16-bit
/// map entries are taken by their high byte unless every entry is below 256 (a map written
/// as 8-bit values, which libtiff then takes as they are); the orientation tag applied.
/// None for other TIFFs.
///
/// The `tiff` crate has no colour type for palettes, so the file is read with its
/// interpretation said to be gray (black is zero): the indices come out as gray samples,
/// through whatever compression, predictor, strips or tiles the file uses.
fn palette_tiff<R: Read + Seek>(mut source: R) -> Decoded {
    let start = source.stream_position().ok()?;
    let (at, gray) = photometric_patch(&mut source, 3, 1)?;
    source.seek(SeekFrom::Start(start)).ok()?;
    let patched = Patched {
        inner: source,
        pos: start,
        at: start + at,
        with: gray,
    };
    let (mut d, max_mib) = limited(patched)?;
    let bits = match d.colortype() {
        Ok(tiff::ColorType::Gray(b @ (1 | 2 | 4 | 8))) => b,
        Ok(tiff::ColorType::Gray(b)) => {
            return Some(Err(format!(
                "a palette TIFF of {b}-bit indices (1, 2, 4 and 8 bits are read)"
            )))
        }
        Ok(_) => {
            return Some(Err(
                "a palette TIFF of several samples a pixel (a palette image has one index a \
                 pixel)"
                    .into(),
            ))
        }
        Err(e) => return Some(Err(e.to_string())),
    };
    let map = match d.get_tag_u16_vec(Tag::ColorMap) {
        Ok(m) if m.len() == 3 << bits => m,
        Ok(m) => {
            return Some(Err(format!(
                "a palette TIFF whose colour map has {} entries, not the 3 × {} its {bits}-bit \
                 indices need",
                m.len(),
                1 << bits
            )))
        }
        Err(e) => return Some(Err(format!("a palette TIFF without a colour map ({e})"))),
    };
    let turn = orientation(&mut d);
    let (w, h) = match d.dimensions() {
        Ok(wh) => wh,
        Err(e) => return Some(Err(e.to_string())),
    };
    let packed = match samples(&mut d, (w, h), max_mib)? {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    // Rows of w indices, most significant bits first, each row starting on a byte.
    let row_bytes = (w as usize * bits as usize).div_ceil(8);
    if w == 0 || h == 0 || packed.len() < row_bytes * h as usize {
        return Some(Err(format!("{w}×{h} palette TIFF without its pixels")));
    }
    let colours = 1usize << bits;
    let shift = if map.iter().all(|&v| v < 256) { 0 } else { 8 };
    let colour = |i: usize| [0, 1, 2].map(|c| (map[c * colours + i] >> shift) as u8);
    let bits = bits as usize;
    let mask = ((1u16 << bits) - 1) as u8;
    let px = (packed.chunks_exact(row_bytes).take(h as usize))
        .flat_map(|row| {
            (0..w as usize).flat_map(move |x| {
                let bit = x * bits;
                let index = (row[bit / 8] >> (8 - bits - bit % 8)) & mask;
                colour(index as usize)
            })
        })
        .collect();
    Some(upright((w, h), px, turn))
}

/// Where the first image's PhotometricInterpretation value lies in the file and the bytes
/// that would make it `to`, if it is `from`. Classic TIFF and BigTIFF; None for anything else.
fn photometric_patch<R: Read + Seek>(r: &mut R, from: u64, to: u64) -> Option<(u64, Vec<u8>)> {
    let start = r.stream_position().ok()?;
    let mut head = [0u8; 16];
    r.read_exact(&mut head[..8]).ok()?;
    let big_endian = match &head[..2] {
        b"II" => false,
        b"MM" => true,
        _ => return None,
    };
    let uint = |b: &[u8]| -> u64 {
        let v = b.iter().map(|&x| x as u64);
        match big_endian {
            true => v.fold(0, |acc, x| acc << 8 | x),
            false => v.rev().fold(0, |acc, x| acc << 8 | x),
        }
    };
    // Classic: 2-byte count, 12-byte entries (tag, type, 4-byte count, 4-byte value).
    // BigTIFF: 8-byte count, 20-byte entries (8-byte count and value).
    let (ifd, count_len, entry_len, value_at) = match uint(&head[2..4]) {
        42 => (uint(&head[4..8]), 2, 12, 8),
        43 => {
            r.read_exact(&mut head[8..16]).ok()?;
            (uint(&head[8..16]), 8, 20, 12)
        }
        _ => return None,
    };
    r.seek(SeekFrom::Start(start + ifd)).ok()?;
    let mut count = [0u8; 8];
    r.read_exact(&mut count[..count_len]).ok()?;
    // No IFD has more entries than tags exist; a wild count is a damaged file.
    let entries = uint(&count[..count_len]).min(4096) as usize;
    let mut e = [0u8; 20];
    for k in 0..entries {
        r.read_exact(&mut e[..entry_len]).ok()?;
        if uint(&e[..2]) != 262 {
            continue;
        }
        let len = match uint(&e[2..4]) {
            3 => 2, // SHORT
            4 => 4, // LONG
            _ => return None,
        };
        if uint(&e[value_at..value_at + len]) != from {
            return None;
        }
        let mut bytes = to.to_le_bytes()[..len].to_vec();
        if big_endian {
            bytes.reverse();
        }
        let at = ifd + (count_len + k * entry_len + value_at) as u64;
        return Some((at, bytes));
    }
    None
}

/// A reader that gives `inner`'s bytes with those from `at` on replaced by `with`.
struct Patched<R> {
    inner: R,
    pos: u64,
    at: u64,
    with: Vec<u8>,
}

impl<R: Read> Read for Patched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (k, &b) in self.with.iter().enumerate() {
            let i = (self.at + k as u64).wrapping_sub(self.pos);
            if i < n as u64 {
                buf[i as usize] = b;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Patched<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn palette4() -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode");
        std::fs::read(dir.join("palette4_tiff.tif")).unwrap()
    }

    /// Sets entry `k` of the first IFD of a big-endian classic TIFF: its count (`count`) or
    /// its value (a LONG, or a SHORT in the value's first two bytes).
    fn set_entry(tiff: &mut [u8], k: usize, count: Option<u32>, value: Option<u32>) {
        let ifd = u32::from_be_bytes(tiff[4..8].try_into().unwrap()) as usize;
        let at = ifd + 2 + 12 * k;
        if let Some(c) = count {
            tiff[at + 4..at + 8].copy_from_slice(&c.to_be_bytes());
        }
        match (value, u16::from_be_bytes([tiff[at + 2], tiff[at + 3]])) {
            (Some(v), 3) => tiff[at + 8..at + 10].copy_from_slice(&(v as u16).to_be_bytes()),
            (Some(v), _) => tiff[at + 8..at + 12].copy_from_slice(&v.to_be_bytes()),
            (None, _) => {}
        }
    }

    fn decode(tiff: &[u8]) -> std::result::Result<RgbImage, String> {
        palette_tiff(std::io::Cursor::new(tiff)).expect("read as a palette TIFF")
    }

    /// Damaged or unusual palette TIFFs are refused, each naming what is wrong; the fixture
    /// itself (pixels checked against cv2 by tests/parity.rs) decodes, and other TIFFs are
    /// not taken for palette ones. The fixture's entries: width, height, bits, compression,
    /// interpretation, strip offsets, samples a pixel, rows a strip, strip bytes, colour map.
    #[test]
    fn palette_tiffs_refused_name_the_problem() {
        let good = palette4();
        assert_eq!(decode(&good).unwrap().dimensions(), (21, 15));
        let refused = |k: usize, count: Option<u32>, value: Option<u32>, why: &str| {
            let mut bad = good.clone();
            set_entry(&mut bad, k, count, value);
            let err = decode(&bad).unwrap_err();
            assert!(err.contains(why), "entry {k}: {err}");
        };
        refused(
            9,
            Some(24),
            None,
            "colour map has 24 entries, not the 3 × 16",
        );
        refused(2, None, Some(16), "16-bit indices");
        refused(6, None, Some(2), "several samples a pixel");
        // 40000 × 40000 (width, height, rows a strip): 4.8 GB of RGB from a 400-byte file.
        let mut huge = good.clone();
        for k in [0, 1, 7] {
            set_entry(&mut huge, k, None, Some(40000));
        }
        let err = decode(&huge).unwrap_err();
        assert!(
            err.contains("40000×40000") && err.contains("512 MiB"),
            "{err}"
        );
        // The strip past the end of the file.
        let mut lost = good.clone();
        set_entry(&mut lost, 5, None, Some(1 << 20));
        assert!(decode(&lost).is_err());
        // Another interpretation (RGB) is not a palette TIFF.
        let mut rgb = good.clone();
        set_entry(&mut rgb, 4, None, Some(2));
        assert!(palette_tiff(std::io::Cursor::new(&rgb)).is_none());
    }

    /// The patched bytes come out wherever the reads split them.
    #[test]
    fn patched_reads_replace_only_their_bytes() {
        let data: Vec<u8> = (0..32).collect();
        for chunk in [1, 3, 7, 32] {
            let mut p = Patched {
                inner: std::io::Cursor::new(&data),
                pos: 0,
                at: 10,
                with: vec![200, 201],
            };
            let mut out = Vec::new();
            let mut buf = vec![0; chunk];
            p.seek(SeekFrom::Start(4)).unwrap();
            loop {
                let n = p.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            let mut want: Vec<u8> = (4..32).collect();
            want[6] = 200;
            want[7] = 201;
            assert_eq!(out, want, "reads of {chunk}");
        }
    }
}
