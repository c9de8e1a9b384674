//! `explain --resume`: going on with a run that stopped (interrupted, out of disk, a crash)
//! from what its output folder holds, so a data set of a million images is not explained
//! twice. Every run records its settings in `run.json`; a resumed run must have the same
//! ones, and keeps the images whose `summary.csv` row says `ok` and whose files (those asked
//! for now) are all there.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::UNIX_EPOCH;

use gradcam::image::InputSize;
use gradcam::path_text::{path_of, text};
use serde_json::{json, Value};

use crate::inputs::canonical;
use crate::summary::{field, fields, records, FILE};

/// The settings file in the output folder.
pub const SETTINGS: &str = "run.json";
/// The image stem that would write over [`SETTINGS`] (`run.jpg` → `run.json`): never given.
pub const SETTINGS_STEM: &str = "run";

/// The report a `dff` run writes into its output folder.
pub const DFF_REPORT: &str = "dff.json";

/// Whether `dir` is an output folder of an `explain` run (it holds a [`SETTINGS`] naming the
/// run's method and outputs, and a `summary.csv`) or of a `dff` run
/// ([`holds_a_dff_run`]): its outputs are no data set's images, so they are not walked for
/// images, and a folder of nothing else is no class. (Files of those names that another
/// program wrote, as ML folders often hold a `run.json`, do not count.)
pub fn holds_a_run(dir: &Path) -> bool {
    let explain = dir.join(FILE).is_file()
        && (std::fs::read(dir.join(SETTINGS)).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v.get("method").is_some() && v["outputs"].is_array());
    explain || holds_a_dff_run(dir)
}

/// Whether `dir` holds a `gradcam dff` report ([`DFF_REPORT`] naming its concepts and NMF
/// iterations).
pub fn holds_a_dff_run(dir: &Path) -> bool {
    let report = dir.join(DFF_REPORT);
    report.is_file()
        && (std::fs::read(&report).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v.get("concepts").is_some() && v.get("nmf_iterations").is_some())
}

/// What a folder that [`holds_a_run`] holds of its run's outputs, for a walk for images: the
/// stems of an `explain` run's summary, or (a `dff` run keeps no summary) every file named
/// like an output. None for a folder that holds no run.
pub fn run_outputs(dir: &Path) -> Option<Written> {
    holds_a_run(dir).then(|| match Written::read(dir).0 {
        Written::Nothing => Written::All,
        w => w,
    })
}

/// What an output folder holds of a run's outputs. Where no run wrote (no `run.json`), files
/// named like outputs (`<stem>.overlay.png`) are somebody's: images to explain, never written
/// over. Where one did, those of its stems are its outputs, skipped as inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// No run wrote there.
    Nothing,
    /// The stems of the run's `summary.csv`, lowercase.
    Stems(std::collections::HashSet<String>),
    /// A run without a readable summary (or a command that keeps none, `dff`): every file
    /// named like an output is taken for one.
    All,
}

impl Written {
    /// What `out` holds, and the text of its `summary.csv` where a run wrote there, for
    /// [`load_from`]: a summary of a million rows is read once, not twice.
    pub fn read(out: &Path) -> (Self, Option<std::io::Result<String>>) {
        if !out.join(SETTINGS).is_file() {
            return (Written::Nothing, None);
        }
        let summary = crate::inputs::read_text(&out.join(FILE));
        let written = match &summary {
            Ok(text) => {
                let mut rows = records(text).map(fields);
                match rows.next().and_then(|h| h.last().cloned()).as_deref() {
                    Some("stem") => Written::Stems(
                        (rows.filter_map(|r| r.last().map(|s| s.to_lowercase()))).collect(),
                    ),
                    _ => Written::All,
                }
            }
            Err(_) => Written::All,
        };
        (written, Some(summary))
    }

    /// Whether the files of `stem` (`<stem>.overlay.png`, ...) are a run's outputs.
    pub fn holds(&self, stem: &str) -> bool {
        match self {
            Written::Nothing => false,
            Written::Stems(s) => s.contains(&stem.to_lowercase()),
            Written::All => true,
        }
    }
}

/// A file by where it is, its size and when it was last changed: a checkpoint or a class
/// list replaced under the same name counts as another.
pub fn file_id(p: &Path) -> Value {
    let meta = std::fs::metadata(p).ok();
    let modified = (meta.as_ref())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    json!({
        "file": text(&canonical(p)),
        "bytes": meta.map(|m| m.len()),
        "modified": modified,
    })
}

/// What the previous run of an output folder left: its rows, as written, in their order.
pub struct Previous {
    rows: Vec<String>,
    /// Each row's image (as [`image_key`] gives it) → its rows (several when two inputs named
    /// one file, or a file failed and was explained again).
    by_image: HashMap<String, Vec<usize>>,
    /// Rows whose image is among this run's inputs (kept or explained again).
    taken: Vec<bool>,
    /// The header's field count: a row cut short by a stop in mid-write has fewer.
    columns: usize,
    /// The kinds of files per image (suffixes) the previous run recorded in its run.json.
    wrote: Vec<String>,
}

/// An image path as given on some command line, compared by the file it names: `./data/a.png`,
/// `data/a.png` and the absolute path are one image (the text itself when it names none now).
fn image_key(p: &str) -> String {
    match std::fs::canonicalize(path_of(Path::new(p))) {
        Ok(c) => text(&c),
        Err(_) => p.to_string(),
    }
}

/// The previous run in `out`, if there is one to go on from (none when the folder holds no
/// `run.json` or no `summary.csv`, or when its run wrote fewer kinds of files than `now`
/// asks for: everything is then explained). Fails when the previous run's settings differ
/// from `now`, naming each difference. `summary_text` is `out`'s `summary.csv` as read
/// ([`Written::read`]).
pub fn load_from(
    out: &Path,
    now: &Value,
    summary_text: std::io::Result<String>,
) -> anyhow::Result<Option<Previous>> {
    let settings = out.join(SETTINGS);
    let text = match std::fs::read_to_string(&settings) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("--resume: {}: {e}", settings.display()),
    };
    let then: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--resume: {}: {e}", settings.display()))?;
    let changed = differences(&then, now);
    if !changed.is_empty() {
        anyhow::bail!(
            "--resume: {} holds a run with other settings ({}); drop --resume to start \
             afresh, or give another --out",
            out.display(),
            changed.join("; ")
        );
    }
    // Files of a kind the run did not write may still be there from an earlier run with other
    // settings: an image counts as done only for the kinds its run wrote.
    let wrote = |v: &Value| -> Vec<String> {
        (v["outputs"].as_array().into_iter().flatten())
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let (had, want) = (wrote(&then), wrote(now));
    let missing: Vec<&String> = want.iter().filter(|w| !had.contains(w)).collect();
    if !missing.is_empty() {
        eprintln!(
            "note: --resume: the previous run in {} wrote no {:?} files: every image is \
             explained again",
            out.display(),
            missing
        );
        return Ok(None);
    }
    let summary = out.join(FILE);
    if (summary_text.as_ref()).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Ok(None); // stopped before its first row
    }
    // A summary that cannot be read would otherwise mean every image is explained again,
    // unasked: a long run's work.
    let unusable = |why: &str| {
        anyhow::anyhow!(
            "--resume: {} {why}, so what was done cannot be told; remove it (every image is \
             then explained again) or give another --out",
            summary.display()
        )
    };
    let text = summary_text.map_err(|e| unusable(&e.to_string()))?;
    let header = records(&text).next().map(fields).unwrap_or_default();
    if header.len() < 3
        || header[0] != "image"
        || header[1] != "status"
        || header.last().is_none_or(|s| s != "stem")
    {
        return Err(unusable(
            "does not begin with the header `gradcam explain` writes (image,status,...,stem)",
        ));
    }
    let columns = header.len();
    // A last row without its line break was cut short by the stop.
    let whole = match text.ends_with('\n') {
        true => text.as_str(),
        false => text.rsplit_once('\n').map_or("", |(whole, _)| whole),
    };
    let rows: Vec<String> = records(whole).skip(1).map(String::from).collect();
    let mut by_image = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(image) = fields(r).into_iter().next() {
            by_image
                .entry(image_key(&image))
                .or_insert_with(Vec::new)
                .push(i);
        }
    }
    let taken = vec![false; rows.len()];
    Ok(Some(Previous {
        rows,
        by_image,
        taken,
        columns,
        wrote: had,
    }))
}

impl Previous {
    /// The row of `image` to keep: it was explained (`ok`) with the same output stem, and
    /// every file `suffixes` names (`<stem><suffix>`) is in `out` (a map of the shape `size`
    /// gives the image); its image field then reads as `image` is given now. Either way its
    /// row is taken: [`Previous::others`] leaves it out.
    pub fn kept(
        &mut self,
        image: &Path,
        stem: &str,
        out: &Path,
        suffixes: &[&str],
        size: InputSize,
    ) -> Option<String> {
        let now = text(image);
        let rows = self.by_image.get(&image_key(&now))?;
        rows.iter().for_each(|&i| self.taken[i] = true);
        // Of the file's rows, the one with this input's stem.
        let row = (rows.iter())
            .map(|&i| &self.rows[i])
            .find(|r| fields(r).last().is_some_and(|s| s == stem))?;
        let f = fields(row);
        let done = self.whole(row)
            && f.get(1).is_some_and(|s| s == "ok")
            && f.last().is_some_and(|s| s == stem)
            && (suffixes.iter()).all(|s| {
                let file = out.join(format!("{stem}{s}"));
                // (A map's shape tells that it is whole too: its header is read once.)
                match *s == MAP {
                    true => map_fits(&file, image, size),
                    false => whole_file(&file),
                }
            });
        if !done {
            return None;
        }
        let rest: Vec<String> = f[1..].iter().map(|v| field(v)).collect();
        Some(format!("{},{}", field(&now), rest.join(",")))
    }

    /// The kinds of files per image to record in this run's run.json, which asks for `now`:
    /// the previous run's as well (those of `known`, the kinds gradcam writes), as its images
    /// keep theirs (the settings are the same, or the run would have been refused). A run
    /// that goes on with fewer `--outputs` would otherwise make the next `--resume` with them
    /// all explain every image again; an image this run explains without some kind has no
    /// such file, which [`Previous::kept`] sees.
    pub fn outputs(&self, now: &[&str], known: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = (self.wrote.iter())
            .filter(|s| known.contains(&s.as_str()))
            .cloned()
            .collect();
        for s in now {
            if !all.iter().any(|a| a == s) {
                all.push(s.to_string());
            }
        }
        all
    }

    /// The output stems of the previous run's rows (files `<stem>...` of the kinds it
    /// recorded are its own, not somebody else's).
    pub fn stems(&self) -> HashSet<String> {
        (self.rows.iter())
            .filter_map(|r| fields(r).last().cloned())
            .collect()
    }

    /// Takes the rows of an input that is no image now (missing, unreadable): this run
    /// writes its row, so [`Previous::others`] must not carry the old ones.
    pub fn forget(&mut self, image: &Path) {
        if let Some(rows) = self.by_image.get(&image_key(&text(image))) {
            rows.iter().for_each(|&i| self.taken[i] = true);
        }
    }

    /// The whole rows of images that are not among this run's inputs and whose stem no input
    /// has now (its files would be another image's), in their order: a run over part of a
    /// folder's images keeps the others' rows, as their files stay.
    pub fn others(&self, stems: &[String]) -> Vec<String> {
        let stems: std::collections::HashSet<&str> = stems.iter().map(String::as_str).collect();
        (self.rows.iter().zip(&self.taken))
            .filter(|(row, &taken)| {
                !taken
                    && self.whole(row)
                    && fields(row)
                        .last()
                        .is_some_and(|s| !stems.contains(s.as_str()))
            })
            .map(|(row, _)| row.clone())
            .collect()
    }

    /// A row as the run wrote it: all its fields (a stop in mid-write cuts the last one
    /// short; an odd number of quotes, inside a quoted field).
    fn whole(&self, row: &str) -> bool {
        fields(row).len() == self.columns && row.matches('"').count().is_multiple_of(2)
    }
}

/// Settings not compared: the kinds of files per image, checked by [`load`] (the previous
/// run must have written every kind asked for now) and image by image by
/// [`Previous::kept`]; the backend, for the reader (a run may go on on another device).
const RECORDED: &[&str] = &["outputs", "backend"];

/// A file there, whole as far as its kind tells cheaply. `explain` writes each file under a
/// temporary name and renames it when whole, so one under its real name is whole; the checks
/// guard against files left by other means (made or replaced by hand, copied in part, a
/// version that wrote in place): a PNG's signature and closing IEND chunk, a map's `.npy`
/// header and length, a JSON object naming its class (as every report does); any other file,
/// bytes.
fn whole_file(p: &Path) -> bool {
    // (Opening a FIFO would block until something writes to it.)
    if !std::fs::metadata(p).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let name = p.to_string_lossy();
    if name.ends_with(".png") {
        return png_whole(p).unwrap_or(false);
    }
    if name.ends_with(".npy") {
        return gradcam::npy::is_whole_f32(p);
    }
    if name.ends_with(".json") {
        return (std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v.get("class").is_some());
    }
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// The suffix of an image's map, `<stem>.cam.npy`.
const MAP: &str = ".cam.npy";

/// Whether a whole map's shape is the one this run gives `image`: \[S, S\] for `--size S`;
/// for `--size native` the image's own size, either way round (its EXIF orientation may turn
/// it; not decoded to tell). A map copied from another image, or made or edited by hand to
/// another size, is explained again rather than kept beside a report that contradicts it.
fn map_fits(map: &Path, image: &Path, size: InputSize) -> bool {
    // (Opening a FIFO would block until something writes to it.)
    if !std::fs::metadata(map).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Some(shape) = gradcam::npy::whole_f32_shape(map) else {
        return false;
    };
    match (size, &shape[..]) {
        (InputSize::Square(s), &[h, w]) => (h, w) == (s, s),
        (InputSize::Native, &[h, w]) => match gradcam::image::peek_dims(image) {
            Some((iw, ih)) => {
                let (iw, ih) = (iw as usize, ih as usize);
                (h, w) == (ih, iw) || (h, w) == (iw, ih)
            }
            // (Formats read whole to tell their size: a 2-D map of any size.)
            None => h > 0 && w > 0,
        },
        _ => false,
    }
}

/// PNG's 8-byte signature at the start and its empty IEND chunk at the end.
fn png_whole(p: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
    const IEND: &[u8; 12] = b"\0\0\0\0IEND\xae\x42\x60\x82";
    let mut f = std::fs::File::open(p)?;
    let (mut head, mut tail) = ([0u8; 8], [0u8; 12]);
    f.read_exact(&mut head)?;
    f.seek(SeekFrom::End(-12))?;
    f.read_exact(&mut tail)?;
    Ok(&head == SIGNATURE && &tail == IEND)
}

/// `key was X, now Y` for each top-level setting that differs.
fn differences(then: &Value, now: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        then.as_object().unwrap_or(&empty),
        now.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !RECORDED.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .map(|k| {
            let v = |m: &serde_json::Map<String, Value>| {
                m.get(k).map_or("unset".to_string(), Value::to_string)
            };
            format!("{k} was {}, now {}", v(a), v(b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' images are no files: any 2-D map fits them.
    const NATIVE: InputSize = InputSize::Native;

    /// [`load_from`] reading the summary itself.
    fn load(out: &Path, now: &Value) -> anyhow::Result<Option<Previous>> {
        load_from(out, now, crate::inputs::read_text(&out.join(FILE)))
    }

    #[test]
    fn differing_settings_are_named() {
        let then = json!({"layer": "layer3", "method": "gradcam", "class": null, "outputs": [1]});
        let now = json!({"layer": "layer4", "method": "gradcam", "size": "224", "outputs": [2]});
        assert_eq!(
            differences(&then, &now),
            [
                "class was null, now unset",
                "layer was \"layer3\", now \"layer4\"",
                "size was unset, now \"224\""
            ]
        );
        assert!(differences(&now, &now.clone()).is_empty());
    }

    /// A kept map has the shape this run gives its image: \[S, S\], or the image's own size
    /// (either way round) with `--size native`.
    #[test]
    fn kept_maps_have_this_runs_shape() {
        let d = tempfile::tempdir().unwrap();
        let (img, map) = (d.path().join("i.png"), d.path().join("i.cam.npy"));
        image::RgbImage::new(5, 3).save(&img).unwrap();
        let with = |shape: &[usize], size| {
            let n = shape.iter().product();
            gradcam::npy::write_f32(&map, shape, &vec![0.0; n]).unwrap();
            map_fits(&map, &img, size)
        };
        assert!(with(&[4, 4], InputSize::Square(4)));
        assert!(!with(&[4, 4], InputSize::Square(5)));
        assert!(!with(&[1, 4, 4], InputSize::Square(4)));
        assert!(with(&[3, 5], InputSize::Native));
        assert!(with(&[5, 3], InputSize::Native));
        assert!(!with(&[4, 4], InputSize::Native));
        std::fs::write(&map, b"\x93NUMPY cut").unwrap();
        assert!(!map_fits(&map, &img, InputSize::Square(4)));
    }

    /// An image given another way (`./`, absolute) is the same image; rows of images not
    /// given this time stay, unless an input of this run now has their stem.
    #[test]
    fn rows_match_by_file_and_others_stay() {
        let d = tempfile::tempdir().unwrap();
        let (out, imgs) = (d.path().join("out"), d.path().join("imgs"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&imgs).unwrap();
        for f in ["x.png", "y.png"] {
            std::fs::write(imgs.join(f), "x").unwrap();
        }
        std::fs::write(out.join("x.json"), r#"{"class": 1}"#).unwrap();
        let now = json!({"layer": "layer4"});
        std::fs::write(out.join(SETTINGS), now.to_string()).unwrap();
        let (y_row, z_row) = (
            format!("{},ok,,y", imgs.join("y.png").display()),
            "gone.png,error,unreadable,".to_string(),
        );
        let dotted = format!("{}/./x.png", imgs.display());
        // x.png given twice (two names of one file, stems x and x-2); gone.png failed.
        let text = format!(
            "image,status,error,stem\n{dotted},ok,,x\n{y_row}\n{z_row}\n{},ok,,x-2\n",
            imgs.join("x.png").display()
        );
        std::fs::write(out.join(FILE), text).unwrap();
        std::fs::write(out.join("x-2.json"), r#"{"class": 1}"#).unwrap();
        // The summary is read once: for the stems the run wrote, then for what it did.
        let (written, summary_text) = Written::read(&out);
        assert!(written.holds("X-2") && written.holds("y") && !written.holds("z"));
        let mut p = load_from(&out, &now, summary_text.unwrap())
            .unwrap()
            .unwrap();
        let x = imgs.join("x.png");
        assert_eq!(
            p.kept(&x, "x", &out, &[".json"], NATIVE),
            Some(format!("{},ok,,x", x.display())),
            "the row reads as the image is given now"
        );
        assert_eq!(
            p.kept(Path::new(&dotted), "x-2", &out, &[".json"], NATIVE),
            Some(format!("{dotted},ok,,x-2")),
            "each name of one file keeps its own row"
        );
        assert_eq!(p.others(&["x".into()]), [y_row.clone(), z_row.clone()]);
        assert_eq!(p.others(&["x".into(), "y".into()]), [z_row]);
        // An input that failed now: its old row is this run's to write, not carried.
        p.forget(Path::new("gone.png"));
        assert_eq!(p.others(&["x".into()]), [y_row]);
    }

    #[test]
    fn rows_are_kept_only_when_done_with_their_files() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        let now = json!({"layer": "layer4"});
        assert!(
            load(out, &now).unwrap().is_none(),
            "no run.json: nothing to keep"
        );
        std::fs::write(out.join(SETTINGS), now.to_string()).unwrap();
        assert!(
            load(out, &now).unwrap().is_none(),
            "no summary: nothing to keep"
        );
        // A summary that is not one (binary, another file's header) is an error, not a silent
        // fresh start.
        for bad in [
            &b"\xff\xfe\x00garbage"[..],
            b"image,status\nfoo\n",
            b"a,b,c\n",
        ] {
            std::fs::write(out.join(FILE), bad).unwrap();
            let e = load(out, &now)
                .err()
                .expect("an unusable summary is refused");
            assert!(e.to_string().contains("summary.csv"), "{e}");
        }
        std::fs::write(
            out.join(FILE),
            "image,status,error,stem\n\
             a.png,ok,,a\n\
             \"b,1.png\",ok,,\"b,1\"\n\
             c.png,error,\"bad\nfile\",\n\
             d.png,ok,,d\n\
             e.png,ok,e\n",
        )
        .unwrap();
        for stem in ["a", "b,1"] {
            gradcam::npy::write_f32(&out.join(format!("{stem}.cam.npy")), &[1, 2], &[0.5, 1.0])
                .unwrap();
            std::fs::write(out.join(format!("{stem}.json")), "{\"class\": 3}\n").unwrap();
        }
        std::fs::write(out.join("d.json"), "{}").unwrap();
        let mut p = load(out, &now).unwrap().unwrap();
        let files = [".cam.npy", ".json"];
        assert_eq!(
            p.kept(Path::new("a.png"), "a", out, &files, NATIVE)
                .as_deref(),
            Some("a.png,ok,,a")
        );
        assert!(p
            .kept(Path::new("b,1.png"), "b,1", out, &files, NATIVE)
            .is_some());
        assert!(
            p.kept(Path::new("a.png"), "a-2", out, &files, NATIVE)
                .is_none(),
            "stem"
        );
        assert!(
            p.kept(Path::new("c.png"), "c", out, &[], NATIVE).is_none(),
            "failed"
        );
        assert!(
            p.kept(Path::new("d.png"), "d", out, &files, NATIVE)
                .is_none(),
            "npy gone"
        );
        std::fs::write(out.join("d.cam.npy"), "").unwrap();
        assert!(
            p.kept(Path::new("d.png"), "d", out, &files, NATIVE)
                .is_none(),
            "npy cut at its creation (0 bytes)"
        );
        // Files there but not whole: a map or a JSON cut short, garbage under a PNG's name.
        std::fs::write(
            out.join("d.cam.npy"),
            &std::fs::read(out.join("a.cam.npy")).unwrap()[..130],
        )
        .unwrap();
        assert!(
            p.kept(Path::new("d.png"), "d", out, &files, NATIVE)
                .is_none(),
            "npy cut short"
        );
        std::fs::copy(out.join("a.cam.npy"), out.join("d.cam.npy")).unwrap();
        std::fs::write(out.join("d.json"), "{\"class\": ").unwrap();
        assert!(
            p.kept(Path::new("d.png"), "d", out, &files, NATIVE)
                .is_none(),
            "json cut short"
        );
        std::fs::write(out.join("d.json"), "{}").unwrap();
        assert!(
            p.kept(Path::new("d.png"), "d", out, &files, NATIVE)
                .is_none(),
            "json without a class: no report"
        );
        std::fs::write(out.join("d.json"), "{\"class\": 0}").unwrap();
        assert!(p
            .kept(Path::new("d.png"), "d", out, &files, NATIVE)
            .is_some());
        let png = [".overlay.png"];
        for (bytes, why) in [
            (&b"not a png at all, but long enough"[..], "garbage"),
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "cut short"),
            (b"\x89PNG\r\n\x1a\n\0\0\0\0IEND\xae\x42\x60\x82", "whole"),
        ] {
            std::fs::write(out.join("a.overlay.png"), bytes).unwrap();
            assert_eq!(
                p.kept(Path::new("a.png"), "a", out, &png, NATIVE).is_some(),
                why == "whole",
                "png {why}"
            );
        }
        assert!(
            p.kept(Path::new("e.png"), "e", out, &[], NATIVE).is_none(),
            "cut short"
        );
        assert!(
            p.kept(Path::new("f.png"), "f", out, &[], NATIVE).is_none(),
            "not listed"
        );
        // Cut short at the end of the file: a whole row without its line break, a row cut
        // inside a quoted stem; and a whole quoted row cut before its line break.
        for (tail, image, stem) in [
            ("h.png,ok,,h", "h.png", "h"),
            ("\"g,1.png\",ok,,\"g,1", "g,1.png", "g,1"),
            ("\"g,1.png\",ok,,\"g,1\"", "g,1.png", "g,1"),
        ] {
            std::fs::write(out.join(FILE), format!("image,status,error,stem\n{tail}")).unwrap();
            let mut p = load(out, &now).unwrap().unwrap();
            assert!(
                p.kept(Path::new(image), stem, out, &[], NATIVE).is_none(),
                "{tail}"
            );
            std::fs::write(out.join(FILE), format!("image,status,error,stem\n{tail}\n")).unwrap();
            let mut p = load(out, &now).unwrap().unwrap();
            let whole = tail.matches('"').count() % 2 == 0;
            assert_eq!(
                p.kept(Path::new(image), stem, out, &[], NATIVE).is_some(),
                whole,
                "{tail}"
            );
        }
        // A run that wrote fewer kinds of files than asked for now: nothing is kept (files of
        // the missing kind may be an earlier run's, with other settings).
        let then = json!({"layer": "layer4", "outputs": [".json"]});
        std::fs::write(out.join(SETTINGS), then.to_string()).unwrap();
        let both = json!({"layer": "layer4", "outputs": [".cam.npy", ".json"]});
        assert!(load(out, &both).unwrap().is_none());
        assert!(load(out, &then).unwrap().is_some());
        std::fs::write(out.join(SETTINGS), now.to_string()).unwrap();
        let err = load(out, &json!({"layer": "layer3"})).err().unwrap();
        assert!(
            err.to_string()
                .contains("layer was \"layer4\", now \"layer3\""),
            "{err}"
        );
    }
}
