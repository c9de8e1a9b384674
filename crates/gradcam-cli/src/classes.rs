//! `--classes FILE`: the class to explain for each image, e.g. a data set's ground truth, so an
//! audit sees where the model looks for the right answer and which images it gets wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Image (as found on disk) → class index.
pub struct Classes {
    file: PathBuf,
    by_image: HashMap<PathBuf, usize>,
}

impl Classes {
    /// Reads `image,class` lines: the image relative to the file's folder (or absolute), the
    /// class an index or one of the model's labels; a first line of column names and lines
    /// starting with `#` are skipped. The class is the text after the last comma, so image
    /// names may hold commas.
    pub fn load(
        file: &Path,
        num_classes: usize,
        labels: Option<&[String]>,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let class_of = |s: &str| -> Option<usize> {
            s.parse::<usize>().ok().or_else(|| {
                let l = labels?;
                (l.iter().position(|n| n == s))
                    .or_else(|| l.iter().position(|n| n.eq_ignore_ascii_case(s)))
            })
        };
        let mut by_image = HashMap::new();
        let mut first = true;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let header_allowed = std::mem::replace(&mut first, false);
            let bad = |why: String| anyhow::anyhow!("{}:{}: {why}", file.display(), i + 1);
            let Some((image, class)) = line.rsplit_once(',') else {
                return Err(bad(format!("want `image,class`, got `{line}`")));
            };
            let (image, class) = (image.trim(), class.trim());
            let Some(c) = class_of(class) else {
                if header_allowed {
                    continue; // column names
                }
                return Err(bad(match labels {
                    Some(_) => {
                        format!("`{class}` is neither a class index nor one of the model's labels")
                    }
                    None => format!("`{class}` is not a class index (the model has no labels)"),
                }));
            };
            if c >= num_classes {
                return Err(bad(format!(
                    "class {c} is out of range: the model has {num_classes} classes (0..={})",
                    num_classes - 1
                )));
            }
            if let Some(before) = by_image.insert(key(&base.join(image)), c) {
                if before != c {
                    return Err(bad(format!(
                        "`{image}` is listed before with class {before}"
                    )));
                }
            }
        }
        if by_image.is_empty() {
            anyhow::bail!("{}: lists no images", file.display());
        }
        Ok(Classes {
            file: file.to_path_buf(),
            by_image,
        })
    }

    /// The class listed for `image`, or why there is none.
    pub fn of(&self, image: &Path) -> Result<usize, String> {
        (self.by_image.get(&key(image)).copied())
            .ok_or_else(|| format!("no class for this image in {}", self.file.display()))
    }
}

/// The same file however it is named (`./a.png`, `data/../data/a.png`, a link).
fn key(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_index_or_label_with_paths_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("imgs")).unwrap();
        for f in ["a.png", "b,1.png", "c.png"] {
            std::fs::write(d.join("imgs").join(f), b"x").unwrap();
        }
        let labels: Vec<String> = ["cat", "dog", "Goldfish"].map(String::from).to_vec();
        let file = d.join("classes.csv");
        std::fs::write(
            &file,
            "# made by hand\nimage,label\nimgs/a.png, 2\nimgs/b,1.png,dog\nimgs/c.png,goldfish\n\
             imgs/../imgs/a.png,2\n",
        )
        .unwrap();
        let c = Classes::load(&file, 3, Some(&labels)).unwrap();
        // Found whatever the path it is reached by.
        assert_eq!(c.of(&d.join("imgs/./a.png")), Ok(2));
        assert_eq!(c.of(&d.join("imgs/b,1.png")), Ok(1));
        assert_eq!(c.of(&d.join("imgs/c.png")), Ok(2));
        let missing = c.of(&d.join("imgs/zzz.png")).unwrap_err();
        assert!(missing.contains("classes.csv"), "{missing}");

        for (text, says) in [
            ("a.png,7\n", ":1: class 7 is out of range"),
            ("a.png,2\nb.png,horse\n", ":2: `horse` is neither"),
            ("a.png\n", ":1: want `image,class`"),
            ("image,class\n", "lists no images"),
            (
                "a.png,1\n./a.png,2\n",
                ":2: `./a.png` is listed before with class 1",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let Err(e) = Classes::load(&file, 3, Some(&labels)) else {
                panic!("{text:?} loaded")
            };
            assert!(e.to_string().contains(says), "{text:?}: {e}");
        }
    }
}
