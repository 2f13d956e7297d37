//! A status condition: `metav1.Condition` on the wire and in the CRDs, its
//! texts interned in memory.
//!
//! The watches hold every Company and Developer. At 10,000 Developers the
//! same types, statuses and reasons, and mostly the same messages, would be
//! copied into each of them (about 20 strings, 1 KB a Developer); interned,
//! a condition's texts are four pointers to one shared copy, freed with its
//! last user. A message that names its object (a few do) is not shared and
//! costs a little more than a `String`.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as WireCondition, Time};
use serde::{Deserialize, Serialize};

/// An interned text: compares by address, dereferences to `str`.
///
/// One thin pointer (8 bytes; an interned `str` would be a 16-byte fat one):
/// every Developer holds four conditions of four texts each.
///
/// Its `Hash` hashes the address, which stays the same only while someone
/// holds the text: a hash kept beyond the object (a predicate's) must hash
/// the `str` instead (`&*text`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Text(internment::ArcIntern<Box<str>>);

impl Text {
    fn new(text: &str) -> Self {
        Self(internment::ArcIntern::from_ref(text))
    }
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl Default for Text {
    fn default() -> Self {
        Self::new("")
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        **self == *other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Interns the `str` the input lends (no `String` in between).
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Text;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Text, E> {
                Ok(Text::new(text))
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

/// One condition (`metav1.Condition`). The fields are in the order
/// k8s-openapi serializes them, so the JSON is the same; a text missing
/// from the JSON reads as empty, as k8s-openapi reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// When the status last changed.
    pub last_transition_time: Time,
    /// What a person reads: the detail of `reason`.
    #[serde(default)]
    pub message: Text,
    /// The generation the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Why, in one CamelCase word.
    #[serde(default)]
    pub reason: Text,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: Text,
    /// What the condition is about (`Ready`, `StorageReady`, ...).
    #[serde(default, rename = "type")]
    pub type_: Text,
}

/// The CRDs declare `metav1.Condition`'s own schema.
impl schemars::JsonSchema for Condition {
    fn schema_name() -> Cow<'static, str> {
        WireCondition::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        WireCondition::schema_id()
    }

    fn inline_schema() -> bool {
        WireCondition::inline_schema()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        WireCondition::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_is_metav1_conditions_and_equal_texts_are_shared() {
        let json = serde_json::json!([
            {"lastTransitionTime": "2026-12-07T00:00:00Z", "message": "the workspace is running",
             "observedGeneration": 2, "reason": "Ready", "status": "True", "type": "WorkspaceReady"},
            {"lastTransitionTime": "2026-12-07T00:00:01Z", "message": "the workspace is running",
             "reason": "Ready", "status": "True", "type": "Ready"},
        ]);
        let ours: Vec<Condition> = serde_json::from_value(json.clone()).expect("conditions");
        let wire: Vec<WireCondition> = serde_json::from_value(json.clone()).expect("conditions");
        assert_eq!(serde_json::to_value(&ours).expect("json"), json);
        assert_eq!(
            serde_json::to_value(&ours).expect("json"),
            serde_json::to_value(&wire).expect("json")
        );
        assert_eq!(ours[0].message, "the workspace is running");
        assert_eq!(ours[0].observed_generation, Some(2));
        assert_eq!(ours[1].observed_generation, None);
        // A text is one pointer, to one copy however many conditions carry it.
        assert_eq!(std::mem::size_of::<Text>(), 8);
        assert_eq!(ours[0].message.as_ptr(), ours[1].message.as_ptr());
        assert_eq!(ours[0].status.as_ptr(), ours[1].status.as_ptr());
        assert_ne!(ours[0].type_.as_ptr(), ours[1].type_.as_ptr());
    }

    #[test]
    fn the_schema_is_metav1_conditions() {
        assert_eq!(
            schemars::schema_for!(Vec<Condition>),
            schemars::schema_for!(Vec<WireCondition>)
        );
    }
}
