//! The size of a JSON payload (a job's args, a handler's result) as the text it is sent and
//! stored as, which the caps on both are measured in.

use std::io;

/// How many bytes `value` takes as compact JSON text, counted without building the text.
pub fn json_len(value: &serde_json::Value) -> usize {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).expect("a Value always serializes");
    counter.0
}

/// A writer that keeps only the number of bytes written to it.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::json_len;

    #[test]
    fn counts_the_compact_text() {
        let value = serde_json::json!({ "a": [1, "é"], "b": null });
        assert_eq!(json_len(&value), serde_json::to_vec(&value).unwrap().len());
    }
}
