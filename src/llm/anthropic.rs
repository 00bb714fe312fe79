//! Anthropic's Messages API in the OpenAI shapes, pure: a chat request
//! translated to a Messages request, a Messages answer back to a chat
//! completion, and a Messages event stream to chat completion chunks.

use serde_json::{json, Map, Value};

use super::usage::Usage;

/// `max_tokens` is required by Anthropic; OpenAI clients often leave it out.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// A request the translation cannot carry, naming the field.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// The text of an OpenAI message's `content`: a string, or an array of
/// `{"type": "text", "text"}` parts.
fn text_of(content: &Value, at: &str) -> Result<String, Unsupported> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(part)) => text.push_str(part),
                    _ => {
                        return Err(Unsupported(format!(
                            "{at}.content[{i}]: only text parts are supported by this model"
                        )))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(Unsupported(format!("{at}.content: must be a string or an array of text parts"))),
    }
}

/// An OpenAI chat request → an Anthropic Messages request for `model`.
pub fn request(chat: &Map<String, Value>, model: &str) -> Result<Value, Unsupported> {
    let Some(messages) = chat.get("messages").and_then(Value::as_array) else {
        return Err(Unsupported("messages: required, an array".into()));
    };
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = message.get("role").and_then(Value::as_str).unwrap_or_default();
        let text = text_of(message.get("content").unwrap_or(&Value::Null), &at)?;
        match role {
            "system" | "developer" => system.push(text),
            "user" | "assistant" => {
                // Anthropic wants alternating turns: consecutive ones of a role are joined.
                if let Some(last) = out.last_mut().filter(|last| last["role"] == role) {
                    let joined = format!("{}\n\n{text}", last["content"].as_str().unwrap_or_default());
                    last["content"] = Value::String(joined);
                } else {
                    out.push(json!({"role": role, "content": text}));
                }
            }
            _ => return Err(Unsupported(format!("{at}.role: `{role}` is not supported by this model"))),
        }
    }
    for field in ["tools", "tool_choice", "functions", "n", "logprobs", "response_format"] {
        if chat.get(field).is_some_and(|value| !value.is_null()) && !(field == "n" && chat[field] == json!(1)) {
            return Err(Unsupported(format!("{field}: not supported by this model")));
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(out));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    let max_tokens = chat
        .get("max_completion_tokens")
        .or_else(|| chat.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".into(), json!(max_tokens));
    for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
        if let Some(value) = chat.get(from).filter(|v| v.is_number()) {
            body.insert(to.into(), value.clone());
        }
    }
    match chat.get("stop") {
        Some(Value::String(stop)) => {
            body.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) => {
            body.insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if chat.get("stream") == Some(&Value::Bool(true)) {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        None => Value::Null,
        Some("max_tokens") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        Some(_) => json!("stop"),
    }
}

fn openai_usage(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total(),
    })
}

/// Input tokens of an Anthropic `usage`, cache reads and writes included.
fn input_tokens(usage: &Value) -> u64 {
    ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
        .iter()
        .filter_map(|field| usage.get(*field).and_then(Value::as_u64))
        .sum()
}

/// A Messages answer → a chat completion, with its usage.
pub fn response(message: &Value, created: i64) -> (Value, Usage) {
    let text: String = message
        .get("content")
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|block| block["type"] == "text")
                .filter_map(|block| block["text"].as_str())
                .collect::<Vec<_>>()
                .concat()
        })
        .unwrap_or_default();
    let usage = message.get("usage").map_or(Usage::default(), |usage| Usage {
        input_tokens: input_tokens(usage),
        output_tokens: usage.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
    });
    let completion = json!({
        "id": message.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason(message.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": openai_usage(usage),
    });
    (completion, usage)
}

/// Translates a Messages event stream into chat completion chunks, one
/// event at a time, keeping the counts (`message_delta`'s output count is cumulative).
#[derive(Debug, Default)]
pub struct StreamTranslator {
    id: String,
    model: String,
    created: i64,
    usage: Usage,
    include_usage: bool,
    done: bool,
}

/// What one upstream event becomes.
#[derive(Debug, PartialEq)]
pub enum Translated {
    /// Chunks to send (JSON, each one `data:` event), then `[DONE]` if `done`.
    Chunks { chunks: Vec<Value>, done: bool },
    /// The upstream reported an error mid-stream: its type (never its message).
    Error { kind: String },
}

impl StreamTranslator {
    pub fn new(created: i64, include_usage: bool) -> Self {
        Self { created, include_usage, ..Self::default() }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Whether `message_stop` was seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn chunk(&self, delta: Value, finish: Value) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }

    /// One event (`event:` name, parsed `data`).
    pub fn event(&mut self, name: Option<&str>, data: &Value) -> Translated {
        let kind = name.or_else(|| data.get("type").and_then(Value::as_str)).unwrap_or_default();
        let none = Translated::Chunks { chunks: Vec::new(), done: false };
        match kind {
            "message_start" => {
                let message = &data["message"];
                self.id = message["id"].as_str().unwrap_or_default().to_owned();
                self.model = message["model"].as_str().unwrap_or_default().to_owned();
                if let Some(usage) = message.get("usage") {
                    self.usage.input_tokens = input_tokens(usage);
                    self.usage.output_tokens = usage["output_tokens"].as_u64().unwrap_or(0);
                }
                Translated::Chunks {
                    chunks: vec![self.chunk(json!({"role": "assistant", "content": ""}), Value::Null)],
                    done: false,
                }
            }
            "content_block_delta" => match data["delta"]["text"].as_str() {
                Some(text) if data["delta"]["type"] == "text_delta" => {
                    Translated::Chunks { chunks: vec![self.chunk(json!({"content": text}), Value::Null)], done: false }
                }
                _ => none,
            },
            "message_delta" => {
                if let Some(output) = data["usage"]["output_tokens"].as_u64() {
                    self.usage.output_tokens = output;
                }
                if let Some(input) = data.get("usage").map(input_tokens).filter(|n| *n > 0) {
                    self.usage.input_tokens = input;
                }
                let finish = finish_reason(data["delta"]["stop_reason"].as_str());
                if finish.is_null() {
                    return none;
                }
                Translated::Chunks { chunks: vec![self.chunk(json!({}), finish)], done: false }
            }
            "message_stop" => {
                self.done = true;
                let mut chunks = Vec::new();
                if self.include_usage {
                    chunks.push(json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                        "choices": [], "usage": openai_usage(self.usage),
                    }));
                }
                Translated::Chunks { chunks, done: true }
            }
            "error" => {
                Translated::Error { kind: data["error"]["type"].as_str().unwrap_or("error").chars().take(64).collect() }
            }
            // ping, content_block_start/stop, and anything newer.
            _ => none,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_request_becomes_a_messages_request() {
        let chat = json!({
            "model": "smart", "stream": true, "max_tokens": 50, "temperature": 0.2, "stop": "END",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "user", "content": "there"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ],
        });
        let out = request(chat.as_object().unwrap(), "claude-x").unwrap();
        assert_eq!(
            out,
            json!({
                "model": "claude-x", "system": "Be brief.", "max_tokens": 50, "temperature": 0.2,
                "stop_sequences": ["END"], "stream": true,
                "messages": [
                    {"role": "user", "content": "Hi\n\nthere"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Bye"},
                ],
            })
        );
        let no_max = json!({"messages": [{"role": "user", "content": "x"}]});
        assert_eq!(request(no_max.as_object().unwrap(), "m").unwrap()["max_tokens"], DEFAULT_MAX_TOKENS);
        let tools = json!({"messages": [], "tools": [{}]});
        assert!(request(tools.as_object().unwrap(), "m").unwrap_err().0.starts_with("tools"));
        let image = json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]});
        assert!(request(image.as_object().unwrap(), "m").unwrap_err().0.starts_with("messages[0].content[0]"));
    }

    #[test]
    fn a_messages_answer_becomes_a_completion() {
        let message = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 2, "output_tokens": 3},
        });
        let (completion, usage) = response(&message, 7);
        assert_eq!(usage, Usage { input_tokens: 12, output_tokens: 3 });
        assert_eq!(completion["choices"][0]["message"]["content"], "Hello");
        assert_eq!(completion["choices"][0]["finish_reason"], "stop");
        assert_eq!(completion["usage"]["total_tokens"], 15);
    }

    #[test]
    fn a_stream_translates_and_counts_cumulatively() {
        let mut t = StreamTranslator::new(7, true);
        let events = [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 25, "output_tokens": 1}}}),
            ),
            ("content_block_start", json!({"type": "content_block_start", "index": 0})),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": null}, "usage": {"output_tokens": 5}}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 9}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        let mut all = Vec::new();
        for (name, data) in &events {
            if let Translated::Chunks { chunks, .. } = t.event(Some(name), data) {
                all.extend(chunks);
            }
        }
        assert_eq!(all.len(), 4);
        assert_eq!(all[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(all[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(all[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(all[3]["usage"], json!({"prompt_tokens": 25, "completion_tokens": 9, "total_tokens": 34}));
        assert_eq!(t.usage(), Usage { input_tokens: 25, output_tokens: 9 });
        assert!(t.is_done());
        let error =
            t.event(Some("error"), &json!({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}));
        assert_eq!(error, Translated::Error { kind: "overloaded_error".into() });
    }
}
