//! Evaluation manifests: CSV (`image,class,x0,y0,x1,y1[,mask]`, one box per row, rows of
//! the same image merged) or JSON Lines (`{"image", "class", "boxes": [[x0,y0,x1,y1], ...],
//! "mask"?}`). Boxes are inclusive pixel coordinates of the original image (ImageNet's
//! xmin, ymin, xmax, ymax). Paths are relative to the manifest's folder.

use std::path::{Path, PathBuf};

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

pub fn load(path: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // A byte-order mark (spreadsheet programs write one) is not part of the first name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let base = path.parent().unwrap_or(Path::new("."));
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json")
        || text.trim_start().starts_with('{');
    let entries = if is_jsonl {
        parse_jsonl(text, base)
    } else {
        parse_csv(text, base)
    }
    .map_err(|(line, why)| Error::Invalid(format!("{}:{line}: {why}", path.display())))?;
    if entries.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the manifest lists no images",
            path.display()
        )));
    }
    Ok(entries)
}

type LineError = (usize, String);

fn check_box(b: [f32; 4]) -> std::result::Result<[f32; 4], String> {
    if b.iter().any(|v| !v.is_finite() || *v < 0.0) || b[2] < b[0] || b[3] < b[1] {
        return Err(format!("bad box {b:?}: want x0 <= x1, y0 <= y1, all >= 0"));
    }
    Ok(b)
}

fn parse_csv(text: &str, base: &Path) -> std::result::Result<Vec<Entry>, LineError> {
    let mut out: Vec<Entry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        // The first line is a header when it starts with `image`, or has a row's fields and
        // none of its class and box fields is a number (other column names).
        let header = i == 0
            && (line.starts_with("image")
                || (line.split(',').count() >= 6
                    && (line.split(',').skip(1)).all(|f| f.trim().parse::<f64>().is_err())));
        if line.is_empty() || line.starts_with('#') || header {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 6 || f.len() > 7 {
            return Err((
                i + 1,
                format!(
                    "want image,class,x0,y0,x1,y1[,mask], got {} fields",
                    f.len()
                ),
            ));
        }
        let class = f[1].parse().map_err(|_| {
            (
                i + 1,
                format!("class `{}` is not a non-negative integer", f[1]),
            )
        })?;
        let mut b = [0f32; 4];
        for (j, v) in f[2..6].iter().enumerate() {
            b[j] = v
                .parse()
                .map_err(|_| (i + 1, format!("box coordinate `{v}` is not a number")))?;
        }
        let b = check_box(b).map_err(|e| (i + 1, e))?;
        let image = base.join(f[0]);
        let mask = f.get(6).filter(|m| !m.is_empty()).map(|m| base.join(m));
        match out.iter_mut().find(|e| e.image == image) {
            Some(e) if e.class == class => e.boxes.push(b),
            Some(_) => return Err((i + 1, format!("{} listed with two classes", f[0]))),
            None => out.push(Entry {
                image,
                class,
                boxes: vec![b],
                mask,
            }),
        }
    }
    Ok(out)
}

fn parse_jsonl(text: &str, base: &Path) -> std::result::Result<Vec<Entry>, LineError> {
    #[derive(serde::Deserialize)]
    struct Row {
        image: String,
        class: usize,
        boxes: Vec<[f32; 4]>,
        mask: Option<String>,
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Row = serde_json::from_str(line).map_err(|e| (i + 1, e.to_string()))?;
        if r.boxes.is_empty() {
            return Err((i + 1, "no boxes".into()));
        }
        let boxes = r
            .boxes
            .into_iter()
            .map(check_box)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| (i + 1, e))?;
        out.push(Entry {
            image: base.join(r.image),
            class: r.class,
            boxes,
            mask: r.mask.map(|m| base.join(m)),
        });
    }
    Ok(out)
}
