"""Test helpers shared by every test folder: models and data (``models``), exact Hessians
(``exact_hessian``), the DDP script (``ddp_run``)."""
