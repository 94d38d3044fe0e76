from mbc_jax.cli import main

raise SystemExit(main())
