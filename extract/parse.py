"""Caption parsing with spaCy: action, entity and scene phrases for CAMoE's three text streams.

The public entry point. Each caption becomes a `Parse`: three tuples of phrase texts (for CLIP's text
encoder), three tuples of head lemmas (to compare, count and test) and the dependency tree the cache
stores. Where each part lives:

- vtr.extract.parse_rules: the rules, one Doc -> one Parse (what counts as an action, entity, scene);
- vtr.extract.parse_words: the closed word lists and dependency labels the rules read;
- vtr.extract.parse_repair: the second parse for a caption whose verb the tagger read as a noun;
- vtr.extract.parse_tree: the Parse record and the tree as text (reapplying rules without the model);
- vtr.extract.parse_model: the spaCy model, loaded once per process without NER.
- bench/parse.py measures speed, bench/parse_gold.py precision and recall on hand-labelled captions.

This module parses lists of captions: each distinct text once, in batches through ``nlp.pipe``, in
several processes for long lists. Each worker runs the pipe and the rules and sends back only the small
Parse records: spaCy's own ``n_process`` pickles whole Docs back to the parent, which cost more than a
second process gained (docs/how-it-works.md).
"""
from __future__ import annotations

import multiprocessing as mp
import sys

from vtr.core.omp import usable_cores
from vtr.extract.parse_model import MODEL_NAME, MODEL_VERSION, load_nlp, verb_index
from vtr.extract.parse_repair import repair_text
from vtr.extract.parse_rules import PARSER_VERSION, extract
from vtr.extract.parse_tree import STREAMS, Parse, doc_from_tree

__all__ = ["MODEL_NAME", "MODEL_VERSION", "PARSER_VERSION", "PARSE_MAX_CHARS", "STREAMS", "Parse", "doc_from_tree",
           "extract", "load_nlp", "model_info", "parse_caption", "parse_captions", "parse_text", "repair_text",
           "verb_index"]


def model_info(model: str = MODEL_NAME) -> dict:
    """Name and version of the model and of these rules, for the cache's attributes."""
    nlp = load_nlp(model)
    return {"parser_model": model, "parser_model_version": nlp.meta.get("version", ""),
            "parser_version": PARSER_VERSION, "parser_components": ",".join(nlp.pipe_names)}


# A caption's parse is bounded: only its first PARSE_MAX_CHARS characters are parsed, so a pathological
# caption (100 KB) stores a parse of tens of KB, not megabytes. The bound is well above the longest caption
# of every dataset vtr reads (docs/reliability.md): no real caption is cut and no cache changes. Not CLIP's
# token budget: phrases are encoded one by one, so they may come from past the sentence's cut (a
# paragraph's later sentences).
PARSE_MAX_CHARS = 4000


def _clean(text: str) -> str:
    # ActivityNet sentences often start with spaces; a leading space becomes a token of its own.
    return " ".join(text.split())


def parse_text(text: str) -> str:
    """The text a caption's parse is made of: white space collapsed, cut at the last word boundary within
    `PARSE_MAX_CHARS` characters (at that many when one word is longer)."""
    text = _clean(text)
    if len(text) <= PARSE_MAX_CHARS:
        return text
    cut = text.rfind(" ", 0, PARSE_MAX_CHARS + 1)
    return text[:cut if cut > 0 else PARSE_MAX_CHARS]


def _parse_batch(captions: list[str], model: str, batch_size: int, scene_rule: str,
                 nouns: frozenset = frozenset()) -> list[Parse]:
    """Parse with ``nlp.pipe``, then reparse the captions that need a verb repair, also in one pipe."""
    nlp = load_nlp(model)
    verbs = verb_index(model)
    parses, retry = [], {}
    for i, doc in enumerate(nlp.pipe(captions, batch_size=batch_size)):
        p = extract(doc, scene_rule, verbs, nouns)
        parses.append(p)
        if not p.action:
            fixed = repair_text(doc, verbs)
            if fixed is not None:
                retry[i] = fixed
    for i, doc in zip(retry, nlp.pipe(list(retry.values()), batch_size=batch_size)):
        p = extract(doc, scene_rule, verbs, nouns)
        if p.action:
            parses[i] = p
    return parses


def _parse_chunk(args) -> list[Parse]:
    return _parse_batch(*args)


def parse_captions(captions: list[str], batch_size: int = 512, n_process: int | None = 1,
                   progress: bool = False, model: str = MODEL_NAME, scene_rule: str = "lexicon",
                   chunk_size: int = 2000, nouns: frozenset = frozenset()) -> list[Parse]:
    """Parse captions in order with ``nlp.pipe``.

    Each distinct text (after collapsing white space) is parsed once: datasets repeat captions (MSVD:
    80,827 captions, 61,846 distinct) and a parse depends on the text alone. Only a caption's first
    `PARSE_MAX_CHARS` characters are parsed (`parse_text`).
    ``n_process``: worker processes (None: one per usable core). Extra processes pay only when each gets
    at least ``chunk_size`` captions, so smaller inputs are parsed in this process. Workers are forked
    (they inherit the loaded model) where the platform allows, else spawned. ``nouns``: two-word nouns the
    captions' source knows to be one noun (vtr.extract.parse_rules), e.g. the synthetic generator's.
    """
    cleaned = [parse_text(c) for c in captions]
    texts = list(dict.fromkeys(cleaned))  # distinct texts, first-seen order
    n_process = usable_cores() if n_process is None else max(1, int(n_process))
    n_process = min(n_process, max(1, len(texts) // chunk_size))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), desc="parse (distinct captions)", unit="cap", file=sys.stderr)
    out: list[Parse] = []
    try:
        if n_process == 1:
            for i in range(0, len(texts), chunk_size):
                parses = _parse_batch(texts[i: i + chunk_size], model, batch_size, scene_rule, nouns)
                out.extend(parses)
                if bar is not None:
                    bar.update(len(parses))
        else:
            load_nlp(model), verb_index(model)  # load before forking so workers share them
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            chunks = [(texts[i: i + chunk_size], model, batch_size, scene_rule, nouns)
                      for i in range(0, len(texts), chunk_size)]
            with mp.get_context(method).Pool(n_process) as pool:
                for parses in pool.imap(_parse_chunk, chunks):
                    out.extend(parses)
                    if bar is not None:
                        bar.update(len(parses))
    finally:
        if bar is not None:
            bar.close()
    by_text = dict(zip(texts, out))
    return [by_text[c] for c in cleaned]


def parse_caption(text: str, model: str = MODEL_NAME) -> Parse:
    """Parse one caption."""
    return parse_captions([text], model=model)[0]
