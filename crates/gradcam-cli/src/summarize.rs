//! `gradcam summarize`: a data set's summary.csv per class (or per folder, or per predicted
//! class), the first thing an audit looks at: how many images each group has, how many
//! failed, how often the model's top-1 is the class explained (its accuracy when the classes
//! are the ground truth), and where its maps look. Groups whose maps lean most on the image's
//! borders (backgrounds, frames, watermarks) come first.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::inputs::canonical;
use crate::summary::{fields, records, FILE};

#[derive(Args)]
pub struct SummarizeArgs {
    /// A summary.csv written by `gradcam explain`, or the output folder that holds it.
    summary: PathBuf,
    /// Group the images by the class explained, by the model's top-1 class, or by the folder
    /// each image lies in (e.g. a data set's subgroups).
    #[arg(long, value_enum, default_value_t = By::Class)]
    by: By,
    /// Group by the groups this file gives instead: `image,group` lines (or blank-separated;
    /// images relative to the file, an optional header), e.g. a data set's subgroups by an
    /// attribute (site, device, demographic) to compare the model and its maps across them.
    #[arg(long, conflicts_with = "by")]
    groups: Option<PathBuf>,
    /// Order of the groups: highest mean border mass first, lowest top-1 accuracy first,
    /// most images first, or by class index / folder name.
    #[arg(long, value_enum, default_value_t = Sort::Border)]
    sort: Sort,
    /// Also write the table as CSV.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Also write each group's mean map into this folder (`<group>.mean.png` in --colormap and
    /// `<group>.mean.npy`): where the model looks on average, from the run's .cam.npy files.
    #[arg(long)]
    maps: Option<PathBuf>,
    /// The mean maps' colormap: any of OpenCV's (jet, turbo, viridis, ...), as `explain`'s.
    #[arg(long, default_value = "jet", requires = "maps")]
    colormap: gradcam::cam::Colormap,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sort {
    Border,
    Accuracy,
    Images,
    Name,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    Class,
    Predicted,
    Folder,
}

/// One row of summary.csv, as far as the aggregates need it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    image: String,
    /// The image's outputs, `<stem>.*` beside summary.csv.
    pub stem: String,
    pub ok: bool,
    class: Option<(usize, String)>,
    predicted: Option<(usize, String)>,
    probability: Option<f64>,
    /// peak (x, y), centroid (x, y), border mass, area at half the maximum: None for a
    /// failed image or an all-zero map.
    stats: Option<[f64; 6]>,
}

/// A group's aggregates.
#[derive(Debug, Default, PartialEq)]
pub struct Group {
    /// Its rows, by position.
    pub members: Vec<usize>,
    images: usize,
    failed: usize,
    /// Explained images whose top-1 is the class explained.
    agree: usize,
    probability: f64,
    /// Explained images with map statistics (not all-zero), and their sums.
    mapped: usize,
    border_mass: f64,
    area_half: f64,
    centroid: (f64, f64),
    /// Images whose map peaks within `BORDER` of an edge.
    peak_at_edge: usize,
}

impl Group {
    fn add(&mut self, i: usize, r: &Row) {
        self.members.push(i);
        self.images += 1;
        if !r.ok {
            self.failed += 1;
            return;
        }
        if r.class.is_some() && r.class.as_ref().map(|c| c.0) == r.predicted.as_ref().map(|c| c.0) {
            self.agree += 1;
        }
        self.probability += r.probability.unwrap_or(0.0);
        if let Some([px, py, cx, cy, border, area]) = r.stats {
            self.mapped += 1;
            self.border_mass += border;
            self.area_half += area;
            self.centroid.0 += cx;
            self.centroid.1 += cy;
            let edge = gradcam::eval::metrics::BORDER as f64;
            if px.min(1.0 - px) < edge || py.min(1.0 - py) < edge {
                self.peak_at_edge += 1;
            }
        }
    }

    fn explained(&self) -> usize {
        self.images - self.failed
    }

    /// The table's cells after the group's name.
    fn cells(&self) -> [String; 9] {
        let per = |sum: f64, n: usize| match n {
            0 => "-".to_string(),
            n => format!("{:.3}", sum / n as f64),
        };
        let (e, m) = (self.explained(), self.mapped);
        [
            self.images.to_string(),
            self.failed.to_string(),
            per(self.agree as f64, e),
            per(self.probability, e),
            per(self.border_mass, m),
            per(self.peak_at_edge as f64, m),
            per(self.area_half, m),
            per(self.centroid.0, m),
            per(self.centroid.1, m),
        ]
    }

    fn mean_border(&self) -> Option<f64> {
        (self.mapped > 0).then(|| self.border_mass / self.mapped as f64)
    }
}

const HEADS: [&str; 10] = [
    "group",
    "images",
    "failed",
    "top1_is_class",
    "probability",
    "border_mass",
    "peak_at_edge",
    "area_half",
    "centroid_x",
    "centroid_y",
];

pub fn run(a: SummarizeArgs) -> anyhow::Result<ExitCode> {
    let file = match a.summary.is_dir() {
        true => a.summary.join(FILE),
        false => a.summary.clone(),
    };
    if std::fs::metadata(&a.summary).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        anyhow::bail!(
            "{}: no such file or folder (give a run's output folder or its summary.csv)",
            a.summary.display()
        );
    }
    if a.summary.is_dir() && !file.exists() {
        anyhow::bail!(
            "{}: holds no summary.csv (give an output folder of `gradcam explain`)",
            a.summary.display()
        );
    }
    let text = crate::inputs::read_text(&file).with_context(|| format!("{}", file.display()))?;
    if let Some(out) = &a.out {
        let inputs = [Some(file.as_path()), a.groups.as_deref()];
        crate::inputs::check_report_out(
            "--out",
            out,
            &inputs.into_iter().flatten().collect::<Vec<_>>(),
        )?;
    }
    if let Some(maps) = a.maps.as_ref().filter(|m| m.exists() && !m.is_dir()) {
        anyhow::bail!("--maps {}: a file, not a folder", maps.display());
    }
    let rows = parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if rows.is_empty() {
        anyhow::bail!("{}: no rows under the header", file.display());
    }
    let mut groups = match &a.groups {
        Some(f) => {
            let named = load_groups(f)?;
            let grouped = group(&rows, |r| {
                named
                    .get(&canonical(Path::new(&r.image)))
                    .map_or(Key::Unlisted, |g| Key::Name(g.clone()))
            });
            // (Rows of failed images may be grouped apart: whether any row is named decides.)
            if !(rows.iter()).any(|r| named.contains_key(&canonical(Path::new(&r.image)))) {
                eprintln!(
                    "warning: {} names none of the {} images in {} (its paths are read \
                     relative to its own folder)",
                    f.display(),
                    rows.len(),
                    file.display()
                );
            }
            grouped
        }
        None => group(&rows, |r| by_column(r, a.by)),
    };
    sort(&mut groups, a.sort);
    let mut all = Group::default();
    rows.iter().enumerate().for_each(|(i, r)| all.add(i, r));
    let mut table: Vec<(String, [String; 9])> = (groups.iter())
        .map(|(k, g)| (k.name(), g.cells()))
        .collect();
    table.push(("all".into(), all.cells()));

    let width = |i: usize| {
        (table.iter())
            .map(|(n, c)| {
                if i == 0 {
                    n.chars().count()
                } else {
                    c[i - 1].len()
                }
            })
            .chain([HEADS[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..HEADS.len()).map(width).collect();
    let line = |name: &str, cells: &[String]| {
        let mut s = format!("{name:<w$}", w = widths[0]);
        for (i, c) in cells.iter().enumerate() {
            s += &format!("  {c:>w$}", w = widths[i + 1]);
        }
        s
    };
    // The files first: a reader of the table that stops early (`| head`) closes stdout.
    let mut maps_line = None;
    if let Some(dir) = &a.maps {
        let base = file.parent().unwrap_or(Path::new(""));
        let (written, without) = crate::mean_maps::write(dir, base, &rows, &groups, a.colormap)?;
        maps_line = Some(format!("{written} mean map(s) → {}", dir.display()));
        if without > 0 {
            eprintln!(
                "note: {without} group(s) have no .cam.npy beside {} (explained with \
                 `--outputs` leaving out cam?): no mean map for them",
                file.display()
            );
        }
    }
    if let Some(out) = &a.out {
        let mut csv = HEADS.join(",") + "\n";
        for (name, cells) in &table {
            csv += &format!("{},{}\n", crate::summary::field(name), cells.join(","));
        }
        std::fs::write(out, csv).with_context(|| format!("writing {}", out.display()))?;
    }
    let heads: Vec<String> = HEADS[1..].iter().map(|h| h.to_string()).collect();
    println!("{}", line(HEADS[0], &heads));
    for (name, cells) in &table {
        println!("{}", line(name, cells));
    }
    println!(
        "\n{} images, {} group(s). border_mass: the share of a map within {:.0} % of an edge \
         (a flat map: 0.36);\npeak_at_edge: the share of maps peaking there; top1_is_class: \
         the model's accuracy when the classes\nexplained are the ground truth \
         (`explain --classes`), 1 by definition otherwise.",
        all.images,
        groups.len(),
        gradcam::eval::metrics::BORDER * 100.0
    );
    if let Some(l) = maps_line {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A group's key: sorted by class index, or by name (folder, `--groups`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Class(usize, String),
    Name(String),
    /// Failed images without a class, when grouping by class.
    Unknown,
    /// Images the `--groups` file does not list.
    Unlisted,
}

impl Key {
    pub fn name(&self) -> String {
        match self {
            Key::Class(c, l) if l.is_empty() => c.to_string(),
            Key::Class(c, l) => format!("{c} {l}"),
            Key::Name(f) => f.clone(),
            Key::Unknown => "(failed)".into(),
            Key::Unlisted => "(not in --groups)".into(),
        }
    }
}

/// The groups, in key order.
pub fn group(rows: &[Row], key_of: impl Fn(&Row) -> Key) -> Vec<(Key, Group)> {
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        groups.entry(key_of(r)).or_default().add(i, r);
    }
    groups.into_iter().collect()
}

/// A row's group by one of its columns.
pub fn by_column(r: &Row, by: By) -> Key {
    let class =
        |c: &Option<(usize, String)>| c.clone().map_or(Key::Unknown, |(c, l)| Key::Class(c, l));
    match by {
        By::Class => class(&r.class),
        By::Predicted => class(&r.predicted),
        // (An image given from the working folder, `a.png`, lies in `.`, not in ``.)
        By::Folder => Key::Name(
            (Path::new(&r.image).parent())
                .map(|p| p.display().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| ".".into()),
        ),
    }
}

/// `--groups F`: image (canonical path) → group.
fn load_groups(file: &Path) -> anyhow::Result<HashMap<PathBuf, String>> {
    let text =
        crate::inputs::read_text(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new(""));
    let mut out = HashMap::new();
    for line in crate::classes::named_lines(&text, &["group"]) {
        let bad = |why: String| anyhow::anyhow!("{}:{}: {why}", file.display(), line.number);
        let Some((image, group)) = line.fields.filter(|(i, g)| !i.is_empty() && !g.is_empty())
        else {
            return Err(bad(format!("want `image,group`, got `{}`", line.text)));
        };
        let path = gradcam::path_text::path_of(&base.join(image));
        // More columns than two: the last comma split off the last one, and the "image" is
        // a real one with the group after it.
        if let Some((first, _)) = image.split_once(',').filter(|_| !path.is_file()) {
            if base.join(first.trim()).is_file() {
                return Err(bad(format!(
                    "want `image,group`, got {} fields in `{}` (quote an image name that holds \
                     commas)",
                    line.text.split(',').count(),
                    line.text
                )));
            }
        }
        if line.first && !path.is_file() {
            continue; // column names
        }
        if let Some(before) = out.insert(canonical(&path), group.to_string()) {
            if before != group {
                return Err(bad(format!(
                    "`{image}` is listed before in group `{before}`"
                )));
            }
        }
    }
    if out.is_empty() {
        anyhow::bail!("{}: lists no images", file.display());
    }
    Ok(out)
}

/// Orders groups as `--sort` says; groups without the value last, ties in key order.
pub fn sort(groups: &mut [(Key, Group)], by: Sort) {
    let value = |g: &Group| -> f64 {
        let v = match by {
            Sort::Border => g.mean_border(),
            Sort::Accuracy => (g.explained() > 0).then(|| -(g.agree as f64 / g.explained() as f64)),
            Sort::Images => Some(g.images as f64),
            Sort::Name => Some(0.0),
        };
        v.unwrap_or(f64::NEG_INFINITY)
    };
    groups.sort_by(|a, b| {
        value(&b.1)
            .total_cmp(&value(&a.1))
            .then_with(|| a.0.cmp(&b.0))
    });
}

/// The rows of a summary.csv, columns found by name in its header.
pub fn parse(text: &str) -> Result<Vec<Row>, String> {
    let mut recs = records(text).enumerate().filter(|(_, r)| !r.is_empty());
    let (_, header) = recs.next().ok_or("empty file")?;
    let names = fields(header);
    let col = |name: &str| {
        names.iter().position(|n| n == name).ok_or_else(|| {
            format!("no `{name}` column: not a summary.csv written by `gradcam explain`")
        })
    };
    let [image, status, class, label, prob, pred, pred_label, stem] = [
        "image",
        "status",
        "class",
        "label",
        "probability",
        "predicted",
        "predicted_label",
        "stem",
    ]
    .map(col);
    let (image, status, class, label, prob, pred, pred_label, stem) = (
        image?,
        status?,
        class?,
        label?,
        prob?,
        pred?,
        pred_label?,
        stem?,
    );
    let stat_cols = [
        "peak_x",
        "peak_y",
        "centroid_x",
        "centroid_y",
        "border_mass",
        "area_half",
    ]
    .map(col);
    let mut stat_at = [0usize; 6];
    for (i, c) in stat_cols.into_iter().enumerate() {
        stat_at[i] = c?;
    }
    recs.map(|(i, rec)| {
        let f = fields(rec);
        let bad = |why: String| format!("record {}: {why}", i + 1);
        if f.len() != names.len() {
            return Err(bad(format!(
                "{} fields, the header has {}",
                f.len(),
                names.len()
            )));
        }
        let num = |c: usize| -> Result<Option<f64>, String> {
            match f[c].as_str() {
                "" => Ok(None),
                s => (s.parse::<f64>().ok().filter(|v| v.is_finite()))
                    .map(Some)
                    .ok_or_else(|| bad(format!("`{s}` in column {} is not a number", names[c]))),
            }
        };
        let class_at = |c: usize, l: usize| -> Result<Option<(usize, String)>, String> {
            match f[c].as_str() {
                "" => Ok(None),
                s => s
                    .parse::<usize>()
                    .map(|k| Some((k, f[l].clone())))
                    .map_err(|_| bad(format!("`{s}` in column {} is not a class index", names[c]))),
            }
        };
        let mut stats = [0f64; 6];
        let mut have = true;
        for (k, &c) in stat_at.iter().enumerate() {
            match num(c)? {
                // Positions and shares as fractions of the image, as `explain` writes them.
                // (The field as written: 1e300 is not shown as 301 digits.)
                Some(v) if !(0.0..=1.0).contains(&v) => {
                    return Err(bad(format!("{} {} is outside [0, 1]", names[c], f[c])))
                }
                Some(v) => stats[k] = v,
                None => have = false,
            }
        }
        let ok = match f[status].as_str() {
            "ok" => true,
            "error" => false,
            s => return Err(bad(format!("status `{s}` is neither `ok` nor `error`"))),
        };
        // A softmax probability as `explain` writes it; outside [0, 1], edited by hand.
        let probability = num(prob)?;
        if probability.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(bad(format!("probability {} is outside [0, 1]", f[prob])));
        }
        Ok(Row {
            image: f[image].clone(),
            stem: f[stem].clone(),
            ok,
            class: class_at(class, label)?,
            predicted: class_at(pred, pred_label)?,
            probability,
            stats: have.then_some(stats),
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "image,status,error,class,label,probability,logit,predicted,\
        predicted_label,peak_x,peak_y,centroid_x,centroid_y,border_mass,area_half,stem";

    fn summary() -> String {
        [
            HEADER,
            // cats: one right and centred, one taken for a dog, peaking at the left edge
            "d/cats/1.png,ok,,3,cat,0.9,5,3,cat,0.5,0.5,0.5,0.5,0.2,0.1,1",
            "d/cats/2.png,ok,,3,cat,0.3,1,5,dog,0.05,0.5,0.3,0.5,0.6,0.3,2",
            // dogs: one right with an all-zero map, one that failed
            "d/dogs/3.png,ok,,5,dog,0.8,4,5,dog,,,,,,,3",
            "d/dogs/4.png,error,\"not, an image\",,,,,,,,,,,,,",
        ]
        .join("\n")
            + "\n"
    }

    #[test]
    fn rows_parse_by_column_name() {
        let rows = parse(&summary()).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].class, Some((3, "cat".into())));
        assert_eq!(rows[1].predicted, Some((5, "dog".into())));
        assert_eq!(rows[1].stats, Some([0.05, 0.5, 0.3, 0.5, 0.6, 0.3]));
        assert_eq!(rows[2].stats, None);
        assert!(!rows[3].ok && rows[3].class.is_none());
        assert!(parse("image,status\na.png,ok\n")
            .unwrap_err()
            .contains("no `class` column"));
        let bad = summary().replace("0.9,5,3", "high,5,3");
        assert!(parse(&bad).unwrap_err().contains("record 2: `high`"));
        let bad = summary().replace("0.9,5,3", "1.5,5,3");
        assert!(parse(&bad)
            .unwrap_err()
            .contains("record 2: probability 1.5 is outside"));
        let bad = summary().replace("0.5,0.2,0.1,1", "0.5,-2,0.1,1");
        assert!(parse(&bad)
            .unwrap_err()
            .contains("record 2: border_mass -2 is outside [0, 1]"));
        let bad = summary().replace(",0.5,0.5,0.5,0.5,", ",5,0.5,0.5,0.5,");
        assert!(parse(&bad)
            .unwrap_err()
            .contains("record 2: peak_x 5 is outside"));
        let bad = summary().replace("2.png,ok", "2.png,OK?");
        assert!(parse(&bad).unwrap_err().contains("record 3: status `OK?`"));
    }

    #[test]
    fn groups_aggregate_and_sort_by_border_mass() {
        let rows = parse(&summary()).unwrap();
        let mut g = group(&rows, |r| by_column(r, By::Class));
        sort(&mut g, Sort::Border);
        let names: Vec<String> = g.iter().map(|(k, _)| k.name()).collect();
        // cats lean on the borders (mean 0.4); dogs have no map statistics; failed: none.
        assert_eq!(names, ["3 cat", "5 dog", "(failed)"]);
        let cats = &g[0].1;
        assert_eq!((cats.images, cats.failed, cats.agree), (2, 0, 1));
        assert_eq!((cats.mapped, cats.peak_at_edge), (2, 1));
        assert!((cats.border_mass / 2.0 - 0.4).abs() < 1e-12);
        assert_eq!(
            cats.cells(),
            ["2", "0", "0.500", "0.600", "0.400", "0.500", "0.200", "0.400", "0.500"]
                .map(String::from)
        );
        assert_eq!(g[1].1.cells()[4], "-");
        assert_eq!((g[2].1.images, g[2].1.failed), (1, 1));

        let f = group(&rows, |r| by_column(r, By::Folder));
        let names: Vec<String> = f.iter().map(|(k, _)| k.name()).collect();
        assert_eq!(names, ["d/cats", "d/dogs"]);
        assert_eq!((f[1].1.images, f[1].1.failed, f[1].1.agree), (2, 1, 1));

        let mut p = group(&rows, |r| by_column(r, By::Predicted));
        let dog = p.iter().find(|(k, _)| k.name() == "5 dog").unwrap();
        assert_eq!((dog.1.images, dog.1.agree), (2, 1));
        // Predicted dog: accuracy 0.5, 2 images; predicted cat: 1.0, 1 image; failed: none.
        let order = |p: &mut Vec<(Key, Group)>, s: Sort| {
            sort(p, s);
            p.iter().map(|(k, _)| k.name()).collect::<Vec<_>>()
        };
        assert_eq!(order(&mut p, Sort::Name), ["3 cat", "5 dog", "(failed)"]);
        assert_eq!(
            order(&mut p, Sort::Accuracy),
            ["5 dog", "3 cat", "(failed)"]
        );
        assert_eq!(order(&mut p, Sort::Name), ["3 cat", "5 dog", "(failed)"]);
        assert_eq!(order(&mut p, Sort::Images), ["5 dog", "3 cat", "(failed)"]);
    }

    #[test]
    fn groups_from_a_file() {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.png", "b.png", "c.png"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        let file = d.path().join("groups.csv");
        std::fs::write(&file, "image,site\na.png,north\n./b.png south\n").unwrap();
        let named = load_groups(&file).unwrap();
        let text = format!(
            "image,status,error,class,label,probability,logit,predicted,predicted_label,\
             peak_x,peak_y,centroid_x,centroid_y,border_mass,area_half,stem\n\
             {a},ok,,1,,0.5,1,1,,,,,,,,a\n{b},ok,,1,,0.5,1,2,,,,,,,,b\n{c},ok,,1,,0.5,1,1,,,,,,,,c\n",
            a = d.path().join("a.png").display(),
            b = d.path().join("./b.png").display(),
            c = d.path().join("c.png").display(),
        );
        let rows = parse(&text).unwrap();
        let g = group(&rows, |r| {
            (named.get(&canonical(Path::new(&r.image))))
                .map_or(Key::Unlisted, |g| Key::Name(g.clone()))
        });
        let got: Vec<(String, usize, usize)> = (g.iter())
            .map(|(k, g)| (k.name(), g.images, g.agree))
            .collect();
        assert_eq!(
            got,
            [
                ("north".into(), 1, 1),
                ("south".into(), 1, 0),
                ("(not in --groups)".into(), 1, 1)
            ]
        );
        for (text, says) in [
            (
                "a.png,north\na.png,south\n",
                ":2: `a.png` is listed before in group `north`",
            ),
            ("a.png\n", ":1: want `image,group`"),
            ("image,group\n", "lists no images"),
            (
                "a.png,north\na.png,north,x\n",
                ":2: want `image,group`, got 3 fields",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = load_groups(&file).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        // Columns named on the first line: `image` and `group` among others.
        std::fs::write(&file, "site,group,image\nx,north,a.png\n").unwrap();
        let g = load_groups(&file).unwrap();
        assert_eq!(g.values().collect::<Vec<_>>(), ["north"]);
    }
}
