//! Payloads edited as HTML forms generated from the action's JSON Schema: strings as text
//! fields (long ones, and a reply's body, as text areas), numbers, booleans as check boxes,
//! enums as selects, nested objects as fieldsets, arrays of scalars one item a line. What a
//! form posts is read back into JSON along the same schema and validated against it before
//! anything is saved.
//!
//! A reply's schema is fixed (`to`, `subject`, `body`). A webhook's payload is what the
//! pipeline's template rendered; its schema is inferred from it, with a label's declared
//! values as the enum of a property of the same name.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

/// Form field names are this prefix and the property's path joined by dots.
const PREFIX: &str = "p.";

/// The JSON Schema a staged action's payload is edited under.
pub fn payload_schema(
    kind: &str,
    payload: &Value,
    declared: &BTreeMap<String, Vec<String>>,
) -> Value {
    if kind == "reply" {
        return json!({
            "type": "object",
            "required": ["to", "subject", "body"],
            "properties": {
                "to": {"type": "string", "title": "To", "minLength": 3},
                "subject": {"type": "string", "title": "Subject"},
                "body": {"type": "string", "title": "Body", "format": "textarea"},
            },
        });
    }
    infer(payload, None, declared)
}

fn infer(value: &Value, name: Option<&str>, declared: &BTreeMap<String, Vec<String>>) -> Value {
    match value {
        Value::Object(o) => {
            let properties: Map<String, Value> = o
                .iter()
                .map(|(k, v)| (k.clone(), infer(v, Some(k), declared)))
                .collect();
            json!({"type": "object", "properties": properties})
        }
        Value::String(s) => match name.and_then(|n| declared.get(n)) {
            Some(values) if values.contains(s) => json!({"type": "string", "enum": values}),
            _ if s.contains('\n') || s.chars().count() > 80 => {
                json!({"type": "string", "format": "textarea"})
            }
            _ => json!({"type": "string"}),
        },
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"type": "integer"}),
        Value::Number(_) => json!({"type": "number"}),
        Value::Array(items) => {
            let item_type = if items.iter().all(Value::is_string) {
                "string"
            } else if items.iter().all(|i| i.is_i64() || i.is_u64()) {
                "integer"
            } else if items.iter().all(Value::is_number) {
                "number"
            } else {
                // Arrays of objects: kept as they are (raw JSON, for admins).
                return json!({});
            };
            json!({"type": "array", "items": {"type": item_type}})
        }
        Value::Null => json!({}),
    }
}

/// One line of a rendered form: a field, or the start or end of a fieldset.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FormItem {
    /// `text`, `textarea`, `number`, `integer`, `checkbox`, `select`, `list`, `open`, `close`.
    pub widget: &'static str,
    /// The form field's name (`p.customer.name`).
    pub name: String,
    pub label: String,
    pub value: String,
    pub options: Vec<String>,
    pub required: bool,
}

/// The form of `schema` filled with `value` (or with what was submitted, when a submission
/// was refused and is shown back).
pub fn form_items(
    schema: &Value,
    value: &Value,
    submitted: Option<&[(String, String)]>,
) -> Vec<FormItem> {
    let mut out = Vec::new();
    walk(schema, value, "", submitted, &mut out);
    out
}

fn walk(
    schema: &Value,
    value: &Value,
    path: &str,
    submitted: Option<&[(String, String)]>,
    out: &mut Vec<FormItem>,
) {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    for (key, sub) in properties {
        let name = if path.is_empty() {
            format!("{PREFIX}{key}")
        } else {
            format!("{path}.{key}")
        };
        let label = sub["title"].as_str().unwrap_or(key).to_string();
        let current = &value[key];
        let sent = submitted.map(|s| {
            s.iter()
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
                .next_back()
                .unwrap_or("")
                .to_string()
        });
        let item = |widget, value: String, options: Vec<String>| FormItem {
            widget,
            name: name.clone(),
            label: label.clone(),
            value,
            options,
            required: required.contains(&key.as_str()),
        };
        let scalar = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        match sub["type"].as_str() {
            Some("object") => {
                out.push(item("open", String::new(), vec![]));
                walk(sub, current, &name, submitted, out);
                out.push(item("close", String::new(), vec![]));
            }
            Some("string") if sub["enum"].is_array() => {
                let options = sub["enum"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(scalar)
                    .collect();
                out.push(item(
                    "select",
                    sent.unwrap_or_else(|| scalar(current)),
                    options,
                ));
            }
            Some("string") => {
                let widget = if sub["format"] == "textarea" {
                    "textarea"
                } else {
                    "text"
                };
                out.push(item(
                    widget,
                    sent.unwrap_or_else(|| scalar(current)),
                    vec![],
                ));
            }
            Some(t @ ("integer" | "number")) => {
                let widget = if t == "integer" { "integer" } else { "number" };
                out.push(item(
                    widget,
                    sent.unwrap_or_else(|| scalar(current)),
                    vec![],
                ));
            }
            Some("boolean") => {
                let on = sent.map_or(current == &Value::Bool(true), |s| s == "true");
                out.push(item("checkbox", on.to_string(), vec![]));
            }
            Some("array") => {
                let lines = current
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(scalar)
                    .collect::<Vec<_>>()
                    .join("\n");
                out.push(item("list", sent.unwrap_or(lines), vec![]));
            }
            // Not representable as a field: kept as it is.
            _ => {}
        }
    }
}

/// The payload a form posted: `current` with every field of `schema` replaced by what was
/// submitted, then validated against `schema`. The error names the field.
pub fn payload_from_form(
    schema: &Value,
    current: &Value,
    fields: &[(String, String)],
) -> Result<Value, String> {
    let mut value = current.clone();
    read(schema, &mut value, "", fields)?;
    let validator =
        jsonschema::validator_for(schema).map_err(|e| format!("the payload's schema: {e}"))?;
    if let Some(e) = validator.iter_errors(&value).next() {
        let at = e.instance_path().to_string();
        let at = at.trim_start_matches('/').replace('/', ".");
        return Err(if at.is_empty() {
            format!("the payload does not fit its schema: {e}")
        } else {
            format!("{at}: {e}")
        });
    }
    Ok(value)
}

fn read(
    schema: &Value,
    value: &mut Value,
    path: &str,
    fields: &[(String, String)],
) -> Result<(), String> {
    let Some(properties) = schema["properties"].as_object() else {
        return Ok(());
    };
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    for (key, sub) in properties {
        let name = if path.is_empty() {
            format!("{PREFIX}{key}")
        } else {
            format!("{path}.{key}")
        };
        let shown = name.trim_start_matches(PREFIX).to_string();
        // The last value wins: a check box posts after its hidden "false".
        let sent = fields
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.replace("\r\n", "\n"))
            .next_back();
        // What the payload held before (indexing below adds a missing key as null).
        let before = value.get(key).map(Value::is_null);
        let slot = &mut value[key.as_str()];
        let parse_number = |s: &str, integer: bool| -> Result<Value, String> {
            let s = s.trim();
            if integer {
                s.parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| format!("{shown}: {s:?} is not a whole number"))
            } else {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{shown}: {s:?} is not a number"))
            }
        };
        let mut emptied = false;
        match (sub["type"].as_str(), sent) {
            (Some("object"), _) => read(sub, slot, &name, fields)?,
            (Some("string"), Some(s)) => *slot = Value::String(s),
            (Some(t @ ("integer" | "number")), Some(s)) => {
                if s.trim().is_empty() {
                    *slot = Value::Null;
                    emptied = true;
                } else {
                    *slot = parse_number(&s, t == "integer")?;
                }
            }
            (Some("boolean"), Some(s)) => *slot = Value::Bool(s == "true"),
            (Some("array"), Some(s)) => {
                let item_type = sub["items"]["type"].as_str().unwrap_or("string");
                let items = s
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| match item_type {
                        "integer" => parse_number(l, true),
                        "number" => parse_number(l, false),
                        _ => Ok(Value::String(l.to_string())),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                *slot = Value::Array(items);
            }
            // Not in the form (or not representable): left as it was.
            _ => {}
        }
        // An emptied optional number is left out rather than sent as null (one that was null
        // stays null); a key the payload did not have is not added; other nulls stay.
        let drop = match before {
            None => slot.is_null(),
            Some(was_null) => emptied && !was_null,
        };
        if drop && let Some(o) = value.as_object_mut() {
            o.remove(key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([(
            "threat_level".to_string(),
            vec!["low".to_string(), "high".to_string()],
        )])
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_kind_of_value_gets_its_widget() {
        let payload = json!({
            "message": 7, "score": 0.5, "urgent": true, "threat_level": "high",
            "summary": "one line", "notes": "two\nlines",
            "customer": {"name": "ACME", "tier": "gold"}, "tags": ["a", "b"],
            "lines": [{"sku": 1}],
        });
        let schema = payload_schema("webhook", &payload, &declared());
        let items = form_items(&schema, &payload, None);
        let got: Vec<(&str, &str, &str)> = items
            .iter()
            .map(|i| (i.widget, i.name.as_str(), i.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("integer", "p.message", "7"),
                ("number", "p.score", "0.5"),
                ("checkbox", "p.urgent", "true"),
                ("select", "p.threat_level", "high"),
                ("text", "p.summary", "one line"),
                ("textarea", "p.notes", "two\nlines"),
                ("open", "p.customer", ""),
                ("text", "p.customer.name", "ACME"),
                ("text", "p.customer.tier", "gold"),
                ("close", "p.customer", ""),
                ("list", "p.tags", "a\nb"),
            ]
        );
        assert_eq!(items[3].options, ["low", "high"]);
    }

    #[test]
    fn a_form_reads_back_into_json_and_is_validated() {
        let payload = json!({"message": 7, "urgent": true, "threat_level": "high",
            "customer": {"name": "ACME"}, "tags": ["a"], "lines": [{"sku": 1}]});
        let schema = payload_schema("webhook", &payload, &declared());
        let posted = pairs(&[
            ("p.message", "8"),
            ("p.urgent", "false"),
            ("p.threat_level", "low"),
            ("p.customer.name", "ACME\r\nSA"),
            ("p.tags", "x\n\ny \n"),
        ]);
        let v = payload_from_form(&schema, &payload, &posted).unwrap();
        assert_eq!(
            v,
            json!({"message": 8, "urgent": false, "threat_level": "low",
                "customer": {"name": "ACME\nSA"}, "tags": ["x", "y"], "lines": [{"sku": 1}]})
        );
        // A check box posts its hidden "false" then "true".
        let v = payload_from_form(
            &schema,
            &payload,
            &pairs(&[("p.urgent", "false"), ("p.urgent", "true")]),
        )
        .unwrap();
        assert_eq!(v["urgent"], true);

        let e =
            payload_from_form(&schema, &payload, &pairs(&[("p.message", "seven")])).unwrap_err();
        assert!(
            e.contains("p.message") || e.contains("message: \"seven\""),
            "{e}"
        );
        let e = payload_from_form(
            &schema,
            &payload,
            &pairs(&[("p.threat_level", "apocalyptic")]),
        )
        .unwrap_err();
        assert!(e.starts_with("threat_level:"), "{e}");
    }

    #[test]
    fn a_save_keeps_null_fields_and_drops_only_an_emptied_number() {
        let payload = json!({"note": null, "count": 3, "score": 0.5, "customer": {"id": null}});
        let schema = payload_schema("webhook", &payload, &declared());
        // A save of another field leaves the nulls as they were.
        let v = payload_from_form(&schema, &payload, &pairs(&[("p.count", "4")])).unwrap();
        assert_eq!(
            v,
            json!({"note": null, "count": 4, "score": 0.5, "customer": {"id": null}})
        );
        // An emptied optional number is left out; nothing absent is added.
        let v = payload_from_form(&schema, &payload, &pairs(&[("p.score", " ")])).unwrap();
        assert_eq!(
            v,
            json!({"note": null, "count": 3, "customer": {"id": null}})
        );
        // A number that was null and is submitted empty stays null.
        let with_null = json!({"count": null});
        let schema = json!({"type": "object", "properties": {"count": {"type": ["integer", "null"]},
            "total": {"type": "integer"}}});
        let v = payload_from_form(&schema, &with_null, &pairs(&[("p.count", "")])).unwrap();
        assert_eq!(v, json!({"count": null}));
    }

    #[test]
    fn a_reply_has_its_fixed_fields() {
        let payload = json!({"to": "a@b.test", "subject": "Re: x", "body": "Hello"});
        let schema = payload_schema("reply", &payload, &declared());
        let widgets: Vec<&str> = form_items(&schema, &payload, None)
            .iter()
            .map(|i| i.widget)
            .collect();
        assert_eq!(widgets, ["text", "text", "textarea"]);
        let e = payload_from_form(&schema, &payload, &pairs(&[("p.to", "")])).unwrap_err();
        assert!(e.starts_with("to:"), "{e}");
        // A submission that was refused is shown back as submitted.
        let items = form_items(&schema, &payload, Some(&pairs(&[("p.body", "edited")])));
        assert_eq!(items[2].value, "edited");
    }
}
