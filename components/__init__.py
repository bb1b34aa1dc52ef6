"""KFP components: one per pipeline step, each a thin wrapper over the `medsynth` library.

They run as lightweight Python components on the project's own images (the
cluster) or in the current virtualenv (`kfp.local`, SubprocessRunner): nothing
is pip-installed at run time.
"""
