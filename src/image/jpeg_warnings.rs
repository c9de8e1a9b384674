//! libjpeg's warnings about lost image data, kept. The `mozjpeg` crate's error manager
//! silences every warning, and libjpeg goes on past corrupt entropy-coded data by decoding
//! the rest of the segment as grey (as cv2 does, printing "Corrupt JPEG data: ..."): a file
//! damaged in the middle, its end marker intact, would be explained as if whole. This error
//! manager records the first such warning; fatal errors unwind with libjpeg's message, as the
//! crate's own manager does.

use std::cell::RefCell;
use std::os::raw::c_int;

use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error};

thread_local! {
    /// The first data-loss warning of the decoding running on this thread.
    static LOST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// An error manager recording data-loss warnings; [`take_lost`] reads (and clears) them.
pub(super) fn error_mgr() -> jpeg_error_mgr {
    // SAFETY: jpeg_error_mgr is a C struct of numbers, pointers and optional function
    // pointers, for which all-zero is valid; jpeg_std_error then fills it in.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    LOST.with(|l| l.borrow_mut().take());
    err
}

/// The first warning of lost image data since [`error_mgr`] on this thread, if any.
pub(super) fn take_lost() -> Option<String> {
    LOST.with(|l| l.borrow_mut().take())
}

/// Whether a warning says image data was lost: libjpeg's "Corrupt JPEG data" warnings (a
/// marker where data was due, a bad Huffman or arithmetic code, a missing restart marker),
/// except for bytes between segments, which it skips without losing any.
fn loses_data(message: &str) -> bool {
    message.starts_with("Corrupt JPEG data") && !message.contains("extraneous bytes")
}

/// libjpeg's text for the message in `cinfo.err` (its printf-style table, with parameters).
fn message(cinfo: &mut jpeg_common_struct) -> String {
    // SAFETY: libjpeg calls the manager's functions with `cinfo.err` pointing at it.
    let Some(format) = (unsafe { cinfo.err.as_ref() }).and_then(|e| e.format_message) else {
        return "no message".into();
    };
    let mut buffer = [0u8; 80];
    // SAFETY: format_message writes at most JMSG_LENGTH_MAX (80) bytes, NUL included, into
    // the buffer; the binding declares it `&[u8; 80]` though libjpeg writes to it, so the
    // pointer is passed as the mutable array it is.
    unsafe {
        let write: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]) =
            std::mem::transmute(format);
        write(cinfo, &mut buffer);
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // (Levels 0 and up are trace messages.)
    if level >= 0 {
        return;
    }
    let text = message(cinfo);
    if loses_data(&text) {
        LOST.with(|l| {
            l.borrow_mut().get_or_insert(text);
        });
    }
}

extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let text = message(cinfo);
    // Unwinds through libjpeg's C frames (built with unwind tables) to the caller's
    // catch_unwind, as the `mozjpeg` crate's manager does; no panic message is printed.
    std::panic::resume_unwind(Box::new(format!("libjpeg fatal error: {text}")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lost_data_counts() {
        assert!(loses_data(
            "Corrupt JPEG data: premature end of data segment"
        ));
        assert!(loses_data("Corrupt JPEG data: bad Huffman code"));
        assert!(loses_data(
            "Corrupt JPEG data: found marker 0xd9 instead of RST3"
        ));
        assert!(!loses_data(
            "Corrupt JPEG data: 228 extraneous bytes before marker 0xd9"
        ));
        assert!(!loses_data("Premature end of JPEG file"));
        assert!(!loses_data("Unknown Adobe color transform code 7"));
    }
}
