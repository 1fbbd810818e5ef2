"""Is a caption usable? One definition, for the store's manifest and the analysis report.

$ python -c "from data_prep.caption_quality import caption_quality as q; print(q('a dogdogdog'))"

``caption_quality(text)`` is ``"empty"``, ``"degenerate"`` or ``"ok"``:

- *empty*: nothing but white space;
- *degenerate*: a generation loop or no text at all, i.e. any of
  - no letter at all ("123 456", "...");
  - one word repeated ("of of"), or one word more than half of four or more words
    ("a sketch of a a a a a");
  - a character or sub-word loop: a piece of 1-20 characters holding a letter, repeated at
    least three times back to back over at least six characters ("uxbuxbuxb",
    "owowowowow", "aaaaaa", "a dog a dog a dog ") -- the loops a model stuck on one
    sub-word token makes without any space, which the word counts cannot see.
- *ok*: anything else.

English words rarely hold the same piece three times in a row ("banana" holds "an" twice);
the six-character floor spares "zzz" and "www", and a unit must hold a letter so that
"1000000" or "......" inside a caption are not called loops.

Pure Python (no torch), so the analysis report imports it cheaply.
"""

from __future__ import annotations

import re
from collections import Counter

# A unit of 1-20 characters followed by at least two more copies of itself. The lazy unit
# finds the shortest period at each start ("aaaaaa" -> "a"), which is what the floor and
# the has-a-letter test below are meant for.
_LOOP = re.compile(r"(.{1,20}?)\1{2,}", re.DOTALL)
_MIN_LOOP_CHARS = 6
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-case words (letters, digits, apostrophes); what the word rules count."""
    return _WORD.findall(text.lower())


def has_loop(text: str) -> bool:
    """A 1-20 character piece with a letter, three or more times in a row, >= 6 chars."""
    for m in _LOOP.finditer(text.lower()):
        if len(m.group(0)) >= _MIN_LOOP_CHARS and any(ch.isalpha() for ch in m.group(1)):
            return True
    return False


def caption_quality(caption: str) -> str:
    """``"empty"``, ``"degenerate"`` or ``"ok"`` for one caption (prompt included or not)."""
    if not caption.strip():
        return "empty"
    if not any(ch.isalpha() for ch in caption):
        return "degenerate"
    w = words(caption)
    top = Counter(w).most_common(1)[0][1] if w else 0
    if (len(w) >= 2 and len(set(w)) == 1) or (len(w) >= 4 and top > len(w) / 2):
        return "degenerate"
    return "degenerate" if has_loop(caption) else "ok"


def is_degenerate(caption: str) -> bool:
    return caption_quality(caption) == "degenerate"
