//! Kubernetes label selectors (`matchLabels` and `matchExpressions`),
//! compiled once and matched against an object's labels (pure).
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A selector every requirement of which must hold; the empty selector
/// selects everything, as the API's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// An error names the field (`matchExpressions[i]...`) and why.
    pub fn compile(s: &LabelSelector) -> Result<Self, String> {
        let mut out: Vec<Requirement> = s
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement::In(k.clone(), vec![v.clone()]))
            .collect();
        for (i, e) in s.match_expressions.iter().flatten().enumerate() {
            let values = e.values.clone().unwrap_or_default();
            let key = e.key.clone();
            out.push(match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!("matchExpressions[{i}].values: required by {}", e.operator));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!("matchExpressions[{i}].values: must be empty for {}", e.operator));
                }
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "matchExpressions[{i}].operator: {other:?} is not In, NotIn, Exists or DoesNotExist"
                    ));
                }
            });
        }
        Ok(Self(out))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> Result<Selector, String> {
        Selector::compile(&serde_norway::from_str(yaml).unwrap())
    }

    #[test]
    fn labels_and_expressions_as_the_api_matches_them() {
        let labels: BTreeMap<String, String> = [("env", "prod"), ("team", "shop")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let yes = |y: &str| selector(y).unwrap().matches(&labels);
        assert!(yes("{}"));
        assert!(yes("{matchLabels: {env: prod}}"));
        assert!(!yes("{matchLabels: {env: prod, tier: web}}"));
        assert!(yes(
            "{matchExpressions: [{key: env, operator: In, values: [dev, prod]}]}"
        ));
        assert!(!yes(
            "{matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}"
        ));
        assert!(yes(
            "{matchExpressions: [{key: tier, operator: NotIn, values: [web]}]}"
        ));
        assert!(yes("{matchExpressions: [{key: team, operator: Exists}]}"));
        assert!(yes(
            "{matchExpressions: [{key: tier, operator: DoesNotExist}]}"
        ));
        assert!(!yes(
            "{matchLabels: {env: prod}, matchExpressions: [{key: team, operator: DoesNotExist}]}"
        ));
        assert_eq!(
            selector("{matchExpressions: [{key: a, operator: Near, values: [b]}]}").unwrap_err(),
            "matchExpressions[0].operator: \"Near\" is not In, NotIn, Exists or DoesNotExist"
        );
        assert!(selector("{matchExpressions: [{key: a, operator: In}]}").is_err());
    }
}
