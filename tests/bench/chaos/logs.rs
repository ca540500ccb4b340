//! The fleet's server logs, read back from the run directory once the fleet has stopped:
//! every process's, the killed ones' included (each start writes a file of its own).

use std::path::Path;

use serde_json::Value;

use engine_shared::Namespace;

use crate::process::read_json_lines;

/// One server process's log.
pub struct ServerLog {
    /// `engine-api`, `engine-api#1`, `engine-worker#4`, from the file's name.
    pub name: String,
    pub lines: Vec<Value>,
}

impl ServerLog {
    pub fn is_api(&self) -> bool {
        self.name.starts_with("engine-api")
    }
}

/// The logs of `namespace`'s fleet in `run_dir`: `<ns>-api.log`, `<ns>-api-<n>.log` and
/// `<ns>-worker-<n>.log`, as `Fleet` names them.
pub fn read(run_dir: &Path, namespace: &Namespace) -> Vec<ServerLog> {
    let prefix = format!("{namespace}-");
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut logs: Vec<ServerLog> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let stem = file.strip_prefix(&prefix)?.strip_suffix(".log")?;
            let name = match stem.split_once('-') {
                None if stem == "api" => "engine-api".to_owned(),
                Some(("api", number)) => format!("engine-api#{number}"),
                Some(("worker", number)) => format!("engine-worker#{number}"),
                _ => return None,
            };
            Some(ServerLog {
                name,
                lines: read_json_lines(&entry.path()),
            })
        })
        .collect();
    logs.sort_by(|a, b| a.name.cmp(&b.name));
    logs
}
