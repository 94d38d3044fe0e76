"""Answering prompts with a model: batched KV-cache decoding, logits processing, output entropy.

    gens = generate(model, [prompt_ids, ...], SamplingConfig(top_p=0.9, temperature=0.7))
    answers = answer_records(model, records, SamplingConfig(), template)  # the lines of `mbc-jax generate`

- `sampling`: the settings (paper defaults) and the logits processing, in Hugging Face's order;
- `decode`: the jitted KV-cache decode loop and `generate`, with both entropies of every token;
- `answers`: prompts from records, `answer_records` and the answer lines, summaries.
"""

from mbc_jax.generate.answers import (
    Answerer,
    AnswerProgress,
    Answers,
    AnswerTotals,
    Prompt,
    answer_records,
    build_prompts,
    decode_text,
    instruction_text,
)
from mbc_jax.generate.decode import DEFAULT_BUCKET, MAX_EOS_IDS, Generation, batch_rows, bucket_length, generate
from mbc_jax.generate.sampling import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    EXTRACTION_MAX_NEW_TOKENS,
    TINY_MAX_NEW_TOKENS,
    SamplingConfig,
    Settings,
    default_new_tokens,
    entropy,
    process_logits,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "DEFAULT_BUCKET", "DEFAULT_MAX_NEW_TOKENS", "DEFAULT_REPETITION_PENALTY", "DEFAULT_TEMPERATURE", "DEFAULT_TOP_P",
    "EXTRACTION_MAX_NEW_TOKENS", "MAX_EOS_IDS", "TINY_MAX_NEW_TOKENS", "Answerer", "AnswerProgress", "Answers",
    "AnswerTotals", "Generation",
    "Prompt", "SamplingConfig", "Settings", "answer_records",
    "batch_rows", "bucket_length", "build_prompts", "decode_text", "default_new_tokens", "entropy", "generate",
    "instruction_text",
    "process_logits", "repetition_penalty", "top_k_filter", "top_p_filter",
]
