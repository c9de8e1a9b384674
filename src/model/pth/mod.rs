//! PyTorch's own checkpoint files (`torch.save`: .pth, .pt), read without Python: the zip
//! format of PyTorch 1.6 and later (a pickle, `data.pkl`, whose tensors point at stored,
//! uncompressed entries `data/<key>`) and the legacy format before it (five pickles in a row,
//! then each storage's element count and bytes), which torchvision's older downloads use.
//!
//! Only what a state_dict needs is understood: the pickle opcodes of protocols 2 to 5 that
//! build data (dicts, lists, tuples, numbers, strings), `OrderedDict`, and torch's tensor
//! and parameter rebuilders. Any other class stays an opaque value with the state its pickle
//! recorded (a pickled `nn.Module`'s `_parameters`, `_buffers` and `_modules`, from which
//! its state_dict is rebuilt) and is never called, so unlike `torch.load` (before
//! `weights_only`) a file can run no code. The tensors become
//! entries of the file's bytes, mapped as safetensors' are: nothing is copied at load.

mod pickle;
mod zip;

use std::collections::{BTreeMap, HashMap};

use safetensors::Dtype;

use pickle::{Pickle, TensorRef, V};

/// A tensor in the file: dtype, shape, byte range of the elements it spans, and its strides
/// (elements) where it is not contiguous.
pub struct PthTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub range: (usize, usize),
    pub strides: Option<Vec<usize>>,
}

/// The state_dict a file holds, and where in the file it was found, in words, when that was
/// not its top level (`its `state_dict` entry`, `a pickled `…ResNet` module`).
pub struct StateDict {
    pub tensors: BTreeMap<String, PthTensor>,
    pub found_under: Option<String>,
}

/// The legacy format's first pickle after its PROTO opcode: LONG1 of 10 bytes, torch's
/// magic number 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: [u8; 12] = [
    0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// Whether the bytes start as a PyTorch file: a zip archive, or the legacy format's magic
/// number. (Not any pickle: a safetensors header of 640 bytes starts `80 02` too.)
/// (A zip's byte 8 is its first entry's compression method, never the `{` that opens a
/// safetensors header; protocols 4 and 5 put a FRAME before the magic number.)
pub fn is_pth(file: &[u8]) -> bool {
    let magic_at = |i: usize| file.get(i..i + 12) == Some(&LEGACY_MAGIC[..]);
    (file.starts_with(b"PK\x03\x04") && file.get(8) != Some(&b'{'))
        || (file.first() == Some(&0x80)
            && (magic_at(2) || (file.get(2) == Some(&0x95) && magic_at(11))))
}

/// The state_dict of a `torch.save` file; Err says what is wrong with it.
pub fn read(file: &[u8]) -> Result<StateDict, String> {
    let (top, mut p, storages) = match file.starts_with(b"PK\x03\x04") {
        true => read_zip(file)?,
        false => read_legacy(file)?,
    };
    let (dict, found_under) = state_dict_of(&mut p, &top)?;
    let mut tensors = BTreeMap::new();
    for (k, v) in std::mem::take(&mut p.dicts[dict]) {
        if let (V::Str(name), V::Object(o)) = (&k, &v) {
            let class = p.class_of(*o);
            if let Some(how) = class.strip_prefix("torch._utils._rebuild_") {
                return Err(format!(
                    "tensor `{name}` is rebuilt by torch's `_rebuild_{how}` (a sparse, \
                     quantized, meta or subclass tensor), which this reader does not read; \
                     save it as a plain dense tensor"
                ));
            }
        }
        let (V::Str(name), V::Tensor(t)) = (k, v) else {
            continue;
        };
        let at = storages.get(&t.key).ok_or_else(|| {
            format!(
                "tensor `{name}`: its storage `{}` is not in the file",
                t.key
            )
        })?;
        tensors.insert(name.to_string(), place(&name, &t, *at)?);
    }
    Ok(StateDict {
        tensors,
        found_under,
    })
}

/// A tensor's byte range within its storage's bytes `(start, len)`, checked.
fn place(name: &str, t: &TensorRef, (start, len): (usize, usize)) -> Result<PthTensor, String> {
    let es = t.dtype.size();
    let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    // The last element reached: Σ (size − 1) · stride, past the offset.
    let span = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(0usize, |a, (&d, &s)| {
            a.checked_add(d.saturating_sub(1).checked_mul(s)?)
        });
    let elems = match (numel, span) {
        (Some(0), Some(_)) => Some(0),
        (Some(_), Some(span)) => span.checked_add(1),
        _ => None,
    };
    // (The products below stay far from overflow once the bytes fit in the storage, which
    // is checked before the repeat limit.)
    let (Some(numel), Some(elems)) = (numel, elems) else {
        return Err(format!("tensor `{name}`: its size overflows"));
    };
    let begin = (t.offset.checked_mul(es)).filter(|&b| b <= len);
    let end = begin
        .and_then(|b| b.checked_add(elems.checked_mul(es)?))
        .filter(|&e| e <= len);
    let (Some(begin), Some(end)) = (begin, end) else {
        return Err(format!(
            "tensor `{name}` (shape {:?}, offset {}) reaches past its storage of {} bytes",
            t.shape, t.offset, len
        ));
    };
    // An expanded view (stride 0) repeats stored elements: a few bytes could stand for more
    // than memory holds. Up to 16 times what is stored is read; more is refused.
    if numel > 16 * elems + (1 << 20) {
        return Err(format!(
            "tensor `{name}` (shape {:?}) repeats {elems} stored elements {numel} times over \
             (an expanded view); save it with .contiguous()",
            t.shape
        ));
    }
    // (numel fits, and with no zero dimension so does every suffix product; with one,
    // the wrapping products belong to an empty tensor whose strides are never used.)
    let mut contiguous = vec![1usize; t.shape.len()];
    for i in (0..t.shape.len().saturating_sub(1)).rev() {
        contiguous[i] = contiguous[i + 1].wrapping_mul(t.shape[i + 1]);
    }
    // (A dimension of size 1 may have any stride.)
    let plain =
        (t.shape.iter().zip(&t.stride).zip(&contiguous)).all(|((&d, &s), &c)| d <= 1 || s == c);
    Ok(PthTensor {
        dtype: t.dtype,
        shape: t.shape.clone(),
        range: (start + begin, start + end),
        strides: (!plain && numel > 0).then(|| t.stride.clone()),
    })
}

/// The dict of tensors: the top level, or the one entry of a checkpoint that is such a dict
/// (by name first: `state_dict`, `model_state_dict`, `model`, ...; else the top level where
/// it holds tensors itself, as many as any entry); a pickled module (`torch.save(model)`)
/// stands for its state_dict. With it, where it was found, in words, when not at the top
/// level as a plain dict.
fn state_dict_of(p: &mut Pickle, top: &V) -> Result<(usize, Option<String>), String> {
    let module = |p: &Pickle, v: &V| match v {
        V::Object(o) => Some(format!("a pickled `{}` module", p.class_of(*o))),
        _ => None,
    };
    // (One budget for every module walked: a crafted pickle could list one module, or a
    // module holding itself, many times over. 16 MB of names at 64 bytes' overhead each is
    // at most 256 Ki tensors, about 50 MB; ResNet-152's state_dict costs 0.1 MB.)
    let mut budget = 16usize << 20;
    let V::Dict(d) = top else {
        if let Some(d) = tensors_in(p, top, &mut budget) {
            return Ok((d, module(p, top)));
        }
        return Err(match top {
            V::Object(o) => format!(
                "it holds a pickled `{}` object without tensors, not a state_dict",
                p.class_of(*o)
            ),
            V::List(_) | V::Tuple(_) => {
                "it holds a list or tuple, not a dict of tensors (a state_dict)".into()
            }
            _ => "it holds no dict of tensors (a state_dict)".into(),
        });
    };
    let entries = p.dicts[*d].clone();
    let own = entries
        .iter()
        .filter(|(_, v)| matches!(v, V::Tensor(_)))
        .count();
    let mut inner: Vec<(String, usize, Option<String>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (k, v) in &entries {
        // (Each dict or module once: many entries may name the same one.)
        let id = match v {
            V::Dict(i) => (0, *i),
            V::Object(i) => (1, *i),
            _ => continue,
        };
        if let V::Str(k) = k {
            if !seen.insert(id) {
                continue;
            }
            if let Some(i) = tensors_in(p, v, &mut budget) {
                inner.push((k.to_string(), i, module(p, v)));
            }
        }
    }
    let most = inner
        .iter()
        .map(|(_, i, _)| p.dicts[*i].len())
        .max()
        .unwrap_or(0);
    const NAMES: [&str; 6] = [
        "state_dict",
        "model_state_dict",
        "model",
        "net",
        "network",
        "module",
    ];
    let named = (NAMES.iter()).find_map(|n| inner.iter().find(|(k, _, _)| k == n));
    if named.is_none() && own > 0 && own >= most {
        return Ok((*d, None));
    }
    let chosen = named.or(match inner.len() {
        1 => inner.first(),
        _ => None,
    });
    match chosen {
        Some((k, i, m)) => Ok((
            *i,
            Some(match m {
                Some(m) => format!("its `{k}` entry, {m}"),
                None => format!("its `{k}` entry"),
            }),
        )),
        None if inner.is_empty() => {
            let keys: Vec<String> = (entries.iter())
                .take(12)
                .map(|(k, _)| match k {
                    V::Str(s) => format!("`{s}`"),
                    _ => "a key that is not a string".to_string(),
                })
                .collect();
            Err(format!(
                "it holds a dict without tensors (keys {}), not a state_dict",
                keys.join(", ")
            ))
        }
        None => Err(format!(
            "it holds several dicts of tensors ({}) and none is named `state_dict` or \
             `model`; save the one to explain on its own",
            (inner.iter().map(|(k, _, _)| format!("`{k}`")))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The dict of tensors `v` is (a dict holding a tensor), or makes (a pickled module: its
/// parameters and buffers under their state_dict names, as a new dict).
fn tensors_in(p: &mut Pickle, v: &V, budget: &mut usize) -> Option<usize> {
    match v {
        V::Dict(d) if p.dicts[*d].iter().any(|(_, v)| matches!(v, V::Tensor(_))) => Some(*d),
        V::Object(o) => {
            let mut out = Vec::new();
            module_tensors(p, *o, "", &mut out, budget);
            if out.is_empty() {
                return None;
            }
            p.dicts.push(out);
            Some(p.dicts.len() - 1)
        }
        _ => None,
    }
}

/// What one module or tensor costs [`module_tensors`]' budget besides its name: about the
/// bytes an entry of its dict takes, so the budget bounds memory, not only names.
const ENTRY: usize = 64;

/// An `nn.Module`'s tensors from the state its pickle built: `_parameters` and `_buffers`
/// under `prefix`, then each of `_modules` under `prefix` + its name + `.`, as
/// `state_dict()` names them (`layer1.0.conv1.weight`). A parameter that is None (no bias)
/// is left out. Each module and tensor costs the budget its name's length and [`ENTRY`].
fn module_tensors(p: &Pickle, o: usize, prefix: &str, out: &mut Vec<(V, V)>, budget: &mut usize) {
    let Some(V::Dict(state)) = &p.objects[o].1 else {
        return;
    };
    // (torchvision's deepest module path is 4 deep; 64 keeps a self-nesting module's
    // recursion off the end of the stack.)
    if *budget <= ENTRY + prefix.len() || prefix.matches('.').count() > 64 {
        *budget = 0;
        return;
    }
    *budget -= ENTRY + prefix.len();
    for (k, v) in &p.dicts[*state] {
        let (V::Str(k), V::Dict(members)) = (k, v) else {
            continue;
        };
        for (name, m) in &p.dicts[*members] {
            match (&**k, name, m) {
                ("_parameters" | "_buffers", V::Str(n), V::Tensor(_)) => {
                    let cost = ENTRY + prefix.len() + n.len();
                    if *budget < cost {
                        *budget = 0;
                        return;
                    }
                    *budget -= cost;
                    out.push((V::Str(format!("{prefix}{n}").into()), m.clone()))
                }
                ("_modules", V::Str(n), V::Object(c)) => {
                    module_tensors(p, *c, &format!("{prefix}{n}."), out, budget)
                }
                _ => {}
            }
        }
    }
}

/// Storage key → (start, length) of its bytes in the file.
type Storages = HashMap<String, (usize, usize)>;

fn read_zip(file: &[u8]) -> Result<(V, Pickle, Storages), String> {
    let entries = zip::stored_entries(file)?;
    let pkls: Vec<&String> = (entries.keys())
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1 || *n == "data.pkl")
        .collect();
    let pkl = match pkls[..] {
        [one] => one.clone(),
        [] => return Err("a zip archive without data.pkl: not a file torch.save wrote".into()),
        _ => {
            return Err(format!(
                "a zip archive of {} saves (data.pkl files), not one",
                pkls.len()
            ))
        }
    };
    let archive = &pkl[..pkl.len() - "data.pkl".len()];
    if let Some(&(at, len)) = entries.get(&format!("{archive}byteorder")) {
        if &file[at..at + len] != b"little" {
            return Err(
                "its tensors are stored big-endian; re-save it on a little-endian machine".into(),
            );
        }
    }
    let (at, len) = entries[&pkl];
    let mut p = Pickle::default();
    let (top, _) = p.run(&file[at..at + len])?;
    let data = format!("{archive}data/");
    let storages = (entries.iter())
        .filter_map(|(n, &e)| Some((n.strip_prefix(&data)?.to_string(), e)))
        .collect();
    Ok((top, p, storages))
}

/// torch's legacy format: pickles of a magic number, a protocol version and the system's
/// sizes, then the object, then the list of storage keys; then, per key in that order, its
/// element count (8 bytes, little-endian) and its bytes.
fn read_legacy(file: &[u8]) -> Result<(V, Pickle, Storages), String> {
    let mut p = Pickle::default();
    let mut at = 0;
    let mut next = |p: &mut Pickle| -> Result<V, String> {
        let (v, n) = p.run(&file[at..])?;
        at += n;
        Ok(v)
    };
    // (The magic number is past i64: the pickle gives its bytes.)
    match next(&mut p)? {
        V::BigInt(b) if *b == LEGACY_MAGIC[2..] => {}
        _ => return Err("a pickle that is not a torch.save file (no PyTorch magic number)".into()),
    }
    let _version = next(&mut p)?;
    let _sys = next(&mut p)?;
    let top = next(&mut p)?;
    let keys = match next(&mut p)? {
        V::List(l) => p.lists[l].clone(),
        _ => return Err("the list of storages after the object is missing".into()),
    };
    let mut storages = HashMap::new();
    for k in keys {
        let V::Str(k) = k else {
            return Err("a storage key that is not a string".into());
        };
        let dtype = *p
            .storage_dtypes
            .get(&*k)
            .ok_or_else(|| format!("storage `{k}` is listed but no tensor names it"))?;
        let count = file
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or("the file ends before its storages: cut short")?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(dtype.size()))
            .filter(|&l| l <= file.len() - at - 8)
            .ok_or_else(|| {
                format!("storage `{k}`: {count} elements run past the end of the file (cut short?)")
            })?;
        storages.insert(k.to_string(), (at + 8, len));
        at += 8 + len;
    }
    // Views of a storage (legacy files of old tensors) start inside their root's bytes.
    for (view, (root, offset)) in std::mem::take(&mut p.views) {
        if let Some(&(s, len)) = storages.get(&root) {
            let dtype = p.storage_dtypes.get(&view).copied().unwrap_or(Dtype::F32);
            let skip = offset.saturating_mul(dtype.size()).min(len);
            storages.insert(view, (s + skip, len - skip));
        }
    }
    Ok((top, p, storages))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(offset: usize, shape: &[usize], stride: &[usize]) -> TensorRef {
        TensorRef {
            key: "0".into(),
            dtype: Dtype::F32,
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    /// Sizes, strides and offsets a crafted file may give, however large: a checked range or
    /// an error naming the tensor, never a wrapped one.
    #[test]
    fn place_checks_every_size() {
        let err = |t: &TensorRef| match place("fc.weight", t, (64, 4096)) {
            Ok(_) => panic!("placed: {:?}", t.shape),
            Err(e) => e,
        };
        // 8 rows, the last one 2^64 − 128 elements on: the span is exactly usize::MAX.
        let e = err(&tensor(0, &[8, 128], &[(usize::MAX - 127) / 7, 1]));
        assert!(e.contains("`fc.weight`: its size overflows"), "{e}");
        let e = err(&tensor(0, &[1 << 40, 1 << 40], &[1 << 40, 1]));
        assert!(e.contains("its size overflows"), "{e}");
        let e = err(&tensor(usize::MAX / 2, &[4], &[1]));
        assert!(e.contains("reaches past its storage of 4096 bytes"), "{e}");
        let e = err(&tensor(0, &[33, 32], &[32, 1]));
        assert!(e.contains("reaches past"), "{e}");
        // An empty tensor whose other dimensions multiply past usize::MAX.
        let t = place(
            "x",
            &tensor(0, &[0, 1 << 40, 1 << 40], &[1, 1, 1]),
            (64, 4096),
        )
        .unwrap();
        assert_eq!(t.range, (64, 64));
        // Contiguous, and transposed (strides kept).
        let t = place("x", &tensor(2, &[4, 8], &[8, 1]), (64, 4096)).unwrap();
        assert_eq!((t.range, t.strides), ((72, 200), None));
        let t = place("x", &tensor(0, &[8, 4], &[1, 8]), (64, 4096)).unwrap();
        assert_eq!((t.range, t.strides), ((64, 192), Some(vec![1, 8])));
    }
}
