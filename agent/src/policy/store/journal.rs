//! The journal file: checksummed records, appended so that a refused commit leaves no bytes
//! behind, and read so that a torn or damaged record costs that record only.
//!
//! Format: one record a line, `CRC32<TAB>JSON<LF>`, CRC32 as 8 lowercase hex digits over the
//! JSON bytes. Lines starting with `{` are unframed records written by older versions.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    mem,
    path::Path,
};

use super::Record;

/// File name of the journal in the state directory.
pub(super) const NAME: &str = "journal";

/// Appends `r` to `out` as one framed line.
pub(super) fn frame(r: &Record, out: &mut Vec<u8>) {
    // Written in place behind a placeholder for the checksum: no buffer per record.
    let start = out.len();
    out.extend_from_slice(b"00000000\t");
    serde_json::to_writer(&mut *out, r).expect("records serialize");
    let crc = crc32fast::hash(&out[start + 9..]);
    write!(&mut out[start..start + 8], "{crc:08x}").expect("8 hex digits fit");
    out.push(b'\n');
}

/// Decodes one line, without its newline.
pub(super) fn parse(line: &[u8]) -> Result<Record, String> {
    if line.first() == Some(&b'{') {
        // Unframed, from an older version: the JSON syntax is the only check there is.
        return serde_json::from_slice(line).map_err(|e| e.to_string());
    }
    let tab = line.iter().position(|&b| b == b'\t').ok_or("no checksum")?;
    let (crc, json) = (&line[..tab], &line[tab + 1..]);
    let crc = std::str::from_utf8(crc)
        .ok()
        .filter(|c| c.len() == 8 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|c| u32::from_str_radix(c, 16).ok())
        .ok_or("bad checksum field")?;
    if crc32fast::hash(json) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

/// A whole record at the end of a damaged line: older versions appended the next
/// (acknowledged) record right after a torn one, on the same line.
fn salvage(line: &[u8]) -> Option<Record> {
    (1..line.len()).find_map(|i| {
        let rest = &line[i..];
        let framed = i >= 8 && rest.starts_with(b"\t{");
        if framed {
            parse(&line[i - 8..]).ok()
        } else if rest.starts_with(b"{\"op\":") && line[i - 1] != b'\t' {
            // Not after a tab: that JSON is framed, and its checksum failed.
            serde_json::from_slice(rest).ok()
        } else {
            None
        }
    })
}

/// What reading a journal found besides its good records.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Bad lines with a good record after them: (line number, why).
    pub damaged: Vec<(usize, String)>,
    /// Bad or unterminated lines after the last good record: an append that failed or was
    /// cut short, so never acknowledged.
    pub torn: Vec<(usize, String)>,
    /// Bytes up to the end of the last good record.
    pub good_len: u64,
    /// Bytes in the file.
    pub len: u64,
}

/// Reads the journal at `path`, handing each good record to `each` in order, with the
/// offset of its line.
pub(super) fn scan(path: &Path, mut each: impl FnMut(Record, u64)) -> io::Result<Scan> {
    let mut r = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut s = Scan::default();
    let mut bad = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let at = s.len;
        s.len += n as u64;
        // Every record is written with its newline in one go: without it, the write was torn.
        let Some(line) = buf.strip_suffix(b"\n") else {
            bad.push((line_no, "unterminated record".to_owned()));
            break;
        };
        match parse(line) {
            Ok(rec) => {
                s.damaged.append(&mut bad);
                s.good_len = s.len;
                each(rec, at);
            }
            Err(why) => match salvage(line) {
                Some(rec) => {
                    s.damaged.append(&mut bad);
                    s.damaged
                        .push((line_no, format!("{why}; the record after it recovered")));
                    s.good_len = s.len;
                    each(rec, at);
                }
                None => bad.push((line_no, why)),
            },
        }
    }
    s.torn = bad;
    Ok(s)
}

/// The journal as written by this process.
#[derive(Debug, Default)]
pub(super) struct Journal {
    file: Option<File>,
    /// Bytes of the file that hold acknowledged records; None until the file is opened.
    /// The file being longer means a failed append could not be cut off yet: it must be
    /// before anything else is appended, or the next record would be glued to its bytes.
    len: Option<u64>,
    /// The framed records of the commit being built.
    pending: Vec<u8>,
    pending_records: usize,
}

impl Journal {
    /// Adds a record to the commit being built.
    pub(super) fn push(&mut self, r: &Record) {
        frame(r, &mut self.pending);
        self.pending_records += 1;
    }

    /// `records` records already framed by [`frame`].
    pub(super) fn push_framed(&mut self, bytes: &[u8], records: usize) {
        self.pending.extend_from_slice(bytes);
        self.pending_records += records;
    }

    /// Writes and fsyncs the records pushed since the last commit; returns how many. On
    /// any error the file is cut back to its length before, so nothing of a refused commit
    /// replays at the next start.
    pub(super) fn commit(&mut self, dir: &Path) -> io::Result<usize> {
        let buf = mem::take(&mut self.pending);
        let n = mem::take(&mut self.pending_records);
        if buf.is_empty() {
            return Ok(0);
        }
        let f = self.ready(dir)?;
        // A change of several records opens with their count: cut short by a crash, it is
        // dropped whole at the next start (see `Store::open`).
        let mut begin = Vec::new();
        if n > 1 {
            frame(&Record::Begin { records: n as u64 }, &mut begin);
        }
        let res = f
            .write_all(&begin)
            .and_then(|()| f.write_all(&buf))
            .and_then(|()| f.sync_data());
        let len = self.len.expect("set by ready");
        match res {
            Ok(()) => {
                self.len = Some(len + (begin.len() + buf.len()) as u64);
                Ok(n)
            }
            Err(e) => {
                let f = self.file.as_ref().expect("opened by ready");
                if let Err(cut) = f.set_len(len).and_then(|()| f.sync_all()) {
                    tracing::error!(
                        path = %dir.join(NAME).display(),
                        error = %cut,
                        "cannot cut a failed write off the journal: appends are refused \
                         until it can be"
                    );
                }
                Err(e)
            }
        }
    }

    /// Cuts off bytes past the acknowledged length now, if the file is open.
    pub(super) fn repair(&mut self, dir: &Path) -> io::Result<()> {
        if self.file.is_some() || self.len.is_some() {
            self.ready(dir)?;
        }
        Ok(())
    }

    /// Sets the acknowledged length of the file on disk (bytes after it are to be cut).
    pub(super) fn set_len(&mut self, len: u64) {
        self.len = Some(len);
    }

    /// Forgets the file: it was removed, the next commit creates a new one.
    pub(super) fn close(&mut self) {
        self.file = None;
        self.len = None;
    }

    /// The open journal, with nothing after its acknowledged records.
    fn ready(&mut self, dir: &Path) -> io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(NAME))?;
            // A journal created now must still exist after a crash, with its records.
            File::open(dir)?.sync_all()?;
            if self.len.is_none() {
                self.len = Some(f.metadata()?.len());
            }
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened");
        let len = self.len.expect("set when opened");
        let actual = f.metadata()?.len();
        if actual > len {
            f.set_len(len).and_then(|()| f.sync_all()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot cut an earlier failed write off the journal: {e}"),
                )
            })?;
        } else {
            self.len = Some(actual);
        }
        Ok(f)
    }
}
