"""The world builder: entities, then their documents (the search corpus), then the questions.

Generation is pure and deterministic in :class:`WorldConfig` (``random.Random`` with a string seed
is stable across Python versions and processes); one random stream draws everything, in order.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from etagent.tasks.toolworld.entities import (
    WORLD_VERSION,
    City,
    Company,
    Country,
    Document,
    Person,
    ToolWorld,
    WorldConfig,
)
from etagent.tasks.toolworld.names import COMPANY_KINDS, INDUSTRIES, LANDMARKS, OCCUPATIONS, Names
from etagent.tasks.toolworld.questions import QuestionMaker


class WorldBuilder:
    def __init__(self, config: WorldConfig):
        self.cfg = config
        self.rng = random.Random(f"etagent-toolworld-{WORLD_VERSION}-{config.seed}")
        self.names = Names(self.rng)
        self.world = ToolWorld(config=config)
        self.docs: list[Document] = []
        self.counters: Counter[str] = Counter()

    def _doc_id(self, kind: str) -> str:
        self.counters[kind] += 1
        return f"tw-{kind}-{self.counters[kind]:04d}"

    # ---- entities

    def build(self) -> ToolWorld:
        w, rng = self.world, self.rng
        for _ in range(self.cfg.n_countries):
            name = self.names.country()
            w.countries[name] = Country(name=name, doc_id=self._doc_id("country"))
        country_names = list(w.countries)
        for split, n in self.cfg.split_sizes().items():
            self._build_split(split, n, country_names)
        for country in w.countries.values():
            # the capital is the first train city of the country (train is built first)
            country.capital = next((c.name for c in w.cities.values() if c.country == country.name), "")
        self._write_documents()
        rng.shuffle(self.docs)
        w.corpus = self.docs
        texts: set[str] = set()
        for split, n in self.cfg.split_sizes().items():
            w.splits[split] = QuestionMaker(w, rng, split, texts).make(n)
        return w

    def _build_split(self, split: str, n: int, countries: list[str]) -> None:
        w, rng = self.world, self.rng
        n_cities, n_people, n_companies = n // 4 + 8, n // 2 + 12, n // 4 + 8
        cities: list[City] = []
        for i in range(n_cities):
            # round-robin first, so every country has cities in every split
            country = countries[i % len(countries)] if i < len(countries) else rng.choice(countries)
            city = City(
                name=self.names.city(),
                split=split,
                country=country,
                population=rng.randint(100_000, 3_500_000),
                founded=rng.randint(800, 1799),
                doc_id=self._doc_id("city"),
            )
            cities.append(city)
            w.cities[city.name] = city
        for city in cities:
            same_country = [c for c in cities if c.country == city.country and c is not city]
            city.neighbor = rng.choice(same_country or [c for c in cities if c is not city]).name
        people: list[Person] = []
        # shared first names and surnames (drawn uniformly from the distinct ones so far, so no
        # name snowballs) give search near-miss documents
        first_names: list[str] = []
        surnames: list[str] = []
        full_names: set[str] = set()
        for _ in range(n_people):
            while True:
                first = rng.choice(first_names) if first_names and rng.random() < 0.2 else None
                surname = rng.choice(surnames) if surnames and rng.random() < self.cfg.family_rate else None
                if first is None:
                    first = self.names.first_name()
                    first_names.append(first)
                if surname is None:
                    surname = self.names.surname()
                    surnames.append(surname)
                if f"{first} {surname}" not in full_names:
                    break
            full_names.add(f"{first} {surname}")
            birth_city = rng.choice(cities)
            birth_year = rng.randint(1820, 1985)
            death_year = birth_year + rng.randint(45, 92)
            person = Person(
                name=f"{first} {surname}",
                first=first,
                surname=surname,
                split=split,
                occupation=rng.choice(OCCUPATIONS),
                birth_year=birth_year,
                birth_city=birth_city.name,
                work_city=rng.choice([c for c in cities if c is not birth_city]).name,
                death_year=death_year if death_year <= 2022 else None,
                doc_id=self._doc_id("person"),
            )
            people.append(person)
            w.people[person.name] = person
        for founder in rng.sample(people, n_companies):
            lived = (founder.death_year or 2022) - founder.birth_year
            founded = min(founder.birth_year + rng.randint(25, min(55, lived)), 2022)
            company = Company(
                name=f"{self.names.company_core()} {rng.choice(COMPANY_KINDS)}",
                split=split,
                industry=rng.choice(INDUSTRIES),
                founded=founded,
                founder=founder.name,
                hq=rng.choice(cities).name,
                employees=rng.randint(40, 25_000),
                doc_id=self._doc_id("company"),
            )
            w.companies[company.name] = company

    # ---- documents

    def _write_documents(self) -> None:
        w, rng = self.world, self.rng
        docs = self.docs
        for n in w.countries.values():
            text = f"{n.name} is a country." + (f" Its capital is {n.capital}." if n.capital else "")
            docs.append(Document(n.doc_id, n.name, text))
        for c in w.cities.values():
            # "country" and the repeated name make this doc outrank documents that merely mention the city
            text = (
                f"{c.name} is a city in the country of {c.country}. {c.name} was founded in {c.founded} "
                f"and has a population of {c.population}."
            )
            if c.neighbor:
                text += f" It lies near {c.neighbor}."
            docs.append(Document(c.doc_id, c.name, text))
            if rng.random() < self.cfg.landmark_rate:
                kind, desc, stat = rng.choice(LANDMARKS)
                title = f"{c.name} {kind}"
                docs.append(
                    Document(
                        self._doc_id("landmark"),
                        title,
                        f"The {title} is a {desc} in {c.name}, opened in {rng.randint(1800, 2015)}. "
                        f"It {stat.format(n=rng.randint(120, 90_000))}.",
                    )
                )
        prized: set[str] = set()
        for p in w.people.values():
            text = (
                f"{p.name} was a {p.occupation} born in {p.birth_year} in the city of {p.birth_city}. "
                f"{p.surname} spent most of their career in {p.work_city}"
            )
            text += f" and died in {p.death_year}." if p.death_year else "."
            docs.append(Document(p.doc_id, p.name, text))
            if p.surname not in prized and rng.random() < self.cfg.prize_rate:
                prized.add(p.surname)
                year = min((p.death_year or p.birth_year + 60) + rng.randint(1, 30), 2023)
                title = f"{p.surname} Prize"
                docs.append(
                    Document(
                        self._doc_id("prize"),
                        title,
                        f"The {title} is an award for {p.occupation}s, named after {p.name}. "
                        f"It was first awarded in {year}.",
                    )
                )
        for k in w.companies.values():
            docs.append(
                Document(
                    k.doc_id,
                    k.name,
                    f"{k.name} is a {k.industry} company founded in {k.founded} by {k.founder}. "
                    f"Its headquarters are in {k.hq}. The company employs {k.employees} people.",
                )
            )


def generate_world(seed: int = 0, **options: Any) -> ToolWorld:
    """Generate the tool world for ``seed`` (options: any other ``WorldConfig`` field, e.g. train_size)."""
    return WorldBuilder(WorldConfig(seed=seed, **options)).build()
