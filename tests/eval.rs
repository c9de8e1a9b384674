//! The evaluation measures on hand-made maps (values worked out by hand), the manifest
//! parsers, and `evaluate_image` end to end on the fixture model.

use gradcam::backend::CpuBackend;
use gradcam::cam::Method;
use gradcam::eval::metrics::{
    auc, centre_prior, iou, map_stats, mass_inside, object_mask, pointing_hit, spearman,
    threshold_box, MapStats,
};
use gradcam::eval::{aggregate, evaluate_image, manifest, EvalConfig, CENTRE};
use gradcam::image::InputSize;
use gradcam::model::{self, Network};

#[test]
fn threshold_box_takes_the_largest_segment_above_15_percent() {
    // 6x8 map: a 2x3 blob (values 1.0) and a single bright pixel (2.0) elsewhere; at 15% of
    // the max (0.3) both pass, the blob is larger, so its box wins even though the max is not in it.
    let (h, w) = (6, 8);
    let mut m = vec![0.1f32; h * w];
    for y in 1..3 {
        for x in 2..5 {
            m[y * w + x] = 1.0;
        }
    }
    m[5 * w + 7] = 2.0;
    assert_eq!(
        threshold_box(&m, (h, w), 0.15).unwrap(),
        Some([2.0, 1.0, 4.0, 2.0])
    );
    // Diagonal neighbours join a segment (8-connectivity).
    let mut d = vec![0f32; 9];
    d[0] = 1.0;
    d[4] = 1.0;
    d[8] = 1.0;
    assert_eq!(
        threshold_box(&d, (3, 3), 0.15).unwrap(),
        Some([0.0, 0.0, 2.0, 2.0])
    );
    assert_eq!(threshold_box(&[0.0; 4], (2, 2), 0.15).unwrap(), None);
}

/// The summary numbers of `explain`'s summary.csv on 10x10 maps, worked out by hand: pixel
/// centres are at (i + 0.5) / 10, and the border band (within 0.1 of an edge) is the outer
/// ring of pixels, 36 of 100.
#[test]
fn map_stats_on_hand_made_maps() {
    let close = |a: MapStats, b: MapStats| {
        let d = [
            a.peak.0 - b.peak.0,
            a.peak.1 - b.peak.1,
            a.centroid.0 - b.centroid.0,
            a.centroid.1 - b.centroid.1,
            a.border_mass - b.border_mass,
            a.area_half - b.area_half,
        ];
        assert!(d.iter().all(|d| d.abs() < 1e-6), "{a:?} vs {b:?}");
    };
    let hw = (10, 10);
    // One bright pixel at x = 2, y = 7: peak and centroid on it, nothing in the border.
    let mut m = vec![0f32; 100];
    m[7 * 10 + 2] = 1.0;
    let one = MapStats {
        peak: (0.25, 0.75),
        centroid: (0.25, 0.75),
        border_mass: 0.0,
        area_half: 0.01,
    };
    close(map_stats(&m, hw).unwrap(), one);
    // Uniform: the first pixel is the peak, the centre the centroid, the ring's share of the
    // pixels its share of the mass, every pixel at half the max or more.
    let uniform = MapStats {
        peak: (0.05, 0.05),
        centroid: (0.5, 0.5),
        border_mass: 0.36,
        area_half: 1.0,
    };
    close(map_stats(&[0.4; 100], hw).unwrap(), uniform);
    // 1 at the top-left corner and 3 at the bottom-right: centroid (0.05 + 3 * 0.95) / 4 =
    // 0.725 on both axes, all the mass in the border, one pixel at half the max (1.5) or more.
    let mut m = vec![0f32; 100];
    m[0] = 1.0;
    m[99] = 3.0;
    let corners = MapStats {
        peak: (0.95, 0.95),
        centroid: (0.725, 0.725),
        border_mass: 1.0,
        area_half: 0.01,
    };
    close(map_stats(&m, hw).unwrap(), corners);
    assert_eq!(map_stats(&[0.0; 100], hw), None);
    assert_eq!(map_stats(&[], (0, 0)), None);
}

#[test]
fn iou_pointing_mass_spearman_auc() {
    // Inclusive boxes: [0,0,1,1] has 4 px, [1,1,2,2] has 4 px, overlap 1 px: IoU = 1/7.
    assert!((iou(&[0.0, 0.0, 1.0, 1.0], &[1.0, 1.0, 2.0, 2.0]) - 1.0 / 7.0).abs() < 1e-6);
    assert_eq!(iou(&[0.0, 0.0, 3.0, 3.0], &[0.0, 0.0, 3.0, 3.0]), 1.0);

    let (h, w) = (5, 5);
    let obj = object_mask(&[[0.0, 0.0, 1.0, 1.0]], None, (h, w)).unwrap();
    assert_eq!(obj.iter().filter(|&&o| o).count(), 4);
    let mut m = vec![0f32; 25];
    m[4 * w + 4] = 1.0; // max at (4,4), 3 px (diagonally) from the box corner (1,1)
    assert!(!pointing_hit(&m, &obj, (h, w), 0).unwrap());
    assert!(!pointing_hit(&m, &obj, (h, w), 4).unwrap()); // distance sqrt(18) ≈ 4.24 > 4
    assert!(pointing_hit(&m, &obj, (h, w), 5).unwrap());
    m[0] = 3.0;
    assert!(pointing_hit(&m, &obj, (h, w), 0).unwrap());
    // Maps and masks that are not h×w are refused, naming the measure; none is no hit.
    assert!(threshold_box(&m, (4, 5), 0.15).is_err());
    let e = pointing_hit(&m, &obj[..20], (h, w), 0).unwrap_err();
    assert!(e.to_string().contains("pointing_hit"), "{e}");
    assert!(pointing_hit(&m[..20], &obj[..20], (5, 4), 0).is_ok());
    assert!(pointing_hit(&m, &obj, (5, 5), usize::MAX).unwrap());
    assert_eq!(pointing_hit(&[], &[], (0, 7), 3).ok(), Some(false));
    let e = object_mask(&[], Some(&obj[..24]), (h, w)).unwrap_err();
    assert!(e.to_string().contains("object_mask"), "{e}");
    assert!(object_mask(&[], None, (usize::MAX, 2)).is_err());
    // An empty image has no object pixels (it used to index past its mask), and a box
    // wholly above or left of the image covers none (it used to clamp onto pixel (0, 0)).
    for hw in [(0, 5), (5, 0)] {
        assert!(object_mask(&[[0.0, 0.0, 1.0, 1.0]], None, hw)
            .unwrap()
            .is_empty());
    }
    let outside = object_mask(
        &[[-9.0, -9.0, -2.0, 3.0], [1.0, -5.0, 2.0, -1.0]],
        None,
        (4, 4),
    );
    assert!(outside.unwrap().iter().all(|&o| !o));
    // mass: 3 inside of 4 in total
    assert!((mass_inside(&m, &obj) - 0.75).abs() < 1e-6);

    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-6);
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-6);
    // scipy.stats.spearmanr([1,2,3,4,5],[2,1,4,3,5]).correlation == 0.8
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 1.0, 4.0, 3.0, 5.0]) - 0.8).abs() < 1e-6);
    assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), 0.0);

    // trapezoid over [0,1] in 2 steps: (1+0.5)/2·0.5 + (0.5+0)/2·0.5 = 0.5
    assert!((auc(&[1.0, 0.5, 0.0]) - 0.5).abs() < 1e-6);
    let c = centre_prior((5, 5));
    assert_eq!(c.iter().copied().fold(0f32, f32::max), c[12]);
}

#[test]
fn manifests_parse_and_bad_rows_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("m.csv");
    std::fs::write(&csv, "image,class,x0,y0,x1,y1\na.png,3,1,2,10,20\na.png,3,30,30,40,40\nb.png,1,0,0,5,5,b_mask.png\n").unwrap();
    let e = manifest::load(&csv, None, None).unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(
        e[0].boxes,
        vec![[1.0, 2.0, 10.0, 20.0], [30.0, 30.0, 40.0, 40.0]]
    );
    assert_eq!(e[1].mask.as_ref().unwrap(), &dir.path().join("b_mask.png"));
    let jl = dir.path().join("m.jsonl");
    std::fs::write(
        &jl,
        // (Keys of the data set's own, an id, are passed over.)
        "{\"image\": \"a.png\", \"class\": 2, \"boxes\": [[0, 0, 3, 3]], \"id\": 7}\n",
    )
    .unwrap();
    assert_eq!(manifest::load(&jl, None, None).unwrap()[0].class, 2);
    // A byte-order mark before the first row or JSON line is not part of the image's name.
    for (name, text) in [
        ("bom.csv", "\u{feff}a.png,3,1,2,10,20\n"),
        (
            "bom.jsonl",
            "\u{feff}{\"image\": \"a.png\", \"class\": 3, \"boxes\": [[0, 0, 3, 3]]}\n",
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = manifest::load(&p, None, None).unwrap();
        assert_eq!((&e[0].image, e[0].class), (&dir.path().join("a.png"), 3));
    }
    for (name, text, needle) in [
        ("bad.csv", "a.png,x,0,0,1,1\n", ":1: class `x`"),
        ("box.csv", "a.png,1,5,0,1,1\n", ":1: bad box"),
        (
            "short.csv",
            "image,class\na.png,1\n",
            ":1: the header has no x0, y0, x1, y1 column",
        ),
        ("short_row.csv", "a.png,1\n", ":1: want image,class"),
        // A lone first field is a short row, not a header.
        ("lone.csv", "a.png\n", ":1: want image,class"),
        ("bad.jsonl", "{\"image\": \"a.png\"}\n", ":1:"),
        (
            "typo.jsonl",
            "{\"image\": \"a.png\", \"class\": 1, \"boxes\": [[0, 0, 1, 1]], \"msk\": \"m.png\"}\n",
            ":1: unknown key `msk` (`mask`?)",
        ),
        ("empty.csv", "image,class,x0,y0,x1,y1\n", "no images"),
        // A header is read by its names, so one it cannot read is refused, not taken by
        // position (which would swap coordinates without a sign).
        (
            "named.csv",
            "path,label,a,b,c,d\na.png,99x,0,0,1,1\n",
            ":1: unknown column `a`",
        ),
        (
            "fields.csv",
            "image,class,x0,y0,x1,y1\na.png,1,0,0,1\n",
            ":2: the header names 6 columns, the row has 5 fields",
        ),
        (
            "noimage.csv",
            ",1,0,0,1,1\n",
            ":1: the image field is empty",
        ),
        (
            "masks.csv",
            "a.png,1,0,0,1,1,m1.png\na.png,1,2,2,3,3,m2.png\n",
            ":2: a.png listed with two masks",
        ),
        (
            "label.csv",
            "a.png,dog,0,0,1,1\n",
            "(the model's file has no labels",
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let msg = manifest::load(&p, None, None).unwrap_err().to_string();
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    // Columns by their header's names, in any order (ImageNet's xmin.. too); quoted fields;
    // classes by the model's labels, in CSV and JSON Lines.
    let labels: Vec<String> = ["cat", "dog"].map(String::from).to_vec();
    for (name, text) in [
        (
            "order.csv",
            "class,ymin,xmin,ymax,xmax,image\n1,2,1,20,10,a.png\n",
        ),
        (
            "swap.csv",
            "image,class,y0,x0,y1,x1\n\"a.png\",\"dog\",2,1,20,10\n",
        ),
        (
            "label.jsonl",
            "{\"image\": \"a.png\", \"class\": \"dog\", \"boxes\": [[1, 2, 10, 20]]}\n",
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = manifest::load(&p, Some(&labels), None).unwrap();
        assert_eq!(
            (&e[0].image, e[0].class, &e[0].boxes[..]),
            (&dir.path().join("a.png"), 1, &[[1.0, 2.0, 10.0, 20.0]][..]),
            "{name}"
        );
    }
    // The mask column under a header is optional per row; trailing commas name nothing; a
    // stray quote in a comment is text (before, it swallowed the rows after it).
    let p = dir.path().join("mask_col.csv");
    let text = "image,class,x0,y0,x1,y1,mask,\n# boxes in \"pixels\na.png,1,0,0,1,1,\n\
                b.png,0,0,0,2,2,m.png\n";
    std::fs::write(&p, text).unwrap();
    let e = manifest::load(&p, None, None).unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(
        (e[0].mask.as_ref(), e[1].mask.as_ref()),
        (None, Some(&dir.path().join("m.png")))
    );
    // JSON Lines: an image may be listed once per class; a class that is neither an index nor
    // a label is named.
    let p = dir.path().join("two.jsonl");
    let line =
        |c: &str| format!("{{\"image\": \"a.png\", \"class\": {c}, \"boxes\": [[0, 0, 1, 1]]}}\n");
    std::fs::write(&p, line("0") + &line("\"dog\"")).unwrap();
    let e = manifest::load(&p, Some(&labels), None).unwrap();
    assert_eq!((e.len(), e[0].class, e[1].class), (2, 0, 1));
    std::fs::write(&p, line("-1")).unwrap();
    let msg = manifest::load(&p, None, None).unwrap_err().to_string();
    assert!(msg.contains(":1: class -1: want an index"), "{msg}");
    // With the model's class count, a class it does not have is the row's error (CSV and
    // JSON Lines); a line that is no JSON object and a file that is no text say so.
    std::fs::write(&p, line("9")).unwrap();
    let msg = manifest::load(&p, None, Some(8)).unwrap_err().to_string();
    assert!(
        msg.contains(":1: class 9 is out of range: the model has 8 classes"),
        "{msg}"
    );
    std::fs::write(&p, "[1, 2, 3]\n").unwrap();
    let msg = manifest::load(&p, None, None).unwrap_err().to_string();
    assert!(msg.contains(":1: want an object {\"image\""), "{msg}");
    let csv = dir.path().join("range.csv");
    std::fs::write(&csv, "a.png,1,0,0,1,1\nb.png,8,0,0,1,1\n").unwrap();
    let msg = manifest::load(&csv, None, Some(8)).unwrap_err().to_string();
    assert!(msg.contains(":2: class 8 is out of range"), "{msg}");
    assert_eq!(manifest::load(&csv, None, Some(9)).unwrap().len(), 2);
    let png = dir.path().join("image.csv");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n\xff\xfe").unwrap();
    let msg = manifest::load(&png, None, None).unwrap_err().to_string();
    assert!(msg.contains("not a text file"), "{msg}");
    // A row's line is reported after a quoted field that spans lines.
    let p = dir.path().join("lines.csv");
    std::fs::write(&p, "\"a\nb.png\",1,0,0,1,1\nc.png,1,5,0,1,1\n").unwrap();
    let msg = manifest::load(&p, None, None).unwrap_err().to_string();
    assert!(msg.contains(":3: bad box"), "{msg}");
    let p = dir.path().join("unknown.csv");
    std::fs::write(&p, "a.png,bird,0,0,1,1\n").unwrap();
    let msg = manifest::load(&p, Some(&labels), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(":1: class `bird` is neither"), "{msg}");
    // Digits are an index, with a note (naming the first line, and how many) where they are
    // another class's label: numbered classes sorted as ImageFolder sorts them. A JSON number
    // is an index and no note; digits that are their own index's label need none either.
    let numbered: Vec<String> = ["1", "10", "2"].map(String::from).to_vec();
    let p = dir.path().join("numbered.csv");
    std::fs::write(&p, "a.png,2,0,0,1,1\nb.png,1,0,0,1,1\nc.png,1,0,0,1,1\n").unwrap();
    let (e, note) = manifest::load_noting(&p, Some(&numbered), Some(3)).unwrap();
    assert_eq!(e.iter().map(|e| e.class).collect::<Vec<_>>(), [2, 1, 1]);
    let note = note.expect("a note for `1`, the label of class 0");
    assert!(
        note.contains(
            "numbered.csv:2: class `1` is read as class index 1, but it is also the \
             model's label of class 0 (2 lines give such a class)"
        ),
        "{note}"
    );
    let p = dir.path().join("numbered.jsonl");
    std::fs::write(&p, line("1") + &line("\"2\"")).unwrap();
    let (e, note) = manifest::load_noting(&p, Some(&numbered), Some(3)).unwrap();
    assert_eq!((e[0].class, e[1].class, note), (1, 2, None));
    std::fs::write(&p, line("\"1\"")).unwrap();
    let (_, note) = manifest::load_noting(&p, Some(&numbered), Some(3)).unwrap();
    assert!(note.is_some_and(|n| n.contains("numbered.jsonl:1: class `1`")));
    // A missing manifest names the file and says why once.
    let msg = manifest::load(&dir.path().join("none.csv"), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("none.csv") && msg.matches("no such file").count() == 1,
        "{msg}"
    );
}

#[test]
fn evaluate_image_scores_every_method_and_the_centre_baseline() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let net = Network::new(
        model::load(fixtures.join("resnet_tiny.safetensors"), None).unwrap(),
        CpuBackend::fast(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("m.csv");
    let img = fixtures.join("images/a.png");
    std::fs::write(&csv, format!("{},4,10,10,60,50\n", img.display())).unwrap();
    let entries = manifest::load(&csv, None, None).unwrap();
    let cfg = EvalConfig {
        size: InputSize::Native,
        methods: vec![Method::GradCam, Method::LayerCam],
        pointing_tolerance: 0,
        occlusion: Some((16, 8)),
        curve_steps: Some(4),
        forward_batch: 8,
        ..EvalConfig::default()
    };
    let r = evaluate_image(&net, &entries[0], &cfg).unwrap();
    let names: Vec<&str> = r.scores.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(names, vec!["gradcam", "layercam", CENTRE]);
    for s in &r.scores {
        assert!(
            (0.0..=1.0).contains(&s.iou) && (0.0..=1.0).contains(&s.mass_inside),
            "{s:?}"
        );
        assert!(s.faithfulness.unwrap().abs() <= 1.0);
        assert!(
            (0.0..=1.0).contains(&s.deletion_auc.unwrap())
                && (0.0..=1.0).contains(&s.insertion_auc.unwrap())
        );
        assert_eq!(s.top1_localised, s.localised && r.predicted == 4);
    }
    // The confidence measures by hand for the centre prior (its map known here): the class's
    // probability on the input and on the input times the prior, and the prior's
    // complexity; its coherency is 1 (the same map again). Within 1e-5.
    let rgb = gradcam::image::load_rgb8(&img).unwrap();
    let x = gradcam::image::preprocess(&[&rgb], (75, 97));
    let prior = gradcam::eval::metrics::centre_prior((75, 97));
    let mut xm = x.data().to_vec();
    for plane in xm.chunks_mut(75 * 97) {
        plane.iter_mut().zip(&prior).for_each(|(a, m)| *a *= m);
    }
    let prob = |t: gradcam::Tensor| {
        let l = net.forward(t).unwrap();
        gradcam::explain::softmax_at(l.data(), 4)
    };
    let (p, pm) = (prob(x.clone()), prob(gradcam::Tensor::new(x.shape(), xm)));
    let centre = &r.scores[2];
    assert!(
        (centre.confidence_drop - (p - pm).max(0.0) / p).abs() < 1e-5,
        "{centre:?}"
    );
    assert_eq!(centre.confidence_increase, pm > p);
    let mean = prior.iter().sum::<f32>() / prior.len() as f32;
    assert!((centre.complexity - mean).abs() < 1e-5);
    assert_eq!(centre.coherency, Some(1.0));
    for s in &r.scores {
        assert!((0.0..=1.0).contains(&s.confidence_drop), "{s:?}");
        assert!((0.0..=1.0).contains(&s.coherency.unwrap()) && (0.0..=1.0).contains(&s.complexity));
    }
    // ROAD of the centre prior by hand: road_scores on the input, the prior at the input's
    // size, the class and its probability (the wiring: map, base and class), within 1e-6.
    let by_hand = gradcam::eval::road::road_scores(
        &net,
        &x,
        &prior,
        4,
        p,
        &gradcam::eval::road::RoadConfig::default(),
        3,
    )
    .unwrap()
    .unwrap();
    assert!(
        (centre.road_morf.unwrap() - by_hand.morf).abs() < 1e-6,
        "{centre:?}"
    );
    assert!(
        (centre.road_lerf.unwrap() - by_hand.lerf).abs() < 1e-6,
        "{centre:?}"
    );
    assert!((centre.road_combined.unwrap() - by_hand.combined()).abs() < 1e-6);
    // One map per pass gives the same probabilities (the batching keeps the order; ROAD's
    // noise is seeded); without Coherency the rest is unchanged.
    let one = EvalConfig {
        forward_batch: 1,
        coherency: false,
        ..cfg.clone()
    };
    let r1 = evaluate_image(&net, &entries[0], &one).unwrap();
    for (a, b) in r.scores.iter().zip(&r1.scores) {
        assert!(
            (a.confidence_drop - b.confidence_drop).abs() < 1e-5,
            "{a:?} {b:?}"
        );
        assert_eq!(a.confidence_increase, b.confidence_increase);
        assert_eq!(b.coherency, None);
        for (x, y) in [(a.road_morf, b.road_morf), (a.road_lerf, b.road_lerf)] {
            assert!((x.unwrap() - y.unwrap()).abs() < 1e-5, "{a:?} {b:?}");
        }
    }
    let no_road = EvalConfig {
        road: None,
        ..one.clone()
    };
    let r0 = evaluate_image(&net, &entries[0], &no_road).unwrap();
    assert!(r0.scores.iter().all(|s| s.road_combined.is_none()));
    let agg = aggregate(std::slice::from_ref(&r));
    assert_eq!(agg.len(), 3);
    assert_eq!(
        agg[0].gt_known_loc_error,
        if r.scores[0].localised { 0.0 } else { 1.0 }
    );

    // A class the model does not have is an error for that image, not a panic.
    let bad = manifest::Entry {
        class: 99,
        ..entries[0].clone()
    };
    assert!(evaluate_image(&net, &bad, &cfg)
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    // A box that misses the image (97×75) is an error for that image; one that overhangs its
    // border is clipped (and counted): scored as the box cut to the image would be.
    let (w, h) = (97.0, 75.0);
    let with_box = |b: [f32; 4]| manifest::Entry {
        boxes: vec![b],
        ..entries[0].clone()
    };
    for b in [
        [w, 0.0, w + 10.0, 10.0],
        [0.0, h + 1.0, 5.0, h + 9.0],
        [-9.0, -9.0, -1.0, 5.0],
    ] {
        let e = evaluate_image(&net, &with_box(b), &no_road).unwrap_err();
        assert!(
            e.to_string().contains("lies outside the 97×75 image"),
            "{b:?}: {e}"
        );
    }
    let over = evaluate_image(&net, &with_box([-3.0, 20.0, w + 40.0, h]), &no_road).unwrap();
    let cut = evaluate_image(&net, &with_box([0.0, 20.0, w - 1.0, h - 1.0]), &no_road).unwrap();
    assert_eq!((over.clipped_boxes, cut.clipped_boxes), (1, 0));
    for (a, b) in over.scores.iter().zip(&cut.scores) {
        assert_eq!(
            (a.iou, a.mass_inside),
            (b.iou, b.mass_inside),
            "{}",
            a.method
        );
        assert_eq!(a.pointing_hit, b.pointing_hit);
    }
    // The box cut to the image covers its lower 55 rows: a mass inside below 1 would mean
    // the overhang was counted as object.
    assert!(over
        .scores
        .iter()
        .all(|s| s.iou > 0.0 && s.mass_inside <= 1.0));
}

/// A method that cannot explain an image (Ablation-CAM when the class score is exactly 0, as
/// with a zeroed head) costs only its own scores: the image is reported with the others and the
/// failure named; the aggregate counts each method's images. Where no method can explain
/// it, the image fails with the reason.
#[test]
fn a_failing_method_costs_only_its_own_scores() {
    let dir = tempfile::tempdir().unwrap();
    let mut dict = gradcam::model::synth::state_dict("resnet18", 16, 10, 3).unwrap();
    for (name, t) in dict.iter_mut() {
        if name.starts_with("fc.") {
            *t = gradcam::Tensor::zeros(t.shape());
        }
    }
    let path = dir.path().join("zero_fc.safetensors");
    gradcam::model::synth::write(&path, &dict, safetensors::Dtype::F32).unwrap();
    let net = Network::new(model::load(&path, None).unwrap(), CpuBackend::fast()).unwrap();
    let img = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/a.png");
    let csv = dir.path().join("m.csv");
    std::fs::write(&csv, format!("{},4,10,10,60,50\n", img.display())).unwrap();
    let entries = manifest::load(&csv, None, None).unwrap();
    let cfg = EvalConfig {
        size: InputSize::Square(64),
        methods: vec![Method::GradCam, Method::AblationCam],
        pointing_tolerance: 0,
        occlusion: None,
        curve_steps: None,
        forward_batch: 8,
        coherency: false,
        road: None,
        ..EvalConfig::default()
    };
    let r = evaluate_image(&net, &entries[0], &cfg).unwrap();
    let names: Vec<&str> = r.scores.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(names, ["gradcam", CENTRE]);
    assert_eq!(r.failed_methods.len(), 1);
    assert_eq!(r.failed_methods[0].method, "ablationcam");
    assert!(
        r.failed_methods[0]
            .error
            .contains("the class score is exactly 0"),
        "{:?}",
        r.failed_methods
    );
    // With an image where both ran, each method's row counts its own images.
    let mut both = r.clone();
    both.failed_methods.clear();
    let mut ablation = both.scores[0].clone();
    ablation.method = "ablationcam".into();
    both.scores.insert(1, ablation);
    let agg = aggregate(&[r.clone(), both]);
    let rows: Vec<(&str, usize)> = agg.iter().map(|a| (a.method.as_str(), a.images)).collect();
    assert_eq!(rows, [("gradcam", 2), ("ablationcam", 1), (CENTRE, 2)]);
    // Ablation-CAM alone: nothing explains the image, which fails naming why.
    let alone = EvalConfig {
        methods: vec![Method::AblationCam],
        ..cfg
    };
    let err = evaluate_image(&net, &entries[0], &alone)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ablationcam") && err.contains("exactly 0"),
        "{err}"
    );
}

/// pytorch-grad-cam's Coherency and Complexity on known maps: a map against itself, a scaled
/// and shifted copy (ρ = 1 → 1), its negation (ρ = −1 → 0), a flat map (ρ = 0 → 0.5); the
/// mean absolute value.
#[test]
fn coherency_and_complexity() {
    use gradcam::eval::metrics::{coherency, complexity};
    let a = [0.0f32, 0.25, 0.5, 1.0, 0.75, 0.1];
    let scaled: Vec<f32> = a.iter().map(|v| 2.0 * v + 0.3).collect();
    let neg: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
    assert!((coherency(&a, &a) - 1.0).abs() < 1e-6);
    assert!((coherency(&a, &scaled) - 1.0).abs() < 1e-6);
    assert!(coherency(&a, &neg).abs() < 1e-6);
    assert!((coherency(&a, &[0.4; 6]) - 0.5).abs() < 1e-6);
    assert!((complexity(&a) - 2.6 / 6.0).abs() < 1e-6);
    assert!((complexity(&[-0.5, 0.5]) - 0.5).abs() < 1e-6);
}
