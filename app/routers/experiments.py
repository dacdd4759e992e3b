"""``/v1/experiments``: list, read, create or replace, delete experiments, and read their results."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel

from app.deps import ExperimentsDep, MetricsDep, PoolDep, SettingsDep, TrackerDep
from app.errors import ApiError
from app.experiments.definitions import NAME_PATTERN, Experiment, ExperimentBody
from app.experiments.results import ExperimentResults
from app.security import require_api_key

router = APIRouter(prefix="/v1/experiments", tags=["experiments"], dependencies=[Depends(require_api_key)])

NamePath = Annotated[str, Path(pattern=NAME_PATTERN, description="The experiment's name.")]


class ExperimentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Experiment]


class ExperimentDeleted(BaseModel):
    id: str
    object: Literal["experiment"] = "experiment"
    deleted: bool = True


@router.get("", summary="The experiments this server runs, in matching order")
def list_experiments(experiments: ExperimentsDep) -> ExperimentList:
    return ExperimentList(data=experiments.all())


@router.get("/{name}", summary="One experiment")
def get_experiment(name: NamePath, experiments: ExperimentsDep) -> Experiment:
    return experiments.get(name)


@router.put("/{name}", summary="Create or replace an experiment (201 when new)")
def put_experiment(
    name: NamePath,
    body: ExperimentBody,
    response: Response,
    experiments: ExperimentsDep,
    tracker: TrackerDep,
    metrics: MetricsDep,
    pool: PoolDep,
) -> Experiment:
    experiment = body.named(name)
    known = {manifest.id for manifest in pool.manifests()}
    unknown = sorted({arm.variant for arm in experiment.all_arms} - known)
    if unknown:
        raise ApiError(
            400,
            f"unknown variants {unknown}; the store has {sorted(known)}",
            code="model_not_found",
            param="arms",
        )
    previous = experiments.find(name)
    if previous is not None and previous.all_arms != experiment.all_arms:
        tracker.forget(name)  # other arms or weights: earlier figures no longer describe it
        metrics.forget_arms(name, [arm.name for arm in previous.all_arms])
    metrics.track_arms(name, [arm.name for arm in experiment.all_arms])
    created = experiments.put(experiment)
    response.status_code = 201 if created else 200
    return experiment


@router.delete("/{name}", summary="Stop and remove an experiment")
def delete_experiment(
    name: NamePath, experiments: ExperimentsDep, tracker: TrackerDep, metrics: MetricsDep
) -> ExperimentDeleted:
    experiment = experiments.delete(name)
    tracker.forget(name)
    metrics.forget_arms(name, [arm.name for arm in experiment.all_arms])
    return ExperimentDeleted(id=name)


@router.get("/{name}/results", summary="Per arm: requests, latency, CER with intervals, verdict")
def experiment_results(
    name: NamePath, experiments: ExperimentsDep, tracker: TrackerDep, settings: SettingsDep
) -> ExperimentResults:
    options = settings.experiments
    return tracker.results(
        experiments.get(name),
        resamples=options.bootstrap_resamples,
        min_scored=options.min_scored_requests,
    )
