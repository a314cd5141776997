"""Which settings differ between what a file was made with and what is asked now.

A cache, a synthetic dataset folder and a run folder each refuse to be continued with other settings;
this is the one comparison they share, so each can name exactly what differs.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping


def settings_diff(old: Mapping, new: Mapping, *, keys: Iterable[str] | None = None, depth: int | None = 0,
                  whole: Collection[str] = (), ignore: Collection[str] = (), adopt: Collection[str] = (),
                  one_sided: bool = False) -> list[tuple[str, object, object]]:
    """``(dotted key, old value, new value)`` of each setting that differs (a missing one reads None).

    keys: the top-level keys to compare, in this order (default: all of both, sorted; nested keys sorted).
    depth: how many levels of dict values to compare per sub-key (``dataset_settings.seed``) rather than
      whole; None: all levels. A dict is opened only where both sides hold one, unless ``one_sided``: then
      each side's sub-keys count on their own, against nothing on the other side.
    whole: dotted keys always compared whole; ignore: dotted keys never reported, nor anything under them.
    adopt: top-level keys that ``old`` may lack (settings added after it was made): no difference then.
    """
    if keys is None:
        keys = sorted(set(old) | set(new))
    keys = [k for k in keys if not (k in adopt and k not in old)]
    return list(_walk(old, new, keys, "", depth, set(whole), set(ignore), one_sided))


def _walk(old: Mapping, new: Mapping, keys: Iterable[str], prefix: str, depth: int | None, whole: set,
          ignore: set, one_sided: bool) -> Iterator[tuple[str, object, object]]:
    for k in keys:
        key, x, y = prefix + k, old.get(k), new.get(k)
        if key in ignore:
            continue
        opens = depth != 0 and key not in whole
        xd, yd = isinstance(x, dict), isinstance(y, dict)
        if opens and (xd and yd or one_sided and (xd or yd)):
            a, b = (x if xd else {}), (y if yd else {})
            yield from _walk(a, b, sorted(set(a) | set(b)), key + ".", None if depth is None else depth - 1,
                             whole, ignore, one_sided)
            if xd and yd:
                continue
            x, y = (None if xd else x), (None if yd else y)  # what is left of the side that is no dict
        if x != y:
            yield key, x, y
