"""Evaluation: clip embeddings in, the protocols' metrics and reports out.

Modules (docs/protocol.md defines the protocols):
  `linear_eval`   the linear probe: splits, features, classifiers, metrics;
  `svm_solver`    one-vs-rest linear SVMs for all classes at once;
  `neighbours`    kNN classification and video retrieval;
  `fewshot`       linear probes trained on a few videos per class;
  `report`        the tables, pictures and Markdown report a person reads.

Plain numpy and scikit-learn, free of Beam: `pipelines.linear_eval` runs them
one split per worker.
"""
