"""SyncHuman Serve core library: models, pipelines, geometry and checkpoint loading.

Importing this package (or any of its submodules other than the generated ``synchuman.v1``
wire contract) never imports gRPC.
"""

__version__ = "0.1.0"
