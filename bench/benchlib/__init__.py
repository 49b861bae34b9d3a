"""The benches' shared library: what the deployment, end-to-end and restart benches (and the stage-service
benches) need besides the ``synchuman`` / ``services`` packages, so a copy holding ``bench/`` and the package
runs them without ``tests/``.

* :mod:`benchlib.launch` - start the four services as compose does (the embedded launcher + supervisor),
  or one ``synchuman serve stageN`` process.
* :mod:`benchlib.poll` - watch them: health, peak memory per GPU / process, the services' JSON log records.
* :mod:`benchlib.inputs` - request inputs: a photo, stage-1 / stage-2 images, a person-shaped voxel set.
* :mod:`benchlib.stage_calls` - one request straight to a stage service.
* :mod:`benchlib.jobs` - the gateway client: submit and follow jobs, the stage-2 kill test.
* :mod:`benchlib.priority` - stage 1 beside stage-2 work on one GPU (the priority comparison).
* :mod:`benchlib.analyse` - job records -> stage spans, overlap, throughput, the kill verdict.
* :mod:`benchlib.report` - the markdown tables.
* :mod:`benchlib.meshes` - synthetic person meshes, Gaussians and views for the post-processing benches.

The benches put the repository root and ``bench/`` on ``sys.path`` before importing it.
"""
