"""The question maker: question templates per type, each with its minimal plan.

Every question records in ``meta`` the plan that solves it with the fewest tool calls (see
:mod:`etagent.tasks.toolworld`), calls the question does not need (``extra_steps``), and the
answer of a trajectory that skips the last needed call (``guess``).

The order of the random draws is part of the generated world: a change here changes every
question after it (:func:`etagent.tasks.toolworld.storage.fingerprint` then rebuilds caches).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from etagent.records import Question
from etagent.tasks.toolworld.entities import SOURCE, City, Company, Person, ToolWorld
from etagent.tasks.toolworld.steps import Step, python_step, search_step, single_fact_kinds

QTYPES: tuple[str, ...] = ("no_tool", "search1", "search2", "python1", "search1_python", "search2_python")
#: the year "now" in questions that count years up to the present
REFERENCE_YEAR = 2024


def _mental_estimate(value: int) -> int:
    """What a model that skips the Python call "computes in its head": right magnitude, wrong digits."""
    digits = len(str(abs(value)))
    if digits < 3:
        return value + 1
    estimate = round(value, -(digits - 2))
    if estimate == value:
        estimate += 10 ** (digits - 2)
    return estimate


#: one-search questions: (template, entity pool, the fact asked for, question text)
_ONE_SEARCH: list[tuple[str, str, str, str]] = [
    ("birth_city", "people", "birth_city", "In which city was {} born?"),
    ("birth_year", "people", "birth_year", "In what year was {} born?"),
    ("city_country", "cities", "country", "In which country is the city of {}?"),
    ("city_population", "cities", "population", "What is the population of {}?"),
    ("city_founded", "cities", "city_founded", "In what year was the city of {} founded?"),
    ("company_founder", "companies", "founder", "Who founded {}?"),
    ("company_hq", "companies", "hq", "In which city is {} headquartered?"),
    ("company_founded", "companies", "company_founded", "In what year was {} founded?"),
]
#: two-search questions: (template, entity pool, the fact that names the second entity, the fact
#: asked for, question text)
_TWO_SEARCHES: list[tuple[str, str, str, str, str]] = [
    ("birth_country", "people", "birth_city", "country", "In which country was {} born?"),
    (
        "birth_city_population",
        "people",
        "birth_city",
        "population",
        "What is the population of the city where {} was born?",
    ),
    (
        "birth_city_founded",
        "people",
        "birth_city",
        "city_founded",
        "In what year was the city where {} was born founded?",
    ),
    ("founder_birth_year", "companies", "founder", "birth_year", "In what year was the founder of {} born?"),
    ("founder_birth_city", "companies", "founder", "birth_city", "In which city was the founder of {} born?"),
    ("hq_country", "companies", "hq", "country", "In which country is {} headquartered?"),
    (
        "hq_population",
        "companies",
        "hq",
        "population",
        "What is the population of the city where {} is headquartered?",
    ),
]


@dataclass
class _Draft:
    text: str
    answer: str
    plan: list[Step]
    entities: list[str]
    extra_steps: list[Step] | None = None  # None: derive unneeded searches from the entities
    guess: str | None = None  # None: derived from the last step
    direct_note: str | None = None


class QuestionMaker:
    """Question templates per type; each template draws a subject not used by it before.

    ``rng`` is the world builder's generator (questions are drawn after the entities, from the
    same stream); ``taken_texts`` holds the question texts of earlier splits (texts are unique).
    """

    def __init__(self, world: ToolWorld, rng: random.Random, split: str, taken_texts: set[str]):
        self.w = world
        self.rng = rng
        self.split = split
        self.taken = taken_texts
        self.people = [p for p in self.w.people.values() if p.split == split]
        self.cities = [c for c in self.w.cities.values() if c.split == split]
        self.companies = [k for k in self.w.companies.values() if k.split == split]
        self.used: set[tuple[str, str]] = set()
        self.templates: dict[str, list[tuple[str, Callable[[], _Draft | None]]]] = {
            "no_tool": [
                ("add_small", self.t_add_small),
                ("given_birth_city", self.t_given_birth_city),
                ("given_founder", self.t_given_founder),
                ("mul_small", self.t_mul_small),
                ("given_birth_year", self.t_given_birth_year),
                ("given_population", self.t_given_population),
            ],
            "search1": [
                (name, functools.partial(self._one, getattr(self, pool), attr, text))
                for name, pool, attr, text in _ONE_SEARCH
            ],
            "search2": [
                (name, functools.partial(self._two, name, pool, hop, attr, text))
                for name, pool, hop, attr, text in _TWO_SEARCHES
            ],
            "python1": [
                ("multiply", self.t_multiply),
                ("word_multiply", self.t_word_multiply),
                ("sum3", self.t_sum3),
                ("subtract", self.t_subtract),
                ("square", self.t_square),
            ],
            "search1_python": [
                ("population_times", self.t_population_times),
                ("trees", self.t_trees),
                ("company_age", self.t_company_age),
                ("city_age", self.t_city_age),
            ],
            "search2_python": [
                ("birth_city_population_times", self.t_birth_city_population_times),
                ("born_after_city_founded", self.t_born_after_city_founded),
                ("founder_age_at_founding", self.t_founder_age_at_founding),
                ("company_after_hq_founded", self.t_company_after_hq_founded),
                ("hq_population_times", self.t_hq_population_times),
            ],
        }

    # ---- driver

    def make(self, n: int) -> list[Question]:
        counts = {t: n // len(QTYPES) + (1 if i < n % len(QTYPES) else 0) for i, t in enumerate(QTYPES)}
        questions: list[Question] = []
        for qtype in QTYPES:
            templates = self.templates[qtype]
            made, turn, idle = 0, 0, 0
            while made < counts[qtype]:
                name, template = templates[turn % len(templates)]
                turn += 1
                draft = template()
                if draft is None or draft.text in self.taken:
                    idle += 1
                    if idle > 50 * len(templates):
                        raise ValueError(
                            f"tool world: cannot make {counts[qtype]} distinct {qtype} questions for split "
                            f"{self.split!r} (only {made}); the entity pools are too small"
                        )
                    continue
                idle = 0
                self.taken.add(draft.text)
                questions.append(self._finish(draft, qtype, name))
                made += 1
        self.rng.shuffle(questions)
        for i, q in enumerate(questions):
            q.id = f"{SOURCE}-{self.split}-{i:04d}"
        return questions

    def _finish(self, d: _Draft, qtype: str, template: str) -> Question:
        n_search = sum(1 for s in d.plan if s["tool"] == "search")
        n_python = sum(1 for s in d.plan if s["tool"] == "python")
        extra = d.extra_steps if d.extra_steps is not None else self._unneeded_search(d)
        guess = d.guess if d.guess is not None else self._guess(d)
        meta = {
            "qtype": qtype,
            "template": template,
            "split": self.split,
            "min_search": n_search,
            "min_python": n_python,
            "min_tool_calls": n_search + n_python,
            "plan": d.plan,
            "extra_steps": extra,
            "guess": guess,
            "direct_note": d.direct_note,
            "entities": d.entities,
        }
        return Question(id="pending", question=d.text, answer=d.answer, task="qa", source=SOURCE, meta=meta)

    def _unneeded_search(self, d: _Draft) -> list[Step]:
        """One plausible search the question does not need: another fact about an entity it touches."""
        covered = {
            (s["reveals"]["entity"], attr)
            for s in d.plan
            if s["tool"] == "search"
            for attr in s["reveals"]["facts"]
        }
        options: list[Step] = []
        for name in d.entities:
            for entity_type, table in (
                (Person, self.w.people),
                (City, self.w.cities),
                (Company, self.w.companies),
            ):
                if name in table:
                    options += [
                        search_step(kind, table[name])
                        for kind in single_fact_kinds(entity_type)
                        if (name, kind) not in covered
                    ]
        return [self.rng.choice(options)] if options else []

    def _guess(self, d: _Draft) -> str:
        """The answer of a trajectory that skips the last needed call."""
        if not d.plan:
            return d.answer
        last = d.plan[-1]
        if last["tool"] == "python":
            return str(_mental_estimate(int(d.answer)))
        attr = next(iter(last["reveals"]["facts"]))
        rng = self.rng
        if attr == "country":
            return rng.choice(list(self.w.countries))
        if attr in ("birth_city", "hq"):
            return rng.choice(self.cities).name
        if attr == "founder":
            return rng.choice(self.people).name
        if attr == "population":
            return str(rng.choice(self.cities).population)
        return str(int(d.answer) + rng.choice([-1, 1]) * rng.randint(3, 40))  # a year

    def _pick(self, template: str, pool: list[Any]) -> Any | None:
        free = [x for x in pool if (template, x.name) not in self.used]
        if not free:
            return None
        x = self.rng.choice(free)
        self.used.add((template, x.name))
        return x

    def _factor(self) -> int:
        return self.rng.randint(12, 97)

    # ---- no tool

    def t_add_small(self) -> _Draft:
        a, b = self.rng.randint(2, 20), self.rng.randint(2, 20)
        return _Draft(
            f"What is {a} plus {b}?",
            str(a + b),
            [],
            [],
            extra_steps=[python_step(f"{a} + {b}", a + b)],
            direct_note=f"{a} plus {b} is {a + b}.",
        )

    def t_mul_small(self) -> _Draft:
        a, b = self.rng.randint(2, 9), self.rng.randint(2, 9)
        return _Draft(
            f"What is {a} times {b}?",
            str(a * b),
            [],
            [],
            extra_steps=[python_step(f"{a} * {b}", a * b)],
            direct_note=f"{a} times {b} is {a * b}.",
        )

    def t_given_birth_city(self) -> _Draft | None:
        p = self._pick("given_birth_city", self.people)
        if p is None:
            return None
        return _Draft(
            f"{p.name} was born in {p.birth_year} in the city of {p.birth_city}. In which city was {p.name} born?",
            p.birth_city,
            [],
            [p.name],
            extra_steps=[search_step("birth_city", p)],
            direct_note=f"The question itself says that {p.name} was born in {p.birth_city}.",
        )

    def t_given_birth_year(self) -> _Draft | None:
        p = self._pick("given_birth_year", self.people)
        if p is None:
            return None
        return _Draft(
            f"{p.name}, a {p.occupation}, was born in {p.birth_year}. In what year was {p.name} born?",
            str(p.birth_year),
            [],
            [p.name],
            extra_steps=[search_step("birth_year", p)],
            direct_note=f"The question itself says that {p.name} was born in {p.birth_year}.",
        )

    def t_given_founder(self) -> _Draft | None:
        k = self._pick("given_founder", self.companies)
        if k is None:
            return None
        return _Draft(
            f"{k.name} was founded in {k.founded} by {k.founder}. Who founded {k.name}?",
            k.founder,
            [],
            [k.name],
            extra_steps=[search_step("founder", k)],
            direct_note=f"The question itself says that {k.name} was founded by {k.founder}.",
        )

    def t_given_population(self) -> _Draft | None:
        c = self._pick("given_population", self.cities)
        if c is None:
            return None
        return _Draft(
            f"{c.name} is a city with a population of {c.population}. What is the population of {c.name}?",
            str(c.population),
            [],
            [c.name],
            extra_steps=[search_step("population", c)],
            direct_note=f"The question itself says that {c.name} has a population of {c.population}.",
        )

    # ---- one search

    def _one(self, pool: list[Any], attr: str, text: str) -> _Draft | None:
        """A question about the fact ``attr`` of an entity of ``pool`` (the one search of that kind)."""
        x = self._pick(f"one-{attr}", pool)
        if x is None:
            return None
        step = search_step(attr, x)
        entities = [x.name] + (
            [step["reveals"]["facts"][attr]] if attr in ("birth_city", "hq", "founder") else []
        )
        return _Draft(text.format(x.name), step["reveals"]["facts"][attr], [step], entities)

    # ---- two searches (the second query depends on the first result)

    def _two(self, template: str, pool: str, hop: str, attr: str, text: str) -> _Draft | None:
        """A question about fact ``attr`` of the entity that fact ``hop`` of a ``pool`` entity names
        (a person's birth city, a company's founder or headquarters): two searches."""
        x = self._pick(template, getattr(self, pool))
        if x is None:
            return None
        first = search_step(hop, x)
        linked = first["reveals"]["facts"][hop]
        y = self.w.people[linked] if hop == "founder" else self.w.cities[linked]
        second = search_step(attr, y)
        return _Draft(
            text.format(x.name), second["reveals"]["facts"][attr], [first, second], [x.name, y.name]
        )

    # ---- one Python computation

    def t_multiply(self) -> _Draft:
        a, b = self.rng.randint(1_000, 99_999), self.rng.randint(12, 999)
        return _Draft(f"What is {a} multiplied by {b}?", str(a * b), [python_step(f"{a} * {b}", a * b)], [])

    def t_word_multiply(self) -> _Draft:
        a, b = self.rng.randint(1_000, 9_999), self.rng.randint(12, 365)
        return _Draft(
            f"A factory makes {a} bolts every day. How many bolts does it make in {b} days?",
            str(a * b),
            [python_step(f"{a} * {b}", a * b)],
            [],
        )

    def t_sum3(self) -> _Draft:
        a, b, c = (self.rng.randint(10_000, 999_999) for _ in range(3))
        return _Draft(
            f"What is the sum of {a}, {b} and {c}?",
            str(a + b + c),
            [python_step(f"{a} + {b} + {c}", a + b + c)],
            [],
        )

    def t_subtract(self) -> _Draft:
        a = self.rng.randint(1_000_000, 9_999_999)
        b = self.rng.randint(100_000, a - 1)
        return _Draft(f"What is {a} minus {b}?", str(a - b), [python_step(f"{a} - {b}", a - b)], [])

    def t_square(self) -> _Draft:
        a = self.rng.randint(1_000, 9_999)
        return _Draft(f"What is {a} squared?", str(a * a), [python_step(f"{a} ** 2", a * a)], [])

    # ---- one search, then Python

    def t_population_times(self) -> _Draft | None:
        c = self._pick("population_times", self.cities)
        if c is None:
            return None
        k = self._factor()
        value = c.population * k
        return _Draft(
            f"What is the population of {c.name} multiplied by {k}?",
            str(value),
            [search_step("population", c), python_step(f"{c.population} * {k}", value)],
            [c.name],
        )

    def t_trees(self) -> _Draft | None:
        c = self._pick("trees", self.cities)
        if c is None:
            return None
        k = self._factor()
        value = c.population * k
        return _Draft(
            f"If every resident of {c.name} planted {k} trees, how many trees would be planted in total?",
            str(value),
            [search_step("population", c), python_step(f"{c.population} * {k}", value)],
            [c.name],
        )

    def t_company_age(self) -> _Draft | None:
        k = self._pick("company_age", self.companies)
        if k is None:
            return None
        value = REFERENCE_YEAR - k.founded
        return _Draft(
            f"How many years passed between the founding of {k.name} and the year {REFERENCE_YEAR}?",
            str(value),
            [search_step("company_founded", k), python_step(f"{REFERENCE_YEAR} - {k.founded}", value)],
            [k.name],
        )

    def t_city_age(self) -> _Draft | None:
        c = self._pick("city_age", self.cities)
        if c is None:
            return None
        value = REFERENCE_YEAR - c.founded
        return _Draft(
            f"How many years passed between the founding of the city of {c.name} and the year {REFERENCE_YEAR}?",
            str(value),
            [search_step("city_founded", c), python_step(f"{REFERENCE_YEAR} - {c.founded}", value)],
            [c.name],
        )

    # ---- two searches, then Python

    def t_birth_city_population_times(self) -> _Draft | None:
        p = self._pick("birth_city_population_times", self.people)
        if p is None:
            return None
        c, k = self.w.cities[p.birth_city], self._factor()
        value = c.population * k
        return _Draft(
            f"What is the population of the city where {p.name} was born, multiplied by {k}?",
            str(value),
            [
                search_step("birth_city", p),
                search_step("population", c),
                python_step(f"{c.population} * {k}", value),
            ],
            [p.name, c.name],
        )

    def t_born_after_city_founded(self) -> _Draft | None:
        p = self._pick("born_after_city_founded", self.people)
        if p is None:
            return None
        c = self.w.cities[p.birth_city]
        value = p.birth_year - c.founded
        return _Draft(
            f"How many years after the founding of the city where {p.name} was born was {p.name} born?",
            str(value),
            [
                search_step("birth", p),
                search_step("city_founded", c),
                python_step(f"{p.birth_year} - {c.founded}", value),
            ],
            [p.name, c.name],
        )

    def t_founder_age_at_founding(self) -> _Draft | None:
        k = self._pick("founder_age_at_founding", self.companies)
        if k is None:
            return None
        f = self.w.people[k.founder]
        value = k.founded - f.birth_year
        return _Draft(
            f"How old was the founder of {k.name} when {k.name} was founded?",
            str(value),
            [
                search_step("founder_year", k),
                search_step("birth_year", f),
                python_step(f"{k.founded} - {f.birth_year}", value),
            ],
            [k.name, f.name],
        )

    def t_company_after_hq_founded(self) -> _Draft | None:
        k = self._pick("company_after_hq_founded", self.companies)
        if k is None:
            return None
        c = self.w.cities[k.hq]
        value = k.founded - c.founded
        return _Draft(
            f"How many years after the founding of the city where {k.name} is headquartered was {k.name} founded?",
            str(value),
            [
                search_step("hq_year", k),
                search_step("city_founded", c),
                python_step(f"{k.founded} - {c.founded}", value),
            ],
            [k.name, c.name],
        )

    def t_hq_population_times(self) -> _Draft | None:
        k = self._pick("hq_population_times", self.companies)
        if k is None:
            return None
        c, m = self.w.cities[k.hq], self._factor()
        value = c.population * m
        return _Draft(
            f"What is the population of the city where {k.name} is headquartered, multiplied by {m}?",
            str(value),
            [search_step("hq", k), search_step("population", c), python_step(f"{c.population} * {m}", value)],
            [k.name, c.name],
        )
