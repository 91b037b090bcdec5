//! Shakespeare next-character prediction, LEAF style: [`load_shakespeare`], the speech parser
//! [`parse_speeches`] and the fixed character [vocabulary](VOCAB_SIZE).
//!
//! Input: `texts.tar.gz` holding `texts/*_gut.txt` (Project Gutenberg plays; the First Folio
//! variants `*_gut_f.txt` and anything else are skipped). Each client is one (play, role).
//!
//! Parsing rules ([`parse_speeches`]):
//! * A speech starts with a paragraph (a block of non-blank lines preceded by a blank line or the
//!   start of the file) of at least two lines whose first line holds only a speaker name and a
//!   full stop, e.g. `HAMLET.`, `Ham.`, `MRS. PAGE.`, `1. CAR.`: it starts in the first column,
//!   uses only letters, digits, spaces and `' & - .`, and is not an `ACT` / `SCENE` heading. The
//!   rest of the paragraph is the speech.
//! * A later paragraph without a speaker line (verse after a stage direction, a song) continues
//!   the current speaker, until an `ACT` or `SCENE` heading.
//! * Stage directions in `[...]` are removed, lines are joined with spaces and runs of white
//!   space collapse to one space (as LEAF does).
//! * Roles are named case-insensitively per play (`Ham.` and `HAM.` are one role; `Ham.` and
//!   `Hamlet.` stay two, as the texts give no way to tell).
//!
//! Examples: a role's speeches are joined with single spaces into one text. Its first 90 % of
//! characters are train text and the rest test text, so no test input overlaps a train window.
//! Every position `p` of a part with `p + 80 < part length` gives one example: the 80 character
//! ids starting at `p`, labelled with the id of the character after them (LEAF's sequence length
//! of 80, stride 1). Examples are windows into one shared text (see [`crate::TokenWindows`]).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::compression;
use crate::dataset::{Dataset, Split, TokenWindows};
use crate::error::DataError;

/// Characters per example (LEAF's sequence length).
pub const SEQ_LEN: usize = 80;

/// Vocabulary size: id 0 stands for any character outside printable ASCII, ids 1..=95 are the
/// printable ASCII characters `' '` (0x20) to `'~'` (0x7E) in order. Newlines never occur (lines
/// are joined with spaces).
pub const VOCAB_SIZE: u32 = 96;

/// The id for characters outside printable ASCII.
pub const UNKNOWN_ID: u8 = 0;

/// Share of each role's text used for training; the rest is test text.
pub const TRAIN_FRACTION: f64 = 0.9;

/// The id of a character: its position in printable ASCII plus one, or [`UNKNOWN_ID`].
pub fn char_to_id(c: char) -> u8 {
    if (' '..='~').contains(&c) {
        c as u8 - b' ' + 1
    } else {
        UNKNOWN_ID
    }
}

/// The character of an id, `None` for [`UNKNOWN_ID`] and ids outside the vocabulary.
pub fn id_to_char(id: u8) -> Option<char> {
    match id {
        1..=95 => Some(char::from(id - 1 + b' ')),
        _ => None,
    }
}

/// Refuse tar members above this size (the largest play is about 200 KB).
const MAX_MEMBER_BYTES: u64 = 64 << 20;
/// Refuse archives whose plays add up to more than this.
const MAX_TOTAL_TEXT_BYTES: u64 = 1 << 30;

/// One speech: who speaks, and the cleaned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speech {
    /// The speaker as written, upper-cased, without the full stop (e.g. `HAM`).
    pub speaker: String,
    /// The speech, stage directions removed, white space collapsed (may be empty when the speech
    /// is only a stage direction).
    pub text: String,
}

/// A (play, role) client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The play's file stem without `_gut.txt`, e.g. `hamlet`.
    pub play: String,
    /// The speaker name, upper-cased, e.g. `HAM`.
    pub name: String,
    /// How many speeches the role has.
    pub speeches: usize,
    /// Characters of the role's joined text.
    pub chars: usize,
}

/// Shakespeare loaded from a directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Shakespeare {
    /// Train and test windows; `feature_shape` is `[80]`, `num_classes` is [`VOCAB_SIZE`].
    pub split: Split,
    /// For each train example, its role's index in [`Self::roles`].
    pub train_roles: Vec<u32>,
    /// For each test example, its role's index in [`Self::roles`].
    pub test_roles: Vec<u32>,
    /// Every (play, role) found, including roles too short to give an example.
    pub roles: Vec<Role>,
}

fn is_heading(line: &str) -> bool {
    let first = line
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == '.')
        .next()
        .unwrap_or("");
    first.eq_ignore_ascii_case("act") || first.eq_ignore_ascii_case("scene")
}

/// The speaker of a line that holds only a name and a full stop.
fn speaker_name(line: &str) -> Option<String> {
    let name = line.trim_end().strip_suffix('.')?;
    let first = name.chars().next()?;
    if !first.is_ascii_alphanumeric() || is_heading(name) {
        return None;
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ' ' | '\'' | '&' | '-' | '.');
    if !name.chars().all(allowed) {
        return None;
    }
    Some(
        name.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_uppercase(),
    )
}

/// Joins lines with spaces, drops `[...]` stage directions, collapses white space.
fn clean(lines: &[&str], out: &mut String) {
    let mut depth = 0usize;
    let mut pending_space = !out.is_empty();
    for line in lines {
        for c in line.chars().chain(std::iter::once(' ')) {
            match c {
                '[' => depth += 1,
                ']' if depth > 0 => depth -= 1,
                _ if depth > 0 => {}
                c if c.is_whitespace() => pending_space = !out.is_empty(),
                c => {
                    if pending_space {
                        out.push(' ');
                        pending_space = false;
                    }
                    out.push(c);
                }
            }
        }
    }
}

/// Splits a play's text into speeches, in order (rules in the module docs).
pub fn parse_speeches(text: &str) -> Vec<Speech> {
    let lines: Vec<&str> = text.lines().collect();
    let blank = |i: usize| lines[i].trim().is_empty();
    let mut speeches: Vec<Speech> = Vec::new();
    let mut current: Option<usize> = None;
    let mut i = 0;
    while i < lines.len() {
        if blank(i) {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < lines.len() && !blank(end) {
            end += 1;
        }
        let paragraph = &lines[i..end];
        i = end;
        if is_heading(paragraph[0]) {
            current = None;
            continue;
        }
        if paragraph.len() >= 2
            && let Some(speaker) = speaker_name(paragraph[0])
        {
            let mut text = String::new();
            clean(&paragraph[1..], &mut text);
            speeches.push(Speech { speaker, text });
            current = Some(speeches.len() - 1);
            continue;
        }
        if let Some(c) = current {
            clean(paragraph, &mut speeches[c].text);
        }
    }
    speeches
}

/// Reads the `*_gut.txt` members of a (possibly gzip-compressed) tar archive, sorted by name.
fn read_plays(path: &Path) -> Result<Vec<(String, String)>, DataError> {
    let opened = compression::open(path)?;
    let mut archive = tar::Archive::new(opened.reader);
    let entries = archive.entries().map_err(|e| DataError::io(path, e))?;
    let mut plays = Vec::new();
    let mut total = 0u64;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(path, e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry.path().map_err(|e| DataError::io(path, e))?;
        let Some(file_name) = member.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(play) = file_name.strip_suffix("_gut.txt") else {
            continue;
        };
        let play = play.to_string();
        let size = entry.header().size().map_err(|e| DataError::io(path, e))?;
        total = total.saturating_add(size);
        if size > MAX_MEMBER_BYTES || total > MAX_TOTAL_TEXT_BYTES {
            return Err(DataError::TooLarge {
                path: path.to_path_buf(),
                limit: if size > MAX_MEMBER_BYTES {
                    MAX_MEMBER_BYTES
                } else {
                    MAX_TOTAL_TEXT_BYTES
                },
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry
            .take(MAX_MEMBER_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| DataError::io(path, e))?;
        plays.push((play, String::from_utf8_lossy(&bytes).into_owned()));
    }
    if plays.is_empty() {
        return Err(DataError::NoFiles {
            dir: path.to_path_buf(),
            what: "`texts/*_gut.txt` members in the archive".to_string(),
        });
    }
    plays.sort();
    Ok(plays)
}

/// Builds roles and examples from `(play, text)` pairs (already sorted).
pub(crate) fn build(plays: &[(String, String)], source: &Path) -> Result<Shakespeare, DataError> {
    let mut roles: Vec<Role> = Vec::new();
    let mut role_texts: Vec<String> = Vec::new();
    for (play, text) in plays {
        let mut index: HashMap<String, usize> = HashMap::new();
        for speech in parse_speeches(text) {
            let r = *index.entry(speech.speaker.clone()).or_insert_with(|| {
                roles.push(Role {
                    play: play.clone(),
                    name: speech.speaker.clone(),
                    speeches: 0,
                    chars: 0,
                });
                role_texts.push(String::new());
                roles.len() - 1
            });
            roles[r].speeches += 1;
            if !speech.text.is_empty() {
                let t = &mut role_texts[r];
                if !t.is_empty() {
                    t.push(' ');
                }
                t.push_str(&speech.text);
            }
        }
    }
    let total_chars: usize = role_texts.iter().map(|t| t.chars().count()).sum();
    if total_chars > u32::MAX as usize {
        return Err(DataError::TooLarge {
            path: source.to_path_buf(),
            limit: u64::from(u32::MAX),
        });
    }
    let mut tokens: Vec<u8> = Vec::with_capacity(total_chars);
    let (mut train_starts, mut train_labels, mut train_roles) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut test_starts, mut test_labels, mut test_roles) = (Vec::new(), Vec::new(), Vec::new());
    for (r, text) in role_texts.iter().enumerate() {
        let base = tokens.len();
        tokens.extend(text.chars().map(char_to_id));
        let len = tokens.len() - base;
        roles[r].chars = len;
        let cut = base + (len as f64 * TRAIN_FRACTION) as usize;
        let parts = [
            (
                base,
                cut,
                &mut train_starts,
                &mut train_labels,
                &mut train_roles,
            ),
            (
                cut,
                base + len,
                &mut test_starts,
                &mut test_labels,
                &mut test_roles,
            ),
        ];
        for (from, to, starts, labels, role_ids) in parts {
            let mut p = from;
            while p + SEQ_LEN < to {
                starts.push(p as u32);
                labels.push(u32::from(tokens[p + SEQ_LEN]));
                role_ids.push(r as u32);
                p += 1;
            }
        }
    }
    let tokens: Arc<[u8]> = tokens.into();
    let train = Dataset::from_windows(
        TokenWindows::new(Arc::clone(&tokens), train_starts, SEQ_LEN)?,
        train_labels,
        VOCAB_SIZE,
    )?;
    let test = Dataset::from_windows(
        TokenWindows::new(tokens, test_starts, SEQ_LEN)?,
        test_labels,
        VOCAB_SIZE,
    )?;
    Ok(Shakespeare {
        split: Split { train, test },
        train_roles,
        test_roles,
        roles,
    })
}

/// Loads Shakespeare from `dir/texts.tar.gz` (or `dir/texts.tar`); see the module docs.
pub fn load_shakespeare(dir: &Path) -> Result<Shakespeare, DataError> {
    let gz = dir.join("texts.tar.gz");
    let path = if gz.is_file() {
        gz
    } else {
        dir.join("texts.tar")
    };
    let plays = read_plays(&path)?;
    build(&plays, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENE: &str = "HAMLET\n\nACT I.\n\nScene I. Elsinore.\n\n[Enter Bernardo.]\n\nBer.\nWho's there?\n\nFran.\nNay, answer me: stand,\nand unfold yourself.\n\n[Exit.]\n\nFrancisco goes on speaking.\n\nMRS. PAGE.\nHo [aside] there.\n\nSCENE II.\n\nOrphan paragraph.\n\nBer.\nAgain.\n";

    #[test]
    fn parses_speakers_text_and_continuations() {
        let speeches = parse_speeches(SCENE);
        let got: Vec<(&str, &str)> = speeches
            .iter()
            .map(|s| (s.speaker.as_str(), s.text.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("BER", "Who's there?"),
                (
                    "FRAN",
                    "Nay, answer me: stand, and unfold yourself. Francisco goes on speaking."
                ),
                ("MRS. PAGE", "Ho there."),
                ("BER", "Again."),
            ]
        );
    }

    #[test]
    fn vocabulary_round_trips_printable_ascii() {
        for c in ' '..='~' {
            let id = char_to_id(c);
            assert!(id >= 1 && u32::from(id) < VOCAB_SIZE);
            assert_eq!(id_to_char(id), Some(c));
        }
        assert_eq!(char_to_id('\n'), UNKNOWN_ID);
        assert_eq!(char_to_id('é'), UNKNOWN_ID);
        assert_eq!(id_to_char(UNKNOWN_ID), None);
        assert_eq!(id_to_char(96), None);
    }

    #[test]
    fn windows_follow_the_text_and_split_without_overlap() {
        let body: String = (0..200)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let play = format!("X.\n{body}\n");
        let data = build(&[("p".to_string(), play)], Path::new("mem")).unwrap();
        assert_eq!(data.roles.len(), 1);
        assert_eq!(data.roles[0].chars, 200);
        // 90 % of 200 = 180 train chars -> 100 windows; 20 test chars -> none.
        assert_eq!(data.split.train.len(), 100);
        assert_eq!(data.split.test.len(), 0);
        let ex = data.split.train.example(3).unwrap();
        let crate::Row::Tokens(window) = ex.features else {
            panic!("expected token windows")
        };
        let text: String = window.iter().map(|&t| id_to_char(t).unwrap()).collect();
        assert_eq!(text, body[3..3 + SEQ_LEN]);
        assert_eq!(id_to_char(ex.label as u8), body.chars().nth(3 + SEQ_LEN));
    }
}
