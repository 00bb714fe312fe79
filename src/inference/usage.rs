//! Token accounting over an answer, pure: the usage an upstream reported,
//! whichever way it reports it, and what it costs.
//!
//! The rule for streams: keep the last non-null `usage` seen in any chunk,
//! never add chunks up. OpenAI sends it once at the end (with
//! `include_usage`), vLLM in a chunk whose `choices` is null, llama.cpp in
//! every chunk, some servers cumulatively: the last one is right for all of
//! them. Anthropic's `message_start` gives the input tokens and its
//! `message_delta` events a cumulative output count.

use serde_json::Value;

use crate::config::llm::Price;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn total(self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Reads an OpenAI `usage` object (`prompt_tokens`, `completion_tokens`);
    /// `None` for null or a shape without them.
    pub fn from_openai(usage: &Value) -> Option<Usage> {
        let object = usage.as_object()?;
        let field = |name: &str| object.get(name).and_then(Value::as_u64);
        let input = field("prompt_tokens").or_else(|| field("input_tokens"));
        let output = field("completion_tokens").or_else(|| field("output_tokens"));
        if input.is_none() && output.is_none() {
            return None;
        }
        Some(Usage { input_tokens: input.unwrap_or(0), output_tokens: output.unwrap_or(0) })
    }
}

/// The usage of one answer as its chunks go by, and what an estimate
/// needs when the upstream never reports a final count (a stream cut before
/// its usage chunk, a server ignoring `include_usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    last: Option<Usage>,
    /// A count was reported that the upstream means as final for what it covers.
    reported: bool,
    prompt_bytes: u64,
    output_bytes: u64,
}

/// Bytes per token for estimates: the usual rule of thumb for English text.
pub const BYTES_PER_TOKEN: u64 = 4;

impl Counter {
    /// An OpenAI chunk (or a whole non-streamed answer): its `usage`, if not null, replaces what was kept.
    pub fn observe_openai(&mut self, chunk: &Value) {
        if let Some(usage) = chunk.get("usage").and_then(Usage::from_openai) {
            self.last = Some(usage);
            self.reported = true;
        }
    }

    /// Sets the counts directly (Anthropic's events, already read), final.
    pub fn set(&mut self, usage: Usage) {
        self.last = Some(usage);
        self.reported = true;
    }

    /// Sets counts that are not final yet (Anthropic's output count before
    /// its `message_delta`): an estimate may raise them.
    pub fn set_partial(&mut self, usage: Usage) {
        self.last = Some(usage);
    }

    /// The size of the request's content, for an input estimate.
    pub fn set_prompt_bytes(&mut self, bytes: u64) {
        self.prompt_bytes = bytes;
    }

    /// Content relayed to the client (an OpenAI chunk or answer), for an output estimate.
    pub fn add_output(&mut self, chunk: &Value) {
        self.output_bytes = self.output_bytes.saturating_add(output_bytes(chunk));
    }

    /// What was reported so far (zero when the upstream reported nothing).
    pub fn usage(&self) -> Usage {
        self.last.unwrap_or_default()
    }

    pub fn seen(&self) -> bool {
        self.last.is_some()
    }

    /// What the request is charged, and whether it is an estimate: the
    /// reported count when there is a final one; otherwise (when `estimate`
    /// allows, i.e. the upstream answered) the content's bytes / 4, never
    /// less than what was reported.
    pub fn charged(&self, estimate: bool) -> (Usage, bool) {
        let reported = self.usage();
        if self.reported || !(estimate || self.output_bytes > 0 || self.last.is_some()) {
            return (reported, false);
        }
        let guess = Usage {
            input_tokens: if reported.input_tokens > 0 {
                reported.input_tokens
            } else {
                self.prompt_bytes.div_ceil(BYTES_PER_TOKEN)
            },
            output_tokens: reported.output_tokens.max(self.output_bytes.div_ceil(BYTES_PER_TOKEN)),
        };
        (guess, guess != reported || self.last.is_none())
    }
}

fn text_len(value: &Value) -> u64 {
    match value {
        Value::String(text) => text.len() as u64,
        // Content parts: their `text`.
        Value::Array(parts) => parts.iter().map(|part| text_len(&part["text"])).sum(),
        _ => 0,
    }
}

/// The content bytes of a request: its messages' contents (chat) or its `input` (embeddings).
pub fn prompt_bytes(request: &serde_json::Map<String, Value>) -> u64 {
    let messages = request.get("messages").and_then(Value::as_array).into_iter().flatten();
    let input = request.get("input").map_or(0, |input| match input {
        Value::Array(items) => items.iter().map(text_len).sum(),
        other => text_len(other),
    });
    messages.map(|message| text_len(&message["content"])).sum::<u64>() + input
}

/// The content bytes of an OpenAI chunk or answer: each choice's delta or
/// message content and tool-call arguments.
pub fn output_bytes(chunk: &Value) -> u64 {
    let choices = chunk.get("choices").and_then(Value::as_array).into_iter().flatten();
    choices
        .flat_map(|choice| [&choice["delta"], &choice["message"]])
        .map(|part| {
            let calls = part["tool_calls"].as_array().into_iter().flatten();
            text_len(&part["content"]) + calls.map(|call| text_len(&call["function"]["arguments"])).sum::<u64>()
        })
        .sum()
}

/// Cost in nano-USD (integers add up exactly): tokens × USD per million × 1,000.
pub fn cost_nano_usd(usage: Usage, price: Price) -> i64 {
    let nano = usage.input_tokens as f64 * price.input_per_million * 1000.0
        + usage.output_tokens as f64 * price.output_per_million * 1000.0;
    // Saturating: `as` clamps a float to the integer's range.
    nano.round() as i64
}

/// Whether an OpenAI chunk carries usage and nothing else (the chunk
/// `include_usage` adds: `choices` empty or null).
pub fn is_usage_only(chunk: &Value) -> bool {
    let has_usage = chunk.get("usage").is_some_and(|usage| !usage.is_null());
    let no_choices = match chunk.get("choices") {
        None | Some(Value::Null) => true,
        Some(Value::Array(choices)) => choices.is_empty(),
        Some(_) => false,
    };
    has_usage && no_choices
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn count(chunks: &[Value]) -> Usage {
        let mut counter = Counter::default();
        for chunk in chunks {
            counter.observe_openai(chunk);
        }
        counter.usage()
    }

    #[test]
    fn openai_with_include_usage_counts_the_final_chunk() {
        let chunks = [
            json!({"choices": [{"delta": {"content": "a"}}], "usage": null}),
            json!({"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": null}),
            json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}),
        ];
        assert_eq!(count(&chunks), Usage { input_tokens: 12, output_tokens: 7 });
        assert!(is_usage_only(&chunks[2]) && !is_usage_only(&chunks[0]));
    }

    #[test]
    fn vllm_null_choices_and_llama_cpp_usage_in_every_chunk_are_not_added_up() {
        let vllm = [
            json!({"choices": [{"delta": {"content": "a"}}]}),
            json!({"choices": null, "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
        ];
        assert_eq!(count(&vllm), Usage { input_tokens: 5, output_tokens: 2 });
        assert!(is_usage_only(&vllm[1]));
        let llama: Vec<Value> = (1..=4)
            .map(|n| json!({"choices": [{"delta": {"content": "x"}}], "usage": {"prompt_tokens": 9, "completion_tokens": n}}))
            .collect();
        assert_eq!(count(&llama), Usage { input_tokens: 9, output_tokens: 4 });
    }

    #[test]
    fn no_usage_counts_zero_and_costs_follow_the_price() {
        assert_eq!(count(&[json!({"choices": []})]), Usage::default());
        let price = Price { input_per_million: 3.0, output_per_million: 15.0 };
        assert_eq!(cost_nano_usd(Usage { input_tokens: 1_000_000, output_tokens: 2 }, price), 3_000_000_000 + 30_000);
    }

    #[test]
    fn without_a_final_report_the_charge_is_an_estimate_from_the_content() {
        let mut request = serde_json::Map::new();
        request.insert("messages".into(), json!([{"role": "user", "content": "12345678"}, {"role": "user", "content": [{"type": "text", "text": "abcd"}]}]));
        let mut counter = Counter::default();
        counter.set_prompt_bytes(prompt_bytes(&request));
        for chunk in [
            json!({"choices": [{"delta": {"content": "Hello"}}]}),
            json!({"choices": [{"delta": {"content": " you"}}]}),
        ] {
            counter.observe_openai(&chunk);
            counter.add_output(&chunk);
        }
        // 12 bytes in, 9 bytes out.
        assert_eq!(counter.charged(true), (Usage { input_tokens: 3, output_tokens: 3 }, true));
        // A refused request with nothing relayed is not charged.
        let mut refused = Counter::default();
        refused.set_prompt_bytes(12);
        assert_eq!(refused.charged(false), (Usage::default(), false));
        // Anthropic before `message_delta`: the input reported, the output estimated (never below the report).
        counter.set_partial(Usage { input_tokens: 25, output_tokens: 1 });
        assert_eq!(counter.charged(true), (Usage { input_tokens: 25, output_tokens: 3 }, true));
        // A final report wins.
        counter.set(Usage { input_tokens: 25, output_tokens: 2 });
        assert_eq!(counter.charged(true), (Usage { input_tokens: 25, output_tokens: 2 }, false));
    }

    proptest! {
        /// Cumulative reports, in any number of chunks: the count is the last report, never a sum.
        #[test]
        fn cumulative_usage_is_the_last_report(outputs in proptest::collection::vec(0u64..1_000_000, 1..50), input in 0u64..100_000) {
            let mut sorted = outputs.clone();
            sorted.sort_unstable();
            let chunks: Vec<Value> = sorted.iter()
                .map(|n| json!({"choices": [{"delta": {"content": "x"}}], "usage": {"prompt_tokens": input, "completion_tokens": n}}))
                .chain([json!({"choices": [], "usage": null})])
                .collect();
            prop_assert_eq!(count(&chunks), Usage { input_tokens: input, output_tokens: *sorted.last().unwrap() });
        }

        #[test]
        fn cost_is_additive_over_requests(a in 0u64..10_000_000, b in 0u64..10_000_000, price in 0.0f64..100.0) {
            let price = Price { input_per_million: price, output_per_million: price };
            let split = cost_nano_usd(Usage { input_tokens: a, output_tokens: 0 }, price) + cost_nano_usd(Usage { input_tokens: 0, output_tokens: b }, price);
            let whole = cost_nano_usd(Usage { input_tokens: a, output_tokens: b }, price);
            prop_assert!((split - whole).abs() <= 1);
        }
    }
}
