//! The `text` source: a file read as symbols (`chars`: newline and the 95
//! printable ASCII characters, 96 classes; `bytes`: 256), cut into disjoint
//! windows of `context` symbols whose targets are the next symbols, and the
//! vocabulary recorded with the checkpoint so that `sample` decodes without
//! the spec.
//!
//! A character outside the `chars` set (a tab, a carriage return, anything
//! non-ASCII) is an error naming its line and column, with the hint to use
//! `vocab: bytes`; a file too short for one window is an error too.

use std::path::Path;

use super::{DataError, Dataset, Labels};

/// The checkpoint metadata key of the vocabulary.
pub const METADATA_KEY: &str = "modelc.vocab";

/// A `text` source's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vocab {
    /// `\n` is 0, `' '..='~'` are 1..=95.
    Chars,
    /// Each byte is its own symbol.
    Bytes,
}

impl Vocab {
    pub fn from_name(name: &str) -> Vocab {
        if name == "bytes" {
            Vocab::Bytes
        } else {
            Vocab::Chars
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Vocab::Chars => "chars",
            Vocab::Bytes => "bytes",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Vocab::Chars => 96,
            Vocab::Bytes => 256,
        }
    }

    /// The symbol of byte `b`, if the vocabulary has one.
    pub fn encode_byte(self, b: u8) -> Option<u32> {
        match self {
            Vocab::Bytes => Some(b as u32),
            Vocab::Chars => match b {
                b'\n' => Some(0),
                b' '..=b'~' => Some((b - b' ') as u32 + 1),
                _ => None,
            },
        }
    }

    /// The byte of symbol `id`.
    pub fn decode(self, id: u32) -> u8 {
        match self {
            Vocab::Bytes => id.min(255) as u8,
            Vocab::Chars if id == 0 => b'\n',
            Vocab::Chars => (id.min(95) as u8 - 1) + b' ',
        }
    }

    /// `ids` as text (bytes that are not UTF-8 shown as U+FFFD).
    pub fn decode_all(self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&ids.iter().map(|i| self.decode(*i)).collect::<Vec<u8>>()).into_owned()
    }

    /// `text` as symbols; `what` names it in errors (a file, "the prompt").
    pub fn encode(self, text: &[u8], what: &Path) -> Result<Vec<u32>, DataError> {
        let mut out = Vec::with_capacity(text.len());
        let (mut line, mut col) = (1, 1);
        for &b in text {
            match self.encode_byte(b) {
                Some(id) => out.push(id),
                None => {
                    let shown = match b {
                        b'\t' => "a tab".to_string(),
                        b'\r' => "a carriage return (CRLF line ends)".to_string(),
                        _ => format!("byte {b:#04x}"),
                    };
                    return Err(DataError::Csv {
                        path: what.to_path_buf(),
                        line,
                        column: col,
                        message: format!(
                            "{shown} is not in the `chars` vocabulary (newline and printable ASCII); use `vocab: bytes` or clean the text"
                        ),
                    });
                }
            }
            if b == b'\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        Ok(out)
    }

    /// The metadata value: `{"vocab": "chars"}`.
    pub fn to_json(self) -> String {
        serde_json::json!({ "vocab": self.name(), "size": self.size() }).to_string()
    }

    pub fn from_json(s: &str) -> Result<Vocab, String> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| format!("bad vocabulary record: {e}"))?;
        match v["vocab"].as_str() {
            Some("chars") => Ok(Vocab::Chars),
            Some("bytes") => Ok(Vocab::Bytes),
            Some(other) => Err(format!("unknown vocabulary `{other}` in the checkpoint")),
            None => Err("the checkpoint's vocabulary record has no `vocab` field".into()),
        }
    }
}

/// Reads `path` as symbols of `vocab`.
pub fn read(path: &Path, vocab: Vocab) -> Result<Vec<u32>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    vocab.encode(&bytes, path)
}

/// Disjoint windows of `context` symbols from `tokens`: window `i` is
/// `tokens[i·T .. i·T + T]`, its targets the symbols one further on.
pub fn windows(path: &Path, tokens: &[u32], context: usize, vocab: Vocab) -> Result<Dataset, DataError> {
    let t = context.max(1);
    let len = tokens.len().saturating_sub(1) / t;
    if len == 0 {
        return Err(DataError::Other {
            path: path.to_path_buf(),
            message: format!("{} symbols are too few for one window of {t} (and its next symbol)", tokens.len()),
        });
    }
    let mut features = Vec::with_capacity(len * t);
    let mut labels = Vec::with_capacity(len * t);
    for i in 0..len {
        features.extend(tokens[i * t..i * t + t].iter().map(|x| *x as f32));
        labels.extend_from_slice(&tokens[i * t + 1..i * t + t + 1]);
    }
    Ok(Dataset { features, width: t, labels: Labels::Classes { values: labels, classes: vocab.size() as u32 }, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars_round_trip_and_refuse_what_they_lack() {
        let text = b"To be,\nor not!~";
        let ids = Vocab::Chars.encode(text, Path::new("t")).unwrap();
        assert_eq!(ids[0], (b'T' - b' ') as u32 + 1);
        assert_eq!(ids[6], 0);
        assert!(ids.iter().all(|i| *i < 96));
        assert_eq!(Vocab::Chars.decode_all(&ids).as_bytes(), text);
        let err = Vocab::Chars.encode(b"ab\ncd\te", Path::new("f.txt")).unwrap_err().to_string();
        assert!(err.starts_with("f.txt:2:3: a tab"), "{err}");
        let ids = Vocab::Bytes.encode("é\t".as_bytes(), Path::new("t")).unwrap();
        assert_eq!(Vocab::Bytes.decode_all(&ids), "é\t");
    }

    #[test]
    fn windows_are_disjoint_with_next_symbol_targets() {
        let tokens: Vec<u32> = (0..11).collect();
        let d = windows(Path::new("t"), &tokens, 3, Vocab::Bytes).unwrap();
        assert_eq!(d.len, 3);
        assert_eq!(d.features, [0., 1., 2., 3., 4., 5., 6., 7., 8.]);
        let Labels::Classes { values, classes } = &d.labels else { panic!() };
        assert_eq!(values, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(*classes, 256);
        assert!(windows(Path::new("t"), &tokens[..3], 3, Vocab::Chars).is_err());
    }
}
