//! LEAF JSON through `serde_json`, streamed into flat buffers: a user's images go straight into
//! one `Vec<f32>` (no `Vec` per image), each row's width and every pixel's range are checked
//! while parsing, and members the loader does not use (`hierarchies`) are skipped.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::leaf::FEMNIST_FEATURES;

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

impl From<serde_json::Error> for JsonError {
    fn from(e: serde_json::Error) -> Self {
        let detail = e.to_string();
        // serde_json appends " at line L column C"; the position is reported separately.
        let detail = match detail.rfind(" at line ") {
            Some(i) => detail[..i].to_string(),
            None => detail,
        };
        Self {
            line: e.line(),
            column: e.column(),
            detail,
        }
    }
}

/// One user's examples, parsed straight into flat buffers.
#[derive(Default, Debug)]
pub(crate) struct UserData {
    pub features: Vec<f32>,
    pub rows: usize,
    pub labels: Vec<u64>,
}

/// The parts of a LEAF file the loader uses.
#[derive(Default, Debug, Deserialize)]
pub(crate) struct LeafFile {
    #[serde(default)]
    pub users: Option<Vec<String>>,
    #[serde(default)]
    pub num_samples: Option<Vec<u64>>,
    #[serde(default, deserialize_with = "user_data")]
    pub user_data: Option<HashMap<String, UserData>>,
}

/// Parses a LEAF file.
pub(crate) fn parse_leaf(bytes: &[u8]) -> Result<LeafFile, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let file = LeafFile::deserialize(&mut de)?;
    de.end()?;
    Ok(file)
}

fn user_data<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<HashMap<String, UserData>>, D::Error> {
    struct Users;
    impl<'de> Visitor<'de> for Users {
        type Value = HashMap<String, UserData>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of users")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut users = HashMap::new();
            while let Some(user) = map.next_key::<String>()? {
                let data = map.next_value_seed(OneUser)?;
                if users.contains_key(&user) {
                    return Err(de::Error::custom(format!(
                        "user {user:?} appears twice in user_data"
                    )));
                }
                users.insert(user, data);
            }
            Ok(users)
        }
    }
    d.deserialize_map(Users).map(Some)
}

struct OneUser;

impl<'de> DeserializeSeed<'de> for OneUser {
    type Value = UserData;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<UserData, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OneUser {
    type Value = UserData;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a user's {\"x\": [...], \"y\": [...]}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UserData, A::Error> {
        let mut user = UserData::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "x" => map.next_value_seed(Rows(&mut user))?,
                "y" => user.labels = map.next_value()?,
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(user)
    }
}

/// The `x` array: rows of pixels, appended to the user's flat buffer.
struct Rows<'u>(&'u mut UserData);

impl<'de> DeserializeSeed<'de> for Rows<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of image rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Row(&mut self.0.features))?.is_some() {
            self.0.rows += 1;
        }
        Ok(())
    }
}

/// One image row: exactly [`FEMNIST_FEATURES`] values in [0, 1].
struct Row<'f>(&'f mut Vec<f32>);

impl<'de> DeserializeSeed<'de> for Row<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Row<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an image row of {FEMNIST_FEATURES} values")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let start = self.0.len();
        while let Some(v) = seq.next_element::<f32>()? {
            if !(0.0..=1.0).contains(&v) {
                return Err(de::Error::custom(format!("value {v} is outside [0, 1]")));
            }
            if self.0.len() - start == FEMNIST_FEATURES {
                return Err(de::Error::custom(format!(
                    "an image row has more than {FEMNIST_FEATURES} values"
                )));
            }
            self.0.push(v);
        }
        let width = self.0.len() - start;
        if width != FEMNIST_FEATURES {
            return Err(de::Error::custom(format!(
                "an image row has {width} values, expected {FEMNIST_FEATURES}"
            )));
        }
        Ok(())
    }
}
