from sops_enclave.cli import main

raise SystemExit(main())
