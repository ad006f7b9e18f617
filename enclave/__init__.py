"""The program that runs inside the enclave (installed as ``sops_enclave.enclave``).

It imports core modules (formats, walk, merge, receipt builder, pack verification) with
injected clients, never the CLI, the public api facade's key discovery, or anything that reads
the host's environment.
"""
