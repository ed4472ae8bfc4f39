"""What the jobs share: output directories and their claims."""

import pytest

from pipelines import common


@pytest.mark.parametrize(
    "location, directory, within",
    [
        ("/a/b/c.pkl", "/a/b", True),
        ("/a/b", "/a/b/", True),
        ("/a/bc/c.pkl", "/a/b", False),
        ("/a/b/../x.pkl", "/a/b", False),
        ("gs://bucket/run/ckpt.pkl", "gs://bucket/run", True),
        ("gs://bucket/runs/ckpt.pkl", "gs://bucket/run", False),
        ("https://host/run/x.zip", "/run", False),
    ],
)
def test_is_within_tells_what_deleting_a_directory_would_delete(location, directory, within):
  assert common.is_within(location, directory) == within
