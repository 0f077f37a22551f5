"""Applying a pass at several sites, one after another, by stable site id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from rewriter.errors import BadInputError
from rewriter.graph_io import Model
from rewriter.passes import CANONICAL_PASSES, Pass, Site


@dataclass
class RewriteResult:
    model: Model
    applied: list[Site] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (site id, why)


def apply_pass(model: Model, rule: Pass, site_ids: Sequence[str] | None = None) -> RewriteResult:
    """Apply `rule` at the chosen sites (all when `site_ids` is None).

    Sites are looked up again after each rewrite, since one rewrite can consume another's
    site (two fusions wanting the same conv): such a site is reported as skipped.
    """
    initial = {s.id: s for s in rule.sites(model)}
    if site_ids:
        unknown = [s for s in site_ids if s not in initial]
        if unknown:
            known = ", ".join(list(initial)[:20]) or "none"
            raise BadInputError(
                f"pass {rule.name} has no site {', '.join(repr(u) for u in unknown)}; "
                f"its sites are: {known}{' ...' if len(initial) > 20 else ''}"
            )
        wanted = list(dict.fromkeys(site_ids))
    else:
        wanted = list(initial)
    result = RewriteResult(model=model)
    current = model
    live: dict[str, Site] | None = initial  # the sites of `current`, found again after a rewrite
    for site_id in wanted:
        if live is None:
            live = {s.id: s for s in rule.sites(current)}
        site = live.get(site_id)
        if site is None or site.nodes != initial[site_id].nodes:
            result.skipped.append((site_id, "an earlier rewrite changed this site"))
            continue
        current = rule.apply(current, site)
        result.applied.append(site)
        live = None
    result.model = current
    return result


def canonical_form(model: Model) -> tuple[Model, list[str]]:
    """`model` with every canonical pass (`CANONICAL_PASSES`: exact and never dearer) applied
    at every site, in registry order, and what they tell a user of it
    (`Pass.canonical_note`): the form the search starts from."""
    notes = []
    for cls in CANONICAL_PASSES:
        rule = cls()
        applied = apply_pass(model, rule)
        model = applied.model
        note = rule.canonical_note(applied.applied)
        if note:
            notes.append(note)
    return model, notes
