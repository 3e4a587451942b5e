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
