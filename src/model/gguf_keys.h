/* The GGUF metadata keys we read or write, as named constants (llama.cpp's
 * LLM_KV_* names, the same strings). Keys under the architecture's prefix
 * ("llama.context_length") are given as the suffix; build the full key with
 * "%s.%s" and the architecture name. Strings of the file format, not of
 * ours: never change one without the format changing. */
#ifndef LLORCH_GGUF_KEYS_H
#define LLORCH_GGUF_KEYS_H

/* general.* */
#define LLORCH_GGUF_KEY_ALIGNMENT "general.alignment"
#define LLORCH_GGUF_KEY_ARCHITECTURE "general.architecture"
#define LLORCH_GGUF_KEY_NAME "general.name"
#define LLORCH_GGUF_KEY_FILE_TYPE "general.file_type"
#define LLORCH_GGUF_KEY_QUANTIZATION_VERSION "general.quantization_version"

/* <arch>.* suffixes */
#define LLORCH_GGUF_ARCH_CONTEXT_LENGTH "context_length"
#define LLORCH_GGUF_ARCH_EMBEDDING_LENGTH "embedding_length"
#define LLORCH_GGUF_ARCH_BLOCK_COUNT "block_count"
#define LLORCH_GGUF_ARCH_FEED_FORWARD_LENGTH "feed_forward_length"
#define LLORCH_GGUF_ARCH_VOCAB_SIZE "vocab_size"
#define LLORCH_GGUF_ARCH_HEAD_COUNT "attention.head_count"
#define LLORCH_GGUF_ARCH_HEAD_COUNT_KV "attention.head_count_kv"
#define LLORCH_GGUF_ARCH_KEY_LENGTH "attention.key_length"
#define LLORCH_GGUF_ARCH_VALUE_LENGTH "attention.value_length"
#define LLORCH_GGUF_ARCH_LAYERNORM_EPS "attention.layer_norm_epsilon"
#define LLORCH_GGUF_ARCH_LAYERNORM_RMS_EPS "attention.layer_norm_rms_epsilon"
#define LLORCH_GGUF_ARCH_ROPE_DIMENSION_COUNT "rope.dimension_count"
#define LLORCH_GGUF_ARCH_ROPE_FREQ_BASE "rope.freq_base"
#define LLORCH_GGUF_ARCH_ROPE_SCALE_LINEAR "rope.scale_linear" /* older files */
#define LLORCH_GGUF_ARCH_ROPE_SCALING_TYPE "rope.scaling.type"
#define LLORCH_GGUF_ARCH_ROPE_SCALING_FACTOR "rope.scaling.factor"
#define LLORCH_GGUF_ARCH_ROPE_SCALING_ORIG_CTX "rope.scaling.original_context_length"

/* tokenizer.* */
#define LLORCH_GGUF_KEY_TOK_MODEL "tokenizer.ggml.model"
#define LLORCH_GGUF_KEY_TOK_PRE "tokenizer.ggml.pre"
#define LLORCH_GGUF_KEY_TOK_TOKENS "tokenizer.ggml.tokens"
#define LLORCH_GGUF_KEY_TOK_SCORES "tokenizer.ggml.scores"
#define LLORCH_GGUF_KEY_TOK_TOKEN_TYPE "tokenizer.ggml.token_type"
#define LLORCH_GGUF_KEY_TOK_MERGES "tokenizer.ggml.merges"
#define LLORCH_GGUF_KEY_TOK_ADD_BOS "tokenizer.ggml.add_bos_token"
#define LLORCH_GGUF_KEY_TOK_ADD_EOS "tokenizer.ggml.add_eos_token"
#define LLORCH_GGUF_KEY_TOK_ADD_SPACE_PREFIX "tokenizer.ggml.add_space_prefix"
#define LLORCH_GGUF_KEY_TOK_BOS_ID "tokenizer.ggml.bos_token_id"
#define LLORCH_GGUF_KEY_TOK_EOS_ID "tokenizer.ggml.eos_token_id"
#define LLORCH_GGUF_KEY_TOK_EOT_ID "tokenizer.ggml.eot_token_id"
#define LLORCH_GGUF_KEY_TOK_EOM_ID "tokenizer.ggml.eom_token_id"
#define LLORCH_GGUF_KEY_TOK_UNK_ID "tokenizer.ggml.unknown_token_id"
#define LLORCH_GGUF_KEY_TOK_SEP_ID "tokenizer.ggml.seperator_token_id" /* sic, as in the format */
#define LLORCH_GGUF_KEY_TOK_PAD_ID "tokenizer.ggml.padding_token_id"
#define LLORCH_GGUF_KEY_TOK_MASK_ID "tokenizer.ggml.mask_token_id"
#define LLORCH_GGUF_KEY_TOK_FIM_PRE_ID "tokenizer.ggml.fim_pre_token_id"
#define LLORCH_GGUF_KEY_TOK_FIM_SUF_ID "tokenizer.ggml.fim_suf_token_id"
#define LLORCH_GGUF_KEY_TOK_FIM_MID_ID "tokenizer.ggml.fim_mid_token_id"
#define LLORCH_GGUF_KEY_TOK_FIM_PAD_ID "tokenizer.ggml.fim_pad_token_id"
#define LLORCH_GGUF_KEY_TOK_FIM_REP_ID "tokenizer.ggml.fim_rep_token_id"
#define LLORCH_GGUF_KEY_TOK_FIM_SEP_ID "tokenizer.ggml.fim_sep_token_id"
#define LLORCH_GGUF_KEY_TOK_PREFIX_ID "tokenizer.ggml.prefix_token_id" /* older FIM names */
#define LLORCH_GGUF_KEY_TOK_SUFFIX_ID "tokenizer.ggml.suffix_token_id"
#define LLORCH_GGUF_KEY_TOK_MIDDLE_ID "tokenizer.ggml.middle_token_id"
#define LLORCH_GGUF_KEY_TOK_CHAT_TEMPLATE "tokenizer.chat_template"

/* split.* (llama.cpp's gguf-split: m-00001-of-00003.gguf) */
#define LLORCH_GGUF_KEY_SPLIT_NO "split.no"                       /* u16, 0-based */
#define LLORCH_GGUF_KEY_SPLIT_COUNT "split.count"                 /* u16 */
#define LLORCH_GGUF_KEY_SPLIT_TENSORS_COUNT "split.tensors.count" /* i32, whole model */

#endif
