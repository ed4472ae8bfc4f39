"""Embeddings on disk: the contract between the embedding and evaluation jobs.

Modules:
  `schema`          the files an embedding job writes (`embeddings/*.tfrecord`
                    of `tf.train.Example`, one per clip, and `run.json`), their
                    features, writing and reading;
  `example_proto`   `tf.train.Example` and `SequenceExample` without TensorFlow;
  `tfrecord`        TFRecord framing through Beam's FileSystems (local, gs://);
  `reader`          an output directory read into numpy arrays
                    (`mmv_core.load_embeddings`).
"""
