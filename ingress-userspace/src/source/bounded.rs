//! YAML read into values with a bound on what it may expand to. An alias
//! (`*a`) repeats the node it names, and nested ones multiply: a few
//! kilobytes of anchors can stand for gigabytes ("billion laughs"). Every
//! node built is counted against the file's budget (one node per byte of
//! the file, plus a margin: more than any file without aliases can make),
//! and the document fails with a clear error once the budget is spent,
//! before the memory is.
use std::cell::Cell;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_norway::{Mapping, Number, Value};

/// Nodes allowed beyond one per byte of the file.
const MARGIN: usize = 10_000;

/// What one file's documents may still build.
pub struct Budget(Cell<usize>);

impl Budget {
    /// The budget of a file of `len` bytes.
    pub fn for_file(len: usize) -> Self {
        Self(Cell::new(len.saturating_add(MARGIN)))
    }

    fn take<E: de::Error>(&self) -> Result<(), E> {
        self.take_n(1)
    }

    fn take_n<E: de::Error>(&self, n: usize) -> Result<(), E> {
        match self.0.get().checked_sub(n) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(E::custom(
                "expands to more nodes than the file has bytes (YAML aliases repeated past the bound)",
            )),
        }
    }
}

/// A `Value`, each node of it paid for from the budget.
pub struct Bounded<'b>(pub &'b Budget);

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Number(Number::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Number(Number::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Number(Number::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.visit_string(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        // A repeated string costs what it holds, not one node.
        self.0.take_n(1 + v.len() / 16)?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.take()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Bounded(self.0))? {
            out.push(v);
        }
        Ok(Value::Sequence(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.take()?;
        let mut out = Mapping::new();
        while let Some(k) = map.next_key_seed(Bounded(self.0))? {
            let v = map.next_value_seed(Bounded(self.0))?;
            out.insert(k, v);
        }
        Ok(Value::Mapping(out))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(de::Error::custom(
            "custom YAML tags are not Kubernetes objects",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize as _;

    fn read(text: &str) -> Result<Vec<Value>, String> {
        let budget = Budget::for_file(text.len());
        serde_norway::Deserializer::from_str(text)
            .map(|doc| Bounded(&budget).deserialize(doc).map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn values_are_what_serde_norway_makes() {
        let text = "a: 1\nb: [x, 2.5, true, null]\nc: {d: \"e\"}\n---\n- 1\n";
        let plain: Vec<Value> = serde_norway::Deserializer::from_str(text)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(read(text).unwrap(), plain);
    }

    #[test]
    fn anchors_used_as_manifests_use_them_are_fine() {
        let text =
            "env: &env [{name: A, value: \"1\"}, {name: B, value: \"2\"}]\nx: *env\ny: *env\n";
        let v = read(text).unwrap();
        assert_eq!(v[0]["y"], v[0]["env"]);
    }

    #[test]
    fn aliases_that_multiply_are_refused() {
        // A thousand-item list named ninety times: 90,000 nodes from under
        // 4 KB (serde_norway's own bound, 100 jumps per event, lets it by).
        let items = vec!["x"; 1000].join(", ");
        let text = format!("a: &a [{items}]\nl: [{}]\n", ["*a"; 90].join(", "));
        assert!(serde_norway::from_str::<Value>(&text).is_ok());
        let err = read(&text).unwrap_err();
        assert!(err.contains("aliases repeated past the bound"), "{err}");
        // Nested ones, a billion nodes from 300 bytes.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(read(&text).is_err());
        // A long string named over and over costs its length each time.
        let text = format!(
            "s: &s \"{}\"\nl: [{}]\n",
            "x".repeat(4000),
            ["*s"; 200].join(", ")
        );
        assert!(serde_norway::from_str::<Value>(&text).is_ok());
        assert!(read(&text).is_err());
    }
}
