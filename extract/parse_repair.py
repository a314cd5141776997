"""Verb repair: a second parse for captions whose verb the small tagger read as a noun.

The small model often reads a bare present-tense verb after a noun phrase as a noun ("a little girl
drinks juice": "girl drinks" becomes a compound noun) and an -ing verb as the head of a noun phrase ("a
small child playing"). When a caption yields no action, the last word that looks like a misread verb
gets a relative-clause cue ("a little girl that drinks juice", "a small child that is playing") and the
caption is parsed once more; the new parse is kept only if it has an action (vtr.extract.parse). A
misread verb follows a noun or adjective and is a known verb (in the lemmatizer's verb index) in a form
that agrees: -ing, or -s after a singular noun or an adjective, or the base form after a plural noun
("two girls dance"). The inserted words are auxiliaries and relative pronouns, which no stream takes, so
phrases are unchanged except for the fix; the stored ``tree`` is the repaired parse. A clause head
(relcl, acl, advcl, xcomp, ccomp) tagged as a noun whose form is an inflected known verb counts as that
verb ("a cat that paws at a piano": "paws" is an NNS relcl; vtr.extract.parse_rules).
"""
from __future__ import annotations

from vtr.extract.parse_rules import _low, verb_stems
from vtr.extract.parse_words import CLAUSE_DEPS, DIRECTION_NOUNS


def repair_text(doc, verbs: frozenset) -> str | None:
    """The caption with a relative-clause cue before a verb the tagger took for a noun, or None.

    Only for docs without an action (module docstring).
    """
    found = None
    for prev, c in zip(doc, doc[1:]):
        if c.tag_.startswith("VB") and c.dep_ in CLAUSE_DEPS:
            continue  # already a verb (e.g. a framing verb): not a tagging error
        word = _low(c)
        if word in DIRECTION_NOUNS:  # "camera shifts right": "right" is no verb here
            continue
        if word.endswith("ing"):
            ok = prev.tag_ in ("NN", "NNS", "NNP", "JJ") and any(s in verbs for s in verb_stems(word))
        elif word.endswith("s"):  # agrees with a singular subject: "children toys" is no "children that toys"
            ok = prev.tag_ in ("NN", "NNP", "JJ") and any(s in verbs for s in verb_stems(word))
        else:  # a base form agrees with a plural subject: "two girls dance in a circle"
            ok = prev.tag_ == "NNS" and c.tag_ in ("NN", "NNS", "JJ") and word in verbs
        if ok:
            found = c  # the last one: the verb follows its subject and the subject's modifiers
    if found is None:
        return None
    cue = "that is " if _low(found).endswith("ing") else "that "
    return doc[: found.i].text_with_ws + cue + doc[found.i:].text
