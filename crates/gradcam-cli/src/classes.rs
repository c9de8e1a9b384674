//! `--classes FILE|folders`: the class to explain for each image, e.g. a data set's ground
//! truth, so an audit sees where the model looks for the right answer and which images it gets
//! wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use gradcam::model::class_index;

use crate::inputs::canonical;

/// Image, or (from folders) the class folder it lies under, as found on disk → class index.
pub struct Classes {
    /// Where the classes came from, for messages.
    source: String,
    by_path: HashMap<PathBuf, usize>,
    /// Classes by folder: an image's class is its nearest ancestor's in `by_path`.
    folders: bool,
    /// A file's images in its order, as paths from the working folder.
    listed: Vec<PathBuf>,
    /// The file's folder.
    base: PathBuf,
    /// What the caller should tell the user (a class read as an index that is also another
    /// class's label).
    pub note: Option<String>,
}

impl Classes {
    /// Reads `image,class` lines (or `image class`, as ImageNet's `val.txt`): the image
    /// relative to the file's folder (or absolute), the class an index or one of the model's
    /// labels; a first line of column names and lines starting with `#` are skipped. The
    /// class is the text after the last comma (else, in a line without commas, after the last
    /// blank), so image names may hold commas (or, in blank-separated lines, blanks); but a
    /// first line naming `image` and `class` among more columns (an `eval` manifest) picks
    /// those columns ([`named_lines`]).
    pub fn load(
        file: &Path,
        num_classes: usize,
        labels: Option<&[String]>,
    ) -> anyhow::Result<Self> {
        let text = crate::inputs::read_text(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let class_of = |s: &str| class_index(s, labels);
        let mut by_image: HashMap<PathBuf, usize> = HashMap::new();
        let mut listed = Vec::new();
        let mut digits = gradcam::model::DigitsLabels::default();
        for line in named_lines(&text, gradcam::eval::manifest::CLASS_COLUMN) {
            let bad = |why: String| anyhow::anyhow!("{}:{}: {why}", file.display(), line.number);
            let Some((image, class)) = line.fields else {
                return Err(bad(format!(
                    "want `image,class` (or `image class`), got `{}`",
                    line.text
                )));
            };
            if image.trim().is_empty() {
                return Err(bad(format!("no image before the class in `{}`", line.text)));
            }
            // The class is after the last comma, as image names may hold commas; a line of
            // more fields (`a.png,3,4`, `a.png,,`) would name an image `a.png,3` and leave
            // a.png without its class, or be taken for column names.
            if let Some((head, _)) = image.split_once(',') {
                let head = unquoted(head.trim());
                if !base.join(image).exists() && base.join(head).is_file() {
                    return Err(bad(format!(
                        "want two fields, `image,class`, got `{}` (`{head}` is the image)",
                        line.text
                    )));
                }
            }
            let Some(c) = class_of(class).map_err(bad)? else {
                // Column names; not a first line whose image is there (its class is wrong).
                if line.first && !base.join(image).is_file() {
                    continue;
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
            digits.see(line.number, class.trim(), labels);
            match by_image.insert(canonical(&base.join(image)), c) {
                None => listed.push(gradcam::path_text::path_of(&base.join(image))),
                Some(before) if before != c => {
                    return Err(bad(format!(
                        "`{image}` is listed before with class {before}"
                    )));
                }
                Some(_) => {}
            }
        }
        if by_image.is_empty() {
            anyhow::bail!("{}: lists no images", file.display());
        }
        let note = digits.note(file);
        Ok(Classes {
            source: file.display().to_string(),
            by_path: by_image,
            folders: false,
            listed,
            base: base.to_path_buf(),
            note,
        })
    }

    /// torchvision's `ImageFolder` layout: each input folder holds one subfolder per class
    /// and an image's class is the subfolder it lies in. Subfolders named by the model's
    /// labels map by name (case aside, as `--class` reads a label); otherwise they are
    /// ImageFolder's classes, numbered in sorted order (ImageNet's sorted WordNet ids are its
    /// class indices), which is only right when there is one subfolder per class of the
    /// model, so any other count is refused, as is a mix of folders named by labels and
    /// folders not (a misspelt label would renumber every folder). Folders gradcam wrote
    /// (`out`, or any holding a run's `run.json` and `summary.csv`) are no classes.
    pub fn from_folders(
        inputs: &[PathBuf],
        num_classes: usize,
        labels: Option<&[String]>,
        out: &Path,
    ) -> anyhow::Result<Self> {
        let out = canonical(out);
        let mut by_path = HashMap::new();
        let mut left_out = Vec::new();
        for root in inputs.iter().filter(|p| p.is_dir()) {
            let mut outputs = Vec::new();
            let mut subs: Vec<(String, PathBuf)> = std::fs::read_dir(root)
                .map_err(|e| anyhow::anyhow!("{}: {e}", root.display()))?
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(n, _)| !n.starts_with('.'))
                .collect();
            // (A run written into a class folder, beside its images, leaves it a class.)
            subs.retain(|(_, p)| {
                let written = canonical(p) == out || crate::resume::holds_a_run(p);
                let only_outputs = written && {
                    let w = crate::resume::run_outputs(p)
                        .unwrap_or_else(|| crate::resume::Written::read(p).0);
                    let (images, _) =
                        crate::inputs::collect(std::slice::from_ref(p), Some((p, &w)));
                    images.is_empty()
                };
                if only_outputs {
                    outputs.push(p.display().to_string());
                }
                !only_outputs
            });
            subs.sort();
            // Said with any refusal, and as a note otherwise.
            let skipped = match outputs.is_empty() {
                true => String::new(),
                false => format!(
                    " ({} left out: gradcam's output folder)",
                    outputs.join(", ")
                ),
            };
            left_out.extend(outputs);
            if subs.is_empty() {
                anyhow::bail!(
                    "--classes folders: {} holds no subfolders{skipped}; it reads torchvision's \
                     ImageFolder layout, one subfolder of images per class (give the folder \
                     above them, or list the classes in a CSV)",
                    root.display(),
                );
            }
            // The classes a folder's name is the label of, as `--class` reads a label.
            let matches =
                |n: &str| labels.map_or(Vec::new(), |l| gradcam::model::label_classes(n, l));
            if let Some((n, several)) = (subs.iter())
                .map(|(n, _)| (n, matches(n)))
                .find(|(_, m)| m.len() > 1)
            {
                anyhow::bail!(
                    "--classes folders: in {}, the folder `{n}` is the label of classes \
                     {several:?} (the model's labels repeat it); list the classes in a CSV, by \
                     index",
                    root.display()
                );
            }
            let label_of = |n: &str| matches(n).first().copied();
            let others: Vec<&str> = (subs.iter())
                .filter(|(n, _)| label_of(n).is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            let by_label = others.is_empty();
            if !by_label && others.len() < subs.len() {
                let mut list: Vec<String> =
                    others.iter().take(5).map(|n| format!("`{n}`")).collect();
                if others.len() > 5 {
                    list.push(format!("and {} more", others.len() - 5));
                }
                anyhow::bail!(
                    "--classes folders: in {}{skipped}, {} of the {} class folders are named by \
                     the model's labels but {} {} not (a misspelling?); name every folder by a \
                     label, or none (then they are numbered in sorted order, one per class), or \
                     list the classes in a CSV",
                    root.display(),
                    subs.len() - others.len(),
                    subs.len(),
                    list.join(", "),
                    if others.len() == 1 { "is" } else { "are" },
                );
            }
            if !by_label && subs.len() != num_classes {
                anyhow::bail!(
                    "--classes folders: {} holds {} class folders{skipped}, but the model has \
                     {num_classes} classes{}; with another number of folders, name them by the \
                     model's labels or list the classes in a CSV",
                    root.display(),
                    subs.len(),
                    if labels.is_some() {
                        " and none of the folder names is one of its labels"
                    } else {
                        ""
                    }
                );
            }
            for (i, (name, path)) in subs.iter().enumerate() {
                by_path.insert(canonical(path), label_of(name).unwrap_or(i));
            }
        }
        if by_path.is_empty() {
            anyhow::bail!("--classes folders: none of the inputs is a folder of class folders");
        }
        let note = (!left_out.is_empty()).then(|| {
            format!(
                "--classes folders: {} left out of the classes: gradcam's output folder",
                left_out.join(", ")
            )
        });
        Ok(Classes {
            source: "the class folders".into(),
            by_path,
            folders: true,
            listed: Vec::new(),
            base: PathBuf::new(),
            note,
        })
    }

    /// The images a class file lists, in its order, each once, and the file's folder (their
    /// paths are relative to it): what `explain --classes F` explains when given no inputs.
    /// Empty for class folders.
    pub fn listed(&self) -> (&[PathBuf], &Path) {
        (&self.listed, &self.base)
    }

    /// The class listed for `image`, or why there is none.
    pub fn of(&self, image: &Path) -> Result<usize, String> {
        let image = canonical(image);
        let found = if self.folders {
            (image.ancestors().skip(1)).find_map(|a| self.by_path.get(a).copied())
        } else {
            self.by_path.get(&image).copied()
        };
        found.ok_or_else(|| format!("no class for this image in {}", self.source))
    }
}

/// A line of a class file that is neither blank nor a comment.
pub struct Line<'t> {
    pub number: usize,
    pub text: &'t str,
    /// The first such line (it may hold column names).
    pub first: bool,
    /// (image, class), trimmed: split at the last comma, else at the last blank.
    pub fields: Option<(&'t str, &'t str)>,
}

/// The lines of an `image,value` file (class files, `summarize --groups`).
pub fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    (text.lines().enumerate())
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(k, (number, text))| Line {
            number,
            text,
            first: k == 0,
            fields: last_comma_outside_quotes(text)
                .map(|i| (&text[..i], &text[i + 1..]))
                .or_else(|| text.rsplit_once(char::is_whitespace))
                .map(|(a, b)| (unquoted(a.trim()), unquoted(b.trim()))),
        })
}

/// [`lines`] of a file whose first line may name its columns: where it names the image
/// (`image`, or `path`, `file`, `filename`, as `eval` reads them) and the value (one of
/// `value`'s names) among three or more (an `eval` manifest,
/// `image,class,x0,y0,x1,y1,mask`), each line's fields are those two columns (quotes kept
/// out of them; a line without them has none). Otherwise the lines as [`lines`] gives them.
pub fn named_lines<'t>(text: &'t str, value: &[&str]) -> Vec<Line<'t>> {
    let all: Vec<Line> = lines(text).collect();
    let Some(first) = all.first() else {
        return all;
    };
    let names: Vec<String> = (fields_outside_quotes(first.text).iter())
        .map(|f| unquoted(f.trim()).to_ascii_lowercase())
        .collect();
    let at = |any: &[&str]| names.iter().position(|n| any.contains(&n.as_str()));
    let image = gradcam::eval::manifest::IMAGE_COLUMN;
    let (Some(i), Some(v), true) = (at(image), at(value), names.len() >= 3) else {
        return all;
    };
    (all.into_iter())
        .map(|mut l| {
            let f = fields_outside_quotes(l.text);
            l.fields = (f.len() > i.max(v)).then(|| (unquoted(f[i].trim()), unquoted(f[v].trim())));
            l
        })
        .collect()
}

/// A line's comma-separated fields, a comma inside double quotes being no separator.
fn fields_outside_quotes(line: &str) -> Vec<&str> {
    let (mut quoted, mut start, mut out) = (false, 0, Vec::new());
    for (i, ch) in line.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&line[start..]);
    out
}

/// The byte offset of the line's last comma that is not inside double quotes: the class is
/// after it (a quoted ImageNet label may hold commas), the image before it (an unquoted path
/// may hold commas too).
fn last_comma_outside_quotes(line: &str) -> Option<usize> {
    let mut quoted = false;
    let mut last = None;
    for (i, ch) in line.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => last = Some(i),
            _ => {}
        }
    }
    last
}

/// A CSV field as spreadsheets write it: `"imgs/a.png"` is `imgs/a.png`.
fn unquoted(f: &str) -> &str {
    match f.len() >= 2 && f.starts_with('"') && f.ends_with('"') {
        true => &f[1..f.len() - 1],
        false => f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an explain run's run.json names at least ([`crate::resume::holds_a_run`]).
    const RUN_JSON: &[u8] = br#"{"method": "gradcam", "outputs": [".overlay.png"]}"#;

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
        // The images in the file's order, each once (a/../a.png is a.png).
        let (listed, base) = c.listed();
        assert_eq!(base, d);
        let names = ["imgs/a.png", "imgs/b,1.png", "imgs/c.png"].map(|n| d.join(n));
        assert_eq!(listed, names);
        // Quoted fields, as spreadsheets write them.
        std::fs::write(&file, "image,class\n\"imgs/b,1.png\",\"dog\"\n").unwrap();
        let c = Classes::load(&file, 3, Some(&labels)).unwrap();
        assert_eq!(c.of(&d.join("imgs/b,1.png")), Ok(1));
        let imagenet: Vec<String> = ["tench, Tinca tinca", "goldfish"]
            .map(String::from)
            .to_vec();
        std::fs::write(&file, "image,class\nimgs/a.png,\"tench, Tinca tinca\"\n").unwrap();
        let c = Classes::load(&file, 2, Some(&imagenet)).unwrap();
        assert_eq!(c.of(&d.join("imgs/a.png")), Ok(0));

        // Classes that are numbers, labelled in ImageFolder's sorted order ("1", "10", "2"):
        // digits are an index, with a note where they are another class's label.
        let numbers: Vec<String> = ["1", "10", "2"].map(String::from).to_vec();
        std::fs::write(&file, "imgs/a.png,2\nimgs/b,1.png,1\n").unwrap();
        let c = Classes::load(&file, 3, Some(&numbers)).unwrap();
        assert_eq!(c.of(&d.join("imgs/a.png")), Ok(2));
        let note = c.note.unwrap();
        assert!(
            note.contains(
                ":2: class `1` is read as class index 1, but it is also the model's \
                           label of class 0;"
            ),
            "{note}"
        );
        std::fs::write(&file, "imgs/a.png,0\n").unwrap();
        assert!(Classes::load(&file, 3, Some(&numbers))
            .unwrap()
            .note
            .is_none());

        // A label shared by two classes (ImageNet's `crane`s) is refused, naming both.
        let twice: Vec<String> = ["crane", "cat", "crane", "Cat"].map(String::from).to_vec();
        assert_eq!(class_index("cat", Some(&twice)), Ok(Some(1)));
        let e = class_index("CAT", Some(&twice)).unwrap_err();
        assert!(e.contains("[1, 3]"), "{e}");
        std::fs::write(&file, "imgs/a.png,crane\n").unwrap();
        let e = Classes::load(&file, 4, Some(&twice))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(":1: `crane` is the label of classes [0, 2]"),
            "{e}"
        );

        // A byte-order mark before a first line that is a row, not column names.
        std::fs::write(&file, "\u{feff}imgs/c.png,dog\n").unwrap();
        let c = Classes::load(&file, 3, Some(&labels)).unwrap();
        assert_eq!(c.of(&d.join("imgs/c.png")), Ok(1));

        // Blank-separated, as ImageNet's val.txt; names with blanks keep them.
        std::fs::write(
            &file,
            "imgs/a.png 2\nimgs/c.png\tGoldfish\nimgs/my cat.png  0\n",
        )
        .unwrap();
        let c = Classes::load(&file, 3, Some(&labels)).unwrap();
        assert_eq!(c.of(&d.join("imgs/a.png")), Ok(2));
        assert_eq!(c.of(&d.join("imgs/c.png")), Ok(2));
        assert_eq!(c.of(&d.join("imgs/my cat.png")), Ok(0));

        // An `eval` manifest: its image and class columns, wherever they are.
        for text in [
            "image,class,x0,y0,x1,y1\nimgs/a.png,2,0,0,5,5\n\"imgs/b,1.png\",dog,1,1,2,2,m.png\n",
            "x0,Label,y0,x1,y1,Path\n0,2,0,5,5,imgs/a.png\n1,dog,1,2,2,\"imgs/b,1.png\"\n",
        ] {
            std::fs::write(&file, text).unwrap();
            let c = Classes::load(&file, 3, Some(&labels)).unwrap();
            assert_eq!(c.of(&d.join("imgs/a.png")), Ok(2), "{text}");
            assert_eq!(c.of(&d.join("imgs/b,1.png")), Ok(1), "{text}");
        }

        for (text, says) in [
            ("a.png,7\n", ":1: class 7 is out of range"),
            ("a.png,2\nb.png,horse\n", ":2: `horse` is neither"),
            ("a.png\n", ":1: want `image,class` (or `image class`)"),
            ("image,class\n", "lists no images"),
            // A first line whose image is there is a row with a wrong class, not column
            // names; an empty image field would name the file's own folder.
            ("imgs/a.png,crss\nimgs/c.png,1\n", ":1: `crss` is neither"),
            ("imgs/a.png,-1\nimgs/c.png,1\n", ":1: `-1` is neither"),
            (
                "imgs/a.png,1\n,2\n",
                ":2: no image before the class in `,2`",
            ),
            (
                "a.png,1\n./a.png,2\n",
                ":2: `./a.png` is listed before with class 1",
            ),
            // More fields than two, where the first is an image: not an image `a.png,1`
            // (nor, on the first line, column names).
            (
                "imgs/a.png,1,2\n",
                ":1: want two fields, `image,class`, got `imgs/a.png,1,2` (`imgs/a.png` is the image)",
            ),
            ("imgs/a.png,,\n", ":1: want two fields"),
            ("imgs/c.png,1\n\"imgs/a.png\",0,dog\n", ":2: want two fields"),
        ] {
            std::fs::write(&file, text).unwrap();
            let Err(e) = Classes::load(&file, 3, Some(&labels)) else {
                panic!("{text:?} loaded")
            };
            assert!(e.to_string().contains(says), "{text:?}: {e}");
        }
    }

    /// ImageFolder: classes numbered in sorted folder order when there is one folder per
    /// class, by label when the folders are named by the labels; any other layout refused.
    #[test]
    fn classes_from_image_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("val");
        for f in ["n2/x.png", "n1/deep/y.png", "n3/z.png", ".hidden/w.png"] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x").unwrap();
        }
        std::fs::write(root.join("loose.png"), b"x").unwrap();
        let out = dir.path().join("out");
        let c = Classes::from_folders(std::slice::from_ref(&root), 3, None, &out).unwrap();
        assert_eq!(c.of(&root.join("n1/deep/y.png")), Ok(0));
        assert_eq!(c.of(&root.join("n2/x.png")), Ok(1));
        assert_eq!(c.of(&root.join("n3/z.png")), Ok(2));
        assert!(c.of(&root.join("loose.png")).is_err());
        // Four classes, three folders: the sorted numbering would be wrong, so it is refused...
        let Err(e) = Classes::from_folders(std::slice::from_ref(&root), 4, None, &out) else {
            panic!("three folders numbered as four classes")
        };
        assert!(e.to_string().contains("holds 3 class folders"), "{e}");
        // A folder of images without class folders: said so.
        let Err(e) = Classes::from_folders(&[root.join("n2")], 3, None, &out) else {
            panic!("a flat folder read as class folders")
        };
        assert!(e.to_string().contains("n2 holds no subfolders"), "{e}");
        // ...unless the folders are named by the model's labels.
        let labels: Vec<String> = ["n0", "n3", "n1", "n2"].map(String::from).to_vec();
        let c = Classes::from_folders(std::slice::from_ref(&root), 4, Some(&labels), &out).unwrap();
        assert_eq!(c.of(&root.join("n1/deep/y.png")), Ok(2));
        assert_eq!(c.of(&root.join("n3/z.png")), Ok(1));
        // Labels match case aside; a mix of label and other names is refused, naming the
        // others (sorted numbering would give every folder a wrong class).
        let upper: Vec<String> = ["N0", "N3", "N1", "N2"].map(String::from).to_vec();
        let c = Classes::from_folders(std::slice::from_ref(&root), 4, Some(&upper), &out).unwrap();
        assert_eq!(c.of(&root.join("n3/z.png")), Ok(1));
        let typo: Vec<String> = ["n1", "n2", "n4"].map(String::from).to_vec();
        let Err(e) = Classes::from_folders(std::slice::from_ref(&root), 3, Some(&typo), &out)
        else {
            panic!("a folder that is no label numbered in sorted order")
        };
        let e = e.to_string();
        assert!(
            e.contains("2 of the 3 class folders") && e.contains("but `n3` is not"),
            "{e}"
        );
        // gradcam's output folders are no classes: the --out folder, or one with a run.json
        // (an earlier run's), with a note.
        for o in ["out", "old-run"] {
            std::fs::create_dir_all(root.join(o)).unwrap();
        }
        std::fs::write(root.join("old-run/run.json"), RUN_JSON).unwrap();
        std::fs::write(root.join("old-run/summary.csv"), b"image\n").unwrap();
        let c =
            Classes::from_folders(std::slice::from_ref(&root), 3, None, &root.join("out")).unwrap();
        assert_eq!(c.of(&root.join("n3/z.png")), Ok(2));
        let note = c.note.unwrap();
        assert!(note.contains("old-run") && note.contains("out"), "{note}");
        // A run written into a class folder, beside its images, leaves it a class.
        std::fs::write(root.join("n1/run.json"), RUN_JSON).unwrap();
        std::fs::write(root.join("n1/summary.csv"), b"image,stem\nx.png,x\n").unwrap();
        let c =
            Classes::from_folders(std::slice::from_ref(&root), 3, None, &root.join("out")).unwrap();
        assert_eq!(c.of(&root.join("n1/deep/y.png")), Ok(0));
        // A folder named by a label two classes share is refused, naming both.
        let twice: Vec<String> = ["n1", "n2", "n3", "n2"].map(String::from).to_vec();
        let Err(e) = Classes::from_folders(std::slice::from_ref(&root), 4, Some(&twice), &out)
        else {
            panic!("a label of two classes taken for one")
        };
        assert!(
            e.to_string()
                .contains("`n2` is the label of classes [1, 3]"),
            "{e}"
        );
    }
}
