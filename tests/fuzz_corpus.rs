//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same harnesses the cargo-fuzz targets run, so CI covers it on stable.
//! See the README for how to fuzz.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| std::fs::read(e.expect("corpus entry").path()).expect("corpus file"))
            .collect(),
        Err(_) => Vec::new(),
    };
    // A few fixed seeds too, so the harnesses run even without a corpus.
    inputs.extend([
        vec![],
        vec![0; 64],
        vec![0xff; 64],
        (0..=255).collect(),
        (0..1024u32).map(|i| (i * 7 % 256) as u8).collect(),
    ]);
    for input in &inputs {
        run(input);
    }
    eprintln!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn read_to_end_corpus() {
    replay("read_to_end", harness::read_to_end);
}

#[test]
fn chunks_vs_cursor_corpus() {
    replay("chunks_vs_cursor", harness::chunks_vs_cursor);
}

#[test]
fn writer_vs_vec_corpus() {
    replay("writer_vs_vec", harness::writer_vs_vec);
}
