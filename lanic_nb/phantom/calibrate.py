"""Fit a phantom population's rates to a real one: the five findings' prevalences and pairwise co-occurrence, and the
rates of support devices and of AP films with and without each finding (``lanic_nb.data.population``'s figures).

The phantom's expected rates are exact (``expected_population``: the sum over the eight combinations of latent
states, given which every concept and technique is drawn independently), so the fit is a small least-squares
problem over the findings' base rates and uplifts, one scale each for the devices' base rates and
uplifts, and the AP technique's rates. Everything else (the latent states' rates, artifacts, structural concepts,
the marker's share of bedside films) keeps the starting population's values: CheXpert has no label for them.

``python -m lanic_nb.phantom.calibrate`` reads CheXpert's training table from the installed torchxrayvision, fits,
and prints the fitted rates and the largest difference; ``lanic_nb.phantom.population.CHEXPERT`` holds the result.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

import numpy as np
import pandas as pd

from lanic_nb.manifest import FINDINGS
from lanic_nb.phantom.config import CONCEPTS, FINDING_TO_CONCEPT, PhantomConfig
from lanic_nb.phantom.population import CHEXPERT, TEACHING, Population, conditional_rate, state_weights

DEVICES: tuple[str, ...] = tuple(c for c, concept in CONCEPTS.items() if concept.category == "device")
log = logging.getLogger(__name__)
TOLERANCE = 0.05
"""The largest absolute difference a calibrated population may have from its target on any rate."""


def expected_population(pop: Population, cfg: PhantomConfig | None = None) -> pd.Series:
    """The population's exact rates without a planted shortcut, indexed as ``data.population.compare_populations``
    (finding, rate): prevalence, device and AP given the finding and without it, and "with <finding>" for each pair.
    A device is any concept of category "device"."""
    cfg = cfg or PhantomConfig(population=pop.name, shortcut_concept="")
    n = len(FINDINGS)
    p_f, p_fd, p_fa, p_ff = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros((n, n))
    p_d = p_a = 0.0
    for w, states in state_weights(pop):
        f = np.array([conditional_rate(pop, cfg, FINDING_TO_CONCEPT[x], states) for x in FINDINGS])
        d = 1.0 - np.prod([1.0 - conditional_rate(pop, cfg, c, states) for c in DEVICES])
        a = conditional_rate(pop, cfg, "ap", states) if "ap" in pop.technique_base else \
            conditional_rate(pop, cfg, "portable_marker", states)
        p_f += w * f
        p_fd += w * f * d
        p_fa += w * f * a
        p_ff += w * (np.outer(f, f) - np.diag(f * f) + np.diag(f))
        p_d += w * d
        p_a += w * a
    rows = {}
    for i, x in enumerate(FINDINGS):
        rows[(x, "prevalence")] = p_f[i]
        rows[(x, "device_given_finding")] = p_fd[i] / p_f[i]
        rows[(x, "device_given_none")] = (p_d - p_fd[i]) / (1 - p_f[i])
        rows[(x, "ap_given_finding")] = p_fa[i] / p_f[i]
        rows[(x, "ap_given_none")] = (p_a - p_fa[i]) / (1 - p_f[i])
    for i, x in enumerate(FINDINGS):
        for j in range(i + 1, n):
            rows[(x, f"with {FINDINGS[j]}")] = p_ff[i, j]
    out = pd.Series(rows, name=pop.name)
    out.index.names = ["finding", "rate"]
    return out


_CONCEPTS_OF = [FINDING_TO_CONCEPT[f] for f in FINDINGS]
_CARDIAC = ("cardiomegaly", "pleural_effusion", "edema")


def _unpack(x: np.ndarray, start: Population, digits: int = 12) -> Population:
    """A population from the fitted vector (layout: see ``_pack``), its rates rounded to ``digits`` places."""
    k = iter(x.tolist())
    base = {**start.base}
    uplift = {name: dict(u) for name, u in start.uplift.items()}
    for c in _CONCEPTS_OF:
        base[c] = next(k)
    for c in _CONCEPTS_OF:
        uplift.setdefault(c, {})["acuity"] = next(k)
    for c in _CARDIAC:
        uplift[c]["cardiac_history"] = next(k)
    scale_base, scale_acuity, scale_cardiac = next(k), next(k), next(k)
    for c in DEVICES:
        base[c] = round(min(1.0, CONCEPTS[c].prevalence * scale_base), digits)
        ref = TEACHING.uplift.get(c, {})
        uplift[c] = {s: round(min(1.0, v * (scale_acuity if s == "acuity" else scale_cardiac)), digits)
                     for s, v in ref.items()}
    ap_base, ap_acuity, ap_cardiac = next(k), next(k), next(k)
    uplift["ap"] = {**uplift.get("ap", {}), "acuity": ap_acuity, "cardiac_history": ap_cardiac}
    return replace(start, base=base, uplift=uplift, technique_base={**start.technique_base, "ap": ap_base})


def _pack(pop: Population) -> np.ndarray:
    """The fitted vector of a population (device scales start at 1: the teaching devices' rates)."""
    u = pop.uplift
    return np.array([
        *(pop.base.get(c, CONCEPTS[c].prevalence) for c in _CONCEPTS_OF),
        *(u.get(c, {}).get("acuity", 0.0) for c in _CONCEPTS_OF),
        *(u.get(c, {}).get("cardiac_history", 0.0) for c in _CARDIAC),
        1.0, 1.0, 1.0,
        pop.technique_base.get("ap", 0.8),
        u.get("ap", {}).get("acuity", 0.0), u.get("ap", {}).get("cardiac_history", 0.0),
    ])


STAY = 0.02
"""Weight of the pull towards the starting (teaching) rates in the fit: without it the fit may trade a rate's
meaning for a closer match (every cardiac patient with edema and none with a big heart)."""
MAX_UPLIFT = 0.9


def fit_population(target: pd.Series, start: Population = CHEXPERT) -> Population:
    """The population closest (least squares over every rate of ``target``, plus ``STAY`` times the distance from the
    teaching rates) to ``target``, a series indexed like ``expected_population``'s output, starting from ``start``
    (which must draw the AP technique)."""
    from scipy.optimize import least_squares

    if "ap" not in start.technique_base:
        raise ValueError(f"population {start.name!r} does not draw the AP technique; start from CHEXPERT")
    x0 = _pack(start)
    anchor = _pack(TEACHING)
    anchor[-3] = x0[-3]  # the teaching population draws no AP technique: its own start
    upper = np.full_like(x0, MAX_UPLIFT)
    upper[2 * len(FINDINGS) + len(_CARDIAC): 2 * len(FINDINGS) + len(_CARDIAC) + 3] = 20.0  # device scales
    upper[-3] = 1.0  # the AP base rate

    def residual(x):
        gap = expected_population(_unpack(x, start)).reindex(target.index) - target
        return np.concatenate([gap.to_numpy(), STAY * (x - anchor)])

    fit = least_squares(residual, np.clip(x0, 0.0, upper), bounds=(np.zeros_like(x0), upper))
    return _unpack(np.round(fit.x, 3), start, digits=3)


def largest_difference(pop: Population, target: pd.Series) -> float:
    """The largest absolute difference between the population's exact rates and ``target``."""
    return float((expected_population(pop).reindex(target.index) - target).abs().max())


def chexpert_target() -> pd.Series:
    """CheXpert's frontal training films' rates (read from the installed torchxrayvision)."""
    from lanic_nb.data.population import chexpert_population, compare_populations

    return compare_populations(CheXpert=chexpert_population())["CheXpert"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lanic_nb.phantom.calibrate",
                                     description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    target = chexpert_target()
    fitted = fit_population(target)
    log.info("shipped CHEXPERT: largest difference %.3f", largest_difference(CHEXPERT, target))
    log.info("refitted:         largest difference %.3f", largest_difference(fitted, target))
    log.info("base = %s", dict(sorted(fitted.base.items())))
    log.info("uplift = %s", {k: dict(v) for k, v in sorted(fitted.uplift.items())})
    log.info("technique_base = %s", dict(fitted.technique_base))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
