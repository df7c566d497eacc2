//! Templates: JSON rendered over a [`View`](super::matcher::View).
//!
//! - A string may hold placeholders `{path}` (`{level}`, `{level_id}`, `{counter}`,
//!   `{var.NAME}`, `{device}`, `{device.id}`, `{event.datahold.content}`, …): each is replaced
//!   by the value's text (`"{level_id}"` → `"4"`). `{{` and `}}` are a literal brace.
//! - A table with the single key `$` (`{ "$" = "counter" }`) is replaced by the value itself
//!   (a number stays a number); `{ "$" = "acl" }` is the device's access list.
//! - Everything else is kept as written.
//!
//! [`check`] finds unknown placeholders when a file is saved; [`render`] fails only on a path
//! that has no value at the time (the action that uses it fails, and the trace says why).

use serde_json::Value;

use super::matcher::lookup;

/// What `{ "$" = "acl" }` renders to, computed only when a template asks for it.
pub type Acl<'a> = &'a dyn Fn() -> Value;

/// Renders `t` over `view`.
pub fn render(t: &Value, view: &Value, acl: Acl) -> Result<Value, String> {
    match t {
        Value::String(s) => Ok(Value::String(text(s, view)?)),
        Value::Array(a) => a
            .iter()
            .map(|v| render(v, view, acl))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(m) => {
            if let Some(path) = single_dollar(m) {
                if path == "acl" {
                    return Ok(acl());
                }
                return lookup(view, path)
                    .cloned()
                    .ok_or_else(|| format!("{{\"$\" = \"{path}\"}}: no such value now"));
            }
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                out.insert(k.clone(), render(v, view, acl)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn single_dollar(m: &serde_json::Map<String, Value>) -> Option<&str> {
    if m.len() != 1 {
        return None;
    }
    m.get("$").and_then(Value::as_str)
}

/// The placeholders of a string (`{{`/`}}` skipped), or why it is malformed.
pub fn placeholders(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' if b.get(i + 1) == Some(&b'{') => i += 2,
            b'}' if b.get(i + 1) == Some(&b'}') => i += 2,
            b'{' => {
                let end = s[i + 1..].find('}').ok_or_else(|| {
                    format!("{s:?}: a '{{' without its '}}' (write '{{{{' for a brace)")
                })?;
                let path = &s[i + 1..i + 1 + end];
                if path.is_empty() || path.contains('{') {
                    return Err(format!("{s:?}: an empty or nested placeholder"));
                }
                out.push(path);
                i += end + 2;
            }
            b'}' => {
                return Err(format!(
                    "{s:?}: a '}}' without its '{{' (write '}}}}' for a brace)"
                ));
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

/// A string with its placeholders replaced by their values' text.
pub fn text(s: &str, view: &Value) -> Result<String, String> {
    if !s.contains(['{', '}']) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("{s:?}: a '{{' without its '}}'"))?;
            let path = &tail[1..end];
            let v = lookup(view, path).ok_or_else(|| format!("{{{path}}}: no such value now"))?;
            match v {
                Value::String(t) => out.push_str(t),
                other => out.push_str(&other.to_string()),
            }
            rest = &tail[end + 1..];
        } else {
            return Err(format!("{s:?}: a '}}' without its '{{'"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Every path a template uses (placeholders and `$` tables), or why it is malformed.
pub fn paths(t: &Value) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    walk(t, &mut out)?;
    Ok(out)
}

fn walk(t: &Value, out: &mut Vec<String>) -> Result<(), String> {
    match t {
        Value::String(s) => {
            out.extend(placeholders(s)?.into_iter().map(str::to_string));
        }
        Value::Array(a) => {
            for v in a {
                walk(v, out)?;
            }
        }
        Value::Object(m) => {
            if let Some(p) = single_dollar(m) {
                out.push(p.to_string());
            } else {
                for v in m.values() {
                    walk(v, out)?;
                }
            }
        }
        Value::Null => return Err("null is not allowed (TOML has no null)".into()),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_render_as_text_and_dollar_tables_as_values() {
        let view = json!({"level": "green", "level_id": 4, "counter": 120,
            "var": {"x": true}, "device": {"key": "lock/ab", "id": "ab"},
            "event": {"datahold": {"content": "123456"}}});
        let acl = || json!({"123456": [4, 5]});
        let cases = [
            (json!("{level_id}"), json!("4")),
            (json!({"$": "level_id"}), json!(4)),
            (json!({"$": "acl"}), json!({"123456": [4, 5]})),
            (
                json!("lock {device} ({device.id}) code {event.datahold.content} at {level}"),
                json!("lock lock/ab (ab) code 123456 at green"),
            ),
            (json!("{{literal}} {var.x}"), json!("{literal} true")),
            (
                json!({"level": {"$": "counter"}, "state": "{level}", "borders": [334, 667, 1000]}),
                json!({"level": 120, "state": "green", "borders": [334, 667, 1000]}),
            ),
            (
                json!({"$": "counter", "other": 1}),
                json!({"$": "counter", "other": 1}),
            ),
        ];
        for (t, want) in cases {
            assert_eq!(render(&t, &view, &acl).unwrap(), want, "{t}");
        }
        assert!(
            render(&json!("{var.missing}"), &view, &acl)
                .unwrap_err()
                .contains("var.missing")
        );
    }

    #[test]
    fn malformed_templates_are_found_on_save() {
        assert_eq!(
            paths(&json!(["{a}", {"b": "{c.d} {{x}}"}, {"$": "e"}])).unwrap(),
            vec!["a", "c.d", "e"]
        );
        for bad in [
            json!("{open"),
            json!("close}"),
            json!("{}"),
            json!(null),
            json!({"k": null}),
        ] {
            assert!(paths(&bad).is_err(), "{bad}");
        }
    }
}
