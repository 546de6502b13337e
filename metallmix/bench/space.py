"""The search space of a benchmark: a finite set of candidate configurations, searched by Tune.

Both benchmark modes search over a fixed list of candidate configurations: in replay mode the
configurations recorded for the held-out dataset (a trial's outcome must be looked up), in train mode
the grid points of a sweep space (``conf/space/*.yaml``, a union of grid blocks, not a product). Tune's
searchers (random, Optuna's TPE, BOHB) propose points in a continuous/categorical space built from
the candidates' values (``CandidateSpace.param_space``); ``CandidateSearcher`` maps each proposal to
the closest candidate not evaluated yet, so every trial evaluates a new configuration and the budget
counts distinct configurations. The searcher learns the outcome of the point it proposed.

Closeness is the same lexicographic rule as ``metallmix.evaluate.closest_candidate`` (backbone first,
then the count of other differing categorical values plus the mean gap in empirical-CDF rank over
numeric values), vectorised so a search of hundreds of trials stays fast. Keys a proposal leaves out
count for nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from metallmix.errors import ConfigError
from metallmix.evaluate import BACKBONE_COLUMNS
from metallmix.metadataset.schema import CFG_PREFIX, config_columns

CANDIDATE_KEY = "candidate_id"
MAX_CHOICE_VALUES = 8  # numeric hyperparameters with at most this many values are searched as a choice
LOG_RANGE_RATIO = 20.0  # positive numeric ranges spanning more than this factor are searched on a log scale


class CandidateSpace:
    """Candidate configurations (a frame of ``cfg_`` columns indexed by candidate id) and their search space."""

    def __init__(self, candidates: pd.DataFrame):
        columns = config_columns(candidates)
        if len(candidates) == 0 or not columns:
            raise ConfigError("the search space has no candidate configurations (no rows or no cfg_ columns)")
        if candidates.index.has_duplicates:
            raise ConfigError("candidate ids must be unique")
        self.candidates = candidates[columns]
        self.ids = np.asarray([str(i) for i in candidates.index], dtype=object)
        self._position = {cid: i for i, cid in enumerate(self.ids)}
        self.numeric: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (sorted values, candidate ECDF ranks)
        self.categorical: dict[str, np.ndarray] = {}  # name -> candidate values as str ("nan" where missing)
        for column in columns:
            name = column[len(CFG_PREFIX):]
            values = self.candidates[column]
            if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                numbers = values.astype(float).to_numpy()
                finite = np.sort(numbers[np.isfinite(numbers)])
                self.numeric[name] = (finite, _ecdf(finite, numbers))
            else:
                self.categorical[name] = np.asarray([_text(v) for v in values], dtype=object)

    def __len__(self) -> int:
        return len(self.ids)

    def config_of(self, candidate_id: str) -> dict[str, Any]:
        """The candidate's hyperparameters (no prefix; missing values left out)."""
        row = self.candidates.iloc[self._position[str(candidate_id)]]
        return {column[len(CFG_PREFIX):]: _plain(value) for column, value in row.items() if not _missing(value)}

    def param_space(self) -> dict[str, Any]:
        """Tune search-space domains over the candidates' values; constant hyperparameters are left out."""
        from ray import tune

        space: dict[str, Any] = {}
        for name, (values, _) in self.numeric.items():
            distinct = np.unique(values)
            if len(distinct) < 2:
                continue
            if len(distinct) <= MAX_CHOICE_VALUES:
                space[name] = tune.choice([_plain(v) for v in distinct])
            elif distinct[0] > 0 and distinct[-1] / distinct[0] > LOG_RANGE_RATIO:
                space[name] = tune.loguniform(float(distinct[0]), float(distinct[-1]))
            else:
                space[name] = tune.uniform(float(distinct[0]), float(distinct[-1]))
        for name, values in self.categorical.items():
            distinct = sorted(set(values) - {"nan"})
            if len(distinct) >= 2:
                space[name] = tune.choice(distinct)
        if not space:
            raise ConfigError("every hyperparameter of the candidates is constant: there is nothing to search")
        return space

    def point_of(self, candidate_id: str) -> dict[str, Any]:
        """The candidate as a point of ``param_space()`` (for a searcher's points_to_evaluate)."""
        space = self.param_space()
        config = self.config_of(candidate_id)
        point = {}
        for name in space:
            if name in config:
                point[name] = str(config[name]) if name in self.categorical else config[name]
            elif name in self.categorical:
                point[name] = space[name].categories[0]
            else:
                point[name] = float(self.numeric[name][0][0])
        return point

    def nearest(self, config: Mapping[str, Any], exclude: set[str] | frozenset[str] = frozenset()) -> str | None:
        """Id of the candidate closest to ``config`` (module docstring) among those not in ``exclude``;
        None when every candidate is excluded. The first candidate wins exact ties."""
        n = len(self.ids)
        key_mismatch = np.zeros(n)
        other = np.zeros(n)
        gaps = []
        for name, value in config.items():
            if name in self.categorical:
                differs = self.categorical[name] != _text(value)
                if name in BACKBONE_COLUMNS:
                    key_mismatch += differs
                else:
                    other += differs
            elif name in self.numeric and value is not None:
                sorted_values, ranks = self.numeric[name]
                target = _ecdf(sorted_values, np.asarray([float(value)]))[0]
                gap = np.abs(ranks - target)
                gaps.append(np.where(np.isnan(gap), 1.0, gap))
        if gaps:
            other += np.mean(gaps, axis=0)
        excluded = np.isin(self.ids, list(exclude)) if exclude else np.zeros(n, dtype=bool)
        if excluded.all():
            return None
        key_mismatch[excluded] = np.inf
        order = np.lexsort((other, key_mismatch))
        return str(self.ids[int(order[0])])


def _ecdf(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mid-rank empirical CDF of ``x`` among ``sorted_values`` (NaN stays NaN)."""
    if len(sorted_values) == 0:
        return np.full(len(x), np.nan)
    below = np.searchsorted(sorted_values, x, side="left")
    upto = np.searchsorted(sorted_values, x, side="right")
    ranks = (below + upto) / (2.0 * len(sorted_values))
    return np.where(np.isfinite(x), ranks, np.nan)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _text(value: Any) -> str:
    return "nan" if _missing(value) else str(value)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
