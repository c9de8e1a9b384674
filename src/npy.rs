//! A minimal `.npy` (format 1.0) writer for little-endian float32 arrays.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// `data` as an array of `shape` (which must hold exactly its values) in `path`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    if shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(data.len()) {
        return Err(Error::Invalid(format!(
            "{}: a shape of {shape:?} for {} values",
            path.display(),
            data.len()
        )));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut buf = Vec::with_capacity(10 + header.len() + data.len() * 4);
    buf.extend_from_slice(b"\x93NUMPY\x01\x00");
    buf.extend_from_slice(&(header.len() as u16).to_le_bytes());
    buf.extend_from_slice(header.as_bytes());
    for v in data {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&buf).map_err(|e| Error::io(path, e))
}

/// Reads back what [`write_f32`] writes (tests, tools).
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (shape, at) = parse_header(&bytes).ok_or_else(|| not_npy(path))?;
    let data: Vec<f32> = bytes[at..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if Some(bytes.len()) != data_end(&shape, at) {
        return Err(not_npy(path));
    }
    Ok((shape, data))
}

/// Whether `path` is a whole float32 `.npy` file, from its header and length alone (what
/// `explain --resume` checks of each map it keeps, without reading a million of them).
pub fn is_whole_f32(path: &Path) -> bool {
    whole_f32_shape(path).is_some()
}

/// The shape of a whole float32 `.npy` file (see [`is_whole_f32`]), from its header.
pub fn whole_f32_shape(path: &Path) -> Option<Vec<usize>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = vec![0u8; 10];
    f.read_exact(&mut head).ok()?;
    let hlen = u16::from_le_bytes([head[8], head[9]]) as usize;
    head.resize(10 + hlen, 0);
    let len = f.metadata().map_or(0, |m| m.len() as usize);
    f.read_exact(&mut head[10..]).ok()?;
    let (shape, at) = parse_header(&head)?;
    (data_end(&shape, at) == Some(len)).then_some(shape)
}

/// Where a float32 array of `shape` starting at `at` ends; None past usize (a made-up header).
fn data_end(shape: &[usize], at: usize) -> Option<usize> {
    (shape.iter())
        .try_fold(4usize, |bytes, &d| bytes.checked_mul(d))?
        .checked_add(at)
}

fn not_npy(path: &Path) -> Error {
    Error::Invalid(format!(
        "{}: not a float32 .npy file in row-major (C) order",
        path.display()
    ))
}

/// The shape and where the data start, from a float32 `.npy` file's first bytes.
fn parse_header(bytes: &[u8]) -> Option<(Vec<usize>, usize)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return None;
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(bytes.get(10..10 + hlen)?).ok()?;
    // (numpy writes `'fortran_order': True` for a transposed array saved as it lies: its
    // elements in another order, which the readers here would take for row-major.)
    if !header.contains("'<f4'") || !header.contains("'fortran_order': False") {
        return None;
    }
    let inner = header.split("'shape': (").nth(1)?.split(')').next()?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect::<Option<Vec<usize>>>()?;
    Some((shape, 10 + hlen))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `write_f32` writes reads back and counts as whole; cut short, grown, or another
    /// kind of file, it does not.
    #[test]
    fn written_files_read_back_and_damaged_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let data: Vec<f32> = (0..35).map(|i| i as f32 * 0.5).collect();
        write_f32(&p, &[5, 7], &data).unwrap();
        assert_eq!(read_f32(&p).unwrap(), (vec![5, 7], data));
        assert!(is_whole_f32(&p));
        let bytes = std::fs::read(&p).unwrap();
        for damaged in [
            bytes[..bytes.len() - 4].to_vec(),
            [bytes.as_slice(), &[0; 4]].concat(),
            bytes[..9].to_vec(),
            b"\x89PNG\r\n\x1a\n and more".to_vec(),
            // (The same bytes said to be column-major: another array.)
            {
                let mut b = bytes.clone();
                let at = (b.windows(5).position(|w| w == b"False")).unwrap();
                b[at..at + 5].copy_from_slice(b"True ");
                b
            },
        ] {
            std::fs::write(&p, &damaged).unwrap();
            assert!(!is_whole_f32(&p), "{} bytes", damaged.len());
            assert!(read_f32(&p).is_err(), "{} bytes", damaged.len());
        }
        assert!(!is_whole_f32(&dir.path().join("none.npy")));
        // A header whose shape overflows a usize is not whole either (and does not panic).
        let huge = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, 8), }}\n",
            usize::MAX / 2
        );
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(huge.len() as u16).to_le_bytes());
        bytes.extend_from_slice(huge.as_bytes());
        std::fs::write(&p, &bytes).unwrap();
        assert!(!is_whole_f32(&p));
        assert!(read_f32(&p).is_err());
    }
}
