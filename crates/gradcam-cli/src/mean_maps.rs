//! `gradcam summarize --maps DIR`: each group's mean map, where the model looks on average
//! for a class (or in a folder). A class whose mean map sits on the bottom edge, or away from
//! where its objects usually are, is the first lead of an audit for spurious cues.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use gradcam::cam::Colormap;
use gradcam::image::RgbImage;

use crate::summarize::{Group, Key, Row};

/// Writes `<group>.mean.npy` (the plain mean of the group's normalised maps, each resampled
/// bilinearly to the size most of them have: see [`common_size`]) and `<group>.mean.png` (that mean
/// min-max normalised, in `colormap`) for every group with at least one `.cam.npy` beside the
/// summary (`base`). Returns (maps written, groups without any map); fails when no group has
/// one. A file that is not a finite 2-D map (unreadable, empty, NaN) is left out with a
/// warning naming it, so one bad file does not stop the rest.
pub fn write(
    dir: &Path,
    base: &Path,
    rows: &[Row],
    groups: &[(Key, Group)],
    colormap: Colormap,
) -> anyhow::Result<(usize, usize)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = HashSet::new();
    let (mut written, mut without, mut missing) = (0, 0, 0);
    for (key, g) in groups {
        // (A group of failed images, `(failed)`, has no maps to miss.)
        if g.members.iter().all(|&i| !rows[i].ok) {
            continue;
        }
        let members = g.members.iter().map(|&i| &rows[i]);
        let Some((hw, mean)) = mean_map(base, members, &mut missing)? else {
            without += 1;
            continue;
        };
        let name = unique(&mut names, &file_name(&key.name()));
        let npy = dir.join(format!("{name}.mean.npy"));
        gradcam::npy::write_f32(&npy, &[hw.0, hw.1], &mean)?;
        let png = dir.join(format!("{name}.mean.png"));
        heatmap(&mean, hw, colormap)
            .save(&png)
            .with_context(|| format!("writing {}", png.display()))?;
        written += 1;
    }
    if written == 0 && !rows.iter().any(|r| r.ok) {
        anyhow::bail!(
            "--maps: every image in the summary in {} failed: there are no maps to average",
            base.display()
        );
    }
    if written == 0 {
        anyhow::bail!(
            "--maps: no .cam.npy of an explained image beside the summary in {} (was it \
             explained with `--outputs` leaving out cam?)",
            base.display()
        );
    }
    if missing > 0 {
        eprintln!(
            "warning: --maps: {missing} explained image(s) have no .cam.npy beside the summary \
             in {}; their groups' means are over the maps there",
            base.display()
        );
    }
    Ok((written, without))
}

/// A map's (height, width) and values, row-major.
type Map = ((usize, usize), Vec<f32>);

/// The size a group's maps are averaged at: the one most of them have (maps of images
/// explained at their own sizes, `--size native`, differ), on ties the larger in area, then
/// the taller; so the mean does not depend on the order of the rows. From the headers of the
/// whole 2-D maps (the others are left out, with a warning, when read).
fn common_size(paths: &[std::path::PathBuf]) -> Option<(usize, usize)> {
    let mut counts = std::collections::HashMap::<(usize, usize), usize>::new();
    for p in paths {
        if let Some([h, w]) = gradcam::npy::whole_f32_shape(p).as_deref() {
            *counts.entry((*h, *w)).or_default() += 1;
        }
    }
    (counts.into_iter())
        .filter(|&((h, w), _)| h > 0 && w > 0)
        .max_by_key(|&((h, w), n)| (n, h.saturating_mul(w), h))
        .map(|(hw, _)| hw)
}

/// The mean of the explained rows' maps, at their [`common_size`]; None without any map.
/// Rows whose map is not there are counted in `missing` when the group has a mean.
fn mean_map<'r>(
    base: &Path,
    rows: impl Iterator<Item = &'r Row>,
    missing: &mut usize,
) -> anyhow::Result<Option<Map>> {
    let rows: Vec<&Row> = rows.filter(|r| r.ok).collect();
    let paths: Vec<std::path::PathBuf> = (rows.iter())
        .map(|r| base.join(format!("{}.cam.npy", r.stem)))
        .collect();
    // (None: no whole 2-D map; each file is left out below, saying why.)
    let hw = common_size(&paths).unwrap_or((0, 0));
    let mut sum: Vec<f64> = vec![0.0; hw.0 * hw.1];
    let (mut n, mut gone) = (0usize, 0);
    for (r, path) in rows.iter().zip(paths) {
        if r.stem.is_empty() || !path.is_file() {
            gone += 1;
            continue;
        }
        let skip = |why: String| eprintln!("warning: --maps leaves out {}: {why}", path.display());
        let (shape, map) = match gradcam::npy::read_f32(&path) {
            Ok(m) => m,
            Err(e) => {
                skip(e.to_string());
                continue;
            }
        };
        let [h, w] = shape[..] else {
            skip(format!(
                "shape {shape:?}: a map has 2 dimensions (height, width)"
            ));
            continue;
        };
        if h == 0 || w == 0 || h.checked_mul(w) != Some(map.len()) {
            skip(format!("an empty map ({h}×{w})"));
            continue;
        }
        if map.iter().any(|v| !v.is_finite()) {
            skip("the map holds NaN or infinite values".into());
            continue;
        }
        let map = match (h, w) == hw {
            true => map,
            false => gradcam::image::resize_bilinear(&map, h, w, 1, hw.0, hw.1),
        };
        sum.iter_mut().zip(map).for_each(|(s, v)| *s += v as f64);
        n += 1;
    }
    // (A group without any map gets no mean, and is counted by the caller apart.)
    if n > 0 {
        *missing += gone;
    }
    Ok((n > 0).then(|| (hw, sum.iter().map(|s| (s / n as f64) as f32).collect())))
}

/// The map min-max normalised, in `colormap` (a flat map: its first colour, JET's blue).
fn heatmap(m: &[f32], (h, w): (usize, usize), colormap: Colormap) -> RgbImage {
    let table = colormap.table();
    let lo = m.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = (hi - lo).max(1e-7);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let v = (m[y as usize * w + x as usize] - lo) / span;
        image::Rgb(table[(255.0 * v).clamp(0.0, 255.0) as usize])
    })
}

/// A group's name as a file name: path separators and other awkward characters as `_`.
fn file_name(group: &str) -> String {
    let s: String = (group.chars())
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' => c,
            _ => '_',
        })
        .collect();
    let s = s.trim_matches(['_', '.']).to_string();
    if s.is_empty() {
        "group".into()
    } else {
        s
    }
}

/// `name`, or `name-2`, `name-3`, ... when taken.
fn unique(taken: &mut HashSet<String>, name: &str) -> String {
    let mut n = 1;
    let mut s = name.to_string();
    while !taken.insert(s.clone()) {
        n += 1;
        s = format!("{name}-{n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradcam::cam::colormap::JET;

    #[test]
    fn group_names_become_file_names() {
        assert_eq!(file_name("3 tabby cat"), "3_tabby_cat");
        assert_eq!(file_name("/data/val/n01440764"), "data_val_n01440764");
        assert_eq!(file_name("(failed)"), "failed");
        assert_eq!(file_name("///"), "group");
        let mut taken = HashSet::new();
        assert_eq!(unique(&mut taken, "a"), "a");
        assert_eq!(unique(&mut taken, "a"), "a-2");
    }

    #[test]
    fn mean_maps_average_each_groups_maps() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        let text = "image,status,error,class,label,probability,logit,predicted,\
            predicted_label,peak_x,peak_y,centroid_x,centroid_y,border_mass,area_half,stem\n\
            a.png,ok,,1,,0.5,1,1,,,,,,,,a\n\
            b.png,ok,,1,,0.5,1,1,,,,,,,,b\n\
            c.png,ok,,1,,0.5,1,1,,,,,,,,sub/c\n\
            d.png,error,bad,,,,,,,,,,,,,\n\
            e.png,ok,,2,,0.5,1,2,,,,,,,,e\n";
        let rows = crate::summarize::parse(text).unwrap();
        use crate::summarize::{by_column, group, By};
        let groups = group(&rows, |r| by_column(r, By::Class));
        std::fs::create_dir(base.join("sub")).unwrap();
        let npy = |stem: &str, shape: &[usize], v: &[f32]| {
            gradcam::npy::write_f32(&base.join(format!("{stem}.cam.npy")), shape, v).unwrap()
        };
        // Class 1: two 2x2 maps, and a 3x3 constant one (constant after any resampling).
        npy("a", &[2, 2], &[1.0, 0.0, 0.0, 0.0]);
        npy("b", &[2, 2], &[0.0, 1.0, 0.0, 0.5]);
        npy("sub/c", &[3, 3], &[0.25; 9]);
        // Class 2 (e) has only maps that are no maps (empty, NaN): left out; the failed
        // group has none to miss (not counted).
        npy("e", &[0, 0], &[]);
        let out = base.join("maps");
        let (written, without) = write(&out, base, &rows, &groups, Colormap::JET).unwrap();
        assert_eq!((written, without), (1, 1));
        npy("e", &[1, 2], &[f32::NAN, 1.0]);
        let (written, without) = write(&out, base, &rows, &groups, Colormap::JET).unwrap();
        assert_eq!((written, without), (1, 1));
        let (shape, mean) = gradcam::npy::read_f32(&out.join("1.mean.npy")).unwrap();
        assert_eq!(shape, [2, 2]);
        let want = [1.25 / 3.0, 1.25 / 3.0, 0.25 / 3.0, 0.75 / 3.0];
        for (m, w) in mean.iter().zip(want) {
            assert!((m - w).abs() < 1e-6, "{mean:?}");
        }
        let png = image::open(out.join("1.mean.png")).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (2, 2));
        assert_eq!(png.get_pixel(0, 0).0, JET[255]);
        assert_eq!(png.get_pixel(0, 1).0, JET[0]);

        std::fs::remove_file(base.join("a.cam.npy")).unwrap();
        std::fs::remove_file(base.join("b.cam.npy")).unwrap();
        std::fs::remove_file(base.join("sub/c.cam.npy")).unwrap();
        let err = write(&out, base, &rows, &groups, Colormap::JET).unwrap_err();
        assert!(err.to_string().contains("no .cam.npy"), "{err}");
    }

    /// The size a group's maps are averaged at does not depend on the rows' order: the one
    /// most maps have, then the larger, then the taller.
    #[test]
    fn the_common_size_is_the_most_frequent() {
        let d = tempfile::tempdir().unwrap();
        let npy = |name: &str, h: usize, w: usize| {
            let p = d.path().join(name);
            gradcam::npy::write_f32(&p, &[h, w], &vec![0.5; h * w]).unwrap();
            p
        };
        let (big, a, b) = (npy("big", 30, 30), npy("a", 2, 2), npy("b", 2, 2));
        let (wide, tall) = (npy("wide", 1, 4), npy("tall", 4, 1));
        let cut = d.path().join("cut");
        std::fs::write(&cut, &std::fs::read(&big).unwrap()[..200]).unwrap();
        for order in [
            vec![big.clone(), a.clone(), b.clone()],
            vec![a.clone(), big.clone(), b.clone(), cut.clone()],
            vec![cut.clone(), b, big.clone(), a],
        ] {
            assert_eq!(common_size(&order), Some((2, 2)), "{order:?}");
        }
        assert_eq!(common_size(&[wide.clone(), tall.clone()]), Some((4, 1)));
        assert_eq!(common_size(&[tall, wide, big]), Some((30, 30)));
        assert_eq!(common_size(&[cut]), None);
    }

    #[test]
    fn heatmaps_span_the_colormap() {
        let img = heatmap(&[0.2, 0.6, 1.0, 0.2], (2, 2), Colormap::JET);
        assert_eq!(img.get_pixel(0, 0).0, JET[0]);
        assert_eq!(img.get_pixel(0, 1).0, JET[255]);
        assert_eq!(img.get_pixel(1, 0).0, JET[127]);
        let turbo = Colormap::by_name("turbo").unwrap();
        let img = heatmap(&[0.2, 0.6, 1.0, 0.2], (2, 2), turbo);
        assert_eq!(img.get_pixel(0, 1).0, turbo.table()[255]);
    }
}
