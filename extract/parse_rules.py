"""The rules that turn one spaCy Doc into a caption's action, entity and scene phrases (a `Parse`).

They read spaCy's dependency parse and are written for how real video captions look: often lower-cased
without punctuation ("a man is slicing a tomato"), sometimes long paragraphs (ActivityNet).

PARSER_VERSION names this rule set: change it whenever a rule or a word list (vtr.extract.parse_words)
changes the parse of a caption. A caption whose verb the tagger read as a noun gets a second parse
(vtr.extract.parse_repair).

Action: every content verb, i.e. a token tagged ``VB*`` in a clause position (ROOT, conj, xcomp, ccomp,
advcl, acl, relcl, pcomp, csubj, parataxis, dep), except
  - auxiliaries and passive auxiliaries (dep ``aux``/``auxpass``: "is slicing", "does not move", "can see"),
  - "be" in any role (copula or existential: "there is a man", "a man is happy"),
  - framing verbs (FRAME_VERBS: see, show, ...) that frame the video rather than name an action: when passive
    ("a man is seen speaking"), when their subject is the viewer ("you can see ..."), or when they take a
    clause ("shows how to cook"). "a man shows a bowl" stays an action,
  - narrative verbs (NARRATIVE_VERBS: lead, follow, fade ...) that join shots: passive ("is seen followed
    by a man") or with "into"/"to" ("leads into a woman hosting ..."); "dogs leading children" stays,
  - aspect verbs (ASPECT_VERBS: start, begin, continue, proceed, try, go ...) that take a verb complement:
    "starts to dance" is the action "dance" ("goes up" is still "go"),
  - participles used as noun modifiers (dep ``amod``: "a sliced tomato") and verbs in noun positions.
  The phrase is the verb with its particle ("climbs up"), negation ("not move"), adjective complement
  ("gets bigger", "stays still"), direct object's noun phrase ("slicing a tomato"), direction adverbs
  (DIRECTION_WORDS: "walks away") and prepositional phrases whose object is a direction or manner
  noun ("moves to the left", "spins in place"), in sentence order. Its lemma is the verb's lemma.

Entity: the noun phrase (determiners, adjectives such as colours, compounds, numbers, possessives on its
left, e.g. "a red circle") of every nominal (subject, object, prepositional object, attribute,
apposition, conjunct of one, or a noun at the root of a verbless caption) that is not a scene, except
  - personal and relative pronouns ("he", "it", "that", "you") and PRONOUN_LIKE words ("each other",
    "another", and the "s" that "it's" leaves in punctuation-free captions),
  - the video itself: FRAME_NOUNS ("the view is ...", "the video ends") and "camera" ("speaks to the
    camera", "camera zooms in"), unless a direct object ("a man holds a camera"),
  - container nouns followed by "of" (FRAME_NOUNS "a video of ...", QUANTITY_NOUNS "a group of people",
    RELATIONAL_NOUNS "in front of ..."): the noun after "of" is the participant,
  - direction, manner and time nouns as prepositional objects ("to the left", "in place", "at the end"),
    which belong to the action or to no stream.
  A two-word noun the captions' source knows (``nouns``, e.g. the synthetic generator's "plus sign") is
  one noun phrase, not a conjunction of two participants, when spaCy reads its first word as "and".
  Its lemma is the head noun's lemma.

Scene: where it happens. A nominal is a scene when its head lemma is in SCENE_NOUNS (places, settings,
backgrounds; a closed list because WordNet is not available) and it is
  - the object of a locative preposition (LOCATIVE_PREPS: in, on, at, under, across, against ...),
    also through a relational noun ("in front of the house", "on the side of the road"), or
  - not an argument of a verb: a verbless caption's root ("a busy street"), an attribute ("this is a
    beach"), the object of a framing noun ("a video of a beach") or the subject of a framing verb ("a
    large room is seen"). As an action's subject or object it is a participant ("a man mows the lawn"),
    and after a non-locative preposition too ("a glass of water").
  Time of day (TIME_OF_DAY: night, evening, sunset ...) after at/in/during/by/through/under is a scene too
  ("at night"). Conjuncts share the role and the preposition of the first conjunct ("in the kitchen and
  the living room"). The phrase is the preposition and the noun phrase ("in the kitchen"); the lemma is
  the head noun's lemma. The rule ``scene_rule="preposition"`` (any object of a locative preposition is
  a scene, no word list) exists only to measure against: it turns "a woman in a red dress" into a scene.
"""
from __future__ import annotations

from vtr.extract.parse_tree import Parse, tree_of
from vtr.extract.parse_words import (ARGUMENT_DEPS, ASPECT_VERBS, CLAUSE_DEPS, DIRECTION_NOUNS,
                                     DIRECTION_WORDS, FRAME_NOUNS, FRAME_VERBS, LOCATIVE_PREPS, MANNER_NOUNS,
                                     NARRATIVE_VERBS, NOMINAL_DEPS, NOUN_POS, NP_LEFT_DEPS, PRONOUN_LIKE,
                                     QUANTITY_NOUNS, RELATIONAL_NOUNS, SCENE_NOUNS, TIME_NOUNS, TIME_OF_DAY,
                                     TIME_PREPS, VIEWER_SUBJECTS)

PARSER_VERSION = "2"  # bump when any rule or word list changes: the cache treats it as a new setting
_JOINED = "vtr_joined_nouns"  # Doc.user_data key: a known noun's conjunct index -> its first word's index


def _lemma(t) -> str:
    return t.lemma_.lower()


def _low(t) -> str:
    return t.text.lower()  # not t.lower_: a Doc rebuilt from a tree on a blank Vocab has no lex attributes


def _span_text(tokens) -> str:
    """Tokens in sentence order, with the caption's own spacing where they are adjacent."""
    tokens = sorted(set(tokens), key=lambda t: t.i)
    while tokens and tokens[0].pos_ == "PUNCT":  # ", a red circle" when a comma hangs on the head
        tokens = tokens[1:]
    while tokens and tokens[-1].pos_ == "PUNCT":
        tokens = tokens[:-1]
    out = []
    for a, b in zip(tokens, tokens[1:] + [None]):
        out.append(a.text)
        if b is not None:
            out.append(a.whitespace_ if b.i == a.i + 1 else " ")
    return "".join(out).strip()


def _np_tokens(t) -> list:
    """A nominal's noun phrase: the head and its left modifiers (with their subtrees), e.g. "a red circle"."""
    prev = _joined_before(t)
    if prev is not None:
        return _np_tokens(prev) + [t.doc[t.i - 1], t]
    left = t.i
    for c in t.lefts:
        if c.dep_ in NP_LEFT_DEPS:
            left = min(left, c.left_edge.i)
    return list(t.doc[left: t.i + 1])


def _of_object(t):
    """The object of an "of" hanging on t ("a group of people" -> people), or None."""
    for c in t.rights:
        if c.dep_ == "prep" and _lemma(c) == "of":
            for g in c.children:
                if g.dep_ == "pobj":
                    return g
    return None


def _noun_tagged_verb(t, verbs: frozenset) -> str | None:
    """The verb lemma of a clause head tagged as a noun ("that shrinks": relcl but NNS), else None."""
    if t.tag_ in ("NN", "NNS") and t.dep_ in ("relcl", "acl", "advcl", "xcomp", "ccomp"):
        return next((s for s in verb_stems(_low(t)) if s in verbs), None)
    return None


def _verb_lemma(t, verbs: frozenset) -> str | None:
    """The lemma of a content-verb candidate, or None when t is no verb in a clause position."""
    if t.dep_ not in CLAUSE_DEPS or _low(t) in DIRECTION_NOUNS or _joined_before(t) is not None:
        # "left"/"right" after a verb are directions ("travels left"), which the tagger reads as "leave".
        return None
    lemma = _lemma(t) if t.tag_.startswith("VB") else _noun_tagged_verb(t, verbs)
    return None if lemma == "be" else lemma


def _has_verb_complement(t) -> bool:
    return any(c.dep_ in ("xcomp", "ccomp") and c.tag_.startswith("VB") for c in t.children)


def _is_action(t, verbs: frozenset = frozenset()) -> bool:
    lemma = _verb_lemma(t, verbs)
    if lemma is None:
        return False
    if _low(t) in PRONOUN_LIKE:
        return False
    passive = any(c.dep_ in ("auxpass", "nsubjpass", "agent") for c in t.children)
    if lemma in NARRATIVE_VERBS:  # "leads into a woman talking", "is seen followed by a man speaking"
        if passive or any(c.dep_ == "prep" and _lemma(c) in ("into", "to") for c in t.children):
            return False
    if lemma in FRAME_VERBS:
        viewer = any(c.dep_ == "nsubj" and _lemma(c) in VIEWER_SUBJECTS | FRAME_NOUNS for c in t.children)
        clause = _has_verb_complement(t) or any(
            c.dep_ == "dobj" and any(g.dep_ in ("acl", "relcl") for g in c.children) for c in t.children)
        if passive or viewer or clause:
            return False
    if lemma in ASPECT_VERBS and _has_verb_complement(t):
        return False
    return True


def _joined_before(t):
    """The word before a known noun ("plus sign") that spaCy read as a coordination ending in t, or None."""
    joined = t.doc.user_data.get(_JOINED)
    return t.doc[joined[t.i]] if joined and t.i in joined else None


def _join_nouns(doc, nouns: frozenset) -> None:
    """Mark each known two-word noun of ``nouns`` that spaCy split into "and" and a conjunct."""
    doc.user_data[_JOINED] = {t.i: t.i - 2 for t in doc if t.dep_ == "conj" and t.i >= 2
                              and f"{_low(doc[t.i - 1])} {_low(t)}" in nouns and doc[t.i - 1].dep_ == "cc"}


def _is_nominal(t) -> bool:
    # A known noun joins no two participants: "a plus sign" is one noun phrase headed by "sign".
    joined_after = t.i + 2 < len(t.doc) and _joined_before(t.doc[t.i + 2]) == t
    return _nominal_position(t) and not joined_after


def _nominal_position(t) -> bool:
    if t.dep_ == "conj":
        noun = t.pos_ in NOUN_POS | {"PRON"} or _joined_before(t) is not None  # "sign" tagged VB
        return _nominal_position(t.head) and noun
    if t.dep_ == "ROOT":
        return t.pos_ in NOUN_POS
    if t.dep_ not in NOMINAL_DEPS:
        return False
    # The tagger sometimes calls a noun a verb in lower-case captions ("practicing karate"); trust the arc.
    return t.pos_ in NOUN_POS | {"PRON"} or (t.tag_ in ("VB", "VBP", "VBZ", "JJ")
                                             and t.dep_ in ("pobj", "dobj", "nsubj"))


def _first_conjunct(t):
    while t.dep_ == "conj" and _nominal_position(t.head):
        t = t.head
    return t


def _governing_prep(t):
    """The preposition a nominal hangs on, looking through relational nouns: "in front of the house" -> in."""
    if t.dep_ != "pobj":
        return None
    prep = t.head
    owner = prep.head
    if _lemma(prep) == "of" and _lemma(owner) in RELATIONAL_NOUNS and owner.dep_ == "pobj":
        return owner.head
    return prep


def _role(t, scene_rule: str) -> str | None:
    """'entity', 'scene' or None for a nominal token."""
    lemma = _lemma(t)
    first = _first_conjunct(t)
    if (t.pos_ == "PRON" and t.tag_ != "NN") or lemma in PRONOUN_LIKE:  # "someone" is tagged NN: kept
        return None
    if lemma in FRAME_NOUNS | {"camera"} and first.dep_ != "dobj":
        return None  # the video itself ("the view is ...", "camera zooms in"); "holds a camera" stays
    if _of_object(t) is not None and lemma in FRAME_NOUNS | QUANTITY_NOUNS | RELATIONAL_NOUNS:
        return None
    prep = _governing_prep(first)
    if prep is not None and prep.head.pos_ in ("VERB", "AUX") and lemma in DIRECTION_NOUNS | MANNER_NOUNS:
        return None  # "moves to the left", "spins in place": part of the action
    if prep is not None and lemma in TIME_NOUNS and _lemma(prep) != "of":
        return None  # "at the end", "in the meantime"
    locative = prep is not None and _lemma(prep) in LOCATIVE_PREPS
    if scene_rule == "preposition":
        return "scene" if locative or (lemma in TIME_OF_DAY and prep is not None) else "entity"
    if lemma in TIME_OF_DAY and (prep is None or _lemma(prep) in TIME_PREPS):
        return "scene"
    if lemma in SCENE_NOUNS:
        if locative:
            return "scene"
        if first.dep_ in ("ROOT", "attr", "appos"):
            return "scene"
        if first.dep_ in ARGUMENT_DEPS and _lemma(first.head) in FRAME_VERBS and not _is_action(first.head):
            return "scene"  # "a large room is seen": not the argument of an action
        if first.dep_ == "pobj" and _lemma(first.head) == "of" and _lemma(first.head.head) in FRAME_NOUNS:
            return "scene"
    return "entity"


def _action_phrase(v) -> list:
    tokens = [v]
    for c in v.children:
        d = c.dep_
        if d in ("prt", "neg"):
            tokens.append(c)
        elif d in ("acomp", "oprd") and len(list(c.subtree)) <= 3:
            tokens.extend(c.subtree)
        elif d == "dobj" and (c.pos_ in NOUN_POS or c.tag_ in ("VB", "VBP", "VBZ", "JJ")):
            tokens.extend(_np_tokens(c))
            of = _of_object(c)
            if of is not None and _lemma(c) in QUANTITY_NOUNS | FRAME_NOUNS:  # "picks a bunch of grapes"
                tokens.extend(t for t in v.doc[c.i: of.i + 1])
        elif d in ("advmod", "npadvmod") and _lemma(c) in DIRECTION_WORDS:
            tokens.append(c)
        elif d == "prep":
            objs = [g for g in c.children if g.dep_ == "pobj"]
            if objs and _lemma(objs[0]) in DIRECTION_NOUNS | MANNER_NOUNS:  # "to the left", not what follows
                tokens.extend([c] + _np_tokens(objs[0]))
    return tokens


def _scene_phrase(t, first) -> list:
    prep = _governing_prep(first)
    np = _np_tokens(t)
    if prep is None:
        return np
    if t == first and prep.i < t.i and t.i - prep.i <= 7:  # "in front of the house": the whole stretch
        return list(t.doc[prep.i: t.i + 1])
    return [prep] + np


def extract(doc, scene_rule: str = "lexicon", verbs: frozenset | None = None,
            nouns: frozenset = frozenset()) -> Parse:
    """Apply the rules (module docstring) to one spaCy Doc.

    ``verbs``: the known verb lemmas for noun-tagged clause heads (default: the model's verb index).
    ``nouns``: two-word nouns (lower case, "plus sign") that the captions' source knows to be one noun.
    """
    if verbs is None:
        from vtr.extract.parse_model import verb_index

        verbs = verb_index()
    if scene_rule not in ("lexicon", "preposition"):
        raise ValueError(f"scene_rule must be 'lexicon' or 'preposition', not {scene_rule!r}")
    _join_nouns(doc, nouns)
    streams = {"action": [], "entity": [], "scene": []}
    for t in doc:
        if _is_action(t, verbs):
            streams["action"].append((_span_text(_action_phrase(t)), _verb_lemma(t, verbs)))
        elif _is_nominal(t):
            role = _role(t, scene_rule)
            if role == "entity":
                streams["entity"].append((_span_text(_np_tokens(t)), _lemma(t)))
            elif role == "scene":
                streams["scene"].append((_span_text(_scene_phrase(t, _first_conjunct(t))), _lemma(t)))
    out = {}
    for name, items in streams.items():
        seen = dict.fromkeys(items)  # drop exact repeats, keep order
        out[name] = tuple(p for p, _ in seen)
        out[f"{name}_lemmas"] = tuple(lem for _, lem in seen)
    return Parse(**out, tree=tree_of(doc))


def verb_stems(word: str) -> list[str]:
    """The base forms an -ing or -s form may come from ("slicing": slic, slice)."""
    if word.endswith("ing") and len(word) > 5:
        w = word[:-3]
        return [w, w + "e", w[:-1]] if len(w) > 2 and w[-1] == w[-2] else [w, w + "e"]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return [word[:-1], word[:-2], word[:-3] + "y"] if word.endswith("ies") else [word[:-1], word[:-2]]
    return []
