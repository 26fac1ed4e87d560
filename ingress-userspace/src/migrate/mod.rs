//! `ingressd migrate`: what Ingresses written for ingress-nginx keep and
//! lose when ingressd serves them, before anyone switches. Each
//! `nginx.ingress.kubernetes.io/` annotation, and each key of the
//! controller ConfigMap, gets the verdict of the one table `run` warns from
//! ([`support`]), and a value `run` would refuse is shown as such. Building
//! the report is pure; [`load`] reads the objects.
use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::Ingress;
use serde::Serialize;

use crate::l7::route::annotations::{
    self, PREFIX,
    support::{self, Verdict},
};

pub mod load;

/// One setting and what becomes of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    /// The annotation without its prefix, or the ConfigMap key.
    pub name: String,
    pub value: String,
    /// `honoured`, `differs`, `not-supported`, `refused`, `invalid`, `unknown`.
    pub verdict: &'static str,
    pub note: Option<String>,
    /// What it did is lost on the move.
    pub lost: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IngressReport {
    pub namespace: String,
    pub name: String,
    /// `spec.ingressClassName`, else the `kubernetes.io/ingress.class` annotation.
    pub class: Option<String>,
    pub annotations: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigMapReport {
    pub namespace: String,
    pub name: String,
    pub keys: Vec<Item>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub ingresses: usize,
    pub annotations: usize,
    pub honoured: usize,
    pub differs: usize,
    pub not_supported: usize,
    pub refused: usize,
    pub invalid: usize,
    pub unknown: usize,
    /// Annotations and ConfigMap keys whose effect is lost.
    pub lost: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ingresses: Vec<IngressReport>,
    pub configmap: Option<ConfigMapReport>,
    pub summary: Summary,
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Honoured => "honoured",
        Verdict::Differs(_) => "differs",
        Verdict::NotSupported => "not-supported",
        Verdict::Refused(_) => "refused",
        Verdict::Unknown => "unknown",
    }
}

fn item(name: &str, value: &str, v: Verdict) -> Item {
    Item {
        name: name.to_string(),
        value: value.to_string(),
        verdict: verdict_word(v),
        note: v.note().map(str::to_string),
        lost: v.lost(),
    }
}

/// The report on one Ingress's annotations.
pub fn ingress(ing: &Ingress) -> IngressReport {
    let meta = &ing.metadata;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let all = meta.annotations.as_ref().unwrap_or(&empty);
    // What `run` would say of the values: the same reading.
    let mut warnings = Vec::new();
    let _ = annotations::policy(&format!("{namespace}/{name}"), all, &mut warnings);
    let mut items = Vec::new();
    for (key, value) in all {
        let Some(short) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let v = support::annotation_value(short, value);
        let field = format!("metadata.annotations[{key}]");
        let refusal = warnings.iter().find(|w| w.field == field);
        let mut it = item(short, value, v);
        if let Some(w) = refusal
            && matches!(v, Verdict::Honoured | Verdict::Differs(_))
        {
            it.verdict = "invalid";
            it.note = Some(w.message.clone());
            it.lost = true;
        }
        items.push(it);
    }
    let class = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| all.get("kubernetes.io/ingress.class").cloned());
    IngressReport {
        namespace,
        name,
        class,
        annotations: items,
    }
}

/// The report on the controller ConfigMap's keys.
pub fn configmap(namespace: &str, name: &str, data: &BTreeMap<String, String>) -> ConfigMapReport {
    ConfigMapReport {
        namespace: namespace.to_string(),
        name: name.to_string(),
        keys: data
            .iter()
            .map(|(k, v)| item(k, v, support::configmap_key(k, v)))
            .collect(),
    }
}

/// The whole report, Ingresses in namespace/name order.
pub fn report(ingresses: &[Ingress], configmap: Option<ConfigMapReport>) -> Report {
    let mut list: Vec<IngressReport> = ingresses.iter().map(ingress).collect();
    list.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut s = Summary {
        ingresses: list.len(),
        ..Summary::default()
    };
    for it in list.iter().flat_map(|i| &i.annotations) {
        s.annotations += 1;
        match it.verdict {
            "honoured" => s.honoured += 1,
            "differs" => s.differs += 1,
            "not-supported" => s.not_supported += 1,
            "refused" => s.refused += 1,
            "invalid" => s.invalid += 1,
            _ => s.unknown += 1,
        }
    }
    s.lost = list
        .iter()
        .flat_map(|i| &i.annotations)
        .chain(configmap.iter().flat_map(|c| &c.keys))
        .filter(|i| i.lost)
        .count();
    Report {
        ingresses: list,
        configmap,
        summary: s,
    }
}

/// One line of a value: long ones (snippets) cut.
fn shown(value: &str) -> String {
    let first = value.lines().next().unwrap_or("");
    let mut out: String = first.chars().take(60).collect();
    if out.len() < value.len() {
        out.push('…');
    }
    out
}

fn write_items(out: &mut String, items: &[Item]) {
    use std::fmt::Write as _;
    for it in items {
        let word = match it.verdict {
            "differs" => "honoured, differs",
            "not-supported" => "not supported",
            "refused" => "refused by design",
            "invalid" => "invalid value",
            w => w,
        };
        let mark = if it.lost { '!' } else { ' ' };
        let _ = writeln!(out, "  {mark} {word:<18} {}: {}", it.name, shown(&it.value));
        if let Some(note) = &it.note {
            let _ = writeln!(out, "    {:<18} {note}", "");
        }
    }
}

/// The report for people: what is lost marked with `!`.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for i in &r.ingresses {
        let class = i.class.as_deref().unwrap_or("(none)");
        let _ = writeln!(out, "Ingress {}/{} (class {class})", i.namespace, i.name);
        if i.annotations.is_empty() {
            let _ = writeln!(out, "    no {PREFIX} annotations");
        }
        write_items(&mut out, &i.annotations);
    }
    if let Some(c) = &r.configmap {
        let _ = writeln!(out, "ConfigMap {}/{}", c.namespace, c.name);
        write_items(&mut out, &c.keys);
    }
    let s = &r.summary;
    let _ = writeln!(
        out,
        "{} Ingresses, {} annotations: {} honoured, {} honoured with a difference, {} not supported, \
         {} refused by design, {} invalid, {} unknown; {} settings lost{}",
        s.ingresses,
        s.annotations,
        s.honoured,
        s.differs,
        s.not_supported,
        s.refused,
        s.invalid,
        s.unknown,
        s.lost,
        if s.lost == 0 {
            " (nothing is lost)"
        } else {
            ""
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ing(ns: &str, name: &str, annotations: &[(&str, &str)]) -> Ingress {
        let mut i = Ingress::default();
        i.metadata.namespace = Some(ns.into());
        i.metadata.name = Some(name.into());
        i.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        i
    }

    #[test]
    fn each_annotation_gets_its_verdict_and_bad_values_are_lost() {
        let r = report(
            &[
                ing(
                    "shop",
                    "web",
                    &[
                        ("nginx.ingress.kubernetes.io/rewrite-target", "/$2"),
                        ("nginx.ingress.kubernetes.io/proxy-buffering", "off"),
                        ("nginx.ingress.kubernetes.io/mirror-target", "http://m"),
                        (
                            "nginx.ingress.kubernetes.io/server-snippet",
                            "location /x {}",
                        ),
                        ("nginx.ingress.kubernetes.io/proxy-read-timeout", "soon"),
                        ("nginx.ingress.kubernetes.io/rewrite-targett", "/"),
                        ("kubernetes.io/ingress.class", "nginx"),
                    ],
                ),
                ing("a", "plain", &[]),
            ],
            None,
        );
        assert_eq!(r.ingresses[0].name, "plain");
        let web = &r.ingresses[1];
        assert_eq!(web.class.as_deref(), Some("nginx"));
        let got: Vec<(&str, &str, bool)> = web
            .annotations
            .iter()
            .map(|i| (i.name.as_str(), i.verdict, i.lost))
            .collect();
        assert_eq!(
            got,
            [
                ("mirror-target", "not-supported", true),
                ("proxy-buffering", "differs", false),
                ("proxy-read-timeout", "invalid", true),
                ("rewrite-target", "honoured", false),
                ("rewrite-targett", "unknown", false),
                ("server-snippet", "refused", true),
            ]
        );
        assert_eq!(r.summary.lost, 3);
        assert_eq!(r.summary.annotations, 6);
        let text = render_text(&r);
        assert!(
            text.contains("! invalid value      proxy-read-timeout: soon"),
            "{text}"
        );
        assert!(text.contains("3 settings lost"), "{text}");
    }

    #[test]
    fn configmap_keys_name_the_flag_that_replaces_them() {
        let data: BTreeMap<String, String> = [
            ("keep-alive", "75"),
            ("allow-snippet-annotations", "true"),
            ("use-gzip", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let r = report(&[], Some(configmap("ingress-nginx", "controller", &data)));
        let keys = &r.configmap.as_ref().expect("configmap").keys;
        assert_eq!(keys[1].name, "keep-alive");
        assert_eq!(
            keys[1].note.as_deref(),
            Some("set as the flag --keep-alive-timeout")
        );
        assert_eq!(r.summary.lost, 2);
    }
}
