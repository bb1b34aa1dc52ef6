"""Submit, schedule and list medsynth-train runs on a Kubeflow Pipelines host.

The Python API behind `medsynth submit|schedule|runs`, for users who trigger
retraining from their own code (e.g. when new data lands in the bucket):

    from medsynth.kfp_client import PipelineClient

    kfp = PipelineClient("https://kubeflow.example.com/pipeline", token=access_token)
    run = kfp.submit({"dataset_uri": "gs://bucket/angio/2026-11", "train_steps": 40000})
    final = kfp.wait(run.run_id, timeout=6 * 3600)

It wraps `kfp.Client` (kfp 2.13) and adds what the CLI needs: parameters
typed and checked against the pipeline's own input definitions before
anything is sent, standard 5-field cron converted to KFP's 6-field form,
per-request timeouts (kfp.Client has none and can hang), one health check
instead of five with 5 s sleeps, and every failure turned into one
`MedsynthError` line that never contains the token.

Callers import from here; the modules: `params` (typing parameters against the
compiled spec), `cron`, `results` (RunInfo, ScheduleInfo), `errors` (KfpError
and the one-line descriptions), `transport` (kfp.Client with timeouts),
`client` (PipelineClient), `tables` (what `medsynth runs` prints).
"""

from medsynth.kfp_client.client import (
    ENDPOINT_ENV,
    NAMESPACE_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    PipelineClient,
    check_pipeline_root,
)
from medsynth.kfp_client.cron import to_kfp_cron
from medsynth.kfp_client.errors import KfpError
from medsynth.kfp_client.params import coerce_params, load_package, parse_param_args, pipeline_parameters
from medsynth.kfp_client.results import RunInfo, ScheduleInfo
from medsynth.kfp_client.tables import runs_table, schedules_table

__all__ = [
    "ENDPOINT_ENV",
    "NAMESPACE_ENV",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "KfpError",
    "PipelineClient", "check_pipeline_root",
    "RunInfo",
    "ScheduleInfo",
    "coerce_params",
    "load_package",
    "parse_param_args",
    "pipeline_parameters",
    "runs_table",
    "schedules_table",
    "to_kfp_cron",
]
