"""Test helpers shared by every test folder: models and data (``models``), exact Hessians
(``exact_hessian``), probe cases for the engine tests (``engine_cases``), the DDP script (``ddp_run``)."""
