"""fastText-style subword features: each word's character n-grams hashed into buckets.

Bojanowski et al., "Enriching Word Vectors with Subword Information", TACL 2017: a word is
``<word>`` plus its character n-grams (3 to 5 characters here); each n-gram is hashed into one
of ``buckets`` rows of an embedding table. Words never seen in training (and misspellings) still
get a vector from the n-grams they share with known words. Bucket 0 is padding.

This module imports no torch; the hash (CRC-32) is stable across processes and machines.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

MIN_N = 3
MAX_N = 5
MAX_GRAMS = 48  # the longest words keep their first 48 n-grams


@lru_cache(maxsize=65536)
def _grams(word: str, buckets: int) -> tuple[int, ...]:
    marked = f"<{word}>"
    grams = [marked]
    for n in range(MIN_N, MAX_N + 1):
        # Stop as soon as MAX_GRAMS are collected: a very long "word" (a 10 MB line without a
        # space) costs a few dozen slices, not one per character.
        for i in range(len(marked) - n + 1):
            if len(grams) >= MAX_GRAMS:
                break
            gram = marked[i : i + n]
            if gram != marked:
                grams.append(gram)
    return tuple(1 + zlib.crc32(g.encode("utf-8")) % buckets for g in grams)


def subword_ids(word: str, buckets: int) -> tuple[int, ...]:
    """Bucket indices (1..buckets) of ``word`` and its character 3- to 5-grams (a shared, cached tuple)."""
    if buckets <= 0:
        return ()
    return _grams(word, buckets)
