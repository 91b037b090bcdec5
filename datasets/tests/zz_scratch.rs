use std::io::Read;
use std::time::Instant;
#[test]
fn scratch() {
    let dir = std::path::Path::new("/work/shared/datasets/femnist/train");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let t = Instant::now();
    let mut all = Vec::new();
    for f in &files {
        let mut v = Vec::new();
        flate2::read::MultiGzDecoder::new(std::io::BufReader::new(std::fs::File::open(f).unwrap())).read_to_end(&mut v).unwrap();
        all.push(v);
    }
    println!("gunzip {:?}", t.elapsed());
    let t = Instant::now();
    let mut n = 0;
    for v in &all { let x: serde_json::Value = serde_json::from_slice(v).unwrap(); n += x["users"].as_array().unwrap().len(); }
    println!("value parse {:?} {n}", t.elapsed());
    let t = Instant::now();
    let mut cnt = 0usize; let mut sum = 0f32;
    for v in &all { let s = std::str::from_utf8(v).unwrap(); for tok in s.split(|c: char| c == ',' || c == '[' || c == ']' || c == ' ') { if let Ok(f) = tok.parse::<f32>() { cnt += 1; sum += f; } } }
    println!("split+parse {:?} {cnt} {sum}", t.elapsed());
}
