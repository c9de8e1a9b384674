//! Turning the command line's files and folders into a list of images, and output names.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use crate::resume::Written;

const IMAGE_EXTS: &[&str] = &[
    "png", "jpg", "jpeg", "jpe", "jfif", "jif", "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm",
    "pbm", "pnm", "pam", "tga", "ico", "hdr", "exr", "qoi", "avif", "dds", "ff",
    // Photographs in formats this build does not decode: listed, so that each is reported
    // by name (and counted in summary.csv), not left out of a data set unsaid.
    "heic", "heif", "hif", "jxl", "jp2", "j2k",
];

/// The images gradcam writes (`explain`'s overlays and guided images, `dff`'s overlays): left
/// out of a walk inside the output folder, so a run into the folder it reads does not explain
/// its own outputs the next time.
const OUTPUT_SUFFIXES: &[&str] = &[
    ".overlay.png",
    ".guided.png",
    ".guided_gradcam.png",
    ".dff.png",
];

/// Files given by name are always tried; folders contribute their image files (by
/// extension, recursively, sorted), skipping hidden entries (`.git`, macOS's `._name.jpg`
/// resource forks), folders already walked (a symbolic link back up the tree) and the output
/// folder `skip` (so a second run over a tree that holds it does not explain the first run's
/// overlays), and, where the output folder is the one given or inside it, the images a run
/// wrote there ([`OUTPUT_SUFFIXES`] after a stem it [`Written::holds`]); so too in any other
/// run's output folder ([`crate::resume::holds_a_run`]: explain's or dff's), given or below a
/// folder given (with a note). Paths that do not exist come back as errors.
pub fn collect(
    paths: &[PathBuf],
    skip: Option<(&Path, &Written)>,
) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let written = skip.map(|s| s.1);
    let skip = skip.and_then(|s| std::fs::canonicalize(s.0).ok());
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            // (Unless the output folder is the very folder given: then it is what is asked for.)
            let given = std::fs::canonicalize(p).ok();
            let mut walked: HashSet<PathBuf> = skip
                .iter()
                .filter(|s| Some(*s) != given.as_ref())
                .cloned()
                .collect();
            let own;
            // (This run's own `--out`'s summary was read once already: `written`.)
            let earlier = (given.as_ref() != skip.as_ref())
                .then(|| crate::resume::run_outputs(p))
                .flatten();
            let out = match earlier {
                // An earlier run's output folder given (a data folder it wrote into, or its
                // `--out`), not this run's: its outputs are no data, its other images are.
                Some(w) => {
                    note_run_outputs(p);
                    own = (given.clone().unwrap_or_else(|| canonical(p)), w);
                    Some((own.0.as_path(), &own.1))
                }
                None => skip.as_deref().zip(written),
            };
            walk(p, &mut found, &mut errors, &mut walked, out);
            found.sort();
            if found.is_empty() {
                errors.push((p.clone(), "the folder holds no image files".into()));
            }
            files.extend(found);
        } else if p.exists() || p.symlink_metadata().is_ok() {
            // (A link that leads nowhere or round in a loop is there: its decoding names
            // which, as for one found in a folder.)
            files.push(p.clone());
        } else {
            errors.push((p.clone(), "no such file or folder".into()));
        }
    }
    (files, errors)
}

fn walk(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    errors: &mut Vec<(PathBuf, String)>,
    walked: &mut HashSet<PathBuf>,
    out_dir: Option<(&Path, &Written)>,
) {
    // A folder is walked once, whatever the path it is reached by.
    let here = canonical(dir);
    if !walked.insert(here.clone()) {
        return;
    }
    // Inside a folder a dff run wrote into: every `.dff.png` there is one of its overlays,
    // whatever an explain run's summary beside it lists.
    let dff_run = out_dir.is_some_and(|(o, _)| crate::resume::holds_a_dff_run(o));
    // Inside the output folder: this folder's path there, `a/b/` as stems spell it.
    let in_out_dir = out_dir.and_then(|(o, written)| {
        let rel = here.strip_prefix(o).ok()?;
        let prefix: String = (rel.components())
            .map(|c| c.as_os_str().to_string_lossy() + "/")
            .collect();
        Some((prefix, written))
    });
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push((dir.to_path_buf(), e.to_string()));
            return;
        }
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        // A folder whose path the system cannot follow (longer than PATH_MAX, 4096 bytes on
        // Linux) is said, not passed over as if it were no folder.
        if let (Err(why), Ok(true)) = (std::fs::metadata(&p), e.file_type().map(|t| t.is_dir())) {
            errors.push((p, format!("cannot be read as a folder: {why}")));
            continue;
        }
        let run = (p.is_dir() && !walked.contains(&canonical(&p)))
            .then(|| crate::resume::run_outputs(&p))
            .flatten();
        if let Some(written) = run {
            // An earlier run's output folder inside the data (its --out, or the images' own
            // folder): its outputs are no data, its other files are.
            note_run_outputs(&p);
            walk(&p, out, errors, walked, Some((&canonical(&p), &written)));
        } else if p.is_dir() {
            walk(&p, out, errors, walked, out_dir);
        } else if in_out_dir.as_ref().is_some_and(|(prefix, written)| {
            let name = e.file_name().to_string_lossy().to_lowercase();
            (dff_run && name.ends_with(".dff.png"))
                || (OUTPUT_SUFFIXES.iter())
                    .filter_map(|s| name.strip_suffix(s))
                    .any(|stem| written.holds(&format!("{prefix}{stem}")))
        }) {
            continue;
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| IMAGE_EXTS.contains(&x.to_ascii_lowercase().as_str()))
        {
            out.push(p);
        }
    }
}

/// Said for each earlier run's output folder a walk meets.
fn note_run_outputs(dir: &Path) {
    eprintln!(
        "note: {}: holds a gradcam run's outputs (run.json and summary.csv, or dff.json): they \
         are left out, its other images are not",
        dir.display()
    );
}

/// How many of `files` name a file given before them (a folder and a file inside it, two
/// names of one file), and the first such.
pub fn repeats(files: &[PathBuf]) -> Option<(usize, &PathBuf)> {
    let mut seen = HashSet::new();
    let again: Vec<&PathBuf> = (files.iter())
        .filter(|f| !seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.to_path_buf())))
        .collect();
    again.first().map(|&f| (again.len(), f))
}

/// Refuses a report file `out` (`flag` names it) that would write over one of the command's
/// own `inputs`, and one that cannot be written, before the work: a new file is made and
/// removed again, an existing one opened without being changed.
pub fn check_report_out(flag: &str, out: &Path, inputs: &[&Path]) -> anyhow::Result<()> {
    let target = canonical(out);
    if let Some(i) = inputs.iter().find(|i| canonical(i) == target) {
        anyhow::bail!(
            "{flag} {}: that is the input {}; the report would write over it",
            out.display(),
            i.display()
        );
    }
    if out.is_dir() {
        anyhow::bail!("{flag} {}: a folder, not a file", out.display());
    }
    // (A pipe or a device, `/dev/stdout`, is written as it is; opening one to try it could
    // block, or end what reads it. A link is there even where what it names is not.)
    let there = std::fs::symlink_metadata(out).ok();
    if std::fs::metadata(out).is_ok_and(|m| !m.is_file()) {
        return Ok(());
    }
    let existed = there.is_some();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(out)
        .map_err(|e| anyhow::anyhow!("{flag} {}: cannot be written: {e}", out.display()))?;
    if !existed {
        let _ = std::fs::remove_file(out);
    }
    Ok(())
}

/// The same file or folder however it is named (`./a.png`, `data/../data/a.png`, a link);
/// the path as given when it cannot be resolved.
pub fn canonical(p: &Path) -> PathBuf {
    let p = gradcam::path_text::path_of(p);
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// How many bytes of decoded images (8-bit RGB) one chunk of a run may hold: a 32nd of the
/// memory this process may use (a chunk's images, their maps and overlays at full size take
/// about four times their bytes, and up to four chunks are in flight), at least 256 MiB; no
/// limit where that memory is unknown.
pub fn decode_budget_bytes() -> u64 {
    decode_budget(crate::memory::bytes())
}

fn decode_budget(memory: Option<u64>) -> u64 {
    memory.map_or(u64::MAX, |m| (m / 32).max(256 << 20))
}

/// Cuts a run of files (`sizes`: their decoded bytes) into consecutive ranges of at most
/// `budget` bytes each; a file larger than the budget is a range of its own.
pub fn split_by_bytes(sizes: &[u64], budget: u64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut sum) = (0, 0u64);
    for (i, &b) in sizes.iter().enumerate() {
        if i > start && b > 0 && sum.saturating_add(b) > budget {
            out.push(start..i);
            (start, sum) = (i, 0);
        }
        sum = sum.saturating_add(b);
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Makes the output folder `--out` (and its parents), saying so plainly when a file has
/// that name.
pub fn create_out_dir(out: &Path) -> anyhow::Result<()> {
    if out.exists() && !out.is_dir() {
        anyhow::bail!("--out {}: a file, not a folder", out.display());
    }
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("creating {}: {e}", out.display()))
}

/// A text file the user wrote (class lists, groups, summaries edited by hand), without the
/// byte-order mark spreadsheet programs put before the first line.
pub fn read_text(file: &Path) -> std::io::Result<String> {
    let text = String::from_utf8(std::fs::read(file)?).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not a text file: byte {} is not UTF-8 text (an image, or a spreadsheet saved \
                 in its own format rather than as CSV?)",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Output stem per input: its path under the folder given (`roots`) that holds it, without
/// the extension, so the output folder mirrors the input tree (`cats/1.jpg` and `dogs/1.jpg`
/// give `cats/1.*` and `dogs/1.*`); a file given by name: its file stem. A stem already taken
/// (the same name under two folders given, `x.jpg` beside `x.png`) or `reserved` (a file the
/// command writes beside the images' outputs, e.g. `run` for `run.json`) gets the first of
/// `-2`, `-3`, ... that no other input has, so no two inputs share an output.
pub fn stems(files: &[PathBuf], roots: &[PathBuf], reserved: &[&str]) -> Vec<String> {
    // (An empty path is the working folder, as a file's parent `Path::new("a.csv").parent()`.)
    let folders: Vec<&PathBuf> = (roots.iter())
        .filter(|r| r.as_os_str().is_empty() || r.is_dir())
        .collect();
    // Compared without case: on a case-insensitive file system (macOS, Windows, a shared
    // drive) `A.json` and `a.json` are one file.
    let mut taken: HashSet<String> = reserved.iter().map(|r| r.to_lowercase()).collect();
    files
        .iter()
        .map(|f| {
            // Only a plain path down from the root: an absolute or `..` one would lead the
            // outputs out of the output folder.
            let under = (folders.iter())
                .find_map(|r| f.strip_prefix(r).ok())
                .filter(|rel| rel.components().all(|c| matches!(c, Component::Normal(_))));
            let name = f
                .file_stem()
                .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
            // Folders as `a/b/`, whatever the platform's separator: the stem is also a column.
            let stem = match under.and_then(Path::parent) {
                Some(dirs) => {
                    let mut s: Vec<String> = (dirs.components())
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    s.push(name);
                    s.join("/")
                }
                None => name,
            };
            let (mut free, mut n) = (stem.clone(), 1);
            while taken.contains(&free.to_lowercase()) {
                n += 1;
                free = format!("{stem}-{n}");
            }
            taken.insert(free.to_lowercase());
            free
        })
        .collect()
}

/// The stems whose outputs would write over one of the inputs: images in the output folder
/// named like an output (`a.overlay.png`, copied in after a run wrote there, so no summary
/// lists it as one), each as the stem it belongs to (`a`), for [`stems`] to keep from the
/// images (`a.png` then writes `a-2.*`). Compared without case, as [`stems`] does.
pub fn stems_over_inputs(files: &[PathBuf], out: &Path, suffixes: &[&str]) -> Vec<String> {
    // Resolved once, and only where a file is named like an output: a data set's million
    // files cost a name check each.
    let mut out_at: Option<Option<PathBuf>> = None;
    files
        .iter()
        .filter_map(|f| {
            let name = f.file_name()?.to_string_lossy().to_lowercase();
            let suffix = suffixes.iter().find(|s| name.ends_with(*s))?;
            let out_at = out_at
                .get_or_insert_with(|| out.canonicalize().ok())
                .as_ref()?;
            // The folder resolved, not the file: a link named like an output is itself in
            // the way.
            let dir = match f.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(p) => p.canonicalize().ok()?,
                None => std::env::current_dir().ok()?.canonicalize().ok()?,
            };
            let rel = dir.join(f.file_name()?);
            let rel = rel.strip_prefix(out_at).ok()?;
            let path: Vec<String> = (rel.components())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let path = path.join("/");
            Some(path.get(..path.len() - suffix.len())?.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of large images are cut where their bytes pass the budget, in order; one file
    /// over the budget stands alone; files of unknown size (0) never cut a chunk.
    #[test]
    fn chunks_are_cut_by_decoded_bytes() {
        assert_eq!(split_by_bytes(&[1, 2, 3, 4], 100), vec![0..4]);
        assert_eq!(split_by_bytes(&[60, 50, 40, 10], 100), vec![0..1, 1..4]);
        assert_eq!(
            split_by_bytes(&[500, 0, 500, 20], 100),
            vec![0..2, 2..3, 3..4]
        );
        assert_eq!(
            split_by_bytes(&[], 100),
            Vec::<std::ops::Range<usize>>::new()
        );
        assert_eq!(split_by_bytes(&[u64::MAX, 5], 100), vec![0..1, 1..2]);
        assert_eq!(split_by_bytes(&[u64::MAX, 5], u64::MAX), vec![0..2]);
        // A 32nd of the memory, at least 256 MiB.
        assert_eq!(decode_budget(Some(24 << 30)), (24 << 30) / 32);
        assert_eq!(decode_budget(Some(16 << 30)), (16 << 30) / 32);
        assert_eq!(decode_budget(Some(1 << 30)), 256 << 20);
        assert_eq!(decode_budget(None), u64::MAX);
    }

    /// Text files lose a byte-order mark; a file that is not UTF-8 text says so.
    #[test]
    fn text_files_and_files_that_are_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.csv");
        std::fs::write(&p, "\u{feff}a.png,1\n").unwrap();
        assert_eq!(read_text(&p).unwrap(), "a.png,1\n");
        std::fs::write(&p, b"a.png,\xff\xfe").unwrap();
        let e = read_text(&p).unwrap_err().to_string();
        assert!(e.contains("not a text file: byte 6 is not UTF-8"), "{e}");
    }

    /// A folder walk takes image files by extension in sorted order, skips hidden entries,
    /// and walks a folder reached again through a symbolic link only once.
    #[test]
    fn folder_walks_skip_hidden_entries_and_link_loops() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        for d in ["sub", ".hidden"] {
            std::fs::create_dir_all(data.join(d)).unwrap();
        }
        for f in [
            "b.PNG",
            "e.jfif",
            "f.pam",
            "sub/a.jpg",
            "sub/a.overlay.png",
            "sub/a.dff.png",
            ".hidden/c.png",
            "._d.jpg",
            "notes.txt",
        ] {
            std::fs::write(data.join(f), b"x").unwrap();
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink("..", data.join("sub/loop")).unwrap();
        let (files, errors) = collect(&[data.clone(), data.join("missing.png")], None);
        // (Images named like gradcam's outputs, outside the output folder, are images.)
        let [b, e, f] = ["b.PNG", "e.jfif", "f.pam"].map(|n| data.join(n));
        let sub = ["a.dff.png", "a.jpg", "a.overlay.png"].map(|n| data.join("sub").join(n));
        assert_eq!(
            files,
            [vec![b.clone(), e.clone(), f.clone()], sub.to_vec()].concat()
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, data.join("missing.png"));
        // Links given by name that lead nowhere or round a loop are inputs, whose decoding
        // says which (not "no such file").
        #[cfg(unix)]
        {
            let (gone, round) = (root.path().join("gone.png"), root.path().join("round.png"));
            std::os::unix::fs::symlink("missing.png", &gone).unwrap();
            std::os::unix::fs::symlink("round.png", &round).unwrap();
            let (files, errors) = collect(&[gone.clone(), round.clone()], None);
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(files, [gone.clone(), round.clone()]);
            let why = |p: &Path| gradcam::image::load_rgb8(p).unwrap_err().to_string();
            assert!(
                why(&gone).contains("a symbolic link to missing.png"),
                "{}",
                why(&gone)
            );
            assert!(why(&round).contains("symbolic links"), "{}", why(&round));
        }
        // The output folder inside the tree is not walked.
        let sub_out = data.join("sub");
        let (files, _) = collect(
            std::slice::from_ref(&data),
            Some((&sub_out, &Written::Nothing)),
        );
        assert_eq!(files, [b, e, f]);
        // Unless it is the folder given, where the images an earlier run wrote are left out;
        // its link up to `data` leads to data's other files.
        let (files, _) = collect(
            std::slice::from_ref(&sub_out),
            Some((&sub_out, &Written::All)),
        );
        let rest = ["sub/loop/b.PNG", "sub/loop/e.jfif", "sub/loop/f.pam"].map(|n| data.join(n));
        assert_eq!(
            files,
            [vec![data.join("sub/a.jpg")], rest.to_vec()].concat()
        );
        // Or of the stems its summary lists.
        let ours = Written::Stems(["a".to_string()].into());
        let (files, _) = collect(std::slice::from_ref(&sub_out), Some((&sub_out, &ours)));
        let rest = [&[data.join("sub/a.jpg")], &rest[..]].concat();
        assert_eq!(files, rest);
        // Where no run wrote, images are images, whatever their names.
        let (files, _) = collect(
            std::slice::from_ref(&sub_out),
            Some((&sub_out, &Written::Nothing)),
        );
        assert_eq!(files, [&sub[..], &rest[1..]].concat());
        // Another run's output folder below a folder given, or given itself: its outputs are
        // left out, its other images not.
        // (A summary without stems: every file named like an output is the run's.)
        let run = br#"{"method": "gradcam", "outputs": [".overlay.png"]}"#;
        std::fs::write(data.join("sub/run.json"), run).unwrap();
        std::fs::write(data.join("sub/summary.csv"), b"x").unwrap();
        let (files, _) = collect(std::slice::from_ref(&data), None);
        let top = ["b.PNG", "e.jfif", "f.pam"].map(|n| data.join(n));
        assert_eq!(files, [&top[..], &[data.join("sub/a.jpg")]].concat());
        // (Given, `sub` is walked with its link up to `data`: data's images under `loop/`.)
        let (files, _) = collect(std::slice::from_ref(&sub_out), None);
        let rest = [
            "sub/a.jpg",
            "sub/loop/b.PNG",
            "sub/loop/e.jfif",
            "sub/loop/f.pam",
        ];
        assert_eq!(files, rest.map(|n| data.join(n)));
        // A dff run's folder (dff.json, no summary): every file named like an output is one.
        for f in ["run.json", "summary.csv"] {
            std::fs::remove_file(data.join("sub").join(f)).unwrap();
        }
        let (files, _) = collect(std::slice::from_ref(&sub_out), None);
        assert_eq!(files[..3], sub);
        // A dff.json of another program is none of gradcam's; a dff run's is.
        std::fs::write(data.join("sub/dff.json"), b"{}").unwrap();
        let (files, _) = collect(std::slice::from_ref(&data), None);
        assert!(files.contains(&data.join("sub/a.dff.png")), "{files:?}");
        let report = br#"{"concepts": [], "nmf_iterations": 3}"#;
        std::fs::write(data.join("sub/dff.json"), report).unwrap();
        let (files, _) = collect(std::slice::from_ref(&data), None);
        assert_eq!(files, [&top[..], &[data.join("sub/a.jpg")]].concat());
        let (files, _) = collect(std::slice::from_ref(&sub_out), None);
        assert_eq!(files, rest.map(|n| data.join(n)));
    }

    /// Stems mirror the tree under each folder given; repeats get a number.
    #[test]
    fn stems_mirror_the_input_tree() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        for d in [a.join("cats"), a.join("dogs/big"), b.clone()] {
            std::fs::create_dir_all(d).unwrap();
        }
        let files = [
            a.join("cats/1.jpg"),
            a.join("dogs/1.jpg"),
            a.join("dogs/big/1.png"),
            a.join("top.png"),
            b.join("top.png"),
            root.path().join("alone/x.png"),
            a.join("cats/1.png"),
            a.join("../up.png"),
            PathBuf::from("/abs/deep.png"),
        ];
        let roots = [a.clone(), b.clone(), files[5].clone(), PathBuf::new()];
        assert_eq!(
            stems(&files, &roots, &[]),
            [
                "cats/1",
                "dogs/1",
                "dogs/big/1",
                "top",
                "top-2",
                "x",
                "cats/1-2",
                "up",
                "deep"
            ]
        );
    }

    /// A suffixed stem never lands on another input's own name (`x-2.png` beside `x.jpg` and
    /// `x.png`), nor on a name the command writes itself (`run` for run.json), nor on one
    /// that differs only in case (one file on macOS and Windows).
    #[test]
    fn stems_never_collide() {
        let files: Vec<PathBuf> = [
            "d/x-2.png",
            "d/x.jpg",
            "d/x.png",
            "d/run.png",
            "d/run-2.jpg",
            "d/X.png",
            "d/Run.png",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let got = stems(&files, &[], &["run"]);
        assert_eq!(got, ["x-2", "x", "x-3", "run-2", "run-2-2", "X-4", "Run-3"]);
        let unique: HashSet<String> = got.iter().map(|s| s.to_lowercase()).collect();
        assert_eq!(unique.len(), files.len());
    }
}
