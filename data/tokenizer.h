/* Tokenizers for `braid prep` and decoding: byte (256 ids), char (the sorted set of a text's
 * characters, as Unicode code points) and GPT-2's byte-level BPE, token for token as OpenAI's
 * encoder (regex pre-split with Unicode classes via PCRE2, merges of vocab.bpe, ids of
 * encoder.json). A tokenizer is saved as <dir>/tokenizer.yaml beside its shards. */
#ifndef BRAID_DATA_TOKENIZER_H
#define BRAID_DATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef enum { TOKENIZER_BYTE = 0, TOKENIZER_CHAR, TOKENIZER_GPT2 } tokenizer_kind;

struct tokenizer;

/* byte: no data; char: built from `text` (UTF-8); gpt2: loads encoder.json and vocab.bpe from
 * `gpt2_dir` (NULL = the copy shipped with braid). */
struct tokenizer *tokenizer_create(tokenizer_kind kind, const char *text, size_t len,
                                   const char *gpt2_dir);
void tokenizer_free(struct tokenizer *tok);
tokenizer_kind tokenizer_kind_of(const struct tokenizer *tok);
int64_t tokenizer_vocab_size(const struct tokenizer *tok);
bt_status tokenizer_kind_parse(const char *name, tokenizer_kind *out);
const char *tokenizer_kind_name(tokenizer_kind kind);

/* Encodes text (UTF-8 for char and gpt2: invalid UTF-8 is an error with its byte offset); *ids is
 * malloc'd (caller frees). A character outside a char vocabulary is an error naming it and its
 * byte offset. gpt2 treats "<|endoftext|>" in the text as plain text, like OpenAI's
 * encoder.encode: id 50256 is never produced. */
bt_status tokenizer_encode(const struct tokenizer *tok, const char *text, size_t len,
                           uint16_t **ids, int64_t *n_ids);
/* Decodes ids to text (malloc'd, NUL-terminated); an id out of range is an error. gpt2 ids cut
 * inside a character decode to its raw bytes (not valid UTF-8). */
bt_status tokenizer_decode(const struct tokenizer *tok, const uint16_t *ids, int64_t n,
                           char **text);

/* Byte offset of the first invalid UTF-8 sequence in text (overlong forms, surrogates and code
 * points past U+10FFFF are invalid), or -1 when it is all valid. */
int64_t tokenizer_utf8_invalid_at(const char *text, size_t len);

/* <dir>/tokenizer.yaml: kind, vocab_size, and for char the characters (docs/data.md). Load
 * validates it; errors name the file (and line). */
bt_status tokenizer_save(const struct tokenizer *tok, const char *dir);
struct tokenizer *tokenizer_load(const char *dir, const char *gpt2_dir);
/* The same from the text of a tokenizer.yaml held in memory (a checkpoint's copy); `name` stands
 * for the file in messages. */
struct tokenizer *tokenizer_load_text(const char *yaml_text, const char *name,
                                      const char *gpt2_dir);

#endif
