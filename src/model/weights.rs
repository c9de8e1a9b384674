//! Memory-mapped safetensors: tensors are converted to f32 one at a time as the network is
//! built, so the file is never copied whole into memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::{Error, Result, Tensor};

/// Where a tensor sits: dtype, shape, byte range in the data part.
type Entry = (Dtype, Vec<usize>, (usize, usize));

/// Where the file's bytes live: a read-only map of a file, or bytes compiled into the
/// program (the bundled demo model).
enum Bytes {
    Mapped(memmap2::Mmap),
    Static(&'static [u8]),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Static(s) => s,
        }
    }
}

pub struct Weights {
    path: PathBuf,
    mmap: Bytes,
    header_len: usize,
    /// name (without any `module.` style prefix) → (dtype, shape, byte range in the data part)
    index: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

impl Weights {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; a file truncated underneath us would be the user's
        // doing, as with any reader of a memory-mapped file.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Self::parse(path, Bytes::Mapped(mmap))
    }

    /// Weights compiled into the program; `name` stands for the path in messages.
    pub fn from_static(name: impl Into<PathBuf>, bytes: &'static [u8]) -> Result<Self> {
        Self::parse(name.into(), Bytes::Static(bytes))
    }

    fn parse(path: PathBuf, mmap: Bytes) -> Result<Self> {
        let bad = |reason: String| Error::BadSafetensors {
            path: path.clone(),
            reason,
        };
        let (header_len, meta): (usize, Metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| bad(describe(&e, mmap.len())))?;
        let mut index = BTreeMap::new();
        for (name, info) in meta.tensors() {
            index.insert(name, (info.dtype, info.shape.clone(), info.data_offsets));
        }
        if index.is_empty() {
            return Err(bad("it holds no tensors".into()));
        }
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut w = Weights {
            path,
            mmap,
            header_len,
            index,
            metadata,
        };
        w.strip_wrapper_prefix();
        Ok(w)
    }

    /// Checkpoints saved from `nn.DataParallel` or a wrapper module prefix every name with
    /// `module.` or `model.`; drop it when every tensor carries it.
    fn strip_wrapper_prefix(&mut self) {
        for prefix in ["module.", "model."] {
            if self.index.keys().all(|k| k.starts_with(prefix)) {
                self.index = std::mem::take(&mut self.index)
                    .into_iter()
                    .map(|(k, v)| (k[prefix.len()..].to_string(), v))
                    .collect();
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|(_, s, _)| s.as_slice())
    }

    /// A tensor as f32, with its shape checked against `expected` (None = any size).
    pub fn get(&self, name: &str, expected: &[Option<usize>]) -> Result<Tensor> {
        let Some((dtype, shape, (start, end))) = self.index.get(name) else {
            return Err(self.missing(name));
        };
        let fits = shape.len() == expected.len()
            && shape
                .iter()
                .zip(expected)
                .all(|(s, e)| e.is_none_or(|e| e == *s));
        if !fits {
            return Err(Error::BadShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected
                    .iter()
                    .zip(shape.iter().chain(std::iter::repeat(&0)))
                    .map(|(e, s)| e.unwrap_or(*s))
                    .collect(),
                found: shape.clone(),
            });
        }
        let bytes = &self.mmap[8 + self.header_len + start..8 + self.header_len + end];
        let data: Vec<f32> = match dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::BadDtype {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::BadSafetensors {
                path: self.path.clone(),
                reason: format!("tensor `{name}` holds a non-finite value at flat index {i}"),
            });
        }
        Ok(Tensor::new(shape.clone(), data))
    }

    fn missing(&self, name: &str) -> Error {
        // Point at the neighbours: names that share the longest prefix with the one we wanted.
        let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
        let mut near: Vec<&str> = self
            .names()
            .filter(|n| n.starts_with(stem.rsplit_once('.').map_or(stem, |(s, _)| s)))
            .take(6)
            .collect();
        if near.is_empty() {
            near = self.names().take(6).collect();
        }
        Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
            hint: format!(
                " (the file has {} tensors, e.g. {})",
                self.index.len(),
                near.join(", ")
            ),
        }
    }
}

fn describe(e: &safetensors::SafeTensorError, len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooLarge => {
            "the first 8 bytes do not give a plausible header length (not a safetensors file?)"
                .into()
        }
        E::HeaderTooSmall => format!("the file is {len} bytes, too short for a header"),
        E::MetadataIncompleteBuffer => {
            "the data part is shorter or longer than the header says (truncated file?)".into()
        }
        E::InvalidHeaderDeserialization | E::InvalidHeader | E::InvalidHeaderStart => {
            "the header is not valid safetensors JSON".into()
        }
        other => format!("{other:?}"),
    }
}
