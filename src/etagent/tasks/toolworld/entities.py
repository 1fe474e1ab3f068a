"""What a tool world is made of: its settings, its invented entities, documents, and the world."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from etagent.records import Question

#: part of every cache directory name and of the generator's random seed: bump it when the same
#: config should give another world
WORLD_VERSION = "v1"
#: ``Question.source`` of every tool-world question, and the prefix of their ids
SOURCE = "toolworld"
SPLITS: tuple[str, ...] = ("train", "dev", "test")


@dataclass(frozen=True)
class WorldConfig:
    """Everything the generated world depends on (hashable, so it can key caches)."""

    seed: int = 0
    train_size: int = 600
    dev_size: int = 64
    test_size: int = 128
    n_countries: int = 10
    #: share of cities with a landmark document (a distractor that names the city and a year)
    landmark_rate: float = 0.6
    #: share of people with a prize named after them (a distractor that names the person)
    prize_rate: float = 0.3
    #: share of people who reuse a surname already in their split (near-miss names for search)
    family_rate: float = 0.25

    def __post_init__(self) -> None:
        for name in ("train_size", "dev_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_countries < 1:
            raise ValueError(f"n_countries must be >= 1, got {self.n_countries}")
        for name in ("landmark_rate", "prize_rate", "family_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train_size, "dev": self.dev_size, "test": self.test_size}

    def differs_from_default(self) -> dict[str, Any]:
        """The fields, other than the seed, that differ from the defaults."""
        default = WorldConfig(seed=self.seed)
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


@dataclass
class Country:
    name: str
    doc_id: str
    capital: str = ""


@dataclass
class City:
    name: str
    split: str
    country: str
    population: int
    founded: int
    doc_id: str
    neighbor: str | None = None


@dataclass
class Person:
    name: str
    first: str
    surname: str
    split: str
    occupation: str
    birth_year: int
    birth_city: str
    work_city: str
    death_year: int | None
    doc_id: str


@dataclass
class Company:
    name: str
    split: str
    industry: str
    founded: int
    founder: str
    hq: str
    employees: int
    doc_id: str


#: an entity a question can be about (countries are only ever facts of cities)
Entity = Person | City | Company


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "text": self.text}


@dataclass
class ToolWorld:
    """A generated world: entities, the search corpus and the questions of each split."""

    config: WorldConfig
    countries: dict[str, Country] = field(default_factory=dict)
    cities: dict[str, City] = field(default_factory=dict)
    people: dict[str, Person] = field(default_factory=dict)
    companies: dict[str, Company] = field(default_factory=dict)
    corpus: list[Document] = field(default_factory=list)
    splits: dict[str, list[Question]] = field(default_factory=dict)

    def questions(self, split: str | None = None) -> list[Question]:
        """One split's questions, or all of them (train, dev, test order) when split is None."""
        if split is None:
            return [q for s in SPLITS for q in self.splits[s]]
        if split not in self.splits:
            raise ValueError(f"unknown tool-world split {split!r}; expected one of {list(SPLITS)}")
        return self.splits[split]
