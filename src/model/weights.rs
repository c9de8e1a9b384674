//! Memory-mapped safetensors, or PyTorch's own `torch.save` files ([`super::pth`]): tensors
//! are converted to f32 one at a time as the network is built, so the file is never copied
//! whole into memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::{Error, Result, Tensor};

/// The classifier heads of a torchvision ResNet and VGG.
const HEADS: [&str; 2] = ["fc", "classifier.6"];

/// The top-level modules of torchvision's VGG and ResNet.
const OWN: [&str; 10] = [
    "conv1",
    "bn1",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
    "fc",
    "features",
    "avgpool",
    "classifier",
];

/// Where a tensor sits: dtype, shape, byte range in the data part, and its strides in
/// elements where it is not contiguous (a view saved by torch.save).
type Entry = (Dtype, Vec<usize>, (usize, usize), Option<Vec<usize>>);

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
    /// Where the data part starts: after a safetensors header; 0 for a PyTorch file, whose
    /// entries give their place in the file.
    data_start: usize,
    /// Where in a PyTorch file the state_dict was, in words, when not at its top level.
    found_under: Option<String>,
    /// name (without any wrapper prefix such as `module.`; see `strip_wrapper_prefix`) → [`Entry`]
    index: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
    /// The tensors [`Weights::get`] has read: a model built from the file must read them all.
    read: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The bytes of f32 tensors [`Weights::get`] may make in all ([`Weights::limit_memory`]),
    /// and how many it has made.
    memory_limit: Option<(u64, String)>,
    converted: std::sync::atomic::AtomicU64,
    /// The input normalisation the caller gives over the file's metadata (`--mean/--std`).
    normalization: Option<crate::image::Normalization>,
}

impl Weights {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // Mapping a folder or a device fails with an obscure OS error; say what it is.
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if !meta.is_file() {
            return Err(Error::Invalid(format!(
                "{}: {}, not a model file (.safetensors, .pth)",
                path.display(),
                if meta.is_dir() {
                    "a folder"
                } else {
                    "not a regular file"
                }
            )));
        }
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
        if super::pth::is_pth(&mmap) {
            return Self::parse_pth(path, mmap);
        }
        let bad = |reason: String| Error::BadSafetensors {
            path: path.clone(),
            reason,
        };
        let (header_len, meta): (usize, Metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| bad(describe(&e, &mmap)))?;
        let mut index = BTreeMap::new();
        for (name, info) in meta.tensors() {
            index.insert(
                name,
                (info.dtype, info.shape.clone(), info.data_offsets, None),
            );
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
        Ok(Self::with_index(
            path,
            mmap,
            8 + header_len,
            None,
            index,
            metadata,
        ))
    }

    /// A `torch.save` file's state_dict ([`super::pth`]).
    fn parse_pth(path: PathBuf, mmap: Bytes) -> Result<Self> {
        let bad = |reason: String| Error::BadPth {
            path: path.clone(),
            reason,
        };
        let sd = super::pth::read(&mmap).map_err(bad)?;
        let index: BTreeMap<String, Entry> = (sd.tensors.into_iter())
            .map(|(k, t)| (k, (t.dtype, t.shape, t.range, t.strides)))
            .collect();
        if index.is_empty() {
            return Err(bad("its state_dict holds no tensors".into()));
        }
        Ok(Self::with_index(
            path,
            mmap,
            0,
            sd.found_under,
            index,
            BTreeMap::new(),
        ))
    }

    /// The weights of either kind of file, named as torchvision names them (wrapper prefixes
    /// dropped, single-layer Sequential heads unwrapped).
    fn with_index(
        path: PathBuf,
        mmap: Bytes,
        data_start: usize,
        found_under: Option<String>,
        index: BTreeMap<String, Entry>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        let mut w = Weights {
            path,
            mmap,
            data_start,
            found_under,
            index,
            metadata,
            read: Default::default(),
            memory_limit: None,
            converted: Default::default(),
            normalization: None,
        };
        w.strip_wrapper_prefix();
        w.unwrap_sequential_heads();
        w
    }

    /// Where in a PyTorch file its state_dict was found, in words, when not at its top level
    /// as a plain dict: "its `state_dict` entry" (a training script's checkpoint), "a pickled
    /// `torchvision.models.resnet.ResNet` module" (`torch.save(model)`).
    pub fn found_under(&self) -> Option<&str> {
        self.found_under.as_deref()
    }

    /// Checkpoints saved from `nn.DataParallel` or from a wrapper module prefix every name with
    /// the wrapper's attribute (`module.`, `model.`, `backbone.`, ... possibly nested); drop
    /// such a prefix while every tensor carries it. A torchvision model's own top-level names
    /// are never dropped: a VGG may hold `features.*` alone.
    fn strip_wrapper_prefix(&mut self) {
        // The prefix: the folders (dot-separated parts) every name shares, up to the first
        // torchvision name among them. It is dropped only if some name then starts with a
        // torchvision name, so a file of other names keeps them and errors quote them as they
        // are.
        let mut names = self.index.keys();
        let Some(first) = names.next() else {
            return;
        };
        // Every part of a name but its last (the parameter) may belong to a prefix.
        let folders = |k: &str| -> Vec<String> {
            let mut p: Vec<String> = k.split('.').map(str::to_string).collect();
            p.pop();
            p
        };
        let mut common = folders(first);
        for k in names {
            let f = folders(k);
            let same = common.iter().zip(&f).take_while(|(a, b)| a == b).count();
            common.truncate(same);
        }
        let keep = common.iter().position(|p| OWN.contains(&p.as_str()));
        common.truncate(keep.unwrap_or(common.len()));
        if common.is_empty() {
            return;
        }
        let cut = common.iter().map(|p| p.len() + 1).sum::<usize>();
        let own = |k: &str| OWN.contains(&k[cut..].split('.').next().unwrap_or(""));
        if self.index.keys().any(|k| own(k)) {
            self.index = std::mem::take(&mut self.index)
                .into_iter()
                .map(|(k, v)| (k[cut..].to_string(), v))
                .collect();
        }
    }

    /// Fine-tuned models often replace the last linear layer by `nn.Sequential(nn.Dropout(p),
    /// nn.Linear(..))`, so `fc.weight` is saved as `fc.1.weight`. Dropout is the identity at
    /// inference, so a head holding exactly one layer with parameters is that layer: rename it
    /// to the plain name. A head with several linear layers is left alone (the activations
    /// between them are not in the file) and reported as a missing tensor.
    fn unwrap_sequential_heads(&mut self) {
        for head in HEADS {
            if self.index.contains_key(&format!("{head}.weight")) {
                continue;
            }
            let inner = format!("{head}.");
            let members: Vec<(String, String)> = self
                .index
                .keys()
                .filter_map(|k| k.strip_prefix(&inner))
                .filter_map(|rest| rest.split_once('.'))
                .map(|(i, param)| (i.to_string(), param.to_string()))
                .collect();
            let Some((only, _)) = members.first().cloned() else {
                continue;
            };
            let single = members
                .iter()
                .all(|(i, param)| *i == only && matches!(param.as_str(), "weight" | "bias"))
                && only.parse::<usize>().is_ok();
            if !single {
                continue;
            }
            for param in ["weight", "bias"] {
                if let Some(e) = self.index.remove(&format!("{inner}{only}.{param}")) {
                    self.index.insert(format!("{head}.{param}"), e);
                }
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

    /// The tensors of torchvision's modules (`layer3.…`, `fc.…`) that no [`Weights::get`]
    /// has read, BatchNorm's step counters aside (they take no part in inference). Tensors
    /// of other modules (a training wrapper's auxiliary head) are not the model's.
    pub fn unread(&self) -> Vec<&str> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        self.names()
            .filter(|n| OWN.contains(&n.split('.').next().unwrap_or("")))
            .filter(|n| !n.ends_with(".num_batches_tracked") && !read.contains(*n))
            .collect()
    }

    /// Second copies of the model the file holds besides the weights read (an EMA's
    /// `ema.layer1.…`, a wrapper's `module.…` beside the plain names): each prefix with the
    /// number of tensors under it that name a tensor read, where that is most of them. Such
    /// copies are not used; a caller may say so.
    pub fn other_copies(&self) -> Vec<(String, usize)> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_prefix: BTreeMap<String, usize> = BTreeMap::new();
        for n in self.names() {
            if OWN.contains(&n.split('.').next().unwrap_or("")) {
                continue;
            }
            // The prefix ends where a torchvision name begins: `ema.` in `ema.layer1.0.…`.
            let at = (n.match_indices('.'))
                .map(|(i, _)| i + 1)
                .find(|&i| read.contains(&n[i..]));
            if let Some(i) = at {
                *by_prefix.entry(n[..i].to_string()).or_default() += 1;
            }
        }
        (by_prefix.into_iter())
            .filter(|&(_, count)| 2 * count > read.len())
            .collect()
    }

    /// Refuse to read more than `bytes` of tensors as f32 in all: a header may declare a
    /// tensor of any size (a sparse file, or a few bytes of a strided view), and the memory
    /// would be taken before the model's shapes could refuse it. Without a limit, a tensor
    /// the allocator cannot give is still refused, not an abort. `whose` names the limit in
    /// messages (`this machine's`).
    pub fn limit_memory(&mut self, bytes: u64, whose: impl Into<String>) {
        self.memory_limit = Some((bytes, whose.into()));
    }

    /// The input normalisation of a model built from these weights: `n`, over the file's
    /// `mean` / `std` metadata, which is then not read (a command line's `--mean/--std`).
    pub fn set_normalization(&mut self, n: crate::image::Normalization) {
        self.normalization = Some(n);
    }

    /// What [`Weights::set_normalization`] gave.
    pub fn normalization(&self) -> Option<crate::image::Normalization> {
        self.normalization
    }

    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|(_, s, _, _)| s.as_slice())
    }

    /// A tensor as f32, with its shape checked against `expected` (None = any size).
    pub fn get(&self, name: &str, expected: &[Option<usize>]) -> Result<Tensor> {
        let Some((dtype, shape, (start, end), strides)) = self.index.get(name) else {
            return Err(self.missing(name));
        };
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        let fits = shape.len() == expected.len()
            && shape
                .iter()
                .zip(expected)
                .all(|(s, e)| e.is_none_or(|e| e == *s));
        if !fits {
            // Sizes the caller leaves open are shown as found, or `*` where the rank differs.
            let same_rank = shape.len() == expected.len();
            let dims: Vec<String> = (expected.iter().enumerate())
                .map(|(i, e)| match (e, same_rank) {
                    (Some(e), _) => e.to_string(),
                    (None, true) => shape[i].to_string(),
                    (None, false) => "*".into(),
                })
                .collect();
            let mut want = format!("[{}]", dims.join(", "));
            if !same_rank {
                want = format!("{} dimensions, {want}", expected.len());
            }
            return Err(Error::BadShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: want,
                found: shape.clone(),
            });
        }
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
            return Err(Error::BadDtype {
                path: self.path.clone(),
                name: name.to_string(),
                dtype: format!("{dtype:?}"),
            });
        }
        // (The element count was checked against the file's bytes when it was opened.)
        let numel: usize = shape.iter().product();
        let need = 4 * numel as u64;
        let before = (self.converted).fetch_add(need, std::sync::atomic::Ordering::Relaxed);
        let too_big = |limit: String| {
            let with = match before {
                0 => String::new(),
                b => format!(
                    ", with the {} of tensors read before it,",
                    crate::memory_amount(b)
                ),
            };
            Error::Invalid(format!(
                "{}: tensor `{name}` (shape {shape:?}) takes {} as f32{with} more than {limit}",
                self.path.display(),
                crate::memory_amount(need),
            ))
        };
        if let Some((limit, whose)) =
            (self.memory_limit.as_ref()).filter(|(l, _)| before.saturating_add(need) > *l)
        {
            return Err(too_big(format!(
                "{whose} {} of memory",
                crate::memory_amount(*limit)
            )));
        }
        let mut data: Vec<f32> = Vec::new();
        let stored = bytes.len() / dtype.size();
        if data.try_reserve_exact(stored).is_err() {
            return Err(too_big("this machine can give".into()));
        }
        match dtype {
            Dtype::F32 => data.extend(
                (bytes.chunks_exact(4)).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Dtype::F16 => data.extend(
                (bytes.chunks_exact(2)).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Dtype::BF16 => data.extend(
                (bytes.chunks_exact(2)).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            // Checkpoints saved after `model.double()`: rounded to f32, as `.float()` would.
            Dtype::F64 => data.extend(bytes.chunks_exact(8).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                f64::from_le_bytes(a) as f32
            })),
            _ => {} // (refused above)
        };
        // A view saved as it was (a transposed weight): its elements in row-major order.
        let data = match strides {
            Some(st) => {
                gather(&data, shape, st).ok_or_else(|| too_big("this machine can give".into()))?
            }
            None => data,
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            // A finite f64 past f32's range became ±inf in the rounding: said as it is.
            let wide = (*dtype == Dtype::F64 && strides.is_none())
                .then(|| f64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes")))
                .filter(|v| v.is_finite());
            let value = match wide {
                Some(v) => format!("{v:e}, beyond f32's range,"),
                None => data[i].to_string(),
            };
            return Err(Error::Invalid(format!(
                "{}: tensor `{name}` holds {value} at flat index {i}: the weights are corrupt \
                 (or training diverged); no explanation can be computed from them",
                self.path.display(),
            )));
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
        let mut hint = format!(
            " (the file has {} tensors, e.g. {})",
            self.index.len(),
            near.join(", ")
        );
        // A head saved as a Sequential: its weight is missing and numbered members are there.
        let head = stem;
        let numbered = |n: &str| {
            n.strip_prefix(head)
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        };
        if HEADS.contains(&head) && name.ends_with(".weight") && self.names().any(numbered) {
            hint += &format!(
                "; `{head}` is a Sequential of several layers with parameters: only a single \
                 linear layer there (alone or after a Dropout) is supported"
            );
        }
        Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
            hint,
        }
    }
}

fn describe(e: &safetensors::SafeTensorError, file: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    let len = file.len();
    if matches!(
        e,
        E::HeaderTooLarge | E::InvalidHeaderLength | E::HeaderTooSmall
    ) {
        if let Some(what) = other_format(file) {
            return what;
        }
    }
    match e {
        // A header that begins as one (`{"`) but runs past the end: the file was cut short.
        E::HeaderTooLarge | E::InvalidHeaderLength
            if file.get(8..10) == Some(b"{\"".as_slice())
                && u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) > len as u64 - 8 =>
        {
            let n = u64::from_le_bytes(file[..8].try_into().expect("8 bytes"));
            format!(
                "the header should be {n} bytes but the file has {} after its length: a \
                 truncated file (an interrupted download or copy?)",
                len - 8
            )
        }
        E::HeaderTooLarge | E::InvalidHeaderLength => {
            "the first 8 bytes do not give a plausible header length (not a safetensors file?)"
                .into()
        }
        E::HeaderTooSmall => format!("the file is {len} bytes, too short for a header"),
        E::InvalidHeaderDeserialization | E::InvalidHeader | E::InvalidHeaderStart => {
            header_problem(file)
                .unwrap_or_else(|| "the header is not valid safetensors JSON".into())
        }
        // safetensors says only that some tensor is wrong; name it.
        E::MetadataIncompleteBuffer
        | E::TensorInvalidInfo
        | E::InvalidOffset(_)
        | E::ValidationOverflow => bad_tensor(file).unwrap_or_else(|| match e {
            E::MetadataIncompleteBuffer => {
                "the data part is shorter or longer than the header says (truncated file?)".into()
            }
            E::InvalidOffset(name) => format!(
                "tensor `{name}`: its data_offsets do not start where the previous tensor's end \
                 (a gap or an overlap)"
            ),
            _ => "a tensor's shape, dtype and data_offsets disagree".into(),
        }),
        other => format!("{other:?}"),
    }
}

/// A strided view's elements in row-major order; `span` holds the elements from its first
/// to its last (`pth::place` checked that the strides stay inside it).
/// None where the allocator cannot give the result.
fn gather(span: &[f32], shape: &[usize], strides: &[usize]) -> Option<Vec<f32>> {
    let n: usize = shape.iter().product();
    let mut out = Vec::new();
    out.try_reserve_exact(n).ok()?;
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        out.push(span[idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>()]);
        // The next index, last dimension fastest.
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Some(out)
}

/// What a file that is no safetensors file is, by its first bytes, when it is one of the
/// formats models are often handed over in (or an image given as the model by mistake).
/// (PyTorch's own files are read: [`super::pth`].)
fn other_format(file: &[u8]) -> Option<String> {
    // (torch.save's own pickles are read: this is another program's.)
    if file.len() > 2 && file[0] == 0x80 && (2..=5).contains(&file[1]) && file.get(8) != Some(&b'{')
    {
        return Some(
            "a Python pickle, not one torch.save wrote (no PyTorch magic number); gradcam \
             reads safetensors and torch.save files of torchvision VGG and ResNet weights"
                .into(),
        );
    }
    if file.starts_with(b"\x1f\x8b") {
        return Some(
            "a gzip-compressed file: decompress it first (`gunzip`), then give the \
             .safetensors or .pth inside"
                .into(),
        );
    }
    if file.starts_with(b"PK\x05\x06") {
        return Some("an empty zip archive, not a model file".into());
    }
    if file.starts_with(b"\x89HDF\r\n\x1a\n") {
        return Some(
            "an HDF5 file (a Keras model?): gradcam reads torchvision VGG and ResNet weights \
             in safetensors"
                .into(),
        );
    }
    let image = file.starts_with(b"\x89PNG\r\n\x1a\n")
        || file.starts_with(b"\xff\xd8\xff")
        || file.starts_with(b"GIF8")
        || file.starts_with(b"BM")
        || (file.len() >= 12 && &file[..4] == b"RIFF" && &file[8..12] == b"WEBP");
    image.then(|| "an image, not a model file (was an image given as --model?)".into())
}

/// The header's JSON bytes (after its 8-byte length), where that length fits in the file.
fn header_bytes(file: &[u8]) -> Option<&[u8]> {
    let n = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    file.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)
}

/// The first name the header's object gives twice. JSON readers keep one of the two entries
/// (safetensors the last), so the other tensor's bytes look like a gap between tensors.
fn duplicate_name(header: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct FirstRepeat;
    impl<'de> Visitor<'de> for FirstRepeat {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut seen, mut repeat) = (std::collections::HashSet::new(), None);
            while let Some(name) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if repeat.is_none() && !seen.insert(name.clone()) {
                    repeat = Some(name);
                }
            }
            Ok(repeat)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(header);
    de.deserialize_map(FirstRepeat).ok().flatten()
}

/// What is wrong with a header safetensors cannot read: not JSON (where), not an object, or
/// the first entry (in the header's order) that is not a tensor's `dtype`, `shape` and
/// `data_offsets`, named; None where none of that is found.
fn header_problem(file: &[u8]) -> Option<String> {
    use serde_json::Value;
    let header = header_bytes(file)?;
    let json: Value = match serde_json::from_slice(header) {
        Ok(v) => v,
        Err(e) => return Some(format!("the header is not valid JSON ({e})")),
    };
    let Some(entries) = json.as_object() else {
        return Some("the header is JSON but not an object of tensors".into());
    };
    let sizes = |v: &Value, n: Option<usize>| {
        v.as_array()
            .is_some_and(|a| n.is_none_or(|n| a.len() == n) && a.iter().all(|d| d.is_u64()))
    };
    for (name, v) in entries {
        if name == "__metadata__" {
            let strings = v
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
            if !strings {
                return Some("`__metadata__` is not a map of names to strings".into());
            }
            continue;
        }
        let tensor = format!("tensor `{name}`");
        let Some(fields) = v.as_object() else {
            return Some(format!("{tensor}: its entry is not an object"));
        };
        match fields.get("dtype") {
            None => return Some(format!("{tensor}: no dtype")),
            Some(d) if serde_json::from_value::<Dtype>(d.clone()).is_err() => {
                return Some(format!(
                    "{tensor}: dtype {d} is not one safetensors knows (F32, F16, BF16, F64, I64, \
                     U8, ...)"
                ))
            }
            _ => {}
        }
        match fields.get("shape") {
            Some(s) if sizes(s, None) => {}
            Some(s) => return Some(format!("{tensor}: shape {s} is not a list of sizes")),
            None => return Some(format!("{tensor}: no shape")),
        }
        match fields.get("data_offsets") {
            Some(o) if sizes(o, Some(2)) => {}
            Some(o) => {
                return Some(format!(
                    "{tensor}: data_offsets {o} are not two byte offsets [begin, end]"
                ))
            }
            None => return Some(format!("{tensor}: no data_offsets")),
        }
    }
    None
}

/// The first tensor whose header entry cannot be right (its shape and dtype need another
/// byte count than its `data_offsets` give, or the offsets leave the file), or a name given
/// twice, described; `None` when every entry is consistent (the fault lies elsewhere, e.g.
/// gaps between tensors).
fn bad_tensor(file: &[u8]) -> Option<String> {
    let header = header_bytes(file)?;
    if let Some(name) = duplicate_name(header) {
        return Some(format!(
            "the header names tensor `{name}` twice (a merged or hand-edited file?)"
        ));
    }
    let data_len = file.len() - 8 - header.len();
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    let mut entries: Vec<_> = json
        .as_object()?
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .collect();
    // Report the tensor that comes first in the file, as a reader would meet it.
    let begin = |v: &serde_json::Value| v["data_offsets"][0].as_u64().unwrap_or(0);
    entries.sort_by_key(|(_, v)| begin(v));
    for (name, v) in entries {
        let dtype = v["dtype"].as_str().unwrap_or("?");
        let Ok(dt) = serde_json::from_value::<Dtype>(v["dtype"].clone()) else {
            continue;
        };
        let shape: Vec<u64> = v["shape"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_u64()).collect())
            .unwrap_or_default();
        let (b, e) = (begin(v), v["data_offsets"][1].as_u64().unwrap_or(0));
        let need = shape
            .iter()
            .try_fold(dt.size() as u64, |acc: u64, &d| acc.checked_mul(d));
        let what = format!("tensor `{name}` ({dtype} {shape:?}, data_offsets [{b}, {e}])");
        match need {
            None => return Some(format!("{what}: its size overflows")),
            Some(_) if e > data_len as u64 => {
                return Some(format!(
                    "{what}: ends past the data part, which is {data_len} bytes (truncated file?)"
                ))
            }
            Some(_) if e < b => return Some(format!("{what}: the offsets run backwards")),
            Some(need) if e - b != need => {
                return Some(format!(
                    "{what}: its shape and dtype need {need} bytes, its offsets give {}",
                    e - b
                ))
            }
            _ => {}
        }
    }
    None
}
