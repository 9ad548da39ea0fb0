"""Multivariate models per equipment kind: PCA with Hotelling's T² and SPE (Q) limits.

Two ways to train, one model. The analytics worker trains on healthy history read from
the time-series store (``analytics.history``, through a ``HistorySource`` the composition
root passes in, since analytics imports no sibling but ``wire``), saves each fit with its
version in the database and installs it here (``install``); the bank then does not learn
from the stream (``stream_training=False``). The offline replay has no store, so there
the bank trains itself from the stream: once a kind has ``model_warmup_rows`` healthy rows (rows in which no
detector fired on any of the device's metrics) spanning ``model_min_span_s`` (a day by
default: a model fitted on the morning alone calls every afternoon unusual),
scikit-learn's PCA is fitted on them; it is refitted on the most recent rows after as many
new rows as the last fit had, then every ``model_retrain_rows``, and each fit gets the next
version number. Nothing is scored by a model before its first fit.

A row is a device's latest value of each metric of its kind, centred by that series' own
running mean (so pumps of different sizes share one model of how their metrics move
together) and scaled by the training rows' spread. Limits of T² and SPE are the training
rows' ``model_fire_quantile``; a row fires when its SPE is ``model_fire_margin`` times the
limit, or its T² ``T2_EXTRA`` times that (an operating point the training rows did not
reach is weak evidence), and reports only after ``CONFIRM`` firing rows in a row.

Invariants: scoring happens before the row's values are learned; a model's metrics are
fixed at its fit and matched to the live series by name (a kind that gains a metric gets it
in the next version; a restart that sees metrics in another order scores the same).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from analytics.detectors import B, Batch, _grow
from analytics.settings import DetectSettings

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(slots=True)
class KindModel:
    kind: str
    version: int
    trained_ms: int
    rows: int
    columns: list[str]
    scale: F64
    components: F64  # k x m
    variances: F64  # k
    t2_limit: float
    spe_limit: float
    source: str = "stream"  # "stream" (fitted on live rows) or "history" (on the store's)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (no pickle in the database: loading it runs no code)."""
        return {"kind": self.kind, "version": self.version, "trained_ms": self.trained_ms,
                "rows": self.rows, "columns": list(self.columns), "scale": self.scale.tolist(),
                "components": self.components.tolist(), "variances": self.variances.tolist(),
                "t2_limit": self.t2_limit, "spe_limit": self.spe_limit, "source": self.source}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KindModel:
        m = cls(str(d["kind"]), int(d["version"]), int(d["trained_ms"]), int(d["rows"]),
                [str(c) for c in d["columns"]], np.asarray(d["scale"], np.float64),
                np.asarray(d["components"], np.float64), np.asarray(d["variances"], np.float64),
                float(d["t2_limit"]), float(d["spe_limit"]), str(d.get("source", "stream")))
        k = len(m.columns)
        if m.scale.shape != (k,) or m.components.ndim != 2 or m.components.shape[1] != k \
                or m.variances.shape != (m.components.shape[0],):
            raise ValueError(f"model {m.kind} v{m.version}: arrays do not match its {k} columns")
        return m

    def score(self, z: F64) -> tuple[F64, F64]:
        """(T²/limit, SPE/limit) of standardised rows ``z`` (n x m)."""
        zs = z / self.scale
        t = zs @ self.components.T
        t2 = (t * t / self.variances).sum(axis=1)
        resid = zs - t @ self.components
        spe = (resid * resid).sum(axis=1)
        return t2 / self.t2_limit, spe / self.spe_limit

    def contributions(self, z: F64) -> F64:
        zs = z / self.scale
        resid = zs - (zs @ self.components.T) @ self.components
        return resid * resid


@dataclass(slots=True)
class _Kind:
    columns: list[str] = field(default_factory=list)
    devices: list[int] = field(default_factory=list)
    buffer: list[F64] = field(default_factory=list)
    buffered: int = 0
    since_fit: int = 0
    first_ms: int | None = None
    model: KindModel | None = None


class ModelBank:
    """Per-kind models over device rows; ``step`` is called once per engine round."""

    CONFIRM: ClassVar[int] = 3
    T2_EXTRA: ClassVar[float] = 3.0
    MAX_COLUMNS: ClassVar[int] = 32

    def __init__(self, cfg: DetectSettings, on_trained: list[KindModel] | None = None) -> None:
        self.cfg = cfg
        self.trained: list[KindModel] = on_trained if on_trained is not None else []
        self._kinds: dict[str, _Kind] = {}
        self._dkind: list[str] = []
        self._cols = np.full((0, self.MAX_COLUMNS), -1, np.int64)  # device -> sid per column
        self._x = np.zeros(0, np.float64)
        self._mean = np.zeros(0, np.float64)
        self._n = np.zeros(0, np.int32)
        self._streak = np.zeros(0, np.int32)
        # False once models come from stored history (the worker): the stream only scores
        self.stream_training = True

    def _use(self, k: _Kind) -> tuple[KindModel, list[int]] | None:
        """The kind's model and where its columns are among the bank's, if it can score."""
        model = k.model
        if model is None or any(c not in k.columns for c in model.columns):
            return None
        return model, [k.columns.index(c) for c in model.columns]

    def add_series(self, sid: int, did: int, kind: str, metric: str) -> None:
        if not self.cfg.models:
            return
        k = self._kinds.setdefault(kind, _Kind())
        while len(self._dkind) <= did:
            self._dkind.append("")
        if not self._dkind[did]:
            self._dkind[did] = kind
            k.devices.append(did)
        self._cols = _grow(self._cols, did + 1, -1)  # type: ignore[assignment]
        self._streak = _grow(self._streak, did + 1, 0)  # type: ignore[assignment]
        self._x = _grow(self._x, sid + 1, np.nan)  # type: ignore[assignment]
        self._mean = _grow(self._mean, sid + 1, 0.0)  # type: ignore[assignment]
        self._n = _grow(self._n, sid + 1, 0)  # type: ignore[assignment]
        if metric not in k.columns and len(k.columns) < self.MAX_COLUMNS:
            k.columns.append(metric)
        if metric in k.columns:
            self._cols[did, k.columns.index(metric)] = sid

    def nbytes(self) -> int:
        return int(self._cols.nbytes + self._x.nbytes + self._mean.nbytes + self._n.nbytes
                   + self._streak.nbytes)

    def step(self, b: Batch, dev: I64, healthy: B, now: I64) -> list[tuple[int, int, float, str, str]]:
        """Score the rows of the devices in this round, then learn the healthy ones.

        Returns (device, ts, score, metric, sentence) for confirmed firing rows."""
        if not self.cfg.models or all(len(k.columns) < 2 for k in self._kinds.values()):
            return []  # a model needs at least two metrics to relate
        i = b.sid
        self._x[i] = b.x
        # a device's row is healthy when none of its readings in this round fired
        bad = np.zeros(len(self._cols), np.bool_)
        bad[dev[~healthy]] = True
        touched = np.unique(dev)
        out: list[tuple[int, int, float, str, str]] = []
        for kind, k in self._kinds.items():
            m = len(k.columns)
            if m < 2:
                continue
            devs = touched[[self._dkind[d] == kind for d in touched.tolist()]] if len(self._kinds) > 1 \
                else touched
            if len(devs) == 0:
                continue
            cols = self._cols[devs, :m]
            if (cols < 0).any():
                keep = (cols >= 0).all(axis=1)
                devs, cols = devs[keep], cols[keep]
            x = self._x[cols]
            ok = ~np.isnan(x).any(axis=1) & (self._n[cols].min(axis=1) >= self.cfg.warmup_readings)
            z = x - self._mean[cols]
            use = self._use(k)
            if use is not None:
                model, idx = use
                if idx == list(range(m)):  # the usual case: the model has every column, in order
                    zm, okm = z, ok
                else:
                    zm = z[:, idx]
                    okm = ~np.isnan(x[:, idx]).any(axis=1) & (self._n[cols[:, idx]].min(axis=1)
                                                             >= self.cfg.warmup_readings)
                r_t2, r_spe = model.score(np.where(okm[:, None], zm, 0.0))
                # SPE says the metrics no longer move together as they did. T² (how far along
                # the usual directions) mostly says the operating point is one the training
                # rows did not reach, e.g. an afternoon load when the model was fitted in the
                # morning: it must be T2_EXTRA times further out to fire.
                r = np.maximum(r_spe, r_t2 / self.T2_EXTRA) / self.cfg.model_fire_margin
                fire = okm & (r >= 1.0)
                self._streak[devs] = np.where(fire, self._streak[devs] + 1, 0)
                bad[devs[fire]] = True  # rows the model finds unusual do not train it
                for j in np.flatnonzero(fire & (self._streak[devs] >= self.CONFIRM)).tolist():
                    did = int(devs[j])
                    contrib = model.contributions(zm[j : j + 1])[0]
                    worst = int(contrib.argmax())
                    text = (f"its metrics no longer move together as usual ({r_spe[j]:.1f}x the "
                            f"model-{model.version} limit, operating point {r_t2[j]:.1f}x), most of all "
                            f"{model.columns[worst]}")
                    out.append((did, int(now[did]), float(r[j] / (r[j] + 1)), model.columns[worst], text))
            learn = ok & ~bad[devs]
            if self.stream_training and learn.any():
                self._learn(kind, k, z[learn], int(b.ts.max()))
        # the series means learn from healthy readings (the first reading sets them)
        # rows the model found unusual teach the means a tenth as much: a device that changed
        # for good becomes its new normal slowly rather than never
        n = self._n[i]
        a = np.where(bad[dev], 0.1, 1.0) / np.minimum(n + 1, self.cfg.baseline_readings)
        upd = healthy | (n == 0)
        self._mean[i] = np.where(upd, np.where(n == 0, b.x, self._mean[i] + a * (b.x - self._mean[i])),
                                 self._mean[i])
        self._n[i] = n + upd
        return out

    def _learn(self, kind: str, k: _Kind, z: F64, now_ms: int) -> None:
        cap = max(self.cfg.model_warmup_rows, min(self.cfg.model_retrain_rows, 20_000))
        k.buffer.append(z.copy())
        k.buffered += len(z)
        k.since_fit += len(z)
        while k.buffered - len(k.buffer[0]) >= cap:
            k.buffered -= len(k.buffer.pop(0))
        if k.first_ms is None:
            k.first_ms = now_ms
        spans = now_ms - k.first_ms >= self.cfg.model_min_span_s * 1000
        # refits come after as many new rows as the last fit had (so the young model soon
        # sees more of the day), at most every model_retrain_rows
        due = (k.model is None and k.buffered >= self.cfg.model_warmup_rows and spans) or (
            k.model is not None and self.cfg.model_retrain_rows > 0
            and k.since_fit >= min(self.cfg.model_retrain_rows, k.model.rows))
        if due:
            self._fit(kind, k, np.concatenate(k.buffer), now_ms)

    def _fit(self, kind: str, k: _Kind, rows: F64, now_ms: int) -> None:
        version = (k.model.version + 1) if k.model else 1
        k.model = fit_model(kind, list(k.columns), rows, self.cfg, version, now_ms)
        k.since_fit = 0
        self.trained.append(k.model)

    def install(self, model: KindModel) -> None:
        """Use ``model`` for its kind from now on (trained on history, or loaded at start)."""
        k = self._kinds.setdefault(model.kind, _Kind())
        k.model = model
        k.since_fit = 0

    def columns(self) -> dict[str, list[str]]:
        """The metrics seen per kind, in the bank's order."""
        return {kind: list(k.columns) for kind, k in self._kinds.items()}

    def models(self) -> dict[str, KindModel]:
        return {kind: k.model for kind, k in self._kinds.items() if k.model is not None}


def fit_model(kind: str, columns: list[str], rows: F64, cfg: DetectSettings, version: int, now_ms: int,
              source: str = "stream") -> KindModel:
    """PCA over centred ``rows`` (n x len(columns)); limits at ``model_fire_quantile``."""
    from sklearn.decomposition import PCA  # type: ignore[import-untyped]

    m = rows.shape[1]
    if m != len(columns) or m < 2 or len(rows) < 3:
        raise ValueError(f"model {kind}: need at least 3 rows of at least 2 columns, got {rows.shape} "
                         f"for {len(columns)} columns")
    scale = rows.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    zs = rows / scale
    pca = PCA(n_components=min(m, len(rows) - 1)).fit(zs)
    cum = np.cumsum(pca.explained_variance_ratio_)
    keep = int(min(np.searchsorted(cum, cfg.model_variance) + 1, max(m - 1, 1)))
    comps = np.asarray(pca.components_[:keep], np.float64)
    var = np.maximum(np.asarray(pca.explained_variance_[:keep], np.float64), 1e-9)
    provisional = KindModel(kind, 0, now_ms, len(rows), list(columns), scale, comps, var, 1.0, 1.0)
    t2, spe = provisional.score(rows)
    q = cfg.model_fire_quantile
    return KindModel(kind, version, now_ms, len(rows), list(columns), scale, comps, var,
                     max(float(np.quantile(t2, q)), 1e-9), max(float(np.quantile(spe, q)), 1e-9), source)


def save_model(model: KindModel, directory: Path) -> Path:
    """Write a model as ``<kind>-v<version>.pkl``; older versions are kept for comparison."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model.kind}-v{model.version}.pkl"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(model))
    tmp.replace(path)
    return path
