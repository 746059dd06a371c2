//! Typed views of the upstream's JSON (answers, stream chunks, model
//! lists), read without building a `serde_json::Value` tree: what we need
//! is borrowed as raw text (`RawValue`) and parsed into its own type, the
//! rest is skipped unparsed (`IgnoredAny`). An answer of 7.5 MiB of tiny
//! values therefore costs its bytes, not 17x them.
//!
//! Reading is lenient in the same way as the `Value` lookups it replaces:
//! a field of the wrong type reads as absent, it does not fail the answer.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// A `usage` object larger than this is not kept (real ones are ~100 bytes).
pub const USAGE_MAX_BYTES: usize = 4096;

/// Whether `bytes` is one JSON object (valid UTF-8 and syntax), checked
/// without storing anything.
pub fn is_json_object(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    crate::json_body::is_object_text(text) && serde_json::from_str::<IgnoredAny>(text).is_ok()
}

/// Whether `bytes` is JSON at all (any value), checked without storing.
pub fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|t| serde_json::from_str::<IgnoredAny>(t).is_ok())
}

/// The first element of a JSON array, typed; the rest is skipped unparsed.
struct First<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First<T>, A::Error> {
                let first = seq.next_element::<T>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// `true` when the field is present, whatever its value (even null).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// The top level of a chunk or answer.
#[derive(DeriveDeserialize)]
struct TopView<'a> {
    #[serde(default, deserialize_with = "present")]
    error: bool,
    #[serde(borrow, default)]
    choices: Option<&'a RawValue>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    /// A Responses API event's text (`response.output_text.delta`).
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    /// A Responses API event's response (`response.completed` holds the
    /// usage there).
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
}

#[derive(DeriveDeserialize)]
struct ResponseView<'a> {
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

#[derive(DeriveDeserialize)]
struct ChoiceView<'a> {
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    finish_reason: Option<&'a RawValue>,
    /// Text completions' answer.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

#[derive(DeriveDeserialize)]
struct ContentView<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    /// Reasoning models' thinking (gpt-oss through llama.cpp, vLLM:
    /// `reasoning_content`; Ollama: `reasoning`): generated tokens too.
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning: Option<&'a RawValue>,
}

/// An object field's raw value parsed as `T`; None when it is not an
/// object of that shape.
fn object<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    let raw = raw?;
    if !crate::json_body::is_object_text(raw.get()) {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

fn string(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str(raw?.get()).ok()
}

/// A small `usage` object as a value (to store); None when absent, not an
/// object or oversized.
fn usage(raw: Option<&RawValue>) -> Option<Value> {
    let raw = raw?;
    if raw.get().len() > USAGE_MAX_BYTES || !crate::json_body::is_object_text(raw.get()) {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// What the relay needs from a stream chunk or a whole answer:
/// `choices[0].delta.content` (chunks) or `choices[0].message.content`
/// (answers), `choices[0].finish_reason`, `usage` when it is an object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parts {
    pub content: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    /// The object has an `error` member (of any value).
    pub error: bool,
    /// Its `type`, when a string (Responses API events name themselves:
    /// `response.output_text.delta`, `response.completed`).
    pub kind: Option<String>,
    /// `choices` is an array with an element (a usage-only chunk has none).
    pub choices: bool,
    /// The chunk carries nothing but its envelope (and maybe `usage`): no
    /// choice, or one with an empty `delta`, no text and no
    /// `finish_reason` (LiteLLM's usage chunk has such a choice).
    pub bare: bool,
    /// Other generated text, counted but not shown: a text completion's
    /// `text`, a Responses event's `delta`, a reasoning model's thinking.
    pub other_text: Option<String>,
}

/// Reads `Parts` from one JSON object; None when `json` is not a JSON
/// object. `content_of` picks `delta` (chunks) or `message` (answers).
fn parts(json: &str, in_delta: bool) -> Option<Parts> {
    if !crate::json_body::is_object_text(json) {
        return None;
    }
    let top: TopView = match serde_json::from_str(json) {
        Ok(t) => t,
        // Valid JSON of another shape (e.g. `"choices"` twice): lenient,
        // as the `Value` lookups were; garbage is refused.
        Err(e) if e.is_data() => {
            return serde_json::from_str::<IgnoredAny>(json)
                .ok()
                .map(|_| Parts::default())
        }
        Err(_) => return None,
    };
    let choice: Option<ChoiceView> = top
        .choices
        .and_then(|c| serde_json::from_str::<First<&RawValue>>(c.get()).ok())
        .and_then(|f| object(f.0));
    let has_choice = choice.is_some();
    let bare = choice.as_ref().is_none_or(|c| {
        let empty =
            |r: Option<&RawValue>| r.is_none_or(|r| matches!(r.get().trim(), "{}" | "null"));
        empty(c.delta) && c.message.is_none() && c.text.is_none() && empty(c.finish_reason)
    });
    let (content, finish_reason, other_text) = match choice {
        Some(c) => {
            let holder = if in_delta { c.delta } else { c.message };
            let view = object::<ContentView>(holder);
            let content = view.as_ref().and_then(|v| string(v.content));
            let other = view
                .and_then(|v| string(v.reasoning_content).or_else(|| string(v.reasoning)))
                .or_else(|| string(c.text));
            (content, string(c.finish_reason), other)
        }
        None => (None, None, string(top.delta)),
    };
    let usage = usage(top.usage)
        .or_else(|| object::<ResponseView>(top.response).and_then(|r| usage(r.usage)));
    Some(Parts {
        content,
        finish_reason,
        usage,
        error: top.error,
        kind: string(top.kind),
        choices: has_choice,
        bare,
        other_text,
    })
}

/// (prompt, completion) tokens of a `usage` object in the shapes upstreams
/// use: chat and text completions, embeddings (`prompt_tokens`,
/// `completion_tokens`, `total_tokens`), the Responses API
/// (`input_tokens`, `output_tokens`). None when it names neither count.
pub fn token_counts(usage: &Value) -> Option<(u64, u64)> {
    let n = |k: &str| usage.get(k).and_then(Value::as_u64);
    Counts {
        prompt_tokens: n("prompt_tokens"),
        completion_tokens: n("completion_tokens"),
        input_tokens: n("input_tokens"),
        output_tokens: n("output_tokens"),
        total_tokens: n("total_tokens"),
    }
    .pair()
}

#[derive(DeriveDeserialize)]
struct UsageTopView<'a> {
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
}

#[derive(DeriveDeserialize)]
struct Counts {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl Counts {
    /// (prompt, completion): chat and Responses names, a completion
    /// derived from `total_tokens` when only that is given; None when the
    /// object names neither count.
    fn pair(self) -> Option<(u64, u64)> {
        let prompt = self.prompt_tokens.or(self.input_tokens);
        let completion = self.completion_tokens.or(self.output_tokens);
        let completion = completion.or_else(|| Some(self.total_tokens?.saturating_sub(prompt?)));
        match (prompt, completion) {
            (None, None) => None,
            (p, c) => Some((p.unwrap_or(0), c.unwrap_or(0))),
        }
    }
}

/// (prompt, completion) tokens of a whole answer's `usage` (top level,
/// or the Responses API's `response.usage`), read without storing
/// anything else (what a relayed answer's usage row needs; see
/// `token_counts` for the shapes).
pub fn answer_counts(bytes: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let top: UsageTopView = serde_json::from_str(text).ok()?;
    let raw = top
        .usage
        .or_else(|| object::<UsageTopView>(top.response).and_then(|r| r.usage))?;
    object::<Counts>(Some(raw))?.pair()
}

/// A stream chunk's parts; None when it is not a JSON object.
pub fn chunk_parts(data: &str) -> Option<Parts> {
    parts(data, true)
}

/// A non-streamed answer's parts; None when it is not a JSON object.
pub fn answer_parts(bytes: &[u8]) -> Option<Parts> {
    parts(std::str::from_utf8(bytes).ok()?, false)
}

/// The message (and the offending parameter, when named) of an upstream's
/// error body, in the shapes real servers use: OpenAI, vLLM, llama.cpp and
/// LiteLLM `{"error":{"message","param"}}`, Ollama `{"error":"..."}`,
/// `{"message":"..."}`, FastAPI `{"detail":"..."}` or `{"detail":[{"msg"}]}`.
/// None when `bytes` is not such a JSON object. Error bodies are small
/// (the caller reads at most 16 KiB), so a `Value` is fine here.
pub fn error_message(bytes: &[u8]) -> Option<(String, Option<String>)> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let err = v.get("error");
    if let Some(m) = err.and_then(|e| text(e.get("message"))) {
        return Some((m, err.and_then(|e| text(e.get("param")))));
    }
    if let Some(m) = text(err).or_else(|| text(v.get("message"))) {
        return Some((m, None));
    }
    match v.get("detail") {
        Some(Value::String(m)) => Some((m.clone(), None)),
        Some(Value::Array(items)) => {
            let msgs: Vec<&str> = items
                .iter()
                .filter_map(|i| i.get("msg").and_then(Value::as_str))
                .collect();
            (!msgs.is_empty()).then(|| (msgs.join("; "), None))
        }
        _ => None,
    }
}

/// One entry of a model list, as the upstream sent it.
#[derive(Debug, PartialEq)]
pub struct ModelEntry {
    pub id: String,
    pub created: i64,
    pub owned_by: Option<String>,
}

#[derive(DeriveDeserialize)]
struct ListView<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    models: Option<&'a RawValue>,
}

#[derive(DeriveDeserialize)]
struct EntryView<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    created: Option<&'a RawValue>,
    #[serde(borrow, default)]
    owned_by: Option<&'a RawValue>,
}

/// The entries of a model list (`{"data":[...]}`, OpenAI, or
/// `{"models":[...]}`, Ollama): at most `max` entries that have a string
/// `id` (or `name`) of 1 to `max_id_chars` characters; the others are
/// skipped without being stored.
pub fn model_entries(bytes: &[u8], max: usize, max_id_chars: usize) -> Vec<ModelEntry> {
    let top = std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| serde_json::from_str::<&RawValue>(t).ok());
    let Some(list) = object::<ListView>(top) else {
        return Vec::new();
    };
    let Some(entries) = list.data.or(list.models) else {
        return Vec::new();
    };
    struct Entries(Vec<ModelEntry>, usize, usize);
    impl<'de> Visitor<'de> for &mut Entries {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(raw) = seq.next_element::<&RawValue>()? {
                if self.0.len() >= self.1 {
                    continue;
                }
                let Some(e) = object::<EntryView>(Some(raw)) else {
                    continue;
                };
                let Some(id) = string(e.id.or(e.name)) else {
                    continue;
                };
                if id.is_empty() || id.chars().count() > self.2 {
                    continue;
                }
                self.0.push(ModelEntry {
                    id,
                    created: e
                        .created
                        .and_then(|c| serde_json::from_str::<i64>(c.get()).ok())
                        .unwrap_or(0),
                    owned_by: string(e.owned_by),
                });
            }
            Ok(())
        }
    }
    let mut out = Entries(Vec::new(), max, max_id_chars);
    let mut de = serde_json::Deserializer::from_str(entries.get());
    if de.deserialize_seq(&mut out).is_err() {
        return Vec::new();
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_parts_table() {
        let full = r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"},{"x":1}],"usage":{"total_tokens":3}}"#;
        assert_eq!(
            chunk_parts(full),
            Some(Parts {
                content: Some("hi".into()),
                finish_reason: Some("stop".into()),
                usage: Some(serde_json::json!({"total_tokens": 3})),
                error: false,
                kind: None,
                choices: true,
                bare: false,
                other_text: None,
            })
        );
        assert_eq!(
            chunk_parts(r#"{"type":"response.completed","response":{}}"#)
                .and_then(|p| p.kind)
                .as_deref(),
            Some("response.completed")
        );
        // Nothing but an envelope: `bare` (see `Parts::bare`).
        let bare = Parts {
            bare: true,
            ..Parts::default()
        };
        let cases: Vec<(&str, Option<Parts>)> = vec![
            ("[1]", None),
            ("{not json", None),
            ("{\"a\":1} x", None),
            ("{}", Some(bare.clone())),
            (r#"{"choices":[]}"#, Some(bare.clone())),
            (r#"{"choices":5,"usage":[1]}"#, Some(bare.clone())),
            (
                r#"{"choices":[{"delta":{"content":7}}]}"#,
                Some(Parts {
                    choices: true,
                    ..Parts::default()
                }),
            ),
            (
                r#"{"choices":[{"delta":null,"finish_reason":null}]}"#,
                Some(Parts {
                    choices: true,
                    bare: true,
                    ..Parts::default()
                }),
            ),
            (
                r#"{"error":null}"#,
                Some(Parts {
                    error: true,
                    bare: true,
                    ..Parts::default()
                }),
            ),
            // Valid JSON of another shape: read leniently as nothing.
            (r#"{"choices":[1],"choices":[2]}"#, Some(Parts::default())),
        ];
        for (input, want) in cases {
            assert_eq!(chunk_parts(input), want, "{}", input);
        }
    }

    #[test]
    fn generated_text_and_usage_in_every_shape() {
        let other = |c: &str| chunk_parts(c).and_then(|p| p.other_text);
        assert_eq!(
            other(r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#).as_deref(),
            Some("hmm")
        );
        assert_eq!(
            other(r#"{"choices":[{"delta":{"reasoning":"hm"}}]}"#).as_deref(),
            Some("hm")
        );
        assert_eq!(
            other(r#"{"choices":[{"text":"once"}]}"#).as_deref(),
            Some("once")
        );
        assert_eq!(
            other(r#"{"type":"response.output_text.delta","delta":"up"}"#).as_deref(),
            Some("up")
        );
        let completed = chunk_parts(
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":4,"output_tokens":2}}}"#,
        )
        .unwrap();
        assert_eq!(token_counts(&completed.usage.unwrap()), Some((4, 2)));
        let usage_only =
            chunk_parts(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#)
                .unwrap();
        assert!(!usage_only.choices && usage_only.bare);
        // LiteLLM's usage chunk: one choice with an empty delta.
        let litellm = r#"{"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":8}}"#;
        assert!(chunk_parts(litellm).unwrap().bare);
        for not_bare in [
            r#"{"choices":[{"index":0,"delta":{"content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[]}}]}"#,
            r#"{"choices":[{"index":0,"text":""}]}"#,
        ] {
            assert!(!chunk_parts(not_bare).unwrap().bare, "{}", not_bare);
        }
        assert_eq!(token_counts(&usage_only.usage.unwrap()), Some((3, 1)));
        for (answer, want) in [
            (
                r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
                Some((3, 1)),
            ),
            (
                r#"{"response":{"usage":{"input_tokens":4,"output_tokens":2}}}"#,
                Some((4, 2)),
            ),
            (
                r#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#,
                Some((8, 0)),
            ),
            (r#"{"usage":null}"#, None),
            (r#"{"usage":{"n":1}}"#, None),
            ("[]", None),
        ] {
            assert_eq!(answer_counts(answer.as_bytes()), want, "{}", answer);
        }
        let embeddings = serde_json::json!({"prompt_tokens": 8, "total_tokens": 8});
        assert_eq!(token_counts(&embeddings), Some((8, 0)));
        assert_eq!(token_counts(&serde_json::json!({"n": 1})), None);
    }

    #[test]
    fn answers_read_message_content_and_skip_padding() {
        let pad = vec!["0"; 100_000].join(",");
        let a = format!(
            r#"{{"pad":[{}],"choices":[{{"message":{{"role":"assistant","content":"yo"}},"finish_reason":"length"}}],"usage":{{"n":1}}}}"#,
            pad
        );
        let p = answer_parts(a.as_bytes()).unwrap();
        assert_eq!(p.content.as_deref(), Some("yo"));
        assert_eq!(p.finish_reason.as_deref(), Some("length"));
        assert!(p.usage.is_some());
        let big_usage = format!(r#"{{"usage":{{"pad":[{}]}}}}"#, pad);
        assert_eq!(answer_parts(big_usage.as_bytes()).unwrap().usage, None);
        assert!(is_json_object(a.as_bytes()));
        assert!(!is_json_object(b"[1]"));
        assert!(!is_json_object(b"{\"a\":\xff}"));
        assert!(!is_json_object(b"<html>"));
    }

    #[test]
    fn model_lists_table() {
        let e = |id: &str, created: i64, owned: Option<&str>| ModelEntry {
            id: id.into(),
            created,
            owned_by: owned.map(str::to_string),
        };
        let openai = br#"{"object":"list","data":[{"id":"a","created":5,"owned_by":"o"},{"x":1},7,{"id":"b","created":"no"}]}"#;
        assert_eq!(
            model_entries(openai, 10, 5),
            vec![e("a", 5, Some("o")), e("b", 0, None)]
        );
        assert_eq!(model_entries(openai, 1, 5), vec![e("a", 5, Some("o"))]);
        let ollama = br#"{"models":[{"name":"llama3"}]}"#;
        assert_eq!(model_entries(ollama, 10, 9), vec![e("llama3", 0, None)]);
        for bad in [&b"[1]"[..], b"{\"data\":{}}", b"nope", b"{\"data\":[]}"] {
            assert!(model_entries(bad, 10, 5).is_empty());
        }
    }

    #[test]
    fn error_messages_of_real_servers() {
        type Want<'a> = Option<(&'a str, Option<&'a str>)>;
        let cases: &[(&str, Want)] = &[
            (
                r#"{"error":{"message":"Invalid model name passed in model=x","type":"invalid_request_error","param":"model","code":"400"}}"#,
                Some(("Invalid model name passed in model=x", Some("model"))),
            ),
            (
                r#"{"error":{"code":400,"message":"the request exceeds the available context size","type":"exceed_context_size_error"}}"#,
                Some(("the request exceeds the available context size", None)),
            ),
            (
                r#"{"error":"model 'x' not found"}"#,
                Some(("model 'x' not found", None)),
            ),
            (r#"{"message":"bad"}"#, Some(("bad", None))),
            (r#"{"detail":"Not Found"}"#, Some(("Not Found", None))),
            (
                r#"{"detail":[{"loc":["body","x"],"msg":"field required"},{"msg":"too long"}]}"#,
                Some(("field required; too long", None)),
            ),
            (r#"{"detail":[]}"#, None),
            ("Internal Server Error", None),
            ("[1]", None),
        ];
        for (body, want) in cases {
            let got = error_message(body.as_bytes());
            let got = got.as_ref().map(|(m, p)| (m.as_str(), p.as_deref()));
            assert_eq!(got, *want, "{}", body);
        }
    }
}
