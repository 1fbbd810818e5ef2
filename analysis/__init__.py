"""Embedding and run report: ``python -m analysis --store STORE [--run RUN] --out DIR``.

Modules, one job each: data (load + capped samples), projections (PCA/LDA/t-SNE maps),
probes (logistic regression, k-NN), clustering (k-means, DBSCAN), retrieval and
text_encoder (image and free-text search), captions, patches (DINOv2 patch PCA),
run_summary (head, lambda, best epoch, the probe to beat), run_report (curves,
confusions, worst images), thumbs (image tiles), html (the self-contained page), style
(shared sizes), report (runs them all).
"""
