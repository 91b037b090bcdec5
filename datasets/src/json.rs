//! A minimal one-pass JSON reader over a byte slice, used for LEAF files.
//!
//! Why not serde_json: this crate is a workspace member, so debug builds compile it (and every
//! generic it instantiates, serde_json's parser included) without optimisation. Measured on the
//! FEMNIST train files (77 MB of JSON), serde_json took about 4 s merely to skip them and 8 s
//! to parse them in a debug build; this reader, which leaves float conversion to the standard
//! library's (optimised) `str::parse`, takes a fraction of that. It accepts standard JSON (RFC
//! 8259) and reports errors with line and column.

use std::fmt;

/// Nesting deeper than this is refused (LEAF files nest four levels).
const MAX_DEPTH: usize = 64;

/// A syntax or shape error at a position in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonError {
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column (in bytes) of the error.
    pub column: usize,
    /// What was expected or found.
    pub detail: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {} column {}: {}",
            self.line, self.column, self.detail
        )
    }
}

/// A cursor over JSON text.
pub(crate) struct JsonReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> JsonReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        JsonReader {
            bytes,
            pos: 0,
            depth: 0,
        }
    }

    /// An error at the current position.
    pub fn error(&self, detail: impl Into<String>) -> JsonError {
        let before = &self.bytes[..self.pos.min(self.bytes.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        JsonError {
            line,
            column: self.pos - line_start + 1,
            detail: detail.into(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next non-white-space byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    fn describe(b: Option<u8>) -> String {
        match b {
            Some(b) if b.is_ascii_graphic() => format!("'{}'", char::from(b)),
            Some(b) => format!("byte {b:#04x}"),
            None => "end of input".to_string(),
        }
    }

    fn expect(&mut self, want: u8) -> Result<(), JsonError> {
        let got = self.peek();
        if got == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format!(
                "expected '{}', found {}",
                char::from(want),
                Self::describe(got)
            )))
        }
    }

    /// Checks that only white space remains.
    pub fn finish(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            None => Ok(()),
            got => Err(self.error(format!(
                "expected end of input, found {}",
                Self::describe(got)
            ))),
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nesting deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    /// Reads an object, calling `member` with each key; `member` must consume the value.
    pub fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, String) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.expect(b'{')?;
        self.enter()?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            member(self, key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                got => {
                    return Err(self.error(format!(
                        "expected ',' or '}}' in an object, found {}",
                        Self::describe(got)
                    )));
                }
            }
        }
    }

    /// Reads an array, calling `element` once per element; `element` must consume it.
    pub fn array(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.expect(b'[')?;
        self.enter()?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                got => {
                    return Err(self.error(format!(
                        "expected ',' or ']' in an array, found {}",
                        Self::describe(got)
                    )));
                }
            }
        }
    }

    /// Reads a string (escapes decoded).
    pub fn string(&mut self) -> Result<String, JsonError> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.bytes.get(self.pos) else {
                        return Err(self.error("unterminated escape"));
                    };
                    self.pos += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let c = self.unicode_escape()?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.error("invalid escape in string")),
                    }
                }
                0x00..=0x1f => return Err(self.error("control character in string")),
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("string is not valid UTF-8"))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.error("invalid \\u escape"))?;
        self.pos += 4;
        Ok(digits)
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&first) {
            if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                return Err(self.error("unpaired surrogate in \\u escape"));
            }
            self.pos += 2;
            let low = self.hex4()?;
            if !(0xdc00..0xe000).contains(&low) {
                return Err(self.error("invalid low surrogate in \\u escape"));
            }
            0x10000 + ((first - 0xd800) << 10) + (low - 0xdc00)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid code point in \\u escape"))
    }

    /// The text of the next number, checked against JSON's number grammar.
    fn number_text(&mut self) -> Result<&'a str, JsonError> {
        self.skip_ws();
        let bytes = self.bytes;
        let start = self.pos;
        let mut p = start;
        let digits = |p: &mut usize| {
            let from = *p;
            while bytes.get(*p).is_some_and(u8::is_ascii_digit) {
                *p += 1;
            }
            *p > from
        };
        if bytes.get(p) == Some(&b'-') {
            p += 1;
        }
        let mut ok = digits(&mut p);
        if ok && bytes.get(p) == Some(&b'.') {
            p += 1;
            ok = digits(&mut p);
        }
        if ok && matches!(bytes.get(p), Some(b'e' | b'E')) {
            p += 1;
            if matches!(bytes.get(p), Some(b'+' | b'-')) {
                p += 1;
            }
            ok = digits(&mut p);
        }
        if !ok {
            return Err(self.error(format!(
                "expected a number, found {}",
                Self::describe(bytes.get(start).copied())
            )));
        }
        self.pos = p;
        // Only ASCII digits, signs, '.', 'e' were accepted, so this cannot fail.
        std::str::from_utf8(&bytes[start..p]).map_err(|_| self.error("number is not ASCII"))
    }

    /// Reads a number as `f32`.
    pub fn f32(&mut self) -> Result<f32, JsonError> {
        self.skip_ws();
        // FEMNIST is mostly white background: skip the general parser for the common case.
        if self.bytes.get(self.pos..self.pos + 3) == Some(b"1.0")
            && !matches!(
                self.bytes.get(self.pos + 3),
                Some(b'0'..=b'9' | b'e' | b'E')
            )
        {
            self.pos += 3;
            return Ok(1.0);
        }
        let text = self.number_text()?;
        text.parse::<f32>()
            .map_err(|_| self.error(format!("{text} is not a valid number")))
    }

    /// Reads an array of numbers into `out` (a closure-free loop: this is the hot path of
    /// LEAF files). Refuses more than `max` values and values outside `range`; returns how
    /// many were read.
    pub fn f32_array(
        &mut self,
        out: &mut Vec<f32>,
        max: usize,
        range: std::ops::RangeInclusive<f32>,
    ) -> Result<usize, JsonError> {
        self.expect(b'[')?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(0);
        }
        let mut n = 0usize;
        loop {
            let v = self.f32()?;
            if !range.contains(&v) {
                return Err(self.error(format!(
                    "value {v} is outside [{}, {}]",
                    range.start(),
                    range.end()
                )));
            }
            if n == max {
                return Err(self.error(format!("an array has more than {max} values")));
            }
            out.push(v);
            n += 1;
            match self.bytes.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(n);
                }
                _ => match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        return Ok(n);
                    }
                    got => {
                        return Err(self.error(format!(
                            "expected ',' or ']' in an array, found {}",
                            Self::describe(got)
                        )));
                    }
                },
            }
        }
    }

    /// Reads a non-negative integer.
    pub fn u64(&mut self) -> Result<u64, JsonError> {
        let text = self.number_text()?;
        text.parse::<u64>()
            .map_err(|_| self.error(format!("{text} is not a non-negative integer")))
    }

    /// Skips any value.
    pub fn skip_value(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'{') => self.object(|r, _| r.skip_value()),
            Some(b'[') => self.array(Self::skip_value),
            Some(b'"') => self.string().map(drop),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            _ => self.number_text().map(drop),
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), JsonError> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error(format!("expected {word}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(text: &str) -> Result<(), JsonError> {
        let mut r = JsonReader::new(text.as_bytes());
        r.skip_value()?;
        r.finish()
    }

    #[test]
    fn accepts_standard_json() {
        skip_all(
            r#" {"a": [1, -2.5e3, 0.25, true, false, null, "x\"\u00e9\ud83d\ude00"], "b": {}} "#,
        )
        .unwrap();
        let mut r = JsonReader::new(br#""tab\there \u00e9""#);
        assert_eq!(r.string().unwrap(), "tab\there é");
        let mut r = JsonReader::new(b"[0.5, 1.0, 1e-3]");
        let mut v = Vec::new();
        r.array(|r| r.f32().map(|x| v.push(x))).unwrap();
        assert_eq!(v, vec![0.5, 1.0, 0.001]);
        let mut r = JsonReader::new(b" [ 1.0 ,1.05,1.0e0, 0 ] ");
        let mut v = Vec::new();
        assert_eq!(r.f32_array(&mut v, 4, 0.0..=2.0).unwrap(), 4);
        assert_eq!(v, vec![1.0, 1.05, 1.0, 0.0]);
        r.finish().unwrap();
        let mut r = JsonReader::new(b"[1.0, 1.0, 1.0]");
        assert!(
            r.f32_array(&mut v, 2, 0.0..=2.0)
                .unwrap_err()
                .detail
                .contains("more than 2")
        );
        let mut r = JsonReader::new(b"[3.5]");
        assert!(
            r.f32_array(&mut v, 2, 0.0..=2.0)
                .unwrap_err()
                .detail
                .contains("outside")
        );
    }

    #[test]
    fn rejects_malformed_json_with_position() {
        for bad in [
            "{\"a\" 1}",
            "[1,]",
            "[1 2]",
            "{\"a\": tru}",
            "[\"open",
            "[01x]",
            "[.5]",
            "[1] x",
        ] {
            assert!(skip_all(bad).is_err(), "accepted {bad:?}");
        }
        let err = skip_all("{\n  \"a\": [1,\n  ]}").unwrap_err();
        assert_eq!((err.line, err.column), (3, 3));
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(skip_all(&deep).unwrap_err().detail.contains("nesting"));
    }
}
