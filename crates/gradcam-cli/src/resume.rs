//! `explain --resume`: going on with a run that stopped (interrupted, out of disk, a crash)
//! from what its output folder holds, so a data set of a million images is not explained
//! twice. Every run records its settings in `run.json`; a resumed run must have the same
//! ones, and keeps the images whose `summary.csv` row says `ok` and whose files (those asked
//! for now) are all there.

use std::collections::HashMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use crate::inputs::canonical;
use crate::summary::{fields, records, FILE};

/// The settings file in the output folder.
pub const SETTINGS: &str = "run.json";

/// A file by where it is, its size and when it was last changed: a checkpoint or a class
/// list replaced under the same name counts as another.
pub fn file_id(p: &Path) -> Value {
    let meta = std::fs::metadata(p).ok();
    let modified = (meta.as_ref())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    json!({
        "file": canonical(p).display().to_string(),
        "bytes": meta.map(|m| m.len()),
        "modified": modified,
    })
}

/// What the previous run of an output folder left: its rows by image, as written.
pub struct Previous {
    rows: HashMap<String, String>,
    /// The header's field count: a row cut short by a stop in mid-write has fewer.
    columns: usize,
}

/// The previous run in `out`, if there is one to go on from (none when the folder holds no
/// `run.json` or no `summary.csv`: everything is then explained). Fails when the previous
/// run's settings differ from `now`, naming each difference.
pub fn load(out: &Path, now: &Value) -> anyhow::Result<Option<Previous>> {
    let settings = out.join(SETTINGS);
    let Ok(text) = std::fs::read_to_string(&settings) else {
        return Ok(None);
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
    let Ok(text) = std::fs::read_to_string(out.join(FILE)) else {
        return Ok(None);
    };
    let columns = records(&text).next().map_or(0, |h| fields(h).len());
    let rows = records(&text)
        .skip(1)
        .filter_map(|r| {
            let image = fields(r).into_iter().next()?;
            Some((image, r.to_string()))
        })
        .collect();
    Ok(Some(Previous { rows, columns }))
}

impl Previous {
    /// The row of `image` to keep: it was explained (`ok`) with the same output stem, and
    /// every file `suffixes` names (`<stem><suffix>`) is in `out`.
    pub fn kept(&self, image: &Path, stem: &str, out: &Path, suffixes: &[&str]) -> Option<&str> {
        let row = self.rows.get(&image.display().to_string())?;
        let f = fields(row);
        let done = f.len() == self.columns
            && f.get(1).is_some_and(|s| s == "ok")
            && f.last().is_some_and(|s| s == stem)
            && (suffixes.iter()).all(|s| out.join(format!("{stem}{s}")).is_file());
        done.then_some(row.as_str())
    }
}

/// Settings recorded for the reader, not compared: an image's files are checked one by one
/// (an image kept needs every file asked for now).
const RECORDED: &[&str] = &["outputs"];

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
        for f in ["a.cam.npy", "a.json", "b,1.cam.npy", "b,1.json", "d.json"] {
            std::fs::write(out.join(f), "").unwrap();
        }
        let p = load(out, &now).unwrap().unwrap();
        let files = [".cam.npy", ".json"];
        assert_eq!(
            p.kept(Path::new("a.png"), "a", out, &files),
            Some("a.png,ok,,a")
        );
        assert!(p.kept(Path::new("b,1.png"), "b,1", out, &files).is_some());
        assert!(
            p.kept(Path::new("a.png"), "a-2", out, &files).is_none(),
            "stem"
        );
        assert!(
            p.kept(Path::new("c.png"), "c", out, &[]).is_none(),
            "failed"
        );
        assert!(
            p.kept(Path::new("d.png"), "d", out, &files).is_none(),
            "npy gone"
        );
        assert!(
            p.kept(Path::new("e.png"), "e", out, &[]).is_none(),
            "cut short"
        );
        assert!(
            p.kept(Path::new("f.png"), "f", out, &[]).is_none(),
            "not listed"
        );
        let err = load(out, &json!({"layer": "layer3"})).err().unwrap();
        assert!(
            err.to_string()
                .contains("layer was \"layer4\", now \"layer3\""),
            "{err}"
        );
    }
}
