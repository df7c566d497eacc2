//! A rule's declarative `if`: each condition looks a path up in the [`View`] and tests it.
//!
//! The view is one JSON object built once per trigger: `event` (the trigger's fields),
//! `device` (`key`, `type`, `id`, `config`, `reported`, or null), `level`, `level_id`,
//! `counter`, `ingame`, `run`, `var` (the user variables). A path is dotted (`event.datahold.
//! powerstate`); `device` alone means the device's key. Pure: no state, no clock.

use serde::Serialize;
use serde_json::Value;

use super::def::{Cond, Tests};
use super::validate::RuleSet;

/// What the conditions, expressions and templates of one firing see.
pub type View = Value;

/// Looks `path` up in the view: dotted keys into objects, numeric keys into arrays.
pub fn lookup<'a>(view: &'a Value, path: &str) -> Option<&'a Value> {
    if path == "device" {
        return view.get("device").and_then(|d| d.get("key"));
    }
    let mut at = view;
    for part in path.split('.') {
        at = match at {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// The roots a path may start with.
pub const ROOTS: &[&str] = &[
    "event", "device", "level", "level_id", "counter", "ingame", "run", "var",
];

/// One condition's outcome, for the trace.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Step {
    pub key: String,
    /// The value found (null when the path is absent).
    pub value: Value,
    /// The test, as written.
    pub test: Value,
    pub passed: bool,
}

/// Strings with braces and whitespace removed, lowercased: `"{AUX}"` → `"aux"`.
pub fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '{' && *c != '}' && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

fn norm(v: &Value, on: bool) -> Value {
    match v {
        Value::String(s) if on => Value::String(normalize(s)),
        other => other.clone(),
    }
}

/// JSON equality, numbers by value (`1` equals `1.0`).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Whether `value` (absent: `None`) passes `cond`.
pub fn test(value: Option<&Value>, cond: &Cond, rules: &RuleSet) -> bool {
    match cond {
        Cond::Equals(want) => value.is_some_and(|v| same(v, want)),
        Cond::Tests(t) => tests(value, t, rules),
    }
}

fn tests(value: Option<&Value>, t: &Tests, rules: &RuleSet) -> bool {
    if let Some(want) = t.exists
        && value.is_some_and(|v| !v.is_null()) != want
    {
        return false;
    }
    let Some(v) = value else {
        // Absent: only `exists = false` and `ne`/`not_in` can hold.
        return t.eq.is_none()
            && t.one_of.is_none()
            && t.min.is_none()
            && t.max.is_none()
            && t.at_least.is_none()
            && t.at_most.is_none();
    };
    let v = norm(v, t.normalize);
    let n = |w: &Value| norm(w, t.normalize);
    if let Some(w) = &t.eq
        && !same(&v, &n(w))
    {
        return false;
    }
    if let Some(w) = &t.ne
        && same(&v, &n(w))
    {
        return false;
    }
    if let Some(set) = &t.one_of
        && !set.iter().any(|w| same(&v, &n(w)))
    {
        return false;
    }
    if let Some(set) = &t.not_in
        && set.iter().any(|w| same(&v, &n(w)))
    {
        return false;
    }
    if t.min.is_some() || t.max.is_some() {
        let Some(x) = v.as_f64() else {
            return false;
        };
        if t.min.is_some_and(|m| x < m) || t.max.is_some_and(|m| x > m) {
            return false;
        }
    }
    if t.at_least.is_some() || t.at_most.is_some() {
        let Some(i) = v.as_str().and_then(|s| rules.level_index(s)) else {
            return false;
        };
        if let Some(l) = &t.at_least
            && rules.level_index(l).is_none_or(|b| i < b)
        {
            return false;
        }
        if let Some(l) = &t.at_most
            && rules.level_index(l).is_none_or(|b| i > b)
        {
            return false;
        }
    }
    true
}

/// The test as the trace shows it.
pub fn written(cond: &Cond) -> Value {
    serde_json::to_value(cond).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::game::def::RuleFile;
    use serde_json::json;

    fn rules() -> RuleSet {
        let file = RuleFile::from_toml(
            r#"
version = 1
[[levels]]
name = "white"
id = 1
threshold = -1
[[levels]]
name = "green"
id = 4
ingame = true
threshold = 1
[[levels]]
name = "red"
id = 6
ingame = true
threshold = 1000
"#,
        )
        .unwrap();
        RuleSet::compile(file, &[]).unwrap()
    }

    #[test]
    fn paths_find_nested_values_and_the_device_key() {
        let view =
            json!({"event": {"datahold": {"a": [1, {"b": 2}]}}, "device": {"key": "lock/ab"}});
        assert_eq!(lookup(&view, "event.datahold.a.1.b"), Some(&json!(2)));
        assert_eq!(lookup(&view, "device"), Some(&json!("lock/ab")));
        assert_eq!(lookup(&view, "event.nothing"), None);
        assert_eq!(lookup(&view, "event.datahold.a.x"), None);
    }

    #[test]
    fn conditions() {
        let r = rules();
        let t = |v: Option<Value>, c: Value| {
            let cond: Cond = serde_json::from_value(c).unwrap();
            test(v.as_ref(), &cond, &r)
        };
        let cases: Vec<(Option<Value>, Value, bool)> = vec![
            (Some(json!("aux")), json!("aux"), true),
            (Some(json!("{AUX}")), json!("aux"), false),
            (
                Some(json!("{AUX}")),
                json!({"eq": "aux", "normalize": true}),
                true,
            ),
            (
                Some(json!(" { Aux } ")),
                json!({"eq": "AUX", "normalize": true}),
                true,
            ),
            (Some(json!(1)), json!(1.0), true),
            (Some(json!(false)), json!(false), true),
            (None, json!(false), false),
            (Some(json!("b")), json!({"in": ["a", "b"]}), true),
            (Some(json!("c")), json!({"in": ["a", "b"]}), false),
            (Some(json!("c")), json!({"not_in": ["a", "b"]}), true),
            (None, json!({"not_in": ["a"]}), true),
            (Some(json!(500)), json!({"min": 500, "max": 999}), true),
            (Some(json!(1000)), json!({"min": 500, "max": 999}), false),
            (Some(json!("x")), json!({"min": 1}), false),
            (Some(json!("red")), json!({"at_least": "green"}), true),
            (Some(json!("white")), json!({"at_least": "green"}), false),
            (Some(json!("white")), json!({"at_most": "green"}), true),
            (Some(json!("nope")), json!({"at_least": "white"}), false),
            (None, json!({"exists": false}), true),
            (Some(json!(null)), json!({"exists": false}), true),
            (Some(json!(3)), json!({"exists": true}), true),
            (Some(json!(3)), json!({"ne": 3}), false),
        ];
        for (v, c, want) in cases {
            assert_eq!(t(v.clone(), c.clone()), want, "{v:?} against {c}");
        }
    }
}
