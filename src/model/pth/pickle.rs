//! The pickle opcodes of protocols 2 to 5 that build data, run over a value stack: dicts,
//! lists, tuples, numbers, strings, `OrderedDict`, torch's tensor and parameter rebuilders
//! and its storages (persistent ids). Any other class a pickle names becomes an opaque
//! [`V::Object`]; nothing it names is ever called.

use std::collections::HashMap;
use std::rc::Rc;

use safetensors::Dtype;

/// A tensor as a pickle rebuilds it: its storage, offset, shape and strides (elements).
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub key: String,
    pub dtype: Dtype,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A pickle value. Lists and dicts live in [`Pickle`]'s arenas, so the memo shares them as
/// Python does.
#[derive(Clone, Debug)]
pub enum V {
    None,
    Bool,
    Int(i64),
    /// A LONG past i64, as its little-endian bytes.
    BigInt(Rc<[u8]>),
    Float,
    Str(Rc<str>),
    Bytes,
    /// Its index in [`Pickle`]'s tuples (an arena, as lists and dicts: nested tuples then
    /// drop and clone flat, however deep a crafted pickle nests them).
    Tuple(usize),
    List(usize),
    Dict(usize),
    /// `module.name`.
    Global(Rc<str>, Rc<str>),
    Storage(String, Dtype),
    Tensor(Rc<TensorRef>),
    /// An instance of a class this reader does not rebuild: its index in [`Pickle`]'s
    /// objects (class name, and the state BUILD gave it: a module's `_parameters`, ...).
    Object(usize),
    Mark,
}

/// A class as a GLOBAL names it: module, name.
pub type Class = (Rc<str>, Rc<str>);

#[derive(Default)]
pub struct Pickle {
    pub lists: Vec<Vec<V>>,
    pub dicts: Vec<Vec<(V, V)>>,
    /// Each storage's dtype, by key, as the tensors name them.
    pub storage_dtypes: HashMap<String, Dtype>,
    /// Legacy views: key → (root key, offset in elements).
    pub views: Vec<(String, (String, usize))>,
    /// Opaque objects: their class (module and name, shared with the GLOBAL that gave it),
    /// and the state BUILD gave them.
    pub objects: Vec<(Option<Class>, Option<V>)>,
    pub tuples: Vec<Vec<V>>,
}

impl Pickle {
    /// Runs one pickle to its STOP: the value, and the bytes read.
    pub fn run(&mut self, b: &[u8]) -> Result<(V, usize), String> {
        let mut stack: Vec<V> = Vec::new();
        let mut memo: HashMap<u32, V> = HashMap::new();
        let mut i = 0usize;
        let cut = || "the pickle ends before its STOP: cut short or damaged".to_string();
        macro_rules! take {
            ($n:expr) => {{
                let n: usize = $n;
                let s = b
                    .get(i..i.checked_add(n).ok_or_else(cut)?)
                    .ok_or_else(cut)?;
                i += n;
                s
            }};
        }
        let pop = |stack: &mut Vec<V>| {
            stack
                .pop()
                .ok_or("the pickle pops an empty stack".to_string())
        };
        let since_mark = |stack: &mut Vec<V>| -> Result<Vec<V>, String> {
            let m = (stack.iter().rposition(|v| matches!(v, V::Mark)))
                .ok_or("the pickle has no MARK to go back to")?;
            let items = stack.split_off(m + 1);
            stack.pop();
            Ok(items)
        };
        loop {
            let op = *take!(1).first().expect("one byte");
            match op {
                0x80 => i += 1, // PROTO
                0x95 => i += 8, // FRAME
                b'.' => return Ok((pop(&mut stack)?, i)),
                b'(' => stack.push(V::Mark),
                b'}' => {
                    self.dicts.push(Vec::new());
                    stack.push(V::Dict(self.dicts.len() - 1));
                }
                b']' => {
                    self.lists.push(Vec::new());
                    stack.push(V::List(self.lists.len() - 1));
                }
                b')' => {
                    let v = self.tuple(Vec::new());
                    stack.push(v);
                }
                b't' => {
                    let items = since_mark(&mut stack)?;
                    let v = self.tuple(items);
                    stack.push(v);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = stack
                        .len()
                        .checked_sub(n)
                        .ok_or("the pickle pops an empty stack")?;
                    let items = stack.split_off(at);
                    let v = self.tuple(items);
                    stack.push(v);
                }
                // Sets (a module's `_non_persistent_buffers_set`) as lists.
                0x8f => {
                    self.lists.push(Vec::new());
                    stack.push(V::List(self.lists.len() - 1));
                }
                0x90 => {
                    let items = since_mark(&mut stack)?;
                    self.append(stack.last(), items);
                }
                0x91 => {
                    let items = since_mark(&mut stack)?;
                    self.lists.push(items);
                    stack.push(V::List(self.lists.len() - 1));
                }
                b'l' => {
                    let items = since_mark(&mut stack)?;
                    self.lists.push(items);
                    stack.push(V::List(self.lists.len() - 1));
                }
                b'd' => {
                    let items = since_mark(&mut stack)?;
                    let pairs = items
                        .chunks_exact(2)
                        .map(|p| (p[0].clone(), p[1].clone()))
                        .collect();
                    self.dicts.push(pairs);
                    stack.push(V::Dict(self.dicts.len() - 1));
                }
                b's' => {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    self.set_items(stack.last(), vec![k, v])?;
                }
                b'u' => {
                    let items = since_mark(&mut stack)?;
                    self.set_items(stack.last(), items)?;
                }
                b'a' => {
                    let v = pop(&mut stack)?;
                    self.append(stack.last(), vec![v]);
                }
                b'e' => {
                    let items = since_mark(&mut stack)?;
                    self.append(stack.last(), items);
                }
                b'q' => {
                    let k = take!(1)[0] as u32;
                    memo.insert(k, stack.last().cloned().ok_or_else(cut)?);
                }
                b'r' => {
                    let k = u32::from_le_bytes(take!(4).try_into().expect("4"));
                    memo.insert(k, stack.last().cloned().ok_or_else(cut)?);
                }
                0x94 => {
                    let k = memo.len() as u32;
                    memo.insert(k, stack.last().cloned().ok_or_else(cut)?);
                }
                b'h' | b'j' => {
                    let k = match op {
                        b'h' => take!(1)[0] as u32,
                        _ => u32::from_le_bytes(take!(4).try_into().expect("4")),
                    };
                    stack.push(
                        memo.get(&k)
                            .cloned()
                            .ok_or_else(|| format!("the pickle reads memo {k}, never written"))?,
                    );
                }
                b'J' => stack.push(V::Int(
                    i32::from_le_bytes(take!(4).try_into().expect("4")) as i64
                )),
                b'K' => stack.push(V::Int(take!(1)[0] as i64)),
                b'M' => stack.push(V::Int(
                    u16::from_le_bytes(take!(2).try_into().expect("2")) as i64
                )),
                0x8a | 0x8b => {
                    let n = match op {
                        0x8a => take!(1)[0] as usize,
                        _ => u32::from_le_bytes(take!(4).try_into().expect("4")) as usize,
                    };
                    let bytes = take!(n);
                    stack.push(match n {
                        0 => V::Int(0),
                        1..=8 => {
                            // Two's complement, little-endian, sign-extended.
                            let fill = if bytes[n - 1] & 0x80 != 0 { 0xff } else { 0 };
                            let mut w = [fill; 8];
                            w[..n].copy_from_slice(bytes);
                            V::Int(i64::from_le_bytes(w))
                        }
                        _ => V::BigInt(Rc::from(bytes)),
                    });
                }
                b'G' => {
                    take!(8);
                    stack.push(V::Float);
                }
                b'N' => stack.push(V::None),
                0x88 | 0x89 => stack.push(V::Bool),
                b'X' | 0x8c | 0x8d | b'U' | b'T' | b'B' | b'C' | 0x8e => {
                    let n = match op {
                        0x8c | b'U' | b'C' => take!(1)[0] as usize,
                        b'X' | b'T' | b'B' => {
                            u32::from_le_bytes(take!(4).try_into().expect("4")) as usize
                        }
                        _ => usize::try_from(u64::from_le_bytes(take!(8).try_into().expect("8")))
                            .map_err(|_| cut())?,
                    };
                    let s = take!(n);
                    stack.push(match op {
                        b'X' | 0x8c | 0x8d => V::Str(Rc::from(String::from_utf8_lossy(s).as_ref())),
                        _ => V::Bytes,
                    });
                }
                b'c' => {
                    let line = |i: &mut usize| -> Result<String, String> {
                        let end = b[*i..].iter().position(|&c| c == b'\n').ok_or_else(cut)?;
                        let s = String::from_utf8_lossy(&b[*i..*i + end]).into_owned();
                        *i += end + 1;
                        Ok(s)
                    };
                    let module = line(&mut i)?;
                    let name = line(&mut i)?;
                    stack.push(V::Global(module.into(), name.into()));
                }
                0x93 => {
                    let name = pop(&mut stack)?;
                    let module = pop(&mut stack)?;
                    match (module, name) {
                        (V::Str(m), V::Str(n)) => stack.push(V::Global(m, n)),
                        _ => return Err("STACK_GLOBAL of values that are not names".into()),
                    }
                }
                b'R' => {
                    let args = pop(&mut stack)?;
                    let f = pop(&mut stack)?;
                    let v = self.call(f, args)?;
                    stack.push(v);
                }
                0x81 => {
                    let _args = pop(&mut stack)?;
                    let cls = pop(&mut stack)?;
                    let v = self.object(&cls);
                    stack.push(v);
                }
                b'b' => {
                    let state = pop(&mut stack)?;
                    // (Kept for objects: a pickled module's parameters are in its state.)
                    if let Some(V::Object(o)) = stack.last() {
                        self.objects[*o].1 = Some(state);
                    }
                }
                b'Q' => {
                    let pid = pop(&mut stack)?;
                    let v = self.persistent(pid)?;
                    stack.push(v);
                }
                b'0' => {
                    pop(&mut stack)?;
                }
                b'1' => {
                    since_mark(&mut stack)?;
                }
                b'2' => {
                    let v = stack.last().cloned().ok_or_else(cut)?;
                    stack.push(v);
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {} is not one a state_dict uses",
                        i - 1
                    ))
                }
            }
        }
    }

    fn set_items(&mut self, target: Option<&V>, items: Vec<V>) -> Result<(), String> {
        if let Some(V::Dict(d)) = target {
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                self.dicts[*d].push((k, v));
            }
        }
        // (Items set on an opaque object are its business.)
        Ok(())
    }

    fn append(&mut self, target: Option<&V>, items: Vec<V>) {
        if let Some(V::List(l)) = target {
            self.lists[*l].extend(items);
        }
    }

    /// REDUCE: torch's rebuilders and `OrderedDict` are understood; any other call gives an
    /// opaque object (nothing is run).
    fn call(&mut self, f: V, args: V) -> Result<V, String> {
        let V::Tuple(args) = args else {
            return Ok(self.object(&f));
        };
        // (The few arguments understood; a crafted tuple may be long.)
        let args: Vec<V> = self.tuples[args].iter().take(8).cloned().collect();
        let V::Global(module, name) = &f else {
            return Ok(self.object(&f));
        };
        Ok(match (&**module, &**name) {
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                self.dicts.push(Vec::new());
                V::Dict(self.dicts.len() - 1)
            }
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => {
                let tuples = &self.tuples;
                let ints = |v: Option<&V>| -> Option<Vec<usize>> {
                    match v? {
                        V::Tuple(t) => tuples[*t]
                            .iter()
                            .map(|x| match x {
                                V::Int(n) => usize::try_from(*n).ok(),
                                _ => None,
                            })
                            .collect(),
                        _ => None,
                    }
                };
                match (
                    args.first(),
                    args.get(1),
                    ints(args.get(2)),
                    ints(args.get(3)),
                ) {
                    (
                        Some(V::Storage(key, dtype)),
                        Some(V::Int(offset)),
                        Some(shape),
                        Some(stride),
                    ) if shape.len() == stride.len() && *offset >= 0 => {
                        V::Tensor(Rc::new(TensorRef {
                            key: key.clone(),
                            dtype: *dtype,
                            offset: *offset as usize,
                            shape,
                            stride,
                        }))
                    }
                    _ => return Err(format!("torch.{name} with arguments it does not take")),
                }
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                args.first().cloned().unwrap_or(V::None)
            }
            _ => self.object(&f),
        })
    }

    /// A persistent id: `('storage', torch.FloatStorage, key, location, numel[, view])`, or
    /// in the legacy format a pickled module's class, `('module', class, file, source)` (the
    /// class, as a GLOBAL would give it; its source is not read).
    fn persistent(&mut self, pid: V) -> Result<V, String> {
        let V::Tuple(t) = pid else {
            return Err("a persistent id that is not a tuple".into());
        };
        let t: Vec<V> = self.tuples[t].iter().take(6).cloned().collect();
        if let (Some(V::Str(kind)), Some(class @ V::Global(..))) = (t.first(), t.get(1)) {
            if &**kind == "module" {
                return Ok(class.clone());
            }
        }
        let (Some(V::Str(kind)), Some(V::Global(_, ty)), Some(V::Str(key))) =
            (t.first(), t.get(1), t.get(2))
        else {
            return Err("a persistent id that is not a storage".into());
        };
        if &**kind != "storage" {
            return Err(format!("a persistent id of kind `{kind}`, not a storage"));
        }
        let dtype = match &**ty {
            "FloatStorage" => Dtype::F32,
            "DoubleStorage" => Dtype::F64,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::BOOL,
            other => {
                return Err(format!(
                    "storage `{key}` is a {other}, which this reader does not know"
                ))
            }
        };
        let key = key.to_string();
        self.storage_dtypes.insert(key.clone(), dtype);
        // Legacy view metadata: (view key, offset, size) into the root storage `key`.
        let key = match t.get(5) {
            Some(V::Tuple(v)) => match (
                self.tuples[*v].first().cloned(),
                self.tuples[*v].get(1).cloned(),
            ) {
                (Some(V::Str(view)), Some(V::Int(off))) if off >= 0 => {
                    self.views
                        .push((view.to_string(), (key.clone(), off as usize)));
                    view.to_string()
                }
                _ => key.clone(),
            },
            _ => key.clone(),
        };
        self.storage_dtypes.insert(key.clone(), dtype);
        Ok(V::Storage(key, dtype))
    }
}

impl Pickle {
    fn tuple(&mut self, items: Vec<V>) -> V {
        self.tuples.push(items);
        V::Tuple(self.tuples.len() - 1)
    }

    /// A new opaque object of the class `cls` names.
    fn object(&mut self, cls: &V) -> V {
        let class = match cls {
            V::Global(m, n) => Some((m.clone(), n.clone())),
            V::Object(o) => self.objects[*o].0.clone(),
            _ => None,
        };
        self.objects.push((class, None));
        V::Object(self.objects.len() - 1)
    }

    /// The class of object `o`, as `module.Name`.
    pub fn class_of(&self, o: usize) -> String {
        match &self.objects[o].0 {
            Some((m, n)) => format!("{m}.{n}"),
            None => "an unnamed class".into(),
        }
    }
}
