"""Generated public API of SyncHuman Serve (synchuman.v1) for synchuman-client. Do not edit: run scripts/gen_protos.py."""
