"""Generated wire contract of SyncHuman Serve (package synchuman.v1). Do not edit: run scripts/gen_protos.py."""
