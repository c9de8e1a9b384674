//! `summary.csv`: one row per input of `gradcam explain`, so a data set's explanations can be
//! sorted and filtered (by class, confidence, where the map looks) without opening thousands
//! of JSON files. Rows are appended and flushed as each batch is written, in the order inputs
//! finish, so a run that is stopped keeps the rows of everything it wrote (and `--resume` can
//! go on from them); at the end of the run the file is rewritten in input order.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use gradcam::csv::{field, fields, records};
use gradcam::eval::metrics::map_stats;
use gradcam::explain::Explanation;

pub const FILE: &str = "summary.csv";

const HEADER: &str = "image,status,error,class,label,probability,logit,predicted,\
                      predicted_label,peak_x,peak_y,centroid_x,centroid_y,border_mass,area_half,stem";

const COLUMNS: usize = 16;

pub struct Summary {
    path: PathBuf,
    /// None once a write failed: the summary stops, the run goes on.
    w: Option<BufWriter<File>>,
    /// The first failure to write, until `flush` reports it.
    error: Option<String>,
    /// The input position of each row written, in the order written.
    order: Vec<usize>,
}

impl Summary {
    /// Starts the summary with the rows `kept` from the run `--resume` goes on from, (input
    /// position, row): written to a temporary file renamed over the old summary, so a stop at
    /// any moment leaves either file whole.
    pub fn create(out: &Path, kept: &[(usize, String)]) -> anyhow::Result<Self> {
        let path = out.join(FILE);
        let tmp = path.with_extension("csv.tmp");
        let start = || -> std::io::Result<File> {
            let mut w = BufWriter::new(File::create(&tmp)?);
            writeln!(w, "{HEADER}")?;
            for (_, row) in kept {
                writeln!(w, "{row}")?;
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::OpenOptions::new().append(true).open(&path)
        };
        let file = start().map_err(|e| {
            let _ = std::fs::remove_file(&tmp); // (a failed write leaves no litter)
            anyhow::anyhow!("creating {}: {e}", path.display())
        })?;
        Ok(Summary {
            path,
            w: Some(BufWriter::new(file)),
            error: None,
            order: kept.iter().map(|k| k.0).collect(),
        })
    }

    /// The row of the input at position `at` that could not be read, decoded, explained or
    /// written, with its class (index, label) when `--class` or `--classes` gave one.
    pub fn failed(&mut self, at: usize, image: &Path, why: &str, class: Option<(usize, &str)>) {
        let class = class.map_or(",".into(), |(c, l)| format!("{c},{}", field(l)));
        let row = format!(
            "{},error,{},{class}{}",
            field(&gradcam::path_text::text(image)),
            field(why),
            ",".repeat(COLUMNS - 5),
        );
        self.put(at, &row);
    }

    /// Appends the row of the input at position `at` (one made by [`explained_row`], or kept
    /// from the run `--resume` goes on from).
    pub fn put(&mut self, at: usize, row: &str) {
        self.write(row);
        self.order.push(at);
    }

    /// Flushes, then rewrites the file with its rows in input order (through a temporary file
    /// renamed over it, so a failure leaves the rows as they were). Returns a failure to
    /// report, as [`Summary::flush`].
    pub fn finish(&mut self) -> Option<String> {
        if let Some(why) = self.flush() {
            return Some(why);
        }
        let Some(w) = self.w.take() else {
            return None; // stopped after an error already reported
        };
        drop(w);
        let sorted = || -> std::io::Result<()> {
            let text = std::fs::read_to_string(&self.path)?;
            let rows: Vec<&str> = records(&text).skip(1).collect();
            if rows.len() != self.order.len() {
                return Err(std::io::Error::other(format!(
                    "{} rows read back for {} written",
                    rows.len(),
                    self.order.len()
                )));
            }
            let mut by_input: Vec<(usize, &str)> = self.order.iter().copied().zip(rows).collect();
            by_input.sort_by_key(|r| r.0);
            let tmp = self.path.with_extension("csv.tmp");
            let mut w = BufWriter::new(File::create(&tmp)?);
            writeln!(w, "{HEADER}")?;
            for (_, row) in by_input {
                writeln!(w, "{row}")?;
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        sorted().err().map(|e| {
            let _ = std::fs::remove_file(self.path.with_extension("csv.tmp"));
            format!(
                "{}: sorting into input order: {e} (the rows stay in the order written)",
                self.path.display()
            )
        })
    }

    /// Writes what is buffered; call after each batch. The first failure to write is
    /// returned once (the summary then stops) so the run can report it and go on.
    pub fn flush(&mut self) -> Option<String> {
        if let Some(w) = self.w.as_mut() {
            if let Err(e) = w.flush() {
                self.fail(e);
            }
        }
        self.error.take()
    }

    fn write(&mut self, row: &str) {
        if let Some(w) = self.w.as_mut() {
            if let Err(e) = writeln!(w, "{row}") {
                self.fail(e);
            }
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        self.w = None;
        self.error = Some(format!(
            "{}: {e} (the summary stops here)",
            self.path.display()
        ));
    }
}

/// The row of an explained image (its outputs are `<stem>.*`); made apart from [`Summary`]
/// so rows can be built in parallel with the outputs they describe.
pub fn explained_row(
    labels: Option<&[String]>,
    image: &Path,
    stem: &str,
    e: &Explanation,
) -> String {
    let label = |c: usize| {
        labels
            .and_then(|l| l.get(c))
            .map_or(String::new(), |l| field(l))
    };
    let predicted = e.top5.first().map_or(e.class, |p| p.0);
    // An all-zero map (no channel counts for the class) has no position: empty cells.
    let stats = map_stats(&e.cam, e.input_hw).map_or_else(
        || ",".repeat(5),
        |s| {
            format!(
                "{},{},{},{},{},{}",
                s.peak.0, s.peak.1, s.centroid.0, s.centroid.1, s.border_mass, s.area_half
            )
        },
    );
    format!(
        "{},ok,,{},{},{},{},{predicted},{},{stats},{}",
        field(&gradcam::path_text::text(image)),
        e.class,
        label(e.class),
        e.probability,
        e.logit,
        label(predicted),
        field(stem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_writes_the_rows_in_input_order() {
        let d = tempfile::tempdir().unwrap();
        let kept = [(3, "z.png,ok".to_string())];
        let mut s = Summary::create(d.path(), &kept).unwrap();
        s.failed(2, Path::new("c,d.png"), "bad\nfile", Some((4, "a, b")));
        s.put(0, "a.png,ok");
        s.failed(1, Path::new("b.png"), "why", None);
        // Durable before the end, in the order written.
        assert_eq!(s.flush(), None);
        let text = std::fs::read_to_string(d.path().join(FILE)).unwrap();
        let first: Vec<String> = records(&text).map(|r| fields(r)[0].clone()).collect();
        assert_eq!(first, ["image", "z.png", "c,d.png", "a.png", "b.png"]);
        assert_eq!(s.finish(), None);
        let text = std::fs::read_to_string(d.path().join(FILE)).unwrap();
        let rows: Vec<Vec<String>> = records(&text).map(fields).collect();
        assert_eq!(rows[0].len(), COLUMNS);
        let first: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(first, ["image", "a.png", "b.png", "c,d.png", "z.png"]);
        assert_eq!(rows[3][2..5], ["bad\nfile", "4", "a, b"]);
        assert!(rows[1..].iter().all(|r| r.len() == COLUMNS || r.len() == 2));
        assert!(!d.path().join("summary.csv.tmp").exists());
    }
}
