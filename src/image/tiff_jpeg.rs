//! JPEG-compressed TIFFs (compression 7), decoded strip by strip (or tile by tile) by
//! libjpeg, as libtiff decodes them under `cv2.imread`, so their pixels are cv2's bit for
//! bit (the `tiff` crate's own JPEG decoder rounds otherwise: one level at some pixels).
//!
//! Each strip is a JPEG of its own, its tables often kept once in the JPEGTables tag; the
//! strip is decoded with them, in the colour space the TIFF's tags give (libtiff tells
//! libjpeg so, whatever the stream's markers say): YCbCr converted to RGB, RGB kept as it is,
//! gray replicated.

use std::io::{Read, Seek, SeekFrom};

use tiff::decoder::ChunkType;
use tiff::tags::Tag;

use super::tiff_kinds::{limited, orientation, tag_u16, too_large, upright, Decoded};

/// The TIFF's pixels where it is an 8-bit JPEG-compressed gray, RGB or YCbCr image of
/// interleaved samples; None for any other TIFF (left to the `tiff` crate).
pub(super) fn jpeg_tiff<R: Read + Seek>(mut source: R) -> Decoded {
    let start = source.stream_position().ok()?;
    let (mut d, max_mib) = limited(&mut source)?;
    if tag_u16(&mut d, Tag::Compression) != Some(7)
        || tag_u16(&mut d, Tag::PlanarConfiguration).unwrap_or(1) != 1
        || d.find_tag_unsigned_vec::<u16>(Tag::BitsPerSample)
            .ok()??
            .iter()
            .any(|&b| b != 8)
    {
        return None;
    }
    let samples = tag_u16(&mut d, Tag::SamplesPerPixel).unwrap_or(1);
    // The colour space libjpeg is told: Adobe's transform 0 (RGB) or 1 (YCbCr); none for gray.
    let transform = match (tag_u16(&mut d, Tag::PhotometricInterpretation)?, samples) {
        (1, 1) => None,
        (2, 3) => Some(0),
        (6, 3) => Some(1),
        _ => return None,
    };
    let (w, h) = match d.dimensions() {
        Ok(wh) => wh,
        Err(e) => return Some(Err(e.to_string())),
    };
    if w == 0 || h == 0 {
        return Some(Err(format!("a {w}×{h} JPEG-compressed TIFF")));
    }
    if (w as u64 * h as u64 * 3) >> 20 >= max_mib as u64 {
        return Some(Err(too_large((w, h), max_mib)));
    }
    let (offsets, counts) = match d.get_chunk_type() {
        ChunkType::Strip => (Tag::StripOffsets, Tag::StripByteCounts),
        ChunkType::Tile => (Tag::TileOffsets, Tag::TileByteCounts),
    };
    let (cw, ch) = d.chunk_dimensions();
    let chunks = match (d.get_tag_u64_vec(offsets), d.get_tag_u64_vec(counts)) {
        (Ok(o), Ok(c)) if o.len() == c.len() => o.into_iter().zip(c).collect::<Vec<_>>(),
        _ => {
            return Some(Err(
                "a JPEG-compressed TIFF without its strips' (or tiles') offsets and sizes".into(),
            ))
        }
    };
    let tables = d.get_tag_u8_vec(Tag::JPEGTables).ok();
    let turn = orientation(&mut d);
    drop(d);
    let (cw, ch) = (cw.max(1) as usize, ch.max(1) as usize);
    let (w, h) = (w as usize, h as usize);
    let across = w.div_ceil(cw);
    let wanted = across * h.div_ceil(ch);
    if chunks.len() < wanted {
        return Some(Err(format!(
            "a JPEG-compressed TIFF of {} strips or tiles where its size needs {wanted}",
            chunks.len()
        )));
    }
    let mut px = vec![0u8; w * h * 3];
    for (i, &(at, len)) in chunks[..wanted].iter().enumerate() {
        // (A strip is read whole, as a JPEG file is: no larger than one.)
        if len > super::MAX_WHOLE_BYTES {
            return Some(Err(format!(
                "a JPEG-compressed TIFF whose strip or tile {} says it takes {} MiB, more \
                 than any JPEG of pixels that fit the {max_mib} MiB allowed for one image",
                i + 1,
                len >> 20
            )));
        }
        let mut data = Vec::new();
        let read = source
            .seek(SeekFrom::Start(start.saturating_add(at)))
            .and_then(|_| (&mut source).take(len).read_to_end(&mut data));
        if read.is_err() || (data.len() as u64) < len {
            return Some(Err(format!(
                "a JPEG-compressed TIFF cut short: its strip or tile {} ({len} bytes at {at}) \
                 is not all in the file",
                i + 1
            )));
        }
        let jpeg = stream(tables.as_deref(), &data, transform);
        let part = match super::decode_jpeg(&jpeg) {
            Ok(p) => p,
            Err(e) => return Some(Err(format!("strip or tile {} of a TIFF: {e}", i + 1))),
        };
        // The chunk's place; the last row and column of chunks reach past the image.
        let (x0, y0) = ((i % across) * cw, (i / across) * ch);
        let (pw, ph) = (cw.min(w - x0), ch.min(h - y0));
        if (part.width() as usize) < pw || (part.height() as usize) < ph {
            return Some(Err(format!(
                "a JPEG-compressed TIFF whose strip or tile {} is {}×{}, smaller than the \
                 {pw}×{ph} its tags say",
                i + 1,
                part.width(),
                part.height()
            )));
        }
        let row = part.width() as usize * 3;
        for y in 0..ph {
            let from = &part.as_raw()[y * row..y * row + pw * 3];
            let to = ((y0 + y) * w + x0) * 3;
            px[to..to + pw * 3].copy_from_slice(from);
        }
    }
    Some(upright((w as u32, h as u32), px, turn))
}

/// One strip's whole JPEG: SOI, an Adobe marker naming the colour space `transform` where
/// there is one (any JFIF or Adobe marker of the file's dropped: libtiff's colour space
/// stands over them), the JPEGTables' segments, then the strip's own, from after its SOI.
fn stream(tables: Option<&[u8]>, strip: &[u8], transform: Option<u8>) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    if let Some(t) = transform {
        out.extend_from_slice(&[0xFF, 0xEE, 0, 14]);
        out.extend_from_slice(b"Adobe");
        out.extend_from_slice(&[0, 100, 0, 0, 0, 0, t]);
    }
    let keep = |m: u8| transform.is_none() || !matches!(m, 0xE0 | 0xEE);
    if let Some(t) = tables {
        // (Tables: SOI, segments, EOI.)
        let t = t.strip_prefix(&[0xFF, 0xD8]).unwrap_or(t);
        let t = t.strip_suffix(&[0xFF, 0xD9]).unwrap_or(t);
        segments(t, &keep, &mut out);
    }
    segments(
        strip.strip_prefix(&[0xFF, 0xD8]).unwrap_or(strip),
        &keep,
        &mut out,
    );
    out
}

/// Copies the marker segments of `b` (a JPEG after its SOI) whose marker `keep` takes; from
/// the first scan (SOS) on, everything, as it is.
fn segments(b: &[u8], keep: &dyn Fn(u8) -> bool, out: &mut Vec<u8>) {
    let mut i = 0;
    while i + 4 <= b.len() && b[i] == 0xFF {
        let m = b[i + 1];
        if m == 0xDA || m == 0xD9 {
            break;
        }
        if m == 0xFF {
            i += 1; // (a fill byte)
            continue;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        let end = (i + 2 + len).min(b.len());
        if keep(m) {
            out.extend_from_slice(&b[i..end]);
        }
        i = end;
    }
    out.extend_from_slice(&b[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// Where tag `tag`'s values lie in a little-endian classic TIFF (in the entry, or where
    /// it points when they take more than 4 bytes).
    fn values_at(tiff: &[u8], tag: u16) -> usize {
        let u32_at = |i: usize| u32::from_le_bytes(tiff[i..i + 4].try_into().unwrap()) as usize;
        let ifd = u32_at(4);
        let n = u16::from_le_bytes([tiff[ifd], tiff[ifd + 1]]) as usize;
        let e = (0..n)
            .map(|k| ifd + 2 + 12 * k)
            .find(|&e| u16::from_le_bytes([tiff[e], tiff[e + 1]]) == tag)
            .unwrap();
        let size = match u16::from_le_bytes([tiff[e + 2], tiff[e + 3]]) {
            3 => 2,
            _ => 4,
        };
        match u32_at(e + 4) * size > 4 {
            true => u32_at(e + 8),
            false => e + 8,
        }
    }

    /// As any file is decoded (the `tiff` crate refuses some damage before this file's code
    /// sees it).
    fn decode(tiff: &[u8]) -> std::result::Result<image::RgbImage, String> {
        crate::image::decode_rgb8(tiff)
    }

    /// Damaged JPEG-compressed TIFFs (ycbcr_strips_jpeg_tiff.tif: 45×37, strips of 16 rows,
    /// the last of 5, each a whole JPEG; its pixels checked against cv2 by tests/parity.rs)
    /// are refused naming what is wrong; other TIFFs are not taken for them.
    #[test]
    fn damaged_jpeg_tiffs_name_the_problem() {
        let good = fixture("ycbcr_strips_jpeg_tiff.tif");
        assert_eq!(decode(&good).unwrap().dimensions(), (45, 37));
        let refused = |patch: &dyn Fn(&mut Vec<u8>), why: &str| {
            let mut bad = good.clone();
            patch(&mut bad);
            let err = decode(&bad).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        };
        let set = |t: &mut Vec<u8>, tag: u16, k: usize, v: u32| {
            let at = values_at(t, tag) + 4 * k;
            t[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };
        // The last strip's size past the end of the file, or past any JPEG's.
        refused(
            &|t| set(t, 279, 2, 1 << 20),
            "cut short: its strip or tile 3",
        );
        refused(
            &|t| set(t, 279, 2, u32::MAX),
            "strip or tile 3 says it takes 4095 MiB",
        );
        // The second strip's bytes wiped: libjpeg's complaint, naming the strip.
        refused(
            &|t| {
                let (at, len) = (values_at(t, 273) + 4, values_at(t, 279) + 4);
                let at = u32::from_le_bytes(t[at..at + 4].try_into().unwrap()) as usize;
                let len = u32::from_le_bytes(t[len..len + 4].try_into().unwrap()) as usize;
                t[at..at + len].fill(0);
            },
            "strip or tile 2 of a TIFF",
        );
        // Rows per strip said to be 8: five strips needed, three there (the `tiff` crate's
        // header check says so first).
        refused(&|t| set(t, 278, 0, 8), "inconsistent sizes");
        // Wider than its strips.
        refused(&|t| set(t, 256, 0, 60), "is 45×16, smaller than the 60×16");
        // 40000 × 40000 in three strips: 4.8 GB of RGB from a 2.5 kB file.
        refused(
            &|t| {
                set(t, 256, 0, 40000);
                set(t, 257, 0, 40000);
                set(t, 278, 0, 13334);
            },
            "40000×40000",
        );
        // Not JPEG-compressed: left to the `tiff` crate.
        let plain = fixture("graya8_tiff.tif");
        assert!(jpeg_tiff(std::io::Cursor::new(&plain)).is_none());
    }

    /// Segments are copied but for those refused, and the scan onwards as it is; the Adobe
    /// marker names the colour space; tables lose their SOI and EOI.
    #[test]
    fn strips_become_whole_jpegs() {
        let app0 = [0xFF, 0xE0, 0, 4, 1, 2];
        let dqt = [0xFF, 0xDB, 0, 3, 9];
        let sos = [0xFF, 0xDA, 0, 2, 7, 7, 0xFF, 0, 0xFF, 0xD9];
        let strip = [&[0xFF, 0xD8][..], &app0, &dqt, &sos].concat();
        let tables = [&[0xFF, 0xD8][..], &[0xFF, 0xC4, 0, 3, 5], &[0xFF, 0xD9]].concat();
        let gray = stream(Some(&tables), &strip, None);
        let want = [&[0xFF, 0xD8][..], &[0xFF, 0xC4, 0, 3, 5], &app0, &dqt, &sos].concat();
        assert_eq!(gray, want);
        let rgb = stream(None, &strip, Some(0));
        let adobe = [
            0xFF, 0xEE, 0, 14, b'A', b'd', b'o', b'b', b'e', 0, 100, 0, 0, 0, 0, 0,
        ];
        assert_eq!(rgb, [&[0xFF, 0xD8][..], &adobe, &dqt, &sos].concat());
    }
}
