//! PyTorch's own checkpoint files (`torch.save`), read without Python: each fixture
//! (tests/fixtures/pth, written by torch 2.11 from resnet_tiny.safetensors with
//! tools/make_pth_fixtures.py) must give the safetensors file's tensors bit for bit, and a
//! damaged file an error, never a panic.

use std::path::{Path, PathBuf};

use gradcam::backend::CpuBackend;
use gradcam::cam::{grad_cam, ClassSel};
use gradcam::model::{self, synth, Network, Weights};
use gradcam::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every tensor of `file`, by name, as f32 (shape, values).
fn tensors(w: &Weights) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let names: Vec<String> = w.names().map(str::to_string).collect();
    names
        .into_iter()
        .filter(|n| !n.ends_with("num_batches_tracked"))
        .map(|n| {
            let shape = w.shape_of(&n).unwrap().to_vec();
            let any: Vec<Option<usize>> = shape.iter().map(|_| None).collect();
            let t = w.get(&n, &any).unwrap();
            (n, shape, t.data().to_vec())
        })
        .collect()
}

/// The zip format, the legacy format, a training checkpoint (`module.` names under
/// `state_dict`, beside an optimizer's tensors), f16 storage, views (a transposed weight, a
/// bias sliced from a larger tensor), and whole pickled modules (`torch.save(model)`, in a
/// checkpoint and in the legacy format): the same tensors as the safetensors file.
#[test]
fn torch_save_files_give_the_safetensors_tensors() {
    let want = tensors(&Weights::open(fixtures().join("resnet_tiny.safetensors")).unwrap());
    assert!(want.len() > 50);
    for (file, under) in [
        ("resnet_tiny.pth", None),
        ("resnet_tiny_legacy.pth", None),
        ("resnet_tiny_legacy_p4.pth", None),
        ("resnet_tiny_checkpoint.pth", Some("its `state_dict` entry")),
        ("resnet_tiny_f16.pth", None),
        ("resnet_tiny_shared.pth", None),
        (
            "resnet_tiny_module.pth",
            Some("its `model` entry, a pickled `torch.nn.modules.module.Module` module"),
        ),
        (
            "resnet_tiny_module_legacy.pth",
            Some("a pickled `torch.nn.modules.module.Module` module"),
        ),
    ] {
        let w = Weights::open(fixtures().join("pth").join(file)).unwrap();
        assert_eq!(w.found_under(), under, "{file}");
        let got = tensors(&w);
        assert_eq!(got.len(), want.len(), "{file}");
        for ((n, s, v), (wn, ws, wv)) in got.iter().zip(&want) {
            assert_eq!((n, s), (wn, ws), "{file}");
            // (f16 storage: the values rounded to f16, as `.half()` did.)
            let wv: Vec<f32> = match file.contains("f16") {
                true => (wv.iter().map(|&x| half::f16::from_f32(x).to_f32())).collect(),
                false => wv.clone(),
            };
            assert_eq!(v, &wv, "{file}: {n}");
        }
    }
}

/// End to end: the same logits and maps from the .pth as from the safetensors file.
#[test]
fn a_pth_model_explains_as_its_safetensors() {
    let x = synth::Rng::new(5).tensor(&[2, 3, 48, 40], -2.0, 2.0);
    let cam = |path: PathBuf| {
        let net = Network::new(model::load(path, None).unwrap(), CpuBackend::fast()).unwrap();
        grad_cam(
            &net,
            x.clone(),
            "layer4",
            &ClassSel::PerImage(vec![1, 7]),
            false,
        )
        .unwrap()
    };
    let want = cam(fixtures().join("resnet_tiny.safetensors"));
    for file in ["resnet_tiny_legacy.pth", "resnet_tiny_checkpoint.pth"] {
        let got = cam(fixtures().join("pth").join(file));
        assert_eq!(got.logits.data(), want.logits.data(), "{file}");
        assert_eq!(got.maps.data(), want.maps.data(), "{file}");
    }
}

fn error_of(path: &Path) -> String {
    match model::load(path, None) {
        Ok(_) => panic!("{}: loaded", path.display()),
        Err(e) => {
            assert!(matches!(e, Error::BadPth { .. }), "{e}");
            e.to_string()
        }
    }
}

/// A file cut short, and a zip re-compressed: each refused with what is wrong. And no damage to the pickle or the zip directory makes the reader panic
/// (every byte of the legacy file's pickles, and the zip's directory, flipped in turn).
#[test]
fn damaged_or_unsupported_pth_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // (A whole module of another kind reads as its tensors, then is no VGG or ResNet.)
    let linear = Weights::open(fixtures().join("pth/whole_module.pth")).unwrap();
    assert_eq!(linear.names().collect::<Vec<_>>(), ["bias", "weight"]);
    let e = model::load(fixtures().join("pth/whole_module.pth"), None).err();
    assert!(matches!(e, Some(Error::UnknownArch(_))), "{e:?}");

    let zip = std::fs::read(fixtures().join("pth/resnet_tiny.pth")).unwrap();
    let legacy = std::fs::read(fixtures().join("pth/resnet_tiny_legacy.pth")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let s = error_of(&fixtures().join("pth/expanded.pth"));
    assert!(
        s.contains("repeats 1 stored elements 100000000 times"),
        "{s}"
    );
    let s = error_of(&write("cut.pth", &zip[..zip.len() / 2]));
    assert!(s.contains("cut short or damaged"), "{s}");
    let s = error_of(&write("cut-legacy.pth", &legacy[..legacy.len() - 100]));
    assert!(s.contains("cut short"), "{s}");
    let s = error_of(&write("cut-pickle.pth", &legacy[..200]));
    assert!(s.contains("the pickle ends before its STOP"), "{s}");

    // A safetensors header of 640 bytes starts as a pickle does (`80 02`): still read as
    // safetensors; a pickle of another program is named as one.
    let mut header = br#"{"fc.bias":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#.to_vec();
    header.resize(640, b' ');
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    assert_eq!(st[..2], [0x80, 0x02]);
    st.extend_from_slice(&header);
    st.extend_from_slice(&[0; 16]);
    let w = Weights::open(write("header640.safetensors", &st)).unwrap();
    assert_eq!(w.names().collect::<Vec<_>>(), ["fc.bias"]);
    let other = write(
        "other.pkl",
        b"\x80\x04\x95\x08\x00\x00\x00\x00\x00\x00\x00K\x07.",
    );
    match model::load(&other, None) {
        Err(e @ Error::BadSafetensors { .. }) => {
            assert!(
                e.to_string()
                    .contains("a Python pickle, not one torch.save wrote"),
                "{e}"
            )
        }
        other => panic!("{:?}", other.map(|_| ())),
    }

    // A pickle whose memo doubles a tuple 64 times (2^64 leaves if copied) and a module
    // that is its own child 64 times over: refused or read at once, not built out.
    let legacy_of = |object: &[u8]| {
        let mut b = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
        b.extend_from_slice(b"\x80\x02M\xe9\x03.\x80\x02}.");
        b.extend_from_slice(object);
        b.extend_from_slice(b"\x80\x02].");
        b
    };
    let mut bomb = b"\x80\x02)q\x00".to_vec();
    for _ in 0..64 {
        bomb.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    bomb.push(b'.');
    let s = error_of(&write("bomb.pth", &legacy_of(&bomb)));
    assert!(s.contains("not a dict of tensors"), "{s}");
    // (Tuples nested a million deep: a recursive drop would overflow the stack.)
    let mut deep = b"\x80\x02)".to_vec();
    deep.resize(deep.len() + 1_000_000, 0x85);
    deep.push(b'.');
    let s = error_of(&write("deep.pth", &legacy_of(&deep)));
    assert!(s.contains("not a dict of tensors"), "{s}");
    // (A module: `c` GLOBAL, NEWOBJ, memo 0; its state {'_modules': {'a': it, 'b': it}}.)
    let mut cycle = b"\x80\x02ctorch.nn\nModule\n)\x81q\x00}(X\x08\x00\x00\x00_modules}(".to_vec();
    cycle.extend_from_slice(b"X\x01\x00\x00\x00ah\x00X\x01\x00\x00\x00bh\x00uub.");
    let s = error_of(&write("cycle.pth", &legacy_of(&cycle)));
    assert!(s.contains("without tensors"), "{s}");

    // The central directory's first entry marked deflated (method 8).
    let mut deflated = zip.clone();
    let cd = (0..deflated.len() - 4)
        .rev()
        .find(|&i| deflated[i..i + 4] == *b"PK\x01\x02")
        .unwrap();
    deflated[cd + 10] = 8;
    let s = error_of(&write("deflated.pth", &deflated));
    assert!(s.contains("is compressed (method 8)"), "{s}");

    // Flips: Ok or Err, never a panic (a tensor's bytes may change without harm).
    let eocd = zip.len() - 22;
    let first_cd = (0..zip.len() - 4)
        .find(|&i| zip[i..i + 4] == *b"PK\x01\x02")
        .unwrap();
    let mut tried = 0;
    for (name, bytes, range) in [
        ("legacy", &legacy, 0..19_000.min(legacy.len())),
        ("zip", &zip, first_cd..eocd + 22),
    ] {
        for i in range.step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            let p = write(&format!("flip-{name}.pth"), &b);
            let _ = std::panic::catch_unwind(|| model::load(&p, None))
                .unwrap_or_else(|_| panic!("{name}: byte {i} flipped: a panic"));
            tried += 1;
        }
    }
    assert!(tried > 2000, "{tried}");
}
