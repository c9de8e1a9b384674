//! Paths as text in the files the tools write and read (`summary.csv`, the JSON reports,
//! manifests and group lists). A Unix file name is bytes and need not be UTF-8: [`text`]
//! writes the bytes that are not as `\xNN`, so two such names stay apart and the file can be
//! found again by [`path_of`] (a lossy `U+FFFD` would name no file). UTF-8 names, nearly all
//! of them, are written as they are.

use std::path::{Path, PathBuf};

/// `p` as text: as it is when it is UTF-8, else with each byte that is not written `\xNN`
/// (`caf\xE9.png` for Latin-1's `café.png`). Not on Unix, the platform's lossy form.
pub fn text(p: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bytes = p.as_os_str().as_bytes();
        if let Ok(s) = std::str::from_utf8(bytes) {
            return s.to_string();
        }
        let mut s = String::with_capacity(bytes.len() + 8);
        for chunk in bytes.utf8_chunks() {
            s.push_str(chunk.valid());
            for b in chunk.invalid() {
                s.push_str(&format!("\\x{b:02X}"));
            }
        }
        s
    }
    #[cfg(not(unix))]
    {
        p.to_string_lossy().into_owned()
    }
}

/// The file `p` names: `p` itself when something is there or `p` has no `\xNN` escape, else
/// `p` with its escapes turned back into bytes ([`text`]'s inverse) when that path exists. A
/// literal `\x41` in a name that exists is kept as it is.
pub fn path_of(p: &Path) -> PathBuf {
    let has_escape = p
        .as_os_str()
        .as_encoded_bytes()
        .windows(2)
        .any(|w| w == b"\\x");
    if !has_escape || p.symlink_metadata().is_ok() {
        return p.to_path_buf();
    }
    match unescaped(p) {
        Some(u) if u.symlink_metadata().is_ok() => u,
        _ => p.to_path_buf(),
    }
}

/// `p` with each `\xNN` (two hex digits) turned into its byte; None when there is none or on
/// platforms whose names are not bytes.
fn unescaped(p: &Path) -> Option<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let b = p.as_os_str().as_bytes();
        let (mut out, mut i, mut any) = (Vec::with_capacity(b.len()), 0, false);
        while i < b.len() {
            let hex = (b[i] == b'\\' && b.get(i + 1) == Some(&b'x'))
                .then(|| b.get(i + 2..i + 4))
                .flatten()
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                (i, any) = (i + 4, true);
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        any.then(|| PathBuf::from(std::ffi::OsString::from_vec(out)))
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_names_are_written_as_they_are() {
        for s in ["a.png", "dir/café, \"1\".png", "\\x41.png", ""] {
            assert_eq!(text(Path::new(s)), s);
        }
    }

    #[cfg(unix)]
    #[test]
    fn other_bytes_are_escaped_and_found_again() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        // Latin-1 "café" and "cafè": both are "caf\u{FFFD}" when written lossily.
        let e = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
        let f = dir
            .path()
            .join(std::ffi::OsStr::from_bytes(b"caf\xe8 \xff.png"));
        let (te, tf) = (text(&e), text(&f));
        assert!(te.ends_with("/caf\\xE9.png"), "{te}");
        assert!(tf.ends_with("/caf\\xE8 \\xFF.png"), "{tf}");
        // Not there yet: the text is taken as it is.
        assert_eq!(path_of(Path::new(&te)), PathBuf::from(&te));
        std::fs::write(&e, b"1").unwrap();
        std::fs::write(&f, b"2").unwrap();
        assert_eq!(path_of(Path::new(&te)), e);
        assert_eq!(path_of(Path::new(&tf)), f);
        // A file whose UTF-8 name holds the escape itself is found as it is.
        let literal = dir.path().join("caf\\xE9.png");
        std::fs::write(&literal, b"3").unwrap();
        assert_eq!(path_of(Path::new(&te)), literal);
        // Broken escapes are text.
        assert_eq!(unescaped(Path::new("a\\x4")), None);
        assert_eq!(unescaped(Path::new("a\\xZZ\\x")), None);
    }
}
