"""Foundations pages: gradient descent, the NumPy network, overfitting.

All maths is `llmlab.foundations`; this file checks ranges and shapes the JSON. The NumPy
work needs no model, so it runs outside the hub's model lock."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from llmlab import foundations
from llmlab.server.errors import ApiError, client_gone
from llmlab.server.hub import Hub

Surface = Literal["quadratic", "bowl", "rosenbrock", "himmelblau"]
Optimizer = Literal["gd", "momentum", "adam"]
Dataset = Literal["moons", "spirals", "circles", "xor"]
Activation = Literal["relu", "tanh", "sigmoid"]
# Constraints several requests share, named once so the pages' ranges cannot drift apart.
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Decay = Annotated[float, Field(ge=0, lt=1)]  # momentum and Adam's betas: a fraction below 1
ToyNoise = Annotated[float, Field(ge=0, le=0.5)]  # beyond 0.5 the toy classes merge


class DescentRequest(BaseModel):
    surface: Surface = "bowl"
    optimizer: Optimizer = "gd"
    lr: float = Field(0.05, gt=0, le=10)
    momentum: Decay = 0.9
    beta1: Decay = 0.9
    beta2: Decay = 0.999
    steps: int = Field(100, ge=1, le=2000)
    x0: float | None = None
    y0: float | None = None


class TrainRequest(BaseModel):
    dataset: Dataset = "moons"
    n: int = Field(200, ge=20, le=1000)
    noise: ToyNoise = 0.1
    hidden: list[Annotated[int, Field(ge=1, le=64)]] = Field([16, 16], max_length=6)
    activation: Activation = "tanh"
    optimizer: Optimizer = "adam"
    lr: float = Field(0.03, gt=0, le=1)
    dropout: float = Field(0.0, ge=0, le=0.9)
    steps: int = Field(1000, ge=1, le=5000)
    batch_size: int = Field(0, ge=0, le=1000)
    grid: int = Field(40, ge=10, le=80)
    seed: Seed = 0


class DropoutRequest(BaseModel):
    dataset: Dataset = "moons"
    n: int = Field(100, ge=20, le=400)
    noise: ToyNoise = 0.25
    p: float = Field(0.3, gt=0, le=0.9)
    steps: int = Field(2000, ge=100, le=4000)
    seed: Seed = 0


class OverfitRequest(BaseModel):
    degree: int = Field(4, ge=0, le=20)
    lam: float = Field(0.0, ge=0, le=1000)
    n_train: int = Field(20, ge=5, le=200)
    noise: float = Field(0.25, ge=0, le=1)
    seed: Seed = 0


def clean(x: Any, nd: int = 5) -> Any:
    """Rounded floats for a small payload; non-finite values (a diverged run) become null,
    since JSON has no inf or NaN."""
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, dict):
        return {k: clean(v, nd) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean(v, nd) for v in x]
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return float(f"{x:.{nd}g}")
    return x


# Multiply-adds one request may cost (a training step ~ 3 per weight per point: forward,
# backward, update; a grid point 1 per weight): a few seconds on a busy laptop core. The
# pages' own settings fit (the dropout page's 2000 steps on 50 points: 2.7e9), the ranges'
# corners would take minutes.
MAX_WORK = 3e9


def _bound_work(train: float, grid: float, train_field: str, grid_field: str) -> None:
    """A 400 naming the field behind most of the work when a request would cost too much."""
    if train + grid > MAX_WORK:
        field = train_field if train >= grid else grid_field
        raise ApiError(400, f"{field}: this request would take {train + grid:.2g} "
                       f"multiply-adds, at most {MAX_WORK:.0e}; use fewer steps, points, "
                       "hidden units or grid cells", field)


def _n_weights(sizes: list[int]) -> int:
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:], strict=False))


class _Gone(Exception):
    """The client hung up: stop the work it asked for."""


async def _watch(request: Request, stop: threading.Event) -> None:
    await client_gone(request)
    stop.set()


def sse_event(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api/foundations")

    @router.get("/surface/{name}")
    def surface(name: str) -> dict[str, Any]:
        if name not in foundations.SURFACES:
            raise ApiError(404, f"surface: one of {sorted(foundations.SURFACES)}", "surface")
        s = foundations.SURFACES[name]
        return {"name": name, "formula": s.formula, "dim": s.dim, "bounds": s.bounds,
                "start": s.start, "minimum": s.minimum,
                "grid": clean(foundations.surface_grid(s, 60 if s.dim == 2 else 200))}

    @router.post("/descent")
    def descent(req: DescentRequest) -> dict[str, Any]:
        s = foundations.SURFACES[req.surface]
        start = list(s.start)
        for i, (field, v) in enumerate((("x0", req.x0), ("y0", req.y0))[: s.dim]):
            if v is not None:
                lo, hi = s.bounds[i]
                if not lo <= v <= hi:
                    raise ApiError(400, f"{field}: must be in [{lo}, {hi}] for {s.name}", field)
                start[i] = v
        run = foundations.run_descent(s, req.optimizer, req.lr, req.steps, req.momentum,
                                      req.beta1, req.beta2, tuple(start))
        return {
            "surface": s.name, "optimizer": req.optimizer, "lr": req.lr,
            "path": clean(run.path), "losses": clean(run.losses),
            "grad_norms": clean(run.grad_norms), "steps": run.steps,
            "diverged": run.diverged, "diverged_at": run.diverged_at, "reason": run.reason,
            "final_loss": clean(float(run.losses[-1])), "minimum": s.minimum,
            "sources": ["foundations.descent", "foundations.sgd", "foundations.adam"],
        }

    def points(d: Any) -> dict[str, Any]:
        return {"train": clean(np.column_stack([d.x_train, d.y_train]), 4),
                "test": clean(np.column_stack([d.x_test, d.y_test]), 4)}

    @router.post("/nn/train")
    def nn_train(req: TrainRequest) -> StreamingResponse:
        d = foundations.make_toy(req.dataset, req.n, req.noise, req.seed)
        if req.batch_size > len(d.x_train):
            raise ApiError(400, f"batch_size: at most the {len(d.x_train)} training points "
                           "(0 = full batch)", "batch_size")
        every = max(1, req.steps // 60)
        w = _n_weights([2, *req.hidden, 2])
        # The 2-D grid is drawn at every snapshot; test accuracy runs then too.
        _bound_work(3.0 * req.steps * (req.batch_size or len(d.x_train)) * w,
                    (req.steps // every + 2) * (req.grid**2 + len(d.x_test)) * w,
                    "steps", "grid")
        net = foundations.MLP([2, *req.hidden, 2], req.activation, req.dropout, req.seed)

        def events() -> Iterator[str]:
            yield sse_event("data", {**points(d), "params": sum(p.size for p in net.params),
                                     "sources": ["foundations.backward", "foundations.forward",
                                                 "foundations.softmax_ce", "foundations.dropout",
                                                 "foundations.train"]})
            t0 = time.perf_counter()
            for s in foundations.train_mlp(net, d.x_train, d.y_train, req.steps, req.lr,
                                           req.optimizer, req.batch_size, every, req.seed,
                                           d.x_test, d.y_test):
                grid = foundations.decision_grid(net.predict_proba, req.grid)
                yield sse_event("step", {"step": s.step, "loss": clean(s.loss),
                                         "train_acc": s.train_acc, "test_acc": s.test_acc,
                                         "grid": clean(grid, 3)})
            yield sse_event("done", {"seconds": round(time.perf_counter() - t0, 3)})

        return StreamingResponse(events(), media_type="text/event-stream")

    @router.post("/nn/dropout", response_model=None)
    async def nn_dropout(req: DropoutRequest, request: Request) -> Any:
        d = foundations.make_toy(req.dataset, req.n, req.noise, req.seed)
        w = _n_weights([2, 64, 64, 2])  # foundations.dropout_comparison's network
        _bound_work(2 * 3.0 * req.steps * len(d.x_train) * w, 2 * 40**2 * w, "steps", "steps")
        # Off the event loop, stopped within 100 steps if the client leaves.
        stop = threading.Event()

        def check() -> None:
            if stop.is_set():
                raise _Gone

        def work() -> dict[str, Any]:
            runs = foundations.dropout_comparison(d.x_train, d.y_train, d.x_test, d.y_test,
                                                  req.p, steps=req.steps, seed=req.seed,
                                                  check=check)
            return {**points(d), "runs": [
                {"dropout": p, "train_acc": s.train_acc, "test_acc": s.test_acc,
                 "loss": clean(s.loss),
                 "grid": clean(foundations.decision_grid(net.predict_proba, 40), 3)}
                for p, (net, s) in runs.items()
            ], "sources": ["foundations.dropout", "foundations.forward"]}

        watcher = asyncio.ensure_future(_watch(request, stop))
        try:
            return await run_in_threadpool(work)
        except _Gone:
            return Response(status_code=499)  # nginx's "client closed request": no one reads it
        finally:
            watcher.cancel()

    @router.post("/overfit")
    def overfit(req: OverfitRequest) -> dict[str, Any]:
        xt, yt = foundations.sine_data(req.n_train, req.noise, req.seed)
        xv, yv = foundations.sine_data(200, req.noise, req.seed + 1)
        f = foundations.poly_fit(xt, yt, xv, yv, req.degree, req.lam)
        lams = np.concatenate([[0.0], np.logspace(-8, 3, 23)])
        return {
            "degree": req.degree, "lam": req.lam,
            "train": clean(np.column_stack([xt, yt]), 4),
            "val": clean(np.column_stack([xv, yv]), 4),
            "curve": clean(np.column_stack([f.curve_x, f.curve_y]), 4),
            "truth": clean(np.column_stack([f.curve_x, np.sin(2 * np.pi * f.curve_x)]), 4),
            "train_mse": clean(f.train_mse), "val_mse": clean(f.val_mse),
            "weight_norm": clean(f.weight_norm), "coef": clean(f.coef),
            "by_degree": clean(foundations.degree_sweep(xt, yt, xv, yv, 20, req.lam)),
            "by_lam": clean(foundations.ridge_sweep(xt, yt, xv, yv, req.degree, lams)),
            "sources": ["foundations.ridge", "foundations.legendre"],
        }

    return router
