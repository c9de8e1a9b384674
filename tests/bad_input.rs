//! Bad input gets a typed error that names the problem, never a panic.

use gradcam::backend::CpuBackend;
use gradcam::cam::{grad_cam, ClassSel};
use gradcam::image::load_rgb8;
use gradcam::model::{self, synth, Network};
use gradcam::{Error, Tensor};
use safetensors::Dtype;

fn dict() -> Vec<(String, Tensor)> {
    synth::state_dict("resnet18", 16, 10, 3).unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, d: &[(String, Tensor)]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    synth::write(&p, d, Dtype::F32).unwrap();
    p
}

fn msg<T>(r: gradcam::Result<T>) -> (Error, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let s = e.to_string();
            (e, s)
        }
    }
}

#[test]
fn missing_and_corrupt_model_files() {
    let dir = tempfile::tempdir().unwrap();
    let (e, s) = msg(model::load(dir.path().join("nope.safetensors"), None));
    assert!(
        matches!(e, Error::Io { .. }) && s.contains("nope.safetensors"),
        "{s}"
    );

    let good = std::fs::read(write(&dir, "good.safetensors", &dict())).unwrap();
    for (name, bytes) in [
        ("truncated.safetensors", good[..good.len() - 100].to_vec()),
        ("header-cut.safetensors", good[..20].to_vec()),
        ("tiny.safetensors", vec![1, 2, 3]),
        (
            "png.safetensors",
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/images/a.png"
            ))
            .unwrap(),
        ),
        ("json.safetensors", {
            let mut b = 8u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"not json");
            b
        }),
        // torch.save's zip (PyTorch ≥ 1.6) and bare pickle, their first bytes only (whole
        // ones are read: tests/pth.rs).
        (
            "model.pth",
            b"PK\x03\x04\x00\x00\x08\x08archive/data.pkl".to_vec(),
        ),
        (
            "old.pt",
            b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec(),
        ),
        (
            "keras.h5",
            b"\x89HDF\r\n\x1a\n\0\0\0\0\0\x08\x08\0".to_vec(),
        ),
        (
            "gz.safetensors",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x03\x00\x00\x00".to_vec(),
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let (e, s) = msg(model::load(&p, None));
        let pth = name.ends_with(".pt") || name.ends_with(".pth");
        assert!(
            matches!(
                (&e, pth),
                (Error::BadSafetensors { .. }, false) | (Error::BadPth { .. }, true)
            ),
            "{name}: {s}"
        );
        assert!(
            s.contains(name),
            "{name}: message should name the file: {s}"
        );
        // Cut inside the header: said to be truncated, not "not a safetensors file".
        if name == "header-cut.safetensors" {
            assert!(s.contains("truncated file"), "{s}");
        }
        // Files of other kinds say which; PyTorch's, what is wrong with them.
        let says = match name {
            "model.pth" => "the zip archive is cut short or damaged",
            "old.pt" => "the pickle ends before its STOP",
            "png.safetensors" => "an image, not a model file",
            "keras.h5" => "an HDF5 file (a Keras model?)",
            "gz.safetensors" => "a gzip-compressed file",
            _ => continue,
        };
        assert!(s.contains(says), "{name}: {s}");
    }
}

/// A header entry that cannot be right is reported with the tensor's name, not as
/// safetensors' bare error variant.
#[test]
fn inconsistent_header_entries_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let file = |header: &str, data: usize| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data, 0);
        b
    };
    for (name, bytes, says) in [
        (
            "short.safetensors",
            file(
                r#"{"fc.bias":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                    "conv1.weight":{"dtype":"F32","shape":[64,3,7,7],"data_offsets":[16,32]}}"#,
                32,
            ),
            "`conv1.weight` (F32 [64, 3, 7, 7], data_offsets [16, 32]): its shape and dtype need 37632 bytes, its offsets give 16",
        ),
        (
            "past.safetensors",
            file(
                r#"{"fc.bias":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                    "fc.weight":{"dtype":"F16","shape":[4,4],"data_offsets":[16,48]}}"#,
                20,
            ),
            "`fc.weight` (F16 [4, 4], data_offsets [16, 48]): ends past the data part, which is 20 bytes",
        ),
        (
            "gap.safetensors",
            file(
                r#"{"fc.bias":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                    "fc.weight":{"dtype":"F32","shape":[4],"data_offsets":[20,36]}}"#,
                36,
            ),
            "`fc.weight`: its data_offsets do not start where the previous tensor's end",
        ),
        (
            "twice.safetensors",
            file(
                r#"{"fc.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                    "fc.weight":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}"#,
                32,
            ),
            "the header names tensor `fc.weight` twice",
        ),
        (
            "overflow.safetensors",
            file(
                r#"{"fc.weight":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,16]}}"#,
                16,
            ),
            "`fc.weight` (F32 [4611686018427387904, 8], data_offsets [0, 16]): its size overflows",
        ),
        // Headers safetensors cannot read at all: what is wrong, and where.
        (
            "dtype.safetensors",
            file(r#"{"fc.bias":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}}"#, 16),
            "tensor `fc.bias`: dtype \"Q4\" is not one safetensors knows",
        ),
        (
            "entry.safetensors",
            file(r#"{"fc.bias":[1,2]}"#, 0),
            "tensor `fc.bias`: its entry is not an object",
        ),
        (
            "shape.safetensors",
            file(r#"{"fc.bias":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}"#, 16),
            "tensor `fc.bias`: shape [-4] is not a list of sizes",
        ),
        (
            "offsets.safetensors",
            file(r#"{"fc.bias":{"dtype":"F32","shape":[4]}}"#, 16),
            "tensor `fc.bias`: no data_offsets",
        ),
        (
            "json.safetensors",
            file(r#"{"fc.bias":{"dtype":"F32",}}"#, 0),
            "the header is not valid JSON (trailing comma at line 1 column",
        ),
        (
            "array.safetensors",
            file(r#"[1]"#, 0),
            "the header is JSON but not an object of tensors",
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let (e, s) = msg(model::load(&p, None));
        assert!(matches!(e, Error::BadSafetensors { .. }), "{name}: {s}");
        assert!(s.contains(name) && s.contains(says), "{name}: {s}");
    }
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let without: Vec<_> = dict()
        .into_iter()
        .filter(|(n, _)| n != "layer3.1.bn2.running_var")
        .collect();
    let (e, s) = msg(model::load(
        write(&dir, "missing.safetensors", &without),
        None,
    ));
    assert!(
        matches!(e, Error::MissingTensor { .. }) && s.contains("layer3.1.bn2.running_var"),
        "{s}"
    );

    let mut bad = dict();
    let fc = bad.iter_mut().find(|(n, _)| n == "fc.weight").unwrap();
    fc.1 = Tensor::zeros([10, 31]);
    let (e, s) = msg(model::load(write(&dir, "shape.safetensors", &bad), None));
    assert!(matches!(e, Error::BadShape { .. }), "{s}");
    assert!(
        s.contains("fc.weight") && s.contains("[10, 31]") && s.contains("[10, 32]"),
        "{s}"
    );

    let mut bad = dict();
    let bn = bad.iter_mut().find(|(n, _)| n == "bn1.weight").unwrap();
    bn.1 = Tensor::zeros([5]);
    let (_, s) = msg(model::load(write(&dir, "bn.safetensors", &bad), None));
    assert!(
        s.contains("bn1.weight") && s.contains("expected [4]"),
        "{s}"
    );
}

/// A file that does not fit the torchvision layout it is read as is refused, as torch's
/// strict `load_state_dict` refuses it, instead of running another network than the file's:
/// fewer input channels than the layer below gives (read as groups, it would run), a missing
/// classifier bias, tensors the model does not read (another depth under a forced `--arch`),
/// a missing shortcut conv, the wrong block or BatchNorm kind under `--arch`, a conv weight of
/// the wrong rank, non-finite weights.
#[test]
fn files_that_do_not_fit_their_layout_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, d: &[(String, Tensor)], arch: Option<&str>| {
        msg(model::load(write(&dir, name, d), arch)).1
    };
    let edit = |arch: &str, name: &str, t: Option<Tensor>| {
        let mut d = synth::state_dict(arch, 16, 10, 3).unwrap();
        let i = d.iter().position(|(n, _)| n == name).expect(name);
        match t {
            Some(t) => d[i].1 = t,
            None => drop(d.remove(i)),
        }
        d
    };
    // (A basic block's 3x3 conv over 8 channels; VGG's second conv over 4.)
    let s = load(
        "half-in.st",
        &edit(
            "resnet18",
            "layer2.0.conv2.weight",
            Some(Tensor::zeros([8, 4, 3, 3])),
        ),
        None,
    );
    assert!(
        s.contains("layer2.0.conv2.weight") && s.contains("[8, 4, 3, 3]"),
        "{s}"
    );
    assert!(s.contains("expected [8, 8, 3, 3]"), "{s}");
    let s = load(
        "vgg-half-in.st",
        &edit(
            "vgg11",
            "features.3.weight",
            Some(Tensor::zeros([8, 2, 3, 3])),
        ),
        None,
    );
    assert!(
        s.contains("features.3.weight") && s.contains("expected [8, 4, 3, 3]"),
        "{s}"
    );
    // ResNeXt's grouped middle conv still loads.
    let mut d = synth::state_dict("resnet50", 16, 10, 3).unwrap();
    let i = d
        .iter()
        .position(|(n, _)| n == "layer1.0.conv2.weight")
        .unwrap();
    let k = d[i].1.shape()[0];
    d[i].1 = Tensor::zeros([k, k / 2, 3, 3]);
    let net = model::load(write(&dir, "resnext.st", &d), None).unwrap();
    assert!(net
        .nodes
        .iter()
        .any(|n| matches!(&n.op, model::Op::Conv { p, .. } if p.groups == 2)));

    // (torch's strict load refuses each; a VGG-BN conv run without its bias would give other
    // logits silently.)
    for (arch, bias) in [
        ("resnet18", "fc.bias"),
        ("vgg11", "classifier.6.bias"),
        ("vgg11", "features.0.bias"),
        ("vgg11_bn", "features.4.bias"),
    ] {
        let s = load("no-bias.st", &edit(arch, bias, None), None);
        assert!(s.contains(&format!("`{bias}` is missing")), "{s}");
    }
    // Before a BatchNorm a conv's bias is redundant: a VGG-BN whose convs all leave it out
    // (a custom one) loads.
    let mut d = synth::state_dict("vgg11_bn", 16, 10, 3).unwrap();
    let convs: Vec<String> = (d.iter())
        .filter(|(n, t)| n.starts_with("features.") && t.shape().len() == 4)
        .map(|(n, _)| n.replace(".weight", ".bias"))
        .collect();
    let before = d.len();
    d.retain(|(n, _)| !convs.contains(n));
    assert_eq!(d.len(), before - convs.len());
    model::load(write(&dir, "bn-no-bias.st", &d), None).unwrap();

    let s = load(
        "r50.st",
        &synth::state_dict("resnet101", 16, 10, 3).unwrap(),
        Some("resnet50"),
    );
    assert!(
        s.contains("not part of the resnet50")
            && s.contains("`layer3.6`")
            && s.contains("--arch resnet50"),
        "{s}"
    );
    let s = load(
        "r50b.st",
        &synth::state_dict("resnet50", 16, 10, 3).unwrap(),
        Some("resnet34"),
    );
    assert!(
        s.contains("--arch resnet34 does not fit") && s.contains("bottleneck"),
        "{s}"
    );
    let s = load(
        "vggbn.st",
        &synth::state_dict("vgg11_bn", 16, 10, 3).unwrap(),
        Some("vgg11"),
    );
    assert!(
        s.contains("--arch vgg11 does not fit") && s.contains("_bn"),
        "{s}"
    );
    // An unknown tensor under torchvision's own module names is refused; a wrapper's is not.
    let mut d = dict();
    d.push(("fc.extra".into(), Tensor::zeros([2])));
    assert!(load("extra.st", &d, None).contains("`fc.extra`"));

    let s = load(
        "no-ds.st",
        &edit("resnet18", "layer2.0.downsample.0.weight", None),
        None,
    );
    assert!(
        s.contains("`layer2.0.downsample.0.weight` is missing") && s.contains("shortcut"),
        "{s}"
    );

    let s = load(
        "rank.st",
        &edit("resnet18", "conv1.weight", Some(Tensor::zeros([4, 3, 49]))),
        None,
    );
    assert!(
        s.contains("conv1.weight") && s.contains("expected 4 dimensions, [*, *, *, *]"),
        "{s}"
    );

    let mut t = Tensor::zeros([10]);
    t.data_mut()[3] = f32::NAN;
    let s = load("nan.st", &edit("resnet18", "fc.bias", Some(t)), None);
    assert!(
        s.contains("`fc.bias` holds NaN at flat index 3") && s.contains("corrupt"),
        "{s}"
    );
    // A float64 past f32's range is named as it is, not as the infinity it rounds to.
    let mut f64_file = br#"{"fc.bias":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}"#.to_vec();
    f64_file.splice(0..0, (f64_file.len() as u64).to_le_bytes());
    for v in [0.5f64, -1e300] {
        f64_file.extend_from_slice(&v.to_le_bytes());
    }
    let p = std::env::temp_dir().join(format!("gradcam-f64-{}.safetensors", std::process::id()));
    std::fs::write(&p, &f64_file).unwrap();
    let w = model::Weights::open(&p).unwrap();
    let (_, s) = msg(w.get("fc.bias", &[None]));
    std::fs::remove_file(&p).unwrap();
    assert!(
        s.contains("`fc.bias` holds -1e300, beyond f32's range, at flat index 1"),
        "{s}"
    );
}

/// `d` written with `metadata` in the header's `__metadata__`.
fn write_with_metadata(
    dir: &tempfile::TempDir,
    name: &str,
    d: &[(String, Tensor)],
    metadata: &[(&str, &str)],
) -> std::path::PathBuf {
    let bytes = synth::to_safetensors(d, Dtype::F32).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta: serde_json::Map<String, serde_json::Value> = (metadata.iter())
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    header["__metadata__"] = meta.into();
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&bytes[8 + n..]);
    let p = dir.path().join(name);
    std::fs::write(&p, out).unwrap();
    p
}

/// Files that parse but cannot be the model they claim: no classes, a negative variance, a
/// VGG classifier cut short, an input size no memory holds. Each is refused at load, naming
/// the problem (they used to panic, abort, or give the same answer for every image).
#[test]
fn impossible_models_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = dict();
    for (n, t) in d.iter_mut() {
        match n.as_str() {
            "fc.weight" => *t = Tensor::zeros([0, 32]),
            "fc.bias" => *t = Tensor::zeros([0]),
            _ => {}
        }
    }
    let (_, s) = msg(model::load(write(&dir, "no-classes.safetensors", &d), None));
    assert!(
        s.contains("fc.weight") && s.contains("[0, 32]") && s.contains("at least one"),
        "{s}"
    );

    let mut d = dict();
    let var = d.iter_mut().find(|(n, _)| n == "bn1.running_var").unwrap();
    var.1.data_mut()[1] = -1.0;
    let (_, s) = msg(model::load(write(&dir, "var.safetensors", &d), None));
    assert!(
        s.contains("bn1.running_var[1]") && s.contains("negative"),
        "{s}"
    );
    // A γ of 3e38 over a variance of 0: finite in the file, infinite once folded.
    let mut d = dict();
    for (n, t) in d.iter_mut() {
        match n.as_str() {
            "layer1.0.bn1.weight" => t.data_mut()[3] = 3e38,
            "layer1.0.bn1.running_var" => t.data_mut()[3] = 0.0,
            _ => {}
        }
    }
    let (_, s) = msg(model::load(write(&dir, "gamma.safetensors", &d), None));
    assert!(
        s.contains("layer1.0.conv1 with layer1.0.bn1 folded in is not finite in output channel 3"),
        "{s}"
    );

    let vgg: Vec<_> = synth::state_dict("vgg11", 16, 10, 3)
        .unwrap()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("classifier.6."))
        .collect();
    let (e, s) = msg(model::load(write(&dir, "vgg.safetensors", &vgg), None));
    assert!(
        matches!(e, Error::MissingTensor { .. }) && s.contains("classifier.6.weight"),
        "{s}"
    );
    // A fine-tuned short head (Linear at 0 and 3, the last one to 5 classes) is a model.
    let short: Vec<_> = (vgg.iter().cloned())
        .map(|(n, t)| match n.as_str() {
            "classifier.3.weight" => {
                let hidden = t.shape()[1];
                (n, Tensor::zeros([5, hidden]))
            }
            "classifier.3.bias" => (n, Tensor::zeros([5])),
            _ => (n, t),
        })
        .collect();
    let g = model::load(write(&dir, "short.safetensors", &short), None).unwrap();
    assert_eq!(g.num_classes, 5);

    // Zero-sized convolutions (they used to panic: a zero chunk size, a division by zero).
    for (name, shape, bn) in [
        ("layer1.0.conv1.weight", [4, 4, 0, 0], None),
        ("conv1.weight", [4, 3, 0, 7], None),
        ("conv1.weight", [0, 3, 7, 7], Some("bn1")),
    ] {
        let mut d = dict();
        for (n, t) in d.iter_mut() {
            if n == name {
                *t = Tensor::zeros(shape);
            } else if bn.is_some_and(|bn| n.starts_with(&format!("{bn}."))) {
                *t = Tensor::zeros([0]);
            }
        }
        let (_, s) = msg(model::load(write(&dir, "zero.safetensors", &d), None));
        assert!(s.contains(name) && s.contains("at least one"), "{s}");
    }
    let mut even = dict();
    let w = even
        .iter_mut()
        .find(|(n, _)| n == "layer1.0.conv1.weight")
        .unwrap();
    w.1 = Tensor::zeros([w.1.shape()[0], w.1.shape()[1], 2, 2]);
    let (_, s) = msg(model::load(write(&dir, "even.safetensors", &even), None));
    assert!(
        s.contains("layer1.0.conv1.weight") && s.contains("2×2 kernel"),
        "{s}"
    );
    // A CIFAR-style 3x3 stem: its stride and pooling are not in the weights, so it is refused
    // rather than run as torchvision's stem.
    let mut cifar = dict();
    let w = cifar.iter_mut().find(|(n, _)| n == "conv1.weight").unwrap();
    w.1 = Tensor::zeros([w.1.shape()[0], 3, 3, 3]);
    let (e, s) = msg(model::load(write(&dir, "cifar.safetensors", &cifar), None));
    assert!(
        matches!(e, Error::UnknownArch(_)) && s.contains("conv1.weight is a 3x3 kernel"),
        "{s}"
    );
    let mut vgg0 = synth::state_dict("vgg11", 16, 10, 3).unwrap();
    let w = vgg0
        .iter_mut()
        .find(|(n, _)| n == "features.0.weight")
        .unwrap();
    w.1 = Tensor::zeros([w.1.shape()[0], 3, 0, 0]);
    let (_, s) = msg(model::load(write(&dir, "vgg0.safetensors", &vgg0), None));
    assert!(
        s.contains("features.0.weight") && s.contains("at least one"),
        "{s}"
    );

    // A VGG head whose first weight is not a matrix (it used to panic: no second dim).
    let mut vgg1 = synth::state_dict("vgg11", 16, 10, 3).unwrap();
    let w = vgg1
        .iter_mut()
        .find(|(n, _)| n == "classifier.0.weight")
        .unwrap();
    w.1 = Tensor::zeros([w.1.shape()[0]]);
    let (e, s) = msg(model::load(write(&dir, "vgg1.safetensors", &vgg1), None));
    assert!(
        matches!(e, Error::BadShape { .. }) && s.contains("classifier.0.weight"),
        "{s}"
    );
    // A hidden linear layer with no outputs (it used to load, then panic in the forward pass).
    let vgg_empty: Vec<_> = synth::state_dict("vgg11", 16, 10, 3)
        .unwrap()
        .into_iter()
        .map(|(n, t)| match n.as_str() {
            "classifier.0.weight" => {
                let fin = t.shape()[1];
                (n, Tensor::zeros([0, fin]))
            }
            "classifier.0.bias" => (n, Tensor::zeros([0])),
            "classifier.3.weight" => {
                let fout = t.shape()[0];
                (n, Tensor::zeros([fout, 0]))
            }
            _ => (n, t),
        })
        .collect();
    let (_, s) = msg(model::load(
        write(&dir, "vgg-empty.safetensors", &vgg_empty),
        None,
    ));
    assert!(
        s.contains("classifier.0.weight") && s.contains("at least one"),
        "{s}"
    );
    // A bottleneck ResNet whose layer1.0.conv2 has no output channels: detecting its width
    // (groups, channels per group) used to divide by zero.
    let mut r50 = synth::state_dict("resnet50", 16, 10, 3).unwrap();
    let w = r50
        .iter_mut()
        .find(|(n, _)| n == "layer1.0.conv2.weight")
        .unwrap();
    w.1 = Tensor::zeros([0, w.1.shape()[1], 3, 3]);
    let (_, s) = msg(model::load(write(&dir, "r50-zero.safetensors", &r50), None));
    assert!(s.contains("layer1.0.conv2.weight"), "{s}");

    let p = write_with_metadata(
        &dir,
        "size.safetensors",
        &dict(),
        &[("input_size", "99999999")],
    );
    let (_, s) = msg(model::load(p, None));
    assert!(s.contains("input_size") && s.contains("99999999"), "{s}");
    let (_, s) = msg(model::load(dir.path(), None));
    assert!(s.contains("a folder"), "{s}");
    let p = write_with_metadata(&dir, "ok.safetensors", &dict(), &[("input_size", "96")]);
    let g = model::load(p, None).unwrap();
    assert_eq!(g.input_size, Some(gradcam::image::InputSize::Square(96)));
    assert_eq!(g.normalization, gradcam::image::Normalization::IMAGENET);

    // A model's own input normalisation (metadata `mean` and `std`), and bad ones named.
    let norm = |mean: &str, std: &str| {
        let meta = [("mean", mean), ("std", std)];
        model::load(
            write_with_metadata(&dir, "n.safetensors", &dict(), &meta),
            None,
        )
    };
    let g = norm("[0.5, 0.5, 0.5]", "0.25,0.5, 1").unwrap();
    assert_eq!(g.normalization.mean, [0.5; 3]);
    assert_eq!(g.normalization.std, [0.25, 0.5, 1.0]);
    for (mean, std, says) in [
        (
            "[0.5, 0.5]",
            "[1, 1, 1]",
            "`mean` `[0.5, 0.5]`: 2 numbers, not 3",
        ),
        ("[0.5, 0.5, x]", "[1, 1, 1]", "not three numbers"),
        (
            "[0.5, 0.5, 0.5]",
            "[1, 0, 1]",
            "std 0: must be a positive number",
        ),
        ("[0.5, 0.5, 0.5]", "[1, NaN, 1]", "std NaN"),
        ("[inf, 0.5, 0.5]", "[1, 1, 1]", "mean inf"),
        // (0-255 values where torchvision's Normalize takes [0, 1]'s, and a std whose
        // reciprocal is infinite.)
        (
            "[123.7, 116.3, 103.5]",
            "[58.4, 57.1, 57.4]",
            "mean 123.7: outside [0, 1]",
        ),
        ("[0.5, 0.5, 0.5]", "[1e-45, 0.5, 0.5]", "too small"),
    ] {
        let (_, s) = msg(norm(mean, std));
        assert!(
            s.contains(says) && s.contains("n.safetensors"),
            "{mean} {std}: {s}"
        );
    }
    // A caller's normalisation (--mean/--std) replaces the metadata's, unread: a file whose
    // metadata is wrong still loads with one given.
    let meta = [
        ("mean", "[123.7, 116.3, 103.5]"),
        ("std", "[58.4, 57.1, 57.4]"),
    ];
    let p = write_with_metadata(&dir, "n255.safetensors", &dict(), &meta);
    let (_, s) = msg(model::load(&p, None));
    assert!(s.contains("--mean/--std override it"), "{s}");
    let mut w = model::Weights::open(&p).unwrap();
    let half = gradcam::image::Normalization::new([0.5; 3], [0.5; 3]).unwrap();
    w.set_normalization(half);
    assert_eq!(model::build(&w, None).unwrap().normalization, half);
    let p = write_with_metadata(
        &dir,
        "m.safetensors",
        &dict(),
        &[("mean", "[0.5, 0.5, 0.5]")],
    );
    let (_, s) = msg(model::load(p, None));
    assert!(s.contains("without the other"), "{s}");
}

#[test]
fn unknown_architectures() {
    let dir = tempfile::tempdir().unwrap();
    let other = vec![(
        "encoder.block.0.weight".to_string(),
        Tensor::zeros([4, 3, 3, 3]),
    )];
    let (e, s) = msg(model::load(write(&dir, "other.safetensors", &other), None));
    assert!(
        matches!(e, Error::UnknownArch(_)) && s.contains("encoder.block.0.weight"),
        "{s}"
    );
    // torchvision's AlexNet, named like a VGG (features.N, classifier.N) but with a Dropout
    // at classifier.0: refused as another network, not as a VGG missing a tensor.
    let t = |n: &str, shape: &[usize]| (n.to_string(), Tensor::zeros(shape.to_vec()));
    let alexnet = vec![
        t("features.0.weight", &[8, 3, 11, 11]),
        t("features.0.bias", &[8]),
        t("classifier.1.weight", &[16, 8 * 36]),
        t("classifier.1.bias", &[16]),
        t("classifier.6.weight", &[10, 16]),
        t("classifier.6.bias", &[10]),
    ];
    let p = write_with_metadata(
        &dir,
        "alexnet.safetensors",
        &alexnet,
        &[("arch", "alexnet")],
    );
    let (e, s) = msg(model::load(&p, None));
    assert!(
        matches!(e, Error::UnknownArch(_))
            && s.contains("metadata says `alexnet`")
            && s.contains("only VGG and ResNet"),
        "{s}"
    );
    let p = write(&dir, "r18.safetensors", &dict());
    let (_, s) = msg(model::load(&p, Some("alexnet")));
    assert!(s.contains("alexnet") && s.contains("resnet50"), "{s}");
    // torchvision's wide and ResNeXt names are forced only onto files of their widths and
    // groups (layer1.0.conv2 against the stem); a narrowing that leaves a ResNeXt's groups
    // without whole channels is refused when random weights are made.
    let r50 = synth::state_dict("resnet50", 16, 10, 3).unwrap();
    let p50 = write(&dir, "r50.safetensors", &r50);
    assert_eq!(
        model::load(&p50, Some("resnet50")).unwrap().arch,
        "resnet50"
    );
    for arch in ["wide_resnet50_2", "resnext50_32x4d"] {
        let (e, s) = msg(model::load(&p50, Some(arch)));
        assert!(
            matches!(e, Error::UnknownArch(_))
                && s.contains("layer1.0.conv2")
                && s.contains("[4, 4, 3, 3]"),
            "{s}"
        );
    }
    let (_, s) = msg(synth::state_dict("resnext50_32x4d", 16, 10, 3));
    assert!(
        s.contains("--width-div 16") && s.contains("8 channels") && s.contains("32 groups"),
        "{s}"
    );
    // Forcing the wrong depth reports the first tensor that is not there.
    let (e, s) = msg(model::load(&p, Some("resnet34")));
    assert!(
        matches!(e, Error::MissingTensor { .. }) && s.contains("layer1.2.conv1.weight"),
        "{s}"
    );
}

#[test]
fn bad_layer_class_and_input_size() {
    let dir = tempfile::tempdir().unwrap();
    let net = Network::new(
        model::load(write(&dir, "m.safetensors", &dict()), None).unwrap(),
        CpuBackend::fast(),
    )
    .unwrap();
    let x = Tensor::zeros([1, 3, 64, 64]);
    let (e, s) = msg(grad_cam(
        &net,
        x.clone(),
        "layer5",
        &ClassSel::Predicted,
        false,
    ));
    assert!(
        matches!(e, Error::UnknownLayer { .. }) && s.contains("layer4") && s.contains("layer5"),
        "{s}"
    );
    let (e, s) = msg(grad_cam(&net, x.clone(), "fc", &ClassSel::Predicted, false));
    assert!(matches!(e, Error::BadTarget { .. }), "{s}");
    let (e, s) = msg(grad_cam(
        &net,
        x.clone(),
        "layer4",
        &ClassSel::All(10),
        false,
    ));
    assert!(
        matches!(
            e,
            Error::ClassOutOfRange {
                class: 10,
                num_classes: 10
            }
        ),
        "{s}"
    );
    // Like torchvision, a padded ResNet runs even on 2x2; VGG's unpadded pools need 32x32.
    assert!(grad_cam(
        &net,
        Tensor::zeros([1, 3, 2, 2]),
        "layer4",
        &ClassSel::Predicted,
        false
    )
    .is_ok());
    let vgg = synth::state_dict("vgg11", 16, 10, 3).unwrap();
    let vgg = Network::new(
        model::load(write(&dir, "v.safetensors", &vgg), None).unwrap(),
        CpuBackend::fast(),
    )
    .unwrap();
    let (e, s) = msg(grad_cam(
        &vgg,
        Tensor::zeros([1, 3, 16, 16]),
        "features.19",
        &ClassSel::Predicted,
        false,
    ));
    assert!(
        matches!(e, Error::BadInput { .. }) && s.contains("too small") && s.contains("features.20"),
        "{s}"
    );
    let (e, _) = msg(grad_cam(
        &net,
        Tensor::zeros([1, 4, 64, 64]),
        "layer4",
        &ClassSel::Predicted,
        false,
    ));
    assert!(matches!(e, Error::BadInput { .. }));
}

#[test]
fn non_images_are_rejected_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("text.png", b"hello, not an image".to_vec()),
        ("empty.jpg", vec![]),
        ("cut.png", {
            let b = std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/images/a.png"
            ))
            .unwrap();
            b[..b.len() / 2].to_vec()
        }),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let (e, s) = msg(load_rgb8(&p));
        assert!(
            matches!(e, Error::BadImage { .. }) && s.contains(name),
            "{s}"
        );
    }
    let (e, _) = msg(load_rgb8(&dir.path().join("absent.png")));
    assert!(matches!(e, Error::Io { .. }));
    // Not regular files: a folder, and a pipe nobody writes to (reading it would block
    // forever) are refused before any read.
    let folder = dir.path().join("folder.png");
    std::fs::create_dir(&folder).unwrap();
    let (_, s) = msg(load_rgb8(&folder));
    assert!(s.contains("folder.png") && s.contains("a folder"), "{s}");
    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo.png");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let (_, s) = msg(load_rgb8(&fifo));
        assert!(
            s.contains("fifo.png") && s.contains("not a regular file"),
            "{s}"
        );
    }
}

#[test]
fn grayscale_alpha_and_16_bit_images_become_rgb8() {
    let dir = tempfile::tempdir().unwrap();
    let p16 = dir.path().join("deep.png");
    let img16 = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(5, 4, |x, y| {
        image::Rgba([x as u16 * 10000, y as u16 * 20000, 65535, 0])
    });
    img16.save(&p16).unwrap();
    let rgb = load_rgb8(&p16).unwrap();
    assert_eq!(rgb.dimensions(), (5, 4));
    // 16 → 8 bits: 65535 → 255, 20000 → 78 (round(20000/257)); alpha dropped.
    assert_eq!(rgb.get_pixel(0, 1).0, [0, 78, 255]);
    let g = load_rgb8(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/images/c.png"
    )))
    .unwrap();
    assert!(
        g.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
        "grayscale replicated"
    );
}

/// The library's entry points refuse what a caller can get wrong with an error naming it,
/// where they used to panic or abort (found by a sweep of the public API): empty images,
/// input sizes past the CLI's limit, an image given as [C, H, W], a class the model lacks,
/// no methods to evaluate, a finish given another batch's images, absurd concept and scale
/// counts, a parity fixture without its tensors. The bundled demo model.
#[test]
fn library_entry_points_refuse_what_a_caller_gets_wrong() {
    use gradcam::cam::{explain, sess::Sess, CamRequest, Method};
    use gradcam::eval::{evaluate_image, road, Entry, EvalConfig};
    use gradcam::explain::{explain_batch, explain_batch_device, ExplainConfig, Timings};
    use gradcam::image::{preprocess, resize_with, InputSize, RgbImage};
    let net = Network::new(
        model::load("assets/demo/model.safetensors", None).unwrap(),
        CpuBackend::fast(),
    )
    .unwrap();
    let path = std::path::Path::new("assets/demo/heldout/0001.png");
    let img = load_rgb8(path).unwrap();
    let cfg = |size| ExplainConfig {
        size,
        ..Default::default()
    };
    let t = &mut Timings::default();
    let empty = RgbImage::new(0, 10);
    let s = msg(explain_batch(
        &net,
        &[&img, &empty],
        &cfg(InputSize::Square(128)),
        t,
    ))
    .1;
    assert!(s.contains("image 1 is empty (0×10"), "{s}");
    for side in [0, 1 << 16, usize::MAX] {
        let s = msg(explain_batch(
            &net,
            &[&img],
            &cfg(InputSize::Square(side)),
            t,
        ))
        .1;
        assert!(s.contains("sides from 1 to 8192"), "{s}");
    }
    // At the image's own size, an image so small the layer is one position fails alone.
    let tiny = RgbImage::new(8, 8);
    let s = msg(explain_batch(&net, &[&tiny], &cfg(InputSize::Native), t)).1;
    assert!(s.contains("its activation is 1×1 at a 8×8 input"), "{s}");
    // A finish given other images than the batch was queued with.
    let queued = explain_batch_device(&net, &[&img, &img], &cfg(InputSize::Square(128)), t);
    let s = msg(queued
        .unwrap()
        .finish(&[&img], &cfg(InputSize::Square(128)), t))
    .1;
    assert!(s.contains("finish got 1 images for a batch of 2"), "{s}");
    // One image as [C, H, W].
    let x = preprocess(&[&img], (128, 128)).reshape([3, 128, 128]);
    let req = CamRequest::grad_cam("layer4", &ClassSel::Predicted);
    let s = msg(explain(&net, x, &req)).1;
    assert!(s.contains("not a batch [N, 3, H, W]"), "{s}");
    // SESS with more scales than anything could take (it listed them all first).
    let x = preprocess(&[&img], (64, 64));
    let sess = CamRequest {
        sess: Some(Sess {
            num_scales: 1 << 40,
        }),
        ..CamRequest::grad_cam("layer4", &ClassSel::Predicted)
    };
    let s = msg(explain(&net, x, &sess)).1;
    assert!(s.contains("SESS takes 1 to 4096 scales"), "{s}");
    // SESS on a thin input: a window per few pixels along it at every scale, refused by count.
    let x = preprocess(&[&img], (4, 4000));
    let sess = CamRequest {
        sess: Some(Sess { num_scales: 10 }),
        ..CamRequest::grad_cam("layer4", &ClassSel::Predicted)
    };
    let s = msg(explain(&net, x, &sess)).1;
    assert!(
        s.contains("windows of 4x4") && s.contains("too thin for SESS"),
        "{s}"
    );
    // ROAD: a class the model does not have, an input of three dims.
    let x = preprocess(&[&img], (128, 128));
    let map = vec![0.5; 128 * 128];
    let rc = road::RoadConfig::default();
    let (e, _) = msg(road::road_scores(&net, &x, &map, 99, 0.5, &rc, 18));
    assert!(matches!(e, Error::ClassOutOfRange { class: 99, .. }), "{e}");
    let x3 = x.clone().reshape([3, 128, 128]);
    let s = msg(road::road_scores(&net, &x3, &map, 1, 0.5, &rc, 18)).1;
    assert!(s.contains("not [1, C, H, W]"), "{s}");
    // eval without methods, and at a size of 0.
    let entry = Entry {
        image: path.into(),
        class: 1,
        boxes: vec![[0.0, 0.0, 10.0, 10.0]],
        mask: None,
    };
    let eval_cfg = |methods: Vec<Method>, size| EvalConfig {
        size,
        methods,
        occlusion: None,
        curve_steps: None,
        coherency: false,
        road: None,
        ..EvalConfig::default()
    };
    let no_methods = eval_cfg(vec![], InputSize::Square(128));
    assert!(msg(evaluate_image(&net, &entry, &no_methods))
        .1
        .contains("no methods"));
    let size0 = eval_cfg(vec![Method::GradCam], InputSize::Square(0));
    assert!(msg(evaluate_image(&net, &entry, &size0))
        .1
        .contains("sides from 1"));
    // DFF: more concepts than memory could hold.
    let (act, _) =
        gradcam::dff::activations(&net, preprocess(&[&img], (128, 128)), "layer4").unwrap();
    let s = msg(gradcam::dff::factorize(vec![act], 1 << 40)).1;
    assert!(s.contains("ask for fewer concepts"), "{s}");
    // A parity fixture without its map.
    let mut exp = gradcam::parity::Expected {
        tensors: Default::default(),
    };
    exp.tensors
        .insert("logits".into(), (vec![1], vec![0; 4], Dtype::F32));
    exp.tensors
        .insert("class".into(), (vec![1], vec![0; 8], Dtype::I64));
    let s = msg(exp.check_case(std::path::Path::new("case.safetensors"))).1;
    assert!(s.contains("case.safetensors: no F32 tensor `cam`"), "{s}");
    // An .npy shape that does not hold its values; a checkpoint naming a tensor twice.
    let dir = tempfile::tempdir().unwrap();
    let s = msg(gradcam::npy::write_f32(
        &dir.path().join("m.npy"),
        &[2, 3],
        &[0.0; 5],
    ))
    .1;
    assert!(s.contains("a shape of [2, 3] for 5 values"), "{s}");
    let twice = [
        ("a".to_string(), Tensor::zeros([1])),
        ("a".into(), Tensor::zeros([1])),
    ];
    let s = msg(synth::to_safetensors(&twice, Dtype::F32)).1;
    assert!(s.contains("tensor `a` is given twice"), "{s}");
    // A layer's bytes at an absurd input size: too many (or an error), never a wrapped few.
    let g = net.graph();
    if let Ok(b) = g.largest_layer_bytes((1 << 31, 1 << 31)) {
        assert!(b >= 1 << 62, "{b} bytes");
    }
    // KPCA-CAM's projection of activations without their batch dim.
    let kp = gradcam::cam::kpca::Kpca::default();
    let s = msg(gradcam::cam::kpca::kpca_projection(
        &Tensor::zeros([4, 2, 2]),
        &kp,
    ))
    .1;
    assert!(s.contains("not [N, K, h, w]"), "{s}");
    // Eigen-CAM's projection of the same; an overlay and guided pictures whose map is not the
    // image's size; FullGrad's terms of a node the graph does not have (none).
    let s = msg(gradcam::cam::eigen::principal_projection(&Tensor::zeros([
        4, 2, 2,
    ])))
    .1;
    assert!(
        s.contains("principal_projection") && s.contains("not [N, K, h, w]"),
        "{s}"
    );
    let s = msg(gradcam::cam::overlay(&img, &[0.5; 10])).1;
    assert!(s.contains("overlay: a map of 10 values for a"), "{s}");
    let s = msg(gradcam::cam::postprocess::guided_images(
        &[0.0; 12],
        &[0.5; 3],
        (2, 2),
    ))
    .1;
    assert!(
        s.contains("guided_images: a gradient of 12 values and a map of 3"),
        "{s}"
    );
    assert!(g.full_grad_biases(usize::MAX).is_empty());
    // Finer-CAM's compared classes for a class the logits do not have; seeds for logits that
    // are not [N, classes] or for another number of images.
    let finer = gradcam::cam::Finer::default();
    let (e, _) = msg(finer.compared(&[0.1, 0.2, 0.3], 3));
    assert!(matches!(e, Error::ClassOutOfRange { class: 3, .. }), "{e}");
    let s = msg(finer.seeds(&Tensor::zeros([3]), &[0])).1;
    assert!(s.contains("not [N, classes]"), "{s}");
    let s = msg(finer.seeds(&Tensor::zeros([2, 3]), &[0])).1;
    assert!(s.contains("1 classes given for 2 images"), "{s}");
    // The low-level helpers do not panic on sizes of 0: an empty tensor, black pixels.
    assert_eq!(preprocess(&[&img], (0, 0)).shape(), [1, 3, 0, 0]);
    assert_eq!(resize_with(|_| 1.0, (0, 4, 1), (2, 2)), vec![0.0; 4]);
}

/// A header may declare tensors of any size; `Weights::limit_memory` refuses, by name, the
/// tensor that would take the f32 copies past the limit, before allocating it.
#[test]
fn tensors_past_the_memory_limit_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dict();
    let p = write(&dir, "m.safetensors", &d);
    let f32_bytes: usize = d.iter().map(|(_, t)| 4 * t.data().len()).sum();
    let mut w = model::Weights::open(&p).unwrap();
    w.limit_memory(f32_bytes as u64 - 1, "the test's");
    let (e, s) = msg(model::build(&w, None));
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert!(
        s.contains("m.safetensors: tensor `") && s.contains("more than the test's"),
        "{s}"
    );
    // Exactly the model's f32 size is enough.
    let mut w = model::Weights::open(&p).unwrap();
    w.limit_memory(f32_bytes as u64, "the test's");
    model::build(&w, None).unwrap();
}

/// Finite weights whose activations overflow (each conv's filters ×1e4, folded with their
/// BatchNorm: 1e4 per layer, past f32's 3.4e38 by the tenth) fail the image with the
/// non-finite error naming the logits, on each CPU path. With a ReLU that turned NaN into 0
/// (`f32::max`), the infinities' sums (inf − inf) vanished at the next ReLU and the logits
/// were the classifier's bias alone: a blank map reported as fine. torch's ReLU keeps NaN, so
/// pytorch-grad-cam's logits are NaN too. The error names the layer whose output first
/// holds a value that is not finite (`Network::first_non_finite`). The unscaled model
/// explains the image.
#[test]
fn activations_that_overflow_fail_the_image() {
    use gradcam::explain::{explain_batch, ExplainConfig, Timings};
    use gradcam::image::InputSize;
    let dir = tempfile::tempdir().unwrap();
    let img = load_rgb8(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/images/a.png"
    )))
    .unwrap();
    let cfg = ExplainConfig {
        size: InputSize::Square(64),
        ..ExplainConfig::default()
    };
    let mut d = dict();
    let run = |d: &[(String, Tensor)], name: &str, be: CpuBackend| {
        let g = model::load(write(&dir, name, d), None).unwrap();
        let net = Network::new(g, be).unwrap();
        explain_batch(&net, &[&img], &cfg, &mut Timings::default())
    };
    for be in [
        CpuBackend::fast(),
        CpuBackend::fast_bf16(),
        CpuBackend::reference(),
    ] {
        let e = run(&d, "plain.safetensors", be).unwrap();
        assert!(e[0].top5[0].1.is_finite());
    }
    for (name, t) in d.iter_mut() {
        if name.contains("conv") || name.ends_with("downsample.0.weight") {
            let v = t.data().iter().map(|x| x * 1e4).collect();
            *t = Tensor::new(t.shape().to_vec(), v);
        }
    }
    for (what, be) in [
        ("fast", CpuBackend::fast()),
        ("fast bf16", CpuBackend::fast_bf16()),
        ("reference", CpuBackend::reference()),
    ] {
        let r = run(&d, "loud.safetensors", be).map(|e| e[0].top5.clone());
        match r {
            Err(e @ Error::NonFinite { .. }) => {
                let s = e.to_string();
                // The first value past f32's range: the tenth conv's (1e4¹⁰ = 1e40).
                let first = "first in the output of `layer3.0.conv1`, `layer3.0.bn1` (conv)";
                assert!(
                    s.contains("logits") && s.contains(first) && s.contains("corrupt model"),
                    "{what}: {s}"
                );
            }
            other => panic!("{what}: {:?}", other.map_err(|e| e.to_string())),
        }
    }
}
