//! Evaluation manifests: CSV (`image,class,x0,y0,x1,y1[,mask]`, one box per row, rows of
//! the same image merged) or JSON Lines (`{"image", "class", "boxes": [[x0,y0,x1,y1], ...],
//! "mask"?}`). Boxes are inclusive pixel coordinates of the original image (ImageNet's
//! xmin, ymin, xmax, ymax). Paths are relative to the manifest's folder. A class is an index
//! or one of the model's labels. A CSV's first line may name the columns, in any order (then
//! every name must be known: a header read by position would swap coordinates silently).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::path_text::path_of;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub image: PathBuf,
    pub class: usize,
    /// [x0, y0, x1, y1], inclusive.
    pub boxes: Vec<[f32; 4]>,
    /// Optional binary mask image (non-zero = object), same size as the image.
    pub mask: Option<PathBuf>,
}

/// The manifest's entries; `labels` (the model's class names) let classes be given by name;
/// with `num_classes`, a class the model does not have is an error naming its line.
pub fn load(
    path: &Path,
    labels: Option<&[String]>,
    num_classes: Option<usize>,
) -> Result<Vec<Entry>> {
    load_noting(path, labels, num_classes).map(|(entries, _)| entries)
}

/// [`load`], and a note for the reader when a class given as digits (read as an index) is
/// also the label of another class: numbered classes in ImageFolder's sorted order, where
/// label `10` is class 1.
pub fn load_noting(
    path: &Path,
    labels: Option<&[String]>,
    num_classes: Option<usize>,
) -> Result<(Vec<Entry>, Option<String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::Invalid(format!(
            "{}: not a text file (a manifest is CSV or JSON Lines; is this an image?)",
            path.display()
        ))
    })?;
    // A byte-order mark (spreadsheet programs write one) is not part of the first name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let base = path.parent().unwrap_or(Path::new("."));
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json")
        || text.trim_start().starts_with('{');
    let mut classes = Classes {
        labels,
        count: num_classes,
        digits: Default::default(),
    };
    let entries = if is_jsonl {
        parse_jsonl(text, base, &mut classes)
    } else {
        parse_csv(text, base, &mut classes)
    }
    .map_err(|(line, why)| Error::Invalid(format!("{}:{line}: {why}", path.display())))?;
    if entries.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the manifest lists no images",
            path.display()
        )));
    }
    let note = classes.digits.note(path);
    Ok((entries, note))
}

type LineError = (usize, String);

fn check_box(b: [f32; 4]) -> std::result::Result<[f32; 4], String> {
    if b.iter().any(|v| !v.is_finite() || *v < 0.0) || b[2] < b[0] || b[3] < b[1] {
        return Err(format!("bad box {b:?}: want x0 <= x1, y0 <= y1, all >= 0"));
    }
    Ok(b)
}

/// The CSV columns: the names a header may give each (any case), in the order rows without
/// a header follow.
/// The names a header may give the image column (also read by the CLI's class files).
pub const IMAGE_COLUMN: &[&str] = &["image", "path", "file", "filename"];
/// The names a header may give the class column.
pub const CLASS_COLUMN: &[&str] = &["class", "label", "target"];

const COLUMNS: [&[&str]; 7] = [
    IMAGE_COLUMN,
    CLASS_COLUMN,
    &["x0", "xmin"],
    &["y0", "ymin"],
    &["x1", "xmax"],
    &["y1", "ymax"],
    &["mask"],
];
const WANT: &str = "image,class,x0,y0,x1,y1[,mask]";

/// What a row's class may be: an index below `count` (when known) or one of `labels`.
struct Classes<'a> {
    labels: Option<&'a [String]>,
    count: Option<usize>,
    /// Classes given as digits that are also another class's label, for a note.
    digits: crate::model::DigitsLabels,
}

impl Classes<'_> {
    /// The class of line `line` given by index or label, as a row error when it is neither
    /// or out of range.
    fn of(&mut self, s: &str, line: usize) -> std::result::Result<usize, LineError> {
        let c = self.of_text(s).map_err(|e| (line, e))?;
        self.digits.see(line, s, self.labels);
        Ok(c)
    }

    fn of_text(&self, s: &str) -> std::result::Result<usize, String> {
        let c = match crate::model::class_index(s, self.labels)? {
            Some(c) => c,
            None if self.labels.is_some() => {
                return Err(format!(
                    "class `{s}` is neither an index nor one of the model's labels"
                ))
            }
            None => {
                return Err(format!(
                "class `{s}` is not an index (the model's file has no labels to name classes by)"
            ))
            }
        };
        self.check(c)
    }

    fn check(&self, c: usize) -> std::result::Result<usize, String> {
        match self.count {
            Some(n) if c >= n => Err(format!(
                "class {c} is out of range: the model has {n} classes (0..={})",
                n.saturating_sub(1)
            )),
            _ => Ok(c),
        }
    }
}

/// Which field of a row fills each of [`COLUMNS`], from a header's names.
fn header_columns(names: &[String]) -> std::result::Result<[Option<usize>; 7], String> {
    let mut at = [None; 7];
    for (i, name) in names.iter().enumerate() {
        let n = name.trim().to_ascii_lowercase();
        let Some(col) = COLUMNS.iter().position(|c| c.contains(&n.as_str())) else {
            return Err(format!(
                "unknown column `{name}`: want {WANT}, in any order (xmin,ymin,xmax,ymax and \
                 path, label also read); a first line without numbers after its first field \
                 is read as column names"
            ));
        };
        if at[col].replace(i).is_some() {
            return Err(format!("two columns name the {}", COLUMNS[col][0]));
        }
    }
    let missing: Vec<&str> = (0..6)
        .filter(|&c| at[c].is_none())
        .map(|c| COLUMNS[c][0])
        .collect();
    match missing.is_empty() {
        true => Ok(at),
        false => Err(format!(
            "the header has no {} column (want {WANT})",
            missing.join(", ")
        )),
    }
}

fn parse_csv(
    text: &str,
    base: &Path,
    classes: &mut Classes,
) -> std::result::Result<Vec<Entry>, LineError> {
    let mut out: Vec<Entry> = Vec::new();
    // Each image's entry in `out`: a data set's manifest has a row per box (ImageNet's
    // validation set, 50 000 images), which a scan per row made quadratic.
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    // Where each column's field is: by position until a header says otherwise.
    let mut at: Option<[Option<usize>; 7]> = None;
    let mut first = true;
    // The line each record starts on (a quoted field may hold line breaks).
    let mut next_line = 1;
    for record in crate::csv::records(text) {
        let i = next_line - 1;
        next_line += 1 + record.matches('\n').count();
        let row = record.trim();
        if row.is_empty() || row.starts_with('#') {
            continue;
        }
        let mut f: Vec<String> = crate::csv::fields(row)
            .into_iter()
            .map(|f| f.trim().to_string())
            .collect();
        // Empty fields at the end (a spreadsheet's trailing commas) name and hold nothing.
        while f.len() > 1 && f.last().is_some_and(String::is_empty) {
            f.pop();
        }
        // The first row is a header when no field after the first is a number: a row's
        // coordinates always are.
        if std::mem::take(&mut first)
            && f.len() >= 2
            && f[1..].iter().all(|x| x.parse::<f64>().is_err())
        {
            at = Some(header_columns(&f).map_err(|e| (i + 1, e))?);
            continue;
        }
        let cols = match at {
            // The mask is optional under a header too: a row may leave it out when it is the
            // last column, or add it at its end when the header has none.
            Some(mut cols) => {
                let n = cols.iter().flatten().count();
                if cols[6].is_none() && f.len() == n + 1 {
                    cols[6] = Some(n);
                } else if cols[6] == Some(n - 1) && f.len() == n - 1 {
                    cols[6] = None;
                } else if f.len() != n {
                    return Err((
                        i + 1,
                        format!(
                            "the header names {n} columns, the row has {} fields",
                            f.len()
                        ),
                    ));
                }
                cols
            }
            None if (6..=7).contains(&f.len()) => [
                Some(0),
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                Some(5),
                (f.len() == 7).then_some(6),
            ],
            None => return Err((i + 1, format!("want {WANT}, got {} fields", f.len()))),
        };
        let get = |c: usize| cols[c].map(|j| f[j].as_str());
        let name = get(0).expect("a required column");
        if name.is_empty() {
            return Err((i + 1, "the image field is empty".into()));
        }
        let class = classes.of(get(1).expect("a required column"), i + 1)?;
        let mut b = [0f32; 4];
        for (j, v) in b.iter_mut().enumerate() {
            let text = get(2 + j).expect("a required column");
            *v = text
                .parse()
                .map_err(|_| (i + 1, format!("box coordinate `{text}` is not a number")))?;
        }
        let b = check_box(b).map_err(|e| (i + 1, e))?;
        let image = path_of(&base.join(name));
        let mask = get(6)
            .filter(|m| !m.is_empty())
            .map(|m| path_of(&base.join(m)));
        merge(&mut out, &mut index, image, class, vec![b], mask)
            .map_err(|e| (i + 1, format!("{name} {e}")))?;
    }
    Ok(out)
}

/// Adds a row's boxes to its image's entry (the first row of an image makes it); an image
/// listed with two classes or two masks is an error.
fn merge(
    out: &mut Vec<Entry>,
    index: &mut HashMap<PathBuf, usize>,
    image: PathBuf,
    class: usize,
    boxes: Vec<[f32; 4]>,
    mask: Option<PathBuf>,
) -> std::result::Result<(), String> {
    let Some(e) = index.get(&image).map(|&i| &mut out[i]) else {
        index.insert(image.clone(), out.len());
        out.push(Entry {
            image,
            class,
            boxes,
            mask,
        });
        return Ok(());
    };
    if e.class != class {
        return Err(format!("listed with two classes ({} and {class})", e.class));
    }
    match (&e.mask, mask) {
        (Some(a), Some(b)) if *a != b => {
            return Err(format!(
                "listed with two masks ({} and {})",
                a.display(),
                b.display()
            ))
        }
        (None, Some(b)) => e.mask = Some(b),
        _ => {}
    }
    e.boxes.extend(boxes);
    Ok(())
}

/// Levenshtein distance, by characters (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

fn parse_jsonl(
    text: &str,
    base: &Path,
    classes: &mut Classes,
) -> std::result::Result<Vec<Entry>, LineError> {
    #[derive(serde::Deserialize)]
    struct Row {
        image: String,
        /// An index or a label.
        class: serde_json::Value,
        boxes: Vec<[f32; 4]>,
        mask: Option<String>,
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Row = serde_json::from_str(line).map_err(|e| {
            let want = "want an object {\"image\", \"class\", \"boxes\": [[x0, y0, x1, y1], ...]}";
            match line.trim_start().starts_with('{') {
                true => (i + 1, format!("{e}; {want}")),
                false => (i + 1, want.to_string()),
            }
        })?;
        // Other keys (an id, a split) are the data set's own; one a letter or two from a key
        // read here is a misspelling (`msk` would leave the boxes alone to score against).
        if let Ok(serde_json::Value::Object(keys)) = serde_json::from_str(line) {
            const KEYS: [&str; 4] = ["image", "class", "boxes", "mask"];
            for k in keys.keys().filter(|k| !KEYS.contains(&k.as_str())) {
                if let Some(near) = KEYS.iter().find(|&&w| edit_distance(k, w) <= 2) {
                    return Err((i + 1, format!("unknown key `{k}` (`{near}`?)")));
                }
            }
        }
        if r.boxes.is_empty() {
            return Err((i + 1, "no boxes".into()));
        }
        if r.image.trim().is_empty() {
            return Err((i + 1, "the image field is empty".into()));
        }
        let class = match &r.class {
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(c) => Some(classes.check(c as usize).map_err(|e| (i + 1, e))?),
                None => None,
            },
            serde_json::Value::String(s) => Some(classes.of(s.trim(), i + 1)?),
            _ => None,
        }
        .ok_or_else(|| {
            (
                i + 1,
                format!("class {}: want an index (0, 1, ...) or a label", r.class),
            )
        })?;
        let boxes = r
            .boxes
            .into_iter()
            .map(check_box)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| (i + 1, e))?;
        // (Each line its own entry: one image may be evaluated for several classes.)
        out.push(Entry {
            image: path_of(&base.join(&r.image)),
            class,
            boxes,
            mask: r.mask.map(|m| path_of(&base.join(m))),
        });
    }
    Ok(out)
}
