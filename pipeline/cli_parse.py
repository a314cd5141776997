"""`vtr parse`: captions split into the action, entity and scene phrases CAMoE's text streams use."""
from __future__ import annotations

import json
from pathlib import Path

import click

from vtr.cli_common import fail, log


def _read_caption_lines(path: Path) -> list[str]:
    """One caption a line (UTF-8, blank lines skipped); '-' reads stdin (click.open_file)."""
    if not (str(path) == "-" or path.is_file()):
        raise click.ClickException(f"{path}: no such file")
    captions = []
    with click.open_file(str(path), "rb") as stream:
        for n, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise click.ClickException(f"{path}:{n}: not UTF-8 ({e.reason})") from None
            if line:
                captions.append(line)
    return captions


@click.command(name="parse")
@click.argument("caption", required=False)
@click.option("--jsonl", "jsonl_path", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="Parse a file with one caption a line ('-': stdin; blank lines skipped) and write one JSON "
                   "object a line: caption, action, entity, scene and their *_lemmas.")
@click.option("--out", type=click.File("w", encoding="utf-8", lazy=True),
              help="With --jsonl: write the JSON lines to this file instead of stdout.")
@click.option("--workers", type=int, help="With --jsonl: parser processes. Default: one per core, used only "
                                          "when each gets at least 2,000 captions.")
@click.option("--batch-size", default=512, show_default=True, help="Captions per nlp.pipe batch.")
@click.option("--tree", is_flag=True, help="Also show the dependency parse (JSON: a 'tree' field).")
@click.option("--quiet", is_flag=True, help="No progress bar on stderr.")
def parse_cmd(caption, jsonl_path, out, workers, batch_size, tree, quiet):
    """Split captions into action, entity and scene phrases with spaCy (the CAMoE text streams).

    \b
    vtr parse "a man is slicing a tomato in the kitchen"
    vtr parse --jsonl captions.txt --out parses.jsonl

    Actions are content verbs with particles, objects and directions; entities are the participants'
    noun phrases; scenes are where it happens. The lemmas are the heads. Rules: extract/parse_rules.py.
    """
    from vtr.extract.parse import PARSER_VERSION, STREAMS, parse_captions

    if (caption is None) == (jsonl_path is None):
        raise click.UsageError("give a CAPTION or --jsonl FILE (one of the two)")
    if out and not jsonl_path:
        raise click.UsageError("--out goes with --jsonl")
    try:
        if caption is not None:
            p = parse_captions([caption], batch_size=batch_size)[0]
            click.echo(f"caption  {caption}")
            for s in STREAMS:
                pairs = list(zip(getattr(p, s), getattr(p, f"{s}_lemmas")))
                lines = [f"{phrase}  [{lemma}]" for phrase, lemma in pairs] or ["(none)"]
                for i, line in enumerate(lines):
                    click.echo(f"{s if i == 0 else '':<8} {line}")
            if tree:
                click.echo("parse    (index, text, lemma, tag, dep, head)")
                click.echo("\n".join("         " + row for row in p.tree.splitlines()))
            return
        captions = _read_caption_lines(jsonl_path)
        parses = parse_captions(captions, batch_size=batch_size, n_process=workers, progress=not quiet)
    except RuntimeError as e:  # the spaCy model is missing
        fail(e)
    sink = out or click.get_text_stream("stdout")
    for text, p in zip(captions, parses):
        sink.write(json.dumps(p.to_dict(text, tree=tree), ensure_ascii=False) + "\n")
    if out:
        out.close()
        log(f"wrote {len(parses)} parses to {out.name} (parser rules v{PARSER_VERSION})")
