"""Apache Beam jobs: embedding extraction and linear evaluation."""
