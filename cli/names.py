"""Plausible catalogue titles for seeded data: songs by artists, tools for music makers.

Titles are drawn from small word lists with the seed's random generator, so the same seed gives
the same catalogue, and a title repeats only once the combinations run out (then it is numbered).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(sep))


_SONG_WORDS = _words(
    "Neon Velvet Paper Midnight Glass Electric Silver Hollow Golden Static Quiet Northern "
    "Satellite Lucid Amber Violet Echo Cinder"
)
_SONG_NOUNS = _words(
    "Harbour Skyline Rain Signals Tides Horizon Fever Machines Gardens Lights Waves Rooftops "
    "Dreams Circuit Coastline Memory Motel Orbit"
)
_ARTISTS = _words(
    "The Synthetic Choir|Lumen Drive|Model Collapse|Hidden Layer|Gradient Descent|"
    "Latent Space Band|Token Limit|Soft Attention|The Overfits|Beam Search|Nightly Build|"
    "Dropout|Warm Start|Zero Shot|Residual Stream",
    "|",
)
_TOOL_VERBS = _words("Stem Chord Tempo Lyric Mix Master Drum Melody Vocal Sample Key Loop")
_TOOL_NOUNS = _words(
    "Splitter Finder Tuner Assistant Analyzer Generator Cleaner Doctor Studio Mapper Coach Forge"
)


def song_titles(rng: random.Random) -> Iterator[str]:
    """`Title — Artist`, never the same twice."""
    return _unique(
        lambda: f"{rng.choice(_SONG_WORDS)} {rng.choice(_SONG_NOUNS)} — {rng.choice(_ARTISTS)}",
        len(_SONG_WORDS) * len(_SONG_NOUNS) * len(_ARTISTS),
    )


def tool_titles(rng: random.Random) -> Iterator[str]:
    """`Stem Splitter`, `Chord Finder`…, never the same twice."""
    return _unique(
        lambda: f"{rng.choice(_TOOL_VERBS)} {rng.choice(_TOOL_NOUNS)}",
        len(_TOOL_VERBS) * len(_TOOL_NOUNS),
    )


def _unique(draw: Callable[[], str], combinations: int) -> Iterator[str]:
    """Draws until unused; once half the combinations are taken, numbered volumes follow."""
    seen: set[str] = set()
    edition = 1
    while True:
        if len(seen) < combinations // 2:
            title = draw()
            while title in seen:
                title = draw()
        else:
            edition += 1
            title = f"{draw()} (Vol. {edition})"
        seen.add(title)
        yield title
