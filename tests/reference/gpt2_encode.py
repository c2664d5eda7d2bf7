#!/usr/bin/env python3
"""Reference GPT-2 encoder: OpenAI's gpt-2/src/encoder.py algorithm (bytes_to_unicode, get_pairs,
BPE by merge rank, the same pre-split regex via the `regex` module), reading braid's shipped
data/assets/gpt2/encoder.json and vocab.bpe. Used once to derive the expected ids in
tests/test_tokenizer.c:  python3 tests/reference/gpt2_encode.py [FILE]"""
import json
import os
import sys

import regex as re

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "assets")


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def get_pairs(word):
    return set(zip(word, word[1:]))


class Encoder:
    def __init__(self, encoder, bpe_merges):
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.bpe_ranks = dict(zip(bpe_merges, range(len(bpe_merges))))
        self.cache = {}
        self.pat = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        pairs = get_pairs(word)
        if not pairs:
            return token
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def encode(self, text):
        bpe_tokens = []
        for token in re.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return bpe_tokens

    def decode(self, tokens):
        text = "".join(self.decoder[t] for t in tokens)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8")


def get_encoder():
    with open(os.path.join(ASSETS, "gpt2", "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    with open(os.path.join(ASSETS, "gpt2", "vocab.bpe"), encoding="utf-8") as f:
        bpe_data = f.read()
    merges = [tuple(line.split()) for line in bpe_data.split("\n")[1:-1]]
    return Encoder(encoder, merges)


CASES = [
    "Hello world",
    "I'm don't they'll we've",
    "12345 3.14",
    "héllo wörld 你好 🙂",
    "a    b",
    "\n\n\nx",
    "trailing   ",
    "<|endoftext|>",
    "She said: \"Hi!!\"\tthen\r\n  left...  ",
    "I'M DON'T don't've",
    "   leading",
    "x\n\n  \n y",
    "e\u0301 \u0967\u0968 \u0663",
    "x \u180e y\u00a0\u2028z",
]

if __name__ == "__main__":
    enc = get_encoder()
    if len(sys.argv) > 1:
        with open(sys.argv[1], encoding="utf-8") as f:
            text = f.read()
        ids = enc.encode(text)
        assert enc.decode(ids) == text
        print(len(ids), "tokens; first 16:", ids[:16], "last 8:", ids[-8:])
    else:
        for s in CASES:
            ids = enc.encode(s)
            assert enc.decode(ids) == s
            print(json.dumps(s), ids)
