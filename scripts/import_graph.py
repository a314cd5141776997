"""The import graph of vtr's stages, read by grimp (the library behind import-linter), and the rules it keeps.

setup.cfg maps each top-level folder to a part of the `vtr` namespace (pipeline/ is `vtr`, extract/ is
`vtr.extract`, ...). Tools that read imports walk one package folder, so this script first lays the
folders out as one `vtr` tree of symlinks in a temporary folder, then lets grimp read every import in it,
those inside functions included.

    python scripts/import_graph.py             # arrows between stages, cycles, rule breaks; exit 1 on any
    python scripts/import_graph.py --mermaid   # the stage diagram for docs/architecture.md
"""
from __future__ import annotations

import argparse
import configparser
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Low to high. A module may import its own stage and the stages below it; extract and train share a rank
# and may not import each other.
RANKS = {"core": 0, "cache": 1, "extract": 2, "train": 2, "eval": 3, "search": 4, "pipeline": 5}


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    pairs = (line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines())
    return {name.strip(): root / folder.strip() for name, folder in pairs}


def mirror(root: Path, dest: Path) -> None:
    """dest/vtr/...: the installed package's layout, every .py file a symlink to the repository's."""
    for package, folder in package_dirs(root).items():
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for f in folder.glob("*.py"):
            (target / f.name).symlink_to(f)


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS and parts[1] != "pipeline" else "pipeline"


def edges_from_grimp() -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import between vtr's modules; run where the mirror is on sys.path."""
    import grimp

    graph = grimp.build_graph("vtr", cache_dir=None)
    out = []
    for m in sorted(graph.modules):
        for target in sorted(graph.find_modules_directly_imported_by(m)):
            details = graph.get_import_details(importer=m, imported=target)
            out.append((m, target, min((d["line_number"] for d in details), default=0)))
    return out


def read_edges(root: Path = ROOT) -> list[tuple[str, str, int]]:
    """Build the mirror and read the graph in a fresh interpreter, where `vtr` resolves to the mirror."""
    with tempfile.TemporaryDirectory() as tmp:
        mirror(root, Path(tmp))
        env = dict(os.environ, PYTHONPATH=tmp)
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import import_graph as g; "
                "print(json.dumps(g.edges_from_grimp()))")
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env, check=True,
                             capture_output=True, text=True).stdout
    import json

    return [tuple(e) for e in json.loads(out)]


def cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    graph: dict[str, list[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif nxt not in index:
                index[nxt] = low[nxt] = counter[0]
                counter[0] += 1
                stack.append(nxt)
                on_stack.add(nxt)
                work.append((nxt, iter(graph[nxt])))
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
    return found


def rule_breaks(edges) -> list[str]:
    """Imports from a stage to one above it, or between extract and train."""
    bad = []
    for a, b, line in edges:
        sa, sb = stage(a), stage(b)
        if sa != sb and RANKS[sb] >= RANKS[sa]:
            bad.append(f"{a} (line {line}) imports {b}: {sa} may not depend on {sb}")
    return bad


def stage_arrows(edges) -> Counter:
    return Counter((stage(a), stage(b)) for a, b, _ in edges if stage(a) != stage(b))


def mermaid(arrows: Counter) -> str:
    lines = ["flowchart TD"]
    lines += [f"    {a} -->|{n}| {b}" for (a, b), n in sorted(arrows.items(), key=lambda x: (-RANKS[x[0][0]], x[0]))]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mermaid", action="store_true", help="print the stage diagram as a Mermaid flowchart")
    args = ap.parse_args()
    edges = read_edges()
    arrows = stage_arrows(edges)
    if args.mermaid:
        print(mermaid(arrows))
        return 0
    modules = {m for e in edges for m in e[:2]}
    print(f"{len(modules)} modules, {len(edges)} imports between them; between stages (importer -> imported: count):")
    for (a, b), n in sorted(arrows.items(), key=lambda x: (-RANKS[x[0][0]], x[0])):
        print(f"  {a:>8} -> {b:<8} {n}")
    found, bad = cycles(edges), rule_breaks(edges)
    for c in found:
        print("cycle: " + " -> ".join(c))
    for b in bad:
        print("rule broken: " + b)
    print(f"{len(found)} cycles, {len(bad)} imports against the stage order")
    return 1 if found or bad else 0


if __name__ == "__main__":
    sys.exit(main())
