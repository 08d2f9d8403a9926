"""Chat-like message text for the scenarios that measure message size (``large-messages``, ``--message-bytes``).

What a compressor makes of a message depends on its text, so the text is chosen to compress the way chat does,
neither better nor worse: sentences of 4-18 words drawn independently from a vocabulary of 250 common chat
words, weighted by Zipf's law (the word of rank r is drawn with weight 1/r, as words occur in English), with a
capital, an end mark and now and then a number. Words drawn independently repeat no phrases, so LZ77 finds
fewer matches than in real prose, and the Huffman stage still finds the skewed letter and word frequencies:
deflate shrinks 4 KB of it about 2.4x (zlib level 6, no context), as it does 4 KB of English prose. Random bytes
(which do not compress at all) and one repeated character (which compresses about 100x) would both say
nothing about a chat server. The text is ASCII with no quote, backslash or control character, so JSON carries it
as it is: a message of N characters is N bytes of content on the wire.
"""

from __future__ import annotations

import itertools
import random

# Roughly by frequency in chat: the Zipf weights follow this order.
_WORDS = """
the i you to a and it is that of in for on this we be have with so not but just can do at are my was if me what
it's all get there like no your they he will know one about up out i'm don't think good go time now would see how
well yeah when people also then our more some an from new back work should really make could or today thanks
need want by going right here did been because still which look any first week got over after day let's okay sure
call meeting team build test release deploy fix bug issue branch merge review code server client message room
chat user thing tomorrow morning yesterday later before lunch coffee maybe probably sounds great nice cool please
update link doc docs file log error config change version check try again said tell ask help question answer idea
plan problem next last long little big small old ever never always every other same different sorry yes lol haha
wait done working looks fine free busy home office weekend friday monday pm am minutes hours soon already yet
though anyone someone everyone something nothing why where who they're can't didn't isn't won't doesn't that's
we're you're there's agree works broke broken green red running stuck slow fast quick weird strange actually
basically exactly totally hey definitely almost enough pretty quite very much many few lot lots hi things ticket
mail sent read write job github
"""
VOCABULARY = _WORDS.split()
_CUMULATIVE = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(VOCABULARY))))
_ENDS = ".!?.."  # a full stop three times in five


def sentence(rng: random.Random) -> str:
    words = rng.choices(VOCABULARY, cum_weights=_CUMULATIVE, k=rng.randint(4, 18))
    if rng.random() < 0.15:
        words.insert(rng.randrange(len(words)), str(rng.randrange(1000)))
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice(_ENDS)


def text(rng: random.Random, size: int) -> str:
    """Sentences up to exactly ``size`` characters (the last one cut where the size ends)."""
    parts: list[str] = []
    length = -1
    while length < size:
        parts.append(sentence(rng))
        length += len(parts[-1]) + 1
    return " ".join(parts)[:size]


def texts(seed: int, count: int, min_chars: int, max_chars: int) -> list[str]:
    """``count`` texts, each of a length drawn evenly from [min_chars, max_chars]: the same for the same seed."""
    rng = random.Random(seed)
    return [text(rng, rng.randint(min_chars, max_chars)) for _ in range(count)]
