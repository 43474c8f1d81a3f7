//! Trains character n-gram models of several orders on one text file and reports
//! their perplexity on another, with training time, model size and query speed.
//!
//! ```text
//! cargo run --release -p lasr-decode --example lm_perplexity -- \
//!     TRAIN.txt HELD_OUT.txt [--orders 3,4,5] [--strip-ids] [--save-dir DIR]
//! ```
//!
//! One sentence per line; `--strip-ids` drops each line's first word (LibriSpeech
//! transcripts start with an utterance id such as `19-198-0001`).

use std::path::PathBuf;
use std::time::Instant;

use lasr_decode::{CharLm, Vocab};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut files = Vec::new();
    let mut orders = vec![3, 4, 5, 6, 7];
    let mut strip_ids = false;
    let mut save_dir: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--orders" => {
                let list = args.next().ok_or("--orders needs a list")?;
                orders = list.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--strip-ids" => strip_ids = true,
            "--save-dir" => save_dir = Some(args.next().ok_or("--save-dir needs a folder")?.into()),
            _ => files.push(a),
        }
    }
    let [train, held_out] = &files[..] else {
        return Err(
            "usage: lm_perplexity TRAIN HELD_OUT [--orders 3,4] [--strip-ids] [--save-dir DIR]"
                .into(),
        );
    };
    let read = |path: &str| -> Result<Vec<String>, std::io::Error> {
        Ok(std::fs::read_to_string(path)?
            .lines()
            .map(|l| {
                if strip_ids {
                    l.split_once(char::is_whitespace)
                        .map_or("", |(_, rest)| rest)
                } else {
                    l
                }
                .to_string()
            })
            .collect())
    };
    let (train, held_out) = (read(train)?, read(held_out)?);
    let vocab = Vocab::librispeech();
    println!(
        "{} training lines, {} held-out lines",
        train.len(),
        held_out.len()
    );
    println!("order  train_s  contexts  entries  file_MB  ppl_train  ppl_held_out  query_ns");
    for order in orders {
        let start = Instant::now();
        let lm = CharLm::train(&train, &vocab, order)?;
        let train_s = start.elapsed().as_secs_f64();
        let bytes = lm.to_bytes();
        if let Some(dir) = &save_dir {
            lm.save(dir.join(format!("char-{order}gram.lm")))?;
        }
        let ppl_train = lm.perplexity(&train);
        let ppl_held = lm.perplexity(&held_out);
        // Query speed: full distributions after every prefix of the held-out text.
        let mut out = vec![0.0; vocab.len()];
        let mut queries = 0usize;
        let start = Instant::now();
        for line in &held_out {
            let mut h = vec![Vocab::SOS];
            h.extend(vocab.encode(line));
            for i in 1..=h.len() {
                lm.log_probs_into(&h[..i], &mut out);
                queries += 1;
            }
        }
        let query_ns = start.elapsed().as_nanos() as f64 / queries.max(1) as f64;
        println!(
            "{order:5}  {train_s:7.2}  {:8}  {:7}  {:7.2}  {ppl_train:9.3}  {ppl_held:12.3}  {query_ns:8.0}",
            lm.num_contexts(),
            lm.num_entries(),
            bytes.len() as f64 / 1e6,
        );
    }
    Ok(())
}
