"""A caption's parse as the cache stores it: the phrases of each stream and the dependency tree as text.

The tree is kept so that changed rules can be reapplied to a cache without the model (`doc_from_tree`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

STREAMS = ("action", "entity", "scene")


@dataclass(frozen=True)
class Parse:
    """The phrases and head lemmas of one caption, plus the parse itself (``tree``).

    ``tree`` is what the cache stores as "the parse": one line per token,
    ``index<TAB>text<TAB>lemma<TAB>tag<TAB>pos<TAB>dep<TAB>head index<TAB>space after (1/0)``.
    :func:`doc_from_tree` turns it back into a Doc without the model, so changed rules can be applied
    to a cache without parsing again. ``tree`` does not take part in equality.
    """

    action: tuple[str, ...] = ()
    entity: tuple[str, ...] = ()
    scene: tuple[str, ...] = ()
    action_lemmas: tuple[str, ...] = ()
    entity_lemmas: tuple[str, ...] = ()
    scene_lemmas: tuple[str, ...] = ()
    tree: str = field(default="", compare=False, repr=False)

    def to_dict(self, caption: str, tree: bool = False) -> dict:
        """The JSON-lines record: the caption, the three phrase lists and the three lemma lists."""
        d = {"caption": caption, **{k: list(v) for k, v in asdict(self).items() if k != "tree"}}
        if tree:
            d["tree"] = self.tree
        return d


TREE_FIELDS = ("i", "text", "lemma", "tag", "pos", "dep", "head", "space")


def tree_of(doc) -> str:
    """The Doc as ``Parse.tree`` text (see `Parse`)."""
    return "\n".join("\t".join((str(t.i), t.text, t.lemma_, t.tag_, t.pos_, t.dep_, str(t.head.i),
                                 "1" if t.whitespace_ else "0")) for t in doc)


def doc_from_tree(tree: str, vocab=None):
    """A spaCy Doc with the words, lemmas, tags, POS and dependencies of a stored ``Parse.tree``.

    Needs only spaCy (a blank vocabulary by default), not the model: ``extract(doc_from_tree(t))``
    reapplies the rules to a stored parse. A malformed tree raises ValueError naming the line.
    """
    from spacy.tokens import Doc
    from spacy.vocab import Vocab

    rows = [line.split("\t") for line in tree.splitlines()] if tree else []
    for n, r in enumerate(rows):
        if len(r) != len(TREE_FIELDS) or r[0] != str(n) or not r[6].isdigit() or int(r[6]) >= len(rows):
            raise ValueError(f"parse tree line {n + 1}: expected {len(TREE_FIELDS)} tab-separated fields "
                             f"({', '.join(TREE_FIELDS)}), got {len(r)} fields: {r!r}")
    return Doc(vocab or Vocab(), words=[r[1] for r in rows], spaces=[r[7] == "1" for r in rows],
               lemmas=[r[2] for r in rows], tags=[r[3] for r in rows], pos=[r[4] for r in rows],
               deps=[r[5] for r in rows], heads=[int(r[6]) for r in rows])
