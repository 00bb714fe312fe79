//! What the areas that call models share — the LLM proxy (`llm`) and the
//! fallback embeddings (`embeddings`): the seam to OpenAI-compatible and
//! Anthropic upstreams (timeouts, retries, 502/504), token accounting, the
//! usage ledger in the user's database and the quotas per tier.
//!
//! Nothing of a prompt, an input or an answer is stored or logged here.

pub mod ledger;
pub mod quota;
pub mod upstream;
pub mod usage;
