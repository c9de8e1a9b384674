//! `summary.csv`: one row per input of `gradcam explain`, so a data set's explanations can be
//! sorted and filtered (by class, confidence, where the map looks) without opening thousands
//! of JSON files. Rows are flushed as each batch is written, so a run that is stopped keeps
//! the rows of everything it wrote.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

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
}

impl Summary {
    pub fn create(out: &Path) -> anyhow::Result<Self> {
        let path = out.join(FILE);
        let file =
            File::create(&path).map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
        let mut s = Summary {
            path,
            w: Some(BufWriter::new(file)),
            error: None,
        };
        s.push(HEADER.to_string());
        Ok(s)
    }

    /// The row of an input that could not be read, decoded, explained or written.
    pub fn failed(&mut self, image: &Path, why: &str) {
        let row = format!(
            "{},error,{}{}",
            field(&image.display().to_string()),
            field(why),
            ",".repeat(COLUMNS - 3),
        );
        self.push(row);
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

    /// Appends a row (the header, or one made by [`explained_row`]).
    pub fn push(&mut self, row: String) {
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
        field(&image.display().to_string()),
        e.class,
        label(e.class),
        e.probability,
        e.logit,
        label(predicted),
        field(stem),
    )
}

/// A CSV field (RFC 4180): quoted, with quotes doubled, when it holds a comma, a quote or a
/// line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        assert_eq!(field("a/b.png"), "a/b.png");
        assert_eq!(field("x,y.png"), "\"x,y.png\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
    }
}
