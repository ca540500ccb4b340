//! Counting the files under a folder: the run's S3 server keeps each object as a file,
//! and a worker's spool keeps each attempt log storage did not take as one.

use std::path::Path;

/// Files under `folder`, at any depth, whose name ends with `suffix` (all with "").
pub fn count(folder: &Path, suffix: &str) -> usize {
    let mut folders = vec![folder.to_path_buf()];
    let mut count = 0;
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if entry.file_name().to_string_lossy().ends_with(suffix) {
                count += 1;
            }
        }
    }
    count
}
