"""The pack: which inputs make which output (``manifest``), the git objects that prove the
inputs are the blobs of a commit (``gitobjects``), and the host side that drives the enclave.

Example::

    from sops_enclave.pack.manifest import load_manifest
    from sops_enclave.pack import gitobjects

    manifest = load_manifest(manifest_bytes)
    plans = manifest.plan(["api/prod"], exists=lambda path: path in files)
    bundle = gitobjects.collect("/src/repo", "HEAD", [".sops-enclave.yaml"])
"""
