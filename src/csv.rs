//! The CSV the tools read and write (RFC 4180 quoting): `summary.csv`, class lists, group
//! files and evaluation manifests. Fields are quoted only when they hold a comma, a quote or a
//! line break, as spreadsheet programs write them.

/// The records of a CSV text, each without its line break: lines, except that a line break
/// inside a quoted field belongs to the field.
pub fn records(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                c == '\n' && !quoted
            })
            .map_or(rest.len(), |(i, _)| i);
        let (record, next) = (&rest[..end], rest.get(end + 1..).unwrap_or(""));
        rest = next;
        Some(record.strip_suffix('\r').unwrap_or(record))
    })
}

/// The fields of a CSV record, quotes removed and doubled quotes undone.
pub fn fields(record: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let (mut quoted, mut chars) = (false, record.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().expect("one field").push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().expect("one field").push(c),
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
        for s in ["plain", "x,y", "say \"hi\"", "two\nlines", ""] {
            assert_eq!(fields(&field(s)), [s], "{s:?}");
        }
    }
}
