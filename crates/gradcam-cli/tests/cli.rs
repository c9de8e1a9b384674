//! The `gradcam` binary end to end: outputs per image, exit codes, and that one bad input
//! never costs the others their outputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn gradcam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradcam"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn model() -> String {
    fixtures()
        .join("resnet_tiny.safetensors")
        .display()
        .to_string()
}

/// A pipe named like an image, in a folder or given by name, fails as such and the other
/// images are explained: nothing opens it (opening a FIFO blocks until something writes to
/// it; `explain` once hung there, sizing the files for its batches). Killed after 120 s.
#[cfg(unix)]
#[test]
fn a_pipe_among_the_images_fails_alone_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    std::fs::copy(fixtures().join("images/a.png"), imgs.join("a.png")).unwrap();
    let fifo = imgs.join("pipe.png");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    for (name, inputs) in [
        ("folder", vec![imgs.clone()]),
        ("named", vec![imgs.join("a.png"), fifo.clone()]),
    ] {
        let out = dir.path().join(name);
        let mut child = Command::new(env!("CARGO_BIN_EXE_gradcam"))
            .arg("explain")
            .args(&inputs)
            .args(["--model", &model(), "--out", out.to_str().unwrap()])
            .env("RAYON_NUM_THREADS", "2")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > std::time::Duration::from_secs(120) {
                child.kill().unwrap();
                panic!("{name}: explain still runs after 120 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("pipe.png") && err.contains("not a regular file"),
            "{name}: {err}"
        );
        assert!(out.join("a.overlay.png").exists(), "{name}: {err}");
        let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3, "{name}: {csv}");
    }
}

/// A reader of the table that stops early (`| head -1`) ends `summarize` by SIGPIPE, as it
/// ends other tools (not a panic in println!), after `--out` is written. 3000 groups: 240 KB,
/// more than a pipe holds, so the write meets the closed pipe.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly_after_the_files() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from(
        "image,status,error,class,label,probability,logit,predicted,predicted_label,peak_x,\
         peak_y,centroid_x,centroid_y,border_mass,area_half,stem\n",
    );
    for i in 0..3000 {
        csv += &format!("d{i}/a.png,ok,,1,,0.5,1,1,,0.5,0.5,0.5,0.5,0.3,0.2,d{i}/a\n");
    }
    std::fs::write(dir.path().join("summary.csv"), csv).unwrap();
    let table = dir.path().join("t.csv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradcam"))
        .args([
            "summarize",
            dir.path().to_str().unwrap(),
            "--by",
            "folder",
            "--out",
        ])
        .arg(&table)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 5];
    let mut out = child.stdout.take().unwrap();
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"group");
    drop(out);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let written = std::fs::read_to_string(&table).unwrap();
    assert_eq!(written.lines().count(), 1 + 3000 + 1);
}

#[test]
fn explain_writes_overlay_npy_and_json_per_image_and_survives_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for f in ["a.png", "b.png", "c.png", "d.png"] {
        std::fs::copy(fixtures().join("images").join(f), imgs.join(f)).unwrap();
    }
    std::fs::write(imgs.join("broken.png"), b"definitely not a png").unwrap();
    let out = dir.path().join("out");
    let missing = dir.path().join("missing.jpg");
    let o = gradcam(&[
        "explain",
        imgs.to_str().unwrap(),
        missing.to_str().unwrap(),
        "--model",
        &model(),
        "--batch",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "some inputs failed: {err}");
    assert!(
        err.contains("broken.png") && err.contains("missing.jpg"),
        "{err}"
    );
    for stem in ["a", "b", "c", "d"] {
        let overlay = image::open(out.join(format!("{stem}.overlay.png"))).unwrap();
        let original = image::open(imgs.join(format!("{stem}.png"))).unwrap();
        assert_eq!(
            overlay.width(),
            original.width(),
            "overlay at full resolution"
        );
        assert_eq!(overlay.height(), original.height());
        let (shape, cam) = gradcam::npy::read_f32(&out.join(format!("{stem}.cam.npy"))).unwrap();
        assert_eq!(shape, vec![224, 224]);
        assert!(cam.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(cam.iter().any(|&v| v > 0.99), "normalised to a max of ~1");
        let js: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(js["layer"], "layer4");
        assert_eq!(js["map_size"], serde_json::json!([7, 7]));
        assert_eq!(js["top5"].as_array().unwrap().len(), 5);
        assert_eq!(js["top_channels"].as_array().unwrap().len(), 10);
        assert_eq!(
            js["class"], js["top5"][0]["class"],
            "default class is the top-1"
        );
        let p = js["probability"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0);
    }
    assert!(!out.join("broken.overlay.png").exists());

    // summary.csv: a row per input, failed ones included; each explained row agrees with its
    // JSON report and with the statistics of its .cam.npy.
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == 16), "{csv}");
    assert_eq!(rows[0][0], "image");
    assert_eq!(rows.len(), 1 + 6, "{csv}");
    // Input order: the path that is no file first, then the folder's files, sorted.
    let names: Vec<&str> = rows[1..]
        .iter()
        .map(|r| Path::new(r[0]).file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "missing.jpg",
            "a.png",
            "b.png",
            "broken.png",
            "c.png",
            "d.png"
        ]
    );
    let row_of = |name: &str| {
        rows.iter()
            .find(|r| r[0].ends_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {csv}"))
    };
    for (name, why) in [
        ("broken.png", "not a recognised image format"),
        ("missing.jpg", "no such file"),
    ] {
        let r = row_of(name);
        assert!(r[1] == "error" && r[2].contains(why), "{r:?}");
        assert!(r[3..].iter().all(|f| f.is_empty()), "{r:?}");
    }
    for stem in ["a", "b", "c", "d"] {
        let r = row_of(&format!("{stem}.png"));
        let js: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!((r[1], r[2]), ("ok", ""));
        assert_eq!(r[3], js["class"].to_string());
        assert_eq!(r[7], js["top5"][0]["class"].to_string());
        let num = |i: usize| r[i].parse::<f64>().unwrap();
        assert!((num(5) - js["probability"].as_f64().unwrap()).abs() < 1e-6);
        assert!((num(6) - js["logit"].as_f64().unwrap()).abs() < 1e-5);
        let (shape, cam) = gradcam::npy::read_f32(&out.join(format!("{stem}.cam.npy"))).unwrap();
        let st = gradcam::eval::metrics::map_stats(&cam, (shape[0], shape[1])).unwrap();
        let want = [
            st.peak.0,
            st.peak.1,
            st.centroid.0,
            st.centroid.1,
            st.border_mass,
            st.area_half,
        ];
        for (i, w) in want.iter().enumerate() {
            assert!(
                (num(9 + i) - *w as f64).abs() < 1e-6,
                "{stem} column {}: {r:?}",
                9 + i
            );
        }
        assert_eq!(r[15], stem);
    }
}

#[test]
fn native_size_class_counterfactual_and_several_layers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let a = fixtures().join("images/a.png");
    let o = gradcam(&[
        "explain",
        a.to_str().unwrap(),
        "-m",
        &model(),
        "--size",
        "native",
        "--class",
        "3",
        "--counterfactual",
        "--layer",
        "layer3",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("a.json")).unwrap()).unwrap();
    assert_eq!(js["class"], 3);
    assert_eq!(js["counterfactual"], true);
    assert_eq!(js["input_size"], serde_json::json!([75, 97]));
    let (shape, _) = gradcam::npy::read_f32(&out.join("a.cam.npy")).unwrap();
    assert_eq!(shape, vec![75, 97]);

    // Two target layers: the mean of their maps, at the input size; it is neither layer's.
    let layers = dir.path().join("layers");
    let o = gradcam(&[
        "explain",
        a.to_str().unwrap(),
        "-m",
        &model(),
        "--size",
        "64",
        "--layer",
        "layer3,layer4",
        "-o",
        layers.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(layers.join("a.json")).unwrap()).unwrap();
    assert_eq!(js["layer"], "layer3,layer4");
    assert_eq!(js["map_size"], serde_json::json!([64, 64]));
    let (_, both) = gradcam::npy::read_f32(&layers.join("a.cam.npy")).unwrap();
    for one in ["layer3", "layer4"] {
        let d = dir.path().join(one);
        let o = gradcam(&[
            "explain",
            a.to_str().unwrap(),
            "-m",
            &model(),
            "--size",
            "64",
            "--layer",
            one,
            "-o",
            d.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let (_, m) = gradcam::npy::read_f32(&d.join("a.cam.npy")).unwrap();
        assert_ne!(m, both, "{one}");
    }
}

/// `--classes FILE`: each image explained for its own listed class (as `--class` would for it
/// alone), in batches that mix classes; an image the file does not list fails alone.
#[test]
fn classes_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for f in ["a.png", "b.png", "c.png"] {
        std::fs::copy(fixtures().join("images").join(f), imgs.join(f)).unwrap();
    }
    let list = dir.path().join("classes.csv");
    std::fs::write(&list, "image,class\nimgs/a.png,7\nimgs/b.png,2\n").unwrap();
    let m = model();
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "explain",
            imgs.to_str().unwrap(),
            "-m",
            &m,
            "--batch",
            "3",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        gradcam(&args)
    };
    let out = dir.path().join("out");
    let o = run(&out, &["--classes", list.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("c.png") && err.contains("no class for this image"),
        "{err}"
    );
    for (stem, class) in [("a", 7), ("b", 2)] {
        let got: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(got["class"], class);
        let alone = dir.path().join(format!("alone-{stem}"));
        let o = gradcam(&[
            "explain",
            imgs.join(format!("{stem}.png")).to_str().unwrap(),
            "-m",
            &model(),
            "--class",
            &class.to_string(),
            "-o",
            alone.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let (_, want) = gradcam::npy::read_f32(&alone.join(format!("{stem}.cam.npy"))).unwrap();
        let (_, got) = gradcam::npy::read_f32(&out.join(format!("{stem}.cam.npy"))).unwrap();
        let diff = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{stem}: {diff}");
    }
    assert!(!out.join("c.json").exists());
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(
        csv.lines()
            .any(|l| l.contains("c.png,error,no class for this image")),
        "{csv}"
    );

    // ImageFolder: ten class folders (the model's ten classes) in sorted order.
    let tree = dir.path().join("tree");
    for c in 0..10 {
        std::fs::create_dir_all(tree.join(format!("c{c}"))).unwrap();
    }
    for (f, class) in [("a.png", 3), ("b.png", 7)] {
        std::fs::copy(imgs.join(f), tree.join(format!("c{class}")).join(f)).unwrap();
    }
    let out = dir.path().join("out-tree");
    let o = gradcam(&[
        "explain",
        tree.to_str().unwrap(),
        "-m",
        &m,
        "--classes",
        "folders",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The outputs mirror the tree: c3/a.*, c7/b.*.
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    for (stem, class) in [("a", 3), ("b", 7)] {
        let stem = format!("c{class}/{stem}");
        let got: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(got["class"], class);
        assert_eq!(got["outputs"]["cam"], format!("{}.cam.npy", &stem[3..]));
        assert!(out.join(format!("{stem}.overlay.png")).is_file());
        assert!(
            csv.lines().any(|l| l.ends_with(&format!(",{stem}"))),
            "{csv}"
        );
    }

    let o = run(
        &dir.path().join("x"),
        &["--classes", list.to_str().unwrap(), "--class", "1"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn fatal_errors_exit_2_with_a_clear_message() {
    let a = fixtures().join("images/a.png");
    let a = a.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["explain", a, "-m", "/no/such/model.safetensors"],
            "/no/such/model.safetensors",
        ),
        (
            &["explain", a, "-m", &model(), "--layer", "layer9"],
            "unknown layer `layer9`",
        ),
        (
            &["explain", a, "-m", &model(), "--layer", "layer3,layer9"],
            "unknown layer `layer9`",
        ),
        (
            &["explain", a, "-m", &model(), "--layer", "layer3,"],
            "an empty name",
        ),
        (
            &["explain", a, "-m", &model(), "--layer", "layer4, layer4"],
            "`layer4` is listed twice",
        ),
        (
            &["explain", a, "-m", &model(), "--layer", "fc"],
            "layer `fc` cannot be a Grad-CAM target",
        ),
        (
            &["explain", a, "-m", &model(), "--class", "10"],
            "class 10 is out of range",
        ),
        (
            &["explain", a, "-m", &model(), "--arch", "vgg16"],
            "features.0.weight",
        ),
        (&["explain", a, "-m", a], "not a valid safetensors file"),
    ];
    for (args, needle) in cases {
        let o = gradcam(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A file that is not there: named, and the reason said once (not again as its source).
    let o = gradcam(&["eval", "/no/such/manifest.csv"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/no/such/manifest.csv") && err.matches("no such file").count() == 1,
        "{err}"
    );
    let o = gradcam(&["explain", a, "-m", &model(), "--size", "huge"]);
    assert!(!o.status.success() && stderr(&o).contains("native"));

    // Settings refused before any work: a label on a model without labels, an output folder
    // that is a file, eval's meaningless numbers.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    let manifest = dir.path().join("m.csv");
    std::fs::write(&manifest, format!("{a},0,0,0,4,4\n")).unwrap();
    let manifest = manifest.to_str().unwrap();
    let m = model();
    let vgg = fixtures()
        .join("vgg_bn_tiny.safetensors")
        .display()
        .to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["explain", a, "-m", &m, "--class", "star"],
            "--class `star` is not a class index (the model has no labels)",
        ),
        (
            &["explain", a, "-m", &m, "-o", file.to_str().unwrap()],
            "a file, not a folder",
        ),
        // A size every image is resized to and the network cannot take.
        (
            &["explain", a, "-m", &vgg, "--size", "31"],
            "--size 31: input shape [1, 3, 31, 31] does not fit: the image is too small for \
             features.28",
        ),
        (
            &["eval", manifest, "-m", &m, "--loc-threshold", "2"],
            "--loc-threshold 2: a fraction",
        ),
        (
            &["eval", manifest, "-m", &m, "--loc-threshold", "NaN"],
            "--loc-threshold NaN",
        ),
        (
            &[
                "eval",
                manifest,
                "-m",
                &m,
                "--size",
                "64",
                "--occlusion-patch",
                "64",
            ],
            "covers the whole 64×64 input",
        ),
        (
            &[
                "eval",
                manifest,
                "-m",
                &m,
                "--size",
                "8",
                "--occlusion-patch",
                "0",
                "--curve-steps",
                "65",
            ],
            "more than the 64 pixels",
        ),
        (
            &["eval", manifest, "-m", &m, "--forward-batch", "0"],
            "0 is not in 1..=4096",
        ),
        (
            &["dff", a, "-m", &m, "--batch", "0"],
            "0 is not in 1..=4096",
        ),
        (
            &["eval", manifest, "-m", &m, "--no-road", "--road-noise", "5"],
            "cannot be used with",
        ),
        // A target layer of one position (ResNet's avgpool), alone: all-zero maps.
        (
            &["explain", a, "--layer", "avgpool"],
            "its activation is 1×1 at a 128×128 input",
        ),
        (
            &["eval", manifest, "--layer", "avgpool"],
            "its activation is 1×1",
        ),
        // A report over its own manifest.
        (
            &["eval", manifest, "-m", &m, "-o", manifest],
            "that is the input",
        ),
    ];
    for (args, needle) in cases {
        let o = gradcam(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Inputs whose names would share outputs (`x-2.png` beside `x.png` and `x.jpg`, `run.png`
/// beside run.json) each get their own; a JPEG cut short fails alone; classes go by label.
#[test]
fn odd_names_keep_their_outputs_apart() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    let star = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/images/star.png");
    for f in ["x-2.png", "x.png", "run.png"] {
        std::fs::copy(&star, imgs.join(f)).unwrap();
    }
    let rgb = image::open(&star).unwrap().to_rgb8();
    rgb.save(imgs.join("x.jpg")).unwrap();
    let jpeg = std::fs::read(imgs.join("x.jpg")).unwrap();
    std::fs::write(imgs.join("cut.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    let out = dir.path().join("out");
    let o = gradcam(&[
        "explain",
        imgs.to_str().unwrap(),
        "--class",
        "Circle",
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "the cut JPEG failed: {err}");
    assert!(
        err.contains("cut.jpg") && err.contains("truncated JPEG"),
        "{err}"
    );
    let mut images = Vec::new();
    for stem in ["x-2", "x", "x-3", "run-2"] {
        let js: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(js["label"], "circle", "{stem}: {js}");
        images.push(js["image"].as_str().unwrap().to_string());
    }
    images.sort();
    let want: Vec<String> = ["run.png", "x-2.png", "x.jpg", "x.png"]
        .iter()
        .map(|f| imgs.join(f).display().to_string())
        .collect();
    assert_eq!(images, want);
    // run.json is still the run's settings.
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert!(settings.get("method").is_some(), "{settings}");
    // A --resume over a summary that is not one is refused, not a silent fresh start.
    std::fs::write(out.join("summary.csv"), b"\xff\xfe not a summary").unwrap();
    let o = gradcam(&[
        "explain",
        imgs.to_str().unwrap(),
        "--class",
        "Circle",
        "-o",
        out.to_str().unwrap(),
        "--resume",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("summary.csv"), "{}", stderr(&o));
}

/// Overlapping inputs (a folder, a folder inside it, a file inside that): a file is explained
/// each time it is given, under its path below the first folder given that holds it, then
/// `-2`, `-3`; a note says so, as summary.csv has a row each time. Inputs that do not
/// overlap get no note.
#[test]
fn overlapping_inputs_are_explained_each_time_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cats) = (dir.path().join("data"), dir.path().join("data/cats"));
    std::fs::create_dir_all(&cats).unwrap();
    let star = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/images/star.png");
    std::fs::copy(&star, cats.join("1.png")).unwrap();
    std::fs::copy(&star, data.join("2.png")).unwrap();
    let out = dir.path().join("out");
    let one = cats.join("1.png");
    let args = [
        data.to_str().unwrap(),
        cats.to_str().unwrap(),
        one.to_str().unwrap(),
    ];
    let o = gradcam(&[
        "explain",
        args[0],
        args[1],
        args[2],
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("note: 2 input(s) are files already given (the first: ")
            && err.contains("1.png)"),
        "{err}"
    );
    for stem in ["2", "cats/1", "cats/1-2", "cats/1-3"] {
        assert!(out.join(format!("{stem}.json")).is_file(), "{stem}");
    }
    let rows = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(
        rows.lines().filter(|l| l.contains("1.png,ok")).count(),
        3,
        "{rows}"
    );
    // Two folders side by side: no note.
    let dogs = dir.path().join("dogs");
    std::fs::create_dir(&dogs).unwrap();
    std::fs::copy(&star, dogs.join("1.png")).unwrap();
    let out2 = dir.path().join("out2");
    let o = gradcam(&[
        "explain",
        args[1],
        dogs.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("already given"), "{}", stderr(&o));
}

/// With the images' own folder as the output folder, files no run wrote there are never
/// written over: a picture named `b.overlay.png` is an input, so `b.png` writes `b-2.*`; an
/// annotation tool's `c.json` beside `c.png` refuses the run before it writes anything.
/// Where nothing is in the way, the outputs go beside the images, and the next run skips
/// them as a run's outputs.
#[test]
fn outputs_never_write_over_files_no_run_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/images");
    std::fs::copy(demo.join("star.png"), imgs.join("b.png")).unwrap();
    std::fs::copy(demo.join("ring.png"), imgs.join("b.overlay.png")).unwrap();
    std::fs::copy(demo.join("star.png"), imgs.join("c.png")).unwrap();
    std::fs::write(imgs.join("c.json"), "{\"annotation\": 1}").unwrap();
    let listing = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = (std::fs::read_dir(d).unwrap())
            .map(|e| e.unwrap().path())
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = listing(&imgs);
    let dir_arg = imgs.to_str().unwrap();
    let o = gradcam(&["explain", dir_arg, "-o", dir_arg]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("would write over (c.json)") && err.contains("run.json"),
        "{err}"
    );
    assert_eq!(listing(&imgs), before, "a refused run wrote nothing");

    // Nothing in the way: outputs beside the images, and a second run explains the same
    // three images (not the first run's overlays), b.overlay.png among them.
    std::fs::remove_file(imgs.join("c.json")).unwrap();
    std::fs::rename(imgs.join("b.png"), imgs.join("a.png")).unwrap();
    for run in 0..2 {
        let o = gradcam(&["explain", dir_arg, "-o", dir_arg, "--outputs", "overlay"]);
        assert!(o.status.success(), "run {run}: {}", stderr(&o));
        let csv = std::fs::read_to_string(imgs.join("summary.csv")).unwrap();
        let mut stems: Vec<&str> = (csv.lines().skip(1))
            .map(|l| l.rsplit(',').next().unwrap())
            .collect();
        stems.sort();
        assert_eq!(stems, ["a", "b.overlay", "c"], "run {run}: {csv}");
    }
    // Once a run has written there, a picture added under an output's name (`d.overlay.png`
    // beside a new `d.png`; no summary lists `d`) is an input, and `d.png` writes `d-2.*`
    // rather than over it (it used to).
    std::fs::copy(demo.join("star.png"), imgs.join("d.png")).unwrap();
    std::fs::copy(demo.join("ring.png"), imgs.join("d.overlay.png")).unwrap();
    for run in 0..2 {
        let o = gradcam(&["explain", dir_arg, "-o", dir_arg, "--outputs", "overlay"]);
        assert!(o.status.success(), "run {run}: {}", stderr(&o));
        assert_eq!(
            std::fs::read(imgs.join("d.overlay.png")).unwrap(),
            std::fs::read(demo.join("ring.png")).unwrap(),
            "run {run}"
        );
        let csv = std::fs::read_to_string(imgs.join("summary.csv")).unwrap();
        let mut stems: Vec<&str> = (csv.lines().skip(1))
            .map(|l| l.rsplit(',').next().unwrap())
            .collect();
        stems.sort();
        assert_eq!(
            stems,
            ["a", "b.overlay", "c", "d-2", "d.overlay"],
            "run {run}: {csv}"
        );
        assert!(imgs.join("d-2.overlay.png").is_file(), "run {run}");
    }
}

/// File names that are not UTF-8 (Latin-1 `café.png`, `cafè.png`: one lossy text) are
/// written with `\xNN` escapes in summary.csv and the JSON, so they stay apart, and are found
/// again by `--resume`, a class list and `summarize --groups`.
#[cfg(unix)]
#[test]
fn names_that_are_not_utf8_stay_apart_and_are_found_again() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/images");
    let e = imgs.join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    let f = imgs.join(std::ffi::OsStr::from_bytes(b"caf\xe8.png"));
    std::fs::copy(demo.join("star.png"), &e).unwrap();
    std::fs::copy(demo.join("ring.png"), &f).unwrap();
    // The class list names them as summary.csv does: relative to its folder, escaped.
    let list = dir.path().join("classes.csv");
    std::fs::write(&list, "imgs/caf\\xE9.png,Star\nimgs/caf\\xE8.png,Ring\n").unwrap();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            imgs.to_str().unwrap(),
            "--classes",
            list.to_str().unwrap(),
            "--outputs",
            "cam,json",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        gradcam(&args)
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let want = |name: &str, label: &str| {
        let image = format!("{}/{name}", imgs.display());
        assert!(
            (csv.lines()).any(|l| l.starts_with(&format!("{image},ok,")) && l.contains(label)),
            "{image} {label}: {csv}"
        );
        image
    };
    let (te, tf) = (
        want("caf\\xE9.png", ",star,"),
        want("caf\\xE8.png", ",ring,"),
    );
    let mut images = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") && !p.ends_with("run.json") {
            let js: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            images.push(js["image"].as_str().unwrap().to_string());
        }
    }
    images.sort();
    let mut both = vec![te.clone(), tf.clone()];
    both.sort();
    assert_eq!(images, both);
    // Both are found again by their rows.
    let o = run(&["--resume"]);
    assert!(
        stderr(&o).contains("nothing left to explain: 2 images were done before"),
        "{}",
        stderr(&o)
    );
    // Groups named by the escaped paths.
    let groups = dir.path().join("groups.csv");
    std::fs::write(&groups, "imgs/caf\\xE9.png,one\nimgs/caf\\xE8.png,two\n").unwrap();
    let o = gradcam(&[
        "summarize",
        out.to_str().unwrap(),
        "--groups",
        groups.to_str().unwrap(),
    ]);
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        (table.lines()).any(|l| l.starts_with("one "))
            && table.lines().any(|l| l.starts_with("two ")),
        "{table}"
    );
}

#[test]
fn layers_lists_module_paths_with_shapes() {
    let o = gradcam(&[
        "layers",
        fixtures().join("vgg_bn_tiny.safetensors").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("default Grad-CAM layer: features.27"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("features.27 ") && l.contains("[32, 14, 14]")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("features.28 ") && l.contains("[32, 7, 7]")),
        "{text}"
    );
    // `--model`, as every other command takes it, lists the same.
    let vgg = fixtures().join("vgg_bn_tiny.safetensors");
    let flag = gradcam(&["layers", "--model", vgg.to_str().unwrap()]);
    assert!(flag.status.success(), "{}", stderr(&flag));
    assert_eq!(flag.stdout, o.stdout);
}

#[test]
fn methods_and_guided_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let a = fixtures().join("images/b.png");
    let methods = [
        "gradcam",
        "gradcam++",
        "xgradcam",
        "hirescam",
        "layercam",
        "scorecam",
        "eigencam",
        "eigengradcam",
        "kpcacam",
        "fem",
        "shapleycam",
        "segeigencam",
    ];
    let runs = (methods.iter().map(|m| (*m, "")))
        .chain([("gradcam", "--eigen-smooth"), ("gradcam", "--aug-smooth")]);
    for (m, flag) in runs {
        let out = dir.path().join(format!("{m}{flag}"));
        let mut args = vec![
            "explain",
            a.to_str().unwrap(),
            "--method",
            m,
            "--guided",
            "--size",
            "64",
            "-o",
            out.to_str().unwrap(),
        ];
        if !flag.is_empty() {
            args.push(flag);
        }
        let model = model();
        args.extend(["-m", &model]);
        let o = gradcam(&args);
        assert!(o.status.success(), "{m}: {}", stderr(&o));
        let js: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("b.json")).unwrap()).unwrap();
        assert_eq!(js["method"], m);
        let eigen = flag == "--eigen-smooth" || m.starts_with("eigen") || m == "segeigencam";
        assert_eq!(js["eigen_smooth"], eigen, "{m}");
        assert_eq!(js["aug_smooth"], flag == "--aug-smooth", "{m}");
        let settings = std::fs::read_to_string(out.join("run.json")).unwrap();
        for (key, on) in [
            ("eigen_smooth", "--eigen-smooth"),
            ("aug_smooth", "--aug-smooth"),
        ] {
            assert_eq!(settings.contains(key), flag == on, "{m}{flag}: {settings}");
        }
        for f in ["b.guided.png", "b.guided_gradcam.png"] {
            let img = image::open(out.join(f)).unwrap();
            assert_eq!(
                (img.width(), img.height()),
                (64, 64),
                "{m}: {f} at the input size"
            );
        }
    }
    // The principal component is not the channel sum, nor one copy the mean of six: the flags
    // reach the maps.
    let npy = |d: &str| std::fs::read(dir.path().join(d).join("b.cam.npy")).unwrap();
    assert_ne!(npy("gradcam"), npy("gradcam--eigen-smooth"));
    assert_ne!(npy("gradcam"), npy("gradcam--aug-smooth"));
    let o = gradcam(&[
        "explain",
        a.to_str().unwrap(),
        "-m",
        &model(),
        "--method",
        "kpcacam",
        "--eigen-smooth",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--eigen-smooth"), "{}", stderr(&o));
    for m in ["scorecam", "eigencam", "kpcacam"] {
        let o = gradcam(&[
            "explain",
            a.to_str().unwrap(),
            "-m",
            &model(),
            "--method",
            m,
            "--counterfactual",
        ]);
        assert_eq!(o.status.code(), Some(2), "{m}");
        assert!(stderr(&o).contains("counterfactual"), "{m}");
    }
    let o = gradcam(&[
        "explain",
        a.to_str().unwrap(),
        "-m",
        &model(),
        "--method",
        "nonsense",
    ]);
    assert!(!o.status.success() && stderr(&o).contains("gradcam++"));
}

/// `--finer`: the JSON names the compared classes (the nearest logits to the explained
/// class's, at the ranks asked for), run.json records the settings, the map differs from
/// plain Grad-CAM's; clashing options and impossible ranks exit 2 before any image.
#[test]
fn finer_cam_reports_its_compared_classes() {
    let dir = tempfile::tempdir().unwrap();
    let a = fixtures().join("images/b.png");
    let model = model();
    let run = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec!["explain", a.to_str().unwrap(), "-m", &model, "--size", "64"];
        args.extend(["-o", out.to_str().unwrap()]);
        args.extend(extra);
        (gradcam(&args), out)
    };
    let (o, plain) = run("plain", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, finer) = run(
        "finer",
        &["--finer", "--finer-ranks", "1,3", "--finer-alpha", "0.5"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(finer.join("b.json")).unwrap()).unwrap();
    assert_eq!(js["finer"]["alpha"], 0.5);
    assert_eq!(js["finer"]["ranks"], serde_json::json!([1, 3]));
    // The compared classes by hand: the others sorted by the gap of their logit.
    let plain_js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plain.join("b.json")).unwrap()).unwrap();
    let top5 = plain_js["top5"].as_array().unwrap();
    let main = js["class"].as_u64().unwrap();
    assert_eq!(main, top5[0]["class"].as_u64().unwrap());
    let logit = |e: &serde_json::Value| e["logit"].as_f64().unwrap();
    let mut others: Vec<&serde_json::Value> = top5[1..].iter().collect();
    others.sort_by(|x, y| (logit(&top5[0]) - logit(x)).total_cmp(&(logit(&top5[0]) - logit(y))));
    let compared: Vec<u64> = (js["finer"]["compared"].as_array().unwrap().iter())
        .map(|c| c["class"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = [0, 2]
        .iter()
        .map(|&r| others[r]["class"].as_u64().unwrap())
        .collect();
    assert_eq!(compared, want);
    let settings = std::fs::read_to_string(finer.join("run.json")).unwrap();
    assert!(settings.contains("\"finer\""), "{settings}");
    let npy = |d: &std::path::Path| std::fs::read(d.join("b.cam.npy")).unwrap();
    assert_ne!(npy(&plain), npy(&finer));
    for (extra, what) in [
        (&["--finer", "--method", "scorecam"][..], "scorecam"),
        (&["--finer", "--counterfactual"][..], "--counterfactual"),
        (
            &["--finer", "--finer-ranks", "10"][..],
            "no class to compare",
        ),
        (&["--finer", "--finer-ranks", "0,1"][..], "from 1"),
    ] {
        let (o, _) = run("bad", extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        assert!(stderr(&o).contains(what), "{extra:?}: {}", stderr(&o));
    }
    let (o, _) = run("bad", &["--finer-alpha", "2"]);
    assert!(!o.status.success() && stderr(&o).contains("--finer"));
}

/// `--target` and ShapleyCAM, FEM's `--fem-k`: what reaches the JSON and run.json, that the
/// settings change the maps, and the combinations refused up front.
#[test]
fn targets_shapley_cam_and_fem_settings() {
    let dir = tempfile::tempdir().unwrap();
    let a = fixtures().join("images/b.png");
    let model = model();
    let run = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec!["explain", a.to_str().unwrap(), "-m", &model, "--size", "64"];
        args.extend(["-o", out.to_str().unwrap()]);
        args.extend(extra);
        (gradcam(&args), out)
    };
    let json = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("b.json")).unwrap()).unwrap()
    };
    let npy = |d: &Path| std::fs::read(d.join("b.cam.npy")).unwrap();
    let (o, plain) = run("plain", &["--method", "shapleycam"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&plain)["target"], "logit");
    let (o, rest) = run("rest", &["--method", "shapleycam", "--target", "rest"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&rest)["target"], "rest");
    // Its Hessian term: Grad-CAM under the same score differs.
    let (o, gc_rest) = run("gradcam-rest", &["--target", "rest"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(
        npy(&gc_rest),
        npy(&rest),
        "ReST's Hessian term changed nothing"
    );
    let settings = std::fs::read_to_string(rest.join("run.json")).unwrap();
    assert!(settings.contains("\"target\": \"rest\""), "{settings}");
    // ShapleyCAM under the logit is Grad-CAM.
    let (o, gc) = run("gradcam", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(npy(&plain), npy(&gc));
    let (o, fem) = run("fem", &["--method", "fem", "--fem-k", "0.1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // As given, not as the f32 it is stored in (0.10000000149011612).
    assert_eq!(json(&fem)["fem_k"], 0.1);
    // FEM explains no class score: no target in its report.
    assert!(json(&fem)["target"].is_null(), "{}", json(&fem));
    let (o, fem2) = run("fem2", &["--method", "fem"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(npy(&fem), npy(&fem2), "--fem-k changed nothing");
    // SESS over Grad-CAM: another map, recorded.
    let (o, sess) = run("sess", &["--sess", "--sess-scales", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&sess)["sess"], serde_json::json!({"scales": 4}));
    assert_ne!(npy(&sess), npy(&gc));
    // KPCA-CAM's kernel.
    let (o, rbf) = run("rbf", &["--method", "kpcacam", "--kpca-kernel", "rbf"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        json(&rbf)["kpca"],
        serde_json::json!({"kernel": "rbf", "gamma": null})
    );
    let (o, sigmoid) = run("sigmoid", &["--method", "kpcacam"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(npy(&rbf), npy(&sigmoid));
    // Several layers multiplied (RefineCAM) instead of averaged.
    let (o, mean) = run("mean", &["--layer", "layer3,layer4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, product) = run(
        "product",
        &["--layer", "layer3,layer4", "--layer-fusion", "product"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&product)["layer_fusion"], "product");
    assert_eq!(json(&mean)["layer_fusion"], "mean");
    assert_ne!(npy(&mean), npy(&product));
    let settings = std::fs::read_to_string(product.join("run.json")).unwrap();
    assert!(
        settings.contains("\"layer_fusion\": \"product\""),
        "{settings}"
    );
    for (extra, what) in [
        (
            &["--method", "eigencam", "--target", "softmax"][..],
            "eigencam uses none",
        ),
        (&["--finer", "--target", "rest"][..], "give one"),
        (&["--fem-k", "1"][..], "--method fem"),
        (&["--method", "fem", "--eigen-smooth"][..], "--eigen-smooth"),
        (&["--target", "probability"][..], "softmax"),
        (&["--layer-fusion", "max"][..], "mean or product"),
        (&["--sess", "--guided"][..], "--sess does not combine"),
        (&["--sess-scales", "3"][..], "--sess"),
        (
            &["--method", "segeigencam", "--counterfactual"][..],
            "magnitude",
        ),
        (
            &["--method", "fullgrad", "--counterfactual"][..],
            "fullgrad uses only their magnitude",
        ),
        (&["--kpca-kernel", "rbf"][..], "--method kpcacam"),
        (
            &["--method", "kpcacam", "--kpca-kernel", "laplace"][..],
            "choose sigmoid",
        ),
        (
            &[
                "--method",
                "kpcacam",
                "--kpca-kernel",
                "cosine",
                "--kpca-gamma",
                "1",
            ][..],
            "no gamma",
        ),
    ] {
        let (o, _) = run("bad", extra);
        assert!(!o.status.success(), "{extra:?}");
        assert!(stderr(&o).contains(what), "{extra:?}: {}", stderr(&o));
    }
}

#[test]
fn the_bundled_demo_model_is_the_default_and_names_classes() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/images");
    let out = dir.path().join("o");
    let o = gradcam(&[
        "explain",
        demo.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("bundled demo model"));
    for shape in [
        "circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon",
    ] {
        let js: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{shape}.json"))).unwrap(),
        )
        .unwrap();
        // The model's metadata gives its input size (128) and class names; it is right on its demos.
        assert_eq!(js["input_size"], serde_json::json!([128, 128]));
        assert_eq!(js["label"], shape, "{shape}: predicted {}", js["label"]);
    }
}

#[test]
fn eval_prints_a_table_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let heldout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/heldout");
    // The first 8 rows keep the test quick.
    let rows: Vec<String> = std::fs::read_to_string(heldout.join("manifest.csv"))
        .unwrap()
        .lines()
        .take(9)
        .map(String::from)
        .collect();
    let manifest = dir.path().join("m.csv");
    let rows: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.clone()
            } else {
                format!("{}/{l}", heldout.display())
            }
        })
        .collect();
    std::fs::write(&manifest, rows.join("\n") + "\n").unwrap();
    let report = dir.path().join("r.json");
    let o = gradcam(&[
        "eval",
        manifest.to_str().unwrap(),
        "--methods",
        "gradcam,layercam",
        "--curve-steps",
        "4",
        "--occlusion-patch",
        "32",
        "-o",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("gradcam") && table.contains("layercam") && table.contains("centre-prior"),
        "{table}"
    );
    let js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(js["images"].as_array().unwrap().len(), 8);
    assert_eq!(js["aggregate"].as_array().unwrap().len(), 3);
    assert_eq!(js["target"], "logit");
    // ROAD by default: its settings recorded, a combined score per method in the table.
    assert_eq!(js["road"]["percentiles"].as_array().unwrap().len(), 9);
    assert!(js["aggregate"][0]["mean_road_combined"].is_number(), "{js}");
    assert!(js["images"][0]["scores"][0]["road_morf"].is_number());
    assert!(table.lines().next().unwrap().ends_with("road"), "{table}");
    assert_eq!(js["failed"].as_array().unwrap().len(), 0);
    // An image that cannot be evaluated: exit 1, the others' scores, and the report says
    // which one its aggregate leaves out.
    let with_missing = dir.path().join("m2.csv");
    std::fs::write(
        &with_missing,
        rows[..3].join("\n") + "\ngone.png,0,1,1,5,5\n",
    )
    .unwrap();
    let o = gradcam(&[
        "eval",
        with_missing.to_str().unwrap(),
        "--methods",
        "gradcam",
        "--no-road",
        "--curve-steps",
        "0",
        "--occlusion-patch",
        "0",
        "-o",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("gone.png"), "{}", stderr(&o));
    let js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(js["images"].as_array().unwrap().len(), 2);
    let failed = js["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["image"].as_str().unwrap().ends_with("gone.png"),
        "{js}"
    );
    // A percentile out of range is refused before any work, naming it.
    let o = gradcam(&[
        "eval",
        manifest.to_str().unwrap(),
        "--road-percentiles",
        "10,100",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("ROAD percentile 100"), "{}", stderr(&o));
    // Under ReST ShapleyCAM is scored beside Grad-CAM; a classless method is refused.
    let o = gradcam(&[
        "eval",
        manifest.to_str().unwrap(),
        "--methods",
        "gradcam,shapleycam",
        "--target",
        "rest",
        "--curve-steps",
        "0",
        "--occlusion-patch",
        "0",
        "--no-road",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("shapleycam"));
    let o = gradcam(&[
        "eval",
        manifest.to_str().unwrap(),
        "--methods",
        "eigencam",
        "--target",
        "rest",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("uses none"), "{}", stderr(&o));
    let o = gradcam(&["eval", "/no/such/manifest.csv"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn selftest_passes_on_the_cpu_and_on_the_emulated_kernels() {
    let fx = fixtures();
    for device in ["cpu", "emu"] {
        let o = gradcam(&[
            "selftest",
            "--device",
            device,
            "--fixtures",
            fx.to_str().unwrap(),
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{device}: {out}{}", stderr(&o));
        assert!(
            out.contains("conv2d_bwd_data") && out.contains("score_cam_inputs"),
            "{out}"
        );
        // The 21 pytorch-grad-cam cases end to end, one row each.
        assert!(
            out.lines().filter(|l| l.starts_with("parity ")).count() >= 20,
            "{out}"
        );
        assert!(!out.contains("MISMATCH"));
    }
    let o = gradcam(&["selftest", "--fixtures", "/no/such/dir"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no manifest.json"), "{}", stderr(&o));
}

/// `--device`: auto falls back to the CPU with a one-line notice where there is no GPU;
/// cuda then fails with exit 2 naming what is missing; emu (the CUDA kernels and the device
/// preprocess/overlay path on the CPU emulator) agrees with the CPU.
#[test]
fn device_choice_and_fallback() {
    let gpu = gradcam::backend::gpu::probe(0).is_ok();
    let dir = tempfile::tempdir().unwrap();
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/images/star.png");
    let img = img.to_str().unwrap();
    let run_at = |device: &str, precision: &str| {
        let out = dir.path().join(format!("{device}-{precision}"));
        let o = gradcam(&[
            "explain",
            img,
            "--device",
            device,
            "--precision",
            precision,
            "-o",
            out.to_str().unwrap(),
        ]);
        (o, out)
    };
    let run = |device: &str| run_at(device, "f32");
    let (o, _) = run("auto");
    assert!(o.status.success(), "{}", stderr(&o));
    if !gpu {
        let notes: Vec<_> = stderr(&o)
            .lines()
            .filter(|l| l.contains("running on the CPU"))
            .map(String::from)
            .collect();
        assert_eq!(notes.len(), 1, "{}", stderr(&o));
        assert!(notes[0].contains("no GPU"), "{}", notes[0]);
    }
    let (o, _) = run("cuda");
    if gpu {
        assert!(o.status.success(), "{}", stderr(&o));
    } else {
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("--device cuda") && e.contains("libcuda") && e.contains("looked for"),
            "{e}"
        );
    }
    let (o, cpu) = run("cpu");
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, emu) = run("emu");
    assert!(o.status.success(), "{}", stderr(&o));
    let json = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("star.json")).unwrap()).unwrap()
    };
    let (a, b) = (json(&cpu), json(&emu));
    assert_eq!(a["class"], b["class"]);
    let (pa, pb) = (
        a["probability"].as_f64().unwrap(),
        b["probability"].as_f64().unwrap(),
    );
    assert!((pa - pb).abs() < 1e-4, "{pa} vs {pb}");
    // f16 tensors and tensor cores: the same class, the probability within 1e-2.
    let (o, f16) = run_at("emu", "f16");
    assert!(o.status.success(), "{}", stderr(&o));
    let c = json(&f16);
    let backend = c["backend"].as_str().unwrap_or_default();
    assert!(
        backend.contains("emulator") && backend.contains("f16"),
        "{backend}"
    );
    assert_eq!(a["class"], c["class"]);
    let pc = c["probability"].as_f64().unwrap();
    assert!((pa - pc).abs() < 1e-2, "{pa} vs f16 {pc}");
    // The CPU's bf16 convolutions (AMX), where it has them, else f32 with a note saying why:
    // the same class, the probability within 1e-2. TF32 is a GPU's: a note, f32.
    let (o, bf16) = run_at("cpu", "bf16");
    assert!(o.status.success(), "{}", stderr(&o));
    let d = json(&bf16);
    let backend = d["backend"].as_str().unwrap_or_default();
    match gradcam::backend::CpuBackend::bf16_available() {
        true => assert!(backend.contains("bf16 convolutions on AMX"), "{backend}"),
        false => assert!(
            stderr(&o).contains("no bf16 convolutions on the CPU"),
            "{}",
            stderr(&o)
        ),
    }
    assert_eq!(a["class"], d["class"]);
    let pd = d["probability"].as_f64().unwrap();
    assert!((pa - pd).abs() < 1e-2, "{pa} vs cpu bf16 {pd}");
    let (o, _) = run_at("cpu", "tf32");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--precision tf32 applies on a GPU"),
        "{}",
        stderr(&o)
    );
    // Without overlays the device draws none; the map and the report are the same.
    let bare = dir.path().join("emu-bare");
    let o = gradcam(&[
        "explain",
        img,
        "--device",
        "emu",
        "--precision",
        "f32",
        "--outputs",
        "cam,json",
        "-o",
        bare.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!bare.join("star.overlay.png").exists());
    let npy = |d: &Path| std::fs::read(d.join("star.cam.npy")).unwrap();
    assert_eq!(npy(&bare), npy(&emu));
    let d = json(&bare);
    assert_eq!(
        (&d["probability"], &d["image_size"]),
        (&b["probability"], &b["image_size"])
    );
}

/// `bench --images-dir` over a folder with an undecodable file benches the rest, names the
/// file and exits 1 (as `explain` does); a folder where nothing decodes exits 2.
#[test]
fn bench_leaves_out_undecodable_files() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for f in ["a.png", "b.png"] {
        std::fs::copy(fixtures().join("images").join(f), imgs.join(f)).unwrap();
    }
    std::fs::write(imgs.join("broken.png"), b"definitely not a png").unwrap();
    let bench = |folder: &Path| {
        gradcam(&[
            "bench",
            "--model",
            &model(),
            "--images-dir",
            folder.to_str().unwrap(),
            "--batch",
            "2",
        ])
    };
    let o = bench(&imgs);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        out.contains("| 2 images") && out.contains("images/s"),
        "{out}"
    );
    assert!(
        err.contains("broken.png") && !err.contains("a.png"),
        "{err}"
    );

    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("broken.png"), b"definitely not a png").unwrap();
    let o = bench(&bad);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("none of its 1 files decodes"), "{err}");
}

/// `bench --method --aug-smooth`: the method and the smoothing reach the run and its header.
#[test]
fn bench_takes_the_method_and_smoothing() {
    let o = gradcam(&[
        "bench",
        "--model",
        &model(),
        "--images",
        "2",
        "--size",
        "64",
        "--method",
        "eigencam",
        "--aug-smooth",
        "--layer",
        "layer3,layer4",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("| layer layer3,layer4 | eigencam (aug-smooth) |") && out.contains("images/s"),
        "{out}"
    );
    let o = gradcam(&[
        "bench",
        "--model",
        &model(),
        "--images",
        "2",
        "--size",
        "64",
        "--sess",
        "--sess-scales",
        "2",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("gradcam under SESS (2 scales)"), "{out}");
}

#[test]
fn resume_goes_on_from_what_a_stopped_run_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for f in ["a.png", "b.png", "c.png", "d.png"] {
        std::fs::copy(fixtures().join("images").join(f), imgs.join(f)).unwrap();
    }
    let out = dir.path().join("out");
    let m = model();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            imgs.to_str().unwrap(),
            "-m",
            &m,
            "--batch",
            "2",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        gradcam(&args)
    };
    let read = |f: &str| std::fs::read(out.join(f)).unwrap();
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let full = String::from_utf8(read("summary.csv")).unwrap();
    let npy_c = read("c.cam.npy");
    let row = |stem: &str| {
        (full.lines())
            .find(|l| l.ends_with(&format!(",{stem}")))
            .unwrap()
            .to_string()
    };

    // As a run stopped part way leaves it: rows in the order images finished, d's not yet
    // written, b failed, c's map lost; a's report marked to see that it is not rewritten.
    let header = full.lines().next().unwrap();
    let b_failed = format!(
        "{},error,out of memory,,,,,,,,,,,,,",
        imgs.join("b.png").display()
    );
    std::fs::write(
        out.join("summary.csv"),
        [header, &row("c"), &row("a"), &b_failed].join("\n") + "\n",
    )
    .unwrap();
    std::fs::remove_file(out.join("c.cam.npy")).unwrap();
    // (A JSON object still: garbage under a kept file's name is explained again.)
    std::fs::write(out.join("a.json"), "{\"class\": 0, \"kept\": true}").unwrap();
    let o = run(&["--resume"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("1 of 4 images were done before and are kept"),
        "{err}"
    );
    assert_eq!(
        read("a.json"),
        b"{\"class\": 0, \"kept\": true}",
        "a was explained again"
    );
    assert_eq!(read("c.cam.npy"), npy_c, "c's map redone as before");
    // The whole summary again, in input order, as the uninterrupted run wrote it.
    assert_eq!(String::from_utf8(read("summary.csv")).unwrap(), full);

    let o = run(&["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nothing left to explain: 4 images were done before"),
        "{}",
        stderr(&o)
    );
    assert_eq!(String::from_utf8(read("summary.csv")).unwrap(), full);

    // An overlay replaced by hand with something that is no PNG: that image is redone.
    let overlay_b = read("b.overlay.png");
    std::fs::write(out.join("b.overlay.png"), "not a picture").unwrap();
    let o = run(&["--resume"]);
    assert!(
        stderr(&o).contains("3 of 4 images were done before and are kept"),
        "{}",
        stderr(&o)
    );
    assert_eq!(read("b.overlay.png"), overlay_b);
    assert_eq!(String::from_utf8(read("summary.csv")).unwrap(), full);
    // A whole map of another size (copied from a run at another --size, or edited by hand):
    // redone at this run's size, not kept beside a report that contradicts it.
    gradcam::npy::write_f32(&out.join("c.cam.npy"), &[7, 7], &[0.5; 49]).unwrap();
    let o = run(&["--resume"]);
    assert!(
        stderr(&o).contains("3 of 4 images were done before and are kept"),
        "{}",
        stderr(&o)
    );
    assert_eq!(read("c.cam.npy"), npy_c);

    // Other settings: refused before anything is touched.
    let o = run(&["--resume", "--layer", "layer3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("layer was \"layer4\", now \"layer3\""),
        "{}",
        stderr(&o)
    );
    assert_eq!(String::from_utf8(read("summary.csv")).unwrap(), full);
    // The other JPEG decoder gives other pixels: refused too.
    let o = Command::new(env!("CARGO_BIN_EXE_gradcam"))
        .args(["explain", imgs.to_str().unwrap(), "-m", &m, "-o"])
        .args([out.to_str().unwrap(), "--resume"])
        .env("GRADCAM_JPEG_DECODER", "image")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("jpeg_decoder was unset, now \"image\""),
        "{}",
        stderr(&o)
    );

    // Fewer kinds of files: kept without the overlay, even where it is gone; an image
    // explained again (c, its map gone) loses its older overlay, which would otherwise stand
    // beside a newer row.
    std::fs::remove_file(out.join("d.overlay.png")).unwrap();
    std::fs::remove_file(out.join("c.cam.npy")).unwrap();
    let o = run(&["--resume", "--outputs", "cam,json"]);
    assert!(
        stderr(&o).contains("3 of 4 images were done"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("d.overlay.png").exists() && !out.join("c.overlay.png").exists());
    // Then every kind again: run.json still records the overlays, so only the images without
    // one (c and d) are explained.
    let o = run(&["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("2 of 4 images were done before and are kept"),
        "{}",
        stderr(&o)
    );
    assert!(out.join("d.overlay.png").exists() && out.join("c.overlay.png").exists());
    assert_eq!(String::from_utf8(read("summary.csv")).unwrap(), full);
    // A fresh run (no --resume) of fewer kinds records only those: the overlays there may be
    // an older run's, of other settings, so the next --resume explains every image again.
    let o = run(&["--outputs", "cam,json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("wrote no [\".overlay.png\"] files: every image is explained again"),
        "{}",
        stderr(&o)
    );
    assert_eq!(String::from_utf8(read("summary.csv")).unwrap(), full);

    // One of the images, named another way (`./`): it is the same image, so it is kept, and
    // the other images' rows stay in summary.csv (their files are there).
    let dotted = format!("{}/./b.png", imgs.display());
    let o = gradcam(&[
        "explain",
        &dotted,
        "-m",
        &m,
        "-o",
        out.to_str().unwrap(),
        "--resume",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("nothing left to explain: 1 images"), "{err}");
    assert!(err.contains("keeps the rows of 3 earlier images"), "{err}");
    let now = String::from_utf8(read("summary.csv")).unwrap();
    let rows: Vec<&str> = now.lines().collect();
    let b_now = row("b").replacen(&imgs.join("b.png").display().to_string(), &dotted, 1);
    assert_eq!(rows, [header, &b_now, &row("a"), &row("c"), &row("d")]);
}

/// `--resume` with fewer `--outputs` removes, of the kinds it skips, only the older files of
/// images the previous run had (b, explained again), never a file of an image new to the run
/// (c's, somebody's), nor one of a kind gradcam does not write that a run.json names.
#[test]
fn resume_with_fewer_outputs_removes_only_its_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for f in ["a.png", "b.png"] {
        std::fs::copy(fixtures().join("images").join(f), imgs.join(f)).unwrap();
    }
    let out = dir.path().join("out");
    let m = model();
    let run = |extra: &[&str]| {
        let mut args = vec!["explain", imgs.to_str().unwrap(), "-m", &m, "-o"];
        args.push(out.to_str().unwrap());
        args.extend_from_slice(extra);
        gradcam(&args)
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(fixtures().join("images/c.png"), imgs.join("c.png")).unwrap();
    std::fs::write(out.join("c.overlay.png"), "somebody's").unwrap();
    std::fs::write(out.join("b.png"), "somebody's").unwrap();
    std::fs::remove_file(out.join("b.cam.npy")).unwrap();
    // A run.json naming a kind gradcam never writes (edited by hand, another version).
    let settings = out.join("run.json");
    let text = std::fs::read_to_string(&settings).unwrap();
    let text = text.replacen("\".overlay.png\"", "\".overlay.png\", \".png\"", 1);
    std::fs::write(&settings, text).unwrap();
    let o = run(&["--resume", "--outputs", "cam,json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 of 3 images were done"),
        "{}",
        stderr(&o)
    );
    assert!(out.join("a.overlay.png").is_file());
    assert!(
        !out.join("b.overlay.png").exists(),
        "b's older overlay stayed"
    );
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    assert_eq!(read("c.overlay.png"), "somebody's");
    assert_eq!(read("b.png"), "somebody's");
    let recorded = read("run.json");
    assert!(
        recorded.contains("\".overlay.png\"") && !recorded.contains("\".png\""),
        "{recorded}"
    );
}

/// `--colormap` and `--image-weight` reach the overlays (the library's `explain_batch` with
/// the same style gives the same bytes; tests/parity.rs checks that style against
/// pytorch-grad-cam's show_cam_on_image), are recorded for `--resume`, and bad values are
/// refused by name.
#[test]
fn overlay_style_flags() {
    use gradcam::cam::{Colormap, OverlayStyle};
    let dir = tempfile::tempdir().unwrap();
    let img_path = fixtures().join("images/b.png");
    let out = dir.path().join("out");
    let m = model();
    let run = |extra: &[&str]| {
        let mut args = vec!["explain", img_path.to_str().unwrap(), "-m", &m, "-o"];
        args.extend([out.to_str().unwrap(), "--outputs", "overlay"]);
        args.extend_from_slice(extra);
        gradcam(&args)
    };
    let o = run(&["--colormap", "Turbo", "--image-weight", "0.3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = gradcam::image::load_rgb8(&out.join("b.overlay.png")).unwrap();
    let net = gradcam::model::Network::new(
        gradcam::model::load(&m, None).unwrap(),
        gradcam::backend::CpuBackend::fast(),
    )
    .unwrap();
    let img = gradcam::image::load_rgb8(&img_path).unwrap();
    let cfg = gradcam::explain::ExplainConfig {
        overlay_style: OverlayStyle::new(Colormap::by_name("turbo").unwrap(), 0.3).unwrap(),
        ..Default::default()
    };
    let mut t = gradcam::explain::Timings::default();
    let want = gradcam::explain::explain_batch(&net, &[&img], &cfg, &mut t).unwrap();
    assert_eq!(ours, *want[0].overlay.as_ref().unwrap());
    let default = gradcam::explain::explain_batch(&net, &[&img], &Default::default(), &mut t);
    assert_ne!(ours, *default.unwrap()[0].overlay.as_ref().unwrap());

    let run_json = std::fs::read_to_string(out.join("run.json")).unwrap();
    assert!(run_json.contains("\"colormap\": \"turbo\""), "{run_json}");
    let o = run(&["--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("overlay_style was"), "{}", stderr(&o));
    let o = run(&["--resume", "--colormap", "turbo", "--image-weight", "0.3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nothing left to explain"),
        "{}",
        stderr(&o)
    );

    for (flags, says) in [
        (
            ["--colormap", "jett"],
            "unknown colormap \"jett\": one of autumn",
        ),
        (["--image-weight", "1.5"], "must lie in [0, 1]"),
        (["--image-weight", "half"], "\"half\" is no number"),
    ] {
        let o = run(&flags);
        assert_eq!(o.status.code(), Some(2), "{flags:?}");
        assert!(stderr(&o).contains(says), "{flags:?}: {}", stderr(&o));
    }
}

/// `--mean`/`--std`: the model's own input normalisation reaches the network (the library
/// with the same normalisation gives the same class scores), is recorded for `--resume`, and
/// bad values are refused by name.
#[test]
fn normalisation_flags() {
    let dir = tempfile::tempdir().unwrap();
    let img_path = fixtures().join("images/a.png");
    let m = model();
    let run = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec!["explain", img_path.to_str().unwrap(), "-m", &m, "-o"];
        args.extend([out.to_str().unwrap(), "--outputs", "json"]);
        args.extend_from_slice(extra);
        (gradcam(&args), out)
    };
    let report = |out: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("a.json")).unwrap()).unwrap()
    };
    let half = "0.5,0.5,0.5";
    let (o, own) = run("own", &["--mean", half, "--std", half]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, imagenet) = run("imagenet", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut graph = gradcam::model::load(&m, None).unwrap();
    graph.normalization = gradcam::image::Normalization::new([0.5; 3], [0.5; 3]).unwrap();
    let net = gradcam::model::Network::new(graph, gradcam::backend::CpuBackend::fast()).unwrap();
    let img = gradcam::image::load_rgb8(&img_path).unwrap();
    let mut t = gradcam::explain::Timings::default();
    let want = gradcam::explain::explain_batch(&net, &[&img], &Default::default(), &mut t);
    let want = &want.unwrap()[0];
    let logit = |out: &Path| report(out)["logit"].as_f64().unwrap() as f32;
    assert!(
        (logit(&own) - want.logit).abs() < 1e-5,
        "{} vs {}",
        logit(&own),
        want.logit
    );
    assert!(
        (logit(&own) - logit(&imagenet)).abs() > 1e-3,
        "the normalisation was ignored"
    );
    let settings = std::fs::read_to_string(own.join("run.json")).unwrap();
    assert!(settings.contains("\"normalization\""), "{settings}");
    let settings = std::fs::read_to_string(imagenet.join("run.json")).unwrap();
    assert!(!settings.contains("normalization"), "{settings}");
    // ImageNet's, given by hand: the default run's numbers.
    let (o, same) = run(
        "same",
        &[
            "--mean",
            "0.485,0.456,0.406",
            "--std",
            "[0.229, 0.224, 0.225]",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report(&same)["logit"], report(&imagenet)["logit"]);

    for (flags, says) in [
        (vec!["--mean", "0.5,0.5", "--std", half], "2 numbers, not 3"),
        (
            vec!["--mean", half, "--std", "0.5,0,0.5"],
            "must be a positive number",
        ),
        (vec!["--mean", half], "--std"),
    ] {
        let (o, _) = run("bad", &flags);
        assert_eq!(o.status.code(), Some(2), "{flags:?}");
        assert!(stderr(&o).contains(says), "{flags:?}: {}", stderr(&o));
    }
}

#[test]
fn outputs_choose_the_files_per_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixtures().join("images/a.png");
    let m = model();
    let run = |outputs: &str, out: &Path| {
        gradcam(&[
            "explain",
            img.to_str().unwrap(),
            "-m",
            &m,
            "--outputs",
            outputs,
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let list = |out: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let out = dir.path().join("none");
    let o = run("none", &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(list(&out), ["run.json", "summary.csv"]);
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv.lines().nth(1).unwrap().contains(",ok,"), "{csv}");

    let out = dir.path().join("json");
    let o = run("json,cam", &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        list(&out),
        ["a.cam.npy", "a.json", "run.json", "summary.csv"]
    );
    let js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("a.json")).unwrap()).unwrap();
    assert_eq!(js["outputs"], serde_json::json!({"cam": "a.cam.npy"}));
    assert_eq!(js["image_size"], serde_json::json!([75, 97]));

    let o = run("overlay,none", &dir.path().join("bad"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("`none`"), "{}", stderr(&o));
}

#[test]
fn summarize_groups_a_runs_rows() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing there, or a folder that holds no run: said so, not the system's error text.
    let gone = dir.path().join("gone");
    let o = gradcam(&["summarize", gone.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("gone: no such file or folder"),
        "{}",
        stderr(&o)
    );
    let o = gradcam(&["summarize", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("holds no summary.csv"),
        "{}",
        stderr(&o)
    );
    let imgs = dir.path().join("imgs");
    for (f, sub) in [
        ("a.png", "x"),
        ("b.png", "x"),
        ("c.png", "y"),
        ("d.png", "y"),
    ] {
        std::fs::create_dir_all(imgs.join(sub)).unwrap();
        std::fs::copy(fixtures().join("images").join(f), imgs.join(sub).join(f)).unwrap();
    }
    std::fs::write(imgs.join("y/broken.png"), b"not a png").unwrap();
    // Ground truth: a and c as class 2, b and d as class 5.
    let list = dir.path().join("classes.csv");
    std::fs::write(
        &list,
        "imgs/x/a.png,2\nimgs/x/b.png,5\nimgs/y/c.png,2\nimgs/y/d.png,5\nimgs/y/broken.png,5\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let explain = |outputs: &str| {
        let o = gradcam(&[
            "explain",
            imgs.to_str().unwrap(),
            "-m",
            &model(),
            "--classes",
            list.to_str().unwrap(),
            "--outputs",
            outputs,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    };
    explain("none");
    assert!(!out.join("x").exists(), "no folders for no files");
    // What each group should hold, from summary.csv's rows.
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let right = |class: &str| {
        rows.iter()
            .filter(|r| r[1] == "ok" && r[3] == class && r[7] == class)
            .count()
    };
    // Over the maps that have statistics (an all-zero map has none): "-" when none has.
    let mean = |col: usize, keep: &dyn Fn(&Vec<&str>) -> bool| {
        let v: Vec<f64> = (rows.iter().filter(|r| keep(r) && r[1] == "ok"))
            .filter(|r| !r[col].is_empty())
            .map(|r| r[col].parse::<f64>().unwrap())
            .collect();
        match v.len() {
            0 => "-".to_string(),
            n => format!("{:.3}", v.iter().sum::<f64>() / n as f64),
        }
    };

    let table = dir.path().join("by-class.csv");
    let o = gradcam(&[
        "summarize",
        out.to_str().unwrap(),
        "-o",
        table.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = std::fs::read_to_string(&table).unwrap();
    let row = |name: &str| -> Vec<String> {
        (t.lines())
            .map(|l| l.split(',').map(String::from).collect::<Vec<_>>())
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no {name}: {t}"))
    };
    assert_eq!(row("all")[1..3], ["5", "1"]);
    // The file that failed counts in its listed class.
    for (class, images, failed) in [("2", "2", "0"), ("5", "3", "1")] {
        let r = row(class);
        assert_eq!(r[1..3], [images, failed], "{t}");
        let agree = format!("{:.3}", right(class) as f64 / 2.0);
        assert_eq!(r[3], agree, "{t}");
        assert_eq!(r[5], mean(13, &|x| x[3] == class), "{t}");
    }
    assert!(!t.contains("(failed)"), "{t}");
    // Groups by folder: y holds the file that failed.
    let o = gradcam(&[
        "summarize",
        out.join("summary.csv").to_str().unwrap(),
        "--by",
        "folder",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let y = text
        .lines()
        .find(|l| l.starts_with(imgs.join("y").to_str().unwrap()))
        .unwrap_or_else(|| panic!("{text}"));
    let cells: Vec<&str> = y.split_whitespace().collect();
    assert_eq!(cells[1..3], ["3", "1"], "{y}");

    let o = gradcam(&["summarize", list.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a summary.csv"), "{}", stderr(&o));
    // The table is never written over the run's own summary.csv.
    let summary = out.join("summary.csv");
    let before = std::fs::read(&summary).unwrap();
    let o = gradcam(&[
        "summarize",
        out.to_str().unwrap(),
        "--out",
        summary.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("that is the input"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&summary).unwrap(), before);
    // A groups file naming none of the run's images (paths relative to it) is said, though
    // the failed image is grouped apart.
    let stray = dir.path().join("stray.csv");
    std::fs::write(&stray, "x/a.png,g\nx/b.png,g\n").unwrap();
    let o = gradcam(&[
        "summarize",
        out.to_str().unwrap(),
        "--groups",
        stray.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("names none of the"), "{}", stderr(&o));

    // Mean maps need the maps: none were written above.
    let maps = dir.path().join("maps");
    let o = gradcam(&[
        "summarize",
        out.to_str().unwrap(),
        "--maps",
        maps.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no .cam.npy"), "{}", stderr(&o));
    explain("cam");
    let o = gradcam(&[
        "summarize",
        out.to_str().unwrap(),
        "--maps",
        maps.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for class in ["2", "5"] {
        let png = image::open(maps.join(format!("{class}.mean.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (224, 224));
        let (shape, mean) =
            gradcam::npy::read_f32(&maps.join(format!("{class}.mean.npy"))).unwrap();
        assert_eq!(shape, [224, 224]);
        // The mean of this class's two maps, read back.
        let stems: Vec<&str> = rows
            .iter()
            .filter(|r| r[1] == "ok" && r[3] == class)
            .map(|r| r[15])
            .collect();
        let each: Vec<Vec<f32>> = (stems.iter())
            .map(|s| {
                gradcam::npy::read_f32(&out.join(format!("{s}.cam.npy")))
                    .unwrap()
                    .1
            })
            .collect();
        for (i, m) in mean.iter().enumerate() {
            let want = (each[0][i] + each[1][i]) / 2.0;
            assert!((m - want).abs() < 1e-6, "{class} at {i}: {m} vs {want}");
        }
    }
    assert!(!maps.join("failed.mean.png").exists());
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    // A map gone since: the mean is over the others, and a warning says so.
    let gone = rows.iter().find(|r| r[1] == "ok").unwrap()[15];
    std::fs::remove_file(out.join(format!("{gone}.cam.npy"))).unwrap();
    let o = gradcam(&[
        "summarize",
        out.to_str().unwrap(),
        "--maps",
        maps.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 explained image(s) have no .cam.npy"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_class_file_alone_lists_the_images() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("data/sub");
    std::fs::create_dir_all(&sub).unwrap();
    for f in ["a.png", "b.png"] {
        std::fs::copy(fixtures().join("images").join(f), sub.join(f)).unwrap();
    }
    // ImageNet's val.txt style: `name class`, paths relative to the file.
    let list = dir.path().join("data/val.txt");
    std::fs::write(&list, "sub/b.png 5\nsub/a.png 2\nsub/missing.png 1\n").unwrap();
    let out = dir.path().join("out");
    let o = gradcam(&[
        "explain",
        "-m",
        &model(),
        "--classes",
        list.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("missing.png: no such file"),
        "{}",
        stderr(&o)
    );
    for (stem, class) in [("sub/a", 2), ("sub/b", 5)] {
        let js: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(js["class"], class, "{stem}");
    }
    // The file's order: the path that is no file first, then b, then a.
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let images: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let names: Vec<String> = ["sub/missing.png", "sub/b.png", "sub/a.png"]
        .iter()
        .map(|n| dir.path().join("data").join(n).display().to_string())
        .collect();
    assert_eq!(images, names, "{csv}");

    let o = gradcam(&["explain", "-m", &model(), "--classes", "folders"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("give the folders"), "{}", stderr(&o));
    let o = gradcam(&["explain", "-m", &model()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A `dff` run into an earlier one's folder removes the overlays that run's dff.json lists
/// and this run does not write; a folder holding a dff run's outputs, given to `explain` or
/// below one given, is walked without them (with a note).
#[test]
fn dff_reruns_leave_one_runs_overlays_and_are_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let heldout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/heldout");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for n in ["0001.png", "0002.png", "0003.png"] {
        std::fs::copy(heldout.join(n), data.join(n)).unwrap();
    }
    let out = data.join("dff");
    let dff = |imgs: &[&str]| {
        let mut args = vec!["dff", "-k", "2", "--out", out.to_str().unwrap()];
        let paths: Vec<String> = imgs
            .iter()
            .map(|n| data.join(n).display().to_string())
            .collect();
        args.extend(paths.iter().map(String::as_str));
        gradcam(&args)
    };
    let o = dff(&["0001.png", "0002.png"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("0001.dff.png").is_file() && out.join("0002.dff.png").is_file());
    let o = dff(&["0002.png", "0003.png"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("removed 1 overlays of the earlier dff run"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("0001.dff.png").exists());
    assert!(out.join("0002.dff.png").is_file() && out.join("0003.dff.png").is_file());
    // An earlier overlay given as an input is read, never removed.
    let o = dff(&["0001.png", "dff/0002.dff.png"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("0002.dff.png").is_file() && !out.join("0003.dff.png").exists());
    // The data folder, and the dff folder itself: its overlays are no images.
    for (given, images) in [(&data, 3), (&out, 0)] {
        let o = gradcam(&[
            "explain",
            given.to_str().unwrap(),
            "-o",
            dir.path().join("x").to_str().unwrap(),
        ]);
        let err = stderr(&o);
        assert!(err.contains("holds a gradcam run's outputs"), "{err}");
        match images {
            0 => assert!(err.contains("holds no image files"), "{err}"),
            n => assert!(
                err.contains(&format!("explained {n} of {n} images")),
                "{err}"
            ),
        }
    }
}

/// `dff` with its output folder the images' own: an image named like another's overlay
/// (`a.dff.png` beside `a.png`), given by name, is read as it is, never written over.
#[test]
fn dff_never_writes_over_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let heldout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/heldout");
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    std::fs::copy(heldout.join("0001.png"), imgs.join("a.png")).unwrap();
    std::fs::copy(heldout.join("0002.png"), imgs.join("a.dff.png")).unwrap();
    let before = std::fs::read(imgs.join("a.dff.png")).unwrap();
    let (a, a_dff) = (imgs.join("a.png"), imgs.join("a.dff.png"));
    let o = gradcam(&[
        "dff",
        a.to_str().unwrap(),
        a_dff.to_str().unwrap(),
        "-k",
        "2",
        "-o",
        imgs.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&a_dff).unwrap(),
        before,
        "an input was written over"
    );
    assert!(imgs.join("a-2.dff.png").is_file());
    assert!(imgs.join("a.dff.dff.png").is_file());
    // A second run goes over the first's reports; not over somebody's file of that name.
    let again = |out: &Path| {
        gradcam(&[
            "dff",
            a.to_str().unwrap(),
            "-k",
            "2",
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let o = again(&imgs);
    assert!(o.status.success(), "{}", stderr(&o));
    // A file given twice is factorised twice, with a note.
    let twice = dir.path().join("twice");
    let o = gradcam(&[
        "dff",
        a.to_str().unwrap(),
        a.to_str().unwrap(),
        "-k",
        "2",
        "-o",
        twice.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 input(s) are files already given"),
        "{}",
        stderr(&o)
    );
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("concepts_by_group.csv"), b"mine\n").unwrap();
    let o = again(&other);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no `gradcam dff` run wrote"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(other.join("concepts_by_group.csv")).unwrap(),
        b"mine\n"
    );
}

#[test]
fn dff_factorises_a_folder_together() {
    let dir = tempfile::tempdir().unwrap();
    let heldout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/heldout");
    let imgs = dir.path().join("imgs");
    std::fs::create_dir_all(imgs.join("sub/deeper")).unwrap();
    for (i, name) in ["0001.png", "0002.png", "0003.png", "0004.png", "0005.png"]
        .iter()
        .enumerate()
    {
        let to = match i {
            0..3 => imgs.join(name),
            3 => imgs.join("sub").join(name),
            _ => imgs.join("sub/deeper").join(name),
        };
        std::fs::copy(heldout.join(name), to).unwrap();
    }
    // A file that is no image: reported, the rest still factorised, exit status 1.
    std::fs::write(imgs.join("broken.png"), b"not a png").unwrap();
    let out = dir.path().join("out");
    let o = gradcam(&[
        "dff",
        imgs.to_str().unwrap(),
        "-k",
        "4",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("broken.png"), "{}", stderr(&o));
    let js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dff.json")).unwrap()).unwrap();
    assert_eq!(js["components"], 4);
    assert_eq!(js["layer"], "layer4");
    let images = js["images"].as_array().unwrap();
    assert_eq!(images.len(), 5);
    for im in images {
        let share: f64 = im["share"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((share - 1.0).abs() < 1e-5, "{im}");
        // (Named relative to dff.json's folder.)
        assert!(out.join(im["overlay"].as_str().unwrap()).is_file(), "{im}");
    }
    // The output tree mirrors the input's.
    assert!(out.join("sub/0004.dff.png").is_file());
    let concepts = js["concepts"].as_array().unwrap();
    assert_eq!(concepts.len(), 4);
    let total: f64 = concepts.iter().map(|c| c["share"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-5);
    let share_of = |image: &serde_json::Value, i: usize| -> f64 {
        (images.iter())
            .find(|im| im["image"] == *image)
            .map(|im| im["share"][i].as_f64().unwrap())
            .unwrap()
    };
    for (i, c) in concepts.iter().enumerate() {
        // The images where it holds any position, counted; up to 8 of them listed, most
        // first, each with its share as the image's own entry says.
        let holding: Vec<f64> = (images.iter())
            .map(|im| im["share"][i].as_f64().unwrap())
            .filter(|&v| v > 0.0)
            .collect();
        assert_eq!(c["images"].as_u64().unwrap() as usize, holding.len(), "{c}");
        let top = c["top_images"].as_array().unwrap();
        assert_eq!(top.len(), holding.len().min(8), "{c}");
        let s: Vec<f64> = top.iter().map(|t| t["share"].as_f64().unwrap()).collect();
        assert!(s.windows(2).all(|w| w[0] >= w[1]), "{c}");
        for t in top {
            assert!((t["share"].as_f64().unwrap() - share_of(&t["image"], i)).abs() < 1e-6);
        }
        if let Some(first) = s.first() {
            assert!((first - holding.iter().cloned().fold(0.0, f64::max)).abs() < 1e-6);
        }
        // Two classes each (--top-k), named by the demo model's labels, best first.
        let classes = c["classes"].as_array().unwrap();
        assert_eq!(classes.len(), 2, "{c}");
        assert!(classes[0]["probability"].as_f64() >= classes[1]["probability"].as_f64());
        assert!(classes[0]["label"]
            .as_str()
            .unwrap()
            .chars()
            .all(|ch| ch.is_ascii_lowercase()));
    }
    // Per first-level folder: the 3 images at the top ('.') and the 2 in sub/, each row's
    // mean shares summing to 1, the same in the CSV.
    // Per folder given and its first-level subfolder: the 3 images at the top of imgs, and
    // the 2 below imgs/sub (one of them deeper); each group's shares the mean of its images'.
    let groups = js["groups"].as_array().unwrap();
    let root = imgs.display().to_string();
    let names: Vec<(String, u64)> = (groups.iter())
        .map(|g| {
            (
                g["group"].as_str().unwrap().to_string(),
                g["images"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, vec![(root.clone(), 3), (format!("{root}/sub"), 2)]);
    let csv = std::fs::read_to_string(out.join("concepts_by_group.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(
        lines[0],
        "group,images,concept_0,concept_1,concept_2,concept_3"
    );
    for (g, line) in groups.iter().zip(&lines[1..]) {
        let prefix = format!("{}/", g["group"].as_str().unwrap());
        let sub = format!("{root}/sub/");
        let members: Vec<&serde_json::Value> = (images.iter())
            .filter(|im| {
                let p = im["image"].as_str().unwrap();
                p.starts_with(&prefix) && (prefix == sub || !p.starts_with(&sub))
            })
            .collect();
        assert_eq!(members.len() as u64, g["images"].as_u64().unwrap(), "{g}");
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[1], members.len().to_string());
        for i in 0..4 {
            let mean = members
                .iter()
                .map(|im| im["share"][i].as_f64().unwrap())
                .sum::<f64>()
                / members.len() as f64;
            assert!((g["share"][i].as_f64().unwrap() - mean).abs() < 1e-6, "{g}");
            assert_eq!(cells[2 + i], format!("{mean:.4}"), "{line}");
        }
    }
    // Two folders given: a group each, named as given.
    let out4 = dir.path().join("out4");
    let sub = imgs.join("sub");
    let o = gradcam(&[
        "dff",
        imgs.join("0001.png").to_str().unwrap(),
        sub.to_str().unwrap(),
        fixtures().join("images").to_str().unwrap(),
        "-k",
        "2",
        "-o",
        out4.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let js4: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out4.join("dff.json")).unwrap()).unwrap();
    let names: Vec<(String, u64)> = (js4["groups"].as_array().unwrap().iter())
        .map(|g| {
            (
                g["group"].as_str().unwrap().to_string(),
                g["images"].as_u64().unwrap(),
            )
        })
        .collect();
    let fx = fixtures().join("images").display().to_string();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.contains(&(".".to_string(), 1)), "{names:?}");
    assert!(names.contains(&(sub.display().to_string(), 1)), "{names:?}");
    assert!(
        names.contains(&(format!("{}/deeper", sub.display()), 1)),
        "{names:?}"
    );
    assert!(names.iter().any(|(n, c)| *n == fx && *c >= 4), "{names:?}");
    // concepts.npy: [channels of layer4, k].
    let (shape, _) = gradcam::npy::read_f32(&out.join("concepts.npy")).unwrap();
    assert_eq!(shape, vec![128, 4]);
    // Images of their own sizes (--size native) factorise together too.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    for name in ["a.png", "c.png"] {
        std::fs::copy(fixtures().join("images").join(name), mixed.join(name)).unwrap();
    }
    std::fs::copy(heldout.join("0001.png"), mixed.join("d.png")).unwrap();
    let out2 = dir.path().join("out2");
    let o = gradcam(&[
        "dff",
        mixed.to_str().unwrap(),
        "--size",
        "native",
        "-k",
        "3",
        "-o",
        out2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("dff.json")).unwrap()).unwrap();
    assert_eq!(js["images"].as_array().unwrap().len(), 3);
    let overlay = image::open(out2.join("a.dff.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (97, 75));
    // Bad settings exit with 2 before any work, naming the problem.
    for (args, what) in [
        (vec!["-k", "0"], "--components"),
        (vec!["-k", "500"], "more concepts than the 128 channels"),
        // (After the activations: 4×4 positions for each of the five images at layer4.)
        (vec!["-k", "100"], "more concepts than the 80 positions"),
        (vec!["--layer", "layer9"], "layer9"),
        (vec!["--layer", "layer3,layer4"], "one layer"),
        (vec!["--image-weight", "2"], "--image-weight"),
    ] {
        let mut all = vec!["dff", imgs.to_str().unwrap(), "-o", out.to_str().unwrap()];
        all.extend(args);
        let o = gradcam(&all);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(what), "{what}: {}", stderr(&o));
    }
    // Nothing readable: each file reported, exit status 1, no report.
    let junk = dir.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("x.png"), b"no").unwrap();
    let out3 = dir.path().join("out3");
    let o = gradcam(&["dff", junk.to_str().unwrap(), "-o", out3.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("x.png") && stderr(&o).contains("no image could be factorised"));
    assert!(!out3.join("dff.json").exists());
}

/// An image whose outputs cannot all be written (here its map's name is taken by a folder,
/// as a full disk would fail it) fails alone and leaves none of them: no overlay beside a
/// row that says `error`. The other images keep theirs.
#[test]
fn an_image_whose_outputs_cannot_all_be_written_leaves_none() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for f in ["a.png", "b.png"] {
        std::fs::copy(fixtures().join("images").join(f), imgs.join(f)).unwrap();
    }
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("a.cam.npy")).unwrap();
    // (An earlier run's folder: one that is not is refused for the folder in the way.)
    std::fs::write(out.join("run.json"), "{}").unwrap();
    let o = gradcam(&[
        "explain",
        imgs.to_str().unwrap(),
        "--model",
        &model(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("1 input(s) failed"), "{err}");
    assert!(!out.join("a.overlay.png").exists(), "{err}");
    assert!(!out.join("a.json").exists());
    for f in ["b.overlay.png", "b.cam.npy", "b.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(
        csv.lines()
            .any(|l| l.contains("a.png") && l.contains("error")),
        "{csv}"
    );
}

/// A thread count far above the machine's cores is refused before any work (a typo would
/// otherwise look like a hang), from `--threads` and from RAYON_NUM_THREADS.
#[test]
fn absurd_thread_counts_are_refused() {
    let o = gradcam(&["--threads", "100000", "layers"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--threads 100000: more threads than"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_gradcam"))
        .args(["layers"])
        .env("RAYON_NUM_THREADS", "5000000")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("RAYON_NUM_THREADS 5000000"), "{err}");
    assert!(gradcam(&["--threads", "2", "layers"]).status.success());
}

/// `gradcam` run with `GRADCAM_MEMORY=cap` (two threads, as [`gradcam`]).
fn gradcam_with_memory(cap: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradcam"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env("GRADCAM_MEMORY", cap)
        .output()
        .expect("the binary runs")
}

/// `GRADCAM_MEMORY` caps the memory a run plans for, so what a small machine would do is
/// seen here: a malformed cap is refused before anything runs; passes cut to one image (or
/// copy) at a time give the same numbers as whole ones; an image one pass of which cannot
/// fit is left out naming the cap and the rest are explained; a fixed --size too large is
/// refused outright; dff refuses a factorisation that cannot fit after its first batch.
/// resnet_tiny's largest layer is about 20 bytes a pixel of input (2.3 MiB at 400×300).
#[test]
fn a_memory_cap_cuts_passes_and_refuses_what_cannot_fit() {
    for (cap, why) in [
        ("lots", "GRADCAM_MEMORY=lots: not an amount of memory"),
        ("8P", "unknown unit `p`"),
        ("0", "at least one byte"),
    ] {
        let o = gradcam_with_memory(cap, &["layers", &model()]);
        assert_eq!(o.status.code(), Some(2), "{cap}");
        assert!(stderr(&o).contains(why), "{cap}: {}", stderr(&o));
    }
    let o = gradcam_with_memory("", &["layers", &model()]);
    assert!(o.status.success(), "empty is unset: {}", stderr(&o));
    // (A JPEG decoder's name with a typo is refused as well, rather than read as the default.)
    for (decoder, ok) in [("Image", false), ("libjpeg", true), ("image", true)] {
        let o = Command::new(env!("CARGO_BIN_EXE_gradcam"))
            .args(["layers", &model()])
            .env("GRADCAM_JPEG_DECODER", decoder)
            .output()
            .unwrap();
        assert_eq!(o.status.success(), ok, "{decoder}: {}", stderr(&o));
        assert_eq!(
            stderr(&o).contains("GRADCAM_JPEG_DECODER=Image: not a JPEG decoder"),
            !ok,
            "{decoder}: {}",
            stderr(&o)
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for n in ["a", "b"] {
        let from = fixtures().join(format!("images/{n}.png"));
        std::fs::copy(from, imgs.join(format!("{n}.png"))).unwrap();
    }
    let a = image::open(fixtures().join("images/a.png"))
        .unwrap()
        .to_rgb8();
    let big = image::imageops::resize(&a, 400, 300, image::imageops::FilterType::Triangle);
    big.save(imgs.join("big.png")).unwrap();
    image::imageops::flip_horizontal(&big)
        .save(imgs.join("big2.png"))
        .unwrap();
    let (m, im) = (model(), imgs.to_str().unwrap().to_string());

    // explain --size native: the two 400×300 images in one pass, or one a pass (12 MiB: a
    // quarter holds one), and left out (4 MiB: its one layer is over half). A pass's images
    // are summed in other orders than an image's alone: maps agree to 1e-5 of their peak.
    let explain = |cap: &str, out: &str| {
        let out = dir.path().join(out);
        let args = ["explain", &im, "-m", &m, "--size", "native", "--batch", "4"];
        let o = gradcam_with_memory(cap, &[&args[..], &["-o", out.to_str().unwrap()]].concat());
        (o, out)
    };
    let (o, whole) = explain("1G", "whole");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("fewer at a time"), "{}", stderr(&o));
    let (o, cut) = explain("12M", "cut");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "note: large images went through fewer at a time than --batch 4 to fit in the \
             GRADCAM_MEMORY cap's 12 MiB of memory (as few as 1 a pass, at 400×300)"
        ),
        "{}",
        stderr(&o)
    );
    for stem in ["a", "b", "big", "big2"] {
        let read = |d: &Path| gradcam::npy::read_f32(&d.join(format!("{stem}.cam.npy"))).unwrap();
        let ((shape, w), (cut_shape, c)) = (read(&whole), read(&cut));
        assert_eq!(shape, cut_shape, "{stem}");
        let peak = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let off = w
            .iter()
            .zip(&c)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(off <= 1e-5 * peak, "{stem}: {off} of {peak}");
    }
    let (o, small) = explain("4M", "small");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("big.png: at 400×300 the network's largest layer alone takes 2 MiB")
            && err.contains("more than half of the GRADCAM_MEMORY cap's 4 MiB"),
        "{err}"
    );
    assert!(small.join("a.json").is_file() && small.join("b.json").is_file());
    assert!(!small.join("big.json").exists() && !small.join("big2.json").exists());
    // A fixed --size every image would be refused at: the run is, before any is read.
    let o = gradcam_with_memory("64M", &["explain", &im, "-m", &m, "--size", "2000"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--size 2000: at 2000×2000") && err.contains("GRADCAM_MEMORY cap's 64 MiB"),
        "{err}"
    );

    // eval: an image's copies (deletion / insertion curves, occlusion) one at a time give
    // the same numbers, to 1e-5 (a pass's sums in another order); big.png left out under
    // 4 MiB, the others evaluated.
    let manifest = imgs.join("m.csv");
    std::fs::write(
        &manifest,
        "image,class,x0,y0,x1,y1\na.png,1,10,10,60,60\nbig.png,2,100,100,300,250\n\
         b.png,3,0,0,50,50\n",
    )
    .unwrap();
    let eval = |cap: &str, out: &str| {
        let out = dir.path().join(out);
        let args = [
            "eval",
            manifest.to_str().unwrap(),
            "-m",
            &m,
            "--size",
            "native",
            "--methods",
            "gradcam",
            "--no-road",
            "--curve-steps",
            "8",
            "--out",
            out.to_str().unwrap(),
        ];
        let o = gradcam_with_memory(cap, &args);
        let json = std::fs::read_to_string(&out).unwrap_or_default();
        (o, json)
    };
    let (o, whole) = eval("1G", "whole.json");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("fewer at a time"), "{}", stderr(&o));
    let (o, cut) = eval("12M", "cut.json");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("large images' copies went through fewer at a time than --forward-batch 32"),
        "{}",
        stderr(&o)
    );
    assert!(whole.contains("\"images\": 3"), "{whole}");
    let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
    assert_json_close(&parse(&whole), &parse(&cut), 1e-5, "eval");
    let (o, small) = eval("4M", "small.json");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("big.png: at 400×300") && err.contains("GRADCAM_MEMORY"));
    assert!(small.contains("\"images\": 2"), "{small}");

    // dff of ten 1024×1024 inputs at layer1 (16 channels, 256² positions, k = 4: 7 MiB an
    // image, 70 MiB in all): refused under 64 MiB after the first batch of 8.
    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..10 {
        std::fs::copy(
            fixtures().join("images/a.png"),
            many.join(format!("{i}.png")),
        )
        .unwrap();
    }
    let out = dir.path().join("dff");
    let args = [
        "dff",
        many.to_str().unwrap(),
        "-m",
        &m,
        "--layer",
        "layer1",
        "--size",
        "1024",
        "-k",
        "4",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = gradcam_with_memory("64M", &args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("dff of 10 images at layer1 needs about 70 MiB")
            && err.contains("more than the GRADCAM_MEMORY cap's 64 MiB"),
        "{err}"
    );
}

/// `a` and `b` alike but for numbers within `tol` of each other (absolute; eval's scores are
/// fractions and areas under curves in 0..1).
fn assert_json_close(a: &serde_json::Value, b: &serde_json::Value, tol: f64, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= tol, "{at}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_json_close(x, y, tol, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}"
            );
            for (k, x) in x {
                assert_json_close(x, &y[k], tol, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// A folder of photographs in formats this build does not decode (an iPhone's HEIC beside
/// JPEGs): each is reported by name, with what to convert it to, and counted in summary.csv;
/// the rest are explained; files that are no images (notes.txt) are not walked.
#[test]
fn photographs_in_formats_not_decoded_are_reported_not_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    std::fs::copy(fixtures().join("images/a.png"), imgs.join("a.png")).unwrap();
    std::fs::write(
        imgs.join("IMG_0001.HEIC"),
        b"\0\0\0\x18ftypheic\0\0\0\0mif1heic",
    )
    .unwrap();
    std::fs::write(imgs.join("notes.txt"), b"taken in May").unwrap();
    let out = dir.path().join("out");
    let o = gradcam(&[
        "explain",
        imgs.to_str().unwrap(),
        "-m",
        &model(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("IMG_0001.HEIC: cannot decode image: a HEIF image (HEIC")
            && err.contains("convert it to JPEG or PNG"),
        "{err}"
    );
    assert!(!err.contains("notes.txt"), "{err}");
    assert!(out.join("a.json").is_file());
    let rows = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let heic = rows.lines().find(|l| l.contains("IMG_0001.HEIC")).unwrap();
    assert!(!heic.contains(",ok,"), "{rows}");
}

/// `gradcam --help` lists the environment variables a user may set.
#[test]
fn help_lists_the_environment() {
    let o = gradcam(&["--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for var in [
        "GRADCAM_MEMORY",
        "GRADCAM_JPEG_DECODER",
        "GRADCAM_NVRTC",
        "GRADCAM_CACHE_DIR",
        "RAYON_NUM_THREADS",
    ] {
        assert!(help.contains(&format!("\n  {var} ")), "{var}: {help}");
    }
}

/// `random-weights` writes a checkpoint the other commands load, writes over its own kind
/// of file, and refuses to write over anything else (an image given as `-o` by mistake).
#[test]
fn random_weights_write_checkpoints_only_over_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("r18.safetensors");
    let make = |out: &Path| {
        gradcam(&[
            "random-weights",
            "--arch",
            "resnet18",
            "--width-div",
            "16",
            "--classes",
            "3",
            "-o",
            out.to_str().unwrap(),
        ])
    };
    for run in 0..2 {
        let o = make(&ckpt);
        assert!(o.status.success(), "run {run}: {}", stderr(&o));
    }
    let o = gradcam(&["layers", ckpt.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let png = dir.path().join("picture.png");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/images");
    std::fs::copy(demo.join("star.png"), &png).unwrap();
    let o = make(&png);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("picture.png: it exists and is not a safetensors file"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(&png).unwrap(),
        std::fs::read(demo.join("star.png")).unwrap()
    );
}

/// A model whose activations overflow (finite weights, each conv's filters ×1e4: past f32's
/// range at the tenth conv, `layer3.0.conv1`) fails each image in explain, dff and eval with
/// the error naming the layer whose output first holds infinities or NaNs, and the run exits
/// non-zero; before ReLU kept NaN, all three reported the classifier's bias as the logits.
#[test]
fn activations_that_overflow_fail_each_image_naming_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = gradcam::model::synth::state_dict("resnet18", 16, 10, 3).unwrap();
    for (name, t) in d.iter_mut() {
        if name.contains("conv") || name.ends_with("downsample.0.weight") {
            let v = t.data().iter().map(|x| x * 1e4).collect();
            *t = gradcam::Tensor::new(t.shape().to_vec(), v);
        }
    }
    let m = dir.path().join("loud.safetensors");
    gradcam::model::synth::write(&m, &d, safetensors::Dtype::F32).unwrap();
    let m = m.to_str().unwrap();
    let (a, b) = (
        fixtures().join("images/a.png"),
        fixtures().join("images/b.png"),
    );
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let first = "first in the output of `layer3.0.conv1`, `layer3.0.bn1` (conv)";
    let says = |o: &Output, what: &str| {
        let e = stderr(o);
        assert!(!o.status.success(), "{e}");
        for img in [a, b] {
            assert!(
                e.lines()
                    .any(|l| l.contains(img) && l.contains(what) && l.contains(first)),
                "{img}: {e}"
            );
        }
    };
    let out = dir.path().join("out");
    let o = gradcam(&["explain", "-m", m, "--out", out.to_str().unwrap(), a, b]);
    says(&o, "infinities or NaNs in the logits");
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(
        summary
            .lines()
            .filter(|l| l.split(',').nth(1) == Some("error"))
            .count(),
        2
    );
    let o = gradcam(&[
        "dff",
        "-m",
        m,
        "--out",
        dir.path().join("dff").to_str().unwrap(),
        a,
        b,
    ]);
    says(&o, "in the activations at `layer4` and logits");
    let manifest = dir.path().join("m.csv");
    std::fs::write(&manifest, format!("{a},1,0,0,9,9\n{b},2,0,0,9,9\n")).unwrap();
    let o = gradcam(&["eval", "-m", m, manifest.to_str().unwrap()]);
    says(&o, "infinities or NaNs in the logits");
}
