//! Validation of built-in kinds against the official Kubernetes JSON
//! schemas (strict: unknown fields refused), as shipped in the
//! `kubernetes-validate` package's data.

use std::{collections::HashMap, path::Path, sync::Mutex};

use serde_json::{Value, json};

use crate::resources::Resource;

/// Compiled validators per kind, built on first use.
pub struct BuiltinSchemas {
    definitions: Value,
    compiled: Mutex<HashMap<String, Option<jsonschema::Validator>>>,
}

/// The definition name of a built-in kind, e.g. `io.k8s.api.apps.v1.StatefulSet`.
fn definition(res: &Resource) -> String {
    match res.group.as_str() {
        "apiextensions.k8s.io" => format!(
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{}.{}",
            res.version, res.kind
        ),
        "" => format!("io.k8s.api.core.{}.{}", res.version, res.kind),
        group => {
            let short = group
                .trim_end_matches(".k8s.io")
                .trim_end_matches(".authorization");
            format!("io.k8s.api.{short}.{}.{}", res.version, res.kind)
        }
    }
}

impl BuiltinSchemas {
    /// Loads `_definitions.json` (`$defs` are renamed for a draft-7 validator).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut doc: Value = serde_json::from_str(&text.replace("#/$defs/", "#/definitions/"))
            .map_err(|e| e.to_string())?;
        let definitions = doc
            .as_object_mut()
            .and_then(|d| d.remove("$defs"))
            .ok_or("no $defs in the schema file")?;
        Ok(Self {
            definitions,
            compiled: Mutex::new(HashMap::new()),
        })
    }

    /// `(field, message)` problems of `object`; none for kinds without a schema.
    pub fn validate(&self, res: &Resource, object: &Value) -> Vec<(String, String)> {
        let name = definition(res);
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let validator = compiled.entry(name.clone()).or_insert_with(|| {
            self.definitions.get(&name)?;
            let schema =
                json!({"definitions": self.definitions, "$ref": format!("#/definitions/{name}")});
            jsonschema::draft7::new(&schema).ok()
        });
        let Some(validator) = validator else {
            return vec![];
        };
        validator
            .iter_errors(object)
            .map(|e| {
                let path = e
                    .instance_path()
                    .as_str()
                    .trim_start_matches('/')
                    .replace('/', ".");
                (path, e.to_string())
            })
            .collect()
    }
}
