"""Which tests share one pytest-xdist worker (`--dist loadgroup`): the hook tests/conftest.py
registers. Kept free of torch and stylelab, so that a pytest session checking it starts fast."""

from __future__ import annotations

import pytest

# Marks whose tests share one xdist worker (`--dist loadgroup`), in file order: `slurm`, so the
# session's cluster starts once; `serial`, for tests that must not run at once with each other.
GROUPED = ("slurm", "serial")


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups into node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked with a `GROUPED` mark run in one xdist worker, one after another; so do the
    tests of a module that share a fixture of module scope defined there (a sweep made once)."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        group = next((name for name in GROUPED if item.get_closest_marker(name)), None)
        shared = module_fixtures(item)
        if group is None and shared:
            group = f"{item.module.__name__}:{'+'.join(shared)}"
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    # The SLURM tests first: they mostly wait, for minutes, while the other worker runs the rest
    # (`make test` keeps this order: --no-loadscope-reorder).
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)


def module_fixtures(item: pytest.Item) -> list[str]:
    """The module-scoped fixtures of the item's own module that it uses (directly or not)."""
    module = getattr(getattr(item, "module", None), "__name__", None)
    info = getattr(item, "_fixtureinfo", None)
    if module is None or info is None:
        return []
    return sorted(
        name
        for name, defs in info.name2fixturedefs.items()
        if defs[-1].scope == "module" and getattr(defs[-1].func, "__module__", None) == module
    )
