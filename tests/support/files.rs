//! Looking at and preparing journal files by hand, the way a person would with `ls`,
//! `cat` and `cp`.

use std::path::Path;

/// The header line the store writes at the top of a segment whose first record has
/// sequence number `first_seq` (see the crate docs of `ministore`, "File format").
pub fn header(first_seq: u64) -> String {
    format!("// MINISTORE JOURNAL v0.1.4 first_seq={first_seq}\n")
}

/// The header line the published `ministore` 0.1.x crate writes: no sequence number.
pub const PUBLISHED_HEADER: &str = "// MINISTORE JOURNAL v0.1.4\n";

/// The names of the files in `dir`, sorted. A missing directory has none.
pub fn file_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| {
            e.expect("reading a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// The rotated segments of the journal whose active file is `path` (`<name>.<digits>`),
/// oldest first.
pub fn rotated_segments(path: &Path) -> Vec<std::path::PathBuf> {
    let dir = path.parent().expect("a journal path has a directory");
    let prefix = format!("{}.", path.file_name().unwrap().to_string_lossy());
    let mut numbered: Vec<(u64, std::path::PathBuf)> = file_names(dir)
        .into_iter()
        .filter_map(|name| {
            let number = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((number, dir.join(name)))
        })
        .collect();
    numbered.sort();
    numbered.into_iter().map(|(_, p)| p).collect()
}

/// Copies every regular file of `from` into `to` (created if missing). Journals are flat
/// directories, so this is all a copy of one needs.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the copy's directory");
    for entry in std::fs::read_dir(from).expect("listing the directory to copy") {
        let entry = entry.expect("reading a directory entry");
        if entry.file_type().expect("reading a file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copying a file");
        }
    }
}

/// The sparse index file of the segment at `segment` (`<segment>.idx`).
pub fn index_path(segment: &Path) -> std::path::PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(".idx");
    name.into()
}

/// What a segment index file says (layout in `ministore`'s crate docs, "Segment indexes").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    pub first_seq: u64,
    pub header_len: u64,
    pub segment_len: u64,
    /// (seq, byte offset where that record's line starts)
    pub entries: Vec<(u64, u64)>,
}

impl SegmentIndex {
    /// Reads and decodes the index file at `path`; panics if it is not one.
    pub fn read(path: &Path) -> SegmentIndex {
        let bytes = std::fs::read(path).expect("reading an index file");
        assert_eq!(&bytes[..8], b"MSIDX001", "{}", path.display());
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        let count = word(32) as usize;
        assert_eq!(bytes.len(), 40 + count * 16 + 8, "{}", path.display());
        SegmentIndex {
            first_seq: word(8),
            header_len: word(16),
            segment_len: word(24),
            entries: (0..count)
                .map(|i| (word(40 + i * 16), word(48 + i * 16)))
                .collect(),
        }
    }

    /// The bytes of this index, with a correct checksum: a well-formed file, whatever its
    /// entries say.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"MSIDX001".to_vec();
        let words = [
            self.first_seq,
            self.header_len,
            self.segment_len,
            self.entries.len() as u64,
        ];
        let pairs = self.entries.iter().flat_map(|&(s, o)| [s, o]);
        for w in words.into_iter().chain(pairs) {
            out.extend_from_slice(&w.to_le_bytes());
        }
        // FNV-1a 64
        let sum = out.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }
}
