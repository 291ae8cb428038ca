//! The FHIR `transaction` Bundle a push destination receives: one
//! conditional create per item, in the order the store gave them.

use serde::Deserialize;

use crate::normalize::member::first_member;
use crate::store::OutboxItem;

/// The transaction Bundle: one conditional create per item, in queue order.
pub fn transaction_bundle(items: &[OutboxItem]) -> String {
    let mut out = String::with_capacity(
        64 + items
            .iter()
            .map(|i| i.resource.json.len() + 200)
            .sum::<usize>(),
    );
    out.push_str(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let r = &item.resource.resource;
        let cond = if_none_exist(&item.resource.json);
        // The stored JSON is a complete resource; splice it in unparsed.
        out.push_str(&format!(
            r#"{{"fullUrl":"urn:uuid:{}","resource":{},"request":{{"method":"POST","url":"{}"{}}}}}"#,
            r.id,
            item.resource.json,
            r.resource_type.as_str(),
            cond.map(|c| format!(r#","ifNoneExist":{}"#, serde_json::Value::String(c)))
                .unwrap_or_default()
        ));
    }
    out.push_str("]}");
    out
}

/// `identifier=<system>|<value>`, percent-encoded, from the resource's first
/// identifier (the hub's event identifier).
fn if_none_exist(json: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Ids {
        #[serde(default)]
        identifier: Vec<Ident>,
    }
    #[derive(Deserialize)]
    struct Ident {
        system: Option<String>,
        value: Option<String>,
    }
    // Only the `identifier` array, not the whole resource (see
    // `first_member`); the whole one if that fails.
    let ids: Vec<Ident> = match first_member(json, "identifier", '[') {
        Some(ids) => ids,
        None => serde_json::from_str::<Ids>(json).ok()?.identifier,
    };
    let id = ids.into_iter().next()?;
    let token = format!("{}|{}", id.system.unwrap_or_default(), id.value?);
    Some(
        form_urlencoded::Serializer::new(String::new())
            .append_pair("identifier", &token)
            .finish(),
    )
}
