"""Caption parsing: the rules on single captions, hand-labelled real captions, synthetic captions, the CLI."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from vtr.cli import main
from vtr.extract import parse as P
from vtr.extract.synthetic_captions import ACTIONS, CAPTION_NOUNS, SCENES, SHAPES, clip_plan

GOLD = Path(__file__).parent / "fixtures" / "parse_gold.jsonl"


def _load_gold_tool():
    """bench/parse_gold.py, the gold-scoring tool (bench/ holds scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "parse_gold.py"
    spec = importlib.util.spec_from_file_location("parse_gold", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


G = _load_gold_tool()


def lemmas(text):
    p = P.parse_caption(text)
    return set(p.action_lemmas), set(p.entity_lemmas), set(p.scene_lemmas)


# ----------------------------------------------------------------------------- rules, one caption each


def test_the_issue_example():
    p = P.parse_caption("a man is slicing a tomato in the kitchen")
    assert p.action == ("slicing a tomato",) and p.action_lemmas == ("slice",)  # no "is"
    assert p.entity == ("a man", "a tomato") and p.entity_lemmas == ("man", "tomato")
    assert p.scene == ("in the kitchen",) and p.scene_lemmas == ("kitchen",)


@pytest.mark.parametrize("text, action, entity, scene", [
    # auxiliaries, modals and copulas are no actions; particles and negation stay in the phrase
    ("a boy can not climb up the tree", {"climb"}, {"boy", "tree"}, set()),
    ("there is a dog on the beach", set(), {"dog"}, {"beach"}),
    # a locative preposition alone is no scene: the head noun must be a place
    ("a man is playing on the guitar", {"play"}, {"man", "guitar"}, set()),
    ("a woman in a red dress sings on stage", {"sing"}, {"woman", "dress"}, {"stage"}),
    # a place noun as a verb's object is a participant
    ("a man mows the lawn", {"mow"}, {"man", "lawn"}, set()),
    # relational nouns are looked through; time of day is a scene
    ("a group of people dance in front of the house at night", {"dance"}, {"people"}, {"house", "night"}),
    # framing and aspect verbs give way to the verb they frame
    ("a man is seen speaking to the camera", {"speak"}, {"man"}, set()),
    ("you can see a girl who starts to dance", {"dance"}, {"girl"}, set()),
    ("a video of a cat jumping in a snowy field", {"jump"}, {"cat"}, {"field"}),
    # direction and manner objects belong to the action, not to the entities
    ("a ball is moving to the left and spinning in place", {"move", "spin"}, {"ball"}, set()),
    ("a car turns to the right", {"turn"}, {"car"}, set()),
    # shot-joining verbs are dropped, but "cut" and "switch" are actions
    ("a man cutting the eggs into equal parts", {"cut"}, {"man", "egg", "part"}, set()),
    ("a potato is being cut", {"cut"}, {"potato"}, set()),
    ("a woman is seen followed by a dog running", {"run"}, {"woman", "dog"}, set()),
    # verb repair on a base form after a plural subject ("girls dance" read as a compound noun)
    ("two girls dance in a circle", {"dance"}, {"girl"}, set()),
])
def test_rules(text, action, entity, scene):
    assert lemmas(text) == (action, entity, scene)


def test_a_known_two_word_noun_is_one_noun_phrase():
    """The synthetic generator's "plus sign": spaCy reads "plus" as "and"; the generator's nouns say otherwise."""
    text = "a video of a lilac plus sign moving up"
    p = P.parse_captions([text], nouns=CAPTION_NOUNS)[0]
    assert (set(p.action_lemmas), set(p.entity_lemmas), set(p.scene_lemmas)) == ({"move"}, {"sign"}, set())
    assert p.entity == ("a lilac plus sign",)
    assert P.parse_caption(text).entity != p.entity  # the parser alone knows no such noun
    assert "plus sign" in CAPTION_NOUNS


def test_action_phrase_keeps_particle_direction_and_complement():
    assert P.parse_caption("a red circle moves to the left").action == ("moves to the left",)
    assert P.parse_caption("a blue square slides leftward").action == ("slides leftward",)
    assert P.parse_caption("a man picks up a box").action == ("picks up a box",)
    assert P.parse_caption("the star gets bigger").action == ("gets bigger",)


def test_verb_repair_on_a_verb_the_tagger_calls_a_noun():
    # the small model reads "square spins" as a compound noun; the repair reparses "a purple square that spins"
    p = P.parse_caption("A purple square spins on the water")
    assert p.action_lemmas == ("spin",) and p.entity == ("A purple square",) and p.scene == ("on the water",)
    assert "that" in p.tree  # the stored parse is the repaired one


def test_scene_rules_differ_as_documented():
    doc = P.load_nlp()("a woman in a red dress is singing on stage")
    assert P.extract(doc, "lexicon").scene_lemmas == ("stage",)
    assert set(P.extract(doc, "preposition").scene_lemmas) == {"dress", "stage"}
    with pytest.raises(ValueError, match="scene_rule"):
        P.extract(doc, "wordnet")


def test_to_dict_and_tree():
    p = P.parse_caption("a dog runs in the park")
    d = p.to_dict("a dog runs in the park")
    assert set(d) == {"caption", "action", "entity", "scene", "action_lemmas", "entity_lemmas", "scene_lemmas"}
    assert d["scene"] == ["in the park"] and d["scene_lemmas"] == ["park"]
    rows = [line.split("\t") for line in p.to_dict("x", tree=True)["tree"].splitlines()]
    assert [r[1] for r in rows] == ["a", "dog", "runs", "in", "the", "park"]
    assert rows[2][2:6] == ["run", "VBZ", "VERB", "ROOT"] and rows[1][6] == "2"  # dog's head is runs


def test_stored_tree_gives_the_same_parse_without_the_model():
    """A cache keeps Parse.tree: rules can be reapplied to it later without parsing again."""
    captions = [c for i in range(20) for c in clip_plan(0, i).captions] + [r["caption"] for r in G.read_gold(GOLD)]
    for p in P.parse_captions(captions):
        doc = P.doc_from_tree(p.tree)  # blank vocabulary: no model involved
        again = P.extract(doc)
        assert again == p and again.tree == p.tree
    with pytest.raises(ValueError, match="parse tree line 2"):
        P.doc_from_tree("0\ta\ta\tDT\tDET\tdet\t1\t1\n1\tdog\tdog\tNN")


def test_batches_and_processes_agree_with_single_captions():
    captions = [c for i in range(30) for c in clip_plan(1, i).captions] + ["  A man walks his dog.  ", ""]
    one = P.parse_captions(captions, n_process=1, batch_size=7, chunk_size=40)
    two = P.parse_captions(captions, n_process=2, chunk_size=40)  # forks two workers over 4 chunks
    assert one == two and len(one) == len(captions)
    assert one[-2] == P.parse_caption("A man walks his dog.")  # spaces around a caption do not matter
    assert one[-1] == P.Parse()  # an empty caption is an empty parse


def test_each_distinct_caption_is_parsed_once(monkeypatch):
    seen = []
    real = P._parse_batch
    monkeypatch.setattr(P, "_parse_batch", lambda texts, *a: seen.extend(texts) or real(texts, *a))
    out = P.parse_captions(["a dog runs", "a cat sleeps", "a  dog runs ", "a dog runs"])
    assert seen == ["a dog runs", "a cat sleeps"]
    assert out[0] == out[2] == out[3] != out[1] and out[1].action_lemmas == ("sleep",)


def test_model_info_and_missing_model():
    info = P.model_info()
    assert info["parser_model"] == P.MODEL_NAME and info["parser_model_version"] == P.MODEL_VERSION
    assert "ner" not in info["parser_components"] and "parser" in info["parser_components"]
    with pytest.raises(RuntimeError, match="pip install"):
        P.load_nlp("en_no_such_model_xyz")


# ----------------------------------------------------------------------------- synthetic captions


def test_synthetic_captions():
    """200 captions of 40 clips (every template): entity names the shape, action the verb, scene the place.

    Measured here 198 action, 200 entity, 199 scene of 200; on 1,000 captions of another seed 97.7%,
    98.7%, 99.2%. The misses are the small model's tagging ("a tile heads left": "heads" a noun, "left"
    the verb "leave"), so the bar, 96% per stream, sits just under the worst rate seen on a larger sample.
    """
    hits = {"action": 0, "entity": 0, "scene": 0}
    plans = [clip_plan(0, i) for i in range(40)]
    captions = [(s, c) for s in plans for c in s.captions]
    parses = P.parse_captions([c for _, c in captions], nouns=CAPTION_NOUNS)  # as vtr extract parses them
    for (plan, _), p in zip(captions, parses):
        verbs = {w for pair in ACTIONS[plan.action] for form in pair for w in form.split()[:1]}
        hits["action"] += any(ph.split()[0].lower() in verbs for ph in p.action)
        hits["entity"] += any(w in ph.lower() for ph in p.entity for w in SHAPES[plan.shape])
        hits["scene"] += any(w in ph.lower() for ph in p.scene for w in SCENES[plan.scene][1])
    assert len(captions) == 200
    assert all(n >= 192 for n in hits.values()), hits


# ----------------------------------------------------------------------------- hand-labelled real captions


def test_gold_fixture_is_real_and_cited():
    """>= 40 captions from all four datasets, each citing the file and line/id it was copied from."""
    from shared_data import annotations_dir

    ann = annotations_dir()
    rows = G.read_gold(GOLD)
    assert len(rows) >= 40
    assert {r["source"].split("/")[0] for r in rows} == {"msvd", "msrvtt", "activitynet", "didemo"}
    cache = {}

    def load(name):
        if name not in cache:
            path = ann / name
            cache[name] = json.loads(path.read_text()) if name.endswith(".json") else path.read_text().splitlines()
        return cache[name]

    for r in rows:
        src, cap = r["source"], r["caption"]
        if m := re.fullmatch(r"(msvd/\S+) line (\d+) \((vid\d+)\)", src):
            assert load(m[1])[int(m[2]) - 1] == f"{m[3]}\t{cap}", src
        elif m := re.fullmatch(r"(msrvtt/\S+\.json) sen_id (\d+) \((video\d+)\)", src):
            sen = {s["sen_id"]: s for s in load(m[1])["sentences"]}[int(m[2])]
            assert (sen["video_id"], sen["caption"]) == (m[3], cap), src
        elif m := re.fullmatch(r"(msrvtt/\S+\.csv) line (\d+) \((\w+), (\w+)\)", src):
            key, _, video_id, sentence = load(m[1])[int(m[2]) - 1].split(",", 3)
            assert (key, video_id, sentence) == (m[3], m[4], cap), src
        elif m := re.fullmatch(r"(activitynet/\S+) (\S+) sentence (\d+)", src):
            assert load(m[1])[m[2]]["sentences"][int(m[3])] == cap, src
        elif m := re.fullmatch(r"(didemo/\S+) annotation_id (\d+) \((.+)\)", src):
            rec = {a["annotation_id"]: a for a in load(m[1])}[int(m[2])]
            assert (rec["video"], rec["description"]) == (m[3], cap), src
        else:
            pytest.fail(f"unrecognised source {src!r}")


# Measured on the 78 captions (55 dev, used while writing the rules; 23 held out, labelled before the
# parser ever saw them; one later bug fix, "cut"/"switch" wrongly dropped as shot transitions, found on
# MSVD captions, also fixed one held-out head):
#   action P 0.980 R 0.934 | entity P 0.920 R 0.955 | scene P 0.929 R 0.867
# Each bar is 3-5 points below: 2-5 more wrong heads per stream (106/156/30 gold heads), room for a
# tagging change on a couple of captions, while a broken rule (say aux verbs back in, or scenes by
# preposition alone, P 0.46) fails at once.
BARS = {"action": (0.93, 0.88), "entity": (0.87, 0.91), "scene": (0.85, 0.78)}


def test_precision_recall_on_hand_labelled_real_captions():
    gold = G.read_gold(GOLD)
    scores = G.score(gold, P.parse_captions([r["caption"] for r in gold]))
    print("\n" + G.format_scores(scores, "gold (all)"))
    for stream, (p_bar, r_bar) in BARS.items():
        assert scores[stream]["precision"] >= p_bar, (stream, scores[stream])
        assert scores[stream]["recall"] >= r_bar, (stream, scores[stream])
    held = [r for r in gold if r["split"] == "heldout"]
    held_scores = G.score(held, P.parse_captions([r["caption"] for r in held]))
    # the held-out 23 only guard against overfitting the dev set: one bar for all streams
    assert all(v["precision"] >= 0.8 and v["recall"] >= 0.75 for v in held_scores.values()), held_scores


def test_scene_lexicon_beats_bare_prepositions():
    gold = G.read_gold(GOLD)
    texts = [r["caption"] for r in gold]
    lex = G.score(gold, P.parse_captions(texts, scene_rule="lexicon"))["scene"]
    prep = G.score(gold, P.parse_captions(texts, scene_rule="preposition"))["scene"]
    assert lex["precision"] - prep["precision"] >= 0.3  # measured 0.93 vs 0.46
    assert lex["recall"] >= prep["recall"] - 0.05  # at no real cost in recall (measured equal)


def test_gold_report_and_reader_errors(tmp_path, capsys):
    assert G.main(["--gold", str(GOLD)]) == 0
    out = capsys.readouterr().out
    assert "heldout (23 captions)" in out and "scene_rule=preposition" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "a", "action_lemmas": [], "entity_lemmas": [], "scene_lemmas": []}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        G.read_gold(bad)
    bad.write_text('{"caption": "a", "action_lemmas": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing entity_lemmas, scene_lemmas"):
        G.read_gold(bad)


# ----------------------------------------------------------------------------- vtr parse


def run(*args, **kw):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kw)


def test_cli_one_caption():
    r = run("parse", "a man is slicing a tomato in the kitchen")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1].split() == ["action", "slicing", "a", "tomato", "[slice]"]
    assert "a tomato  [tomato]" in r.output and lines[-1].split() == ["scene", "in", "the", "kitchen", "[kitchen]"]
    r = run("parse", "--tree", "a dog runs")
    assert "parse" in r.output and "ROOT" in r.output


def test_cli_jsonl(tmp_path):
    src = tmp_path / "caps.txt"
    src.write_text("a man is slicing a tomato in the kitchen\n\na dog runs in the park\n")
    r = run("parse", "--jsonl", str(src), "--quiet")
    assert r.exit_code == 0
    recs = [json.loads(line) for line in r.output.splitlines()]
    assert [d["caption"] for d in recs] == ["a man is slicing a tomato in the kitchen", "a dog runs in the park"]
    assert recs[1]["action_lemmas"] == ["run"] and recs[1]["scene"] == ["in the park"]
    out = tmp_path / "out.jsonl"
    r = run("parse", "--jsonl", "-", "--out", str(out), "--quiet", input="children are dancing\n")
    assert r.exit_code == 0 and json.loads(out.read_text())["entity_lemmas"] == ["child"]


def test_cli_errors(tmp_path):
    assert run("parse").exit_code == 2  # neither a caption nor --jsonl
    assert run("parse", "x", "--jsonl", "-").exit_code == 2  # both
    assert run("parse", "x", "--out", "o.jsonl").exit_code == 2
    r = run("parse", "--jsonl", str(tmp_path / "nope.txt"))
    assert r.exit_code == 1 and "nope.txt: no such file" in r.output
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"a man\na caf\xe9 scene\n")
    r = run("parse", "--jsonl", str(bad))
    assert r.exit_code == 1 and "latin1.txt:2: not UTF-8" in r.output
    assert "--jsonl" in run("parse", "--help").output
