"""Invented names and the world's vocabulary.

Names are built from random syllables, so no pretrained model can know them, and never collide
with each other or with a word of the document templates (BM25 would match a name against
template text).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "st",
    "tr",
    "th",
    "sh",
    "ch",
    "vr",
]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m"]
_SURNAME_ENDINGS = ["ane", "ek", "is", "orn", "ven", "ard", "ell", "ov", "ant", "ix"]
_CITY_ENDINGS = ["or", "heim", "ova", "enne", "ath", "burg", "mouth", "grad", "port", "dale", "wick"]
_COUNTRY_ENDINGS = ["ia", "land", "ora", "avia", "eth"]
_COMPANY_ENDINGS = ["a", "o", "ex", "ion", "ar"]
COMPANY_KINDS = ["Works", "Industries", "Instruments", "Foundry", "Mills", "Holdings", "Labs", "Shipyards"]
OCCUPATIONS = [
    "painter",
    "chemist",
    "composer",
    "engineer",
    "poet",
    "architect",
    "astronomer",
    "botanist",
    "sculptor",
    "mathematician",
    "cartographer",
    "physician",
]
INDUSTRIES = [
    "textile",
    "shipbuilding",
    "glassware",
    "clockmaking",
    "printing",
    "railway",
    "pharmaceutical",
    "optics",
    "porcelain",
    "brewing",
]
LANDMARKS = [  # (name, description, statistic template)
    ("Museum", "museum", "holds {n} objects"),
    ("Library", "public library", "holds {n} books"),
    ("Theatre", "theatre", "seats {n} people"),
    ("Stadium", "stadium", "seats {n} spectators"),
    ("Observatory", "observatory", "has catalogued {n} stars"),
    ("Botanical Garden", "botanical garden", "grows {n} plant species"),
]
#: words the document templates use; invented names must never collide with them, or BM25 would
#: match a name against template text
RESERVED = {
    "the",
    "and",
    "was",
    "born",
    "city",
    "country",
    "capital",
    "company",
    "founded",
    "population",
    "headquarters",
    "employs",
    "people",
    "career",
    "spent",
    "most",
    "their",
    "died",
    "lies",
    "near",
    "prize",
    "award",
    "named",
    "after",
    "first",
    "awarded",
    "opened",
    "holds",
    "seats",
    "objects",
    "books",
    "stars",
    "plant",
    "species",
    "museum",
    "library",
    "theatre",
    "stadium",
    "garden",
    "observatory",
    "botanical",
    "public",
    "spectators",
    "grows",
    "catalogued",
    "where",
    "when",
    "which",
    "what",
    "year",
    "years",
    "founder",
    "birth",
    "birthplace",
    "home",
    "sole",
    "name",
    "data",
    "this",
    "that",
    "with",
    "from",
    "into",
    "have",
    "has",
    "mill",
    "mills",
    "lab",
    "labs",
    "works",
    "tram",
    "mars",
    "tom",
    "tim",
    "dan",
    "sam",
    "ben",
    "ken",
    "ron",
    "don",
    "jon",
    "kim",
    "dream",
    "brand",
    "stand",
    "grand",
    "trans",
    "sham",
    "chess",
    "drama",
    "mama",
    "papa",
    "pope",
    "nazi",
    "bomb",
    "dumb",
    "damn",
    "hell",
    "shit",
    "piss",
    "sex",
} | {w.lower() for w in COMPANY_KINDS + OCCUPATIONS + INDUSTRIES}


_AWKWARD = re.compile(r"aa|ii|uu|[aeiou]{3}")


class Names:
    """Invented, pronounceable names that never collide with each other or with template words."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.owner: dict[str, str] = {w: "reserved" for w in RESERVED}

    def _syllable(self, coda: bool = True) -> str:
        return self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + (self.rng.choice(_CODAS) if coda else "")

    def fresh(self, kind: str, build: Callable[[], str]) -> str:
        for _ in range(10_000):
            word = build()
            key = word.lower()
            # doubled a/i/u ("Miix") reads like a typo, and a typo-like name invites misspelled queries
            if 4 <= len(word) <= 12 and key not in self.owner and not _AWKWARD.search(key):
                self.owner[key] = kind
                return word
        raise RuntimeError(f"could not invent a new {kind} name (name space exhausted)")

    def first_name(self) -> str:
        return self.fresh("first", lambda: (self._syllable(coda=False) + self._syllable()).capitalize())

    def surname(self) -> str:
        def build() -> str:
            core = self._syllable(coda=False) + (
                self._syllable(coda=False) if self.rng.random() < 0.5 else ""
            )
            return (core + self.rng.choice(_SURNAME_ENDINGS)).capitalize()

        return self.fresh("surname", build)

    def city(self) -> str:
        return self.fresh(
            "city",
            lambda: (
                self._syllable(coda=False) + self._syllable() + self.rng.choice(_CITY_ENDINGS)
            ).capitalize(),
        )

    def country(self) -> str:
        return self.fresh(
            "country",
            lambda: (
                self._syllable(coda=False) + self._syllable(coda=False) + self.rng.choice(_COUNTRY_ENDINGS)
            ).capitalize(),
        )

    def company_core(self) -> str:
        return self.fresh(
            "company",
            lambda: (
                self._syllable() + self._syllable(coda=False) + self.rng.choice(_COMPANY_ENDINGS)
            ).capitalize(),
        )
