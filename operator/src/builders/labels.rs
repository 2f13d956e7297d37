//! The one label set every managed object carries.

use std::collections::BTreeMap;

use crate::names::{LABEL_COMPANY, LABEL_COMPONENT, LABEL_DEVELOPER, LABEL_MANAGED_BY, MANAGED_BY};

/// Labels of an object that belongs to `company`.
pub fn company(company: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_COMPANY.to_owned(), company.to_owned()),
    ])
}

/// Labels of an object that belongs to `developer` of `company`.
pub fn developer(company: &str, developer: &str) -> BTreeMap<String, String> {
    let mut labels = self::company(company);
    labels.insert(LABEL_DEVELOPER.to_owned(), developer.to_owned());
    labels
}

/// `labels` plus the component label.
pub fn with_component(
    mut labels: BTreeMap<String, String>,
    component: &str,
) -> BTreeMap<String, String> {
    labels.insert(LABEL_COMPONENT.to_owned(), component.to_owned());
    labels
}

/// Selector of one developer's workspace pod.
pub fn workspace_selector(company: &str, developer: &str) -> BTreeMap<String, String> {
    with_component(self::developer(company, developer), "workspace")
}
