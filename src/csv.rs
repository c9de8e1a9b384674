//! The CSV the tools read and write (RFC 4180 quoting): `summary.csv`, class lists, group
//! files and evaluation manifests. Fields are quoted only when they hold a comma, a quote or a
//! line break, as spreadsheet programs write them.

/// RFC 4180's quoting, a character at a time. A quote opens a quoted field only at the
/// field's start (after blanks), so a stray `"` inside a field (`12".png`, or in a comment
/// line) is text and cannot swallow the lines after it; inside a quoted field a doubled quote
/// is a quote and a single one closes it.
#[derive(Default)]
struct Quoting {
    quoted: bool,
    /// The field has had a character other than blanks.
    started: bool,
    /// The last character closed a quoted field (a quote right after it is a doubled one).
    closed: bool,
}

enum Ch {
    Text(char),
    /// A quote that opens or closes a field: not part of its text.
    Quote,
    Comma,
    LineBreak,
}

impl Quoting {
    fn step(&mut self, c: char) -> Ch {
        if self.quoted {
            if c == '"' {
                (self.quoted, self.closed) = (false, true);
                return Ch::Quote;
            }
            return Ch::Text(c);
        }
        if std::mem::take(&mut self.closed) && c == '"' {
            self.quoted = true;
            return Ch::Text('"');
        }
        match c {
            '"' if !self.started => {
                (self.quoted, self.started) = (true, true);
                Ch::Quote
            }
            ',' => {
                self.started = false;
                Ch::Comma
            }
            '\n' => {
                self.started = false;
                Ch::LineBreak
            }
            c => {
                self.started |= !c.is_whitespace();
                Ch::Text(c)
            }
        }
    }
}

/// The records of a CSV text, each without its line break: lines, except that a line break
/// inside a quoted field belongs to the field.
pub fn records(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut q = Quoting::default();
        let end = (rest.char_indices())
            .find(|&(_, c)| matches!(q.step(c), Ch::LineBreak))
            .map_or(rest.len(), |(i, _)| i);
        let (record, next) = (&rest[..end], rest.get(end + 1..).unwrap_or(""));
        rest = next;
        Some(record.strip_suffix('\r').unwrap_or(record))
    })
}

/// The fields of a CSV record, quotes removed and doubled quotes undone.
pub fn fields(record: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut q = Quoting::default();
    for c in record.chars() {
        match q.step(c) {
            Ch::Text(c) => out.last_mut().expect("one field").push(c),
            Ch::Quote => {}
            Ch::Comma => out.push(String::new()),
            // (Only a record's last character, had it kept its line break.)
            Ch::LineBreak => out.last_mut().expect("one field").push('\n'),
        }
    }
    out
}

/// A CSV field (RFC 4180): quoted, with quotes doubled, when it holds a comma, a quote or a
/// line break.
pub fn field(s: &str) -> String {
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

    #[test]
    fn records_and_fields_undo_the_quoting() {
        let rows = [
            "a.png,ok,",
            "\"x,y.png\",error,\"two\nlines, \"\"quoted\"\"\"",
            "c,,",
        ];
        let text = rows.join("\r\n") + "\n";
        let got: Vec<&str> = records(&text).collect();
        assert_eq!(got, rows);
        assert_eq!(fields(rows[0]), ["a.png", "ok", ""]);
        assert_eq!(
            fields(rows[1]),
            ["x,y.png", "error", "two\nlines, \"quoted\""]
        );
        for s in [
            "plain",
            "x,y",
            "say \"hi\"",
            "two\nlines",
            "",
            "\"\"",
            "a\"\"b",
        ] {
            assert_eq!(fields(&field(s)), [s], "{s:?}");
        }
        // A quote inside an unquoted field is text: it opens nothing, so the lines after it
        // stay records of their own.
        let text = "# boxes in \"pixels\na 12\".png,1\nb.png,2\n";
        let got: Vec<&str> = records(text).collect();
        assert_eq!(got, ["# boxes in \"pixels", "a 12\".png,1", "b.png,2"]);
        assert_eq!(fields(got[1]), ["a 12\".png", "1"]);
        assert_eq!(fields(" \"a,b\" ,c"), [" a,b ", "c"]);
    }
}
