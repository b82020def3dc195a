"""Hyperparameter search on Optuna (``python train.py -m hparams_search=optuna``).

The Hydra sweeper plugin is ``hydra_plugins/vae_search``; the search itself lives here: the space
(:mod:`vae.search.space`), a trial's run (:mod:`vae.search.trial`), pruning
(:mod:`vae.search.pruning`), the loop over the study (:mod:`vae.search.study`) and the table of
the best trials (:mod:`vae.search.table`). Needs the ``search`` extra: ``pip install -e '.[search]'``.
"""
