"""Registries by name: entries are dotted paths imported on first use; unknown names fail clearly."""

from __future__ import annotations

import sys

import pytest

from etagent.registry import Registry, RegistryError, import_object, is_dotted_path


def test_entries_are_imported_on_first_use_only():
    module = "tests._registry_probe"
    sys.modules.pop(module, None)
    registry: Registry[object] = Registry("probe", {"probe": f"{module}:VALUE"})
    assert module not in sys.modules  # registering imports nothing
    assert registry.get("probe") == 42
    assert module in sys.modules


def test_dotted_path_works_without_registration():
    registry: Registry[object] = Registry("thing", {})
    assert registry.get("collections:OrderedDict").__name__ == "OrderedDict"
    assert registry.knows("collections:OrderedDict") and not registry.knows("ordered")


def test_unknown_name_lists_the_registered_ones():
    registry: Registry[object] = Registry("tool", {"search": "a:b", "python": "c:d"})
    with pytest.raises(RegistryError, match=r"unknown tool 'serch'; registered: python, search"):
        registry.get("serch")


def test_bad_dotted_paths_say_what_is_wrong():
    with pytest.raises(RegistryError, match="cannot import module 'no_such_module_xyz'"):
        import_object("no_such_module_xyz:Thing")
    with pytest.raises(RegistryError, match="has no attribute 'Nope'"):
        import_object("collections:Nope")
    assert is_dotted_path("pkg.mod:Class") and not is_dotted_path("toolworld") and not is_dotted_path("a:")


def test_registering_another_target_under_a_taken_name_fails():
    registry: Registry[object] = Registry("task", {"toolworld": "a:b"})
    registry.register("toolworld", "a:b")  # the same target again: fine
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("toolworld", "c:d")
