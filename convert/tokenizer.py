"""Exporting a Hugging Face fast tokenizer (tokenizer.json + tokenizer_config.json) into the
`tokenizer.*` keys of a GGUF, as llama.cpp reads them.

llama.cpp does not run the tokenizer.json pre-tokenizer: it picks a hard-coded one by the
name in `tokenizer.ggml.pre`. So the name must describe exactly what the Hugging Face
pre-tokenizer does. We identify it from the pre-tokenizer's definition (its split regexes and
byte-level settings); a definition we do not know is an error, because guessing would give a
file that loads fine and tokenizes some text differently from the original model.

SentencePiece-style BPE (Llama 2, Mistral: '▁' for spaces, byte fallback) has no pre-tokenizer
to name: it becomes llama.cpp's "llama" tokenizer, whose merge order comes from token scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from pyresa.errors import ModelFormatError, UnsupportedError

# Split regexes as Hugging Face tokenizer.json files spell them.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Pre-tokenizer definition (normalised to a tuple of steps) -> llama.cpp's pre-tokenizer name.
# ("ByteLevel", use_regex, add_prefix_space): with use_regex the GPT-2 split regex runs first.
KNOWN_PRE_TOKENIZERS: dict[tuple, str] = {
    (("ByteLevel", True, False),): "gpt-2",
    (("Digits", True), ("ByteLevel", True, False)): "smollm",
    (("Split", _QWEN2_SPLIT, "Isolated", False), ("ByteLevel", False, False)): "qwen2",
    (("Split", _LLAMA3_SPLIT, "Isolated", False), ("ByteLevel", False, False)): "llama-bpe",
}
_DESCRIPTIONS = {
    "gpt-2": "GPT-2 byte-level BPE",
    "smollm": "byte-level BPE with single digits (SmolLM, StarCoder)",
    "qwen2": "Qwen2 / DeepSeek-R1-Distill-Qwen split regex",
    "llama-bpe": "Llama 3 split regex",
}

# Tokens that end a chat turn, when the chat template uses them (llama.cpp's `eot`).
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|EOT|>")


def _steps(pt: dict | None) -> tuple:
    if pt is None:
        return ()
    kind = pt.get("type")
    if kind == "Sequence":
        return tuple(s for p in pt.get("pretokenizers", []) for s in _steps(p))
    if kind == "Split":
        pattern = pt.get("pattern", {})
        return (("Split", pattern.get("Regex", pattern.get("String")), pt.get("behavior"), bool(pt.get("invert"))),)
    if kind == "ByteLevel":
        return (("ByteLevel", bool(pt.get("use_regex", True)), bool(pt.get("add_prefix_space", False))),)
    if kind == "Digits":
        return (("Digits", bool(pt.get("individual_digits", False))),)
    return ((kind, json.dumps(pt, sort_keys=True)),)


def identify_pre_tokenizer(tokenizer_json: dict, where: str = "tokenizer.json") -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for this tokenizer.json, or UnsupportedError."""
    sig = _steps(tokenizer_json.get("pre_tokenizer"))
    name = KNOWN_PRE_TOKENIZERS.get(sig)
    if name is None:
        known = "; ".join(f"{n} ({_DESCRIPTIONS[n]})" for n in KNOWN_PRE_TOKENIZERS.values())
        raise UnsupportedError(
            f"{where}: unknown pre-tokenizer {json.dumps(tokenizer_json.get('pre_tokenizer'))[:400]}; "
            f"llama.cpp would tokenize some text differently from Hugging Face. Known: {known}")
    return name


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    """tokenizer.json merges, either "a b" strings or [a, b] pairs (transformers >= 4.45)."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in merges]


def _sentencepiece_style(tj: dict) -> bool | None:
    """For a SentencePiece-style BPE tokenizer.json (spaces as '▁', no byte-level mapping), whether
    a '▁' is put before the text (llama.cpp's add_space_prefix); None for any other tokenizer.
    Two spellings exist: normalizer Prepend('▁') + Replace(' ', '▁') with no pre-tokenizer (older
    conversions), or a Metaspace pre-tokenizer that does not split (newer ones)."""
    norm = tj.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm else []
    kinds = [n.get("type") for n in steps]
    pre = tj.get("pre_tokenizer")
    if pre is None and kinds and set(kinds) <= {"Prepend", "Replace"} and "Replace" in kinds:
        rep = next(n for n in steps if n.get("type") == "Replace")
        if rep.get("pattern", {}).get("String") == " " and rep.get("content") == "\u2581":
            return any(n.get("type") == "Prepend" and n.get("prepend") == "\u2581" for n in steps)
    if pre and pre.get("type") == "Metaspace" and not norm and pre.get("replacement") == "\u2581" \
            and not pre.get("split", True):
        return pre.get("prepend_scheme", "always") != "never"
    if pre and pre.get("type") == "Metaspace" or "Prepend" in kinds:
        raise UnsupportedError(
            f"SentencePiece-style tokenizer with an unusual setup (normalizer {kinds}, pre-tokenizer "
            f"{json.dumps(pre)[:200]}); supported: Prepend+Replace normalizer, or Metaspace without split")
    return None


def _add_bos_eos(tokenizer_json: dict, config: dict) -> tuple[bool, bool]:
    """Whether the tokenizer adds BOS / EOS on its own, as Hugging Face encode() does."""
    add_bos = config.get("add_bos_token")
    add_eos = config.get("add_eos_token")
    post = tokenizer_json.get("post_processor") or {}
    for proc in post.get("processors", [post]):
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single", [])
            if add_bos is None:
                add_bos = bool(single) and "SpecialToken" in single[0]
            if add_eos is None:
                add_eos = len(single) > 1 and "SpecialToken" in single[-1]
    return bool(add_bos), bool(add_eos)


def export_tokenizer(writer: gguf.GGUFWriter, directory: Path, n_vocab: int) -> dict:
    """Write the tokenizer.* keys for the tokenizer in `directory`. n_vocab is the number of rows
    of the model's embedding: the token list is padded to it. Returns a summary (for logs)."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise ModelFormatError(
            f"no tokenizer.json in {directory}: pyresa-convert needs a Hugging Face fast tokenizer "
            "(save it with AutoTokenizer.from_pretrained(...).save_pretrained(dir))")
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelFormatError(f"{path}: not valid JSON: {e}") from e
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}

    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise UnsupportedError(f"{path}: tokenizer model {model.get('type')!r} is not supported (only BPE)")
    vocab: dict[str, int] = model.get("vocab", {})
    added = tj.get("added_tokens", [])
    highest = max([*vocab.values(), *(a["id"] for a in added)], default=-1)
    if highest >= n_vocab:
        culprit = next((a["content"] for a in added if a["id"] == highest), None) or \
            next(t for t, i in vocab.items() if i == highest)
        raise ModelFormatError(
            f"{path}: token {culprit!r} has id {highest}, but the model's embedding has only {n_vocab} rows")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = gguf.TokenType.NORMAL

    spm = _sentencepiece_style(tj)
    if spm is not None:
        # SentencePiece BPE (Llama 2, Mistral): llama.cpp's "llama" tokenizer merges the
        # adjacent pair whose result has the highest score; Hugging Face applies the merge of
        # lowest rank. Scoring each token by minus the rank of the merge that makes it gives the
        # same order.
        if not model.get("byte_fallback"):
            raise UnsupportedError(f"{path}: SentencePiece-style BPE without byte_fallback is not supported")
        rank = {}
        for r, m in enumerate(_merge_pairs(model.get("merges", []))):
            rank.setdefault(m[0] + m[1], r)
        scores = [-(len(rank) + i) * 1.0 for i in range(n_vocab)]  # never made by a merge: last
        for text, i in vocab.items():
            if text in rank:
                scores[i] = -float(rank[text])
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                types[i] = gguf.TokenType.BYTE
        unk = model.get("unk_token")
        if unk in vocab:
            types[vocab[unk]] = gguf.TokenType.UNKNOWN
        for a in added:
            tokens[a["id"]] = a["content"]
            if types[a["id"]] != gguf.TokenType.UNKNOWN:
                types[a["id"]] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(spm)
        pre, load_merges = "default (SentencePiece)", False
    else:
        pre = identify_pre_tokenizer(tj, str(path))
        for a in added:
            tokens[a["id"]] = a["content"]
            types[a["id"]] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        load_merges = True

    # Merges, special token ids and the chat template: gguf-py's reader of these files.
    special = gguf.SpecialVocab(directory, load_merges=load_merges, n_vocab=n_vocab)
    if load_merges and not special.merges:
        raise ModelFormatError(f"{path}: the BPE model has no merges")
    add_bos, add_eos = _add_bos_eos(tj, config)
    special.add_special_token["bos"] = add_bos
    special.add_special_token["eos"] = add_eos
    template = special.chat_template
    by_text = {t: i for i, t in enumerate(tokens)}
    if "eot" not in special.special_token_ids and isinstance(template, str):
        for text in _END_OF_TURN:
            if text in by_text and text in template:
                special.special_token_ids["eot"] = by_text[text]
                break
    special.add_to_gguf(writer, quiet=True)
    return {"pre": pre, "n_tokens": len(vocab) + len(added), "merges": len(special.merges),
            "special": dict(special.special_token_ids), "add_bos": add_bos, "chat_template": template is not None}
