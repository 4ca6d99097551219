//! The Postman collection stays in step with the spec: every request it
//! sends is an operation of the spec (or, in the error folder, a route or
//! method the broker refuses on purpose), and every request tests what it
//! gets. CI runs it with newman against a live broker (`.ci/run`).

use serde_json::Value;

use crate::contract::contract;

fn collection() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/postman/renderfarm.postman_collection.json"
    );
    let text = std::fs::read_to_string(path).expect("the Postman collection");
    serde_json::from_str(&text).expect("the Postman collection is JSON")
}

/// (folder, request) for every request of the collection.
fn requests(collection: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for folder in collection["item"].as_array().expect("folders") {
        let name = folder["name"].as_str().unwrap_or_default().to_string();
        for item in folder["item"].as_array().expect("requests in a folder") {
            out.push((name.clone(), item.clone()));
        }
    }
    out
}

#[test]
fn the_collection_is_postman_v2_1_with_a_base_url_variable() {
    let c = collection();
    assert_eq!(
        c["info"]["schema"],
        "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
    );
    let env_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/postman/renderfarm.postman_environment.json"
    );
    let env: Value =
        serde_json::from_str(&std::fs::read_to_string(env_path).expect("the environment"))
            .expect("the environment is JSON");
    assert!(env["values"]
        .as_array()
        .expect("values")
        .iter()
        .any(|v| v["key"] == "baseUrl"));
    let folders: Vec<&str> = c["item"]
        .as_array()
        .expect("folders")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(folders.len(), 9, "{folders:?}");
}

#[test]
fn every_request_is_an_operation_of_the_spec_and_tests_its_answer() {
    let c = collection();
    let spec = &contract().spec;
    for (folder, item) in requests(&c) {
        let name = item["name"].as_str().unwrap_or_default();
        let request = &item["request"];
        let method = request["method"].as_str().expect("a method").to_lowercase();
        let raw = request["url"]["raw"].as_str().expect("a URL");
        assert!(raw.starts_with("{{baseUrl}}/"), "{name}: {raw}");
        let path = raw["{{baseUrl}}".len()..]
            .split('?')
            .next()
            .unwrap_or_default();
        // A spec template fits when its literal segments are the path's and
        // each parameter (`{id}`, `{frame}`, `{sha256}`) stands for a
        // segment, written as a `{{variable}}` or a value.
        let segments: Vec<&str> = path.split('/').collect();
        let fits = |template: &str| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(part, segment)| {
                    (part.starts_with('{') && !segment.is_empty()) || part == segment
                })
        };
        let template = path.to_string();
        let declared = spec["paths"].as_object().is_some_and(|paths| {
            paths
                .iter()
                .any(|(template, item)| fits(template) && item.get(&method).is_some())
        });
        assert!(
            declared || folder.starts_with("3."),
            "{folder} / {name}: {method} {template} is not an operation of the spec"
        );
        let tests: String = item["event"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["listen"] == "test")
            .flat_map(|e| e["script"]["exec"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            tests.contains("pm.test(") && tests.contains("pm.response.to.have.status("),
            "{name}: tests no status"
        );
    }
}
