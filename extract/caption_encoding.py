"""Captions -> action, entity and scene phrases -> CLIP text embeddings -> cache rows.

Captions are parsed with spaCy (vtr.extract.parse) and encoded with the frozen CLIP text tower: the
sentence, and each distinct phrase once; a stream's embedding is the mean of its phrases' embeddings.
Texts are encoded at their real token length, sorted by length, each distinct text once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from vtr.cache import TextRow
from vtr.extract.clip_encoder import ClipEncoder


def encode_sorted(encoder: ClipEncoder, texts: list[str], batch_size: int, bar=None,
                  max_tokens: int = 77, cut: list | None = None) -> np.ndarray:
    """CLIP text embeddings of ``texts`` [N, D] float16, in the order given.

    Texts are tokenized once, sorted by token count and encoded in batches of similar length, each at its
    longest row's length: a batch of 8-token phrases costs about a tenth of the same batch at 77 tokens.
    """
    tokens = encoder.tokenize(texts, max_tokens)
    lengths = encoder.token_lengths(tokens).numpy()
    if cut is not None:  # ``cut`` gets the rows cut to max_tokens: of those that fill it, the longer ones
        cut.extend(int(i) for i in np.flatnonzero(lengths >= max_tokens) if _n_tokens(texts[i]) > max_tokens)
    order = np.argsort(lengths, kind="stable")
    emb = np.zeros((len(texts), encoder.dim), np.float16)
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        emb[rows] = encoder.encode_tokens(tokens[torch.from_numpy(rows)])
        if bar is not None:
            bar.update(len(rows))
    return emb


@dataclass
class EncodedCaptions:
    """Everything the cache stores for a list of captions (rows in the order given)."""

    sentence: np.ndarray  # [N, D] float16
    parses: list  # [N] vtr.extract.parse.Parse
    phrases: np.ndarray  # [N, 3, D] float16: mean embedding of the action, entity, scene phrases
    phrase_mask: np.ndarray  # [N, 3] bool
    new_phrases: int  # distinct phrases this call sent through CLIP
    cut: int = 0  # captions longer than max_words tokens, cut to it


def encode_captions(encoder: ClipEncoder, texts: list[str], batch_size: int = 256,
                    phrase_memo: dict[str, np.ndarray] | None = None, bar=None,
                    max_words: int = 77, parses: list | None = None) -> EncodedCaptions:
    """Parse ``texts`` (unless their ``parses`` are given) and encode the sentences and phrases with CLIP.

    Each distinct phrase is encoded once: ``phrase_memo`` (phrase -> embedding) carries them across calls.
    Each distinct sentence of the call is encoded once. Sentences are cut to ``max_words`` tokens; phrases
    are short and never cut.
    """
    from vtr.extract.parse import parse_captions

    memo = {} if phrase_memo is None else phrase_memo
    if parses is None:
        parses = parse_captions(texts)
    new = sorted({p for pr in parses for p in (*pr.action, *pr.entity, *pr.scene)} - memo.keys())
    memo.update(zip(new, encode_sorted(encoder, new, batch_size)))
    phrases = np.zeros((len(texts), 3, encoder.dim), np.float16)
    mask = np.zeros((len(texts), 3), bool)
    for i, pr in enumerate(parses):
        for k, stream in enumerate((pr.action, pr.entity, pr.scene)):
            if stream:
                phrases[i, k] = np.mean([memo[p].astype(np.float32) for p in stream], axis=0)
                mask[i, k] = True
    # Datasets repeat captions (MSVD: 80,827 captions, 61,846 distinct, repeats mostly next to each other):
    # each distinct sentence of the call is encoded once.
    distinct = list(dict.fromkeys(texts))
    row = {t: i for i, t in enumerate(distinct)}
    cut: list[int] = []
    sentence = encode_sorted(encoder, distinct, batch_size, None, max_words, cut)[[row[t] for t in texts]]
    cut_texts = {distinct[i] for i in cut}
    if bar is not None:
        bar.update(len(texts))
    return EncodedCaptions(sentence, parses, phrases, mask, len(new), sum(t in cut_texts for t in texts))


def _n_tokens(text: str) -> int:
    """CLIP's token count of ``text``, uncut, start and end tokens included."""
    from vtr.extract.clip_encoder import _import_clip

    return len(_import_clip().clip._tokenizer.encode(text)) + 2


def extract_captions(todo, writer, encoder, batch_size, max_words, stats, progress, log=print, nouns=frozenset()):
    """Parse and encode the captions ``todo`` and hand their rows to ``writer``, in dataset order.
    ``nouns``: the dataset's `caption_nouns`, for the parser."""
    from vtr.extract.parse import PARSE_MAX_CHARS, parse_captions, parse_text

    bar = tqdm(total=len(todo), desc="captions", unit="caption", disable=not progress)
    memo: dict[str, np.ndarray] = {}
    chunk = 16 * batch_size
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        texts = [c.text for c in part]
        enc = encode_captions(encoder, texts, batch_size, memo, bar, max_words, parse_captions(texts, nouns=nouns))
        for i, c in enumerate(part):  # written in dataset order, whatever the encoding order was
            # The stored parse names the text it was made of: the caption, or its beginning when cut.
            parsed = c.text if len(c.text) <= PARSE_MAX_CHARS else parse_text(c.text)
            stats.captions_parse_cut += parsed is not c.text and len(parsed) < len(" ".join(c.text.split()))
            writer.add_text(TextRow(c.id, c.video_id, c.split, c.text, enc.sentence[i],
                                    json.dumps(enc.parses[i].to_dict(parsed, tree=True)), enc.phrases[i], enc.phrase_mask[i]))
        stats.captions_encoded += len(part)
        stats.phrases_encoded += enc.new_phrases
        stats.captions_cut += enc.cut
    bar.close()
    if stats.captions_cut:  # once a run, with the count: a cut caption is the protocol, not an error
        n = stats.captions_cut
        log(f"warning: {n} caption{'s are' if n > 1 else ' is'} longer than {max_words} CLIP tokens: the sentence "
            f"embedding sees the first {max_words} (CLIP4Clip's max_words; --max-words sets it)"
            + (f"; {stats.captions_parse_cut} of them over {PARSE_MAX_CHARS} characters, of which only the first "
               f"{PARSE_MAX_CHARS} are parsed into phrases" if stats.captions_parse_cut else ""))
