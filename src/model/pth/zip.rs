//! The stored (uncompressed) entries of a zip archive, as torch.save writes them: found
//! through the central directory at the archive's end (ZIP64 where sizes or offsets pass
//! 4 GiB), each entry's bytes left where they are in the file.

use std::collections::HashMap;

/// The stored (uncompressed) entries of a zip archive: name → (start, length) of the data.
pub fn stored_entries(file: &[u8]) -> Result<HashMap<String, (usize, usize)>, String> {
    let u16_at = |i: usize| {
        file.get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
    };
    let u32_at = |i: usize| {
        file.get(i..i + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")) as u64)
    };
    let u64_at = |i: usize| {
        file.get(i..i + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    };
    let cut =
        || "the zip archive is cut short or damaged (no complete directory at its end)".to_string();
    // End of central directory: 22 bytes plus a comment of up to 64 KiB, at the end.
    let lo = file.len().saturating_sub(22 + 65535);
    let eocd = (lo..file.len().saturating_sub(21))
        .rev()
        .find(|&i| file[i..i + 4] == *b"PK\x05\x06")
        .ok_or_else(cut)?;
    let (mut count, mut dir) = (
        u16_at(eocd + 10).ok_or_else(cut)?,
        u32_at(eocd + 16).ok_or_else(cut)?,
    );
    if count == 0xffff || dir == 0xffff_ffff {
        // ZIP64: a locator just before points at the 64-bit record.
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| file[l..l + 4] == *b"PK\x06\x07")
            .ok_or_else(cut)?;
        let rec = u64_at(loc + 8)
            .and_then(|r| usize::try_from(r).ok())
            .ok_or_else(cut)?;
        if file.get(rec..rec + 4) != Some(b"PK\x06\x06") {
            return Err(cut());
        }
        count = u64_at(rec + 32).ok_or_else(cut)?;
        dir = u64_at(rec + 48).ok_or_else(cut)?;
    }
    let mut at = usize::try_from(dir).map_err(|_| cut())?;
    let mut out = HashMap::new();
    for _ in 0..count {
        if file.get(at..at + 4) != Some(b"PK\x01\x02") {
            return Err(cut());
        }
        let method = u16_at(at + 10).ok_or_else(cut)?;
        let (mut size, usize_) = (
            u32_at(at + 20).ok_or_else(cut)?,
            u32_at(at + 24).ok_or_else(cut)?,
        );
        let (n, e, c) = (
            u16_at(at + 28).ok_or_else(cut)? as usize,
            u16_at(at + 30).ok_or_else(cut)? as usize,
            u16_at(at + 32).ok_or_else(cut)? as usize,
        );
        let mut local = u32_at(at + 42).ok_or_else(cut)?;
        let name =
            String::from_utf8_lossy(file.get(at + 46..at + 46 + n).ok_or_else(cut)?).into_owned();
        // ZIP64 extra field: the 64-bit sizes and offset, those whose 32-bit field is full.
        let mut x = at + 46 + n;
        let extra_end = x + e;
        while x + 4 <= extra_end {
            let (id, len) = (
                u16_at(x).ok_or_else(cut)?,
                u16_at(x + 2).ok_or_else(cut)? as usize,
            );
            if id == 1 {
                let mut f = x + 4;
                let mut take = |v: &mut u64| -> Result<(), String> {
                    if *v == 0xffff_ffff {
                        *v = u64_at(f).ok_or_else(cut)?;
                        f += 8;
                    }
                    Ok(())
                };
                let mut uncompressed = usize_;
                take(&mut uncompressed)?;
                take(&mut size)?;
                take(&mut local)?;
            }
            x += 4 + len;
        }
        at = extra_end + c;
        if name.contains("/code/__torch__") || name.ends_with("/constants.pkl") {
            return Err(
                "a TorchScript archive (torch.jit.save), not a torch.save file: save \
                 the model's state_dict with torch.save"
                    .into(),
            );
        }
        if method != 0 {
            return Err(format!(
                "entry `{name}` of the zip archive is compressed (method {method}); torch.save \
                 stores its entries uncompressed: was the file re-zipped?"
            ));
        }
        let local = usize::try_from(local).map_err(|_| cut())?;
        if file.get(local..local + 4) != Some(b"PK\x03\x04") {
            return Err(cut());
        }
        let skip = 30
            + u16_at(local + 26).ok_or_else(cut)? as usize
            + u16_at(local + 28).ok_or_else(cut)? as usize;
        let size = usize::try_from(size).map_err(|_| cut())?;
        let start = local + skip;
        if start.checked_add(size).is_none_or(|end| end > file.len()) {
            return Err(format!(
                "entry `{name}` runs past the end of the file: cut short"
            ));
        }
        out.insert(name, (start, size));
    }
    Ok(out)
}
