"""Plan steps: one tool call each, with what its result reveals.

A search step asks for facts of one entity. Every kind of search is one row of :data:`SEARCHES`
(the entity type it is about, the query, a paraphrased query, what it is needed for, the fact as a
sentence, and the facts it reveals); :func:`search_step` fills a row in with an entity. A Python
step (:func:`python_step`) computes one arithmetic expression.

Templates are ``str.format`` strings over the entity's fields (``{name}``, ``{birth_city}``, ...);
a revealed fact's value is the entity field that :data:`FACT_FIELDS` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etagent.tasks.toolworld.entities import City, Company, Entity, Person

Step = dict[str, Any]

#: fact name -> the entity field that holds its value
FACT_FIELDS: dict[str, str] = {
    "birth_city": "birth_city",
    "birth_year": "birth_year",
    "country": "country",
    "population": "population",
    "city_founded": "founded",
    "founder": "founder",
    "hq": "hq",
    "company_founded": "founded",
}


@dataclass(frozen=True)
class SearchKind:
    """One kind of search step (a row of the step table)."""

    entity: type[Entity]
    query: str
    alt_query: str  # the same question in other words, for a redundant re-check
    need: str
    fact: str
    reveals: tuple[str, ...]  # fact names, in the order the step's ``reveals.facts`` lists them


#: kind -> row. A kind named after a fact asks for that one fact (a question's "unneeded search"
#: is drawn from these, see :func:`single_fact_kinds`); the others ask for two facts at once.
SEARCHES: dict[str, SearchKind] = {
    "birth_city": SearchKind(
        Person,
        "Where was {name} born?",
        "{name} birthplace",
        "the birth city of {name}",
        "{name} was born in {birth_city}",
        ("birth_city",),
    ),
    "birth_year": SearchKind(
        Person,
        "When was {name} born?",
        "{name} year of birth",
        "the birth year of {name}",
        "{name} was born in {birth_year}",
        ("birth_year",),
    ),
    "birth": SearchKind(
        Person,
        "When and where was {name} born?",
        "{name} birth",
        "the birth year and city of {name}",
        "{name} was born in {birth_year} in {birth_city}",
        ("birth_year", "birth_city"),
    ),
    "country": SearchKind(
        City,
        "Which country is {name} in?",
        "{name} country",
        "the country of {name}",
        "{name} is in {country}",
        ("country",),
    ),
    "population": SearchKind(
        City,
        "What is the population of {name}?",
        "{name} population",
        "the population of {name}",
        "{name} has a population of {population}",
        ("population",),
    ),
    "city_founded": SearchKind(
        City,
        "When was {name} founded?",
        "{name} founding year",
        "the founding year of {name}",
        "{name} was founded in {founded}",
        ("city_founded",),
    ),
    "founder": SearchKind(
        Company,
        "Who founded {name}?",
        "{name} founder",
        "the founder of {name}",
        "{name} was founded by {founder}",
        ("founder",),
    ),
    "hq": SearchKind(
        Company,
        "Where is {name} headquartered?",
        "{name} headquarters",
        "the headquarters of {name}",
        "{name} is headquartered in {hq}",
        ("hq",),
    ),
    "company_founded": SearchKind(
        Company,
        "When was {name} founded?",
        "{name} founding year",
        "the founding year of {name}",
        "{name} was founded in {founded}",
        ("company_founded",),
    ),
    "founder_year": SearchKind(
        Company,
        "Who founded {name} and when?",
        "{name} founder founding year",
        "the founder and founding year of {name}",
        "{name} was founded in {founded} by {founder}",
        ("company_founded", "founder"),
    ),
    "hq_year": SearchKind(
        Company,
        "When was {name} founded and where is it headquartered?",
        "{name} founding year headquarters",
        "the founding year and headquarters of {name}",
        "{name} was founded in {founded} and is headquartered in {hq}",
        ("company_founded", "hq"),
    ),
}


def search_step(kind: str, entity: Entity) -> Step:
    """The search step of row ``kind`` about ``entity``."""
    row = SEARCHES[kind]
    if not isinstance(entity, row.entity):
        raise TypeError(f"a {kind!r} search is about a {row.entity.__name__}, not {entity!r}")
    fields = vars(entity)
    return {
        "tool": "search",
        "query": row.query.format_map(fields),
        "alt_query": row.alt_query.format_map(fields),
        "need": row.need.format_map(fields),
        "fact": row.fact.format_map(fields),
        "reveals": {
            "entity": entity.name,
            "doc_id": entity.doc_id,
            "facts": {fact: str(fields[FACT_FIELDS[fact]]) for fact in row.reveals},
        },
    }


def single_fact_kinds(entity_type: type[Entity]) -> list[str]:
    """The kinds that ask for one fact of an ``entity_type`` (each named after its fact), in table order."""
    return [k for k, row in SEARCHES.items() if row.entity is entity_type and row.reveals == (k,)]


def python_step(expr: str, value: int) -> Step:
    """The Python step that prints ``expr`` (whose value is ``value``)."""
    return {
        "tool": "python",
        "code": f"print({expr})",
        # the same computation written differently, for a redundant re-check
        "alt_code": f"result = {expr}\nprint(result)",
        "need": expr,
        "fact": f"{expr} = {value}",
        "reveals": {"facts": {"result": str(value)}},
    }
